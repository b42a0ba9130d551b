"""Do the inputs hold the contrasts their names say? Two checks against swapped channels.

A FLAIR given as ``t1`` (or unnamed inputs in the wrong order) runs without any error and gives a
confident wrong answer, so before the work the inputs are checked in two independent ways:

1. **File names** (:func:`modality_from_filename`): a file whose name carries a modality token that
   contradicts the name it was given (``--input flair=case_t1.nii.gz``). Tokens are matched whole
   (``t1ce`` is not ``t1``); BraTS 2023 (``t2f``, ``t1n``, ``t1c``, ``t2w``) and BIDS (``FLAIR``,
   ``T1w``, ``T2w``, ``ce-<agent>_T1w``) names count. A name with tokens of two modalities says nothing.
2. **Intensity signature** (:func:`signature`, needs two or more inputs named ``flair``, ``t1``,
   ``t1ce`` or ``t2``): inside the brain, where do the brightest and the darkest 5 % of one channel
   lie in every other channel (mean rank, 0 = darkest, 1 = brightest)? CSF is dark in FLAIR and T1
   and bright in T2, white matter is brighter than grey matter in T1 and darker in T2/FLAIR, lesions
   are bright in FLAIR and T2, enhancement is bright in T1ce only — so, e.g., FLAIR's brightest voxels
   are bright in T2 (lesion) while T1's brightest (white matter) are not. The given naming is compared
   with every other assignment of the same names to the same channels against profiles measured on
   the BraTS development cases (:data:`PROFILE`); a naming that fits clearly worse than another one
   (:data:`MARGIN`) is flagged. Ranks make the check blind to any monotonic rescaling (z-scoring,
   min-max scaling, other scanners' units).

The checks warn; callers print the warnings, record :meth:`ChannelCheck.to_dict` in the sidecar and
refuse with ``--strict`` (:class:`ChannelCheckError`). A single channel gets only the file-name check.
Measured detection rates: docs/CHANNEL_CHECK.md. Numpy only (the Slicer module can call it).
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

#: Modalities the intensity signature knows.
SIGNATURE_MODALITIES = ("flair", "t1", "t1ce", "t2")

#: Fraction of brain voxels in each tail of a channel.
TAIL = 0.05
#: Brain voxels sampled (fixed seed) for the ranks; enough for rank means to ±0.002.
SAMPLE = 200_000
#: Floor of a feature's spread, so a feature that happened to vary little on the tuning cases does
#: not dominate the fit.
MIN_SPREAD = 0.05
#: A naming is flagged when another assignment of the same names fits better by more than this
#: (mean squared standardised deviation per feature). Set on the BraTS development cases by
#: scripts/channel_check_eval.py (see docs/CHANNEL_CHECK.md).
MARGIN = 0.4

#: ``PROFILE[(a, b)] = (hi_mean, hi_sd, lo_mean, lo_sd)``: mean rank in channel ``b`` of the brightest
#: (hi) and darkest (lo) 5 % of brain voxels of channel ``a``, mean and standard deviation over the 7
#: BraTS development cases (../shared/data/brats), as printed by scripts/channel_check_eval.py --tune.
PROFILE: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("flair", "t1"): (0.544, 0.149, 0.130, 0.031),
    ("flair", "t1ce"): (0.438, 0.080, 0.281, 0.088),
    ("flair", "t2"): (0.855, 0.075, 0.509, 0.160),
    ("t1", "flair"): (0.544, 0.143, 0.126, 0.049),
    ("t1", "t1ce"): (0.787, 0.061, 0.264, 0.117),
    ("t1", "t2"): (0.430, 0.157, 0.460, 0.210),
    ("t1ce", "flair"): (0.465, 0.062, 0.210, 0.126),
    ("t1ce", "t1"): (0.429, 0.051, 0.117, 0.042),
    ("t1ce", "t2"): (0.505, 0.067, 0.661, 0.204),
    ("t2", "flair"): (0.307, 0.187, 0.125, 0.053),
    ("t2", "t1"): (0.194, 0.077, 0.358, 0.190),
    ("t2", "t1ce"): (0.185, 0.051, 0.476, 0.153),
}

# ----------------------------------------------------------------------------------- file names
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")
_TOKEN = {
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce", "t1contrast": "t1ce",
    "t2": "t2", "t2w": "t2",
    "ct": "ct",
}


def modality_from_filename(path: str | os.PathLike) -> Optional[str]:
    """The modality a file name states, or None when it states none or several.

    ``BraTS2021_00000_t1ce.nii.gz`` → ``t1ce``; ``BraTS-GLI-00001-000-t2f.nii.gz`` → ``flair``;
    ``sub-01_ce-gadolinium_T1w.nii.gz`` → ``t1ce``; ``t2_flair.nii`` → ``flair`` (FLAIR is T2-weighted);
    ``case_t1_to_t2.nii.gz`` → None. Only the file's own name is read, not its folders.
    """
    name = Path(path).name.lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    tokens = [t for t in re.split(r"[^a-z0-9]+", name) if t]
    found = {_TOKEN[t] for t in tokens if t in _TOKEN}
    if "flair" in found:
        found.discard("t2")                       # "T2-FLAIR", "t2_flair"
    if "t1" in found and ("ce" in tokens or "gd" in tokens or "gad" in tokens):
        found = (found - {"t1"}) | {"t1ce"}       # BIDS ce-<agent>_T1w
    return next(iter(found)) if len(found) == 1 else None


# ----------------------------------------------------------------------------------- signature
def brain_voxels(channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean brain mask: ``mask_zyx`` when given, else the voxels that differ from the background
    in every channel. The background value of a channel is the most common of its 8 corner voxels,
    so a z-scored or min-max scaled volume (background no longer 0) gives the same mask."""
    if mask_zyx is not None:
        return np.asarray(mask_zyx) != 0
    brain = None
    for c in channels_zyx:
        c = np.asarray(c)
        corners = np.array([c[z, y, x] for z in (0, -1) for y in (0, -1) for x in (0, -1)])
        values, counts = np.unique(corners, return_counts=True)
        inside = c != values[np.argmax(counts)]
        brain = inside if brain is None else brain & inside
    return brain


