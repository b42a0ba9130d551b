"""After Segment: statistics (checked against plain numpy), re-run safety, 3-D view, try-out phantom,
export names."""
from __future__ import annotations

import os
from collections import deque

import numpy as np
import pytest
import slicer

from CGCLesionSegSlicer.constants import LABELMAP_HASH_ATTRIBUTE, SOURCE_REFERENCE_ROLE
from CGCLesionSegSlicer.logic import exportPathWithSuffix
from CGCLesionSegSlicer.runner import ChildJob


def _components_26(mask: np.ndarray) -> list[int]:
    """Sizes of the 26-connected components, by a plain breadth-first search (the slow reference)."""
    seen = np.zeros(mask.shape, bool)
    sizes = []
    offsets = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)]
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, size = deque([start]), 0
        while queue:
            z, y, x = queue.popleft()
            size += 1
            for dz, dy, dx in offsets:
                n = (z + dz, y + dy, x + dx)
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        sizes.append(size)
    return sizes


@pytest.fixture(scope="module")
def phantom():
    from CGCLesionSegLib.phantom import make_phantom
    return make_phantom(shape_xyz=(48, 48, 30), spacing_xyz=(1.5, 1.2, 2.0), seed=3, n_lesions=3)


def test_statistics_match_numpy_on_the_phantom(mrml, logic, phantom):
    flair = slicer.util.addVolumeFromArray(phantom.channels["flair"], phantom.geometry.ijk_to_ras_matrix(), "flair")
    truth = phantom.labels != 0
    # Two diagonal-only neighbours: separate under 6-connectivity, one lesion under 26-connectivity.
    truth[0, 0, 0] = truth[1, 1, 1] = True
    rng = np.random.default_rng(0)
    probability = rng.random(truth.shape).astype(np.float32)
    probability_node = slicer.util.addVolumeFromArray(probability, phantom.geometry.ijk_to_ras_matrix(), "P")
    seg = logic.arrayToSegmentation(truth, flair)
    seg.SetNodeReferenceID("CGCLesionSegProbability", probability_node.GetID())

    stats = logic.resultStatistics(seg, flair)
    sizes = _components_26(truth)
    voxel_ml = 1.5 * 1.2 * 2.0 / 1000.0
    assert stats["lesions"] == len(sizes) >= 2
    assert stats["volume_ml"] == pytest.approx(truth.sum() * voxel_ml)
    assert stats["largest_ml"] == pytest.approx(max(sizes) * voxel_ml)
    assert stats["mean_probability"] == pytest.approx(float(probability[truth].mean()), rel=1e-6)

    table = logic.writeStatisticsTable(stats)
    assert table.IsA("vtkMRMLTableNode") and table.GetNumberOfRows() == 4
    assert float(table.GetCellText(0, 1)) == pytest.approx(stats["volume_ml"], abs=1e-3)
    assert int(table.GetCellText(1, 1)) == len(sizes)
    again = logic.writeStatisticsTable(logic.lesionStatistics(np.zeros_like(truth), (1, 1, 1)), table)
    assert again is table and table.GetNumberOfRows() == 4 and table.GetCellText(1, 1) == "0"
    assert "mL" in logic.formatStatistics(stats)


def test_empty_result_statistics(logic):
    stats = logic.lesionStatistics(np.zeros((4, 5, 6), np.uint8), (1.0, 1.0, 1.0), np.ones((4, 5, 6)))
    assert stats == {"volume_ml": 0.0, "voxels": 0, "lesions": 0, "largest_ml": 0.0, "mean_probability": None}


def _finished_job(logic, tmp_path, reference, mask) -> ChildJob:
    """A job folder as the segment child leaves it (the result file written with SimpleITK)."""
    from CGCLesionSegLib.image_io import write_image
    folder = tmp_path / "job"
    folder.mkdir(exist_ok=True)
    geometry = logic.volumeToArray(reference)[1]
    out = folder / "segmentation.nii.gz"
    write_image(out, mask.astype(np.uint8), geometry)
    return ChildJob(command=[], env={}, tempDir=str(folder), outputPath=str(out), referenceVolumeNode=reference)


def test_result_hash_detects_edits_and_3d_view(mrml, logic, scene, tmp_path):
    a = np.zeros((10, 12, 14), np.float32)
    a[2:8, 3:9, 3:11] = 100
    flair = slicer.util.addVolumeFromArray(a, np.diag([-1.0, -1.0, 2.0, 1.0]), "flair")
    mask = a > 0
    seg = logic.finishSegmentJob(_finished_job(logic, tmp_path, flair, mask))
    assert seg.GetAttribute(LABELMAP_HASH_ATTRIBUTE) and seg.GetNodeReference(SOURCE_REFERENCE_ROLE) is flair
    assert logic.sourceVolumeOf(seg) is flair
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")  # shown in 3-D as well
    assert not logic.isResultEdited(seg)
    # An edit (as the Segment Editor makes): one voxel removed.
    edited = logic.segmentationToArray(seg, flair)
    edited[4, 5, 6] = 0
    segment_id = seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion")
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, segment_id, flair)
    assert logic.isResultEdited(seg)
    # Re-running into it stores the new hash: unedited again.
    logic.finishSegmentJob(_finished_job(logic, tmp_path, flair, mask), segmentationNode=seg)
    assert not logic.isResultEdited(seg)
    # A segmentation the module did not write but with a "Lesion" segment counts as edited (ask first).
    other = logic.arrayToSegmentation(mask, flair)
    assert logic.isResultEdited(other)
    assert not logic.isResultEdited(None)


