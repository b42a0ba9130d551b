"""CGCNet: config validation, x×y×z ↔ (Z, Y, X), output shapes for odd sizes, path switches, patch pooling."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from CGCLesionSegLib.config import xyz_to_zyx, zyx_to_xyz
from CGCLesionSegLib.network import (CGCNet, NetConfig, count_parameters, downsample_to_bottleneck, pad_to_multiple,
                                     patch_pool)

TINY = dict(widths=(2, 3, 4, 5), blocks=(0, 1, 1, 1), decoder_width=2, projection_dim=8)


def tiny(**kw) -> NetConfig:
    return NetConfig(**{**TINY, **kw})


def test_default_config_is_the_documented_one():
    cfg = NetConfig()
    assert cfg.in_channels == 4 and cfg.coarse and cfg.fine
    assert cfg.patch_size_xyz == (6, 6, 4) and cfg.patch_size_zyx == (4, 6, 6)
    assert cfg.fusion == "concat_residual"
    # The default is documented with its measured cost in the docstring.
    assert "(8,24,48,96)" in NetConfig.__doc__ and cfg.widths == (8, 24, 48, 96)


@pytest.mark.parametrize("kw, word", [
    (dict(in_channels=0), "in_channels"), (dict(widths=(8, 16, 32)), "widths"), (dict(widths=(8, 0, 2, 2)), "widths"),
    (dict(blocks=(0, -1, 1, 1)), "blocks"), (dict(norm="layer"), "norm"), (dict(fusion="add"), "fusion"),
    (dict(patch_size_xyz=(6, 6)), "patch_size_xyz"), (dict(patch_size_xyz=(6, 0, 4)), "patch_size_xyz"),
    (dict(projection_dim=0), "projection_dim"), (dict(decoder_width=0), "decoder_width")])
def test_config_rejects_bad_values(kw, word):
    with pytest.raises(ValueError, match=word):
        NetConfig(**kw)


def test_config_is_frozen_and_normalises_lists():
    cfg = NetConfig(widths=[2, 3, 4, 5], patch_size_xyz=[3, 3, 4])
    assert cfg.widths == (2, 3, 4, 5) and cfg.patch_size_xyz == (3, 3, 4)
    with pytest.raises(Exception):
        cfg.coarse = False  # type: ignore[misc]


def test_xyz_zyx_conversion_and_paper_bottleneck():
    assert xyz_to_zyx((192, 192, 64)) == (64, 192, 192)
    assert zyx_to_xyz(xyz_to_zyx((6, 5, 4))) == (6, 5, 4)
    # Paper §4.3: 192×192×64 (x×y×z) → bottleneck 24×24×8 (x×y×z); our tensors are (B, C, Z, Y, X).
    torch.manual_seed(0)
    net = CGCNet(NetConfig(in_channels=1, widths=(1, 1, 1, 2), blocks=(0, 0, 0, 0), decoder_width=1,
                           projection_dim=2)).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *xyz_to_zyx((192, 192, 64))))
    assert tuple(out["logits"].shape) == (1, 1, 64, 192, 192)
    assert zyx_to_xyz(out["coarse_logits"].shape[-3:]) == (24, 24, 8)
    # 6×6×4 mini-patches on a 24×24×8 grid: 4·4·2 = 32 patches.
    assert out["embeddings"].shape[1] == 32


@pytest.mark.parametrize("size", [(16, 16, 16), (17, 23, 30), (9, 11, 13), (5, 7, 3)])
def test_shapes_for_odd_sizes(size):
    torch.manual_seed(0)
    cfg = tiny(in_channels=3, patch_size_xyz=(2, 2, 1))
    net = CGCNet(cfg).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = net(x)
        seg = net.segment_logits(x)
    grid = tuple(max(-(-s // 8), 2) for s in size)
    assert tuple(out["logits"].shape) == (2, 1) + size
    assert tuple(out["coarse_logits"].shape) == (2, 1) + grid
    n_patches = int(np.prod([-(-g // p) for g, p in zip(grid, cfg.patch_size_zyx)]))
    assert tuple(out["embeddings"].shape) == (2, n_patches, 8)
    assert torch.allclose(seg, out["logits"], atol=1e-6)
    assert torch.isfinite(out["logits"]).all()


def test_padding_is_cropped_back_not_resampled():
    """The logit of a voxel is computed on the zero-padded input: equal to running the padded input."""
    torch.manual_seed(1)
    net = CGCNet(tiny(in_channels=1)).eval()
    x = torch.randn(1, 1, 13, 10, 9)
    xp, size = pad_to_multiple(x, 8)
    assert size == (13, 10, 9) and tuple(xp.shape[-3:]) == (16, 16, 16)
    with torch.no_grad():
        a = net.segment_logits(x)
        b = net.segment_logits(xp)[..., :13, :10, :9]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("coarse, fine, fusion", list(itertools.product([True, False], [True, False],
                                                                         ["concat_residual", "concat", "none"])))
def test_path_switches(coarse, fine, fusion):
    torch.manual_seed(0)
    net = CGCNet(tiny(in_channels=2, coarse=coarse, fine=fine, fusion=fusion, patch_size_xyz=(1, 1, 1)))
    out = net(torch.randn(1, 2, 16, 16, 16))
    assert (out["coarse_logits"] is not None) == coarse
    assert (out["embeddings"] is not None) == fine
    assert hasattr(net, "projection") == fine and hasattr(net, "coarse_head") == coarse
    assert hasattr(net, "fuse") == (coarse and fusion != "none")
    loss = out["logits"].sum() + sum(o.sum() for o in (out["coarse_logits"], out["embeddings"]) if o is not None)
    loss.backward()
    # Every parameter that exists takes part in the forward pass (no dead weights for DDP).
    assert all(p.grad is not None for p in net.parameters())


def test_fusion_changes_the_decoder_input():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    outs = {}
    for fusion in ("concat_residual", "none"):
        torch.manual_seed(0)
        net = CGCNet(tiny(in_channels=1, fusion=fusion)).eval()
        with torch.no_grad():
            outs[fusion] = net.segment_logits(x)
    assert not torch.allclose(outs["concat_residual"], outs["none"])


def test_segment_logits_skips_the_projection_head(monkeypatch):
    net = CGCNet(tiny(in_channels=1)).eval()
    monkeypatch.setattr(net, "embed_patches", lambda z: (_ for _ in ()).throw(AssertionError("head ran")))
    with torch.no_grad():
        assert net.segment_logits(torch.randn(1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)


def test_wrong_channel_count_is_a_clear_error():
    net = CGCNet(tiny(in_channels=4))
    with pytest.raises(ValueError, match=r"expects \(B, 4, Z, Y, X\)"):
        net(torch.randn(1, 2, 8, 8, 8))


def _patch_pool_reference(t: np.ndarray, patch):
    b, c, Z, Y, X = t.shape
    pz, py, px = patch
    out = []
    for bi in range(b):
        rows = []
        for z0 in range(0, Z, pz):
            for y0 in range(0, Y, py):
                for x0 in range(0, X, px):
                    rows.append(t[bi, :, z0:z0 + pz, y0:y0 + py, x0:x0 + px].reshape(c, -1).mean(axis=1))
        out.append(rows)
    return np.array(out)


@pytest.mark.parametrize("grid, patch", [((4, 6, 6), (4, 3, 3)), ((3, 5, 7), (2, 2, 3)), ((2, 2, 2), (4, 6, 6))])
def test_patch_pool_matches_loop_reference(grid, patch):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 3) + grid)
    got = patch_pool(torch.from_numpy(t), patch).numpy()
    np.testing.assert_allclose(got, _patch_pool_reference(t, patch), rtol=1e-10)


def test_downsample_to_bottleneck_is_cell_mean():
    rng = np.random.default_rng(0)
    p = rng.random((1, 1, 16, 8, 24))
    got = downsample_to_bottleneck(torch.from_numpy(p)).numpy()
    assert got.shape == (1, 1, 2, 2, 3)  # Y: 8 voxels are padded to the 16-voxel minimum
    assert got[0, 0, 0, 1, 0] == 0.0
    assert np.isclose(got[0, 0, 1, 0, 2], p[0, 0, 8:16, 0:8, 16:24].mean())


def test_parameter_count_is_small():
    assert 0.5e6 < count_parameters(CGCNet(NetConfig())) < 5e6
