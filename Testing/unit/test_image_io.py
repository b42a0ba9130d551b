import json

import numpy as np
import pytest
import SimpleITK as sitk

from CGCLesionSegLib.image_io import (Geometry, GeometryMismatchError, ImageIOError, check_same_grid,
                                      read_image, write_image)
from CGCLesionSegLib.sidecar import file_sha256, sidecar_path, write_sidecar

ROT = np.array([[0.8660254, -0.5, 0.0], [0.5, 0.8660254, 0.0], [0.0, 0.0, 1.0]])


def _geometry(shape_zyx=(5, 6, 7)):
    return Geometry(shape_zyx, (0.9, 1.1, 3.0), (10.5, -20.25, 33.0), tuple(ROT.ravel()))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, suffix):
    g = _geometry()
    a = np.random.default_rng(1).normal(size=g.shape_zyx).astype(np.float32)
    path = write_image(tmp_path / f"img{suffix}", a, g)
    img = read_image(path)
    np.testing.assert_array_equal(img.array_zyx, a)
    np.testing.assert_allclose(img.geometry.spacing, g.spacing, atol=1e-5)
    np.testing.assert_allclose(img.geometry.origin, g.origin, atol=1e-4)
    np.testing.assert_allclose(img.geometry.direction, g.direction, atol=1e-5)
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_index_to_lps_matches_simpleitk_and_ras_flips_xy():
    g = _geometry()
    img = g.apply_to(sitk.Image(list(g.shape_xyz), sitk.sitkFloat32))
    for ijk in [(0, 0, 0), (3, 2, 4), (6, 5, 4)]:
        np.testing.assert_allclose(g.index_to_lps(ijk), img.TransformIndexToPhysicalPoint(ijk), atol=1e-9)
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(g.index_to_ras(ijk), lps * [-1, -1, 1], atol=1e-9)
    m = g.ijk_to_ras_matrix()
    np.testing.assert_allclose((m @ [3, 2, 4, 1])[:3], g.index_to_ras((3, 2, 4)), atol=1e-9)
    back = Geometry.from_ijk_to_ras_matrix(m, g.shape_zyx)
    np.testing.assert_allclose(back.spacing, g.spacing)
    np.testing.assert_allclose(back.origin, g.origin)
    np.testing.assert_allclose(back.direction, g.direction, atol=1e-12)


def test_check_same_grid_names_property_and_difference():
    g = _geometry()
    check_same_grid(g, g)
    moved = Geometry(g.shape_zyx, g.spacing, (10.5, -20.25, 35.0), g.direction)
    with pytest.raises(GeometryMismatchError, match=r"origin.*largest difference 2"):
        check_same_grid(g, moved, "flair", "t1")
    with pytest.raises(GeometryMismatchError, match="size"):
        check_same_grid(g, _geometry((5, 6, 8)))
    thick = Geometry(g.shape_zyx, (0.9, 1.1, 5.0), g.origin, g.direction)
    with pytest.raises(GeometryMismatchError, match="spacing"):
        check_same_grid(g, thick)


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(ImageIOError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageIOError, match="Could not read"):
        read_image(bad)
    with pytest.raises(ImageIOError, match="Unsupported"):
        read_image(tmp_path / "x.png") if (tmp_path / "x.png").write_bytes(b"x") else None
    with pytest.raises(ImageIOError, match="folder"):
        read_image(tmp_path)


def test_sidecar_records_hash_and_settings(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"abc")
    out = tmp_path / "seg.nii.gz"
    write_sidecar(out, inputs={"flair": "f.nii.gz"}, model_path=model, gmm_settings={"n_clusters": 4},
                  device="cpu", elapsed_s=1.23456, threshold=0.5)
    rec = json.loads(sidecar_path(out).read_text())
    assert rec["model"]["sha256"] == file_sha256(model)
    assert rec["gmm_settings"] == {"n_clusters": 4} and rec["elapsed_s"] == 1.235
    assert rec["inputs"] == {"flair": "f.nii.gz"} and rec["threshold"] == 0.5 and rec["version"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels_are_refused_in_every_format(tmp_path, suffix, bad):
    # SimpleITK's NIfTI reader silently turns NaN/inf into 0 (background); read_image must not.
    a = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    a[0] = 0.0
    a[2, 3, 4] = bad
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    with pytest.raises(ImageIOError, match=r"1 NaN/inf voxel"):
        read_image(path)
    with pytest.raises(ImageIOError, match="NaN/inf"):
        read_image(path, dtype=None)


def test_nan_check_reads_float64_nifti2_and_big_endian(tmp_path):
    from CGCLesionSegLib.image_io import _nifti_nonfinite_count
    a = np.zeros((3, 4, 5), dtype=np.float64)
    a[1, 2, 3] = np.nan
    a[2, 0, 0] = np.inf
    path = tmp_path / "d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    assert _nifti_nonfinite_count(path) == 2
    # Hand-made NIfTI-2, big-endian float32: 540-byte header, data at offset 544.
    import struct
    hdr = bytearray(544)
    struct.pack_into(">i", hdr, 0, 540)
    struct.pack_into(">h", hdr, 12, 16)
    struct.pack_into(">8q", hdr, 16, 3, 5, 4, 3, 1, 1, 1, 1)
    struct.pack_into(">q", hdr, 168, 544)
    data = np.ones((3, 4, 5), dtype=">f4")
    data[0, 0, 1] = np.nan
    (tmp_path / "n2.nii").write_bytes(bytes(hdr) + data.tobytes())
    assert _nifti_nonfinite_count(tmp_path / "n2.nii") == 1
    # Integer NIfTI cannot hold NaN: no scan, 0.
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(tmp_path / "i.nii.gz"))
    assert _nifti_nonfinite_count(tmp_path / "i.nii.gz") == 0


