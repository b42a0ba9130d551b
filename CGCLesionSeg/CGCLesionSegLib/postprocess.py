"""Binary lesion mask from a probability map, with optional AUCseg-style clean-up.

All arrays are ``(z, y, x)``. Connected components use full 3-D (26-) connectivity so that a lesion
touching itself only along a diagonal stays one object.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

FillHoles = Union[bool, str]
_FILL_MODES = (False, True, "3d", "2d")


def _structure():
    from scipy import ndimage
    return ndimage.generate_binary_structure(3, 3)


def min_voxels_from_volume(min_volume_mm3: float, spacing_xyz: Sequence[float]) -> int:
    """Number of voxels of ``min_volume_mm3`` on a grid with ``spacing_xyz`` (mm), rounded up."""
    vox = float(np.prod([float(s) for s in spacing_xyz]))
    if vox <= 0:
        raise ValueError(f"spacing must be positive, got {spacing_xyz}")
    return int(np.ceil(float(min_volume_mm3) / vox))


def remove_small_components(binary_zyx: np.ndarray, min_voxels: int = 0, keep_largest: int = 0) -> np.ndarray:
    """Drop connected components smaller than ``min_voxels``; with ``keep_largest`` > 0 also keep only
    that many of the largest components. Returns bool (z, y, x)."""
    from scipy import ndimage
    binary = np.asarray(binary_zyx, dtype=bool)
    if (min_voxels <= 1 and keep_largest <= 0) or not binary.any():
        return binary.copy()
    lab, n = ndimage.label(binary, _structure())
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= max(int(min_voxels), 1)
    if keep_largest > 0:
        order = np.argsort(sizes)[::-1]
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        keep &= rank < keep_largest
    keep[0] = False
    return keep[lab]


def open_and_keep(binary_zyx: np.ndarray, radius: int, keep_largest: int = 1) -> np.ndarray:
    """Keep the ``keep_largest`` largest objects after cutting thin bridges, without eroding them.

    The mask is opened (eroded then dilated by ``radius`` voxels, 6-connected steps) so that thin
    structures (a cortical ribbon, vessels) no longer connect the lesion to other bright tissue; the
    largest opened components are chosen and grown back inside the original mask by ``2 * radius``
    geodesic steps (enough to restore the corners an opening cuts off; a bridge keeps at most a stub of
    that length). Returns bool (z, y, x)."""
    from scipy import ndimage
    binary = np.asarray(binary_zyx, dtype=bool)
    if radius <= 0 or not binary.any():
        return remove_small_components(binary, 0, keep_largest)
    # Work in the bounding box (plus margin) of the foreground: morphology on the whole volume is slow.
    idx = np.argwhere(binary)
    lo = np.maximum(idx.min(axis=0) - radius - 1, 0)
    hi = np.minimum(idx.max(axis=0) + radius + 2, binary.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = binary[box]
    st = ndimage.generate_binary_structure(3, 1)
    opened = ndimage.binary_opening(sub, st, iterations=int(radius))
    if not opened.any():  # everything is thinner than the opening: fall back to no opening
        return remove_small_components(binary, 0, keep_largest)
    kept = remove_small_components(opened, 0, keep_largest)
    grown = ndimage.binary_dilation(kept, st, iterations=2 * int(radius), mask=sub)
    out = np.zeros_like(binary)
    out[box] = grown
    return out


def fill_holes(binary_zyx: np.ndarray, mode: FillHoles = True) -> np.ndarray:
    """Fill enclosed holes: ``True``/"3d" = cavities enclosed in 3-D, "2d" = holes of each axial
    (z) slice (catches necrotic cores open towards one side in 3-D). Returns bool (z, y, x)."""
    from scipy import ndimage
    binary = np.asarray(binary_zyx, dtype=bool)
    if mode in (True, "3d"):
        return ndimage.binary_fill_holes(binary)
    if mode == "2d":
        out = binary.copy()
        for z in np.flatnonzero(binary.any(axis=(1, 2))):
            out[z] = ndimage.binary_fill_holes(binary[z])
        return out
    raise ValueError(f"fill_holes must be one of {_FILL_MODES}, got {mode!r}")


_fill = fill_holes  # binarize's parameter of the same name shadows the function


def binarize(prob_zyx: np.ndarray, threshold: float = 0.5, min_component_voxels: int = 0,
             fill_holes: FillHoles = False, spacing_xyz: Optional[Sequence[float]] = None,
             min_component_mm3: Optional[float] = None, keep_largest: int = 0,
             mask_zyx: Optional[np.ndarray] = None, opening_radius: int = 0) -> np.ndarray:
    """Threshold a probability map and optionally clean it: uint8 (z, y, x), 1 = lesion.

    ``prob_zyx >= threshold`` is lesion. Then, in this order: holes are filled (``fill_holes``:
    False, True/"3d" or "2d"), components smaller than ``min_component_voxels`` (or
    ``min_component_mm3`` with ``spacing_xyz``) are removed, and with ``keep_largest`` > 0 only that
    many of the largest components are kept; with ``opening_radius`` > 0 as well, components are
    ranked after an opening of that radius (see :func:`open_and_keep`) so thin bridges to other
    bright tissue do not make them one object. ``mask_zyx`` (optional) limits the result to the brain.
    """
    prob = np.asarray(prob_zyx)
    if prob.ndim != 3:
        raise ValueError(f"the probability map must be a 3-D (z, y, x) array, got shape {prob.shape}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if min_component_voxels < 0 or keep_largest < 0 or opening_radius < 0:
        raise ValueError("min_component_voxels, keep_largest and opening_radius must be >= 0")
    if opening_radius and not keep_largest:
        raise ValueError("opening_radius only applies together with keep_largest")
    if fill_holes not in _FILL_MODES:
        raise ValueError(f"fill_holes must be one of {_FILL_MODES}, got {fill_holes!r}")
    min_vox = int(min_component_voxels)
    if min_component_mm3 is not None:
        if spacing_xyz is None:
            raise ValueError("min_component_mm3 needs spacing_xyz (mm) to convert to voxels")
        min_vox = max(min_vox, min_voxels_from_volume(min_component_mm3, spacing_xyz))
    out = prob >= float(threshold)
    if fill_holes:
        out = _fill(out, fill_holes)
    if min_vox > 1:
        out = remove_small_components(out, min_vox)
    if keep_largest > 0:
        out = open_and_keep(out, int(opening_radius), keep_largest) if opening_radius else \
            remove_small_components(out, 0, keep_largest)
    if mask_zyx is not None:
        out &= np.asarray(mask_zyx, dtype=bool)
    return out.astype(np.uint8)


def smooth_probability(prob_zyx: np.ndarray, sigma_mm: float, spacing_xyz: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed probability map, float32 ``(z, y, x)`` in [0, 1].

    ``sigma_mm`` is the standard deviation in millimetres on every axis (converted to voxels with
    ``spacing_xyz``, so anisotropic grids are smoothed isotropically in space); 0 returns a copy.
    Beyond the volume the map counts as 0 (``mode="constant"``): a lesion at the border is not
    mirrored into existence. This is the "smoothed P" baseline of the evaluation protocol
    (benchmarks/protocol.py) and the optional training target of ``python -m CGCTraining
    --target-sigma``: one definition, so the two cannot drift apart.
    """
    prob = np.asarray(prob_zyx, dtype=np.float32)
    if prob.ndim != 3:
        raise ValueError(f"the probability map must be a 3-D (z, y, x) array, got shape {prob.shape}")
    sigma_mm = float(sigma_mm)
    if not np.isfinite(sigma_mm) or sigma_mm < 0:
        raise ValueError(f"sigma must be a finite number of mm >= 0, got {sigma_mm}")
    spacing = [float(s) for s in spacing_xyz]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing_xyz}")
    if sigma_mm == 0:
        return prob.copy()
    from scipy.ndimage import gaussian_filter
    out = gaussian_filter(prob, sigma=[sigma_mm / s for s in reversed(spacing)], mode="constant")
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
