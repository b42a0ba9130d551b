"""Optional N4 bias-field correction (SimpleITK) estimated on a shrunk image so it takes seconds.

The smooth multiplicative bias field is estimated on the image shrunk by ``shrink`` per axis, then
evaluated on the full grid (the B-spline field is smooth, so nothing is lost) and divided out.
Arrays are ``(z, y, x)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def n4_correct(image_zyx: np.ndarray, mask_zyx: np.ndarray, spacing_xyz: Optional[Sequence[float]] = None,
               shrink: int = 4, iterations: Sequence[int] = (50, 50, 30), fitting_levels: int = 3,
               control_points: int = 4, apply_mask_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """N4-corrected copy of ``image_zyx`` (float32, (z, y, x)); the field is fitted inside ``mask_zyx``.

    ``spacing_xyz``: voxel size in mm (default 1 mm); ``shrink``: per-axis shrink factor for the
    estimate; ``iterations``: maximum iterations per fitting level (``fitting_levels`` values).
    Voxels outside the mask are returned unchanged. ``apply_mask_zyx`` (default: ``mask_zyx``): where the
    field is divided out, e.g. the whole brain when the field was fitted on the brain without its
    brightest region, so that a large lesion is not taken for part of the smooth field. Needs positive
    intensities inside the mask (MRI magnitudes); raises ``ValueError`` otherwise.
    """
    import SimpleITK as sitk
    img = np.asarray(image_zyx, dtype=np.float32)
    mask = np.asarray(mask_zyx, dtype=bool)
    if img.shape != mask.shape:
        raise ValueError(f"image shape {img.shape} and mask shape {mask.shape} differ")
    apply = mask if apply_mask_zyx is None else np.asarray(apply_mask_zyx, dtype=bool)
    if apply.shape != mask.shape:
        raise ValueError(f"image shape {img.shape} and apply-mask shape {apply.shape} differ")
    if not mask.any():
        raise ValueError("the mask for N4 bias correction is empty")
    if shrink < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink}")
    if len(iterations) != fitting_levels:
        iterations = list(iterations)[:fitting_levels] + [iterations[-1]] * max(0, fitting_levels - len(iterations))
    values = img[mask | apply]
    if float(values.min()) <= 0:
        # N4 works on log intensities; shift so the mask is strictly positive (MRI after skull
        # stripping may contain zeros inside the brain).
        offset = 1.0 - float(values.min())
    else:
        offset = 0.0
    spacing = tuple(float(s) for s in (spacing_xyz or (1.0, 1.0, 1.0)))
    full = sitk.GetImageFromArray(img + np.float32(offset) * (mask | apply))
    full.SetSpacing(spacing)
    mimg = sitk.GetImageFromArray(mask.astype(np.uint8))
    mimg.CopyInformation(full)
    small = sitk.Shrink(full, [shrink] * 3) if shrink > 1 else full
    msmall = sitk.Shrink(mimg, [shrink] * 3) if shrink > 1 else mimg
    if sitk.GetArrayViewFromImage(msmall).max() == 0:
        raise ValueError("the mask vanishes at the N4 shrink factor; use a smaller shrink")
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.SetNumberOfControlPoints([int(control_points)] * 3)
    n4.Execute(small, msmall)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(full)).astype(np.float32)
    out = img.copy()
    out[apply] = (img[apply] + np.float32(offset)) / np.exp(log_field[apply]) - np.float32(offset)
    return out
