"""Seed ensembles: the members' mean probability (checked against a brute-force mean of each member's own
whole-case map), the file format (version 2, refused when damaged), `cgcseg ensemble`, and training/adapting
from an ensemble."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from CGCLesionSegLib.checkpoint import (ENSEMBLE_FORMAT_VERSION, FORMAT_VERSION, MAX_MEMBERS, CheckpointError,
                                        combine_checkpoints, first_member, info_from_dict, load_checkpoint,
                                        read_checkpoint, save_checkpoint, save_checkpoint_dict)
from CGCLesionSegLib.cli import main
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.inference import InferenceConfig, segment_case
from CGCLesionSegLib.network import CGCEnsemble, CGCNet, NetConfig
from CGCLesionSegLib.preprocess import NormalizationConfig

CFG = NetConfig(in_channels=1, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1), patch_size_xyz=(1, 1, 1))
PRE = {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": [2.0, 2.0, 2.0]}


def _member(tmp_path, seed: int, name: str | None = None, pre=PRE, crop=(16, 16, 8), cfg=CFG, channels=("flair",)):
    torch.manual_seed(seed)
    net = CGCNet(cfg)
    with torch.no_grad():  # a visible lesion map: random weights alone give ~0.5 everywhere
        net.head.bias.fill_(float(seed % 3) - 1.0)
    return save_checkpoint(tmp_path / (name or f"seed{seed}.pt"), net, cfg, list(channels), pre,
                           train_config={"crop_xyz": list(crop), "seed": seed}, step=10 + seed)


def test_segment_logits_are_the_logit_of_the_members_mean_probability():
    torch.manual_seed(0)
    nets = [CGCNet(CFG).eval() for _ in range(3)]
    ens = CGCEnsemble(nets).eval()
    x = torch.randn(2, 1, 12, 16, 20)
    with torch.no_grad():
        got = torch.sigmoid(ens.segment_logits(x))
        probs = [torch.sigmoid(n.segment_logits(x)).numpy() for n in nets]
        want = np.zeros(got.shape, np.float64)
        for b, z, y, xx in np.ndindex(2, 12, 16, 20):  # brute force, voxel by voxel
            want[b, 0, z, y, xx] = sum(float(p[b, 0, z, y, xx]) for p in probs) / 3
    assert np.abs(got.numpy() - want).max() < 1e-6
    assert ens.config == CFG and ens(x)["embeddings"] is None
    with pytest.raises(ValueError, match="at least 2"):
        CGCEnsemble(nets[:1])
    with pytest.raises(ValueError, match="one network configuration"):
        CGCEnsemble([nets[0], CGCNet(NetConfig(in_channels=2, widths=(4, 4, 8, 8), blocks=(0, 0, 0, 1),
                                               patch_size_xyz=(1, 1, 1)))])


def test_combined_file_round_trips_and_its_whole_case_map_is_the_mean_of_the_members_maps(tmp_path):
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    path = save_checkpoint_dict(tmp_path / "ens.pt", combine_checkpoints([a, b]))
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)} == sha  # inputs only read
    model, info = load_checkpoint(path)
    assert isinstance(model, CGCEnsemble) and info.members == 2 and info.format_version == ENSEMBLE_FORMAT_VERSION
    assert read_checkpoint(a)["format_version"] == FORMAT_VERSION  # single models stay version 1
    assert [s["seed"] for s in info.extra["ensemble"]] == [1, 2] and info.extra["ensemble"][0]["sha256"] == sha[a]
    assert read_checkpoint(path)["optimizer"] is None and info.train_config["crop_xyz"] == [16, 16, 8]
    # A 1 mm case: the network runs at the models' 2 mm, the maps are blended and resampled back.
    rng = np.random.default_rng(0)
    image = np.zeros((20, 30, 40), np.float32)
    image[2:18, 3:27, 4:36] = rng.normal(100, 10, (16, 24, 32))
    image[6:12, 8:16, 10:20] += 60
    geom = Geometry((20, 30, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    run = lambda p: segment_case([image], geom, ["flair"], p, compute_gmm=False,
                                 config=InferenceConfig(device="cpu")).probability
    mean = (run(a) + run(b)) / 2
    got = run(path)
    assert np.abs(got - mean).max() < 1e-5
    assert np.abs(run(a) - run(b)).max() > 0.05  # the members differ, so the mean is a real test


def test_members_that_differ_in_how_cases_are_prepared_are_refused_naming_the_field(tmp_path):
    a = _member(tmp_path, 1)
    odd = [(_member(tmp_path, 2, "spacing.pt", pre={**PRE, "spacing_xyz": [1.5, 1.5, 1.5]}), "preprocessing"),
           (_member(tmp_path, 3, "crop.pt", crop=(24, 24, 16)), "different crops"),
           (_member(tmp_path, 4, "t2.pt", channels=("t2",)), "channels"),
           (_member(tmp_path, 5, "net.pt", cfg=NetConfig(in_channels=1, widths=(4, 4, 8, 16), blocks=(0, 0, 0, 1),
                                                          patch_size_xyz=(1, 1, 1))), "net_config")]
    for path, field in odd:
        with pytest.raises(CheckpointError, match=field):
            combine_checkpoints([a, path])
    with pytest.raises(CheckpointError, match="at least 2"):
        combine_checkpoints([a])


def test_ensembles_flatten_and_damaged_member_lists_are_refused(tmp_path):
    a, b, c = (_member(tmp_path, s) for s in (1, 2, 3))
    ab = save_checkpoint_dict(tmp_path / "ab.pt", combine_checkpoints([a, b]))
    abc = combine_checkpoints([ab, c])
    assert len(abc["members"]) == 2 and [s["networks"] for s in abc["extra"]["ensemble"]] == [2, 1]
    for bad, match in [({"members": []}, "members"), ({"members": [1, 2]}, "members"),
                       ({"format_version": FORMAT_VERSION}, "format_version"),
                       ({"members": abc["members"] * MAX_MEMBERS}, "more than")]:
        with pytest.raises(CheckpointError, match=match):
            info_from_dict({**abc, **bad}, "x.pt")
    broken = dict(abc, members=[{k: v for k, v in abc["members"][0].items() if k != "head.bias"}])
    with pytest.raises(CheckpointError, match="member 2"):
        load_checkpoint(save_checkpoint_dict(tmp_path / "broken.pt", broken))
    assert "members" not in first_member(abc) and first_member(abc)["format_version"] == FORMAT_VERSION
    assert torch.equal(first_member(abc)["model"]["head.bias"], read_checkpoint(a)["model"]["head.bias"])


def test_cgcseg_ensemble_writes_a_new_file_and_never_replaces_an_input(tmp_path, capsys):
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    out = tmp_path / "ens.pt"
    assert main(["ensemble", str(a), str(b), "--output", str(out)]) == 0
    assert load_checkpoint(out)[1].members == 2 and '"members": 2' in capsys.readouterr().out
    before = a.read_bytes()
    assert main(["ensemble", str(a), str(b), "--output", str(a)]) == 2
    assert "one of the input models" in capsys.readouterr().err and a.read_bytes() == before
    assert main(["ensemble", str(a), str(b), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["ensemble", str(a), str(b), "--output", str(out), "--overwrite"]) == 0
    odd = _member(tmp_path, 3, "odd.pt", crop=(24, 24, 16))
    assert main(["ensemble", str(a), str(odd), "--output", str(tmp_path / "x.pt")]) == 2
    assert "different crops" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    # The same file twice (also through another path to it) is one network, not an ensemble.
    assert main(["ensemble", str(a), str(tmp_path / "." / a.name), "--output", str(tmp_path / "y.pt")]) == 2
    assert "given twice" in capsys.readouterr().err and not (tmp_path / "y.pt").exists()


def test_fine_tuning_from_an_ensemble_starts_from_its_first_network(tmp_path, capsys):
    """``--init-from`` an ensemble (e.g. either shipped model) loads its first network and says so;
    loading an ensemble's weights into one network by any other path is refused, naming the member files."""
    from CGCTraining.train import _init_from, _load_weights
    a, b = _member(tmp_path, 1), _member(tmp_path, 2)
    ens = combine_checkpoints([a, b])
    path = save_checkpoint_dict(tmp_path / "ens.pt", ens)
    net = CGCNet(CFG)
    _init_from(net, path, CFG, ["flair"], torch.device("cpu"))
    first = read_checkpoint(a)["model"]
    assert all(torch.equal(v, first[k]) for k, v in net.state_dict().items())
    assert "seed ensemble of 2 networks" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"seed ensemble of 2 networks.*seed1\.pt, seed2\.pt"):
        _load_weights(CGCNet(CFG), ens, CFG, path)
