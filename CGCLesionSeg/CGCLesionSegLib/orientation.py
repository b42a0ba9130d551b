"""One voxel order for the network: images are reoriented (axes permuted and flipped, voxels copied
exactly, nothing interpolated) to the orientation a model was trained in before the GMM and the
network, and results are mapped back to the input's own storage order afterwards. Then a case stored
x-flipped, or with its axes permuted, gives the same mask voxel for voxel once mapped back.

Orientation codes are ITK's (``sitk.DICOMOrient``): three letters naming where the i, j, k axes point
*to*, in LPS terms (``"LPS"``: the identity direction, as BraTS NIfTI files read through SimpleITK).
Oblique images get the nearest code; their axes are still only permuted and flipped.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from .image_io import Geometry, to_sitk

#: Orientation new trainings record in their checkpoint's preprocessing (``"orientation"``).
DEFAULT_ORIENTATION = "LPS"
_CODES = set("LRPAIS")


def orientation_of(geometry: Geometry) -> str:
    """The (nearest) orientation code of a grid, e.g. ``"LPS"``."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(d) for d in geometry.direction))


def check_orientation(code) -> str:
    code = str(code).upper()
    pairs = [{"L", "R"}, {"P", "A"}, {"I", "S"}]
    if len(code) != 3 or set(code) - _CODES or any(len(set(code) & p) != 1 for p in pairs):
        raise ValueError(f"orientation must be three letters, one of each of L/R, P/A, I/S (e.g. LPS), got {code!r}")
    return code


def reorient(array_zyx: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """``array_zyx`` (on ``geometry``) in the voxel order of orientation ``code``: an exact permutation and
    flip of the voxels, with the grid that describes them (the same physical points). No-op when the
    grid is already in that orientation."""
    code = check_orientation(code)
    if orientation_of(geometry) == code:
        return array_zyx, geometry
    src = np.asarray(array_zyx)
    work = src.astype(np.uint8) if src.dtype == np.bool_ else src
    out = sitk.DICOMOrient(to_sitk(work, geometry), code)
    result = sitk.GetArrayFromImage(out)
    return (result.astype(bool) if src.dtype == np.bool_ else result), Geometry.from_sitk(out)


class Reorientation:
    """To a model's orientation and back, for every array of one case (all on ``geometry``)."""

    def __init__(self, geometry: Geometry, code: Optional[str]) -> None:
        self.source = geometry
        self.code = check_orientation(code) if code else None
        self.source_code = orientation_of(geometry)
        self.active = self.code is not None and self.source_code != self.code
        if self.active:
            self.geometry = reorient(np.zeros(geometry.shape_zyx, np.uint8), geometry, self.code)[1]
        else:
            self.geometry = geometry

    def forward(self, array_zyx: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if array_zyx is None or not self.active:
            return array_zyx
        return reorient(array_zyx, self.source, self.code)[0]

    def back(self, array_zyx: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if array_zyx is None or not self.active:
            return array_zyx
        return reorient(array_zyx, self.geometry, self.source_code)[0]
