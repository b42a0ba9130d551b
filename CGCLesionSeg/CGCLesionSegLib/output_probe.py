"""Prove that every output can be written before the work starts.

A folder's permission bits do not tell the whole story (``/proc``, read-only mounts, full quotas,
root's ``os.access`` that says yes to everything), so :func:`probe_writable` creates and deletes a
small temporary file in each output's folder — or, when the folder does not exist yet, a temporary
folder in its nearest existing ancestor. Nothing is left behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping


def probe_writable(outputs: Mapping[str, "str | os.PathLike | None"]) -> None:
    """``outputs``: {what (e.g. "--output" or "sidecar of --output"): path}; None values are skipped.
    Raises ``ValueError`` naming the first path that cannot be written and why."""
    probed: set[Path] = set()
    for what, value in outputs.items():
        if value is None:
            continue
        path = Path(value).absolute()
        if path.is_dir():
            raise ValueError(f"{what} {value} is a folder; give a file name")
        folder = path.parent
        missing = None
        while not folder.exists() and folder != folder.parent:
            missing, folder = folder, folder.parent
        if folder in probed and missing is None:
            continue
        try:
            if missing is None:
                fd, tmp = tempfile.mkstemp(prefix=".cgc-write-test-", dir=folder)
                os.close(fd)
                os.unlink(tmp)
            else:
                os.rmdir(tempfile.mkdtemp(prefix=".cgc-write-test-", dir=folder))
        except OSError as exc:
            raise ValueError(f"{what} {value} cannot be written ({exc.strerror or exc} in {folder}); "
                             "choose a folder you can write to. Nothing was computed.") from None
        probed.add(folder)
