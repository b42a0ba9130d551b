"""Surface distances, precision and the undefined cases of the metrics, against brute force."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from CGCLesionSegLib.metrics import all_metrics, assd, hd95, precision, sensitivity, surface_distances


def _brute_surface(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Foreground voxels with a face neighbour outside the mask or outside the array."""
    out = []
    Z, Y, X = mask.shape
    for z, y, x in zip(*np.nonzero(mask)):
        for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (z + dz, y + dy, x + dx)
            if not (0 <= n[0] < Z and 0 <= n[1] < Y and 0 <= n[2] < X) or not mask[n]:
                out.append((z, y, x))
                break
    return out


def _brute_distances(pred, ref, spacing):
    sp, sr = np.array(_brute_surface(pred), float), np.array(_brute_surface(ref), float)
    s = np.asarray(spacing, float)
    d_pr = [np.min(np.sqrt((((sr - a) * s) ** 2).sum(1))) for a in sp]
    d_rp = [np.min(np.sqrt((((sp - b) * s) ** 2).sum(1))) for b in sr]
    return np.array(d_pr + d_rp)


@pytest.mark.parametrize("seed", range(5))
def test_surface_distances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 10, size=3))
    spacing = tuple(float(v) for v in rng.uniform(0.5, 3.0, size=3))
    pred = rng.random(shape) > 0.7
    ref = rng.random(shape) > 0.6
    ref[0, 0, 0] = pred[-1, -1, -1] = True  # never empty
    fast = np.sort(surface_distances(pred, ref, spacing))
    slow = np.sort(_brute_distances(pred, ref, spacing))
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-9)
    assert hd95(pred, ref, spacing) == pytest.approx(np.percentile(slow, 95))
    assert assd(pred, ref, spacing) == pytest.approx(slow.mean())


def test_distances_of_shifted_cubes_in_mm():
    a = np.zeros((12, 12, 12), bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 3, axis=2)  # 3 voxels along x at 2 mm: every x-face moves 6 mm
    m = all_metrics(b, a, (1.0, 1.0, 2.0))
    assert m["hd95_mm"] == pytest.approx(6.0) and 0 < m["assd_mm"] < 6.0
    assert m["dice"] == pytest.approx(2 * 4 * 4 * 1 / (2 * 64)) and m["undefined"] is None
    assert all_metrics(a, a, (1, 1, 1))["hd95_mm"] == 0.0


def test_undefined_values_are_none_with_a_reason():
    empty, full = np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool)
    m = all_metrics(full, empty, (1, 1, 1))
    assert m["sensitivity"] is None and m["hd95_mm"] is None and m["assd_mm"] is None
    assert m["precision"] == 0.0 and "reference is empty" in m["undefined"]
    m = all_metrics(empty, full, (1, 1, 1))
    assert m["precision"] is None and m["sensitivity"] == 0.0 and "prediction is empty" in m["undefined"]
    assert sensitivity(empty, empty) is None and precision(empty, empty) is None


def test_precision_against_counting():
    rng = np.random.default_rng(3)
    p, r = rng.random((5, 6, 7)) > 0.5, rng.random((5, 6, 7)) > 0.5
    tp = sum(a and b for a, b in zip(p.ravel(), r.ravel()))
    assert precision(p, r) == pytest.approx(tp / p.sum())
