"""CGCTraining: configs, CLI contract, one step lowers the loss, run folder contents, budget stop, resume rules."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CGCLesionSegLib.checkpoint import load_checkpoint, read_checkpoint
from CGCLesionSegLib.losses import LossConfig, cgc_loss
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCTraining.__main__ import build_parser, configs_from_args, main
from CGCTraining.config import TrainConfig, train_config_from_dict, train_config_to_dict
from test_training_synth import (MODS, REPO, TINY_NET_ARGS, subprocess_env, write_brats_folder,
                                 write_csv_with_prob)


def _args(*extra):
    return build_parser().parse_args(["--cases", "x", "--output-dir", "y", *extra])


def test_train_config_defaults_are_the_papers_and_validate():
    t = TrainConfig()
    assert t.crop_xyz == (192, 192, 64) and t.crop_zyx == (64, 192, 192)
    assert t.batch_size == 2 and t.lr == 1e-4 and t.epochs == 400
    assert train_config_from_dict(json.loads(json.dumps(train_config_to_dict(t)))) == t
    for kw, word in [(dict(crop_xyz=(100, 96, 64)), "multiples of 8"), (dict(batch_size=0), "batch_size"),
                     (dict(epochs=None, steps=None), "run length"), (dict(modalities=("a", "a")), "distinct"),
                     (dict(max_minutes=0), "max_minutes"), (dict(lesion_crop_fraction=2), "lesion_crop_fraction")]:
        with pytest.raises(ValueError, match=word):
            TrainConfig(**kw)


@pytest.mark.parametrize("device, local_world, cores, expected", [
    ("cpu", 1, 16, 1), ("cuda", 1, 16, 12), ("cuda", 1, 64, 12), ("cuda", 1, 8, 6), ("cuda", 2, 16, 6),
    ("cuda", 1, 2, 1), ("cuda", 4, 4, 1)])
def test_auto_workers(device, local_world, cores, expected):
    """``--workers auto``: 1 on the CPU; on a GPU the process's share of the cores minus two, in [1, 12]."""
    from CGCTraining.config import auto_workers
    assert auto_workers(device, local_world, cores=cores) == expected


def test_auto_workers_fit_in_shared_memory():
    """Workers hand ~3 batches each through /dev/shm: a default Docker container (64 MB) with 19 MB batches
    gets 1 worker, not 12 that would die of a bus error; 0 when not even one fits."""
    from CGCTraining.config import auto_workers, shared_memory_bytes
    mb = 1024 ** 2
    assert auto_workers("cuda", 1, cores=16, batch_bytes=19 * mb, shm_bytes=64 * mb) == 1
    assert auto_workers("cuda", 1, cores=16, batch_bytes=19 * mb, shm_bytes=8 * 1024 * mb) == 12
    assert auto_workers("cuda", 1, cores=16, batch_bytes=19 * mb, shm_bytes=200 * mb) == 3
    assert auto_workers("cpu", 1, batch_bytes=40 * mb, shm_bytes=64 * mb) == 0
    assert auto_workers("cpu", 1, batch_bytes=40 * mb, shm_bytes=None) == 1
    size = shared_memory_bytes("/nonexistent-shm-folder")
    assert size is None


def test_workers_option_is_a_count_or_auto(capsys):
    assert configs_from_args(_args())[0].workers is None  # auto, resolved where the device is known
    assert configs_from_args(_args("--workers", "auto"))[0].workers is None
    assert configs_from_args(_args("--workers", "3"))[0].workers == 3
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            _args("--workers", bad)
        assert "workers" in capsys.readouterr().err
    t = TrainConfig(workers=None)
    assert train_config_from_dict(json.loads(json.dumps(train_config_to_dict(t)))) == t


