"""Sliding-window inference with Gaussian blending over a ``(C, Z, Y, X)`` volume.

Windows are cut on a regular grid (last window flush with the far edge), run in batches through a
``predict_fn`` mapping ``(B, C, z, y, x)`` → ``(B, 1, z, y, x)`` logits, turned into probabilities and
blended with a separable Gaussian weight (centre voxels of a window are more reliable than its
border, where the receptive field sees zero padding). Along an axis shorter than the window, the
window shrinks to the volume (the network pads internally to its stride), or, with ``pad_to_window``,
the volume is zero-padded at its far end to the window and the result cropped back: that is what
training does with a case smaller than its crop (``CGCTraining.data.CropDataset``), so the network's
instance norm then sees the share of background it was trained with.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .progress import ProgressCallback, StopCallback, call_progress, check_stop


#: More windows than this is a setting mistake (e.g. --window 16 16 16 --overlap 0.99), not a plan.
MAX_WINDOWS = 10_000


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets along one axis; consecutive windows overlap by ``overlap`` of ``window``."""
    if window <= 0 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"need window > 0 and 0 <= overlap < 1, got window={window}, overlap={overlap}")
    if size <= window:
        return [0]
    step = max(1, int(math.floor(window * (1.0 - overlap))))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def gaussian_weight(window_zyx: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian ``(Z, Y, X)`` weight, peak 1, floor 1e-3 so edge voxels still count."""
    axes = []
    for n in window_zyx:
        c = (n - 1) / 2.0
        sigma = max(sigma_scale * n, 1e-6)
        x = torch.arange(n, dtype=torch.float32)
        axes.append(torch.exp(-0.5 * ((x - c) / sigma) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).clamp_min(1e-3)


def sliding_window_probability(predict_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                               window_zyx: Sequence[int], overlap: float = 0.25, batch_size: int = 1,
                               sigma_scale: float = 0.125, progress: Optional[ProgressCallback] = None,
                               should_stop: Optional[StopCallback] = None,
                               pad_to_window: bool = False) -> torch.Tensor:
    """Blend sigmoid(predict_fn(window)) over ``image`` ``(C, Z, Y, X)``; returns ``(Z, Y, X)`` float32
    probabilities on ``image.device``. Where the image is smaller than the window, the window is shrunk
    to it, or (``pad_to_window``) the image is zero-padded at the far end and the result cropped back."""
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {tuple(image.shape)}")
    shape = tuple(int(s) for s in image.shape[1:])
    if pad_to_window and any(int(w) > s for w, s in zip(window_zyx, shape)):
        short = [max(int(w) - s, 0) for w, s in zip(window_zyx, shape)]
        # F.pad lists the last axis first: (x_before, x_after, y_before, y_after, z_before, z_after).
        padded = torch.nn.functional.pad(image, (0, short[2], 0, short[1], 0, short[0]))
        prob = sliding_window_probability(predict_fn, padded, window_zyx, overlap, batch_size, sigma_scale,
                                          progress, should_stop, pad_to_window=False)
        return prob[:shape[0], :shape[1], :shape[2]].contiguous()
    window = tuple(min(int(w), s) for w, s in zip(window_zyx, shape))
    weight = gaussian_weight(window, sigma_scale).to(image.device)
    acc = torch.zeros(shape, dtype=torch.float32, device=image.device)
    norm = torch.zeros(shape, dtype=torch.float32, device=image.device)
    per_axis = [window_starts(s, w, overlap) for s, w in zip(shape, window)]
    total = int(np.prod([len(a) for a in per_axis], dtype=np.float64))
    if total > MAX_WINDOWS:
        raise ValueError(f"--window {' '.join(str(w) for w in reversed(window))} with --overlap {overlap:g} needs "
                         f"{total:,} windows ({' × '.join(str(len(a)) for a in reversed(per_axis))}, x × y × z) over "
                         f"this {' × '.join(str(s) for s in reversed(shape))} volume; the limit is {MAX_WINDOWS:,}. "
                         "Use a larger --window or a smaller --overlap (e.g. leave both at their defaults)")
    starts = list(itertools.product(*per_axis))
    for b0 in range(0, total, batch_size):
        check_stop(should_stop)
        chunk = starts[b0:b0 + batch_size]
        batch = torch.stack([image[:, z:z + window[0], y:y + window[1], x:x + window[2]] for z, y, x in chunk])
        prob = torch.sigmoid(predict_fn(batch).float())[:, 0]
        for (z, y, x), p in zip(chunk, prob):
            sl = (slice(z, z + window[0]), slice(y, y + window[1]), slice(x, x + window[2]))
            acc[sl] += p * weight
            norm[sl] += weight
        call_progress(progress, min(b0 + batch_size, total) / total, f"window {min(b0 + batch_size, total)}/{total}")
    return acc / norm


def brain_bounding_box(mask_zyx: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice]:
    """Bounding box of non-zero voxels grown by ``margin`` voxels, clipped to the array."""
    idx = np.nonzero(mask_zyx)
    if len(idx[0]) == 0:
        raise ValueError("the brain mask is empty; nothing to segment")
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask_zyx.shape))
