"""``cgcseg demo`` end to end, as a user runs it: a subprocess writing into a fresh folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from CGCLesionSegLib.image_io import check_same_grid, read_image
from CGCLesionSegLib.metrics import dice

OUTPUTS = ("segmentation.nii.gz", "probability.nii.gz", "gmm_probability.nii.gz")


def _cgcseg(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _check_outputs(out: Path, reference_image: Path) -> dict:
    """Every output exists with its sidecar, on the reference channel's grid; returns the segmentation sidecar."""
    ref = read_image(reference_image)
    for name in OUTPUTS:
        img = read_image(out / name, dtype=None)
        check_same_grid(ref.geometry, img.geometry, "input", name, tolerance=1e-5)
        side = json.loads((out / f"{name}.json").read_text())
        assert side["output"].endswith(name) and side["gmm_settings"]["config"]["n_clusters"] >= 2
        assert side["stage"] in ("gmm", "cgc") and side["elapsed_s"] is not None
    seg = read_image(out / "segmentation.nii.gz", dtype=None).array_zyx
    assert seg.dtype == np.uint8 and set(np.unique(seg).tolist()) <= {0, 1}
    for name in ("probability.nii.gz", "gmm_probability.nii.gz"):
        p = read_image(out / name).array_zyx
        assert p.dtype == np.float32 and p.min() >= 0.0 and p.max() <= 1.0
    png = Image.open(out / "overview.png")
    assert png.format == "PNG" and png.size[0] >= 640 and png.size[1] > 200
    assert json.loads((out / "overview.png.json").read_text())["kind"] == "overview"
    return json.loads((out / "segmentation.nii.gz.json").read_text())


