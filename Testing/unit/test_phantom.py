"""The synthetic MRI phantom: contrasts, noise, lesion shape, labels, determinism, files."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CGCLesionSegLib.image_io import read_image
from CGCLesionSegLib.phantom import MODALITIES, make_cohort, make_phantom, save_phantom
from CGCLesionSegLib.preprocess import default_brain_mask

# Same field of view as the default (192×192×120 mm) at a coarser grid, so a phantom takes ~1 s.
SMALL = dict(shape_xyz=(80, 80, 50), spacing_xyz=(2.4, 2.4, 2.4))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=0, **SMALL)


def _median(ph, channel, where):
    values = ph.channels[channel][where]
    assert values.size > 50, f"too few voxels to take a median of {channel}"
    return float(np.median(values))


def _faces(mask: np.ndarray) -> int:
    """Surface area in voxel faces: a slow-but-obvious count of foreground/background neighbours."""
    m = np.pad(mask.astype(np.int8), 1)
    return sum(int(np.abs(np.diff(m, axis=a)).sum()) for a in range(3))


def _ball_like(n_voxels: int) -> np.ndarray:
    """A voxelised ball with (about) ``n_voxels`` voxels, centred between voxels."""
    r = (3.0 * n_voxels / (4.0 * np.pi)) ** (1.0 / 3.0)
    size = int(2 * r + 6)
    c = (size - 1) / 2.0
    zz, yy, xx = np.ogrid[:size, :size, :size]
    d = np.sqrt((zz - c) ** 2 + (yy - c) ** 2 + (xx - c) ** 2)
    return d <= np.sort(d.ravel())[n_voxels - 1]


def test_healthy_tissue_orderings_per_channel(phantom):
    healthy = phantom.labels == 0
    csf, gm, wm = ((phantom.tissue == k) & healthy for k in (1, 2, 3))
    med = {m: [_median(phantom, m, t) for t in (csf, gm, wm)] for m in MODALITIES}
    c, g, w = med["t1"]
    assert w > g > c, f"T1 needs WM > GM > CSF, medians {med['t1']}"
    c, g, w = med["t1ce"]
    assert w > g > c, f"T1ce needs WM > GM > CSF, medians {med['t1ce']}"
    c, g, w = med["t2"]
    assert c > g > w, f"T2 needs CSF > GM > WM, medians {med['t2']}"
    c, g, w = med["flair"]
    assert g > w > c, f"FLAIR needs GM > WM > CSF (CSF dark), medians {med['flair']}"


def test_lesion_contrast_per_channel_as_in_glioma(phantom):
    healthy = phantom.labels == 0
    wm = (phantom.tissue == 3) & healthy
    gm = (phantom.tissue == 2) & healthy
    nec, oed, rim = (phantom.labels == k for k in (1, 2, 4))
    f = {k: _median(phantom, "flair", v) for k, v in dict(wm=wm, gm=gm, nec=nec, oed=oed, rim=rim).items()}
    # FLAIR: oedema and tumour bright, necrosis intermediate (between white matter and oedema).
    assert f["oed"] > 1.3 * f["gm"] and f["rim"] > 1.3 * f["gm"], f
    assert f["wm"] < f["nec"] < f["oed"], f
    # T1: the whole lesion is hypointense to white matter.
    t1_wm = _median(phantom, "t1", wm)
    for name, region in dict(necrosis=nec, oedema=oed, rim=rim).items():
        assert _median(phantom, "t1", region) < 0.8 * t1_wm, f"T1 {name} not hypointense"
    # T1ce: the rim enhances (brighter than white matter, and much brighter than on T1).
    assert _median(phantom, "t1ce", rim) > 1.2 * _median(phantom, "t1ce", wm)
    assert _median(phantom, "t1ce", rim) > 1.8 * _median(phantom, "t1", rim)
    # T2: oedema and necrosis bright.
    t2_gm = _median(phantom, "t2", gm)
    assert _median(phantom, "t2", oed) > 1.2 * t2_gm and _median(phantom, "t2", nec) > 1.4 * t2_gm


def test_intensity_distributions_overlap(phantom):
    """Texture, bias, partial volume and noise: GM and WM are not separable by one threshold."""
    healthy = phantom.labels == 0
    for m in MODALITIES:
        gm = phantom.channels[m][(phantom.tissue == 2) & healthy]
        wm = phantom.channels[m][(phantom.tissue == 3) & healthy]
        lo_g, hi_g = np.percentile(gm, [5, 95])
        lo_w, hi_w = np.percentile(wm, [5, 95])
        assert max(lo_g, lo_w) < min(hi_g, hi_w), f"{m}: GM and WM 5-95 % ranges do not overlap"


@pytest.mark.parametrize("snr", [10.0, 25.0])
def test_snr_measured_in_flat_white_matter(snr):
    ph = make_phantom(seed=1, snr=snr, texture=0.0, bias=0.0, n_lesions=0, n_wmh=0, **SMALL)
    flat = ndimage.binary_erosion(ph.tissue == 3, iterations=2)  # deep white matter: one intensity
    assert flat.sum() > 1000
    for m in MODALITIES:
        v = ph.channels[m][flat].astype(np.float64)
        measured = v.mean() / v.std()
        assert measured == pytest.approx(snr, rel=0.08), f"{m}: SNR {measured:.2f} vs requested {snr}"
        assert ph.noise_sigma[m] == pytest.approx(v.std(), rel=0.08)


def test_noise_free_phantom_is_flat_without_texture_and_bias_and_has_partial_volume():
    ph = make_phantom(seed=1, snr=float("inf"), texture=0.0, bias=0.0, n_lesions=0, n_wmh=0, **SMALL)
    t1 = ph.channels["t1"]
    flat = ndimage.binary_erosion(ph.tissue == 3, iterations=2)
    # (a few deep-WM voxels hold a sliver of a sulcus or deep grey matter, hence "most")
    assert np.mean(np.abs(t1[flat] - 760.0) < 1e-3) > 0.95, "without noise, texture and bias WM is one value"
    # Partial volume: voxels at the GM/WM border take values strictly between the two pure levels.
    gm_level, wm_level = 560.0, 760.0
    brain = t1[ph.brain_mask > 0]
    between = (brain > gm_level + 5) & (brain < wm_level - 5)
    assert between.mean() > 0.05, "no partial-volume mixing at tissue borders"
    # A bias field makes the same region vary smoothly.
    biased = make_phantom(seed=1, snr=float("inf"), texture=0.0, bias=0.1, n_lesions=0, n_wmh=0, **SMALL)
    v = biased.channels["t1"][flat]
    assert v.std() / v.mean() > 0.015


def test_lesion_is_irregular_not_a_sphere(phantom):
    core = (phantom.labels == 1) | (phantom.labels == 4)
    n = int(core.sum())
    ratio = _faces(core) / _faces(_ball_like(n))
    assert ratio > 1.2, f"tumour core surface is only {ratio:.2f}x that of an equal-volume ball"
    # Guard that the measure works: irregularity 0 gives (close to) a ball.
    round_ph = make_phantom(seed=0, irregularity=0.0, **SMALL)
    round_core = (round_ph.labels == 1) | (round_ph.labels == 4)
    round_ratio = _faces(round_core) / _faces(_ball_like(int(round_core.sum())))
    assert round_ratio < 1.1 < ratio


def test_labels_are_brats_and_nested(phantom):
    lab = phantom.labels
    assert lab.dtype == np.uint8
    assert set(np.unique(lab).tolist()) == {0, 1, 2, 4}
    necrosis, core, whole = lab == 1, (lab == 1) | (lab == 4), lab > 0
    grown = ndimage.binary_dilation(necrosis)
    # The rim can be thinner than a voxel in places, so "almost all" of the necrosis's shell is core.
    assert (core[grown]).mean() > 0.95, "necrosis is not enclosed by the enhancing rim"
    grown = ndimage.binary_dilation(core)
    assert (whole[grown]).mean() > 0.97, "tumour core is not enclosed by oedema"
    assert not (whole & (phantom.brain_mask == 0)).any(), "lesion outside the brain"
    # One lesion for n_lesions=1: oedema islands are removed on the fine grid, so at most a sliver
    # cut off by voxelisation lies outside the main component.
    comp, n = ndimage.label(whole, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(comp.ravel())[1:]
    assert sizes.max() >= 0.97 * sizes.sum(), f"lesion split into components of {sorted(sizes)[::-1]} voxels"


def test_several_lesions():
    ph = make_phantom(seed=4, n_lesions=3, **SMALL)
    assert len(ph.lesion_centers_zyx) == 3
    for c in ph.lesion_centers_zyx:
        assert ph.labels[c] > 0, f"lesion centre {c} is not inside a lesion"


def test_background_exactly_zero_brain_positive(phantom):
    inside = phantom.brain_mask > 0
    for m, img in phantom.channels.items():
        assert img.dtype == np.float32 and img.shape == phantom.geometry.shape_zyx
        assert np.all(img[~inside] == 0.0), f"{m}: background not exactly 0"
        assert np.all(img[inside] > 0.0), f"{m}: zero voxel inside the brain"
    assert np.array_equal(default_brain_mask(phantom.channel_list()), inside)


def test_deterministic_for_a_seed(phantom):
    again = make_phantom(seed=0, **SMALL)
    for m in MODALITIES:
        assert np.array_equal(again.channels[m], phantom.channels[m])
    assert np.array_equal(again.labels, phantom.labels)
    assert np.array_equal(again.tissue, phantom.tissue)
    other = make_phantom(seed=5, **SMALL)
    assert not np.array_equal(other.channels["flair"], phantom.channels["flair"])
    assert not np.array_equal(other.labels, phantom.labels)


def test_anisotropic_spacing_and_shape():
    ph = make_phantom(shape_xyz=(48, 56, 12), spacing_xyz=(4.0, 3.5, 10.0), seed=2, oversample=1)
    assert ph.geometry.shape_zyx == (12, 56, 48)
    assert ph.geometry.spacing == (4.0, 3.5, 10.0)
    assert ph.channels["flair"].shape == (12, 56, 48)
    assert (ph.labels > 0).any() and (ph.brain_mask > 0).mean() > 0.2


def test_save_and_read_back_exactly(tmp_path, phantom):
    paths = save_phantom(phantom, tmp_path, "case_a")
    case = tmp_path / "case_a"
    for key in (*MODALITIES, "seg", "mask"):
        assert paths[key] == case / f"case_a_{key}.nii.gz" and paths[key].exists()
    assert (case / "case_a_phantom.json").exists()
    for m in MODALITIES:
        img = read_image(paths[m], dtype=None)
        assert img.geometry.shape_zyx == phantom.geometry.shape_zyx
        assert img.geometry.spacing == phantom.geometry.spacing
        assert img.geometry.origin == phantom.geometry.origin
        assert np.allclose(img.geometry.direction, phantom.geometry.direction, atol=1e-12)
        assert img.array_zyx.dtype == np.float32
        assert np.array_equal(img.array_zyx, phantom.channels[m])
    seg = read_image(paths["seg"], dtype=None)
    assert seg.array_zyx.dtype == np.uint8 and np.array_equal(seg.array_zyx, phantom.labels)
    assert np.array_equal(read_image(paths["mask"], dtype=None).array_zyx, phantom.brain_mask)


def test_make_cohort_writes_brats_layout(tmp_path):
    dirs = make_cohort(tmp_path, 2, seed=3, shape_xyz=(40, 40, 25), spacing_xyz=(4.8, 4.8, 4.8), oversample=1)
    assert [d.name for d in dirs] == ["phantom_000", "phantom_001"]
    for d in dirs:
        for key in (*MODALITIES, "seg"):
            assert (d / f"{d.name}_{key}.nii.gz").exists()
    a = read_image(dirs[0] / "phantom_000_flair.nii.gz").array_zyx
    b = read_image(dirs[1] / "phantom_001_flair.nii.gz").array_zyx
    assert not np.array_equal(a, b)
    # The training package reads it as a cohort (labels are never used there).
    from CGCTraining.data import discover_cases
    found = discover_cases(tmp_path, list(MODALITIES))
    assert [c.name for c in found] == ["phantom_000", "phantom_001"]
    assert found[0].images["t1ce"].endswith("phantom_000_t1ce.nii.gz")


@pytest.mark.parametrize("kwargs", [dict(shape_xyz=(4, 64, 64)), dict(spacing_xyz=(1, 0, 1)), dict(snr=0),
                                    dict(n_lesions=-1), dict(oversample=0), dict(texture=-0.1)])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        make_phantom(**kwargs)


def test_bad_case_name(tmp_path, phantom):
    with pytest.raises(ValueError):
        save_phantom(phantom, tmp_path, "../escape")


def test_block_mean_matches_reshape_reference():
    from CGCLesionSegLib.phantom import _block_mean
    rng = np.random.default_rng(0)
    for o in (1, 2, 3):
        shape = (5 * o, 3 * o, 4 * o)
        for a in (rng.random(shape) > 0.4, rng.random(shape).astype(np.float32)):
            ref = a.reshape(5, o, 3, o, 4, o).mean(axis=(1, 3, 5))
            assert np.allclose(_block_mean(a, o), ref, atol=1e-6)


def test_smooth_noise_matches_direct_bspline_sum():
    from CGCLesionSegLib.phantom import _bspline3, _SmoothNoise
    rng = np.random.default_rng(1)
    noise = _SmoothNoise(rng, (-10.0, -8.0, -6.0), (10.0, 8.0, 6.0), wavelength_mm=7.0)
    pz, py, px = rng.uniform(-10, 10, 2), rng.uniform(-8, 8, 2), rng.uniform(-6, 6, 3)
    fast = noise.grid(pz, py, px)
    nodes = [noise.start[a] + noise.h * np.arange(noise.coef.shape[a]) for a in range(3)]
    for i, z in enumerate(pz):
        for j, y in enumerate(py):
            for k, x in enumerate(px):
                total = 0.0
                for a, nz in enumerate(nodes[0]):
                    for b, ny in enumerate(nodes[1]):
                        for c, nx in enumerate(nodes[2]):
                            w = (_bspline3(np.array([(z - nz) / noise.h]))[0] * _bspline3(np.array([(y - ny) / noise.h]))[0]
                                 * _bspline3(np.array([(x - nx) / noise.h]))[0])
                            total += w * noise.coef[a, b, c]
                assert fast[i, j, k] == pytest.approx(total * noise.scale, rel=1e-4, abs=1e-5)
    # Unit variance over a large grid.
    big = _SmoothNoise(np.random.default_rng(2), (-60.0,) * 3, (60.0,) * 3, 8.0)
    p = np.arange(-50.0, 50.0, 1.0)
    assert big.grid(p, p, p).std() == pytest.approx(1.0, abs=0.15)
