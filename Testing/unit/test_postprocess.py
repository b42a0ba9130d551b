"""binarize(): threshold, small-component removal, largest-component selection, hole filling."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CGCLesionSegLib.postprocess import binarize, fill_holes, min_voxels_from_volume, remove_small_components


def blobs():
    """(z, y, x) map with a 27-voxel cube, a 1-voxel speck and a hollow 5×5×5 box."""
    p = np.zeros((12, 20, 20), np.float32)
    p[1:4, 1:4, 1:4] = 0.9           # 27 voxels
    p[8, 2, 2] = 0.7                 # 1 voxel
    p[5:10, 10:15, 10:15] = 0.8      # hollow box: 125 - 27 = 98 voxels
    p[6:9, 11:14, 11:14] = 0.1
    return p


def test_threshold_only():
    p = blobs()
    b = binarize(p, 0.5)
    assert b.dtype == np.uint8 and b.shape == p.shape
    np.testing.assert_array_equal(b, (p >= 0.5).astype(np.uint8))
    assert binarize(p, 0.85).sum() == 27


def test_min_component_size_against_reference():
    p = blobs()
    b = binarize(p, 0.5, min_component_voxels=2)
    assert b[8, 2, 2] == 0 and b.sum() == 27 + 98
    b = binarize(p, 0.5, min_component_voxels=50)
    assert b.sum() == 98
    # reference: scipy label + size filter, 26-connectivity
    lab, n = ndimage.label(p >= 0.5, np.ones((3, 3, 3)))
    sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
    ref = np.isin(lab, [i + 1 for i, s in enumerate(sizes) if s >= 50])
    np.testing.assert_array_equal(b.astype(bool), ref)


def test_diagonal_neighbours_are_one_component():
    b = np.zeros((3, 3, 3), bool)
    b[0, 0, 0] = b[1, 1, 1] = b[2, 2, 2] = True
    assert remove_small_components(b, 3).sum() == 3


def test_keep_largest_and_fill_holes():
    p = blobs()
    assert binarize(p, 0.5, keep_largest=1).sum() == 98
    assert binarize(p, 0.5, keep_largest=2).sum() == 98 + 27
    filled = binarize(p, 0.5, fill_holes=True)
    assert filled[7, 12, 12] == 1 and filled.sum() == 27 + 1 + 125
    filled2d = binarize(p, 0.5, fill_holes="2d")
    # the cavity is closed on the top/bottom slices only in 3-D; per slice every middle slice is a ring
    assert filled2d[7, 12, 12] == 1 and filled2d.sum() == 27 + 1 + 125


def test_fill_2d_fills_cup_open_in_3d():
    b = np.zeros((6, 9, 9), bool)
    b[1:5, 2:7, 2:7] = True
    b[2:5, 3:6, 3:6] = False          # a cup open at the top: no 3-D hole
    assert fill_holes(b, "3d").sum() == b.sum()
    assert fill_holes(b, "2d").sum() == 4 * 25


def test_min_volume_in_mm3_and_mask():
    p = blobs()
    assert min_voxels_from_volume(10.0, (2.0, 2.0, 1.0)) == 3
    b = binarize(p, 0.5, min_component_mm3=100.0, spacing_xyz=(1.0, 1.0, 2.0))  # 50 voxels
    assert b.sum() == 98
    mask = np.zeros(p.shape, bool)
    mask[:6] = True
    assert binarize(p, 0.5, mask_zyx=mask)[6:].sum() == 0


@pytest.mark.parametrize("kwargs, word", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"),
    (dict(min_component_voxels=-1), ">= 0"), (dict(fill_holes="4d"), "fill_holes"),
    (dict(min_component_mm3=10.0), "spacing"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        binarize(blobs(), **kwargs)
    with pytest.raises(ValueError, match="3-D"):
        binarize(np.zeros((4, 4)))


def test_opening_cuts_thin_bridges_before_keeping_the_largest():
    from CGCLesionSegLib.postprocess import open_and_keep
    b = np.zeros((16, 30, 40), bool)
    b[3:13, 5:15, 3:13] = True        # big blob, 1000 voxels
    b[5:11, 8:14, 25:31] = True       # smaller blob, 216 voxels
    b[8, 10, 13:25] = True            # one-voxel-thin bridge between them
    p = b.astype(np.float32)
    assert binarize(p, keep_largest=1).sum() == b.sum()           # one object through the bridge
    kept = binarize(p, keep_largest=1, opening_radius=2).astype(bool)
    big = np.zeros_like(b)
    big[3:13, 5:15, 3:13] = True
    assert kept[big].all()                                         # big blob back in full, not eroded
    assert not kept[5:11, 8:14, 25:31].any()                       # small blob dropped
    assert kept.sum() <= big.sum() + 2 * 2 + 1                     # at most a short bridge stub
    # thinner than the opening everywhere: falls back to the plain largest component
    line = np.zeros((5, 5, 20), bool)
    line[2, 2, 2:18] = True
    np.testing.assert_array_equal(open_and_keep(line, 2), line)
    with pytest.raises(ValueError, match="keep_largest"):
        binarize(p, opening_radius=2)
