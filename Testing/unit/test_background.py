"""Skull-stripped images whose outside is a non-zero constant (a whole-volume z-score or offset after
skull stripping) get the same brain mask, P and segmentation as the zero-background original; images
with no constant outside (MRI with skull) are refused by `cgcseg segment` as by `cgcseg gmm`."""
from __future__ import annotations

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import save_checkpoint
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.gmm import GMMConfig, compute_probability_map
from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.inference import InferenceConfig, segment_case
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.preprocess import (NormalizationConfig, background_value, default_brain_mask,
                                        looks_like_mri_with_skull)


def _head(shape=(24, 36, 40), seed=0, skull=False):
    """(flair, t2, brain): an ellipsoid brain with a bright ball, zero outside (or noisy 'skull')."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    c = [(s - 1) / 2 for s in shape]
    brain = sum(((a - m) / (s * 0.42)) ** 2 for a, m, s in zip((z, y, x), c, shape)) <= 1.0
    ball = (z - c[0]) ** 2 + (y - c[1] - 3) ** 2 + (x - c[2] + 4) ** 2 <= 20
    flair = np.where(x < c[2], 100.0, 150.0) + rng.normal(0, 6, shape)
    flair[ball] = 300 + rng.normal(0, 10, int(ball.sum()))
    t2 = 0.7 * flair + rng.normal(0, 4, shape)
    outside = (50 + rng.normal(0, 8, shape)) if skull else 0.0
    return [np.where(brain, ch, outside).astype(np.float32) for ch in (flair, t2)] + [brain]


def _zscore_whole_volume(ch):
    return ((ch - ch.mean()) / ch.std()).astype(np.float32)


def _slow_face_mode(ch):
    """Brute force: count every face voxel's value in a dict (each voxel once)."""
    counts, n = {}, 0
    Z, Y, X = ch.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                if z in (0, Z - 1) or y in (0, Y - 1) or x in (0, X - 1):
                    v = float(ch[z, y, x])
                    counts[v] = counts.get(v, 0) + 1
                    n += 1
    value, count = max(counts.items(), key=lambda kv: kv[1])
    assert list(counts.values()).count(count) == 1, "ambiguous mode; pick another seed"
    return value, count / n


@pytest.mark.parametrize("seed, hits", [(0, 20), (1, 60), (2, 120), (3, 200), (4, 300)])
def test_background_value_against_a_brute_force_count(seed, hits):
    rng = np.random.default_rng(seed)
    # A small box: a constant fill, some voxels replaced by a few other values, a random interior.
    ch = np.full((6, 7, 8), rng.normal(), np.float32)
    ch.ravel()[rng.integers(0, ch.size, hits)] = rng.integers(0, 3, hits).astype(np.float32)
    ch[1:-1, 1:-1, 1:-1] = rng.normal(size=(4, 5, 6))
    value, share = _slow_face_mode(ch)
    assert background_value(ch) == (value if share >= 0.5 else 0.0)


def test_shifted_background_gives_the_original_mask_and_p():
    flair, t2, brain = _head()
    assert background_value(flair) == 0.0
    np.testing.assert_array_equal(default_brain_mask([flair, t2]), brain)
    shifted = [_zscore_whole_volume(flair), _zscore_whole_volume(t2) + 3.0]
    assert background_value(shifted[0]) == pytest.approx(float(shifted[0][0, 0, 0]))
    assert background_value(shifted[0]) < 0 and background_value(shifted[1]) > 0
    np.testing.assert_array_equal(default_brain_mask(shifted), brain)
    cfg = GMMConfig(n_clusters=3)
    p0 = compute_probability_map([flair], None, cfg).probability
    p1 = compute_probability_map([shifted[0]], None, cfg).probability  # was: "does not look skull-stripped"
    assert np.abs(p0 - p1).max() < 1e-3  # z-scoring is affine; the GMM normalises inside the mask
    assert (p1[~brain] == 0).all()


def test_noisy_outside_is_still_mri_with_skull():
    flair, t2, brain = _head(skull=True)
    assert background_value(flair) == 0.0  # no value holds half of the noisy faces
    assert looks_like_mri_with_skull(default_brain_mask([flair, t2]))
    with pytest.raises(ValueError, match="--mask"):
        compute_probability_map([flair], None, GMMConfig(n_clusters=3))


def _checkpoint(tmp_path):
    import torch
    torch.manual_seed(0)
    net_cfg = NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1))
    pre = {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": None,
           "brain_mask": "nonzero"}
    return save_checkpoint(tmp_path / "m.pt", CGCNet(net_cfg), net_cfg, ["flair"], pre,
                           train_config={"crop_xyz": [16, 16, 16]})


def test_segment_refuses_a_head_with_skull_and_takes_a_mask(tmp_path):
    path = _checkpoint(tmp_path)
    flair, _, brain = _head(skull=True)
    geom = Geometry(flair.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    cfg = InferenceConfig(device="cpu")
    with pytest.raises(ValueError, match="does not look skull-stripped"):
        segment_case([flair], geom, ["flair"], path, config=cfg, compute_gmm=False)
    res = segment_case([flair], geom, ["flair"], path, config=cfg, compute_gmm=False, mask_zyx=brain)
    assert (res.probability[~brain] == 0).all() and res.probability[brain].max() > 0


def test_segment_of_a_shifted_volume_equals_the_original(tmp_path):
    path = _checkpoint(tmp_path)
    flair, _, brain = _head()
    geom = Geometry(flair.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    cfg = InferenceConfig(device="cpu", gmm_weight=0.5)
    a = segment_case([flair], geom, ["flair"], path, config=cfg)
    b = segment_case([_zscore_whole_volume(flair)], geom, ["flair"], path, config=cfg)
    np.testing.assert_array_equal(b.brain_mask, brain)
    assert np.abs(a.probability - b.probability).max() < 1e-3
