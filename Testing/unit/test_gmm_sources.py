"""Probability-source plug-in point and N4 bias-field correction."""
from __future__ import annotations

import numpy as np
import pytest

from CGCLesionSegLib.bias_field import n4_correct
from CGCLesionSegLib.gmm import GMMConfig, compute_probability_map
from CGCLesionSegLib.image_io import Geometry, write_image
from CGCLesionSegLib.probability_source import (FileSource, GMMSource, ProbabilitySource, check_probability,
                                                make_source)

from test_gmm import phantom


def test_gmm_source_matches_pipeline_and_protocol():
    flair, t2, mask, lesion = phantom()
    src = GMMSource(GMMConfig(n_clusters=3))
    assert isinstance(src, ProbabilitySource)
    p = src.probability([flair, t2], None)
    np.testing.assert_array_equal(p, compute_probability_map([flair, t2], None, GMMConfig(n_clusters=3)).probability)
    assert src.describe()["gmm"]["n_clusters"] == 3


def test_file_source_round_trip(tmp_path):
    flair, _, mask, lesion = phantom()
    geom = Geometry(flair.shape, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    p = np.where(lesion, 0.9, 0.05).astype(np.float32)
    path = write_image(tmp_path / "p.nii.gz", p, geom)
    src = make_source(f"file:{path}")
    assert isinstance(src, FileSource) and isinstance(src, ProbabilitySource)
    got = src.probability([flair], mask)
    np.testing.assert_allclose(got[mask], p[mask], atol=1e-6)
    assert np.all(got[~mask] == 0)
    assert src.describe()["path"].endswith("p.nii.gz")
    # a custom class satisfies the protocol too
    class Constant:
        name = "constant"
        def probability(self, channels_zyx, mask_zyx):
            return np.full(channels_zyx[0].shape, 0.5, np.float32)
        def describe(self):
            return {"source": self.name}
    assert isinstance(Constant(), ProbabilitySource)


def test_check_probability_rejects_bad_maps():
    with pytest.raises(ValueError, match="shape"):
        check_probability(np.zeros((2, 2, 2)), (2, 2, 3))
    with pytest.raises(ValueError, match="NaN"):
        check_probability(np.full((2, 2, 2), np.nan), (2, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_probability(np.full((2, 2, 2), 3.0), (2, 2, 2))
    np.testing.assert_array_equal(check_probability(np.full((2, 2, 2), 1.0000001), (2, 2, 2)), 1.0)
    with pytest.raises(ValueError, match="unknown"):
        make_source("mumford-shah")


def test_n4_removes_a_smooth_bias():
    rng = np.random.default_rng(0)
    shape = (24, 40, 40)
    z, y, x = np.indices(shape, dtype=float)
    mask = ((z - 11.5) / 11) ** 2 + ((y - 19.5) / 18) ** 2 + ((x - 19.5) / 18) ** 2 <= 1
    truth = np.where(x < 20, 100.0, 150.0) + rng.normal(0, 2, shape)
    bias = np.exp(0.25 * (y - 19.5) / 19.5)          # smooth multiplicative field, ±25 %
    img = np.where(mask, truth * bias, 0).astype(np.float32)
    out = n4_correct(img, mask, shrink=2)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out[~mask], img[~mask])
    left = mask & (x < 18)
    cv_before = img[left].std() / img[left].mean()
    cv_after = out[left].std() / out[left].mean()
    assert cv_after < 0.6 * cv_before
    with pytest.raises(ValueError, match="empty"):
        n4_correct(img, np.zeros(shape, bool))


def test_n4_fitted_without_a_bright_region_corrects_it_too():
    rng = np.random.default_rng(1)
    shape = (24, 40, 40)
    z, y, x = np.indices(shape, dtype=float)
    brain = ((z - 11.5) / 11) ** 2 + ((y - 19.5) / 18) ** 2 + ((x - 19.5) / 18) ** 2 <= 1
    blob = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 20) ** 2) <= 25  # a bright "lesion" where the field is low
    truth = np.where(blob, 300.0, 100.0) + rng.normal(0, 2, shape)
    bias = np.exp(0.25 * (y - 19.5) / 19.5)
    img = np.where(brain, truth * bias, 0).astype(np.float32)
    fit = brain & ~blob
    inside = n4_correct(img, fit, shrink=2)
    np.testing.assert_array_equal(inside[blob], img[blob])  # default: divided out only where fitted
    out = n4_correct(img, fit, shrink=2, apply_mask_zyx=brain)
    np.testing.assert_array_equal(out[~brain], img[~brain])
    np.testing.assert_array_equal(out[fit], inside[fit])  # the same field where both apply it
    # The blob gets the field of its surroundings: its contrast to the tissue around it is restored.
    ring = brain & ~blob & (((z - 12) ** 2 + (y - 12) ** 2 + (x - 20) ** 2) <= 64)
    ratio_before = img[blob].mean() / img[ring].mean()
    ratio_after = out[blob].mean() / out[ring].mean()
    assert abs(ratio_after - 3.0) <= abs(ratio_before - 3.0) + 0.02 and not np.array_equal(out[blob], img[blob])
    with pytest.raises(ValueError, match="apply-mask"):
        n4_correct(img, fit, shrink=2, apply_mask_zyx=brain[:-1])


def test_n4_in_pipeline_runs():
    flair, _, mask, lesion = phantom()
    res = compute_probability_map([flair], None, GMMConfig(n_clusters=3, n4=True))
    from CGCLesionSegLib.metrics import dice
    assert dice(res.probability >= 0.5, lesion) > 0.9
