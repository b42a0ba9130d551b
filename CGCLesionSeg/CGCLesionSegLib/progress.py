"""Progress reporting shared by long commands: a tqdm bar on a terminal or JSON lines on stdout.

JSON mode prints one object per line, e.g. ``{"event": "progress", "fraction": 0.42, "message":
"window 12/30"}``; the Slicer module parses these from a child process.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Optional

ProgressCallback = Callable[[float, str], None]
StopCallback = Callable[[], bool]


def emit_json(event: str, **fields: Any) -> None:
    """Print one JSON event line on stdout and flush (the parent reads line by line)."""
    record = {"event": event}
    record.update(fields)
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class ProgressReporter:
    """Callable ``(fraction, message)`` that drives a tqdm bar or emits JSON lines.

    ``mode``: ``"bar"`` (tqdm on stderr), ``"json"`` (stdout lines) or ``"none"``.
    Extra keyword fields passed to :meth:`update` go into the JSON record unchanged.
    """

    def __init__(self, mode: str = "bar", description: str = "", total: int = 1000) -> None:
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"progress mode must be bar, json or none, got {mode!r}")
        self.mode = mode
        self._bar = None
        self._total = total
        if mode == "bar":
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=description, file=sys.stderr, leave=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str = "") -> None:
        self.update(fraction, message)

    def update(self, fraction: float, message: str = "", **fields: Any) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if self.mode == "json":
            emit_json("progress", fraction=round(fraction, 4), message=message, **fields)
        elif self._bar is not None:
            target = int(round(fraction * self._total))
            if target > self._bar.n:
                self._bar.update(target - self._bar.n)
            if message:
                self._bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def call_progress(progress: Optional[ProgressCallback], fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


class Cancelled(RuntimeError):
    """Raised when ``should_stop()`` returned True; nothing partial has been written."""


def check_stop(should_stop: Optional[StopCallback]) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled by the user")
