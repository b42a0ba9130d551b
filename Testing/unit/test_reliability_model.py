"""Issue 12, items 4, 7, 8, 10, 11, 12 on the model side: the output rule comes from the checkpoint's
content, NaN/inf weights and malformed fields are refused before anything is built, random bytes are
"not a PyTorch checkpoint", absurd grids and window counts are one clear error, a signal during
--adapt segments nothing, an early --adapt failure leaves no temporary folder."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import torch

from CGCLesionSegLib.checkpoint import (CheckpointError, build_checkpoint, default_output_rule, load_checkpoint,
                                        read_checkpoint, save_checkpoint_dict)
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.default_models import MODELS_DIR
from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.preprocess import NormalizationConfig

TINY = dict(widths=(2, 4, 4, 8), blocks=(0, 0, 0, 1), decoder_width=2, projection_dim=4, patch_size_xyz=(2, 2, 2))
PRE = {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": [1.5, 1.5, 1.5]}


def _ckpt(**over):
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=1, **TINY)
    ck = build_checkpoint(CGCNet(cfg), cfg, ["flair"], PRE)
    ck.update(over)
    return ck


def _segment_args(model, **kw):
    base = dict(postprocess="auto", model=str(model) if model else None, adapt=False, inputs=["flair=x.nii.gz"], cases=None,
                modalities=None)
    base.update(kw)
    return argparse.Namespace(**base)


# ---------------------------------------------------------------- item 4: output rule from the content
def test_output_rule_comes_from_the_checkpoint_not_its_folder(tmp_path):
    from CGCLesionSegLib.commands.segment import resolve_postprocess
    shipped = MODELS_DIR / "cgc_flair.pt"
    if not shipped.exists():
        pytest.skip("the shipped FLAIR model is not installed")
    copy = tmp_path / "elsewhere" / "renamed.pt"
    copy.parent.mkdir()
    shutil.copy(shipped, copy)
    # the shipped models record cgc-v11's confirmed rule in the file
    assert resolve_postprocess(_segment_args(shipped)) == "single-lesion-recommended"
    assert resolve_postprocess(_segment_args(copy)) == "single-lesion-recommended"  # was "none": decided by the folder
    assert resolve_postprocess(_segment_args(None)) == "single-lesion-recommended"  # the shipped default
    own = save_checkpoint_dict(tmp_path / "own.pt", _ckpt())
    assert resolve_postprocess(_segment_args(own)) == "none"
    recorded = save_checkpoint_dict(tmp_path / "rec.pt", _ckpt(default_output_rule="single-lesion"))
    assert default_output_rule(recorded) == "single-lesion"
    assert resolve_postprocess(_segment_args(recorded, postprocess="none")) == "none"
    with pytest.raises(CheckpointError, match="default_output_rule"):
        load_checkpoint(save_checkpoint_dict(tmp_path / "bad.pt", _ckpt(default_output_rule="everything")))


def test_files_shipped_before_the_rule_field_get_their_rule_by_content(tmp_path, monkeypatch):
    """A copy of a first-generation shipped model (no ``default_output_rule``) is recognised by its sha256;
    the same bytes with one more byte are not."""
    import hashlib
    from CGCLesionSegLib import checkpoint
    old = save_checkpoint_dict(tmp_path / "old.pt", _ckpt())
    assert default_output_rule(old) == "none"
    monkeypatch.setitem(checkpoint.KNOWN_MODEL_RULES, hashlib.sha256(old.read_bytes()).hexdigest(), "single-lesion")
    assert default_output_rule(old) == "single-lesion"
    other = tmp_path / "other.pt"
    other.write_bytes(old.read_bytes() + b"\0")
    assert default_output_rule(other, read_checkpoint(old)) == "none"
    # a recorded field wins over the content table
    assert default_output_rule(old, dict(read_checkpoint(old), default_output_rule="none")) == "none"


# ---------------------------------------------------------------- item 8: NaN / inf weights
@pytest.mark.parametrize("value, which", [(float("nan"), "all"), (float("inf"), "last")])
def test_non_finite_weights_are_refused_on_load(tmp_path, value, which):
    ck = _ckpt()
    keys = [k for k, v in ck["model"].items() if v.is_floating_point()]
    for k in (keys if which == "all" else keys[-1:]):
        ck["model"][k] = torch.full_like(ck["model"][k], value)
    path = save_checkpoint_dict(tmp_path / "m.pt", ck)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_checkpoint(path)


# ---------------------------------------------------------------- item 10: fields and sizes first
def test_huge_network_configuration_is_refused_without_allocating(tmp_path):
    ck = _ckpt()
    ck["net_config"] = dict(ck["net_config"], widths=[4000] * 4)
    path = save_checkpoint_dict(tmp_path / "m.pt", ck)
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="parameters|do not match"):
        load_checkpoint(path)
    assert time.perf_counter() - t < 20


@pytest.mark.parametrize("field, value, match", [
    ("channels", 5, "channels"), ("channels", ["flair", 1], "channels"), ("channels", ["a", "b"], "channels"),
    ("preprocessing", "x", "preprocessing"), ("preprocessing", dict(PRE, spacing_xyz=[0.001] * 3), "spacing_xyz"),
    ("preprocessing", dict(PRE, spacing_xyz="abc"), "spacing_xyz"), ("preprocessing", dict(PRE, normalization=3), "normalization"),
    ("step", "7", "step"), ("net_config", "x", "network configuration"), ("model", [1, 2], "model|state dict"),
])
def test_malformed_checkpoint_fields_are_one_clear_error(tmp_path, field, value, match):
    path = save_checkpoint_dict(tmp_path / "m.pt", _ckpt(**{field: value}))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


# ---------------------------------------------------------------- item 11: texts
def test_random_bytes_are_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint file") as info:
        read_checkpoint(path)
    assert "safety" not in str(info.value)


def test_absurd_window_count_is_refused_with_the_numbers():
    from CGCLesionSegLib.sliding_window import MAX_WINDOWS, sliding_window_probability
    image = torch.zeros(1, 64, 160, 160)
    with pytest.raises(ValueError, match=r"needs [\d,]+ windows .* the limit is 10,000.*larger --window"):
        sliding_window_probability(lambda b: b[:, :1], image, (16, 16, 16), overlap=0.99)
    assert MAX_WINDOWS == 10_000


@pytest.mark.parametrize("spacing, match", [((50.0, 50.0, 50.0), "the limit is"), ((0.001, 0.001, 0.001), "at least 4")])
def test_extreme_input_spacing_is_one_clear_error(spacing, match):
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=1, **TINY)
    model = CGCNet(cfg)
    from CGCLesionSegLib.checkpoint import info_from_dict
    info = info_from_dict(build_checkpoint(model, cfg, ["flair"], PRE), "tiny.pt")
    shape = (40, 40, 40)
    image = np.zeros(shape, np.float32)  # skull-stripped: a zero outside, else the skull error comes first
    image[4:-4, 4:-4, 4:-4] = np.random.default_rng(0).random((32, 32, 32)) + 1
    geom = Geometry(shape, spacing, (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    t = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        segment_case([image], geom, ["flair"], None, None, InferenceConfig(device="cpu"), compute_gmm=False,
                     model=model, info=info)
    assert time.perf_counter() - t < 20


# ---------------------------------------------------------------- items 7 and 12: --adapt
@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    return save_phantom(make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(1.5, 1.5, 1.5), seed=5, oversample=1),
                        tmp_path_factory.mktemp("c"), "p")


def test_adapt_failing_early_leaves_no_temporary_folder(tmp_path, phantom_case, monkeypatch, capsys):
    from CGCLesionSegLib.cli import main
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = save_checkpoint_dict(tmp_path / "m.pt", _ckpt())
    rc = main(["segment", "--input", f"flair={phantom_case['flair']}", "--model", str(model), "--output",
               str(tmp_path / "out" / "seg.nii.gz"), "--adapt", "--adapt-minutes", "-1", "--progress", "none"])
    assert rc == 2 and "minutes" in capsys.readouterr().err
    assert not list(tmp_path.glob("cgc-adapt-*")) and not (tmp_path / "out" / "seg.nii.gz").exists()


def test_sigterm_during_adapt_segments_nothing_and_exits_143(tmp_path, phantom_case):
    model = save_checkpoint_dict(tmp_path / "m.pt", _ckpt())
    seg = tmp_path / "out" / "seg.nii.gz"
    env = dict(os.environ, TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "CGCLesionSegLib.cli", "segment", "--input",
                             f"flair={phantom_case['flair']}", "--model", str(model), "--output", str(seg), "--adapt",
                             "--adapt-steps", "100000", "--adapt-minutes", "10", "--progress", "json", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "progress" and event.get("step", 0) >= 1:
                os.kill(proc.pid, signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and '"done"' not in out
    assert "--resume" not in err  # its run folder is temporary: nothing to resume
    assert not seg.exists() and not list(seg.parent.glob("*")) if seg.parent.exists() else True
    assert not list(tmp_path.glob("cgc-adapt-*"))
