"""The user's data survives the module: outputs never overwrite inputs, a result goes where it was sent
when the job started (not where the selector points when it ends) and never over an edit made during the
run, a failed write into the user's segmentation leaves it as it was, exported files are readable by others,
and child jobs never start the Slicer application as their interpreter."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from CGCLesionSegSlicer import logic as logic_module
from CGCLesionSegSlicer.runner import ChildJob

gmm = pytest.importorskip("CGCLesionSegLib.gmm")


def _volume(name="flair", shape=(8, 10, 12), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(60, 5, shape).astype(np.float32)
    a[3:6, 4:7, 4:9] += 60  # a bright blob: something for the GMM to find
    return slicer.util.addVolumeFromArray(a, np.diag([-1.0, -1.0, 1.5, 1.0]), name)


def _box(shape, lo, hi):
    m = np.zeros(shape, np.uint8)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    return m


def _job(logic, tmp_path, reference, mask) -> ChildJob:
    """A finished segment job's folder, as the child leaves it."""
    from CGCLesionSegLib.image_io import write_image
    folder = tmp_path / f"job{len(list(tmp_path.glob('job*')))}"
    folder.mkdir()
    out = folder / "segmentation.nii.gz"
    write_image(out, mask.astype(np.uint8), logic.volumeToArray(reference)[1])
    return ChildJob(command=[], env={}, tempDir=str(folder), outputPath=str(out), referenceVolumeNode=reference)


# ---- the GMM preview's outputs -------------------------------------------------------------------

def test_preview_refuses_an_input_or_the_mask_as_its_output(logic, scene):
    flair, t1 = _volume("flair"), _volume("t1", seed=1)
    shape = slicer.util.arrayFromVolume(flair).shape
    mask = slicer.util.addVolumeFromArray(np.ones(shape, np.uint8), np.diag([-1.0, -1.0, 1.5, 1.0]), "mask",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    volumes = {"flair": flair, "t1": t1}
    kept = {n.GetName(): slicer.util.arrayFromVolume(n).copy() for n in (flair, t1, mask)}
    config = gmm.GMMConfig(n_clusters=2, n_foreground=1, seed=0)
    other = slicer.util.addVolumeFromArray(np.zeros(shape, np.float32), np.eye(4), "mine")
    nodes = scene.GetNumberOfNodes()
    for outputs in ({"probabilityNode": t1}, {"probabilityNode": flair}, {"componentsNode": mask}):
        with pytest.raises(ValueError, match="is one of the inputs"):
            logic.computeProbabilityMap(volumes, mask, config, **outputs)
    with pytest.raises(ValueError, match="same volume"):
        logic.computeProbabilityMap(volumes, mask, config, probabilityNode=other, componentsNode=other)
    assert scene.GetNumberOfNodes() == nodes  # nothing added
    for n in (flair, t1, mask):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(n), kept[n.GetName()])
    # Separate outputs are written as before.
    p_node, c_node = logic.computeProbabilityMap(volumes, mask, config, probabilityNode=other)
    assert p_node is other and 0.0 <= slicer.util.arrayFromVolume(other).min() <= 1.0


def test_a_result_never_loads_into_an_input_volume(logic, scene, tmp_path):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    before = slicer.util.arrayFromVolume(flair).copy()
    job = _job(logic, tmp_path, flair, _box(shape, (2, 2, 2), (5, 6, 7)))
    with pytest.raises(ValueError, match="is one of the inputs"):
        logic.finishSegmentJob(job, probabilityNode=flair)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(flair), before)


# ---- where a segment job's result goes -------------------------------------------------------------

def test_the_target_is_fixed_when_the_job_starts(logic, scene, tmp_path):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    first = logic.finishSegmentJob(_job(logic, tmp_path, flair, _box(shape, (1, 1, 1), (4, 4, 4))))
    truth = logic.arrayToSegmentation(_box(shape, (2, 2, 2), (6, 6, 6)), flair)  # e.g. a manual reference
    truth_voxels = logic.segmentationToArray(truth, flair)

    job = _job(logic, tmp_path, flair, _box(shape, (3, 3, 3), (7, 8, 9)))
    logic.setSegmentJobTarget(job, first)
    # ... the user points the selector at `truth` during the run: the result still goes into `first`.
    target, note = logic.segmentJobTarget(job)
    assert target is first and note == ""
    logic.finishSegmentJob(job, segmentationNode=target)
    np.testing.assert_array_equal(logic.segmentationToArray(first, flair), _box(shape, (3, 3, 3), (7, 8, 9)))
    np.testing.assert_array_equal(logic.segmentationToArray(truth, flair), truth_voxels)

    # New segmentation chosen at start: None, whatever is selected later.
    job = _job(logic, tmp_path, flair, _box(shape, (3, 3, 3), (7, 8, 9)))
    logic.setSegmentJobTarget(job, None)
    assert logic.segmentJobTarget(job) == (None, "")


