"""benchmarks/map_floor.py (issue 9, section map-floor): the network's map where its own training target
is below 0.1, checked against one direct forward pass on an image the size of the training crop."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import map_floor  # noqa: E402


def _fake_run(tmp_path: Path) -> tuple[Path, dict]:
    """A run folder with what floor_of reads: last.pt (crop 16³), lesion_check.json naming two cached
    cases, their cached image / target / brain mask, and a loss log."""
    import torch

    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(1)
    cfg = NetConfig(in_channels=1, widths=(4, 8, 8, 16), blocks=(0, 0, 1, 1), decoder_width=4, projection_dim=8)
    net = CGCNet(cfg)
    with torch.no_grad():
        net.head.bias.fill_(-0.37)
    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    save_checkpoint(run / "last.pt", net, cfg, ["flair"], {"spacing_xyz": [2.0, 2.0, 2.0]},
                    train_config={"crop_xyz": [16, 16, 16]}, step=300)
    rng = np.random.default_rng(0)
    cases = {}
    for name in ("a", "b"):
        image = rng.normal(size=(1, 16, 16, 16)).astype(np.float32)
        prob = rng.random((16, 16, 16)).astype(np.float32)
        mask = np.zeros((16, 16, 16), bool)
        mask[2:14, 3:13, 1:15] = True
        for kind, arr in (("image", image), ("prob", prob), ("mask", mask)):
            np.save(run / "cache" / f"{name}-0123abcd.{kind}.npy", arr)
        cases[name] = (image, prob, mask)
    (run / "lesion_check.json").write_text(json.dumps({"cases": ["a", "b"]}))
    (run / "loss_log.csv").write_text("step,bce\n299,0.40\n300,0.37\n")
    return run, {"net": net, "cases": cases}


def test_floor_is_the_networks_probability_where_the_target_is_below_one_tenth(tmp_path):
    import torch
    run, made = _fake_run(tmp_path)
    got = map_floor.floor_of(run)
    net = made["net"].eval()
    bg, outside = [], []
    for image, prob, mask in made["cases"].values():
        with torch.no_grad():  # one window covers the image: the sliding window is a single forward pass
            out = torch.sigmoid(net.segment_logits(torch.from_numpy(image)[None]))[0, 0].numpy()
        bg.append(out[mask & (prob < 0.1)])
        outside.append(out[~mask])
    want_bg = np.percentile(np.concatenate(bg), [10, 50, 90])
    want_out = np.percentile(np.concatenate(outside), [10, 50, 90])
    assert got["target_below_0.1"] == pytest.approx(want_bg, abs=1e-4)
    assert got["outside_brain"] == pytest.approx(want_out, abs=1e-4)
    assert got["head_bias"] == pytest.approx(-0.37) and got["last_step"] == 300 and got["last_bce"] == 0.37
    # the percentiles are of the background voxels only: a map differing there must move them
    assert not np.allclose(want_bg, np.percentile(np.concatenate([o.ravel() for o in outside]), [10, 50, 90]))
