"""Overlap metrics for binary masks (``(z, y, x)`` arrays): Dice and sensitivity as in the paper (eq. 9–10)."""
from __future__ import annotations

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


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """TP / (TP + FN); 1.0 when the reference is empty."""
    tp, _, fn = confusion(pred, ref)
    return 1.0 if tp + fn == 0 else tp / (tp + fn)
