"""PNG overview: size, aspect, contour placement and colour, orientation, empty masks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from CGCLesionSegLib import overview
from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.overview import choose_slices, write_overview

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _geometry(shape_zyx, spacing_xyz=(1.0, 1.0, 1.0), direction=IDENTITY):
    return Geometry(tuple(shape_zyx), tuple(float(s) for s in spacing_xyz), (0.0, 0.0, 0.0), direction)


def _volume(shape_zyx, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.uniform(100, 200, shape_zyx).astype(np.float32)
    v[:, :2, :] = 0  # some background
    return v


def _pixels_of(png: np.ndarray, panel, color) -> np.ndarray:
    left, top, w, h = panel
    tile = png[top:top + h, left:left + w, :3]
    return np.all(tile == np.array(color, np.uint8), axis=-1)


def _voxel_of_pixel(u: np.ndarray, v: np.ndarray, panel, rows: int, cols: int):
    """Nearest-neighbour mapping of panel pixel (column u, row v) back to the slice voxel."""
    _, _, w, h = panel
    return (np.minimum((v + 0.5) * rows / h, rows - 1).astype(int),
            np.minimum((u + 0.5) * cols / w, cols - 1).astype(int))


def test_size_and_contour_where_the_mask_border_is(tmp_path):
    shape = (10, 40, 60)  # z, y, x
    vol = _volume(shape)
    mask = np.zeros(shape, bool)
    mask[3:7, 10:25, 20:45] = True
    info = write_overview(tmp_path / "o.png", vol, _geometry(shape), {"CGC": mask}, n_slices=3, panel_px=180,
                          line_width=1)
    png = np.asarray(Image.open(info.path).convert("RGB"))
    panel_wh = overview.panel_size((40, 60), (1.0, 1.0), 180)
    assert panel_wh == (180, 120)
    assert info.size == overview.overview_size(3, panel_wh)
    assert png.shape[1::-1] == info.size
    assert all(3 <= s <= 6 for s in info.slices), f"slices {info.slices} do not go through the mask"
    ring = mask[4] & ~ndimage.binary_erosion(mask[4], border_value=0)
    for panel in info.panels:
        hit = _pixels_of(png, panel, overview.NAMED_COLORS["cgc"])
        v, u = np.nonzero(hit)
        assert len(u) >= 2 * (15 + 25) * 2, "too few contour pixels"  # perimeter at 3 px per voxel
        rows, cols = _voxel_of_pixel(u, v, panel, 40, 60)
        # Every coloured pixel lies on a voxel of the mask's in-plane border.
        assert ring[rows, cols].all(), "contour colour found away from the mask border"
        # ... and the border is covered: each border voxel gets at least one coloured pixel.
        covered = np.zeros_like(ring)
        covered[rows, cols] = True
        assert covered[ring].mean() > 0.95


def test_anisotropic_spacing_gives_square_millimetres(tmp_path):
    shape = (6, 20, 40)
    spacing = (1.0, 2.0, 3.0)  # x, y, z mm: a 40x20 voxel slice is 40 mm x 40 mm
    mask = np.zeros(shape, bool)
    mask[2:4, 5:10, 10:20] = True  # 10 voxels x 5 voxels = 10 mm x 10 mm
    info = write_overview(tmp_path / "a.png", _volume(shape), _geometry(shape, spacing), {"m": mask}, n_slices=1,
                          panel_px=200)
    left, top, w, h = info.panels[0]
    assert (w, h) == (200, 200)
    png = np.asarray(Image.open(info.path).convert("RGB"))
    v, u = np.nonzero(_pixels_of(png, info.panels[0], info.colors["m"]))
    width, height = u.max() - u.min() + 1, v.max() - v.min() + 1
    assert width == pytest.approx(50, abs=2) and height == pytest.approx(50, abs=2)


def test_radiological_orientation_follows_the_direction(tmp_path):
    shape = (4, 30, 30)
    mask = np.zeros(shape, bool)
    mask[1:3, 12:18, 2:8] = True  # low x index
    colors = {"m": (0, 0, 255)}
    centres = {}
    for name, direction in (("lps", IDENTITY), ("ras", (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))):
        info = write_overview(tmp_path / f"{name}.png", _volume(shape), _geometry(shape, direction=direction),
                              {"m": mask}, n_slices=1, panel_px=120, colors=colors)
        png = np.asarray(Image.open(info.path).convert("RGB"))
        _, u = np.nonzero(_pixels_of(png, info.panels[0], colors["m"]))
        centres[name] = u.mean() / info.panels[0][2]
    # LPS identity: low x index is the patient's right, shown on the image's left (radiological).
    assert centres["lps"] < 0.4
    # Direction -1 on x: low x index is the patient's left, shown on the image's right.
    assert centres["ras"] > 0.6


def test_empty_mask_and_no_mask(tmp_path):
    shape = (12, 24, 24)
    vol = _volume(shape)
    empty = np.zeros(shape, np.uint8)
    info = write_overview(tmp_path / "e.png", vol, _geometry(shape), {"GMM": empty}, n_slices=4, panel_px=64)
    assert info.path.exists() and len(info.slices) == 4
    png = np.asarray(Image.open(info.path).convert("RGB"))
    for panel in info.panels:
        assert not _pixels_of(png, panel, info.colors["GMM"]).any()
    info = write_overview(tmp_path / "n.png", vol, _geometry(shape), None, n_slices=3, panel_px=64)
    assert info.slices == [3, 6, 8]  # evenly through the non-zero extent 0..11


def test_choose_slices_through_the_lesion():
    bg = np.ones((50, 8, 8))
    focus = np.zeros((50, 8, 8), bool)
    focus[20:30, 2:5, 2:5] = True
    s = choose_slices(4, focus, bg)
    assert len(s) == 4 and all(20 <= k < 30 for k in s)
    thin = np.zeros_like(focus)
    thin[40, 3, 3] = True  # one slice of lesion: the others come from around it
    s = choose_slices(3, thin, bg)
    assert 40 in s and len(s) == 3 and max(abs(k - 40) for k in s) <= 1


def test_mismatched_mask_is_a_clear_error(tmp_path):
    shape = (4, 10, 10)
    with pytest.raises(ValueError, match="mask 'x'"):
        write_overview(tmp_path / "bad.png", _volume(shape), _geometry(shape), {"x": np.zeros((4, 10, 9))})
    assert not (tmp_path / "bad.png").exists()