def test_finite_float_nifti_with_zero_background_still_reads(tmp_path):
    a = np.random.default_rng(3).normal(size=(4, 5, 6)).astype(np.float32)
    a[:, :, 0] = 0.0
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "ok.nii.gz"))
    np.testing.assert_array_equal(read_image(tmp_path / "ok.nii.gz").array_zyx, a)


@pytest.mark.parametrize("compress", [True, False])
def test_mhd_output_names_its_data_file_after_itself(tmp_path, compress):
    g = _geometry()
    a = np.random.default_rng(4).normal(size=g.shape_zyx).astype(np.float32)
    write_image(tmp_path / "P.mhd", a, g, compress=compress)
    data = "P.zraw" if compress else "P.raw"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["P.mhd", data]
    assert f"ElementDataFile = {data}" in (tmp_path / "P.mhd").read_text()
    write_image(tmp_path / "P.mhd", a + 1, g, compress=compress)  # overwriting leaves no orphan either
    assert sorted(f.name for f in tmp_path.iterdir()) == ["P.mhd", data]
    np.testing.assert_array_equal(read_image(tmp_path / "P.mhd").array_zyx, a + 1)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(ImageIOError, match="could not write .*disk full"):
        write_image(tmp_path / "x.nii.gz", np.zeros((2, 3, 4), np.float32), _geometry((2, 3, 4)))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    from CGCLesionSegLib.image_io import atomic_write, check_output_paths
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "sub" / "P.nii.gz"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_paths({"--output": bad}, [])
    with pytest.raises(ImageIOError, match="cannot create the folder"):
        write_image(bad, np.zeros((2, 3, 4), np.float32), _geometry((2, 3, 4)))
    with pytest.raises(ImageIOError, match="cannot create the folder"):
        with atomic_write(bad.with_suffix(".json")) as fh:
            fh.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_atomic_write_replaces_only_on_success_with_normal_permissions(tmp_path):
    from CGCLesionSegLib.image_io import atomic_write, default_file_mode
    target = tmp_path / "sub" / "t.txt"
    with atomic_write(target) as fh:
        fh.write("one")
    assert target.read_text() == "one"
    assert (target.stat().st_mode & 0o777) == default_file_mode()
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "one"
    assert [f.name for f in target.parent.iterdir()] == ["t.txt"]
    with atomic_write(target, "wb", fsync=True) as fh:
        fh.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"


def test_sidecar_is_readable_like_the_output_it_describes(tmp_path):
    # mkstemp creates 0600 files: a sidecar written that way could not be read by the other users
    # who can read the image beside it.
    from CGCLesionSegLib.image_io import default_file_mode
    out = write_image(tmp_path / "o.nii.gz", np.zeros((2, 3, 4), np.float32), _geometry((2, 3, 4)))
    side = write_sidecar(out, inputs={"flair": "f.nii.gz"})
    assert (side.stat().st_mode & 0o777) == default_file_mode() == (out.stat().st_mode & 0o777)
    assert not list(tmp_path.glob(".tmp-*"))


def test_check_output_paths_protects_inputs_and_checks_names(tmp_path):
    from CGCLesionSegLib.image_io import check_output_paths
    inp = write_image(tmp_path / "in.nii.gz", np.zeros((2, 3, 4), np.float32), _geometry((2, 3, 4)))
    (tmp_path / "link.nii.gz").symlink_to(inp)
    assert check_output_paths({"--output": tmp_path / "o.nii.gz"}, [inp, None]) == {"--output": tmp_path / "o.nii.gz"}
    for bad, word in ((inp, "also an input"), (tmp_path / "link.nii.gz", "also an input"),
                      (tmp_path / "o.png", "unsupported format")):
        with pytest.raises(ValueError, match=word):
            check_output_paths({"--output": bad}, [inp])
    with pytest.raises(ValueError, match="same file"):
        check_output_paths({"--output": tmp_path / "o.nii.gz", "--binary-output": tmp_path / "." / "o.nii.gz"}, [])
    assert check_output_paths({"png": tmp_path / "o.png"}, [inp], formats=None)


def test_sidecar_accepts_numpy_torch_and_non_finite_values(tmp_path):
    import torch
    out = tmp_path / "o.nii.gz"
    side = write_sidecar(out, spacing=np.array([1.0, 2.0, 3.0], np.float32), scalar=np.float32(0.5),
                         device=torch.device("cpu"), t=torch.tensor([1, 2]), loss=float("nan"), n=np.int64(3))
    record = json.loads(side.read_text())  # strict JSON: NaN would not parse in other tools either
    assert record["spacing"] == [1.0, 2.0, 3.0] and record["scalar"] == 0.5 and record["n"] == 3
    assert record["device"] == "cpu" and record["t"] == [1, 2] and record["loss"] is None
    assert "NaN" not in side.read_text()
