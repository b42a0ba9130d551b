"""Smoothed-P training target (`--target-sigma`): the smoothing itself against a brute-force sum, the
cache it writes, and how runs record and resume it."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import read_checkpoint
from CGCLesionSegLib.postprocess import smooth_probability
from CGCTraining.config import TrainConfig
from CGCTraining.data import discover_cases, load_cached, prepare_case
from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_csv_with_prob

SETTINGS = {"modalities": list(MODS), "normalization": {"clip_percentiles": [0.5, 99.5]},
            "gmm": {"n_clusters": 3}, "spacing_xyz": [1.0, 1.0, 2.0], "brain_mask": "nonzero"}


def _kernel_1d(sigma_vox: float) -> np.ndarray:
    """Normalised Gaussian weights on -r..r with r = int(4 sigma + 0.5) (scipy's truncation)."""
    r = int(4.0 * sigma_vox + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_vox) ** 2)
    return w / w.sum()


def _smooth_brute_force(p: np.ndarray, sigma_mm: float, spacing_xyz) -> np.ndarray:
    """Every output voxel as an explicit weighted sum over its 3-D neighbourhood; zero outside."""
    ks = [_kernel_1d(sigma_mm / s) for s in reversed(spacing_xyz)]  # z, y, x
    rs = [len(k) // 2 for k in ks]
    out = np.zeros(p.shape, np.float64)
    for z, y, x in itertools.product(*map(range, p.shape)):
        acc = 0.0
        for dz, dy, dx in itertools.product(*(range(-r, r + 1) for r in rs)):
            zz, yy, xx = z + dz, y + dy, x + dx
            if 0 <= zz < p.shape[0] and 0 <= yy < p.shape[1] and 0 <= xx < p.shape[2]:
                acc += ks[0][dz + rs[0]] * ks[1][dy + rs[1]] * ks[2][dx + rs[2]] * p[zz, yy, xx]
        out[z, y, x] = acc
    return out


@pytest.mark.parametrize("sigma_mm, spacing_xyz", [(1.0, (1.0, 1.0, 1.0)), (1.5, (0.8, 1.2, 2.5))])
def test_smoothing_matches_a_brute_force_sum(sigma_mm, spacing_xyz):
    rng = np.random.default_rng(7)
    p = rng.random((5, 7, 6)).astype(np.float32) ** 3
    got = smooth_probability(p, sigma_mm, spacing_xyz)
    assert got.shape == p.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _smooth_brute_force(p, sigma_mm, spacing_xyz), atol=2e-6)
    # Mass leaves through the border (zero outside), so a constant map falls off at its faces.
    ones = smooth_probability(np.ones((6, 6, 6), np.float32), sigma_mm, spacing_xyz)
    assert ones.max() <= 1.0 and ones[0, 0, 0] < ones[3, 3, 3]


def test_smoothing_arguments():
    p = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    same = smooth_probability(p, 0.0, (1, 1, 1))
    assert np.array_equal(same, p) and same is not p
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            smooth_probability(p, bad, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        smooth_probability(p, 1.0, (1, 0, 1))
    with pytest.raises(ValueError, match="3-D"):
        smooth_probability(p[0], 1.0, (1, 1, 1))
    with pytest.raises(ValueError, match="target_sigma_mm"):
        TrainConfig(target_sigma_mm=-1.0)


def test_cached_target_is_p_smoothed_on_the_training_grid(tmp_path):
    spec = discover_cases(write_csv_with_prob(tmp_path / "list", 1), MODS)[0]
    unused = lambda channels, mask: pytest.fail("a precomputed P needs no GMM")  # noqa: E731
    cache = tmp_path / "cache"
    plain = prepare_case(spec, cache, SETTINGS, unused)
    smoothed_settings = {**SETTINGS, "target_sigma_mm": 2.0}
    assert load_cached(cache, spec, smoothed_settings) is None   # a different target is a different entry
    smoothed = prepare_case(spec, cache, smoothed_settings, unused)
    mask = np.asarray(plain.mask)
    assert smoothed.prob.shape == plain.prob.shape and np.array_equal(np.asarray(smoothed.mask), mask)
    # P is zero outside the brain and the box has a margin, so smoothing the cropped map with zeros
    # beyond it is the same as smoothing the whole grid (1 x 1 x 2 mm here: sigma 2 x 2 x 1 voxels;
    # smooth_probability itself is checked against the brute-force sum above).
    want = np.where(mask, smooth_probability(np.asarray(plain.prob), 2.0, SETTINGS["spacing_xyz"]), 0.0)
    np.testing.assert_allclose(np.asarray(smoothed.prob), want, atol=2e-6)
    assert not np.allclose(np.asarray(smoothed.prob), np.asarray(plain.prob), atol=0.05)
    assert np.array_equal(np.asarray(smoothed.image), np.asarray(plain.image))  # only the target changes


def test_run_records_the_target_and_resume_keeps_it(tmp_path):
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    common = ["--cases", cases, "--modalities", *MODS, "--crop", "16", "16", "16", "--batch-size", "1",
              "--workers", "0", "--device", "cpu", "--steps", "2", "--progress", "none", *TINY_NET_ARGS]
    r = run_cli(common + ["--output-dir", tmp_path / "paper"])
    assert r.returncode == 0, r.stderr
    paper = read_checkpoint(tmp_path / "paper" / "last.pt")
    assert "target_sigma_mm" not in paper["preprocessing"]  # runs without it look as before the option
    assert paper["train_config"]["target_sigma_mm"] == 0.0

    run = tmp_path / "smooth"
    r = run_cli(common + ["--output-dir", run, "--target-sigma", "1.5"])
    assert r.returncode == 0, r.stderr
    ck = read_checkpoint(run / "last.pt")
    assert ck["preprocessing"]["target_sigma_mm"] == 1.5 and ck["train_config"]["target_sigma_mm"] == 1.5
    assert json.loads((run / "args.json").read_text())["target_sigma"] == 1.5
    r = run_cli(["--output-dir", run, "--resume", "--steps", "3", "--progress", "none"])
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 3
    r = run_cli(["--output-dir", run, "--resume", "--target-sigma", "0", "--steps", "4", "--progress", "none"])
    assert r.returncode == 2 and "different" in r.stderr, r.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 3
