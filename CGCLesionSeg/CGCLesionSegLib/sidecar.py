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


def _name(path: str | os.PathLike, full_paths: bool) -> str:
    return str(Path(path).absolute()) if full_paths else Path(path).name


def sidecar_record(output: str | os.PathLike, *, inputs: dict[str, str] | None = None,
                   model_path: str | os.PathLike | None = None, gmm_settings: Any = None,
                   device: str | None = None, elapsed_s: float | None = None, full_paths: bool = False,
                   model_recorded_as: str | os.PathLike | None = None, **extra: Any) -> dict:
    """The sidecar's content as plain JSON types. Privacy: patient identifiers often live in file
    names and folders, so by default only base names are recorded (no folders, no host name);
    ``full_paths=True`` records absolute paths and the host. ``model_recorded_as``: the name the model
    will have once it is written with the output (``model_path`` is hashed: the same bytes)."""
    record: dict[str, Any] = {
        "output": _name(output, full_paths),
        "package": "cgc-lesion-seg",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {k: (_name(v, full_paths) if v else v) for k, v in (inputs or {}).items()},
        "model": None,
        "gmm_settings": gmm_settings,
        "device": device,
        "elapsed_s": None if elapsed_s is None else round(float(elapsed_s), 3),
        "paths": "full" if full_paths else "base names",
    }
    if full_paths:
        record["host"] = platform.node()
    if model_path is not None:
        record["model"] = {"path": _name(model_recorded_as or model_path, full_paths), "sha256": file_sha256(model_path)}
    record.update(extra)
    return _jsonable(record)


def sidecar_text(output: str | os.PathLike, **kwargs: Any) -> str:
    """The sidecar file's text for :func:`sidecar_record` (to write it with other files at once)."""
    return json.dumps(sidecar_record(output, **kwargs), indent=2) + "\n"


def write_sidecar(output: str | os.PathLike, *, inputs: dict[str, str] | None = None,
                  model_path: str | os.PathLike | None = None, gmm_settings: Any = None,
                  device: str | None = None, elapsed_s: float | None = None, full_paths: bool = False,
                  **extra: Any) -> Path:
    """Write ``<output>.json`` atomically with package version, model hash, GMM settings, inputs,
    device and elapsed time; ``extra`` keys are added as they are. Base names only unless
    ``full_paths`` (see :func:`sidecar_record`)."""
    text = sidecar_text(output, inputs=inputs, model_path=model_path, gmm_settings=gmm_settings, device=device,
                        elapsed_s=elapsed_s, full_paths=full_paths, **extra)
    path = sidecar_path(output)
    with atomic_write(path) as fh:
        fh.write(text)
    return path
