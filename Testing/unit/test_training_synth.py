"""Tiny synthetic cohorts for the training tests (helpers imported by the other test_training* files),
plus a check that the phantoms are what the tests assume."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from CGCLesionSegLib.image_io import Geometry, read_image, write_image

REPO = Path(__file__).resolve().parents[2]
MODS = ("flair", "t2")
SHAPE_ZYX = (20, 28, 24)
#: A network small enough for 16³ crops on 2 CPU cores in well under a second per step.
TINY_NET_ARGS = ["--widths", "2", "3", "4", "4", "--blocks", "0", "0", "1", "1", "--decoder-width", "2",
                 "--projection-dim", "4", "--patch", "1", "1", "1"]


def geometry(shape_zyx=SHAPE_ZYX, spacing=(1.0, 1.0, 1.0)) -> Geometry:
    return Geometry(tuple(shape_zyx), tuple(spacing), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def phantom(seed: int, shape_zyx=SHAPE_ZYX):
    """(channels dict, brain mask, lesion-ish P) of a skull-stripped-looking head with one bright blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    brain = (z ** 2 + y ** 2 + x ** 2) < 0.85
    c = rng.uniform(-0.3, 0.3, size=3)
    blob = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < 0.12
    chans = {}
    for i, m in enumerate(MODS):
        img = 100.0 + 10 * rng.normal(size=shape_zyx) + (80.0 if i == 0 else 40.0) * blob
        chans[m] = np.where(brain, img, 0.0).astype(np.float32)
    prob = np.where(brain, np.clip(blob * 0.9 + rng.uniform(0, 0.1, size=shape_zyx), 0, 1), 0).astype(np.float32)
    return chans, brain, prob


def write_brats_folder(root: Path, n_cases: int = 2, with_seg: bool = True, shape_zyx=SHAPE_ZYX,
                       spacing=(1.0, 1.0, 1.0)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_cases):
        name = f"Case{k:03d}"
        d = root / name
        chans, brain, _ = phantom(k, shape_zyx)
        for m, a in chans.items():
            write_image(d / f"{name}_{m}.nii.gz", a, geometry(shape_zyx, spacing))
        if with_seg:
            write_image(d / f"{name}_seg.nii.gz", brain.astype(np.uint8), geometry(shape_zyx, spacing))
    return root


def write_csv_with_prob(root: Path, n_cases: int = 2) -> Path:
    """Cases listed in a CSV with relative paths and a precomputed P (no GMM needed)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_cases):
        chans, brain, prob = phantom(100 + k)
        row = {"case": f"s{k}"}
        for m, a in chans.items():
            write_image(root / "img" / f"s{k}_{m}.nii.gz", a, geometry())
            row[m] = f"img/s{k}_{m}.nii.gz"
        write_image(root / "img" / f"s{k}_p.nii.gz", prob, geometry())
        row["prob"] = f"img/s{k}_p.nii.gz"
        rows.append(row)
    path = root / "cases.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", *MODS, "prob"])
        w.writeheader()
        w.writerows(rows)
    return path


def subprocess_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "CGCLesionSeg"), env.get("PYTHONPATH", "")])
    return env


def run_cli(args, timeout=300, threads=1, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "CGCTraining", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(threads), cwd=str(REPO), **kw)


def test_phantom_files_round_trip(tmp_path):
    root = write_brats_folder(tmp_path / "cases", n_cases=1)
    img = read_image(root / "Case000" / "Case000_flair.nii.gz")
    assert img.array_zyx.shape == SHAPE_ZYX
    chans, brain, prob = phantom(0)
    assert np.array_equal(img.array_zyx, chans["flair"])
    assert 0 < prob[brain].mean() < 0.5 and prob[~brain].max() == 0
