"""torchrun / DistributedDataParallel helpers: NCCL on GPUs, gloo on CPU, a no-op without torchrun."""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Rank / world size as torchrun sets them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group when launched by torchrun with more than one process.

    The timeout is long because every rank first prepares its share of the P cache (a GMM per case).
    """
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=6))


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (e.g. the wall-clock budget)."""
    if not (info.enabled and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_across(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging the global loss)."""
    if not (info.enabled and dist.is_initialized()):
        return values
    v = values.clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


TEARDOWN_KEY = "cgc_teardown_done"
_teardowns = [0]  # per process; every rank leaves a group the same number of times (self-training rounds)


def cleanup(info: DistInfo = DistInfo(), *, orderly: bool = False, wait_s: float = 30.0) -> None:
    """Leave the process group.

    ``orderly`` (after a run that ended normally on every rank, i.e. past the final barrier; gloo, i.e. CPU
    training, only): the other ranks destroy their group first and count themselves done in the store; rank 0
    waits for them (at most ``wait_s``) before destroying its own. Why: under heavy CPU load a rank occasionally aborted at exit
    ("terminate called without an active exception", torchrun exit 1 after a finished training) when both
    tore down their connections at once; one rank at a time leaves no peer mid-teardown. On a failure
    (``orderly=False``) nobody waits for anybody: each rank leaves at once and torchrun reports the error.
    """
    if not dist.is_initialized():
        return
    store = None
    # gloo only: NCCL's teardown may wait for every rank (a collective abort), which this order would stall.
    if orderly and info.enabled and dist.get_backend() == "gloo":
        try:  # a private accessor: a torch without it gets the plain teardown
            from torch.distributed.distributed_c10d import _get_default_store
            store = _get_default_store()
        except Exception:
            store = None
    if store is None:
        dist.destroy_process_group()
        return
    _teardowns[0] += 1
    key = f"{TEARDOWN_KEY}_{_teardowns[0]}"  # a fresh key per group: a store may outlive a group
    if not info.is_main:
        dist.destroy_process_group()
        try:
            store.add(key, 1)
        except Exception:
            pass  # rank 0 stops waiting after wait_s
        return
    deadline = time.monotonic() + wait_s
    try:
        while store.add(key, 0) < info.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:
        pass
    dist.destroy_process_group()