def test_an_edit_during_the_run_is_not_overwritten(logic, scene, tmp_path):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    seg = logic.finishSegmentJob(_job(logic, tmp_path, flair, _box(shape, (1, 1, 1), (5, 5, 5))))
    job = _job(logic, tmp_path, flair, _box(shape, (3, 3, 3), (7, 8, 9)))
    logic.setSegmentJobTarget(job, seg)
    edited = logic.segmentationToArray(seg, flair)
    edited[2, 2, 2] = 0  # as the Segment Editor's eraser would
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, segment_id, flair)
    target, note = logic.segmentJobTarget(job)
    assert target is None and "changed during the run" in note and seg.GetName() in note
    result = logic.finishSegmentJob(job, segmentationNode=target)
    assert result is not seg
    np.testing.assert_array_equal(logic.segmentationToArray(seg, flair), edited)  # the edit is kept

    # The target removed during the run: a new node as well.
    job = _job(logic, tmp_path, flair, _box(shape, (3, 3, 3), (7, 8, 9)))
    logic.setSegmentJobTarget(job, result)
    scene.RemoveNode(result)
    target, note = logic.segmentJobTarget(job)
    assert target is None and "removed" in note


def _closed_surface_segmentation(scene, name="surfaces"):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.GetSegmentation().SetSourceRepresentationName("Closed surface")
    return node


def test_a_segmentation_the_result_cannot_go_into_is_refused_at_start_and_left_as_it_was(logic, scene, tmp_path):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    surfaces = _closed_surface_segmentation(scene)
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = surfaces.GetSegmentation().GetConversionParameter(parameter)
    job = _job(logic, tmp_path, flair, _box(shape, (3, 3, 3), (7, 8, 9)))
    with pytest.raises(ValueError, match="Create new segmentation"):
        logic.setSegmentJobTarget(job, surfaces)
    with pytest.raises(ValueError, match="Binary labelmap"):
        logic.arrayToSegmentation(_box(shape, (3, 3, 3), (7, 8, 9)), flair, surfaces)
    assert surfaces.GetSegmentation().GetNumberOfSegments() == 0
    assert surfaces.GetSegmentation().GetConversionParameter(parameter) == geometry


def test_a_failed_write_into_the_users_segmentation_is_undone(logic, scene, monkeypatch):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    other_grid = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), "o")
    seg = logic.arrayToSegmentation(_box((4, 4, 4), (1, 1, 1), (3, 3, 3)), other_grid, segmentName="Tumour")
    segmentation = seg.GetSegmentation()
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    geometry = segmentation.GetConversionParameter(parameter)
    tumour = logic.segmentationToArray(seg, other_grid, "Tumour")

    def fail(*args, **kwargs):
        raise RuntimeError("Importing of segment failed.")

    monkeypatch.setattr(slicer.util, "updateSegmentBinaryLabelmapFromArray", fail)
    with pytest.raises(RuntimeError, match="Importing"):
        logic.arrayToSegmentation(_box(shape, (3, 3, 3), (7, 8, 9)), flair, seg)
    assert segmentation.GetNumberOfSegments() == 1 and not segmentation.GetSegmentIdBySegmentName("Lesion")
    assert segmentation.GetConversionParameter(parameter) == geometry
    monkeypatch.undo()
    np.testing.assert_array_equal(logic.segmentationToArray(seg, other_grid, "Tumour"), tumour)


# ---- exported files ------------------------------------------------------------------------------

def test_exports_get_a_normal_file_mode_and_keep_a_replaced_files_mode(logic, scene, tmp_path):
    flair = _volume()
    shape = slicer.util.arrayFromVolume(flair).shape
    seg = logic.arrayToSegmentation(_box(shape, (3, 3, 3), (7, 8, 9)), flair)
    umask = os.umask(0o022)
    try:
        seg_path = logic.exportSegmentation(seg, str(tmp_path / "a.seg.nrrd"))
        nii_path = logic.exportLabelmap(seg, str(tmp_path / "a.nii.gz"), referenceVolumeNode=flair)
        for path in (seg_path, nii_path):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path  # was 0600 for .seg.nrrd (mkstemp's)
        os.chmod(seg_path, 0o640)
        logic.exportSegmentation(seg, seg_path)
        assert stat.S_IMODE(os.stat(seg_path).st_mode) == 0o640
    finally:
        os.umask(umask)
    # An empty result still exports on the reference volume's whole grid.
    empty = logic.arrayToSegmentation(np.zeros(shape, np.uint8), flair)
    image = sitk.ReadImage(logic.exportLabelmap(empty, str(tmp_path / "empty.nii.gz"), referenceVolumeNode=flair))
    assert sitk.GetArrayFromImage(image).shape == shape and not sitk.GetArrayFromImage(image).any()


# ---- the interpreter of child jobs -----------------------------------------------------------------

def test_child_jobs_never_run_the_slicer_application(logic, tmp_path, monkeypatch):
    monkeypatch.setattr(logic_module.shutil, "which", lambda name: None)
    app = tmp_path / "Slicer-5.8" / "bin"
    app.mkdir(parents=True)
    (app / "SlicerApp-real").write_text("")
    assert logic_module.childPythonExecutable(str(app / "SlicerApp-real")) is None
    (app / "PythonSlicer").write_text("")
    assert logic_module.childPythonExecutable(str(app / "SlicerApp-real")) == str(app / "PythonSlicer")
    plain = tmp_path / "venv" / "bin"
    plain.mkdir(parents=True)
    assert logic_module.childPythonExecutable(str(plain / "python3")) == str(plain / "python3")
    logic.pythonExecutable = None
    with pytest.raises(ValueError, match="PythonSlicer"):
        logic.buildSegmentCommand([("flair", "f.nrrd")], "out.nii.gz")
    with pytest.raises(ValueError, match="PythonSlicer"):
        logic.buildTrainCommand("cases", "run")
