"""Plug-in point for the foreground probability map P (the paper's "plug-and-play" claim, §5).

Everything downstream of P (training's P cache, the network's BCE target, the binary baseline)
only needs *a* map in [0, 1] on the input grid. A :class:`ProbabilitySource` is anything with

    name: str
    def probability(channels_zyx, mask_zyx) -> np.ndarray   # float32 (z, y, x) in [0, 1]
    def describe() -> dict                                   # JSON-able, goes into sidecars/caches

Two implementations ship: :class:`GMMSource` (the paper's GMM, :mod:`CGCLesionSegLib.gmm`) and
:class:`FileSource` (a map the user provides, e.g. from another unsupervised method, read from an
image file per case). Another method plugs in by implementing the protocol; :func:`check_probability`
validates whatever it returns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .gmm import GMMConfig, compute_probability_map, config_to_dict


@runtime_checkable
class ProbabilitySource(Protocol):
    """Maps co-registered channels (and an optional brain mask) of one case to P."""

    name: str

    def probability(self, channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray]) -> np.ndarray:
        """P as float32 (z, y, x) in [0, 1] on the grid of ``channels_zyx[0]``."""
        ...

    def describe(self) -> dict:
        """JSON-able settings, recorded next to every P made by this source."""
        ...


def check_probability(p_zyx: np.ndarray, shape_zyx: Sequence[int], source: str = "probability map",
                      mask_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Validate and return P as float32: right shape, finite, within [0, 1] (tiny round-off is
    clipped); 0 outside ``mask_zyx`` when given."""
    p = np.asarray(p_zyx)
    if tuple(p.shape) != tuple(shape_zyx):
        raise ValueError(f"{source} has shape {tuple(p.shape)} (z, y, x) but the images have {tuple(shape_zyx)}; "
                         "it must be on the grid of the first input")
    p = p.astype(np.float32, copy=False)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{source} contains NaN/inf values")
    lo, hi = float(p.min()), float(p.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{source} has values in [{lo:g}, {hi:g}]; a probability map must lie in [0, 1] "
                         "(rescale it, or give a binary mask as 0/1)")
    p = np.clip(p, 0.0, 1.0)
    if mask_zyx is not None:
        p = np.where(np.asarray(mask_zyx, dtype=bool), p, np.float32(0.0))
    return p


@dataclass
class GMMSource:
    """P from the GMM of :mod:`CGCLesionSegLib.gmm` with ``config`` (the paper's method)."""

    config: GMMConfig = field(default_factory=GMMConfig)
    name: str = "gmm"

    def probability(self, channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray]) -> np.ndarray:
        return compute_probability_map(channels_zyx, mask_zyx, self.config).probability

    def describe(self) -> dict:
        return {"source": self.name, "gmm": config_to_dict(self.config)}


@dataclass
class FileSource:
    """P read from an image file the user provides (any method's output, or a soft/binary mask).

    ``path``: one file, or a callable ``case_key -> path`` for cohorts, set per case with
    :meth:`for_case`. The file must be on the grid of the first input (checked when ``geometry``
    checking is done by the caller, e.g. the CLI via ``image_io.check_same_grid``); here its shape
    and value range are checked.
    """

    path: Optional[str] = None
    resolver: Optional[Callable[[str], str]] = None
    name: str = "file"

    def for_case(self, case_key: str) -> "FileSource":
        if self.resolver is None:
            raise ValueError("FileSource.for_case needs a resolver (case -> path)")
        return FileSource(path=str(self.resolver(case_key)), resolver=self.resolver, name=self.name)

    def probability(self, channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray]) -> np.ndarray:
        from .image_io import read_image
        if self.path is None:
            raise ValueError("FileSource has no path; give the probability map file")
        img = read_image(self.path)
        return check_probability(img.array_zyx, channels_zyx[0].shape, source=os.fspath(self.path), mask_zyx=mask_zyx)

    def describe(self) -> dict:
        return {"source": self.name, "path": None if self.path is None else str(Path(self.path))}


def make_source(spec: str | None = None, gmm_config: Optional[GMMConfig] = None) -> ProbabilitySource:
    """Source from a short spec: ``None``/``"gmm"`` → :class:`GMMSource`; ``"file:PATH"`` →
    :class:`FileSource`."""
    if spec is None or spec == "gmm":
        return GMMSource(gmm_config or GMMConfig())
    if spec.startswith("file:"):
        return FileSource(path=spec[len("file:"):])
    raise ValueError(f"unknown probability source {spec!r}; use 'gmm' or 'file:PATH'")
