"""Volumes and segmentations through real MRML storage nodes: voxels, geometry, RAS vs LPS."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from CGCLesionSegLib.image_io import Geometry, read_image


def _oblique_direction() -> np.ndarray:
    a, b = 0.35, -0.2
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


@pytest.fixture
def oblique_file(tmp_path):
    """A small SimpleITK-written NIfTI with an oblique direction and anisotropic spacing."""
    rng = np.random.default_rng(1)
    array = rng.normal(100, 20, (7, 9, 11)).astype(np.float32)  # (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 3.1))
    image.SetOrigin((12.5, -40.25, 7.0))
    image.SetDirection(tuple(_oblique_direction().ravel()))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, array, image


def _ras_of_voxel(node, ijk) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array(m.MultiplyPoint([*map(float, ijk), 1.0])[:3])


def _check_voxel_mapping(node, image: sitk.Image, ijk) -> None:
    ras = _ras_of_voxel(node, ijk)
    lps = np.array(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in ijk)))
    # RAS = LPS with x and y negated; NIfTI keeps the matrix in float32, hence 1e-4 mm.
    np.testing.assert_allclose(ras, lps * np.array([-1.0, -1.0, 1.0]), atol=1e-4)


def test_real_case_read_through_storage_node(logic, brats_case):
    flair_path = next(brats_case.glob("*_flair.nii.gz"))
    node = logic.readVolume(str(flair_path))
    assert node.GetStorageNode() is not None and node.GetStorageNode().IsA("vtkMRMLVolumeArchetypeStorageNode")
    array, geometry = logic.volumeToArray(node)
    reference = read_image(flair_path, dtype=None)
    assert array.shape == reference.array_zyx.shape == (155, 240, 240)
    np.testing.assert_array_equal(array, reference.array_zyx)
    np.testing.assert_allclose(geometry.spacing, reference.geometry.spacing, atol=1e-5)
    np.testing.assert_allclose(geometry.origin, reference.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(geometry.direction, reference.geometry.direction, atol=1e-6)
    image = sitk.ReadImage(str(flair_path))
    for ijk in [(0, 0, 0), (239, 0, 0), (17, 201, 93), (239, 239, 154)]:
        _check_voxel_mapping(node, image, ijk)
    # The array is a copy: writing to it leaves the node alone.
    array[:] = -1
    assert slicer.util.arrayFromVolume(node).max() > 0


def test_oblique_anisotropic_voxel_maps_to_same_point(logic, oblique_file):
    path, array, image = oblique_file
    node = logic.readVolume(str(path))
    got, geometry = logic.volumeToArray(node)
    np.testing.assert_array_equal(got, array)
    for ijk in [(0, 0, 0), (10, 0, 0), (0, 8, 0), (0, 0, 6), (3, 5, 4), (10, 8, 6)]:
        _check_voxel_mapping(node, image, ijk)
        # The core's Geometry (built from MRML's IJK→RAS) agrees with SimpleITK as well.
        np.testing.assert_allclose(geometry.index_to_lps(ijk), image.TransformIndexToPhysicalPoint(ijk), atol=1e-4)
    np.testing.assert_allclose(geometry.spacing, (0.7, 1.3, 3.1), atol=1e-5)
    np.testing.assert_allclose(geometry.direction_matrix, _oblique_direction(), atol=1e-5)


def test_write_volume_keeps_voxels_and_geometry(logic, oblique_file, tmp_path):
    path, array, image = oblique_file
    node = logic.readVolume(str(path))
    for suffix in (".nrrd", ".nii.gz", ".mha"):
        out = logic.writeVolume(node, str(tmp_path / f"copy{suffix}"))
        back = sitk.ReadImage(out)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
        np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_volume_under_transform_is_refused(logic, scene):
    node = slicer.util.addVolumeFromArray(np.ones((3, 4, 5), np.float32), name="moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ValueError, match="Harden the transform"):
        logic.volumeToArray(node)
    node.SetAndObserveTransformNodeID(None)
    assert logic.volumeToArray(node)[0].shape == (3, 4, 5)


def test_missing_file_adds_nothing(logic, scene, tmp_path):
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="not found"):
        logic.readVolume(str(tmp_path / "nope.nii.gz"))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Could not read"):
        logic.readVolume(str(bad))
    assert scene.GetNumberOfNodes() == before


def test_geometry_round_trip_through_ijk_to_ras(oblique_file):
    _, _, image = oblique_file
    geometry = Geometry.from_sitk(image)
    again = Geometry.from_ijk_to_ras_matrix(geometry.ijk_to_ras_matrix(), geometry.shape_zyx)
    np.testing.assert_allclose(again.direction, geometry.direction, atol=1e-12)
    np.testing.assert_allclose(again.origin, geometry.origin, atol=1e-12)
