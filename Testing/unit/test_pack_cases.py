"""scripts/pack_cases.py: cases cropped to their non-zero box keep every kept voxel's value and position."""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def _slow_box(arrays, margin):
    """Reference: scan every voxel."""
    shape = arrays[0].shape
    lo, hi = [None] * 3, [None] * 3
    for idx in itertools.product(*(range(n) for n in shape)):
        if any(a[idx] != 0 for a in arrays):
            for ax in range(3):
                lo[ax] = idx[ax] if lo[ax] is None else min(lo[ax], idx[ax])
                hi[ax] = idx[ax] if hi[ax] is None else max(hi[ax], idx[ax])
    return tuple(slice(max(0, lo[a] - margin), min(shape[a], hi[a] + 1 + margin)) for a in range(3))


@pytest.mark.parametrize("seed", range(5))
def test_crop_box_matches_a_voxel_scan(seed):
    import pack_cases
    rng = np.random.default_rng(seed)
    arrays = [np.where(rng.random((7, 9, 11)) < 0.02, rng.integers(1, 5, (7, 9, 11)), 0) for _ in range(2)]
    arrays[0][rng.integers(0, 7), rng.integers(0, 9), rng.integers(0, 11)] = 3  # never all zero
    margin = int(rng.integers(0, 3))
    assert pack_cases.crop_box(arrays, margin) == _slow_box(arrays, margin)
    with pytest.raises(ValueError, match="every channel is zero"):
        pack_cases.crop_box([np.zeros((3, 3, 3))], 0)


def test_packed_case_keeps_values_positions_and_pixel_type(tmp_path):
    import pack_cases
    from CGCLesionSegLib.image_io import Geometry, read_image, write_image
    rng = np.random.default_rng(0)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotated (non-LPS) grid
    geom = Geometry((20, 24, 28), (0.9, 1.1, 2.5), (-30.0, 12.5, 7.0), direction)
    inside = (slice(5, 12), slice(6, 15), slice(7, 20))
    case = tmp_path / "data" / "brats" / "c"
    case.mkdir(parents=True)
    arrays = {}
    for name in ("flair", "t1"):
        a = np.zeros(geom.shape_zyx, np.int16)
        a[inside] = rng.integers(1, 3000, a[inside].shape)
        arrays[name] = a
    seg = np.zeros(geom.shape_zyx, np.uint8)
    seg[8:10, 9:12, 10:14] = 2
    arrays["seg"] = seg
    for name, a in arrays.items():
        write_image(case / f"c_{name}.nii.gz", a, geom)
    assert pack_cases.main(["--data", str(tmp_path / "data"), "--folders", "brats", "--output",
                            str(tmp_path / "pack"), "--margin", "1"]) == 0
    for name, a in arrays.items():
        img = read_image(tmp_path / "pack" / "brats" / "c" / f"c_{name}.nii.gz", dtype=None)
        assert img.array_zyx.shape == (9, 11, 15) and img.array_zyx.dtype == a.dtype
        assert img.array_zyx.sum() == a.sum()  # nothing non-zero was cut
        for _ in range(20):
            k, j, i = (int(rng.integers(0, n)) for n in img.array_zyx.shape)
            orig = (k + 4, j + 5, i + 6)  # box start minus the margin
            assert img.array_zyx[k, j, i] == a[orig]
            np.testing.assert_allclose(img.geometry.index_to_lps((i, j, k)), geom.index_to_lps(orig[::-1]), atol=1e-4)
    with pytest.raises(SystemExit, match="inside --data"):
        pack_cases.main(["--data", str(tmp_path / "data"), "--output", str(tmp_path / "data" / "x")])
