"""`cgcseg gmm` end to end: geometry round trip, sidecars, every bad input (exit 2, no output file),
and one real BraTS case when ../shared/data is present."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from CGCLesionSegLib.cli import main
from CGCLesionSegLib.image_io import Geometry, read_image, write_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_gmm import phantom  # noqa: E402

# Oblique direction, anisotropic spacing, non-zero origin: a geometry that any axis mix-up breaks.
_theta = np.deg2rad(20)
_R = np.array([[np.cos(_theta), -np.sin(_theta), 0], [np.sin(_theta), np.cos(_theta), 0], [0, 0, 1]])


def geometry(shape_zyx, origin=(-91.5, 120.25, -33.0)):
    return Geometry(tuple(shape_zyx), (0.9, 1.1, 2.5), origin, tuple(_R.ravel()))


@pytest.fixture()
def case(tmp_path):
    flair, t2, mask, lesion = phantom()
    g = geometry(flair.shape)
    paths = {"flair": write_image(tmp_path / "flair.nii.gz", flair, g),
             "t2": write_image(tmp_path / "t2.nrrd", t2, g),
             "mask": write_image(tmp_path / "mask.nii.gz", mask.astype(np.uint8), g)}
    return tmp_path, paths, g, lesion


def run(*argv):
    return main(["gmm", "--progress", "none", *map(str, argv)])


def test_round_trip_keeps_geometry_and_writes_sidecars(case):
    tmp, paths, g, lesion = case
    out, binary, labels = tmp / "out" / "P.nii.gz", tmp / "out" / "B.nrrd", tmp / "out" / "L.nii.gz"
    rc = run("--input", f"flair={paths['flair']}", "--input", f"t2={paths['t2']}", "--clusters", 3,
             "--output", out, "--binary-output", binary, "--labels-output", labels,
             "--fill-holes", "--min-size", 5, "--seed", 2)
    assert rc == 0
    for f in (out, binary, labels):
        img = read_image(f, dtype=None)
        assert img.geometry.shape_zyx == g.shape_zyx
        np.testing.assert_allclose(img.geometry.spacing, g.spacing, atol=1e-5)
        np.testing.assert_allclose(img.geometry.origin, g.origin, atol=1e-4)
        np.testing.assert_allclose(img.geometry.direction, g.direction, atol=1e-6)
        # one voxel maps to the same physical point as in the input
        np.testing.assert_allclose(img.geometry.index_to_lps((3, 5, 7)), g.index_to_lps((3, 5, 7)), atol=1e-3)
    p = read_image(out)
    assert p.array_zyx.dtype == np.float32 and 0 <= p.array_zyx.min() and p.array_zyx.max() <= 1
    b = read_image(binary, dtype=None).array_zyx
    from CGCLesionSegLib.metrics import dice
    assert dice(b, lesion) > 0.9
    lab = read_image(labels, dtype=None).array_zyx
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_settings"]["n_clusters"] == 3 and side["gmm_settings"]["seed"] == 2
    assert set(side["inputs"]) == {"flair", "t2"} and side["elapsed_s"] is not None
    assert side["gmm_result"]["foreground_labels"] == [3]
    bside = json.loads(Path(str(binary) + ".json").read_text())
    assert bside["postprocess"]["min_component_voxels"] == 5 and bside["postprocess"]["fill_holes"] == "2d"


def test_explicit_components_and_mask(case):
    tmp, paths, g, lesion = case
    out = tmp / "P2.nii.gz"
    assert run("--input", paths["flair"], "--mask", paths["mask"], "--clusters", 3, "--components", 2, 3,
               "--output", out) == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_result"]["foreground_labels"] == [2, 3]
    assert side["inputs"]["mask"].endswith("mask.nii.gz")


def test_presets_and_overrides(case):
    tmp, paths, g, lesion = case
    out = tmp / "rec.nii.gz"
    assert run("--input", paths["flair"], "--output", out, "--binary-output", tmp / "rec_b.nii.gz") == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_settings"]["ensemble_clusters"] == [4, 5, 6, 7, 8]
    assert side["gmm_settings"]["foreground_rule"] == "outlier"
    assert [m["K"] for m in side["gmm_result"]["ensemble_members"]] == [4, 5, 6, 7, 8]
    bside = json.loads(Path(str(tmp / "rec_b.nii.gz") + ".json").read_text())
    assert bside["postprocess"] == {"threshold": 0.5, "fill_holes": "2d", "min_component_voxels": 0,
                                    "keep_largest": 1, "opening_radius": 3}
    out = tmp / "paper.nii.gz"
    assert run("--preset", "paper", "--input", paths["flair"], "--output", out, "--binary-output", tmp / "paper_b.nii.gz") == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_settings"]["n_clusters"] == 4 and side["gmm_settings"]["ensemble_clusters"] is None
    assert side["gmm_settings"]["foreground_rule"] == "auto" and side["gmm_settings"]["n_foreground"] == 1
    bside = json.loads(Path(str(tmp / "paper_b.nii.gz") + ".json").read_text())
    assert bside["postprocess"]["keep_largest"] == 0 and bside["postprocess"]["fill_holes"] is False
    # overrides: a single K turns the ensemble off; --no-postprocess / --keep-largest 0 turn clean-up off
    out = tmp / "k5.nii.gz"
    assert run("--input", paths["flair"], "--clusters", 5, "--foreground-components", 2, "--output", out,
               "--binary-output", tmp / "k5_b.nii.gz", "--no-postprocess") == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_settings"]["ensemble_clusters"] is None and side["gmm_settings"]["n_clusters"] == 5
    assert side["gmm_settings"]["foreground_rule"] == "brightest" and side["gmm_result"]["foreground_labels"] == [4, 5]
    assert json.loads(Path(str(tmp / "k5_b.nii.gz") + ".json").read_text())["postprocess"]["keep_largest"] == 0


def _assert_fails(capsys, tmp, argv, word):
    outs = [tmp / "bad_P.nii.gz", tmp / "bad_B.nii.gz"]
    rc = run(*argv, "--output", outs[0], "--binary-output", outs[1])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and word.lower() in err.lower(), err
    leftovers = [f.name for f in tmp.iterdir() if f.name.startswith(("bad_", ".tmp"))]
    assert leftovers == []


def test_bad_inputs_exit_2_without_output(case, capsys):
    tmp, paths, g, lesion = case
    flair = read_image(paths["flair"]).array_zyx
    # mismatched grid (origin moved)
    shifted = write_image(tmp / "shifted.nii.gz", flair, geometry(flair.shape, origin=(0.0, 0.0, 0.0)))
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--input", shifted], "origin")
    # mismatched size
    small = write_image(tmp / "small.nii.gz", flair[:, :, :-2], geometry(flair[:, :, :-2].shape))
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--input", small], "size")
    # NaN
    nan = flair.copy()
    nan[2, 3, 4] = np.nan
    _assert_fails(capsys, tmp, ["--input", write_image(tmp / "nan.nrrd", nan, g)], "NaN")
    # NIfTI too, although ITK's NIfTI reader turns NaN into 0 (background) on reading
    _assert_fails(capsys, tmp, ["--input", write_image(tmp / "nan.nii.gz", nan, g)], "NaN")
    # empty mask
    empty = write_image(tmp / "empty.nii.gz", np.zeros(flair.shape, np.uint8), g)
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--mask", empty], "empty")
    # mask on another grid
    mask_off = write_image(tmp / "mask_off.nii.gz", np.ones(flair.shape, np.uint8), geometry(flair.shape, (1.0, 2.0, 3.0)))
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--mask", mask_off], "--mask")
    # constant image
    const = write_image(tmp / "const.nii.gz", np.full(flair.shape, 3.0, np.float32), g)
    _assert_fails(capsys, tmp, ["--input", const], "constant")
    # more clusters than distinct intensities
    two = write_image(tmp / "two.nii.gz", np.where(flair > 0, np.where(flair > 130, 2.0, 1.0), 0.0).astype(np.float32), g)
    _assert_fails(capsys, tmp, ["--input", two, "--clusters", 4], "distinct")
    # MRI with skull, no mask
    skull = write_image(tmp / "skull.nii.gz", phantom(skull=True)[0], g)
    _assert_fails(capsys, tmp, ["--input", skull], "skull")
    # bad values
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--clusters", 12], "n_clusters")
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--clusters", 3, "--components", 4], "label numbers")
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--threshold", 0], "threshold")
    _assert_fails(capsys, tmp, ["--input", paths["flair"], "--preset", "paper", "--open-radius", 2], "--keep-largest")
    # an output named like an input (the mask included) is refused; the input stays untouched
    before = {k: Path(v).read_bytes() for k, v in paths.items()}
    for flag in ("--output", "--binary-output", "--labels-output"):
        rc = run("--input", paths["flair"], "--mask", paths["mask"], "--output", tmp / "bad_P.nii.gz",
                 flag, paths["mask"])
        assert rc == 2 and "is also an input" in capsys.readouterr().err
    assert {k: Path(v).read_bytes() for k, v in paths.items()} == before
    assert not (tmp / "bad_P.nii.gz").exists()
    # an output folder that cannot exist: refused before any work
    (tmp / "bad_file").write_text("x")
    rc = run("--input", paths["flair"], "--output", tmp / "bad_file" / "P.nii.gz")
    assert rc == 2 and "not a folder" in capsys.readouterr().err
    (tmp / "bad_file").unlink()
    # missing file, unsupported output format
    _assert_fails(capsys, tmp, ["--input", tmp / "nope.nii.gz"], "not found")
    rc = run("--input", paths["flair"], "--output", tmp / "bad_P.png")
    assert rc == 2 and "unsupported" in capsys.readouterr().err
    assert not (tmp / "bad_P.png").exists()


def test_ct_input(tmp_path):
    from test_gmm import ct_phantom
    ct, brain, bleed = ct_phantom()
    g = geometry(ct.shape)
    path = write_image(tmp_path / "ct.nii.gz", ct, g)
    out = tmp_path / "P.nii.gz"
    assert run("--input", f"ct={path}", "--clusters", 3, "--output", out, "--binary-output", tmp_path / "b.nii.gz") == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["gmm_settings"]["modality"] == "ct" and side["gmm_settings"]["foreground_rule"] == "auto"
    # the MRI clean-up preset is not applied to CT (several bleeds may exist)
    assert json.loads(Path(str(tmp_path / "b.nii.gz") + ".json").read_text())["postprocess"]["keep_largest"] == 0
    from CGCLesionSegLib.metrics import dice
    assert dice(read_image(out).array_zyx >= 0.5, bleed) > 0.9


def test_real_case(brats_case, tmp_path):
    """One real BraTS case through the CLI with the default (recommended) preset: P keeps the
    reference geometry and the binary output overlaps the whole lesion as benchmarked."""
    name = brats_case.name
    out, binary = tmp_path / "P.nii.gz", tmp_path / "B.nii.gz"
    rc = run("--input", f"flair={brats_case / f'{name}_flair.nii.gz'}", "--input", f"t2={brats_case / f'{name}_t2.nii.gz'}",
             "--output", out, "--binary-output", binary)
    assert rc == 0
    ref = read_image(brats_case / f"{name}_seg.nii.gz", dtype=None)
    p = read_image(out)
    assert p.geometry.shape_zyx == ref.geometry.shape_zyx
    np.testing.assert_allclose(p.geometry.origin, ref.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(p.geometry.direction, ref.geometry.direction, atol=1e-6)
    from CGCLesionSegLib.metrics import dice
    # docs/BENCHMARKS.md (gmm-accuracy) reports 0.64-0.95 per case for this configuration
    assert dice(read_image(binary, dtype=None).array_zyx, ref.array_zyx > 0) > 0.6


def test_keep_largest_warns_about_a_second_lesion(tmp_path, capsys):
    """Two bright balls (2.2 and 1.3 mL): the default clean-up keeps one, says so, and the sidecar records it."""
    shape = (24, 48, 48)
    rng = np.random.default_rng(3)
    z, y, x = np.indices(shape, dtype=float)
    c = [(s - 1) / 2 for s in shape]
    brain = sum(((a - m) / (s * 0.46)) ** 2 for a, m, s in zip((z, y, x), c, shape)) <= 1.0
    flair = np.where(x < c[2], 100.0, 160.0) + rng.normal(0, 8, shape)
    # radii in voxels on the 0.9 x 1.1 x 2.5 mm grid: ~7 mm and ~5.5 mm balls
    for (cz, cy, cx), r_mm in (((12, 14, 14), 8.0), ((12, 34, 34), 6.8)):
        ball = ((z - cz) * 2.5) ** 2 + ((y - cy) * 1.1) ** 2 + ((x - cx) * 0.9) ** 2 <= r_mm ** 2
        flair[ball] = 320.0 + rng.normal(0, 10, int(ball.sum()))
    flair = np.where(brain, flair, 0.0).astype(np.float32)
    g = geometry(shape)
    src = write_image(tmp_path / "flair.nii.gz", flair, g)
    out, binary = tmp_path / "P.nii.gz", tmp_path / "B.nii.gz"
    assert run("--input", f"flair={src}", "--output", out, "--binary-output", binary) == 0
    err = capsys.readouterr().err
    side = json.loads(Path(str(binary) + ".json").read_text())
    removed = side["removed_lesions"]
    assert removed["count"] >= 1 and removed["kept"] == 1 and removed["largest_ml"] >= 1.0, removed
    assert "warning:" in err and "removed" in err and "--keep-largest 0" in err, err
    kept = read_image(binary, dtype=None).array_zyx
    assert kept.sum() * np.prod(g.spacing) / 1000.0 == pytest.approx(removed["kept_ml"], abs=1e-3)
    # --keep-largest 0 keeps both: no warning, nothing removed
    binary2 = tmp_path / "B2.nii.gz"
    assert run("--input", f"flair={src}", "--output", tmp_path / "P2.nii.gz", "--binary-output", binary2,
               "--keep-largest", "0") == 0
    assert "removed" not in capsys.readouterr().err
    assert json.loads(Path(str(binary2) + ".json").read_text())["removed_lesions"] is None
    assert read_image(binary2, dtype=None).array_zyx.sum() > kept.sum() + 0.9 * removed["total_ml"] * 1000 / np.prod(g.spacing)
