"""JSON sidecars: every output file gets ``<output>.json`` saying how it was made."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .image_io import atomic_write


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".json")


def _jsonable(value: Any) -> Any:
    """Plain JSON types for anything a caller records: numpy/torch scalars and arrays become numbers
    and lists, non-finite floats null (``NaN`` is not JSON), other objects (a torch.device, an enum)
    their ``str``. A sidecar is written after its image, so it must never fail on a value's type."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict
        return _jsonable(asdict(value))
    return str(value)


def write_sidecar(output: str | os.PathLike, *, inputs: dict[str, str] | None = None,
                  model_path: str | os.PathLike | None = None, gmm_settings: Any = None,
                  device: str | None = None, elapsed_s: float | None = None,
                  **extra: Any) -> Path:
    """Write ``<output>.json`` atomically with package version, model hash, GMM settings, inputs,
    device and elapsed time; ``extra`` keys are added as they are."""
    record: dict[str, Any] = {
        "output": str(output),
        "package": "cgc-lesion-seg",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "inputs": inputs or {},
        "model": None,
        "gmm_settings": gmm_settings,
        "device": device,
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3),
    }
    if model_path is not None:
        record["model"] = {"path": str(model_path), "sha256": file_sha256(model_path)}
    record.update(extra)
    path = sidecar_path(output)
    with atomic_write(path) as fh:
        json.dump(_jsonable(record), fh, indent=2)
        fh.write("\n")
    return path
