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


def remove_small_components(binary_zyx: np.ndarray, min_voxels: int = 0, keep_largest: int = 0,
                            votes_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Drop connected components smaller than ``min_voxels``; with ``keep_largest`` > 0 also keep only
    that many components: the largest, or with ``votes_zyx`` (bool, same shape) those holding the most of
    its voxels, size breaking ties (so a ``votes_zyx`` that marks no component ranks by size alone).
    Returns bool (z, y, x)."""
    from scipy import ndimage
    binary = np.asarray(binary_zyx, dtype=bool)
    if (min_voxels <= 1 and keep_largest <= 0) or not binary.any():
        return binary.copy()
    lab, n = ndimage.label(binary, _structure())
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= max(int(min_voxels), 1)
    if keep_largest > 0:
        if votes_zyx is None:
            order = np.argsort(sizes)[::-1]
        else:
            votes = np.bincount(lab[np.asarray(votes_zyx, dtype=bool)], minlength=sizes.size)
            votes[0] = 0
            order = np.lexsort((sizes, votes))[::-1]  # most votes first, then the largest
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        keep &= rank < keep_largest
    keep[0] = False
    return keep[lab]


#: A removed candidate of at least this volume (mL) counts as lesion-sized: about a 12 mm sphere, a metastasis or
#: a large MS plaque. Smaller removed pieces (threshold noise, thousands per case) are only summed.
REMOVED_WARN_ML = 1.0
#: ... and the warning needs it to be at least this fraction of the kept volume as well. On the 11 tumour cases
#: of ../shared (labels not read), the FLAIR model shipped until 2026-12-05 (its default output at 0.3) removed a candidate >= 1 mL on 7 cases, of
#: 0.01-0.08 x the kept lesion on 5 of them (fringe pieces beside a large tumour) and 0.5-1.9 x on 2: a warning
#: on 7 of 11 glioma cases would teach users to ignore it. Every removal is still in the sidecar and the summary.
REMOVED_WARN_FRACTION = 0.10


def removed_components(before_zyx: np.ndarray, after_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> dict:
    """What a keep-largest rule removed: the connected components (26-connectivity) of ``before_zyx`` (the
    mask with every component) that share no voxel with ``after_zyx`` (the output). Components cut off by
    the opening but still touching the output count as kept. Label-free, for the warning and the sidecar.

    Returns ``{"count", "count_1ml", "largest_ml", "total_ml", "kept", "kept_ml"}``: the number of removed
    components and of those >= :data:`REMOVED_WARN_ML`, the largest and summed removed volume, the number of
    components kept and the output's volume (mL from ``spacing_xyz``, mm)."""
    from scipy import ndimage
    before = np.asarray(before_zyx, dtype=bool)
    after = np.asarray(after_zyx, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"masks of different shapes: {before.shape} and {after.shape}")
    voxel_ml = float(np.prod([float(s) for s in spacing_xyz])) / 1000.0
    lab, n = ndimage.label(before, _structure())
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    touched = np.zeros(n + 1, dtype=bool)
    touched[np.unique(lab[after])] = True
    touched[0] = True
    gone = sizes[~touched]
    return {"count": int(gone.size), "count_1ml": int((gone * voxel_ml >= REMOVED_WARN_ML).sum()), "largest_ml": round(float(gone.max()) * voxel_ml, 3) if gone.size else 0.0,
            "total_ml": round(float(gone.sum()) * voxel_ml, 3), "kept": int(touched[1:].sum()),
            "kept_ml": round(float(after.sum()) * voxel_ml, 3)}


def removed_by_keep_largest(prob_zyx: np.ndarray, after_zyx: np.ndarray, spacing_xyz: Sequence[float], *,
                            threshold: float, min_component_voxels: int = 0, fill_holes: FillHoles = False,
                            mask_zyx: Optional[np.ndarray] = None) -> dict:
    """:func:`removed_components` of a keep-largest output ``after_zyx``: the same :func:`binarize` clean-up of
    ``prob_zyx`` (threshold, hole filling, minimum size, brain mask) without keep-largest is the mask before it.
    One definition for ``cgcseg segment`` and ``cgcseg gmm``."""
    every = binarize(prob_zyx, threshold, min_component_voxels, fill_holes, spacing_xyz=spacing_xyz, mask_zyx=mask_zyx)
    return removed_components(every, after_zyx, spacing_xyz)


def removed_summary(removed: Optional[dict]) -> str:
    """One clause for the final message: what keep-largest removed of lesion size ('' when nothing)."""
    if not removed or not removed.get("count_1ml"):
        return ""
    n = removed["count_1ml"]
    return (f"; keep-largest removed {n} candidate{'s' if n != 1 else ''} of >= {REMOVED_WARN_ML:g} mL "
            f"(largest {removed['largest_ml']:.1f} mL)")


def removed_warning(removed: Optional[dict],
                    how_to_keep: str = "--keep-largest 0 (in Slicer: Output rule 'none')") -> Optional[str]:
    """The warning text when ``removed`` (:func:`removed_components`) holds a candidate of at least
    :data:`REMOVED_WARN_ML` and :data:`REMOVED_WARN_FRACTION` of the kept volume; None otherwise."""
    if not removed:
        return None
    largest = removed.get("largest_ml", 0.0)
    if largest < REMOVED_WARN_ML or largest < REMOVED_WARN_FRACTION * removed.get("kept_ml", 0.0):
        return None
    n, k = removed.get("count_1ml", 1), removed.get("kept", 1)
    return (f"the output keeps {k} lesion{'s' if k != 1 else ''} ({removed['kept_ml']:.1f} mL) and removed {n} "
            f"candidate{'s' if n != 1 else ''} of >= {REMOVED_WARN_ML:g} mL, the largest {largest:.1f} mL "
            f"({removed['total_ml']:.1f} mL removed in all): right for one glioma, wrong for several lesions "
            f"(metastases, MS); use {how_to_keep} to keep them, or look at the probability map")


def step_axes(radius_mm: float, spacing_xyz: Optional[Sequence[float]] = None) -> list[tuple[bool, bool, bool]]:
    """The 6-neighbour steps of a morphological walk of ``radius_mm`` on a grid: one step per finest
    voxel (``round(radius_mm / finest spacing)`` steps), each naming the ``(z, y, x)`` axes it moves
    along. An axis moves on the steps where the distance walked so far first covers one more of its
    voxels, so a 5 mm slice axis takes no step within 3 mm. Isotropic grids (and ``spacing_xyz`` None:
    voxels) move along every axis on every step, i.e. ``radius`` 6-connected iterations."""
    s = [1.0, 1.0, 1.0] if spacing_xyz is None else [float(v) for v in reversed(spacing_xyz)]
    if len(s) != 3 or min(s) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing_xyz}")
    finest = min(s)
    n = int(np.floor(float(radius_mm) / finest + 0.5))
    reached = lambda k, a: int(np.floor(k * finest / a + 1e-9))  # whole voxels of an axis within k steps
    return [tuple(reached(k, a) > reached(k - 1, a) for a in s) for k in range(1, n + 1)]


