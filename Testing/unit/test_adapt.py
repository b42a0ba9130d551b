"""`cgcseg segment --adapt` and fine-tuning from a checkpoint (`--init-from`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from CGCLesionSegLib.checkpoint import read_checkpoint, save_checkpoint
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.gmm import GMMConfig, config_to_dict as gmm_to_dict
from CGCLesionSegLib.image_io import read_image
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.phantom import make_phantom, save_phantom
from CGCLesionSegLib.preprocess import NormalizationConfig

TINY = dict(widths=(4, 8, 8, 16), blocks=(0, 0, 1, 1), decoder_width=4, projection_dim=8, patch_size_xyz=(2, 2, 2))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return save_phantom(make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(1.5, 1.5, 1.5), seed=5),
                        tmp_path_factory.mktemp("c"), "p")


def _base(tmp_path, channels):
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=len(channels), **TINY)
    pre = {"normalization": config_to_dict(NormalizationConfig()), "gmm": gmm_to_dict(GMMConfig()),
           "spacing_xyz": [1.5, 1.5, 1.5]}
    model = CGCNet(cfg)
    return save_checkpoint(tmp_path / "base.pt", model, cfg, channels, pre), model


def test_adapt_fine_tunes_base_model_and_keeps_it_beside_output(tmp_path, case):
    base, model = _base(tmp_path, ["flair", "t2"])
    seg = tmp_path / "out" / "seg.nii.gz"
    r = subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", "segment", "--input", f"t2={case['t2']}",
                        "--input", f"flair={case['flair']}", "--model", str(base), "--output", str(seg), "--adapt",
                        "--adapt-steps", "2", "--adapt-minutes", "5", "--progress", "none"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    adapted = seg.parent / "seg.nii.gz.adapted.pt"
    ck = read_checkpoint(adapted)
    assert ck["step"] == 2 and ck["channels"] == ["flair", "t2"]
    assert ck["preprocessing"]["spacing_xyz"] == [1.5, 1.5, 1.5]
    # Fine-tuned: weights moved away from the base, but started from it (not re-initialised).
    base_sd = model.state_dict()
    diffs = [float((ck["model"][k].float() - v.float()).abs().max()) for k, v in base_sd.items() if v.is_floating_point()]
    assert max(diffs) > 0 and max(diffs) < 0.05
    side = json.loads((seg.parent / "seg.nii.gz.json").read_text())
    assert side["adapted"]["steps"] == 2 and side["model"]["path"] == adapted.name
    assert read_image(seg).geometry == read_image(case["flair"]).geometry
    assert sorted(p.name for p in seg.parent.iterdir()) == ["seg.nii.gz", "seg.nii.gz.adapted.pt", "seg.nii.gz.json"]


def test_init_from_refuses_other_architecture(tmp_path, case):
    base, _ = _base(tmp_path, ["flair"])
    r = subprocess.run([sys.executable, "-m", "CGCTraining", "--cases", str(case["case_dir"].parent),
                        "--modalities", "flair", "t2", "--output-dir", str(tmp_path / "run"), "--steps", "1",
                        "--crop", "16", "16", "16", "--widths", "4", "8", "8", "16",
                        "--blocks", "0", "0", "1", "1", "--decoder-width", "4", "--projection-dim", "8",
                        "--patch", "2", "2", "2", "--init-from", str(base), "--progress", "none", "--workers", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "network configuration differs" in r.stderr and not (tmp_path / "run" / "last.pt").exists()


def test_adapting_an_ensemble_fine_tunes_its_first_member_and_leaves_the_file_alone(tmp_path, case):
    """A seed ensemble (`cgcseg ensemble`) is adapted through its first member: the result is one network that
    started from that member's weights; the ensemble file is unchanged."""
    from CGCLesionSegLib.adapt import AdaptConfig, adapt_to_case
    from CGCLesionSegLib.checkpoint import combine_checkpoints, save_checkpoint_dict
    first, model = _base(tmp_path, ["flair"])
    torch.manual_seed(1)
    second = save_checkpoint(tmp_path / "second.pt", CGCNet(model.config), model.config, ["flair"],
                             read_checkpoint(first)["preprocessing"])
    ens = save_checkpoint_dict(tmp_path / "ens.pt", combine_checkpoints([first, second]))
    before = ens.read_bytes()
    out = adapt_to_case([("flair", str(case["flair"]))], None, ens, AdaptConfig(steps=2, minutes=5, device="cpu"),
                        run_dir=tmp_path / "run", progress="none")
    ck = read_checkpoint(out)
    assert "members" not in ck and ck["step"] == 2 and ens.read_bytes() == before
    diffs = [float((ck["model"][k].float() - v.float()).abs().max()) for k, v in model.state_dict().items()
             if v.is_floating_point()]
    assert 0 < max(diffs) < 0.05  # moved, from the first member's weights


