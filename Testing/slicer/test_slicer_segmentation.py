"""Masks through real segmentation nodes, and export to .seg.nrrd and NIfTI labelmaps."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

import CGCLesionSeg


def _volume(shape=(9, 12, 14), spacing=(0.8, 1.1, 2.5)):
    rng = np.random.default_rng(3)
    ijk_to_ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    ijk_to_ras[:3, 3] = (30.0, -12.0, 4.5)
    node = slicer.util.addVolumeFromArray(rng.normal(100, 10, shape).astype(np.float32), ijk_to_ras, "ref")
    return node


def _blob(shape, center, radii):
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    return (((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2
            + ((x - center[2]) / radii[2]) ** 2) < 1


def test_mask_round_trip_with_named_coloured_lesion_segment(logic):
    ref = _volume()
    mask = _blob(ref.GetImageData().GetDimensions()[::-1], (4, 6, 7), (3, 4, 5))
    seg = logic.arrayToSegmentation(mask, ref)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetSegmentIdBySegmentName("Lesion")
    segment = segmentation.GetSegment(segment_id)
    np.testing.assert_allclose(segment.GetColor(), CGCLesionSeg.LESION_COLOR)
    terminology = segment.GetTerminology()
    assert "49755003" in terminology and "Morphologically Altered Structure" in terminology
    # "Mass" (SCT 4147007): an entry of Slicer's own lists, so the terminology selector matches it.
    assert "4147007" in terminology and "Mass" in terminology and "52988006" not in terminology
    back = logic.segmentationToArray(seg, ref)
    np.testing.assert_array_equal(back, mask.astype(np.uint8))
    # Replacing the segment keeps one segment and the new voxels.
    mask2 = np.zeros_like(mask)
    mask2[1:3, 2:5, 3:9] = True
    assert logic.arrayToSegmentation(mask2, ref, seg) is seg
    assert segmentation.GetNumberOfSegments() == 1
    np.testing.assert_array_equal(logic.segmentationToArray(seg, ref), mask2.astype(np.uint8))


def test_real_label_round_trips_through_segmentation(logic, brats_case):
    ref = logic.readVolume(str(next(brats_case.glob("*_flair.nii.gz"))))
    label = logic.readVolume(str(next(brats_case.glob("*_seg.nii.gz"))), labelmap=True)
    mask = logic.volumeToArray(label)[0] > 0
    seg = logic.arrayToSegmentation(mask, ref)
    np.testing.assert_array_equal(logic.segmentationToArray(seg, ref), mask.astype(np.uint8))


def test_shape_mismatch_is_refused_and_adds_nothing(logic, scene):
    ref = _volume()
    before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="shape"):
        logic.arrayToSegmentation(np.ones((2, 2, 2), bool), ref)
    assert scene.GetNumberOfNodes() == before


def test_export_seg_nrrd_and_nifti_read_back_identical(logic, scene, tmp_path):
    ref = _volume()
    shape = ref.GetImageData().GetDimensions()[::-1]
    mask = _blob(shape, (4, 5, 6), (3, 3, 4))
    seg = logic.arrayToSegmentation(mask, ref)
    ref_array, ref_geometry = logic.volumeToArray(ref)

    # .seg.nrrd through vtkMRMLSegmentationStorageNode, read back into a new node.
    seg_path = logic.exportSegmentation(seg, str(tmp_path / "lesion.seg.nrrd"))
    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(seg_path)
    assert storage.ReadData(loaded)
    segment_id = loaded.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    assert segment_id
    segment = loaded.GetSegmentation().GetSegment(segment_id)
    np.testing.assert_allclose(segment.GetColor(), CGCLesionSeg.LESION_COLOR, atol=1e-3)
    assert "4147007" in segment.GetTerminology()
    np.testing.assert_array_equal(logic.segmentationToArray(loaded, ref), mask.astype(np.uint8))

    # NIfTI labelmap on the reference grid: identical voxels (label 1) and geometry.
    nii_path = logic.exportLabelmap(seg, str(tmp_path / "lesion.nii.gz"), referenceVolumeNode=ref)
    image = sitk.ReadImage(nii_path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mask.astype(np.uint8))
    np.testing.assert_allclose(image.GetSpacing(), ref_geometry.spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), ref_geometry.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), ref_geometry.direction, atol=1e-6)
    # ... and the same through an MRML storage node.
    label_node = logic.readVolume(nii_path, labelmap=True)
    label_array, label_geometry = logic.volumeToArray(label_node)
    np.testing.assert_array_equal(label_array, mask.astype(np.uint8))
    np.testing.assert_allclose(label_geometry.origin, ref_geometry.origin, atol=1e-4)
    np.testing.assert_allclose(label_geometry.spacing, ref_geometry.spacing, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_export_leaves_scene_as_it_was(logic, scene, tmp_path):
    ref = _volume()
    seg = logic.arrayToSegmentation(_blob(ref.GetImageData().GetDimensions()[::-1], (4, 5, 6), (2, 2, 2)), ref)
    before = scene.GetNumberOfNodes()
    logic.exportLabelmap(seg, str(tmp_path / "l.nii.gz"), referenceVolumeNode=ref)
    logic.exportLabelmap(seg, str(tmp_path / "l2.nrrd"))
    logic.exportSegmentation(seg, str(tmp_path / "s.seg.nrrd"))
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(ValueError, match="seg.nrrd"):
        logic.exportSegmentation(seg, str(tmp_path / "s.nrrd"))


#: (context, category code, type code) of entries that exist in Slicer's terminology files
#: SegmentationCategoryTypeModifier-DICOM-Master.json and -SlicerGeneralAnatomy.json, checked in
#: Slicer's sources at tags v5.6.0, v5.8.0, v5.10.0 and main (slicer-core ships no JSON files).
SLICER_LIST_ENTRIES = {
    ("Segmentation category and type - 3D Slicer General Anatomy list", "49755003", "4147007"),  # Mass
    ("Segmentation category and type - DICOM master list", "49755003", "4147007"),  # Mass
    ("Segmentation category and type - DICOM master list", "49755003", "108369006"),  # Neoplasm
}


def test_lesion_terminology_is_an_entry_of_slicers_lists(logic):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(logic.lesionTerminology(), entry)
    key = (entry.GetTerminologyContextName(), entry.GetCategoryObject().GetCodeValue(),
           entry.GetTypeObject().GetCodeValue())
    assert key in SLICER_LIST_ENTRIES, key
    assert entry.GetCategoryObject().GetCodingSchemeDesignator() == entry.GetTypeObject().GetCodingSchemeDesignator() == "SCT"