def _cross(axes: tuple[bool, bool, bool]) -> np.ndarray:
    st = np.zeros((3, 3, 3), dtype=bool)
    st[1, 1, 1] = True
    for i, on in enumerate(axes):
        if on:
            idx = [1, 1, 1]
            for v in (0, 2):
                idx[i] = v
                st[tuple(idx)] = True
    return st


def open_binary(binary_zyx: np.ndarray, radius: float, spacing_xyz: Optional[Sequence[float]] = None) -> np.ndarray:
    """``binary_zyx`` opened: eroded then dilated by ``radius`` mm in 6-connected steps (:func:`step_axes`). bool."""
    from scipy import ndimage
    steps = step_axes(radius, spacing_xyz)
    opened = np.asarray(binary_zyx, dtype=bool)
    for axes in steps:
        opened = ndimage.binary_erosion(opened, _cross(axes))
    for axes in reversed(steps):
        opened = ndimage.binary_dilation(opened, _cross(axes))
    return opened


def grow_back(seeds_zyx: np.ndarray, mask_zyx: np.ndarray, radius: float,
              spacing_xyz: Optional[Sequence[float]] = None) -> np.ndarray:
    """Opened objects ``seeds_zyx`` grown back inside the unopened ``mask_zyx`` by ``2 * radius`` mm of geodesic
    6-connected steps: the corners an opening of ``radius`` cut off come back, a bridge at most as a stub. bool."""
    from scipy import ndimage
    grown = np.asarray(seeds_zyx, dtype=bool)
    for axes in step_axes(2 * radius, spacing_xyz):
        grown = ndimage.binary_dilation(grown, _cross(axes), mask=mask_zyx)
    return grown


