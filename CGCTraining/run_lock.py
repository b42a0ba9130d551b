"""One training per run folder: ``RUN_DIR/run.lock``, held with an OS file lock for the whole run.

The lock is a POSIX record lock (``fcntl.lockf``) on the file, so the kernel releases it when its
process ends in any way (kill -9 included; forked DataLoader workers do not inherit it): a later run — ``--resume`` after a crash — simply takes it over. The file's text
names the owner (pid, host, start time) so a refused second run can say who holds the folder. Under
DDP only rank 0 takes the lock; the training tells the other ranks whether it got it.
"""
from __future__ import annotations

import errno
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

LOCK_NAME = "run.lock"
#: Locks this process holds, by folder: taking one again (the command line, then train()) nests.
_HELD: dict[str, "RunLock"] = {}


class RunLockError(ValueError):
    """The run folder is in use by another training; the message names it and says what to do."""


class RunLock:
    """A held lock; :meth:`release` (or the end of the process) frees it."""

    def __init__(self, path: Path, fd: int, previous: Optional[dict]) -> None:
        self.path = path
        self._fd: Optional[int] = fd
        self.previous = previous  # the owner recorded by a run that ended without releasing (or None)
        self.depth = 1

    def release(self) -> None:
        if self._fd is None:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(str(self.path.resolve()), None)
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None


def _owner_text(owner: Optional[dict]) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')})"


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Take ``run_dir/run.lock`` or raise :class:`RunLockError` at once (no waiting)."""
    import fcntl
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    held = _HELD.get(str(path.resolve()))
    if held is not None and held._fd is not None:
        held.depth += 1
        return held
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        try:
            previous = json.loads(text) if text.strip() else None
        except ValueError:
            previous = None
        try:
            # A POSIX record lock: held by this process only (DataLoader workers forked from it do not
            # inherit it) and released by the kernel when the process ends, however it ends.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise RunLockError(
                f"{run_dir} is in use by another training ({_owner_text(previous)}); two runs in one folder would "
                f"overwrite each other's model. Wait for it to end, or choose another --output-dir") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    lock = RunLock(path, fd, previous)
    _HELD[str(path.resolve())] = lock
    return lock