def test_what_the_output_rule_removed_reaches_the_statistics(mrml, logic, scene, tmp_path):
    import json
    from CGCLesionSegLib.sidecar import sidecar_path
    a = np.zeros((10, 12, 14), np.float32)
    a[2:8, 3:9, 3:11] = 100
    flair = slicer.util.addVolumeFromArray(a, np.eye(4), "flair")
    job = _finished_job(logic, tmp_path, flair, a > 0)
    removed = {"count": 40, "count_1ml": 2, "largest_ml": 6.5, "total_ml": 9.0, "kept": 1, "kept_ml": 0.288}
    with open(sidecar_path(job.outputPath), "w") as fh:
        json.dump({"kind": "segmentation", "removed_lesions": removed}, fh)
    seg = logic.finishSegmentJob(job)
    stats = logic.resultStatistics(seg, flair)
    assert stats["removed"] == removed
    table = logic.writeStatisticsTable(stats)
    assert table.GetNumberOfRows() == 6 and table.GetCellText(4, 1) == "2" and float(table.GetCellText(5, 1)) == 6.5
    assert "removed 2 other candidates" in logic.formatStatistics(stats)
    # A re-run whose rule keeps everything (no removed_lesions in its sidecar) clears it.
    job = _finished_job(logic, tmp_path, flair, a > 0)
    with open(sidecar_path(job.outputPath), "w") as fh:
        json.dump({"kind": "segmentation", "removed_lesions": None}, fh)
    logic.finishSegmentJob(job, segmentationNode=seg)
    stats = logic.resultStatistics(seg, flair)
    assert stats["removed"] is None and "removed" not in logic.formatStatistics(stats)
    assert logic.writeStatisticsTable(stats, table).GetNumberOfRows() == 4


def test_result_is_not_loaded_when_its_volume_is_gone(mrml, logic, scene, tmp_path):
    a = np.zeros((6, 8, 8), np.float32)
    a[2:4, 2:6, 2:6] = 1
    flair = slicer.util.addVolumeFromArray(a, np.eye(4), "flair")
    job = _finished_job(logic, tmp_path, flair, a > 0)
    scene.RemoveNode(flair)
    n = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="no longer in the scene"):
        logic.finishSegmentJob(job)
    assert scene.GetNumberOfNodes() == n


def test_try_out_phantom_and_gmm_preview(mrml, logic, scene):
    from CGCLesionSegLib.metrics import dice
    nodes = logic.loadPhantom(shapeXyz=(64, 64, 40), seed=0)
    assert set(nodes) == {"flair", "t1", "t1ce", "t2", "mask", "truth"}
    assert nodes["mask"].IsA("vtkMRMLLabelMapVolumeNode") and nodes["truth"].IsA("vtkMRMLLabelMapVolumeNode")
    shapes = {slicer.util.arrayFromVolume(n).shape for n in nodes.values()}
    assert shapes == {(40, 64, 64)}
    params = logic.getParameterNode()
    params.flairVolume, params.t1Volume, params.t1ceVolume, params.t2Volume = (nodes[m] for m in ("flair", "t1", "t1ce", "t2"))
    params.maskVolume = nodes["mask"]
    probability, _ = logic.computeProbabilityMap(logic.inputVolumesByName(params), params.maskVolume,
                                                 logic.gmmConfigFromParameters(params))
    p = slicer.util.arrayFromVolume(probability)
    truth = slicer.util.arrayFromVolume(nodes["truth"]) != 0
    score = dice(p >= 0.5, truth)
    print(f"phantom GMM preview Dice {score:.3f}")
    assert score > 0.5


def test_scene_close_drops_the_gmm_cache(mrml, logic):
    from CGCLesionSegLib.gmm import GMMConfig
    a = np.zeros((8, 10, 12), np.float32)
    a[1:7, 2:8, 2:10] = 100
    a[3:5, 4:6, 4:6] = 200
    flair = slicer.util.addVolumeFromArray(a, np.eye(4), "flair")
    logic.computeProbabilityMap([flair], None, GMMConfig(n_clusters=2, n_foreground=1))
    assert logic._gmmCache is not None and logic.lastGmmResult is not None
    logic.clearCaches()
    assert logic._gmmCache is None and logic.lastGmmResult is None


@pytest.mark.parametrize("path, kind, expected", [
    ("/d/lesion", "seg.nrrd", "/d/lesion.seg.nrrd"),
    ("/d/lesion.nrrd", "seg.nrrd", "/d/lesion.seg.nrrd"),
    ("/d/lesion.seg.nrrd", "seg.nrrd", "/d/lesion.seg.nrrd"),
    ("/d/lesion", "nii.gz", "/d/lesion.nii.gz"),
    ("/d/lesion.nii", "nii.gz", "/d/lesion.nii"),
    ("/d/lesion.NII.GZ", "nii.gz", "/d/lesion.NII.GZ"),
])
def test_export_names_get_their_suffix(path, kind, expected):
    assert exportPathWithSuffix(path, kind) == expected


def test_exported_bare_name_is_written(mrml, logic, tmp_path):
    a = np.zeros((6, 8, 8), np.float32)
    a[2:4, 2:6, 2:6] = 1
    flair = slicer.util.addVolumeFromArray(a, np.eye(4), "flair")
    seg = logic.arrayToSegmentation(a > 0, flair)
    path = logic.exportSegmentation(seg, exportPathWithSuffix(str(tmp_path / "bare"), "seg.nrrd"))
    assert path.endswith("bare.seg.nrrd") and os.path.getsize(path) > 0
    path = logic.exportLabelmap(seg, exportPathWithSuffix(str(tmp_path / "bare"), "nii.gz"), flair)
    assert path.endswith("bare.nii.gz") and os.path.getsize(path) > 0
