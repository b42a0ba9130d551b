"""torchrun with 2 CPU processes (gloo): disjoint data shards, identical parameters after the steps."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch.distributed as dist

from CGCLesionSegLib.checkpoint import read_checkpoint
from test_training_synth import MODS, REPO, TINY_NET_ARGS, subprocess_env, write_csv_with_prob


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_torchrun_two_processes_gloo(tmp_path):
    cases = write_csv_with_prob(tmp_path / "list", n_cases=4)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "CGCTraining",
           "--cases", str(cases), "--modalities", *MODS, "--output-dir", str(run), "--crop", "16", "16", "16",
           "--batch-size", "1", "--steps", "2", "--workers", "0", "--device", "cpu", "--progress", "json",
           "--record-samples", *TINY_NET_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(1), cwd=str(REPO))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    samples = {rank: [json.loads(l) for l in (run / f"samples_rank{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)}
    assert [s["step"] for s in samples[0]] == [s["step"] for s in samples[1]] == [1, 2]
    # 4 cases, batch 1 per rank, 2 ranks: one epoch is 2 steps and the ranks split it without overlap.
    seen0 = [c for s in samples[0] for c in s["cases"]]
    seen1 = [c for s in samples[1] for c in s["cases"]]
    assert not set(seen0) & set(seen1)
    assert sorted(seen0 + seen1) == [0, 1, 2, 3]

    p0 = json.loads((run / "params_rank0.json").read_text())
    p1 = json.loads((run / "params_rank1.json").read_text())
    assert p0 == p1 and p0["step"] == 2  # identical parameters on both ranks after the steps
    ck = read_checkpoint(run / "last.pt")
    assert ck["step"] == 2 and ck["extra"]["world_size"] == 2
    # Only rank 0 reports progress.
    steps = [json.loads(l)["step"] for l in r.stdout.splitlines() if '"progress"' in l]
    assert steps == [1, 2]


def _teardown_worker(rank: int, port: int, orderly: bool, delay_s: float, wait_s: float, queue) -> None:
    """One rank of a 2-process gloo group: rank 1 reaches the teardown ``delay_s`` late; report when each
    rank destroyed its group (CLOCK_MONOTONIC is one clock for all processes of the machine)."""
    import time

    import torch.distributed as tdist

    from CGCTraining import distributed as dd

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tdist.barrier()
    destroyed = {}
    real = tdist.destroy_process_group

    def spy(*a, **k):
        destroyed["t"] = time.monotonic()
        return real(*a, **k)

    tdist.destroy_process_group = spy
    if rank == 1:
        time.sleep(delay_s)
    t0 = time.monotonic()
    dd.cleanup(dd.DistInfo(rank, 2, rank), orderly=orderly, wait_s=wait_s)
    queue.put((rank, destroyed["t"], time.monotonic() - t0, tdist.is_initialized()))


def _teardown_times(orderly: bool, delay_s: float, wait_s: float = 30.0) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_teardown_worker, args=(r, port, orderly, delay_s, wait_s, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, t, took, still = queue.get(timeout=120)
        out[rank] = (t, took, still)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return out


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_orderly_teardown_rank0_leaves_last():
    out = _teardown_times(orderly=True, delay_s=1.0)
    assert not out[0][2] and not out[1][2]  # both left the group
    # Rank 1 came 1 s late; rank 0 destroyed its group only after rank 1 had destroyed its own.
    assert out[0][0] >= out[1][0]
    assert out[0][1] >= 0.8


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_teardown_after_failure_waits_for_nobody():
    # orderly=False (a rank failed): rank 0 leaves at once, though rank 1 is 2 s late.
    out = _teardown_times(orderly=False, delay_s=2.0)
    assert out[0][1] < 1.0 and out[0][0] < out[1][0]