def test_cli_sizes_are_xyz():
    train_cfg, net_cfg, _ = configs_from_args(_args("--crop", "96", "80", "32", "--patch", "3", "2", "4"))
    assert train_cfg.crop_zyx == (32, 80, 96) and net_cfg.patch_size_zyx == (4, 2, 3)
    with pytest.raises(ValueError, match="does not tile"):
        configs_from_args(_args("--crop", "96", "96", "24", "--patch", "6", "6", "4"))  # bottleneck z = 3


@pytest.mark.parametrize("flags, coarse, fine", [([], True, True), (["--no-fine"], True, False),
                                                 (["--no-coarse"], False, True),
                                                 (["--no-coarse", "--no-fine"], False, False)])
def test_ablation_rows_are_configurations(flags, coarse, fine):
    train_cfg, net_cfg, gmm = configs_from_args(_args(*flags, "--patch", "12", "12", "4", "--tau", "0.07"))
    assert (net_cfg.coarse, net_cfg.fine) == (coarse, fine)
    assert net_cfg.patch_size_xyz == (12, 12, 4) and train_cfg.loss.tau == 0.07
    assert gmm.channels == (0,)  # P from the first modality (FLAIR) only, as the paper


def test_gmm_flags():
    _, _, gmm = configs_from_args(_args("--gmm-modalities", "flair", "t2", "--gmm-clusters", "5"))
    assert gmm.channels == (0, 3) and gmm.n_clusters == 5
    with pytest.raises(ValueError, match="reference channel"):
        configs_from_args(_args("--gmm-modalities", "t2"))
    _, _, gmm = configs_from_args(_args("--modalities", "ct"))
    assert gmm.modality == "ct"


def test_gmm_preset_recommended_is_cgcseg_gmms_default_map_and_flags_override_it(tmp_path):
    from CGCLesionSegLib.gmm import GMMConfig, recommended_config
    assert configs_from_args(_args())[2] == GMMConfig()  # the paper's settings stay the default
    _, _, gmm = configs_from_args(_args("--gmm-preset", "recommended"))
    assert gmm == recommended_config()
    _, _, gmm = configs_from_args(_args("--gmm-preset", "recommended", "--gmm-clusters", "5"))
    assert gmm.n_clusters == 5 and gmm.ensemble_clusters is None and gmm.foreground_rule == "outlier"
    cfg = tmp_path / "gmm.json"
    cfg.write_text(json.dumps({"gmm": {"outlier_z": 1.5}}))  # a file's fields go over the preset's
    _, _, gmm = configs_from_args(_args("--gmm-preset", "recommended", "--gmm-config", str(cfg)))
    assert gmm.outlier_z == 1.5 and gmm.ensemble_clusters == recommended_config().ensemble_clusters
    cfg.write_text("[1, 2]")
    with pytest.raises(ValueError, match="object of GMMConfig fields"):
        configs_from_args(_args("--gmm-config", str(cfg)))
    with pytest.raises(ValueError, match="MRI preset"):
        configs_from_args(_args("--modalities", "ct", "--gmm-preset", "recommended"))


def test_one_optimisation_step_lowers_the_loss():
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=2, widths=(2, 4, 4, 8), blocks=(0, 1, 1, 1), decoder_width=2, projection_dim=8,
                    patch_size_xyz=(1, 1, 1))
    net = CGCNet(cfg)
    x = torch.randn(2, 2, 16, 16, 16)
    prob = torch.zeros(2, 1, 16, 16, 16)
    prob[:, :, 0:8, 0:8, :] = 1.0  # two of the eight bottleneck cells per crop are lesion
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        total, terms = cgc_loss(net(x), prob, LossConfig(), cfg.patch_size_zyx)
        losses.append(float(total.detach()))
        total.backward()
        opt.step()
    assert terms["fg"] > 0 and terms["cg"] > 0
    assert losses[1] < losses[0]