def open_and_keep(binary_zyx: np.ndarray, radius: float, keep_largest: int = 1,
                  spacing_xyz: Optional[Sequence[float]] = None, votes_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Keep the ``keep_largest`` largest objects after cutting thin bridges, without eroding them.

    The mask is opened (eroded then dilated by ``radius`` mm in 6-connected steps, :func:`step_axes`;
    ``spacing_xyz`` None counts voxels) so that thin structures (a cortical ribbon, vessels) no longer
    connect the lesion to other bright tissue; the largest opened components are chosen and grown back
    inside the original mask by ``2 * radius`` mm of geodesic steps (enough to restore the corners an
    opening cuts off; a bridge keeps at most a stub of that length). On a 1 mm grid ``radius`` 3 is the
    3 voxels it always was; on 5 mm slices the opening no longer erodes 15 mm across slices, which cut
    lesions thinner than seven slices apart. With ``votes_zyx`` (bool, same shape) the opened components
    are ranked by how many of its voxels they hold, then by size (:func:`remove_small_components`).
    Returns bool (z, y, x)."""
    from scipy import ndimage
    binary = np.asarray(binary_zyx, dtype=bool)
    steps = step_axes(radius, spacing_xyz) if radius > 0 else []
    if not steps or not binary.any():
        return remove_small_components(binary, 0, keep_largest, votes_zyx)
    # Work in the bounding box (plus margin) of the foreground: morphology on the whole volume is slow.
    idx = np.argwhere(binary)
    pad = len(steps) + 1
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, binary.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    sub = binary[box]
    votes = None if votes_zyx is None else np.asarray(votes_zyx, dtype=bool)[box]
    opened = open_binary(sub, radius, spacing_xyz)
    if not opened.any():  # everything is thinner than the opening: fall back to no opening
        return remove_small_components(binary, 0, keep_largest, votes_zyx)
    grown = grow_back(remove_small_components(opened, 0, keep_largest, votes), sub, radius, spacing_xyz)
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
             mask_zyx: Optional[np.ndarray] = None, opening_radius: float = 0,
             votes_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Threshold a probability map and optionally clean it: uint8 (z, y, x), 1 = lesion.

    ``prob_zyx >= threshold`` is lesion. Then, in this order: holes are filled (``fill_holes``:
    False, True/"3d" or "2d"), components smaller than ``min_component_voxels`` (or
    ``min_component_mm3`` with ``spacing_xyz``) are removed, and with ``keep_largest`` > 0 only that
    many of the largest components are kept; with ``opening_radius`` > 0 as well, components are
    ranked after an opening of that radius (mm with ``spacing_xyz``, else voxels; see
    :func:`open_and_keep`) so thin bridges to other bright tissue do not make them one object. With
    ``votes_zyx`` (bool, same shape) ``keep_largest`` keeps the components holding the most of its voxels
    instead of the largest (size breaks ties). ``mask_zyx`` (optional) limits the result to the brain.
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
    if votes_zyx is not None and np.shape(votes_zyx) != prob.shape:
        raise ValueError(f"votes_zyx has shape {np.shape(votes_zyx)}, the map {prob.shape}")
    if keep_largest > 0:
        out = open_and_keep(out, opening_radius, keep_largest, spacing_xyz, votes_zyx) if opening_radius else \
            remove_small_components(out, 0, keep_largest, votes_zyx)
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
