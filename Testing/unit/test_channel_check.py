"""The channel check: file-name tokens, the rank signature, and detection on the phantom and real cases."""
from __future__ import annotations

import numpy as np
import pytest

from CGCLesionSegLib import channel_check as cc
from CGCLesionSegLib.phantom import make_phantom

MODS = ["flair", "t1", "t1ce", "t2"]


@pytest.mark.parametrize("name, expected", [
    ("BraTS2021_00000_t1.nii.gz", "t1"),
    ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),          # whole tokens: t1ce is not t1
    ("BraTS2021_00000_flair.nii.gz", "flair"),
    ("BraTS-GLI-00001-000-t2f.nii.gz", "flair"),      # BraTS 2023
    ("BraTS-GLI-00001-000-t1n.nii.gz", "t1"),
    ("BraTS-GLI-00001-000-t1c.nii.gz", "t1ce"),
    ("BraTS-GLI-00001-000-t2w.nii.gz", "t2"),
    ("sub-01_ses-1_FLAIR.nii.gz", "flair"),           # BIDS
    ("sub-01_T1w.nii.gz", "t1"),
    ("sub-01_ce-gadolinium_T1w.nii.gz", "t1ce"),
    ("sub-01_T2w.nii", "t2"),
    ("patient_T2-FLAIR.nrrd", "flair"),
    ("head_ct.mha", "ct"),
    ("case_t1_to_t2_registered.nii.gz", None),        # two modalities: says nothing
    ("scan.nii.gz", None),
    ("t1cex.nii.gz", None),                           # not a whole token
    ("patient123.nii.gz", None),
])
def test_modality_from_filename(name, expected):
    assert cc.modality_from_filename(f"/some/t1/folder/{name}") == expected


def test_file_name_contradiction_warns_and_strict_refuses():
    rng = np.random.default_rng(0)
    ch = [rng.random((4, 5, 6)).astype(np.float32) for _ in range(2)]
    ok = cc.check_channels(ch, ["flair", "t1"], ["a_flair.nii.gz", "a_t1.nii.gz"], intensity=False)
    assert ok.ok and ok.to_dict()["status"] == "ok"
    cc.enforce(ok, strict=True)
    bad = cc.check_channels(ch, ["flair", "t1"], ["a_t1.nii.gz", "a_flair.nii.gz"], intensity=False)
    assert not bad.ok and len(bad.warnings) == 2
    assert "a_t1.nii.gz" in bad.warnings[0] and "says t1" in bad.warnings[0]
    assert bad.to_dict()["status"] == "warning"
    assert "swapped" in cc.format_warning(bad)
    cc.enforce(bad, strict=False)
    with pytest.raises(cc.ChannelCheckError, match="--strict"):
        cc.enforce(bad, strict=True)
    # Any-word names and unknown file names are not judged.
    assert cc.check_channels(ch, ["pd", "t1"], ["a_t2.nii.gz", "x.nii.gz"], intensity=False).ok


def test_signature_is_blind_to_monotonic_rescaling():
    rng = np.random.default_rng(1)
    brain = np.zeros((20, 20, 20), bool)
    brain[3:17, 3:17, 3:17] = True
    a = np.where(brain, rng.normal(100, 20, brain.shape), 0).astype(np.float32)
    b = np.where(brain, 0.5 * a + rng.normal(0, 10, brain.shape) + 50, 0).astype(np.float32)
    hi, lo = cc.signature([a, b])
    z = [(c - c.mean()) / c.std() for c in (a, b)]             # background becomes non-zero
    mm = [(c - c.min()) / (c.max() - c.min()) for c in (a, b)]
    for other in (z, mm, [np.exp(a / 100.0), b ** 3]):
        h2, l2 = cc.signature(other)
        np.testing.assert_allclose(h2, hi, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(l2, lo, atol=1e-9, equal_nan=True)
    # b follows a: a's brightest voxels are bright in b, its darkest dark.
    assert hi[0, 1] > 0.7 and lo[0, 1] < 0.3
    assert cc.brain_voxels(z).sum() == brain.sum()


def _swap(names, a, b):
    return [b if n == a else a if n == b else n for n in names]


def test_phantom_never_warns_and_its_swaps_are_flagged():
    ph = make_phantom(seed=0)
    ch, names = ph.channel_list(), list(ph.modalities)
    assert names == MODS
    for variant in (ch, [(c - c.mean()) / c.std() for c in ch], [(c - c.min()) / (c.max() - c.min()) for c in ch]):
        assert cc.check_channels(variant, names, None, None).ok
    for a, b in (("flair", "t1"), ("flair", "t2"), ("t1", "t2")):
        check = cc.check_channels(ch, _swap(names, a, b), None, ph.brain_mask)
        assert not check.ok, (a, b)
        assert f"{a} looks like {b}" in check.warnings[0]


def test_one_channel_gets_only_the_file_name_check():
    ph = make_phantom(seed=0)
    check = cc.check_channels([ph.channel_list()[1]], ["flair"], ["x_t1.nii.gz"])
    assert "needs two" in check.details["intensity"]["skipped"]
    assert not check.ok  # the file name still says t1


def _cases(shared_data, group):
    root = shared_data / group
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set CGC_SHARED_DATA or place ../shared/data beside the checkout)")
    return sorted(d for d in root.iterdir() if d.is_dir())


def _read(case, mods):
    import SimpleITK as sitk
    paths = [case / f"{case.name}_{m}.nii.gz" for m in mods]
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float32) for p in paths], paths


@pytest.mark.slow
def test_validation_cases_swaps_flagged_correct_quiet(shared_data):
    """The thresholds were set on brats/; on unlabelled/ (not used for tuning) every FLAIR/T1/T2 swap
    is flagged by the intensity signature alone and no correct naming warns, also after z-scoring."""
    for case in _cases(shared_data, "unlabelled"):
        ch, paths = _read(case, MODS)
        assert cc.check_channels(ch, MODS, paths).ok, case.name
        assert cc.check_channels([(c - c.mean()) / c.std() for c in ch], MODS, paths).ok, case.name
        for a, b in (("flair", "t1"), ("flair", "t2"), ("t1", "t2")):
            swapped = cc.check_channels(ch, _swap(MODS, a, b), None)
            assert not swapped.ok, (case.name, a, b)
            by_name = cc.check_channels(ch, _swap(MODS, a, b), paths, intensity=False)
            assert len(by_name.warnings) == 2, (case.name, a, b)


def test_ms_flairs_named_flair_do_not_warn(shared_data):
    for case in _cases(shared_data, "ms_isbi2015")[:2]:
        ch, paths = _read(case, ["flair"])
        assert cc.check_channels(ch, ["flair"], paths).ok


def test_without_t2_flair_is_not_judged_against_t1():
    ph = make_phantom(seed=0)
    ch = dict(zip(ph.modalities, ph.channel_list()))
    check = cc.check_channels([ch["t1"], ch["flair"]], ["flair", "t1"], None, ph.brain_mask)
    assert check.ok and "without a T2" in check.details["intensity"]["skipped"]
    # T1 <-> T1ce is still judged in a FLAIR + T1 + T1ce set (FLAIR stays in place).
    assert cc.comparable(["flair", "t1", "t1ce"], ["flair", "t1ce", "t1"])
    assert not cc.comparable(["flair", "t1", "t1ce"], ["t1", "flair", "t1ce"])
    assert cc.comparable(["flair", "t1", "t2"], ["t1", "flair", "t2"])
