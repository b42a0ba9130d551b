"""The label-free lesion check after training (CGCTraining.sanity): a model that marks nothing where its
training target marks lesion is reported as collapsed, one that marks far more than its target as overgrown,
against a brute-force count."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from CGCLesionSegLib.checkpoint import save_checkpoint
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCTraining.sanity import COLLAPSE_RATIO, OVERGROWTH_RATIO, check_message, collapse_message, failed, lesion_check

NET = NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1))


def _model(tmp_path, bias: float | None, name: str):
    torch.manual_seed(0)
    net = CGCNet(NET)
    if bias is not None:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(bias)  # every voxel's logit = bias
    return save_checkpoint(tmp_path / name, net, NET, ["flair"], {})


def _case(name: str, target_voxels: int, shape=(12, 20, 18), seed=0):
    rng = np.random.default_rng(seed)
    prob = np.zeros(shape, np.float32)
    if target_voxels:
        prob.reshape(-1)[-target_voxels:] = 0.9  # the last slices: inside the mask
    mask = np.ones(shape, bool)
    mask[0] = False  # outside the brain: never counted
    return SimpleNamespace(name=name, image=rng.normal(size=(1, *shape)).astype(np.float32), prob=prob, mask=mask)


def test_lesion_check_counts_like_a_brute_force_reference(tmp_path):
    cases = [_case("small", 40, seed=1), _case("none", 0, seed=2), _case("big", 900, seed=3), _case("mid", 500, seed=4)]
    everything = lesion_check(_model(tmp_path, 20.0, "all.pt"), cases, (8, 16, 16), torch.device("cpu"))
    # the two cases whose target (inside the mask) marks the most voxels, largest first
    inside = {c.name: int(((c.prob >= 0.5) & c.mask).sum()) for c in cases}
    assert everything["cases"] == ["big", "mid"]
    assert everything["target_voxels"] == inside["big"] + inside["mid"]
    assert everything["network_voxels"] == int(cases[2].mask.sum() + cases[3].mask.sum())  # logit +20 everywhere
    assert everything["ratio"] > 1 and not everything["collapsed"]
    # every brain voxel (2 x 3960) against 900 + 500 target voxels: 5.7 times, overgrown
    assert everything["ratio"] == everything["network_voxels"] / everything["target_voxels"] > OVERGROWTH_RATIO
    assert everything["overgrown"] and failed(everything) and "overgrown" in check_message(everything, "all.pt")
    nothing = lesion_check(_model(tmp_path, -20.0, "none.pt"), cases, (8, 16, 16), torch.device("cpu"))
    assert nothing["network_voxels"] == 0 and nothing["ratio"] == 0.0 and nothing["collapsed"]
    assert not nothing["overgrown"] and failed(nothing)
    assert "collapsed" in collapse_message(nothing, "none.pt") and "--seed" in collapse_message(nothing, "none.pt")
    assert check_message(nothing, "none.pt") == collapse_message(nothing, "none.pt")


def test_overgrowth_is_judged_against_the_bound(tmp_path):
    """A model marking every brain voxel is overgrown where the target is small, not where it is large."""
    small = [_case("small", 300, seed=1), _case("smaller", 200, seed=2)]
    got = lesion_check(_model(tmp_path, 20.0, "all.pt"), small, (8, 16, 16), torch.device("cpu"))
    brain = int(small[0].mask.sum() + small[1].mask.sum())
    assert got["ratio"] == brain / 500 > OVERGROWTH_RATIO
    assert got["overgrown"] and not got["collapsed"] and failed(got)
    message = check_message(got, "all.pt")
    assert "overgrown" in message and f"{brain / 500:.1f} times" in message and "--seed" in message
    large = [_case("large", 3000, seed=3)]  # 3960 brain voxels against 3000: 1.3 times
    got = lesion_check(_model(tmp_path, 20.0, "all2.pt"), large, (8, 16, 16), torch.device("cpu"))
    assert got["ratio"] == 3960 / 3000 and not got["overgrown"] and not failed(got)
    assert check_message(got, "all2.pt") is None
    assert not failed(None) and not failed({"ratio": None, "collapsed": False, "overgrown": False})


def test_a_real_network_is_counted_against_its_own_thresholded_map(tmp_path):
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.sliding_window import sliding_window_probability
    path = _model(tmp_path, None, "net.pt")
    case = _case("c", 300, seed=5)
    got = lesion_check(path, [case], (8, 16, 16), torch.device("cpu"))
    net, _ = load_checkpoint(path)
    with torch.no_grad():
        prob = sliding_window_probability(net.segment_logits, torch.from_numpy(case.image), (8, 16, 16), overlap=0.5,
                                          pad_to_window=True).numpy()
    assert got["network_voxels"] == int(((prob >= 0.5) & case.mask).sum())
    assert got["collapsed"] == (got["ratio"] < COLLAPSE_RATIO)


def test_no_target_voxel_means_nothing_to_judge(tmp_path):
    got = lesion_check(_model(tmp_path, -20.0, "m.pt"), [_case("empty", 0)], (8, 16, 16), torch.device("cpu"))
    assert got == {"cases": [], "network_voxels": 0, "target_voxels": 0, "ratio": None, "collapsed": False,
                   "overgrown": False}
