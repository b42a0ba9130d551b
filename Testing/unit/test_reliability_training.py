"""Issue 12, items 6, 7, 10 and 12 for training: one run per folder (a lock with pid and host, taken over
when its owner is dead), a stop by signal exits 143/130 without claiming completion, checkpoints with
wrong keys/shapes or NaN weights are one clear error, the run folder may not be the cases folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from CGCLesionSegLib.checkpoint import read_checkpoint, save_checkpoint_dict
from CGCTraining.run_lock import LOCK_NAME, RunLockError, acquire_run_lock
from test_training_synth import MODS, REPO, TINY_NET_ARGS, run_cli, subprocess_env, write_csv_with_prob


def _args(cases, run, *extra, steps=4):
    return ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16", "16",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--checkpoint-every", "1",
            "--steps", str(steps), *TINY_NET_ARGS, *extra]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_csv_with_prob(tmp_path_factory.mktemp("list"), n_cases=2)


def test_second_training_in_the_same_folder_is_refused_at_once(tmp_path, cases):
    run = tmp_path / "run"
    lock = acquire_run_lock(run)  # this process plays the first training
    try:
        t = time.perf_counter()
        r = run_cli(_args(cases, run))
        assert r.returncode == 2 and "in use by another training" in r.stderr, r.stderr
        assert f"pid {os.getpid()}" in r.stderr and r.stderr.count("error:") == 1
        assert not (run / "last.pt").exists() and time.perf_counter() - t < 60
    finally:
        lock.release()
    assert run_cli(_args(cases, run)).returncode == 0


def test_lock_of_a_dead_owner_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = ("import sys, time; sys.path[:0] = sys.argv[2:]; from CGCTraining.run_lock import acquire_run_lock; "
            "acquire_run_lock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run), str(REPO), str(REPO / "CGCLesionSeg")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockError, match=f"pid {proc.pid} on host"):
            acquire_run_lock(run)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    lock = acquire_run_lock(run)
    assert lock.previous["pid"] == proc.pid
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_training_stopped_by_a_signal_exits_non_zero_and_resumes(tmp_path, cases, signum, code):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "CGCTraining",
                             *map(str, _args(cases, run, "--progress", "json", steps=400))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(1),
                            cwd=str(REPO))
    events = []
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1].get("event") == "progress" and events[-1]["step"] >= 2:
                os.kill(proc.pid, signum)
                break
        rest = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    events += [json.loads(l) for l in rest.splitlines() if l.strip()]
    assert proc.returncode == code, err
    assert not any(e.get("event") == "done" for e in events) and events[-1]["event"] == "stopped"
    assert "trained to step" not in err and f"stopped by {signal.Signals(signum).name}" in err
    step = read_checkpoint(run / "last.pt")["step"]
    assert 2 <= step < 400
    r = run_cli(_args(cases, run, "--resume", steps=step + 2))
    assert r.returncode == 0, r.stderr


def test_output_dir_may_not_be_the_cases_folder(tmp_path):
    from test_training_synth import write_brats_folder
    root = write_brats_folder(tmp_path / "cases", n_cases=1)
    for run in (root,):
        r = run_cli(["--cases", root, "--modalities", *MODS, "--output-dir", run, "--steps", "1", "--device", "cpu"])
        assert r.returncode == 2 and "--cases folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (root / "cache").exists()


def test_init_from_and_resume_with_damaged_weights_are_one_error(tmp_path, cases):
    run = tmp_path / "run"
    assert run_cli(_args(cases, run, steps=1)).returncode == 0
    ckpt = read_checkpoint(run / "last.pt")
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.ndim > 1)
    bad_shape = dict(ckpt, model={**ckpt["model"], key: torch.zeros(3, 3)})
    extra_key = dict(ckpt, model={**ckpt["model"], "bogus.weight": torch.zeros(1)})
    nan = dict(ckpt, model={**ckpt["model"], key: torch.full_like(ckpt["model"][key], float("nan"))})
    for name, bad, match in (("shape", bad_shape, "shape of"), ("key", extra_key, "unexpected bogus"),
                             ("nan", nan, "NaN or inf")):
        path = save_checkpoint_dict(tmp_path / f"{name}.pt", bad)
        r = run_cli(_args(cases, tmp_path / f"ft_{name}", "--init-from", path, steps=1))
        assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr
    save_checkpoint_dict(run / "last.pt", bad_shape)
    r = run_cli(_args(cases, run, "--resume", steps=2))
    assert r.returncode == 2 and "shape of" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_checkpoint_write_hitting_a_size_limit_is_one_error(tmp_path, cases):
    run = tmp_path / "run"
    assert run_cli(_args(cases, run, steps=1)).returncode == 0
    before = (run / "last.pt").read_bytes()
    code = ("import resource, signal, sys, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {len(before) // 2})); "
            "sys.argv = ['CGCTraining'] + sys.argv[1:]; runpy.run_module('CGCTraining', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, *map(str, _args(cases, run, "--resume", steps=3))],
                       capture_output=True, text=True, env=subprocess_env(1), cwd=str(REPO), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "free space" in r.stderr, r.stderr
    assert "previous file is kept" in r.stderr and (run / "last.pt").read_bytes() == before
    # the cache (the first thing a new run writes) hitting the limit is one error line too
    r = subprocess.run([sys.executable, "-c", code.replace(str(len(before) // 2), "3000"),
                        *map(str, _args(cases, tmp_path / "run2", steps=1))],
                       capture_output=True, text=True, env=subprocess_env(1), cwd=str(REPO), timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "free space" in r.stderr, r.stderr
