"""Time to make one training crop (``CropDataset[key]``: crop, jitter, ``scanner`` augmentation, flips) — the
work each data worker does per sample, which is what bounds a GPU's training rate (docs/BENCHMARKS.md
``train-cuda``: 26.6 steps/s with 12 workers against 46.8 for the bare step).

Variants, timed interleaved in one process (median over ``--rounds`` of the per-round mean over ``--crops`` keys):

* ``basic``: crop, intensity jitter and flips only;
* ``scanner``: the shipped recipe's augmentation as it is now;
* ``scanner, scipy reference``: the same, with the thick-slice resampling done per channel by
  ``scipy.ndimage.zoom`` (``order=1, mode="nearest", grid_mode=True``), which is how it was done until
  2026-12-04. The benchmark checks that both give the same crops, bit for bit, before timing them;
* ``scanner-strong``: the four perturbations with p = 0.6.

The case is synthetic (random intensities in an ellipsoid brain, a blob-shaped P) of a BraTS volume's size on the
shipped 2 mm grid (4 × 78 × 120 × 120); the crop is the shipped 96×96×64 (x, y, z). Writes the ``augment`` section of
docs/BENCHMARKS.md (``--no-write`` prints).

    python benchmarks/bench_augment.py [--rounds 5] [--crops 40]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def synthetic_case(shape_zyx=(78, 120, 120), channels: int = 4, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape_zyx], indexing="ij")
    brain = sum(g * g for g in grids) < 0.85
    image = rng.normal(size=(channels,) + tuple(shape_zyx)).astype(np.float32)
    image[:, ~brain] = 0.0
    lesion = (grids[0] - 0.2) ** 2 + (grids[1] + 0.3) ** 2 + grids[2] ** 2 < 0.06
    return SimpleNamespace(name="synthetic", meta={}, source=None, image=image, mask=brain,
                           prob=lesion.astype(np.float32))


def scipy_resize(a: np.ndarray, axis: int, size: int) -> np.ndarray:
    """The thick-slice resampling as it was: ``scipy.ndimage.zoom`` per channel, that axis only."""
    from scipy.ndimage import zoom
    n = a.shape[axis]
    factors = [size / n if k == axis - 1 else 1.0 for k in range(3)]
    return np.stack([zoom(c, factors, order=1, mode="nearest", grid_mode=True) for c in a])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--crops", type=int, default=40)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import CGCTraining.data as data
    from _report import machine_line, publish

    case = synthetic_case()
    crop = (64, 96, 96)
    keys = [(0, slot, 0) for slot in range(args.crops)]
    fast = data._linear_resize

    def dataset(augment):
        return data.CropDataset([case], crop, seed=3, augment=augment)

    def with_scipy(fn):
        def run(*a, **k):
            data._linear_resize = scipy_resize
            try:
                return fn(*a, **k)
            finally:
                data._linear_resize = fast
        return run

    # The scipy reference gives the same sizes (Python's round, as zoom's) and, tested bit for bit, the same values.
    scan = dataset("scanner")
    for k in keys:
        a = scan[k]["image"].numpy()
        b = with_scipy(scan.__getitem__)(k)["image"].numpy()
        if not np.array_equal(a, b):
            raise SystemExit(f"crop {k}: the scipy reference differs from the fast resampling")

    variants = {"basic": dataset("basic").__getitem__, "scanner": scan.__getitem__,
                "scanner, scipy reference": with_scipy(scan.__getitem__),
                "scanner-strong": dataset("scanner-strong").__getitem__,
                "scanner-strong, scipy reference": with_scipy(dataset("scanner-strong").__getitem__),
                # The noise step's draw alone, as scanner_augment makes it when the step fires.
                "noise draw alone (when that step fires)": lambda k: np.random.default_rng(k).normal(
                    0.0, 0.05, size=case.image.shape[:1] + crop).astype(np.float32)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    ratios: dict[str, list[float]] = {"scanner": [], "scanner-strong": []}
    for _ in range(args.rounds):
        this = {}
        for name, get in variants.items():
            t0 = time.perf_counter()
            for k in keys:
                get(k)
            this[name] = (time.perf_counter() - t0) / len(keys)
            times[name].append(this[name])
        for name in ratios:
            ratios[name].append(this[f"{name}, scipy reference"] / this[name])
    med = {name: statistics.median(t) for name, t in times.items()}

    lines = ["## Training crops (`benchmarks/bench_augment.py`)", "",
             f"One crop of {crop[2]}×{crop[1]}×{crop[0]} (x×y×z) from a synthetic 4-channel case of 120×120×78 voxels "
             f"(a BraTS volume on the shipped 2 mm grid): `CropDataset[key]`, i.e. crop, intensity jitter, the named "
             f"augmentation and flips — a data worker's work per sample. Mean over {args.crops} keys, median of "
             f"{args.rounds} interleaved rounds; one process, one thread.", "",
             "| variant | ms per crop |", "|---|---|"]
    lines += [f"| {name} | {med[name] * 1e3:.1f} |" for name in variants]
    lines += ["", "| ratio (scipy reference / now), median of the rounds' ratios | |", "|---|---|"]
    lines += [f"| {name} | {statistics.median(r):.2f} |" for name, r in ratios.items()]
    lines += ["", "The scipy reference is the thick-slice resampling as it was until 2026-12-04 (`scipy.ndimage.zoom` per "
              "channel); the benchmark first checks that it gives the same crops bit for bit "
              f"({len(keys)} keys). What each crop costs beyond `basic` is the augmentation's; of that, the Gaussian "
              "noise draw (float64 normals for every voxel of the crop, last row; it fires on 30 % of crops with "
              "`scanner`) is kept as it is so that the random stream, and so the crops, stay those of the confirmed "
              "recipe.", "", machine_line()]
    publish("augment", "\n".join(lines), not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
