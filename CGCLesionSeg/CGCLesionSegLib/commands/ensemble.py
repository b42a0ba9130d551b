"""``cgcseg ensemble``: combine models trained the same way with different seeds into one model file.

  cgcseg ensemble run_seed0/last.pt run_seed1/last.pt --output cohort_ensemble.pt
  cgcseg segment --model cohort_ensemble.pt --input flair=case_flair.nii.gz ...

The file holds every member's weights; ``cgcseg segment``, ``cgcseg demo`` and the Slicer module use it like
any model and average the members' probabilities (one network pass per member). Why: two seeds of one recipe
differ by up to 0.01-0.04 mean held-out Dice, and their mean map scored higher than the single models' in protocol
cgc-v28 (network +0.006 on its screen; +0.036 / +0.018 in its four-channel / FLAIR confirmation; both shipped
models are such ensembles; docs/protocols/README.md). The members must share the modalities, the network, the
preprocessing, the training crop and the output rule; the first file's settings are kept. The inputs are only
read, and an existing output file is replaced only with --overwrite (never one of the inputs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help="two or more CGC model files (.pt) of one recipe")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the ensemble model file to write (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists (never one of the inputs)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import combine_checkpoints, info_from_dict, save_checkpoint_dict

    out = Path(args.output)
    inputs = [Path(m) for m in args.models]
    if len(inputs) < 2:
        raise ValueError("give two or more model files to combine")
    seen: dict[Path, Path] = {}
    for m in inputs:  # the same network twice is not an ensemble (its average is the network itself)
        key = m.resolve()
        if key in seen:
            raise ValueError(f"{m} is given twice (also as {seen[key]}); an ensemble combines different models, "
                             "e.g. the same recipe trained with different --seed")
        seen[key] = m
    if any(out.resolve() == m.resolve() for m in inputs if m.exists()):
        raise ValueError(f"--output {out} is one of the input models; write the ensemble to a new file")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; give --overwrite to replace it, or another --output")
    if out.suffix != ".pt":
        raise ValueError(f"--output {out}: give a .pt file name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of --output does not exist: {out.parent}")
    ckpt = combine_checkpoints(inputs)
    save_checkpoint_dict(out, ckpt)
    info = info_from_dict(ckpt, out)
    print(json.dumps({"output": str(out), "members": info.members, "channels": info.channels,
                      "sources": ckpt["extra"]["ensemble"]}, indent=2))
    return 0