def _read_log(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_contents_json_progress_and_resume_rules(tmp_path, capsys):
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    run = tmp_path / "run"
    base = ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16", "16",
            "--workers", "0", "--device", "cpu", *TINY_NET_ARGS]
    base = [str(a) for a in base]
    assert main(base + ["--steps", "3", "--progress", "json"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.strip()]
    progress = [l for l in lines if l["event"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3]
    assert all(set(p) >= {"epoch", "step", "fraction", "loss"} for p in progress)
    assert progress[-1]["fraction"] == 1.0 and progress[0]["epoch"] == 0 and progress[-1]["epoch"] == 2
    assert lines[-1]["event"] == "done" and lines[-1]["step"] == 3
    # the label-free lesion check ran on the saved model, and its result is kept beside it
    check = lines[-1]["lesion_check"]
    assert check["target_voxels"] > 0 and check["ratio"] == check["network_voxels"] / check["target_voxels"]
    assert json.loads((run / "lesion_check.json").read_text()) == check
    assert any(l["event"] == "warning" and l["kind"] == "lesion_check" for l in lines) == (check["collapsed"] or check["overgrown"])
    assert {p.name for p in run.iterdir()} >= {"last.pt", "loss_log.csv", "run.json", "cache"}
    log = _read_log(run / "loss_log.csv")
    assert [int(r["step"]) for r in log] == [1, 2, 3]
    assert {"total", "bce", "cg", "fg"} <= set(log[0])
    for r in log:
        assert np.isclose(float(r["total"]), float(r["bce"]) + float(r["cg"]) + float(r["fg"]), rtol=1e-4)
    model, info = load_checkpoint(run / "last.pt")
    assert info.channels == list(MODS) and info.step == 3
    assert set(info.preprocessing) >= {"normalization", "gmm", "spacing_xyz"}
    assert info.preprocessing["spacing_xyz"] == [1.0, 1.0, 1.0]
    assert info.train_config["loss"]["tau"] == 0.2 and tuple(info.train_config["crop_xyz"]) == (16, 16, 16)

    # An existing run is never overwritten by accident.
    assert main(base + ["--steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    # Resuming with a setting that changes the optimisation is refused, naming it.
    assert main(base + ["--steps", "4", "--resume", "--lr", "0.01"]) == 2
    assert "lr" in capsys.readouterr().err
    # Resuming with a longer run continues from step 3.
    assert main(base + ["--steps", "5", "--resume", "--progress", "json"]) == 0
    steps = [json.loads(l)["step"] for l in capsys.readouterr().out.splitlines() if '"progress"' in l]
    assert steps == [4, 5]
    assert [int(r["step"]) for r in _read_log(run / "loss_log.csv")] == [1, 2, 3, 4, 5]
    assert read_checkpoint(run / "last.pt")["step"] == 5


def test_max_minutes_checkpoints_and_stops_cleanly(tmp_path, capsys):
    cases = write_csv_with_prob(tmp_path / "list", n_cases=1)
    run = tmp_path / "run"
    rc = main([str(a) for a in ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16",
                                "16", "--workers", "0", "--steps", "50", "--max-minutes", "0.00001",
                                "--checkpoint-every", "1000", "--progress", "json", *TINY_NET_ARGS]])
    assert rc == 0
    done = [json.loads(l) for l in capsys.readouterr().out.splitlines() if '"done"' in l][0]
    assert done["stopped_early"] and done["step"] == 1
    assert read_checkpoint(run / "last.pt")["step"] == 1


def test_gmm_path_on_a_brats_folder_leaves_the_input_untouched(tmp_path, capsys):
    data = write_brats_folder(tmp_path / "data", n_cases=2)
    before = sorted(str(p) for p in data.rglob("*"))
    data.chmod(0o555)
    for d in data.iterdir():
        d.chmod(0o555)
    try:
        rc = main([str(a) for a in ["--cases", data, "--modalities", *MODS, "--output-dir", tmp_path / "run",
                                    "--crop", "16", "16", "16", "--workers", "0", "--steps", "1",
                                    "--gmm-clusters", "3", "--progress", "none", *TINY_NET_ARGS]])
    finally:
        for d in data.iterdir():
            d.chmod(0o755)
        data.chmod(0o755)
    assert rc == 0, capsys.readouterr().err
    assert sorted(str(p) for p in data.rglob("*")) == before
    info = load_checkpoint(tmp_path / "run" / "last.pt")[1]
    assert info.preprocessing["gmm"]["n_clusters"] == 3 and list(info.preprocessing["gmm"]["channels"]) == [0]
    assert len(list((tmp_path / "run" / "cache").glob("*.json"))) == 2


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert main(["--cases", str(tmp_path / "none"), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and not (tmp_path / "r").exists()


def test_script_path_with_separator_and_cgcseg_help(tmp_path):
    script = REPO / "CGCTraining" / "__main__.py"
    r = subprocess.run([sys.executable, str(script), "--", "--help"], capture_output=True, text=True, cwd=tmp_path,
                       env=subprocess_env(), timeout=120)
    assert r.returncode == 0 and "--cases" in r.stdout and "--max-minutes" in r.stdout
    r = subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", "train", "--help"], capture_output=True,
                       text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0 and "--cases" in r.stdout and "--no-coarse" in r.stdout


def test_pick_device_uses_the_inference_rule():
    from CGCTraining.train import pick_device
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        pick_device("gpu")  # a typo was silently trained on the CPU
    if not torch.cuda.is_available():
        assert pick_device("auto", local_rank=1) == torch.device("cpu")
        with pytest.raises(ValueError, match="--device cpu or auto"):
            pick_device("cuda")


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 MemoryError("Unable to allocate 3.4 GiB")])
def test_out_of_memory_is_one_error_line_with_advice(tmp_path, capsys, monkeypatch, exc):
    import CGCTraining.train as T
    import CGCTraining.data as D

    def boom(*a, **k):
        raise exc
    monkeypatch.setattr(D, "discover_cases", lambda *a, **k: [])
    monkeypatch.setattr(T, "train", boom)
    rc = main(["--cases", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--crop", "96", "96", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "out of memory" in err and "--crop (e.g. 48 48 32)" in err and "--batch-size" in err


def test_non_finite_loss_stops_without_overwriting_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import CGCTraining.train as T
    cases = write_csv_with_prob(tmp_path / "list", n_cases=1)
    run = tmp_path / "run"
    real_loss = T.cgc_loss
    calls = {"n": 0}

    def loss_nan_from_step_3(*a, **k):
        calls["n"] += 1
        loss, terms = real_loss(*a, **k)
        if calls["n"] >= 3:
            loss = loss * float("nan")
            terms = {**terms, "total": loss}
        return loss, terms
    monkeypatch.setattr(T, "cgc_loss", loss_nan_from_step_3)
    rc = main([str(a) for a in ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16",
                                "16", "--workers", "0", "--steps", "5", "--checkpoint-every", "2",
                                "--progress", "none", "--device", "cpu", *TINY_NET_ARGS]])
    err = capsys.readouterr().err
    assert rc == 2 and "loss became nan at step 3" in err and "still holds step 2" in err, err
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_bad_case_is_named_in_the_error(tmp_path, capsys):
    from CGCLesionSegLib.image_io import read_image, write_image
    data = write_brats_folder(tmp_path / "data", n_cases=2)
    bad = data / "Case001" / "Case001_flair.nii.gz"
    img = read_image(bad)
    write_image(bad, np.where(img.array_zyx != 0, 7.0, 0.0).astype(np.float32), img.geometry)  # no contrast
    rc = main([str(a) for a in ["--cases", data, "--modalities", *MODS, "--output-dir", tmp_path / "run",
                                "--crop", "16", "16", "16", "--workers", "0", "--steps", "1", "--progress", "none",
                                *TINY_NET_ARGS]])
    err = capsys.readouterr().err
    assert rc == 2 and "case Case001:" in err and "constant" in err, err
