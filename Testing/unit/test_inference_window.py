"""Inference tiles with the training crop recorded in the checkpoint; --window overrides; old
checkpoints (no crop recorded) keep the earlier window."""
from __future__ import annotations

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import save_checkpoint
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.inference import (LEGACY_WINDOW_XYZ, InferenceConfig, segment_case, window_for_checkpoint)
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.preprocess import NormalizationConfig


def test_window_rule():
    assert window_for_checkpoint(InferenceConfig(), {"crop_xyz": [96, 96, 64]}) == (96, 96, 64)
    assert window_for_checkpoint(InferenceConfig(window_xyz=(40, 48, 32)), {"crop_xyz": [96, 96, 64]}) == (40, 48, 32)
    for old in (None, {}, {"crop_xyz": None}, {"crop_xyz": [96, 96]}, {"crop_xyz": ["a", 1, 2]}):
        assert window_for_checkpoint(InferenceConfig(), old) == LEGACY_WINDOW_XYZ
    assert InferenceConfig().overlap == 0.5
    with pytest.raises(ValueError, match="window_xyz"):
        InferenceConfig(window_xyz=(4, 96, 96))


@pytest.mark.parametrize("train_config, expected", [({"crop_xyz": [16, 24, 16]}, (16, 24, 16)),
                                                     (None, LEGACY_WINDOW_XYZ)])
def test_segment_case_uses_the_recorded_crop(tmp_path, train_config, expected):
    net_cfg = NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1))
    model = CGCNet(net_cfg)
    path = save_checkpoint(tmp_path / "m.pt", model, net_cfg, ["flair"],
                           {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": None},
                           train_config=train_config)
    rng = np.random.default_rng(0)
    image = np.zeros((20, 30, 40), np.float32)
    image[2:18, 3:27, 4:36] = rng.normal(100, 10, (16, 24, 32))
    geom = Geometry((20, 30, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    res = segment_case([image], geom, ["flair"], path, config=InferenceConfig(device="cpu"), compute_gmm=False)
    assert res.window_xyz == expected
    assert res.probability.shape == image.shape and np.isfinite(res.probability).all()
    forced = segment_case([image], geom, ["flair"], path, config=InferenceConfig(device="cpu", window_xyz=(16, 16, 16)),
                          compute_gmm=False)
    assert forced.window_xyz == (16, 16, 16)


def test_pad_to_window_reaches_the_network_only_where_the_box_is_smaller_than_the_window(tmp_path):
    net_cfg = NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1))
    import torch
    torch.manual_seed(0)
    model = CGCNet(net_cfg)
    pre = {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": None}
    big = save_checkpoint(tmp_path / "big.pt", model, net_cfg, ["flair"], pre, train_config={"crop_xyz": [48, 40, 24]})
    small = save_checkpoint(tmp_path / "small.pt", model, net_cfg, ["flair"], pre, train_config={"crop_xyz": [16, 16, 8]})
    rng = np.random.default_rng(1)
    image = np.zeros((20, 30, 40), np.float32)
    image[2:18, 3:27, 4:36] = rng.normal(100, 10, (16, 24, 32))  # box + 4-voxel margin: 40 x 30 x 20 < 48 x 40 x 24
    geom = Geometry((20, 30, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    run = lambda path, pad: segment_case([image], geom, ["flair"], path, compute_gmm=False,
                                         config=InferenceConfig(device="cpu", pad_to_window=pad)).probability
    shrunk, padded = run(big, False), run(big, True)
    assert padded.shape == image.shape and np.isfinite(padded).all()
    assert np.abs(padded - shrunk).max() > 1e-3  # the padded window's instance norm sees the zeros
    np.testing.assert_array_equal(run(small, True), run(small, False))  # the box fills a 16 x 16 x 8 window
