"""Training data: case discovery, the per-case cache (normalised image + P + brain mask), random crops.

Flow: :func:`discover_cases` finds the image files of each case (BraTS folder layout or a CSV/JSON
list); :func:`prepare_case` reads them once, resamples to the training spacing when needed, computes
P with the GMM stage (unless the list gives a precomputed P), normalises the channels exactly as
inference will, crops everything to the brain bounding box and caches it as ``.npy`` files under
``RUN_DIR/cache`` (never beside the input data, which may be read-only). A JSON manifest per case
records every setting that went into it; a changed setting or input file invalidates the entry.

Sampling is a pure function of ``(seed, epoch, index)`` (:class:`StepBatchSampler`,
:class:`CropDataset`), so it does not depend on DataLoader workers, and a resumed run draws exactly
the crops an uninterrupted run would have drawn.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from CGCLesionSegLib.image_io import ImageIOError, atomic_write, check_same_grid, read_image
from CGCLesionSegLib.preprocess import NormalizationConfig, default_brain_mask, normalize_channels
from CGCLesionSegLib.sliding_window import brain_bounding_box

CACHE_VERSION = 1
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: Voxels kept around the brain bounding box in the cache (so crops near the edge see background).
BOX_MARGIN = 4
EXTRA_COLUMNS = ("mask", "prob")


@dataclass(frozen=True)
class CaseSpec:
    """Files of one case: ``images`` maps modality → path; ``mask`` / ``prob`` are optional
    (a brain mask; a precomputed foreground map P in [0, 1] that replaces the GMM)."""

    name: str
    images: dict
    mask: Optional[str] = None
    prob: Optional[str] = None


def _find_modality_file(folder: Path, case: str, modality: str) -> Optional[Path]:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{case}_{modality}{suffix}"
        if p.exists():
            return p
    # Case-insensitive fallback (e.g. _FLAIR.nii.gz)
    pattern = re.compile(rf"^{re.escape(case)}_{re.escape(modality)}(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", re.I)
    for p in sorted(folder.iterdir()):
        if pattern.match(p.name):
            return p
    return None


def _cases_from_folder(root: Path, modalities: Sequence[str]) -> list[CaseSpec]:
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no case folders; expected the BraTS layout <case>/<case>_<modality>.nii.gz "
                         f"(modalities {', '.join(modalities)}) or a CSV/JSON list of files")
    cases, problems = [], []
    for d in folders:
        images = {}
        for m in modalities:
            p = _find_modality_file(d, d.name, m)
            if p is None:
                problems.append(f"{d.name}: no {d.name}_{m}.nii.gz")
            else:
                images[m] = str(p)
        if len(images) == len(modalities):
            cases.append(CaseSpec(d.name, images))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … ({len(problems)} in all)" if len(problems) > 5 else "")
        raise ValueError(f"missing image files in {root}: {shown}. Check --modalities (given: "
                         f"{' '.join(modalities)}) or remove incomplete case folders")
    return cases


def _resolve(base: Path, value: str) -> str:
    p = Path(os.path.expanduser(str(value)))
    return str(p if p.is_absolute() else (base / p))


def _cases_from_records(records: list[dict], base: Path, modalities: Sequence[str], source: Path) -> list[CaseSpec]:
    cases = []
    for i, rec in enumerate(records):
        rec = {str(k).strip().lower(): v for k, v in rec.items()}
        missing = [m for m in modalities if not rec.get(m)]
        if missing:
            raise ValueError(f"{source}: entry {i + 1} has no path for {', '.join(missing)}; columns/keys must be "
                             f"case, {', '.join(modalities)} (optional: mask, prob)")
        name = str(rec.get("case") or rec.get("name") or Path(str(rec[modalities[0]])).name.split(".")[0])
        extra = {k: (_resolve(base, rec[k]) if rec.get(k) else None) for k in EXTRA_COLUMNS}
        cases.append(CaseSpec(name, {m: _resolve(base, rec[m]) for m in modalities}, **extra))
    return cases


def discover_cases(cases: str | os.PathLike, modalities: Sequence[str]) -> list[CaseSpec]:
    """Cases from a folder in BraTS layout (``_seg`` files are ignored: labels are never used) or from
    a CSV (header ``case,flair,t1,...[,mask][,prob]``) / JSON list (``[{"case":..,"flair":..}, ...]`` or
    ``{"cases": [...]}``); relative paths in a list are relative to the list file."""
    root = Path(cases)
    modalities = [m.lower() for m in modalities]
    if not root.exists():
        raise ValueError(f"--cases {root} does not exist")
    if root.is_dir():
        found = _cases_from_folder(root, modalities)
    elif root.suffix.lower() == ".csv":
        # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark, which would
        # otherwise become part of the first column's name.
        with open(root, newline="", encoding="utf-8-sig") as fh:
            found = _cases_from_records(list(csv.DictReader(fh)), root.parent, modalities, root)
    elif root.suffix.lower() == ".json":
        try:
            data = json.loads(root.read_text(encoding="utf-8-sig"))
        except ValueError as exc:
            raise ValueError(f"--cases {root} is not valid JSON ({exc})") from None
        records = data.get("cases") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise ValueError(f"{root}: expected a JSON list of cases or {{\"cases\": [...]}}")
        found = _cases_from_records(records, root.parent, modalities, root)
    else:
        raise ValueError(f"--cases {root}: give a folder (BraTS layout) or a .csv/.json list of files")
    if not found:
        raise ValueError(f"no case found in {root}")
    names = [c.name for c in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"case names used twice in {root}: {', '.join(dup[:5])}; give each case a unique name")
    for c in found:
        for p in list(c.images.values()) + [c.mask, c.prob]:
            if p is not None and not Path(p).exists():
                raise ValueError(f"case {c.name}: file not found: {p}")
    return found


# ----------------------------------------------------------------------------------------- cache
@dataclass
class CachedCase:
    """One prepared case, memory-mapped from the cache: ``image`` ``(C, Z, Y, X)`` float32,
    ``prob`` ``(Z, Y, X)`` float32, ``mask`` ``(Z, Y, X)`` bool — all cropped to the brain box."""

    name: str
    image: np.ndarray
    prob: np.ndarray
    mask: np.ndarray
    meta: dict = field(default_factory=dict)
    source: Optional[str] = None  # cache path stem; lets worker processes re-open the memory maps

    def __getstate__(self) -> dict:
        # With the "spawn" start method (Windows, macOS) DataLoader workers receive the dataset by
        # pickling: send the cache paths, not the arrays, so every worker maps the same files.
        state = dict(self.__dict__)
        if self.source is not None:
            for n in ("image", "prob", "mask"):
                state[n] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.source is not None and self.image is None:
            for n in ("image", "prob", "mask"):
                setattr(self, n, np.load(f"{self.source}.{n}.npy", mmap_mode="r"))


def _file_fingerprint(path: str) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(spec: CaseSpec, settings: dict) -> dict:
    """Everything that determines a cache entry; any change means recompute."""
    return {"cache_version": CACHE_VERSION, "settings": settings,
            "images": {m: _file_fingerprint(p) for m, p in spec.images.items()},
            "mask": _file_fingerprint(spec.mask) if spec.mask else None,
            "prob": _file_fingerprint(spec.prob) if spec.prob else None}


def _cache_stem(spec: CaseSpec) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.name)[:80]
    digest = hashlib.sha1(json.dumps(sorted(spec.images.items())).encode()).hexdigest()[:8]
    return f"{safe}-{digest}"


def load_cached(cache_dir: Path, spec: CaseSpec, settings: dict) -> Optional[CachedCase]:
    """The cached case when its manifest matches ``settings`` and the input files; else None."""
    stem = _cache_stem(spec)
    manifest = cache_dir / f"{stem}.json"
    if not manifest.exists():
        return None
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != json.loads(json.dumps(cache_key(spec, settings))):
        return None
    try:
        arrays = {n: np.load(cache_dir / f"{stem}.{n}.npy", mmap_mode="r") for n in ("image", "prob", "mask")}
    except (OSError, ValueError):
        return None
    return CachedCase(spec.name, arrays["image"], arrays["prob"], arrays["mask"], meta, str(cache_dir / stem))


def prepare_case(spec: CaseSpec, cache_dir: str | os.PathLike, settings: dict,
                 compute_prob: Callable[[list, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> CachedCase:
    """Cache one case (or reuse its valid cache entry).

    ``settings``: JSON-able dict with at least ``modalities``, ``normalization`` (NormalizationConfig
    fields), ``spacing_xyz`` (list or None) and whatever else went into P (e.g. the GMM config).
    ``compute_prob(channels_zyx, mask_zyx) -> (P, mask)`` runs the GMM stage; it is not called when the
    case gives a precomputed P.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = load_cached(cache_dir, spec, settings)
    if cached is not None:
        return cached
    modalities = settings["modalities"]
    images = [read_image(spec.images[m]) for m in modalities]
    ref = images[0]
    for m, im in zip(modalities[1:], images[1:]):
        check_same_grid(ref.geometry, im.geometry, f"{spec.name} {modalities[0]}", f"{spec.name} {m}")
    channels = [im.array_zyx for im in images]
    geometry = ref.geometry
    mask = None
    if spec.mask:
        mimg = read_image(spec.mask, dtype=None)
        check_same_grid(geometry, mimg.geometry, f"{spec.name} {modalities[0]}", f"{spec.name} mask")
        mask = mimg.array_zyx != 0
    prob = None
    if spec.prob:
        pimg = read_image(spec.prob)
        check_same_grid(geometry, pimg.geometry, f"{spec.name} {modalities[0]}", f"{spec.name} prob")
        prob = pimg.array_zyx.astype(np.float32)
        if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
            raise ValueError(f"case {spec.name}: the precomputed P {spec.prob} must lie in [0, 1]")
    if settings.get("orientation"):  # the voxel order inference uses too (CGCLesionSegLib.orientation)
        from CGCLesionSegLib.orientation import Reorientation
        turn = Reorientation(geometry, settings["orientation"])
        channels = [turn.forward(c) for c in channels]
        mask, prob, geometry = turn.forward(mask), turn.forward(prob), turn.geometry
    spacing = settings.get("spacing_xyz")
    if spacing is not None:
        from CGCLesionSegLib.resample import grid_for_spacing, resample_to_grid, same_spacing
        if not same_spacing(geometry.spacing, spacing):
            target = grid_for_spacing(geometry, spacing)
            channels = [resample_to_grid(c, geometry, target, "linear") for c in channels]
            if mask is not None:
                mask = resample_to_grid(mask.astype(np.uint8), geometry, target, "nearest") > 0
            if prob is not None:
                prob = np.clip(resample_to_grid(prob, geometry, target, "linear"), 0.0, 1.0)
            geometry = target
    if prob is None:
        prob, gmm_mask = compute_prob(channels, mask)
        if mask is None:
            mask = np.asarray(gmm_mask, dtype=bool)
    if mask is None:
        mask = default_brain_mask(channels)
    if not mask.any():
        raise ValueError(f"case {spec.name}: the brain mask is empty")
    norm_cfg = NormalizationConfig(**{k: tuple(v) if isinstance(v, list) else v
                                      for k, v in settings["normalization"].items()})
    image = normalize_channels(channels, mask, norm_cfg)
    prob = np.where(mask, np.asarray(prob, dtype=np.float32), np.float32(0.0))
    if settings.get("target_sigma_mm"):  # the training target, smoothed on the training grid
        from CGCLesionSegLib.postprocess import smooth_probability
        prob = np.where(mask, smooth_probability(prob, settings["target_sigma_mm"], geometry.spacing), np.float32(0.0))
    box = brain_bounding_box(mask, BOX_MARGIN)  # the same box rule as inference
    arrays = {"image": np.ascontiguousarray(image[(slice(None),) + box]),
              "prob": np.ascontiguousarray(prob[box]), "mask": np.ascontiguousarray(mask[box])}
    stem = _cache_stem(spec)
    manifest = cache_dir / f"{stem}.json"
    if manifest.exists():
        manifest.unlink()  # invalidate first: arrays and manifest must never disagree
    for n, a in arrays.items():
        with atomic_write(cache_dir / f"{stem}.{n}.npy", "wb") as fh:
            np.save(fh, a)
    meta = {"key": cache_key(spec, settings), "case": spec.name, "box_zyx": [[s.start, s.stop] for s in box],
            "shape_zyx": list(mask.shape), "spacing_xyz": list(geometry.spacing),
            "lesion_fraction": float((arrays["prob"][arrays["mask"]] >= 0.5).mean())}
    with atomic_write(manifest) as fh:  # the manifest is written last: it marks a complete entry
        json.dump(meta, fh, indent=1)
    return load_cached(cache_dir, spec, settings)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------- sampling
