"""Metrics for binary masks (``(z, y, x)`` arrays): Dice and sensitivity as in the paper (eq. 9–10),
precision, and the surface distances HD95 and ASSD in millimetres.

Undefined values are ``None`` (never a made-up 0 or 1), with the reason available from
:func:`undefined_reason`: sensitivity needs a non-empty reference, precision a non-empty prediction,
surface distances both.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of two same-shape masks; non-zero is foreground."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    p = np.asarray(pred) != 0
    r = np.asarray(ref) != 0
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both masks are empty (nothing to find, nothing found)."""
    tp, fp, fn = confusion(pred, ref)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> Optional[float]:
    """TP / (TP + FN); None (undefined) when the reference is empty."""
    tp, _, fn = confusion(pred, ref)
    return None if tp + fn == 0 else tp / (tp + fn)


def precision(pred: np.ndarray, ref: np.ndarray) -> Optional[float]:
    """TP / (TP + FP); None (undefined) when the prediction is empty."""
    tp, fp, _ = confusion(pred, ref)
    return None if tp + fp == 0 else tp / (tp + fp)


def undefined_reason(pred: np.ndarray, ref: np.ndarray) -> Optional[str]:
    """Why sensitivity/precision/surface distances may be undefined for this pair, else None."""
    p, r = bool(np.any(pred)), bool(np.any(ref))
    if not p and not r:
        return "both the prediction and the reference are empty"
    if not r:
        return "the reference is empty"
    if not p:
        return "the prediction is empty"
    return None


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one face neighbour (6-connectivity) in the background; voxels
    on the array's border count as surface (outside the array is background)."""
    from scipy.ndimage import binary_erosion
    m = np.asarray(mask) != 0
    return m & ~binary_erosion(m, border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> Optional[np.ndarray]:
    """Pooled symmetric surface distances in mm: for every surface voxel of ``pred`` the distance to
    the nearest surface voxel of ``ref``, and vice versa, concatenated. None if either mask is empty.
    ``spacing_zyx``: voxel size along (z, y, x)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    from scipy.ndimage import distance_transform_edt
    sp, sr = surface_voxels(pred), surface_voxels(ref)
    if not sp.any() or not sr.any():
        return None
    # Every surface voxel of both masks lies in their joint bounding box, so distance transforms over
    # that box give the exact distances (each nearest surface voxel is inside it) at a fraction of the cost.
    idx = np.nonzero(sp | sr)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    sp, sr = sp[box], sr[box]
    sampling = [float(s) for s in spacing_zyx]
    to_ref = distance_transform_edt(~sr, sampling=sampling)  # mm to the nearest reference surface voxel
    to_pred = distance_transform_edt(~sp, sampling=sampling)
    return np.concatenate([to_ref[sp], to_pred[sr]]).astype(np.float64)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> Optional[float]:
    """95th percentile of the pooled symmetric surface distances (mm); None if a mask is empty."""
    d = surface_distances(pred, ref, spacing_zyx)
    return None if d is None else float(np.percentile(d, 95))


def assd(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> Optional[float]:
    """Average symmetric surface distance (mm): mean of the pooled distances; None if a mask is empty."""
    d = surface_distances(pred, ref, spacing_zyx)
    return None if d is None else float(d.mean())


def all_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Dice, sensitivity, precision, HD95 and ASSD (mm) of one pair, plus ``undefined`` (the reason
    some are None, or None). One distance transform pair serves both surface metrics."""
    d = surface_distances(pred, ref, spacing_zyx)
    return {"dice": dice(pred, ref), "sensitivity": sensitivity(pred, ref), "precision": precision(pred, ref),
            "hd95_mm": None if d is None else float(np.percentile(d, 95)),
            "assd_mm": None if d is None else float(d.mean()), "undefined": undefined_reason(pred, ref)}
