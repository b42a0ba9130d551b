"""The GMM live preview in-process: volume nodes → core GMM → probability and component nodes."""
from __future__ import annotations

import numpy as np
import pytest
import slicer

gmm = pytest.importorskip("CGCLesionSegLib.gmm")


def _phantom(rng, shape=(14, 22, 26)):
    """Skull-stripped two-tissue brain with one bright lesion: (z, y, x) arrays."""
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    c = [(s - 1) / 2 for s in shape]
    brain = ((z - c[0]) / (0.42 * shape[0])) ** 2 + ((y - c[1]) / (0.42 * shape[1])) ** 2 + \
        ((x - c[2]) / (0.42 * shape[2])) ** 2 < 1
    lesion = ((z - c[0]) / 2.5) ** 2 + ((y - c[1] - 2) / 3.5) ** 2 + ((x - c[2] + 3) / 4.0) ** 2 < 1
    grey = brain & (x < c[2])
    flair = np.where(brain, np.where(grey, 90.0, 70.0), 0.0) + np.where(lesion, 90.0, 0.0)
    flair = np.where(brain, flair + rng.normal(0, 4, shape), 0.0).astype(np.float32)
    t1 = np.where(brain, np.where(grey, 60.0, 80.0) - 30.0 * lesion + rng.normal(0, 4, shape), 0.0).astype(np.float32)
    return flair, t1, brain, lesion


@pytest.fixture
def case(mrml):
    rng = np.random.default_rng(7)
    flair, t1, brain, lesion = _phantom(rng)
    ijk_to_ras = np.array([[-0.9, 0, 0, 40.0], [0, -1.0, 0, 12.0], [0, 0, 1.8, -20.0], [0, 0, 0, 1]])
    flair_node = slicer.util.addVolumeFromArray(flair, ijk_to_ras, "flair")
    t1_node = slicer.util.addVolumeFromArray(t1, ijk_to_ras, "t1")
    return {"flair": flair_node, "t1": t1_node}, flair, t1, brain, lesion


def test_preview_writes_probability_and_components(logic, scene, case):
    volumes, flair, t1, brain, lesion = case
    config = gmm.GMMConfig(n_clusters=3, n_foreground=1, seed=0)
    p_node, c_node = logic.computeProbabilityMap(volumes, None, config)
    assert p_node.IsA("vtkMRMLScalarVolumeNode") and not p_node.IsA("vtkMRMLLabelMapVolumeNode")
    assert c_node.IsA("vtkMRMLLabelMapVolumeNode")
    p = slicer.util.arrayFromVolume(p_node)
    labels = slicer.util.arrayFromVolume(c_node)
    # Same grid as the input, and the same numbers as the core called directly.
    np.testing.assert_allclose(logic.ijkToRasArray(p_node), logic.ijkToRasArray(volumes["flair"]))
    direct = gmm.compute_probability_map([flair, t1], None, config)
    np.testing.assert_allclose(p, direct.probability, atol=1e-6)
    np.testing.assert_array_equal(labels, direct.labels)
    assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    assert set(np.unique(labels[brain])) <= {1, 2, 3} and (labels[~brain] == 0).all()
    assert p[lesion].mean() > 0.8 and p[brain & ~lesion].mean() < 0.1
    display = p_node.GetDisplayNode()
    assert not display.GetAutoWindowLevel() and display.GetWindow() == pytest.approx(1.0)


def test_refit_reuses_prepared_data_until_inputs_change(logic, case):
    volumes, flair, t1, brain, lesion = case
    p_node, c_node = logic.computeProbabilityMap(volumes, None, gmm.GMMConfig(n_clusters=3))
    cache = logic.prepareInputs(volumes, None)
    session = cache["session"]
    prepared = session.prepared
    # New GMM settings, same inputs: same session and prepared voxels, result written in place.
    p2, c2 = logic.computeProbabilityMap(volumes, None, gmm.GMMConfig(n_clusters=4),
                                         probabilityNode=p_node, componentsNode=c_node)
    assert (p2, c2) == (p_node, c_node)
    assert logic.prepareInputs(volumes, None)["session"] is session and session.prepared is prepared
    assert slicer.util.arrayFromVolume(c_node).max() == 4
    # Changing the voxels of an input invalidates the cache.
    slicer.util.updateVolumeFromArray(volumes["flair"], flair * 2.0)
    assert logic.prepareInputs(volumes, None)["session"] is not session


def test_explicit_components_and_mask(logic, scene, case):
    volumes, flair, t1, brain, lesion = case
    mask_node = slicer.util.addVolumeFromArray(brain.astype(np.uint8), logic.ijkToRasArray(volumes["flair"]),
                                               "brain", nodeClassName="vtkMRMLLabelMapVolumeNode")
    params = logic.getParameterNode()
    params.flairVolume = volumes["flair"]
    params.numberOfClusters = 3
    params.foregroundComponents = "3"  # labels as shown in the components labelmap (1-based)
    config = logic.gmmConfigFromParameters(params)
    assert config.foreground_components == (2,) and config.channels == (0,)
    p_node, _ = logic.computeProbabilityMap({"flair": volumes["flair"]}, mask_node, config)
    assert slicer.util.arrayFromVolume(p_node)[lesion].mean() > 0.8
    params.foregroundComponents = "7"
    with pytest.raises(ValueError, match="between 1 and 3"):
        logic.gmmConfigFromParameters(params)


def test_mismatched_grids_are_refused_with_the_property(logic, case):
    volumes, flair, *_ = case
    shifted = slicer.util.addVolumeFromArray(flair, np.diag([-0.9, -1.0, 1.8, 1.0]), "shifted")
    with pytest.raises(ValueError, match="origin"):
        logic.computeProbabilityMap([volumes["flair"], shifted], None, gmm.GMMConfig())
