"""Checkpoints: self-describing round trip, atomic writes, foreign/corrupt/unsafe files refused."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from CGCLesionSegLib.checkpoint import (ENSEMBLE_FORMAT_VERSION, FORMAT_VERSION, CheckpointError, build_checkpoint,
                                        load_checkpoint, read_checkpoint, save_checkpoint, save_checkpoint_dict)
from CGCLesionSegLib.network import CGCNet, NetConfig

CFG = NetConfig(in_channels=2, widths=(2, 3, 4, 5), blocks=(0, 1, 0, 1), decoder_width=2, projection_dim=4,
                patch_size_xyz=(3, 3, 4), fusion="concat")
PRE = {"normalization": {"clip_percentiles": (0.5, 99.5)}, "gmm": {"n_clusters": 4, "channels": [0]},
       "spacing_xyz": [1.0, 1.0, 1.0]}


def _saved(tmp_path, **kw):
    torch.manual_seed(0)
    net = CGCNet(CFG)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net(torch.randn(1, 2, 16, 16, 16))["logits"].mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "last.pt", net, CFG, ["flair", "t2"], PRE, train_config={"lr": 1e-4},
                           optimizer=opt, step=7, epoch=3, **kw)
    return net, opt, path


def test_round_trip_rebuilds_the_network_from_the_file_alone(tmp_path):
    net, opt, path = _saved(tmp_path)
    model, info = load_checkpoint(path, device="cpu")
    assert info.channels == ["flair", "t2"] and info.step == 7 and info.epoch == 3
    assert info.net_config == CFG and info.format_version == FORMAT_VERSION
    assert info.preprocessing["spacing_xyz"] == [1.0, 1.0, 1.0] and info.preprocessing["gmm"]["channels"] == [0]
    assert info.train_config == {"lr": 1e-4}
    assert not model.training
    x = torch.randn(1, 2, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(model.segment_logits(x), net.segment_logits(x))
    raw = read_checkpoint(path)
    assert set(raw) >= {"format_version", "net_config", "train_config", "preprocessing", "channels", "model",
                        "optimizer", "step"}
    opt2 = torch.optim.Adam(CGCNet(CFG).parameters(), lr=1e-4)
    opt2.load_state_dict(raw["optimizer"])  # the Adam state round-trips
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_file_loads_with_weights_only(tmp_path):
    _, _, path = _saved(tmp_path)
    data = torch.load(path, weights_only=True)
    assert data["channels"] == ["flair", "t2"]


def test_ddp_like_wrapper_is_unwrapped(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
    net = CGCNet(CFG)
    save_checkpoint(tmp_path / "w.pt", Wrapper(net), CFG, ["a", "b"], PRE)
    assert not any(k.startswith("module.") for k in read_checkpoint(tmp_path / "w.pt")["model"])
    load_checkpoint(tmp_path / "w.pt")


def test_inference_only_checkpoint(tmp_path):
    from CGCLesionSegLib.checkpoint import make_checkpoint_for_inference
    path = make_checkpoint_for_inference(CGCNet(CFG), tmp_path / "m.pt", ["flair", "t2"])
    model, info = load_checkpoint(path)
    assert info.net_config == CFG and info.step == 0 and "normalization" in info.preprocessing


def test_channel_count_must_match_network(tmp_path):
    with pytest.raises(ValueError, match="channel"):
        save_checkpoint(tmp_path / "x.pt", CGCNet(CFG), CFG, ["flair"], PRE)
    assert not (tmp_path / "x.pt").exists()


def test_write_is_atomic_old_file_survives_a_failed_write(tmp_path, monkeypatch):
    _, _, path = _saved(tmp_path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="the previous file is kept"):
        save_checkpoint(path, CGCNet(CFG), CFG, ["flair", "t2"], PRE, step=8)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_saved_file_is_not_private(tmp_path):
    _, _, path = _saved(tmp_path)
    assert os.stat(path).st_mode & 0o044  # readable by others (umask permitting), unlike mkstemp's 0600


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["state_dict", "text", "truncated", "pickle_code", "list", "newer", "folder",
                                  "missing", "bad_config", "bad_weights"])
def test_foreign_or_corrupt_files_are_refused(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "state_dict":
        torch.save(CGCNet(CFG).state_dict(), path)
    elif kind == "text":
        path.write_text("not a model")
    elif kind == "truncated":
        _, _, good = _saved(tmp_path)
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "pickle_code":
        with open(path, "wb") as fh:
            pickle.dump({"format": "cgc-lesion-seg-checkpoint", "x": Evil()}, fh)
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "newer":
        ck = build_checkpoint(CGCNet(CFG), CFG, ["a", "b"], PRE)
        ck["format_version"] = ENSEMBLE_FORMAT_VERSION + 1  # newer than any version this package reads
        save_checkpoint_dict(path, ck)
    elif kind == "folder":
        path.mkdir()
    elif kind == "bad_config":
        ck = build_checkpoint(CGCNet(CFG), CFG, ["a", "b"], PRE)
        ck["net_config"]["norm"] = "fancy"
        save_checkpoint_dict(path, ck)
    elif kind == "bad_weights":
        ck = build_checkpoint(CGCNet(CFG), CFG, ["a", "b"], PRE)
        ck["net_config"]["widths"] = (4, 4, 4, 4)
        save_checkpoint_dict(path, ck)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path.name) in msg or "model" in msg
    expected = {"state_dict": "not a CGC", "text": "corrupt", "truncated": "corrupt", "pickle_code": "refused",
                "list": "not a CGC", "newer": "format version", "folder": "folder", "missing": "not found",
                "bad_config": "norm", "bad_weights": "do not match"}[kind]
    assert expected in msg
    assert "\x1b[" not in msg  # no terminal colour codes from torch's own text
    if kind == "truncated":
        assert "copy or download it again" in msg  # what to do, not only what is wrong


def test_every_output_rule_a_checkpoint_may_record_is_an_output_preset_and_a_cli_choice():
    import argparse
    import sys
    from pathlib import Path
    from CGCLesionSegLib.checkpoint import OUTPUT_RULE_NAMES
    from CGCLesionSegLib.commands import OUTPUT_RULES
    from CGCLesionSegLib.inference import OUTPUT_PRESETS
    assert set(OUTPUT_RULE_NAMES) == set(OUTPUT_PRESETS) == set(OUTPUT_RULES) - {"auto"}
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import export_default_model
    for rule in OUTPUT_RULE_NAMES:  # the export script accepts each (it exits on --help after parsing choices)
        try:
            export_default_model.main(["run", "--output-rule", rule, "--update-card", "--dice-json", "/nonexistent",
                                       "--models-dir", "/nonexistent"])
        except (FileNotFoundError, SystemExit) as exc:
            assert not (isinstance(exc, SystemExit) and exc.code == 2), f"--output-rule {rule} refused"
