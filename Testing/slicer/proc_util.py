"""Process helpers shared by the Slicer job tests (a module, not conftest: test files must not import conftest)."""
from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone. Where
    /proc is missing (macOS) a process that answers signal 0 counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:  # exited between the two checks (or no /proc at all)
        return not os.path.isdir("/proc/self")
    except OSError:
        return True
