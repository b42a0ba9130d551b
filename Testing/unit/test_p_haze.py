"""benchmarks/p_haze.py: shares of the brain by P, against counting voxel by voxel."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import p_haze  # noqa: E402


def test_shares_match_a_voxel_loop_and_ignore_voxels_outside_the_brain():
    rng = np.random.default_rng(0)
    prob = rng.random((6, 7, 8)).astype(np.float32)
    prob[0, 0, :4] = [0.1, 0.2, 0.5, 0.9]  # the bounds: 0.1 is low and not undecided, 0.9 neither
    mask = rng.random((6, 7, 8)) > 0.3
    mask[0, 0, :4] = True
    got = p_haze.shares(prob, mask)
    vals = [float(prob[i]) for i in np.ndindex(prob.shape) if mask[i]]
    n = len(vals)
    assert got["voxels"] == n
    assert got["p_ge_0.5"] == pytest.approx(sum(v >= 0.5 for v in vals) / n)
    assert got["undecided_0.1_0.9"] == pytest.approx(sum(0.1 < v < 0.9 for v in vals) / n)
    assert got["low_0.1_0.2"] == pytest.approx(sum(0.1 <= v < 0.2 for v in vals) / n)
    assert got["mean_p"] == pytest.approx(sum(vals) / n)
    outside = prob.copy()
    outside[~mask] = 0.55  # values outside the brain do not count
    assert p_haze.shares(outside, mask) == got
    with pytest.raises(ValueError, match="empty"):
        p_haze.shares(prob, np.zeros_like(mask))


def test_cases_are_read_once_from_the_first_run_that_cached_them(tmp_path):
    for run, names in (("r1", ["BraTS-GLI-00001-000", "caseA"]), ("r2", ["caseA", "caseB"])):
        (tmp_path / run / "cache").mkdir(parents=True)
        for n in names:
            for kind in ("prob", "mask"):
                np.save(tmp_path / run / "cache" / f"{n}-0123abcd.{kind}.npy", np.zeros(2))
    found = p_haze.cases_of([tmp_path / "r1", tmp_path / "r2"])
    assert sorted(found) == ["BraTS-GLI-00001-000", "caseA", "caseB"]
    assert found["caseA"][0].parent.parent.name == "r1" and found["caseA"][1].name == "caseA-0123abcd.mask.npy"
