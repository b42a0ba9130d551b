"""`train --resume` with --output-dir alone reuses the first call's settings; --crop errors suggest crops."""
from __future__ import annotations

import json

from CGCLesionSegLib.checkpoint import read_checkpoint
from CGCTraining.__main__ import ARGS_FILE, nearest_crops
from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_csv_with_prob


def test_resume_with_output_dir_alone(tmp_path):
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    run = tmp_path / "run"
    first = ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16", "16",
             "--batch-size", "1", "--workers", "1", "--device", "cpu", "--steps", "2", "--lr", "0.001",
             "--progress", "none", *TINY_NET_ARGS]
    r = run_cli(first)
    assert r.returncode == 0, r.stderr
    stored = json.loads((run / ARGS_FILE).read_text())
    assert stored["lr"] == 0.001 and stored["widths"] == [2, 3, 4, 4]
    assert stored["cases"] == str(cases.resolve())
    assert read_checkpoint(run / "last.pt")["step"] == 2

    # Only the run folder (and a longer budget): the stored settings continue the run.
    r = run_cli(["--output-dir", run, "--resume", "--steps", "3", "--progress", "none"])
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 3
    assert json.loads((run / ARGS_FILE).read_text())["steps"] == 3   # the next --resume starts from here

    # A setting given again that differs from the run is still an error, and changes nothing.
    r = run_cli(["--output-dir", run, "--resume", "--lr", "0.5", "--steps", "4", "--progress", "none"])
    assert r.returncode == 2 and "different" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert read_checkpoint(run / "last.pt")["step"] == 3
    assert json.loads((run / ARGS_FILE).read_text())["lr"] == 0.001

    # A new run over it is refused and keeps its record.
    r = run_cli(first + ["--widths", "2", "2", "2", "2"])
    assert r.returncode == 2
    assert json.loads((run / ARGS_FILE).read_text())["widths"] == [2, 3, 4, 4]


def test_resume_without_stored_args_or_cases_says_what_to_do(tmp_path):
    r = run_cli(["--output-dir", tmp_path / "none", "--resume"])
    assert r.returncode == 2 and "args.json" in r.stderr and "same arguments" in r.stderr
    r = run_cli(["--output-dir", tmp_path / "none"])
    assert r.returncode == 2 and "--cases" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--help" in r.stderr


def test_crop_error_suggests_the_nearest_valid_crops():
    assert nearest_crops((64, 64, 32), (6, 6, 4)) == [(48, 48, 32), (96, 96, 32)]
    assert nearest_crops((96, 96, 64), (6, 6, 4)) == [(96, 96, 64)]
    assert nearest_crops((16, 16, 16), (6, 6, 4)) == [(48, 48, 32)]
    r = run_cli(["--cases", "x", "--output-dir", "y", "--crop", "64", "64", "32"])
    assert r.returncode == 2 and "48 48 32 or 96 96 32" in r.stderr, r.stderr


def test_resume_refuses_another_init_from(tmp_path):
    """A resumed run continues from its own last.pt: an --init-from that is not the first call's would be
    ignored silently, so it is refused and the run's record is kept; the first call's one is accepted."""
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    base = ["--cases", cases, "--modalities", *MODS, "--crop", "16", "16", "16", "--batch-size", "1",
            "--workers", "1", "--device", "cpu", "--steps", "1", "--progress", "none", *TINY_NET_ARGS]
    first = tmp_path / "first"
    assert run_cli(base + ["--output-dir", first]).returncode == 0
    run = tmp_path / "run"
    r = run_cli(base + ["--output-dir", run, "--init-from", first / "last.pt"])
    assert r.returncode == 0, r.stderr
    record = (run / ARGS_FILE).read_text()
    other = tmp_path / "other.pt"
    other.write_bytes((first / "last.pt").read_bytes())
    r = run_cli(["--output-dir", run, "--resume", "--steps", "2", "--init-from", other, "--progress", "none"])
    assert r.returncode == 2 and "started with --init-from" in r.stderr and "new --output-dir" in r.stderr, r.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 1 and (run / ARGS_FILE).read_text() == record
    r = run_cli(["--output-dir", first, "--resume", "--steps", "2", "--init-from", other, "--progress", "none"])
    assert r.returncode == 2 and "started with no --init-from" in r.stderr, r.stderr
    r = run_cli(["--output-dir", run, "--resume", "--steps", "2", "--init-from", first / "last.pt",
                 "--progress", "none"])
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run / "last.pt")["step"] == 2