def steps_per_epoch(n_cases: int, batch_size: int, world_size: int = 1) -> int:
    return max(1, math.ceil(n_cases / (batch_size * world_size)))


class StepBatchSampler(Sampler):
    """Yields, for steps ``start_step .. total_steps-1``, this rank's batch of keys
    ``(epoch, slot, case_index)``.

    Epoch ``e`` shuffles the cases with ``default_rng([seed, e])`` and tiles the permutation to
    ``steps_per_epoch × batch × world`` slots; step ``s`` of the epoch gives rank ``r`` the slots
    ``s·B·W + r·B … + B − 1``, so ranks see disjoint shards and every rank agrees on the schedule.
    """

    def __init__(self, n_cases: int, batch_size: int, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.b, self.seed = n_cases, batch_size, seed
        self.total, self.start, self.rank, self.world = total_steps, start_step, rank, world_size
        self.spe = steps_per_epoch(n_cases, batch_size, world_size)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        reps = math.ceil(self.spe * self.b * self.world / self.n)
        return np.tile(perm, reps)

    def batch_keys(self, step: int) -> list[tuple[int, int, int]]:
        epoch, s = divmod(step, self.spe)
        order = self.epoch_order(epoch)
        first = s * self.b * self.world + self.rank * self.b
        return [(epoch, slot, int(order[slot])) for slot in range(first, first + self.b)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.total):
            yield self.batch_keys(step)


class CropDataset(Dataset):
    """Random crop + augmentation of cached cases, keyed by ``(epoch, slot, case_index)``.

    Returns ``{"image": (C, Z, Y, X) float32, "prob": (1, Z, Y, X) float32, "case": int}``. Cases smaller
    than the crop are zero-padded (0 = background of normalised images and of P).
    """

    def __init__(self, cases: Sequence[CachedCase], crop_zyx: Sequence[int], seed: int = 0,
                 lesion_crop_fraction: float = 0.5, flip: bool = True, intensity_jitter: float = 0.1,
                 augment: str = "basic") -> None:
        if augment not in ("basic",) + tuple(SCANNER_PROBABILITY):
            raise ValueError(f"augment must be basic, {' or '.join(SCANNER_PROBABILITY)}, got {augment!r}")
        self.augment = augment
        self.cases = list(cases)
        self.crop = tuple(int(c) for c in crop_zyx)
        self.seed = seed
        self.lesion_crop_fraction = lesion_crop_fraction
        self.flip = flip
        self.jitter = intensity_jitter
        self._centres: dict = {}

    def __len__(self) -> int:
        return len(self.cases)

    def _candidates(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of brain voxels and of P ≥ 0.5 voxels (computed lazily, per process)."""
        if ci not in self._centres:
            case = self.cases[ci]
            brain = np.flatnonzero(np.asarray(case.mask))
            lesion = np.flatnonzero(np.asarray(case.prob) >= 0.5)
            self._centres[ci] = (brain, lesion)
        return self._centres[ci]

    def crop_start(self, ci: int, rng: np.random.Generator) -> tuple[int, int, int]:
        case = self.cases[ci]
        shape = case.mask.shape
        brain, lesion = self._candidates(ci)
        pool = lesion if (lesion.size and rng.random() < self.lesion_crop_fraction) else brain
        centre = np.unravel_index(int(pool[rng.integers(pool.size)]), shape)
        starts = []
        for c, size, n in zip(centre, self.crop, shape):
            lo = c - size // 2
            starts.append(int(min(max(lo, 0), max(n - size, 0))) if n >= size else 0)
        return tuple(starts)  # type: ignore[return-value]

    def __getitem__(self, key) -> dict:
        epoch, slot, ci = (int(k) for k in key)
        rng = np.random.default_rng([self.seed, epoch, slot, ci, 7])
        case = self.cases[ci]
        start = self.crop_start(ci, rng)
        sl = tuple(slice(s, s + c) for s, c in zip(start, self.crop))
        image = np.asarray(case.image[(slice(None),) + sl], dtype=np.float32)
        prob = np.asarray(case.prob[sl], dtype=np.float32)
        mask = np.asarray(case.mask[sl], dtype=bool)
        if image.shape[1:] != self.crop:
            pads = [(0, c - s) for s, c in zip(image.shape[1:], self.crop)]
            image = np.pad(image, [(0, 0)] + pads)
            prob = np.pad(prob, pads)
            mask = np.pad(mask, pads)
        if self.jitter > 0:
            a = rng.normal(0.0, self.jitter, size=image.shape[0]).astype(np.float32)
            b = rng.normal(0.0, self.jitter, size=image.shape[0]).astype(np.float32)
            image = np.where(mask[None], image * (1 + a)[:, None, None, None] + b[:, None, None, None], image)
        if self.augment in SCANNER_PROBABILITY:
            # Its own stream: the crop, jitter and flips stay those of the basic recipe.
            image = scanner_augment(image, mask, np.random.default_rng([self.seed, epoch, slot, ci, 11]),
                                    SCANNER_PROBABILITY[self.augment])
        if self.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    image = np.flip(image, axis + 1)
                    prob = np.flip(prob, axis)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "prob": torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None],
                "case": ci}


# ----------------------------------------------------------------------------------------- scanner augmentation
#: Probability of each scanner perturbation per crop (independently).
SCANNER_P = 0.3
#: ``augment`` name -> that probability (``scanner-strong``: the same perturbations, more often).
SCANNER_PROBABILITY = {"scanner": SCANNER_P, "scanner-strong": 0.6}


def _linear_resize(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``a`` resampled along ``axis`` to ``size`` voxels by linear interpolation, voxel centres aligned (output
    voxel ``o`` reads input position ``(o + 0.5)·n/size − 0.5``, clamped to the edge voxels), in float64 and
    returned as float32: the same numbers as ``scipy.ndimage.zoom(a, …, order=1, mode="nearest",
    grid_mode=True)`` with that axis zoomed and the others at 1 (tested bit for bit), without its 3-D spline loop."""
    n = a.shape[axis]
    pos = np.clip((np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5, 0.0, n - 1)
    lo = np.floor(pos).astype(np.intp)
    w = (pos - lo).reshape([-1 if k == axis else 1 for k in range(a.ndim)])
    hi = np.minimum(lo + 1, n - 1)
    return (np.take(a, lo, axis=axis) * (1.0 - w) + np.take(a, hi, axis=axis) * w).astype(np.float32)


def scanner_augment(image_czyx: np.ndarray, mask_zyx: np.ndarray, rng: np.random.Generator,
                    p: float = SCANNER_P) -> np.ndarray:
    """Perturb a normalised crop ``(C, Z, Y, X)`` as another scanner or pipeline would; ``mask_zyx``
    ``(Z, Y, X)`` is the brain (outside it the image stays 0). Each step fires with probability ``p``
    (:data:`SCANNER_P` by default), drawn from ``rng`` only (so crops stay a pure function of their key):

    * gamma per channel: intensities mapped to [0, 1] inside the brain of the crop, raised to
      ``exp(N(0, 0.3))``, mapped back (contrast curves of other sequences / windowing);
    * bias field: one smooth multiplicative field ``exp(b)``, ``b`` a random quadratic in (z, y, x)
      with |b| ≲ 0.25, applied to the intensities above the crop's brain minimum (coil shading
      left by pipelines without N4);
    * thick slices: along one random axis, keep 1 in ``f`` = 2–4 voxels and linearly interpolate back
      (scans acquired with thick slices and resampled, as the ISBI MS FLAIRs). Each thick voxel is the
      value at its block's centre (linear interpolation at ``f·j + (f − 1)/2``: the mean of the block for
      ``f`` = 2, its middle voxel for 3, the mean of its two middle voxels for 4), not the block's mean;
      :func:`_linear_resize` does both resamplings exactly as ``scipy.ndimage.zoom(order=1,
      mode="nearest", grid_mode=True)`` would, for all channels at once (a ``scanner`` crop 1.8× faster than
      with per-channel zooms: docs/BENCHMARKS.md ``augment``);
    * noise: Gaussian, SD U(0, 0.1) in normalised units (brain SD = 1).
    """
    out = np.array(image_czyx, dtype=np.float32, copy=True)
    brain = np.asarray(mask_zyx, dtype=bool)
    if not brain.any():
        return out
    c = out.shape[0]
    if rng.random() < p:
        for ch in range(c):
            v = out[ch][brain]
            lo, hi = float(v.min()), float(v.max())
            if hi - lo > 1e-6:
                g = float(np.exp(rng.normal(0.0, 0.3)))
                out[ch][brain] = ((v - lo) / (hi - lo)) ** g * (hi - lo) + lo
    if rng.random() < p:
        # Broadcast 1-D axes instead of full grids: the same float32 operations per voxel, so the same field.
        z, y, x = (np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if a == k else 1 for a in range(3)])
                   for k, n in enumerate(out.shape[1:]))
        coef = rng.normal(0.0, 0.08, size=9).astype(np.float32)
        b = (coef[0] * z + coef[1] * y + coef[2] * x + coef[3] * z * z + coef[4] * y * y + coef[5] * x * x
             + coef[6] * z * y + coef[7] * z * x + coef[8] * y * x)
        field = np.exp(np.clip(b, -0.4, 0.4))
        for ch in range(c):
            floor = float(out[ch][brain].min())
            out[ch] = np.where(brain, (out[ch] - floor) * field + floor, out[ch])
    if rng.random() < p:
        axis = int(rng.integers(3))
        factor = int(rng.integers(2, 5))
        n = out.shape[axis + 1]
        if n >= 2 * factor:
            m = int(round(n * (1.0 / factor)))  # the sizes scipy.ndimage.zoom gives (Python's round)
            back = _linear_resize(_linear_resize(out, axis + 1, m), axis + 1, int(round(m * (n / m))))
            back = back[(slice(None),) + tuple(slice(0, s) for s in out.shape[1:])]
            if back.shape == out.shape:
                out = np.where(brain[None], back, out)
    if rng.random() < p:
        sd = float(rng.uniform(0.0, 0.1))
        out += np.where(brain[None], rng.normal(0.0, sd, size=out.shape).astype(np.float32), np.float32(0.0))
    return out
