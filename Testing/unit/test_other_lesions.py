"""benchmarks/other_lesions.py: lesion-hit share against a brute-force flood fill, and the declared CT
bleed generator (shape, intensity, seeding) on a small synthetic head."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))
import other_lesions as ol  # noqa: E402
from flood_fill import flood_components  # noqa: E402


@pytest.mark.parametrize("seed", range(4))
def test_lesions_touched_matches_a_flood_fill(seed):
    rng = np.random.default_rng(seed)
    ref = rng.random((7, 8, 9)) > 0.85
    pred = rng.random((7, 8, 9)) > 0.9
    comps = flood_components(ref)
    want = sum(any(pred[p] for p in c) for c in comps) / len(comps)
    assert ol.lesions_touched(pred, ref) == pytest.approx(want)
    assert ol.lesions_touched(pred, np.zeros_like(ref)) is None


def _head(shape=(40, 48, 44)):
    z, y, x = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    brain = ((z - c[0]) / 18) ** 2 + ((y - c[1]) / 22) ** 2 + ((x - c[2]) / 20) ** 2 <= 1
    return np.where(brain, 30.0, 0.0).astype(np.float32), brain


def test_bleeds_are_seeded_inside_the_brain_at_the_declared_intensity():
    ct, brain = _head()
    a, bleed = ol.synthetic_bleeds(ct, brain, (1.0, 1.0, 1.0), 3, seed=7)
    b, bleed_b = ol.synthetic_bleeds(ct, brain, (1.0, 1.0, 1.0), 3, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bleed, bleed_b)
    assert bleed.any() and not (bleed & ~brain).any()
    np.testing.assert_array_equal(a[~brain], ct[~brain])  # nothing changes outside the brain
    # Brain noise has SD ~4 HU around 30; bleeds sit at 55-80 HU plus the same noise.
    healthy = a[brain & ~bleed]
    assert abs(float(healthy.mean()) - 30.0) < 0.5 and 3.5 < float(healthy.std()) < 4.5
    assert 55.0 - 20 < float(a[bleed].min()) and float(a[bleed].max()) < 80.0 + 20
    assert 55.0 <= float(np.median(a[bleed])) <= 80.0
    # At most 3 ellipsoids, each no larger than its 15 mm semi-axes allow.
    assert 1 <= len(flood_components(bleed)) <= 3
    assert bleed.sum() <= 3 * 4 / 3 * np.pi * 15 ** 3
    other, _ = ol.synthetic_bleeds(ct, brain, (1.0, 1.0, 1.0), 3, seed=8)
    assert not np.array_equal(other, a)


def test_bleeds_need_deep_brain():
    ct, brain = _head((40, 48, 44))
    brain[:] = False
    brain[15:25, 15:25, 15:25] = True  # 10 voxels wide: no voxel is 12 mm deep
    with pytest.raises(ValueError, match="12 mm"):
        ol.synthetic_bleeds(ct, brain, (1.0, 1.0, 1.0), 1, seed=0)


def test_report_means_skip_undefined_values_and_name_the_hot_template_share():
    def m(d, s, p, t):
        return {"dice": d, "sensitivity": s, "precision": p, "lesions_touched": t, "voxels": 10}
    ms = {"a": {c: m(0.2, 0.5, 0.1, 1.0) for c in ol.MS_COLUMNS}, "b": {c: m(0.4, None, None, 0.5) for c in ol.MS_COLUMNS}}
    ct = {"single/0": {"gmm_default": {**m(0.1, 1.0, 0.05, 1.0), "bleed_voxels": 5}},
          "three/0": {"gmm_default": {**m(0.3, 1.0, 0.2, 1.0), "bleed_voxels": 9}}}
    text = ol.report(ms, ct, {"voxels": 123, "share": 0.0531})
    assert "| **mean** | **0.300** (0.500 / 0.100; 0.750)" in text  # None left out of the means
    assert "| b | 0.400 (— / —; 0.500)" in text
    assert "**single mean** | | | **0.100**" in text and "**three mean** | | | **0.300**" in text
    assert "123 voxels (5.3 %)" in text
    assert "MS lesions" not in ol.report({}, ct) and "head-CT" not in ol.report(ms, {})
