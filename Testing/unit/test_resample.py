import numpy as np
import pytest

from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.resample import grid_for_spacing, resample_image, resample_to_grid, same_spacing

OBLIQUE = tuple(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).ravel())


def _geometry(shape_zyx=(10, 12, 14), spacing=(1.0, 1.0, 4.0)):
    return Geometry(shape_zyx, spacing, (5.0, -3.0, 2.0), OBLIQUE)


def test_grid_for_spacing_keeps_extent_and_frame():
    g = _geometry()
    t = grid_for_spacing(g, (2.0, 2.0, 2.0))
    assert t.shape_zyx == (20, 6, 7)
    assert t.origin == g.origin and t.direction == g.direction


def test_identity_resample_is_exact():
    g = _geometry()
    a = np.random.default_rng(0).random(g.shape_zyx).astype(np.float32)
    np.testing.assert_allclose(resample_to_grid(a, g, g), a, atol=1e-6)


def test_linear_resample_matches_trilinear_formula_along_z():
    # A volume linear in k (the z index) stays linear after resampling: value(k') = k' * 4/2.
    g = _geometry(spacing=(1.0, 1.0, 4.0))
    a = np.broadcast_to(np.arange(g.shape_zyx[0], dtype=np.float32)[:, None, None], g.shape_zyx).copy()
    out, t = resample_image(a, g, (1.0, 1.0, 2.0))
    expected = np.arange(t.shape_zyx[0]) * 0.5
    valid = expected <= g.shape_zyx[0] - 1
    np.testing.assert_allclose(out[valid, 3, 3], expected[valid], atol=1e-4)


def test_nearest_keeps_labels_and_bool():
    g = _geometry()
    m = np.zeros(g.shape_zyx, bool)
    m[3:6, 4:8, 5:9] = True
    out, _ = resample_image(m, g, (0.5, 0.5, 2.0), interpolation="nearest")
    assert out.dtype == bool and out.any()
    back = resample_to_grid(out, grid_for_spacing(g, (0.5, 0.5, 2.0)), g, "nearest")
    assert np.array_equal(back, m)


def test_bad_arguments():
    g = _geometry()
    with pytest.raises(ValueError, match="interpolation"):
        resample_image(np.zeros(g.shape_zyx), g, (1, 1, 1), interpolation="cubic")
    with pytest.raises(ValueError, match="spacing"):
        grid_for_spacing(g, (0, 1, 1))
    assert same_spacing((1, 1, 1), (1.005, 1, 1)) and not same_spacing((1, 1, 1), (1, 1, 3))
