"""Recipe options of training: learning-rate schedule, weight averaging, scanner augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from CGCTraining.config import TrainConfig
from CGCTraining.data import CropDataset, scanner_augment
from CGCTraining.train import _ema_update


def test_cosine_schedule_warms_up_then_decays_to_one_percent():
    cfg = TrainConfig(lr=1e-3, steps=200, lr_schedule="cosine")
    lrs = [cfg.lr_at(s, 200) for s in range(200)]
    warm = 10  # 5 % of 200
    assert lrs[0] == pytest.approx(1e-3 / warm) and lrs[warm - 1] == pytest.approx(1e-3)
    assert all(a <= b + 1e-15 for a, b in zip(lrs[:warm], lrs[1:warm]))       # rising
    assert all(a >= b - 1e-15 for a, b in zip(lrs[warm:], lrs[warm + 1:]))    # then falling
    assert lrs[-1] == pytest.approx(1e-5)
    mid = warm + (199 - warm) // 2  # half way through the decay: the cosine is at its middle
    t = (mid - warm) / (199 - warm)
    assert lrs[mid] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))))
    assert TrainConfig(lr=2e-4, steps=5).lr_at(3, 5) == 2e-4
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="heavy")


def test_ema_update_matches_a_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ref = {k: v.double().clone() for k, v in model.state_dict().items()}
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(5, 3))  # moves the running stats and num_batches_tracked
        _ema_update(ema, model, 0.9, step)
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double() if v.dtype.is_floating_point else v.double()
    for k in ema:
        assert torch.allclose(ema[k].double(), ref[k], atol=1e-5), k
    assert ema["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"]


def _brain_crop_case(seed: int):
    """A two-channel normalised image ``(2, 16, 20, 24)`` zero outside its brain box, the brain mask, and a
    cached case (as CropDataset reads it) with a random binary P."""
    from types import SimpleNamespace
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(2, 16, 20, 24)).astype(np.float32)
    mask = np.zeros((16, 20, 24), bool)
    mask[2:14, 3:17, 4:20] = True
    image[:, ~mask] = 0
    case = SimpleNamespace(name="c", meta={}, source=None, image=image, mask=mask,
                           prob=(rng.random((16, 20, 24)) > 0.8).astype(np.float32))
    return image, mask, case


def test_scanner_augmentation_keeps_background_and_is_a_function_of_the_key():
    image, mask, case = _brain_crop_case(0)
    changed = 0
    for seed in range(30):
        out = scanner_augment(image, mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
        assert (out[:, ~mask] == 0).all()
        changed += not np.array_equal(out, image)
        np.testing.assert_array_equal(out, scanner_augment(image, mask, np.random.default_rng(seed)))
    # Four steps at p = 0.3 each: a crop is left alone with p = 0.7**4 = 0.24.
    assert 12 <= changed <= 30
    basic = CropDataset([case], (8, 8, 8), seed=1, augment="basic")
    scan = CropDataset([case], (8, 8, 8), seed=1, augment="scanner")
    keys = [(0, s, 0) for s in range(12)]
    # Same crops and the same P; only the image differs (P is the clean image's target).
    for k in keys:
        a, b = basic[k], scan[k]
        assert torch.equal(a["prob"], b["prob"])
    assert any(not torch.equal(basic[k]["image"], scan[k]["image"]) for k in keys)


def test_scanner_strong_fires_each_perturbation_twice_as_often_and_keeps_the_scanner_streams():
    """``scanner-strong`` draws the same random numbers as ``scanner``; a step fires when its draw is below
    0.6 instead of 0.3, so every crop ``scanner`` perturbs is perturbed by it too (with the same gamma, field,
    slices and noise where both fire), and a crop is left alone far less often (0.4**4 = 0.03 vs 0.24)."""
    from CGCTraining.data import SCANNER_PROBABILITY, CropDataset, scanner_augment
    image, mask, case = _brain_crop_case(3)
    assert SCANNER_PROBABILITY == {"scanner": 0.3, "scanner-strong": 0.6}
    same = strong_changed = weak_changed = 0
    for seed in range(200):
        weak = scanner_augment(image, mask, np.random.default_rng(seed))
        strong = scanner_augment(image, mask, np.random.default_rng(seed), 0.6)
        draws = np.random.default_rng(seed).random(4)  # no step fires -> only the 4 gate draws are taken
        if (draws >= 0.6).all():
            np.testing.assert_array_equal(strong, image)
        weak_changed += not np.array_equal(weak, image)
        strong_changed += not np.array_equal(strong, image)
        same += np.array_equal(weak, strong)
        assert not (np.array_equal(strong, image) and not np.array_equal(weak, image))
    assert 130 <= weak_changed <= 175 and strong_changed >= 185 and strong_changed > weak_changed and same >= 1
    scan = CropDataset([case], (8, 8, 8), seed=1, augment="scanner")
    strong_ds = CropDataset([case], (8, 8, 8), seed=1, augment="scanner-strong")
    for k in [(0, s, 0) for s in range(8)]:
        assert torch.equal(scan[k]["prob"], strong_ds[k]["prob"])  # same crop, same clean target
    with pytest.raises(ValueError, match="augment must be"):
        CropDataset([case], (8, 8, 8), augment="strong")


def test_head_lr_scale_moves_only_the_output_layers_faster():
    from CGCLesionSegLib.network import CGCNet, NetConfig
    from CGCTraining.train import OUTPUT_LAYERS, param_groups
    torch.manual_seed(0)
    net = CGCNet(NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1)))
    assert len(param_groups(net, 1.0, 1e-3)) == 1  # the paper's single rate: one group, as before
    groups = param_groups(net, 10.0, 1e-3)
    heads = {id(p) for n in OUTPUT_LAYERS for p in getattr(net, n).parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads and len(heads) == 4  # weight + bias of both heads
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    before = {id(p): p.detach().clone() for p in net.parameters()}
    opt = torch.optim.Adam(groups)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # Adam's first step moves every weight by its group's lr (the gradient's sign)
    for p in net.parameters():
        step = (before[id(p)] - p.detach()).abs()
        want = 1e-2 if id(p) in heads else 1e-3
        assert torch.allclose(step, torch.full_like(step, want), rtol=1e-3), (want, step.max())
    with pytest.raises(ValueError, match="head_lr_scale"):
        TrainConfig(steps=1, head_lr_scale=0)


def test_schedule_keeps_the_head_ratio_in_a_run(tmp_path):
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_csv_with_prob
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    r = run_cli(["--cases", cases, "--modalities", *MODS, "--output-dir", tmp_path / "run", "--crop", "16", "16", "16",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu", "--steps", "3", "--lr", "1e-3",
                 "--lr-schedule", "cosine", "--head-lr-scale", "10", "--progress", "none", "--overgrowth-ratio", "1000",
                 *TINY_NET_ARGS])
    assert r.returncode == 0, r.stderr
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    g = ck["optimizer"]["param_groups"]
    assert [x["lr_scale"] for x in g] == [1.0, 10.0]
    assert g[1]["lr"] == pytest.approx(10 * g[0]["lr"]) and g[0]["lr"] < 1e-3  # the schedule moved both
    assert ck["train_config"]["head_lr_scale"] == 10.0


def test_ignore_band_reaches_the_run_and_its_checkpoint(tmp_path):
    """`--ignore-band 0.1 0.9` is recorded in the checkpoint and changes the logged BCE of the same seed's
    first step (P made undecided, 0.5, wherever the phantom's P is below 0.5); a bad band is refused
    before any training."""
    import csv
    import numpy as np
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from CGCLesionSegLib.image_io import read_image, write_image
    from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_csv_with_prob
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    for path in (tmp_path / "list" / "img").glob("*_p.nii.gz"):
        img = read_image(path)
        prob = img.array_zyx
        assert (prob >= 0.5).any() and (prob < 0.5).any()
        write_image(path, np.where(prob >= 0.5, 1.0, 0.5).astype(np.float32), img.geometry)
    common = ["--cases", cases, "--modalities", *MODS, "--crop", "16", "16", "16", "--batch-size", "2",
              "--workers", "0", "--device", "cpu", "--steps", "1", "--progress", "none", "--overgrowth-ratio", "1000",
              *TINY_NET_ARGS]
    bce = {}
    for name, extra in (("plain", []), ("band", ["--ignore-band", "0.1", "0.9"])):
        r = run_cli([*common, "--output-dir", tmp_path / name, *extra])
        assert r.returncode == 0, r.stderr
        with open(tmp_path / name / "loss_log.csv", newline="") as fh:
            bce[name] = float(next(csv.DictReader(fh))["bce"])
    assert tuple(read_checkpoint(tmp_path / "band" / "last.pt")["train_config"]["loss"]["ignore_band"]) == (0.1, 0.9)
    assert read_checkpoint(tmp_path / "plain" / "last.pt")["train_config"]["loss"]["ignore_band"] is None
    assert bce["band"] != pytest.approx(bce["plain"], rel=1e-3)
    r = run_cli([*common, "--output-dir", tmp_path / "bad", "--ignore-band", "0.9", "0.1"])
    assert r.returncode != 0 and "ignore_band" in r.stderr and not (tmp_path / "bad" / "last.pt").exists()


def test_linear_resize_is_scipy_zoom_bit_for_bit():
    """The thick-slice step's resampling against ``scipy.ndimage.zoom`` (order 1, edge clamped, voxel centres
    aligned), the implementation it replaced: random shapes, axes and factors, down to 1/f and back."""
    from scipy.ndimage import zoom

    from CGCTraining.data import _linear_resize
    rng = np.random.default_rng(5)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(5, 30, size=3))
        a = rng.normal(size=(2,) + shape).astype(np.float32)
        axis, f = int(rng.integers(3)), int(rng.integers(2, 5))
        n = shape[axis]
        ref_down = np.stack([zoom(c, [1 / f if k == axis else 1.0 for k in range(3)], order=1, mode="nearest",
                                  grid_mode=True) for c in a])
        m = ref_down.shape[axis + 1]
        down = _linear_resize(a, axis + 1, m)
        np.testing.assert_array_equal(down, ref_down)
        ref_up = np.stack([zoom(c, [n / m if k == axis else 1.0 for k in range(3)], order=1, mode="nearest",
                                grid_mode=True) for c in ref_down])
        np.testing.assert_array_equal(_linear_resize(down, axis + 1, ref_up.shape[axis + 1]), ref_up)
        assert down.dtype == np.float32 and (n - 1) // f <= m <= n // f + 1


def test_thick_slice_step_matches_a_scipy_reference():
    """Seeds where only the thick-slice step fires (its gate draws replayed): the augmented crop is the brain's
    voxels resampled by scipy's zoom along the drawn axis, to ``round(n/f)`` voxels and back."""
    from scipy.ndimage import zoom
    image, mask, _ = _brain_crop_case(2)
    found = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        if rng.random() < 0.3 or rng.random() < 0.3 or rng.random() >= 0.3:
            continue
        axis, f = int(rng.integers(3)), int(rng.integers(2, 5))
        if rng.random() < 0.3:
            continue
        n = image.shape[axis + 1]
        if n < 2 * f:
            continue
        ref = image.copy()
        for ch in range(image.shape[0]):
            thick = zoom(image[ch], [1 / f if k == axis else 1.0 for k in range(3)], order=1, mode="nearest",
                         grid_mode=True)
            back = zoom(thick, [n / thick.shape[axis] if k == axis else 1.0 for k in range(3)], order=1,
                        mode="nearest", grid_mode=True)[:image.shape[1], :image.shape[2], :image.shape[3]]
            ref[ch] = np.where(mask, back, image[ch])
        np.testing.assert_array_equal(scanner_augment(image, mask, np.random.default_rng(seed)), ref)
        found += 1
    assert found >= 10
