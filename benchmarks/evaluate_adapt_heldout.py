"""``cgcseg segment --adapt`` on cases the model never saw: cgc-v32's fold models, each held-out case.

Declared 2026-12-04 19:41 in this docstring, committed before its first run (no adapted map of these models
existed). Why: ``benchmarks/evaluate_adapt.py`` found that 2 minutes of ``--adapt`` lowered both shipped models'
default output on every case it ran (four-channel 0.764 -> 0.739, FLAIR 0.765 -> 0.724, 2 cases each), but those
cases were in the models' training set. ``--adapt`` now warns when it would fine-tune a shipped model; this
measures the same on held-out cases, with models of the shipped recipe.

- Models: protocol cgc-v32's fold models (the shipped recipe ``robust-2mm-std``, four-channel, seeds 3200/3201).
  Per fold, the two seeds' final models as one two-network ensemble (``cgcseg ensemble``), the shipped form.
- Cases: each of the 7 labelled cases with the ensemble of the fold that held it out (fold 0: BraTS2021_00000,
  00003, 00006, Brats17_2013_27_1; fold 1: BraTS2021_00002, 00005, BraTS20_Training_001).
- Two commands per case, exactly as a user runs them, with the shipped four-channel model's output rule
  written out (``--postprocess single-lesion-recommended --threshold 0.35``; the fold files record no rule):
  ``none`` = ``cgcseg segment --model ENSEMBLE ...``; ``adapt`` = the same plus ``--adapt --adapt-steps 50``
  (``--adapt`` fine-tunes the ensemble's first network toward the case's own GMM map; 50 steps is about what
  2 minutes gave on this machine). Dice against seg > 0.
- Read: per case ``adapt - none``, the mean with a bootstrap 95 % CI over the 7 cases (10,000 resamples, seed 0),
  the worst case. Nothing is decided: the number goes into ``--adapt``'s warning and the docs in place of the
  in-sample one if it differs in sign or by more than 0.01, beside it otherwise. One seed of adaptation (0, the
  command's default); the spread over adaptation seeds is not measured.

    python benchmarks/evaluate_adapt_heldout.py [--runs runs/protocol-cgc-v32/confirm/flair-t1-t1ce-t2/robust-2mm-std]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

MODALITIES = ("flair", "t1", "t1ce", "t2")
PROTOCOL = ROOT / "docs" / "protocols" / "cgc-v32.toml"
SEEDS = (3200, 3201)
RULE = ["--postprocess", "single-lesion-recommended", "--threshold", "0.35"]
ADAPT_STEPS = 50


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "protocol-cgc-v32" / "confirm" / "flair-t1-t1ce-t2"
                                          / "robust-2mm-std"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from CGCLesionSegLib.checkpoint import combine_checkpoints, save_checkpoint_dict
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.metrics import dice
    from protocol import _case_dirs, bootstrap_ci, load_protocol  # the protocols' own folds and CI

    folds = int(load_protocol(PROTOCOL)["folds"])
    labelled = [d.name for d in _case_dirs(Path(args.data) / "brats")]

    runs, brats = Path(args.runs), Path(args.data) / "brats"
    tmp = Path(tempfile.mkdtemp(prefix="cgc-adapt-heldout-"))
    rows = []
    for fold in range(folds):
        cases = labelled[fold::folds]  # the cases this fold's models held out (protocol.plan's rule)
        members = [runs / f"fold{fold}-seed{s}" / "last.pt" for s in SEEDS]
        missing = [str(m) for m in members if not m.is_file()]
        if missing:
            print(f"missing fold models: {', '.join(missing)} (train them with protocol cgc-v32)", file=sys.stderr)
            return 2
        ensemble = save_checkpoint_dict(tmp / f"fold{fold}.pt", combine_checkpoints(members))
        for case in cases:
            folder = brats / case
            base = [sys.executable, "-m", "CGCLesionSegLib.cli", "segment",
                    *[f"--input={m}={folder / f'{case}_{m}.nii.gz'}" for m in MODALITIES],
                    "--model", str(ensemble), *RULE, "--device", "cpu", "--progress", "none"]
            ref = read_image(folder / f"{case}_seg.nii.gz", dtype=None).array_zyx > 0
            row = {"case": case, "fold": fold}
            for name, extra in (("none", []), ("adapt", ["--adapt", "--adapt-steps", str(ADAPT_STEPS),
                                                         "--adapt-minutes", "30"])):
                out = tmp / name / f"{case}.nii.gz"
                r = subprocess.run([*base, "--output", str(out), *extra], capture_output=True, text=True)
                if r.returncode != 0:
                    print(r.stderr, file=sys.stderr)
                    return 1
                row[name] = dice(read_image(out, dtype=None).array_zyx > 0, ref)
            rows.append(row)
            print(json.dumps(rows[-1]), file=sys.stderr)
    diffs = [r["adapt"] - r["none"] for r in rows]
    lo, hi = bootstrap_ci(diffs, 10000, 0)
    lines = ["## `segment --adapt` on held-out cases (`benchmarks/evaluate_adapt_heldout.py`)", "",
             "Declared in the script's docstring before its first run. cgc-v32's fold models (the shipped recipe, "
             "four-channel, seeds 3200/3201) as one two-network ensemble per fold; each case scored by the fold that "
             "held it out; the shipped four-channel rule (`single-lesion-recommended` at 0.35) with and without "
             f"`--adapt --adapt-steps {ADAPT_STEPS}` (the ensemble's first network fine-tuned toward the case's own GMM "
             "map). Dice against seg > 0.", "",
             "| case | fold | without --adapt | with --adapt | difference |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['fold']} | {r['none']:.4f} | {r['adapt']:.4f} | {r['adapt'] - r['none']:+.4f} |")
    lines.append(f"| **mean** | | **{statistics.mean(r['none'] for r in rows):.4f}** | "
                 f"**{statistics.mean(r['adapt'] for r in rows):.4f}** | **{statistics.mean(diffs):+.4f}** |")
    lines += ["", f"Difference with --adapt − without: {statistics.mean(diffs):+.4f}, bootstrap 95 % CI "
              f"[{lo:+.4f}, {hi:+.4f}] over the {len(rows)} cases; worst case {min(diffs):+.4f}; lower on "
              f"{sum(d < 0 for d in diffs)} of {len(rows)} cases."]
    from _report import machine_line, publish
    publish("adapt-heldout", "\n".join(lines) + "\n\n" + machine_line(), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
