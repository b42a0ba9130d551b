"""`python -m CGCTraining` on bad input and interrupts: one message that says what happened and what to do,
and nothing the user had (checkpoints, args.json, other files) is lost."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import CGCTraining.train as train_module
from CGCLesionSegLib.checkpoint import read_checkpoint
from CGCTraining.__main__ import ARGS_FILE, main
from test_training_synth import MODS, REPO, TINY_NET_ARGS, write_csv_with_prob

TINY = ["--modalities", *MODS, "--crop", "16", "16", "16", "--batch-size", "1", "--workers", "0", "--device", "cpu",
        "--progress", "none", *TINY_NET_ARGS]


def _cli(*args) -> list[str]:
    return [str(a) for a in args]


@pytest.fixture
def cohort(tmp_path) -> Path:
    return write_csv_with_prob(tmp_path / "cohort", n_cases=1)


def _one_paragraph(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_resume_with_other_cases_is_refused_and_keeps_the_runs_record(tmp_path, cohort, capsys):
    run = tmp_path / "run"
    assert main(_cli("--cases", cohort, "--output-dir", run, "--steps", "2", *TINY)) == 0
    record = (run / ARGS_FILE).read_bytes()
    other = write_csv_with_prob(tmp_path / "other", n_cases=1)
    capsys.readouterr()
    assert main(_cli("--cases", other, "--output-dir", run, "--resume", "--steps", "3", "--progress", "none")) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert str(cohort.resolve()) in err and "without --cases" in err and "new --output-dir" in err, err
    assert (run / ARGS_FILE).read_bytes() == record and read_checkpoint(run / "last.pt")["step"] == 2
    # The same cohort spelt another way (relative, through "..") is the same cohort.
    same = os.path.relpath(cohort.parent / ".." / cohort.parent.name / cohort.name)
    assert main(_cli("--cases", same, "--output-dir", run, "--resume", "--steps", "3", "--progress", "none")) == 0
    assert json.loads((run / ARGS_FILE).read_text())["cases"] == str(cohort.resolve())


def test_ctrl_c_during_startup_says_interrupted_and_what_to_do(tmp_path, cohort, capsys, monkeypatch):
    import CGCTraining.__main__ as cli
    import CGCTraining.data

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # what Ctrl-C raises: str() of it is ''

    monkeypatch.setattr(CGCTraining.data, "discover_cases", interrupted)
    assert main(_cli("--cases", cohort, "--output-dir", tmp_path / "run", "--steps", "2", *TINY)) == 130
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "interrupted; no checkpoint was written yet" in err and "same command again" in err, err
    monkeypatch.setattr(cli, "build_parser", interrupted)  # while torch is being imported
    assert main(_cli("--cases", cohort, "--output-dir", tmp_path / "run", "--steps", "2")) == 130
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "interrupted; nothing was written" in err, err


def test_ctrl_c_during_training_names_the_last_checkpoint(tmp_path, cohort, capsys, monkeypatch):
    real, calls = train_module.cgc_loss, []

    def loss_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_module, "cgc_loss", loss_then_interrupt)
    run = tmp_path / "run"
    assert main(_cli("--cases", cohort, "--output-dir", run, "--steps", "5", "--checkpoint-every", "1", *TINY)) == 130
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert f"interrupted; {run / 'last.pt'} holds step 2: continue with --output-dir {run} --resume" in err, err


class _InterruptingFile:
    """A file whose first write receives Ctrl-C, as a second Ctrl-C landing inside torch.save does."""

    def __init__(self, fh, as_write_error: bool) -> None:
        self.fh, self.as_write_error, self.sent = fh, as_write_error, False

    def write(self, data):
        if not self.sent:
            self.sent = True
            try:
                os.kill(os.getpid(), signal.SIGINT)  # the training's handler raises KeyboardInterrupt here
            except KeyboardInterrupt:
                if self.as_write_error:  # what torch's C++ writer makes of it with a real file descriptor
                    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 55599616 vs 55599504")
                raise
        return self.fh.write(data)

    def flush(self):
        return self.fh.flush()


@pytest.mark.parametrize("as_write_error", [False, True], ids=["interrupt", "torch-write-error"])
def test_second_ctrl_c_during_the_checkpoint_write_is_an_interrupt_not_a_disk_problem(
        tmp_path, cohort, capsys, monkeypatch, as_write_error):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # step 2: a first Ctrl-C (stop after this step), then a second one during the write
            os.kill(os.getpid(), signal.SIGINT)
            return real_save(obj, _InterruptingFile(f, as_write_error), *a, **k)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    rc = main(_cli("--cases", cohort, "--output-dir", run, "--steps", "5", "--checkpoint-every", "1", *TINY))
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "free space" not in err and "Traceback" not in err, err
    assert "interrupted while writing the checkpoint of step 2; the previous checkpoint file is kept" in err, err
    assert f"{run / 'last.pt'} holds step 1: continue with" in err, err
    assert read_checkpoint(run / "last.pt")["step"] == 1
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp")]  # the half-written file is gone


def test_output_dir_that_is_a_file_or_not_writable_is_refused_up_front(tmp_path, cohort, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    for out, says in ((a_file, "is a file, not a folder"), (a_file / "run", f"{a_file} is a file, not a folder")):
        assert main(_cli("--cases", cohort, "--output-dir", out, "--steps", "1", *TINY)) == 2
        err = capsys.readouterr().err
        _one_paragraph(err)
        assert says in err and "free space" not in err and "--resume" not in err.replace("to --resume", ""), err
    assert a_file.read_text() == "keep me\n"
    assert not (cohort.parent / "cache").exists()


def test_output_dir_on_a_read_only_filesystem_is_refused_up_front(cohort, capsys):
    # /sys refuses new files even to root (for whom os.access always says yes), like a read-only mount.
    probe = Path("/sys/cgc-write-probe")
    try:
        probe.mkdir()
    except OSError:
        pass
    else:
        probe.rmdir()
        pytest.skip("/sys is writable here; no read-only folder to test with")
    assert main(_cli("--cases", cohort, "--output-dir", "/sys/cgc-run", "--steps", "1", *TINY)) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "the folder /sys is not writable" in err and "choose a folder you can write to" in err, err
    assert "free space" not in err


def test_a_stale_stop_file_is_refused_and_a_stop_file_stop_says_so(tmp_path, cohort, capsys, monkeypatch):
    stop, run = tmp_path / "stop", tmp_path / "run"
    stop.write_text("stop\n")
    hour_ago = time.time() - 3600
    os.utime(stop, (hour_ago, hour_ago))  # left by an earlier cancel
    args = _cli("--cases", cohort, "--output-dir", run, "--steps", "50", "--stop-file", stop, *TINY)
    assert main(args) == 2
    err = capsys.readouterr().err
    _one_paragraph(err)
    assert "exists already" in err and "earlier cancel" in err and "delete it or give another path" in err, err
    assert stop.exists() and not run.exists()

    # A stop file that appears during the run stops it, and the message says that this was the reason.
    stop.unlink()
    real, calls = train_module.cgc_loss, []

    def loss_then_cancel(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            stop.write_text("stop\n")
        return real(*a, **k)

    monkeypatch.setattr(train_module, "cgc_loss", loss_then_cancel)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"trained to step 2/50, then stopped: the stop file {stop} appeared" in err and "--resume" in err, err
    assert "time budget" not in err
    assert read_checkpoint(run / "last.pt")["step"] == 2


def test_a_cancel_written_while_the_command_starts_is_a_stop_not_an_error(tmp_path, cohort, capsys):
    """The Slicer module writes the stop file as soon as the child exists: a Cancel pressed while Python is
    still starting is a real request (stop after the first step), not a stale file."""
    stop = tmp_path / "stop"
    stop.write_text("stop\n")
    assert main(_cli("--cases", cohort, "--output-dir", tmp_path / "run", "--steps", "50", "--stop-file", stop,
                     *TINY, "--progress", "json")) == 0
    done = [json.loads(l) for l in capsys.readouterr().out.splitlines() if '"done"' in l][0]
    assert done["step"] == 1 and done["stopped_early"] and "stop file" in done["stop_reason"]


def test_resume_past_the_requested_length_says_nothing_was_trained(tmp_path, cohort, capsys):
    # Not refused (rc 0): re-running a finished command must stay a no-op success; but it says so.
    run = tmp_path / "run"
    assert main(_cli("--cases", cohort, "--output-dir", run, "--steps", "3", *TINY)) == 0
    capsys.readouterr()
    before = (run / "last.pt").read_bytes()
    assert main(_cli("--output-dir", run, "--resume", "--steps", "2")) == 0
    err = capsys.readouterr().err
    assert "nothing trained" in err and "already at step 3, past the requested 2 steps" in err, err
    assert "trained to step" not in err
    assert (run / "last.pt").read_bytes() == before
    assert json.loads((run / ARGS_FILE).read_text())["steps"] == 3  # the record keeps the run's length


def test_init_from_a_checkpoint_with_other_modalities_names_them(tmp_path, cohort, capsys):
    shipped = sorted((REPO / "CGCLesionSeg" / "CGCLesionSegLib" / "models").glob("*t1ce*.pt"))
    if not shipped:
        pytest.skip("the four-channel shipped model is not in this checkout")
    run = tmp_path / "run"
    # Same architecture (the shipped recipe), FLAIR only: the channels are the difference, and named.
    assert main(_cli("--cases", cohort, "--output-dir", run, "--steps", "1", "--modalities", "flair",
                     "--recipe", "shipped", "--crop", "24", "24", "32", "--device", "cpu", "--progress", "none",
                     "--init-from", shipped[0])) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "trained on flair t1 t1ce t2, this run uses flair, so its network configuration differs from this run's " \
           "(input channels); give --modalities flair t1 t1ce t2 (and those images in --cases), or" in err, err
    assert not run.exists()  # refused before the run folder (args.json, run.lock, P maps) was made
    # Other channels and another network: both named.
    assert main(_cli("--cases", cohort, "--output-dir", run, "--steps", "1", *TINY, "--modalities", "flair",
                     "--init-from", shipped[0])) == 2
    err = capsys.readouterr().err
    assert "this run uses flair" in err and "widths 8 24 48 96 there, 2 3 4 4 here" in err, err
    assert "and the same network options (e.g. its --recipe)" in err, err