def test_adapting_a_shipped_model_says_what_it_measured(tmp_path, case):
    """--adapt on inputs a shipped model fits fine-tunes it toward the case's P, which lowered Dice where it was
    measured: the command says so (and still runs); other models and inputs no shipped model fits get no note."""
    from CGCLesionSegLib.adapt import SHIPPED_BASE_NOTE, shipped_base_note
    from CGCLesionSegLib.default_models import available_default_models
    four = ["flair", "t1", "t1ce", "t2"]
    assert shipped_base_note(four, None) == SHIPPED_BASE_NOTE
    assert shipped_base_note(["flair"], None) == SHIPPED_BASE_NOTE
    # from scratch: what --adapt is for, but a shipped model that uses part of the inputs is named first
    assert "The shipped flair model fits a subset" in shipped_base_note(["flair", "t2"], None)
    assert shipped_base_note(["t1", "t2"], None) is None
    assert shipped_base_note(four, available_default_models()[tuple(four)]) == SHIPPED_BASE_NOTE
    own, _ = _base(tmp_path, four)
    assert shipped_base_note(four, own) is None
    seg = tmp_path / "out" / "seg.nii.gz"
    r = subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", "segment", *[f"--input={m}={case[m]}" for m in four],
                        "--output", str(seg), "--adapt", "--adapt-steps", "1", "--progress", "none", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning: --adapt fine-tunes the shipped model" in r.stderr and seg.is_file()


def test_adapt_never_replaces_its_own_model_or_an_earlier_one_on_failure(tmp_path, case, monkeypatch, capsys):
    """`--output X` keeps the adapted model as `X.adapted.pt`: refused before any work when that is `--model`
    (the very reuse the command suggests); and a failed write leaves an earlier `X.adapted.pt` as it was."""
    from CGCLesionSegLib import cli
    from CGCLesionSegLib.image_io import ImageIOError, StagedWrites
    base, _ = _base(tmp_path, ["flair"])
    seg = tmp_path / "seg.nii.gz"
    adapted = tmp_path / "seg.nii.gz.adapted.pt"
    adapted.write_bytes(base.read_bytes())
    before = adapted.read_bytes()
    argv = ["segment", "--input", f"flair={case['flair']}", "--output", str(seg), "--adapt", "--adapt-steps", "2",
            "--progress", "none", "--device", "cpu"]
    assert cli.main(argv + ["--model", str(adapted)]) == 2
    assert "which is --model here" in capsys.readouterr().err
    assert adapted.read_bytes() == before and not seg.exists()

    real_image = StagedWrites.image

    def failing_probability(self, path, *a, **k):
        if str(path).endswith("prob.nii.gz"):
            raise ImageIOError(f"could not write {path} (No space left on device); nothing was replaced")
        return real_image(self, path, *a, **k)

    monkeypatch.setattr(StagedWrites, "image", failing_probability)
    assert cli.main(argv + ["--model", str(base), "--probability-output", str(tmp_path / "prob.nii.gz")]) == 2
    assert "No space left" in capsys.readouterr().err
    assert adapted.read_bytes() == before  # the earlier adapted model is kept, not removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt", "seg.nii.gz.adapted.pt"]
    monkeypatch.undo()
    # The same run writing fine replaces it together with the outputs.
    assert cli.main(argv + ["--model", str(base)]) == 0
    assert adapted.read_bytes() != before and read_checkpoint(adapted)["step"] == 2 and seg.exists()
