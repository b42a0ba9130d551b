"""benchmarks/pseudo_label_drift.py: target volumes and Dice against counting voxels one by one, through
files on disk."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))
import pseudo_label_drift as pld  # noqa: E402
from CGCLesionSegLib.image_io import Geometry, write_image  # noqa: E402


@pytest.mark.parametrize("seed", range(3))
def test_drift_matches_a_voxel_count(seed):
    rng = np.random.default_rng(seed)
    a = (rng.random((5, 6, 7)) > 0.6).astype(np.float32)
    b = (rng.random((5, 6, 7)) > 0.5).astype(np.float32)
    got = pld.drift(a, b, 0.008)
    na = sum(1 for i in np.ndindex(a.shape) if a[i] > 0.5)
    nb = sum(1 for i in np.ndindex(b.shape) if b[i] > 0.5)
    both = sum(1 for i in np.ndindex(a.shape) if a[i] > 0.5 and b[i] > 0.5)
    assert got["earlier_ml"] == pytest.approx(na * 0.008) and got["later_ml"] == pytest.approx(nb * 0.008)
    assert got["dice"] == pytest.approx(2 * both / (na + nb))
    with pytest.raises(ValueError, match="different grids"):
        pld.drift(a, b[:-1], 1.0)


def test_compare_pairs_cases_by_file_name_and_reports_totals(tmp_path):
    g = Geometry((4, 5, 6), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    early, late = tmp_path / "r2-pseudo", tmp_path / "r3-pseudo"
    early.mkdir(), late.mkdir()
    m = np.zeros((4, 5, 6), np.float32)
    m[1:3, 1:4, 1:5] = 1  # 24 voxels of 8 mm^3
    write_image(early / "a.nii.gz", m, g)
    shrunk = m.copy()
    shrunk[2] = 0  # 12 voxels left
    write_image(late / "a.nii.gz", shrunk, g)
    write_image(late / "only-late.nii.gz", m, g)  # no earlier target: not compared
    rows = pld.compare(early, late)
    assert list(rows) == ["a"]
    assert rows["a"]["earlier_ml"] == pytest.approx(24 * 0.008) and rows["a"]["later_ml"] == pytest.approx(12 * 0.008)
    assert rows["a"]["dice"] == pytest.approx(2 * 12 / 36)
    text = pld.report([(early, late, rows)])
    assert "| a | 0.2 | 0.1 | 0.500 | 0.667 |" in text and "**0.500** (total)" in text
