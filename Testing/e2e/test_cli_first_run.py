"""A new user's first run: swapped channels warn (and --strict refuses), unwritable outputs fail before
any work, sidecars say what they hold, JSON progress ends with `done`, usage errors are one line, and
scripts/demo.sh takes paths relative to where it is called."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from CGCLesionSegLib.gmm import GMMConfig

REPO = Path(__file__).resolve().parents[2]
MODS = ["flair", "t1", "t1ce", "t2"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt", MODS, GMMConfig(n_clusters=5))


@pytest.fixture(scope="module")
def case(phantom_case):
    return phantom_case


def _named(case, names_to_files):
    out = []
    for name, modality in names_to_files:
        out += ["--input", f"{name}={case[modality]}"]
    return out


def test_correct_inputs_run_quietly_and_sidecars_say_what_they_hold(tmp_path, tiny_model, case):
    seg, prob, gmm = tmp_path / "seg.nii.gz", tmp_path / "prob.nii.gz", tmp_path / "gmm.nii.gz"
    r = cli("segment", *_named(case, zip(MODS, MODS)), "--model", tiny_model, "--output", seg,
            "--probability-output", prob, "--gmm-output", gmm, "--postprocess", "single-lesion")
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    for path in (seg, prob, gmm):
        side = json.loads(Path(f"{path}.json").read_text())
        assert side["gmm_settings"]["n_clusters"] == 5, path  # the model's GMM, not null
        assert side["channel_check"]["status"] == "ok"
    side = json.loads(Path(f"{prob}.json").read_text())
    assert side["kind"] == "probability" and "GMM map P" in side["holds"]  # single-lesion averages P in


def test_swapped_named_inputs_warn_and_strict_refuses(tmp_path, tiny_model, case):
    swapped = [("flair", "t2"), ("t1", "t1"), ("t1ce", "t1ce"), ("t2", "flair")]
    out = tmp_path / "seg.nii.gz"
    r = cli("segment", *_named(case, swapped), "--model", tiny_model, "--output", out, "--strict")
    assert r.returncode == 2
    assert "--strict" in r.stderr and "p1_t2.nii.gz" in r.stderr and "flair looks like t2" in r.stderr
    assert not out.exists() and not Path(f"{out}.json").exists()
    r = cli("segment", *_named(case, swapped), "--model", tiny_model, "--output", out, "--progress", "json")
    assert r.returncode == 0, r.stderr
    assert "WARNING: the inputs may be swapped" in r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert any(e["event"] == "warning" and e["kind"] == "channel_check" for e in events)
    check = json.loads(Path(f"{out}.json").read_text())["channel_check"]
    assert check["status"] == "warning" and check["intensity"]["flagged"]


def test_unnamed_inputs_in_the_wrong_order_are_refused_under_strict(tmp_path, tiny_model, case):
    # Copies without modality tokens in their names: only the intensity signature can tell.
    order = ["t1", "flair", "t1ce", "t2"]
    args = []
    for i, m in enumerate(order):
        dst = tmp_path / f"vol{i}.nii.gz"
        dst.write_bytes(Path(case[m]).read_bytes())
        args += ["--input", dst]
    r = cli("segment", *args, "--model", tiny_model, "--output", tmp_path / "s.nii.gz", "--strict")
    assert r.returncode == 2 and "flair looks like t1" in r.stderr, r.stderr


def test_gmm_json_progress_ends_with_done_and_warns_on_swaps(tmp_path, case):
    out = tmp_path / "P.nii.gz"
    r = cli("gmm", "--input", f"flair={case['t1']}", "--input", f"t1={case['flair']}", "--output", out,
            "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["outputs"] == [str(out)]
    assert json.loads(Path(f"{out}.json").read_text())["channel_check"]["status"] == "warning"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc for an unwritable folder")
def test_unwritable_output_fails_before_any_work(tmp_path, tiny_model, case):
    r = cli("segment", *_named(case, zip(MODS, MODS)), "--model", tiny_model, "--output", "/proc/x.nii.gz")
    assert r.returncode == 2 and "cannot be written" in r.stderr and "Nothing was computed" in r.stderr
    assert "lesion volume" not in r.stderr
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", *_named(case, zip(MODS, MODS)), "--model", tiny_model, "--output", seg,
            "--probability-output", "/proc/p.nii.gz")
    assert r.returncode == 2 and "--probability-output" in r.stderr and not seg.exists()


def test_usage_errors_are_one_line():
    for args in (["segment", "--device", "gpu"], ["gmm", "--progress", "loud"], ["train", "--device", "gpu"]):
        r = cli(*args)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "invalid choice" in lines[0] and "--help" in lines[0], r.stderr


@pytest.mark.slow
def test_demo_sh_takes_paths_from_where_it_is_called(tmp_path):
    stamps = list((REPO / ".venv").glob(".cgc-setup-*"))
    if not stamps:
        pytest.skip("scripts/setup.sh has not run in this checkout (it would install .venv now)")
    r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--output-dir", "rel-out", "--progress", "none"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rel-out" / "overview.png").exists()
    assert "pip" not in r.stderr.lower() and "warning" not in r.stderr.lower(), r.stderr
    manifest = json.loads((tmp_path / "rel-out" / "demo-manifest.json").read_text())
    assert "segmentation.nii.gz" in manifest["files"]
    side = json.loads((tmp_path / "rel-out" / "overview.png.json").read_text())
    assert side["overview"]["overdrawn_px"]["CGC"] == 0 and side["overview"]["contours"] == ["reference", "CGC"]
