"""Frozen, validated configuration dataclasses, one per concern.

Sizes given by users are ``x × y × z`` (as the paper writes them); arrays and tensors are
``(z, y, x)``. :func:`xyz_to_zyx` / :func:`zyx_to_xyz` are the only conversions, used at this
boundary. Each dataclass validates in ``__post_init__`` and raises ``ValueError`` naming the bad value.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence


def xyz_to_zyx(size_xyz: Sequence[int]) -> tuple[int, int, int]:
    """(x, y, z) as written in the CLI/paper → (z, y, x) as used by arrays."""
    if len(size_xyz) != 3:
        raise ValueError(f"expected 3 sizes x y z, got {list(size_xyz)}")
    x, y, z = (int(v) for v in size_xyz)
    return (z, y, x)


def zyx_to_xyz(size_zyx: Sequence[int]) -> tuple[int, int, int]:
    """(z, y, x) → (x, y, z)."""
    if len(size_zyx) != 3:
        raise ValueError(f"expected 3 sizes z y x, got {list(size_zyx)}")
    z, y, x = (int(v) for v in size_zyx)
    return (x, y, z)


def config_to_dict(cfg: Any) -> dict:
    """Plain-dict form (tuples become lists) for JSON sidecars and checkpoints."""
    return asdict(cfg)


def config_from_dict(cls: type, data: dict) -> Any:
    """Rebuild ``cls`` from :func:`config_to_dict` output; unknown keys are an error that names them."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; this file may come from a newer version")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            v = data[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def _positive_triplet(name: str, value: Sequence[int]) -> None:
    if len(value) != 3 or any(int(v) <= 0 for v in value):
        raise ValueError(f"{name} must be three positive integers, got {value}")