def test_demo_on_the_phantom(tmp_path):
    out = tmp_path / "demo"
    proc = _cgcseg("demo", "--output-dir", str(out), "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    case = out / "phantom" / "phantom"
    for m in ("flair", "t1", "t1ce", "t2", "seg"):
        assert (case / f"phantom_{m}.nii.gz").exists()
    side = _check_outputs(out, case / "phantom_flair.nii.gz")
    ev = side["evaluation"]
    assert isinstance(ev["dice"], float) and 0.0 <= ev["dice"] <= 1.0
    # The printed Dice is the recorded one, and it is recomputable from the files.
    assert f"Dice vs reference: {ev['dice']:.4f}" in proc.stdout
    seg = read_image(out / "segmentation.nii.gz", dtype=None).array_zyx
    truth = read_image(case / "phantom_seg.nii.gz", dtype=None).array_zyx > 0
    assert dice(seg, truth) == pytest.approx(ev["dice"], abs=1e-4)
    # The GMM stage overlaps the lesion: measured 0.81 for seed 0 (0.53-0.92 over seeds 0-5).
    gmm = (read_image(out / "gmm_probability.nii.gz").array_zyx >= 0.5)
    assert dice(gmm, truth) == pytest.approx(ev["gmm_dice"], abs=1e-4)
    assert ev["gmm_dice"] > 0.6
    # The summary says which stage produced the segmentation, as the sidecar does.
    assert ("GMM stage only" if side["stage"] == "gmm" else "CGC network") in proc.stdout
    assert side["stage_note"].split(":")[0] in proc.stdout
    assert side["phantom"]["seed"] == 0


def test_demo_json_progress_is_parseable(tmp_path):
    proc = _cgcseg("demo", "--output-dir", str(tmp_path), "--progress", "json", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert events[-1]["event"] == "summary" and isinstance(events[-1]["evaluation"]["dice"], float)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_demo_runs_the_cgc_stage_with_a_model(tmp_path):
    """Wiring of the network stage: an untrained tiny model runs and is recorded (its Dice means nothing)."""
    torch = pytest.importorskip("torch")
    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(0)
    config = NetConfig(in_channels=4, widths=(4, 8, 8, 8), blocks=(0, 0, 0, 1), decoder_width=4)
    model = save_checkpoint(tmp_path / "tiny.pt", CGCNet(config), config, ["flair", "t1", "t1ce", "t2"], {})
    out = tmp_path / "demo"
    proc = _cgcseg("demo", "--output-dir", str(out), "--model", str(model), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    side = _check_outputs(out, out / "phantom" / "phantom" / "phantom_flair.nii.gz")
    assert side["stage"] == "cgc" and side["model"]["sha256"]
    assert isinstance(side["evaluation"]["cgc_dice"], float) and isinstance(side["evaluation"]["gmm_dice"], float)
    assert "GMM stage alone" in proc.stdout


def test_demo_uses_the_threshold_its_model_records_for_its_rule(tmp_path):
    """A model recording `single-lesion` at 0.3: the CGC stage runs at 0.3, the GMM mask stays at 0.5, and
    `--threshold` sets both."""
    torch = pytest.importorskip("torch")
    from CGCLesionSegLib.checkpoint import build_checkpoint, save_checkpoint_dict
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(0)
    config = NetConfig(in_channels=4, widths=(4, 8, 8, 8), blocks=(0, 0, 0, 1), decoder_width=4)
    model = save_checkpoint_dict(tmp_path / "tiny.pt", build_checkpoint(
        CGCNet(config), config, ["flair", "t1", "t1ce", "t2"], {}, default_output_rule="single-lesion",
        default_threshold=0.3))
    for extra, want in (([], 0.3), (["--threshold", "0.45"], 0.45)):
        out = tmp_path / f"demo{want}"
        proc = _cgcseg("demo", "--output-dir", str(out), "--model", str(model), "--device", "cpu", "--progress", "none",
                       *extra)
        assert proc.returncode == 0, proc.stderr
        side = json.loads((out / "segmentation.nii.gz.json").read_text())
        assert side["stage"] == "cgc" and side["threshold"] == want and side["inference"]["threshold"] == want
        assert "single-lesion" in side["stage_note"]


def test_demo_bad_input_fails_cleanly(tmp_path):
    from CGCLesionSegLib.image_io import Geometry, write_image
    g = Geometry((8, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    g2 = Geometry((8, 16, 16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(tmp_path / "f.nii.gz", np.ones((8, 16, 16), np.float32), g)
    write_image(tmp_path / "m.nii.gz", np.ones((8, 16, 16), np.uint8), g2)
    out = tmp_path / "out"
    proc = _cgcseg("demo", "--output-dir", str(out), "--input", f"flair={tmp_path / 'f.nii.gz'}",
                   "--mask", str(tmp_path / "m.nii.gz"), "--progress", "none")
    assert proc.returncode == 2 and "error:" in proc.stderr and "spacing" in proc.stderr
    assert not any((out / n).exists() for n in (*OUTPUTS, "overview.png"))


def test_demo_on_a_real_case(brats_case, tmp_path):
    name = brats_case.name
    inputs = [f"--input={m}={brats_case / f'{name}_{m}.nii.gz'}" for m in ("t1", "flair", "t1ce", "t2")]
    out = tmp_path / "real"
    proc = _cgcseg("demo", "--output-dir", str(out), *inputs, "--reference", str(brats_case / f"{name}_seg.nii.gz"),
                   "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    side = _check_outputs(out, brats_case / f"{name}_flair.nii.gz")
    assert not (out / "phantom").exists()
    # Named inputs are reordered so FLAIR is the GMM's reference channel.
    assert list(side["inputs"])[0] == "flair"
    ev = side["evaluation"]
    assert isinstance(ev["dice"], float) and ev["reference_voxels"] > 0
    # Measured 0.32 on BraTS2021_00000 with the default GMM settings (the cortex ribbon is bright in
    # FLAIR too); the bound only checks that P overlaps the tumour at all.
    assert ev["gmm_dice"] > 0.2, f"GMM P does not overlap the tumour of {name}: Dice {ev['gmm_dice']}"


def test_demo_runs_a_flair_only_model_on_the_four_channel_phantom(tmp_path):
    torch = pytest.importorskip("torch")
    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(0)
    config = NetConfig(in_channels=1, widths=(4, 8, 8, 8), blocks=(0, 0, 0, 1), decoder_width=4)
    model = save_checkpoint(tmp_path / "flair.pt", CGCNet(config), config, ["flair"], {})
    out = tmp_path / "demo"
    proc = _cgcseg("demo", "--output-dir", str(out), "--model", str(model), "--device", "cpu", "--progress", "none",
                   "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    side = json.loads((out / "segmentation.nii.gz.json").read_text())
    assert side["stage"] == "cgc" and "flair.pt" in side["stage_note"]


def test_demo_falls_back_to_a_shipped_flair_only_model(tmp_path, monkeypatch, capsys):
    """Only a FLAIR-only default model installed: the four-channel phantom still gets the CGC stage."""
    torch = pytest.importorskip("torch")
    from CGCLesionSegLib import cli, default_models
    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(0)
    config = NetConfig(in_channels=1, widths=(4, 8, 8, 8), blocks=(0, 0, 0, 1), decoder_width=4)
    models = tmp_path / "models"
    save_checkpoint(models / "cgc_flair.pt", CGCNet(config), config, ["flair"], {})
    monkeypatch.setattr(default_models, "MODELS_DIR", models)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--output-dir", str(out), "--device", "cpu", "--progress", "none"]) == 0
    side = json.loads((out / "segmentation.nii.gz.json").read_text())
    assert side["stage"] == "cgc" and side["model"]["path"].endswith("cgc_flair.pt")
    assert "CGC network (cgc_flair.pt)" in capsys.readouterr().out


def test_demo_never_writes_over_a_given_input(tmp_path, capsys):
    from CGCLesionSegLib.cli import main
    from CGCLesionSegLib.image_io import Geometry, write_image
    g = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    flair = write_image(tmp_path / "segmentation.nii.gz", np.arange(120, dtype=np.float32).reshape(4, 5, 6), g)
    before = flair.read_bytes()
    rc = main(["demo", "--output-dir", str(tmp_path), "--input", f"flair={flair}", "--progress", "none"])
    assert rc == 2 and "also an input" in capsys.readouterr().err
    assert flair.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segmentation.nii.gz"]
