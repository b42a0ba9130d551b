"""Resampling between voxel grids (SimpleITK), for inputs whose spacing differs from a model's.

Arrays are ``(z, y, x)``; spacings are ``(x, y, z)`` in mm, as :class:`~.image_io.Geometry` keeps them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .image_io import Geometry, to_sitk

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def _interpolator(name: str) -> int:
    try:
        return _INTERPOLATORS[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATORS)}, got {name!r}") from None


def same_spacing(a_xyz: Sequence[float], b_xyz: Sequence[float], rtol: float = 0.01) -> bool:
    """True when every axis differs by less than ``rtol`` (relative): no resampling is worth it."""
    a, b = np.asarray(a_xyz, float), np.asarray(b_xyz, float)
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(a, b)))


def grid_for_spacing(geometry: Geometry, spacing_xyz: Sequence[float]) -> Geometry:
    """Grid with ``spacing_xyz`` covering the same physical extent, same origin and direction.

    The new size is ``round(size * old / new)``; voxel (0, 0, 0) keeps its centre, so the corner
    moves by at most half a voxel. Kept simple on purpose: a round trip back onto the original grid
    (:func:`resample_to_grid`) is what restores exact geometry for outputs.
    """
    old = np.asarray(geometry.spacing, float)
    new = np.asarray(spacing_xyz, float)
    if new.shape != (3,) or np.any(new <= 0):
        raise ValueError(f"spacing must be three positive numbers (x y z, mm), got {list(spacing_xyz)}")
    size_xyz = np.maximum(1, np.round(np.asarray(geometry.shape_xyz) * old / new)).astype(int)
    return Geometry((int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])), tuple(float(s) for s in new),
                    geometry.origin, geometry.direction)


#: Largest grid inference resamples to (voxels): 4 float32 channels of it take about 3 GB.
MAX_WORK_VOXELS = 200_000_000
#: Smallest size along any axis of that grid: fewer voxels mean a spacing that cannot be right.
MIN_WORK_AXIS = 4


def check_work_grid(source: Geometry, target: Geometry, what: str = "the model's spacing") -> None:
    """Refuse (ValueError, with the numbers) a resampled grid too large to allocate or too small to hold
    a brain — both come from a wrong spacing in an image header or a checkpoint, and would otherwise
    end in "Failed to allocate memory" or an empty brain mask."""
    n = int(np.prod([int(v) for v in target.shape_zyx], dtype=np.float64))
    src = "×".join(f"{v:g}" for v in source.spacing)
    dst = "×".join(f"{v:g}" for v in target.spacing)
    size = "×".join(str(v) for v in target.shape_xyz)
    if n > MAX_WORK_VOXELS:
        raise ValueError(f"the input's spacing {src} mm resampled to {what} {dst} mm gives a grid of {size} = {n:,} "
                         f"voxels; the limit is {MAX_WORK_VOXELS:,}. Check the spacing in the image header (and the "
                         "model's)")
    if min(target.shape_zyx) < MIN_WORK_AXIS:
        raise ValueError(f"the input's spacing {src} mm resampled to {what} {dst} mm gives a grid of {size} voxels; "
                         f"at least {MIN_WORK_AXIS} are needed along every axis. Check the spacing in the image header")


def resample_to_grid(array_zyx: np.ndarray, geometry: Geometry, target: Geometry,
                     interpolation: str = "linear", default_value: float = 0.0) -> np.ndarray:
    """Resample ``array_zyx`` (on ``geometry``) onto ``target``; returns a ``(z, y, x)`` array of
    ``target.shape_zyx`` with the input dtype (float inputs stay float32)."""
    src = np.asarray(array_zyx)
    work = src.astype(np.float32) if interpolation != "nearest" else src
    if work.dtype == np.bool_:
        work = work.astype(np.uint8)
    image = to_sitk(work, geometry)
    ref = target.apply_to(sitk.Image(list(target.shape_xyz), image.GetPixelID()))
    out = sitk.Resample(image, ref, sitk.Transform(), _interpolator(interpolation), float(default_value),
                        image.GetPixelID())
    result = sitk.GetArrayFromImage(out)
    if src.dtype == np.bool_:
        return result.astype(bool)
    return result


def resample_image(array_zyx: np.ndarray, geometry: Geometry, spacing_xyz: Sequence[float],
                   interpolation: str = "linear") -> tuple[np.ndarray, Geometry]:
    """Resample onto a grid of ``spacing_xyz`` over the same extent; returns ``(array_zyx, Geometry)``."""
    target = grid_for_spacing(geometry, spacing_xyz)
    return resample_to_grid(array_zyx, geometry, target, interpolation), target
