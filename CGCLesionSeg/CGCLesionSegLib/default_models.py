"""The CGC models shipped inside the package (``CGCLesionSegLib/models/``), one per modality set.

A model file is named ``cgc_<m1>_<m2>...pt`` after its modalities in the order it expects them, and
comes with a model card ``<same name>.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

MODELS_DIR = Path(__file__).resolve().parent / "models"


def model_file_name(modalities: Sequence[str]) -> str:
    return "cgc_" + "_".join(m.lower() for m in modalities) + ".pt"


def available_default_models() -> dict[tuple[str, ...], Path]:
    """``{("flair", "t1", "t1ce", "t2"): path, ...}`` for every shipped model file."""
    out: dict[tuple[str, ...], Path] = {}
    for p in sorted(MODELS_DIR.glob("cgc_*.pt")):
        out[tuple(p.stem[len("cgc_"):].split("_"))] = p
    return out


def subset_default_model(modalities: Sequence[str | None]) -> Optional[tuple[str, ...]]:
    """The modalities of the largest shipped model that fits a strict subset of these named inputs, else None.

    Such a model beats ``--adapt``'s one-case training by far (held-out default output ~0.86 against ~0.46 for
    ``--adapt`` from scratch on 2 cases, docs/BENCHMARKS.md), so the error and ``--adapt`` name it first."""
    names = [m.lower() if m else None for m in modalities]
    if None in names:
        return None
    subsets = [k for k in available_default_models() if set(k) < set(names)]
    return max(subsets, key=len) if subsets else None


def subset_hint(key: Sequence[str]) -> str:
    """How to use the shipped model ``key`` (from :func:`subset_default_model`) on a subset of the inputs."""
    return (f"The shipped {' '.join(key)} model fits a subset of them: give only "
            + " ".join(f"--input {m}=..." for m in key) + " to use it")


def default_model_path(modalities: Sequence[str | None]) -> Path:
    """The shipped model for exactly these modalities (any order); a clear error lists the others.

    Unnamed inputs (``None``) are matched by count against the models in the documented order
    (FLAIR, T1, T1ce, T2): 4 unnamed inputs → the four-channel model, 1 → FLAIR only.
    """
    models = available_default_models()
    if not models:
        raise ValueError("no default model is installed with this package; give --model CKPT "
                         "(train one with `cgcseg train`) or use --adapt")
    names = [m.lower() if m else None for m in modalities]
    if all(n is None for n in names):
        for key, path in models.items():
            if len(key) == len(names) and key[0] == "flair":
                return path
    elif None not in names:
        for key, path in models.items():
            if sorted(key) == sorted(names):
                return path
    listing = "; ".join(" ".join(k) for k in models)
    best = subset_default_model(names)
    hint = f" {subset_hint(best)} (recommended over --adapt)." if best else ""
    raise ValueError(f"no default model for inputs {', '.join(n or '?' for n in names)}. Shipped models expect: "
                     f"{listing}.{hint} Name your inputs (e.g. --input flair=F.nii.gz), give --model CKPT, or use "
                     "--adapt.")