def _ranks(values: np.ndarray) -> np.ndarray:
    r = np.empty(len(values), np.float64)
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r / max(len(values) - 1, 1)


def signature(channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray] = None,
              tail: float = TAIL, sample: int = SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(hi, lo)``: ``hi[a, b]`` is the mean rank (0–1) in channel ``b`` of the brightest ``tail`` of
    brain voxels of channel ``a``; ``lo`` the same for the darkest. Diagonals are NaN. Channels are
    ``(z, y, x)`` arrays on one grid."""
    if len(channels_zyx) < 2:
        raise ValueError("the intensity signature needs at least two channels")
    brain = brain_voxels(channels_zyx, mask_zyx)
    index = np.flatnonzero(brain.ravel())
    if index.size < 100:
        raise ValueError(f"only {index.size} brain voxels: too few for the channel check")
    if index.size > sample:
        index = np.sort(np.random.default_rng(seed).choice(index, sample, replace=False))
    ranks = np.stack([_ranks(np.asarray(c).ravel()[index].astype(np.float64)) for c in channels_zyx])
    k = len(channels_zyx)
    hi = np.full((k, k), np.nan)
    lo = np.full((k, k), np.nan)
    for a in range(k):
        top, bottom = ranks[a] >= 1.0 - tail, ranks[a] <= tail
        for b in range(k):
            if a != b:
                hi[a, b] = ranks[b][top].mean()
                lo[a, b] = ranks[b][bottom].mean()
    return hi, lo


def naming_misfit(hi: np.ndarray, lo: np.ndarray, names: Sequence[str],
                  profile: dict = PROFILE) -> float:
    """Mean squared standardised deviation of the signature from the profile of ``names`` (one
    name per channel of ``hi``/``lo``, all in :data:`SIGNATURE_MODALITIES`)."""
    terms = []
    for a, b in itertools.permutations(range(len(names)), 2):
        hm, hs, lm, ls = profile[(names[a], names[b])]
        terms.append(((hi[a, b] - hm) / max(hs, MIN_SPREAD)) ** 2)
        terms.append(((lo[a, b] - lm) / max(ls, MIN_SPREAD)) ** 2)
    return float(np.mean(terms))


def comparable(names: Sequence[str], perm: Sequence[str]) -> bool:
    """Whether the signature can judge ``perm`` against ``names``. Without a T2 input, FLAIR cannot be
    told from T1/T1ce (CSF is dark in all three and T2 is what marks FLAIR's bright voxels as lesion):
    on the BraTS tuning cases the right naming and the FLAIR <-> T1/T1ce swap differed by only
    0.03-0.53 there, about the margin. So without T2 FLAIR stays where it was named."""
    if "t2" in names:
        return True
    return all((a == "flair") == (b == "flair") for a, b in zip(names, perm))


def best_alternative(hi: np.ndarray, lo: np.ndarray, names: Sequence[str],
                     profile: dict = PROFILE) -> tuple[float, float, tuple[str, ...]]:
    """``(misfit of names, misfit of the best other assignment, that assignment)``: every
    permutation of ``names`` over the same channels that :func:`comparable` allows is tried
    (best misfit ``inf`` when none is)."""
    given = naming_misfit(hi, lo, names, profile)
    best, best_names = np.inf, tuple(names)
    for perm in itertools.permutations(names):
        if tuple(perm) == tuple(names) or not comparable(names, perm):
            continue
        m = naming_misfit(hi, lo, perm, profile)
        if m < best:
            best, best_names = m, tuple(perm)
    return given, float(best), best_names


# ----------------------------------------------------------------------------------- the check
@dataclass
class ChannelCheck:
    """Result of :func:`check_channels`. ``warnings``: one sentence each (empty: nothing found);
    ``details``: what was measured, for the sidecar."""

    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "warning", "warnings": list(self.warnings), **self.details}


class ChannelCheckError(ValueError):
    """Raised by :func:`enforce` under ``--strict`` when the check found something."""


def check_channels(channels_zyx: Sequence[np.ndarray], names: Sequence[Optional[str]],
                   paths: Optional[Sequence[Optional[str | os.PathLike]]] = None,
                   mask_zyx: Optional[np.ndarray] = None, *, intensity: bool = True) -> ChannelCheck:
    """Check that each channel holds the contrast it is used as.

    ``names``: the modality each channel is used as (after unnamed inputs were given names by their
    order); a name outside :data:`SIGNATURE_MODALITIES` (``ct``, any word) is only file-name checked.
    ``paths``: file (or node) names, for the file-name check; None skips it. ``mask_zyx``: brain mask,
    else the non-background voxels. Returns a :class:`ChannelCheck`; never raises on odd data (a
    check that cannot run is recorded as skipped).
    """
    names = [n.lower() if n else None for n in names]
    result = ChannelCheck(details={"file_names": {}, "intensity": None})
    for name, path in zip(names, paths or [None] * len(names)):
        if path is None or name is None:
            continue
        stated = modality_from_filename(path)
        result.details["file_names"][name] = stated
        if stated is not None and name in _TOKEN.values() and stated != name:
            result.warnings.append(f"the input used as {name} is {Path(path).name}, whose name says {stated}")
    known = [i for i, n in enumerate(names) if n in SIGNATURE_MODALITIES]
    if not intensity:
        result.details["intensity"] = {"skipped": "switched off"}
    elif len(known) < 2 or len({names[i] for i in known}) != len(known):
        result.details["intensity"] = {"skipped": "needs two or more of flair, t1, t1ce, t2"}
    else:
        try:
            hi, lo = signature([channels_zyx[i] for i in known], mask_zyx)
        except ValueError as exc:
            result.details["intensity"] = {"skipped": str(exc)}
            return result
        used = [names[i] for i in known]
        given, best, best_names = best_alternative(hi, lo, used)
        if not np.isfinite(best):
            result.details["intensity"] = {"skipped": "FLAIR and T1/T1ce cannot be told apart without a T2 input"}
            return result
        flagged = given - best > MARGIN
        result.details["intensity"] = {"names": used, "misfit": round(given, 3),
                                       "best_other": list(best_names), "best_other_misfit": round(best, 3),
                                       "margin": MARGIN, "flagged": bool(flagged)}
        if flagged:
            moved = [f"{u} looks like {b}" for u, b in zip(used, best_names) if u != b]
            result.warnings.append(
                f"intensity signature: the inputs fit another naming better ({'; '.join(moved)}; misfit "
                f"{given:.2f} as given vs {best:.2f})")
    return result


def format_warning(check: ChannelCheck) -> str:
    """One paragraph for stderr (empty when the check found nothing)."""
    if check.ok:
        return ""
    return ("WARNING: the inputs may be swapped or misnamed: " + "; ".join(check.warnings) +
            ". Check the --input names (or the order of unnamed inputs: flair, t1, t1ce, t2); "
            "--strict refuses such inputs.")


def enforce(check: ChannelCheck, strict: bool) -> None:
    """Raise :class:`ChannelCheckError` when ``strict`` and the check found something."""
    if strict and not check.ok:
        raise ChannelCheckError("refusing inputs that may be swapped (--strict): " + "; ".join(check.warnings))


def check_and_warn(channels_zyx: Sequence[np.ndarray], names: Sequence[Optional[str]],
                   paths: Optional[Sequence[Optional[str | os.PathLike]]] = None,
                   mask_zyx: Optional[np.ndarray] = None, *, strict: bool = False,
                   progress_mode: str = "bar") -> ChannelCheck:
    """:func:`check_channels`, then a loud warning on stderr (and a ``{"event": "warning"}`` line on
    stdout in ``--progress json`` mode, for the Slicer module), then :func:`enforce`. Returns the check
    for the sidecar (``check.to_dict()``)."""
    import sys
    check = check_channels(channels_zyx, names, paths, mask_zyx)
    if not check.ok:
        text = format_warning(check)
        print(text, file=sys.stderr)
        if progress_mode == "json":
            from .progress import emit_json
            emit_json("warning", kind="channel_check", message=text, warnings=list(check.warnings))
    enforce(check, strict)
    return check
