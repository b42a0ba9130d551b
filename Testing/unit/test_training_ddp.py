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
