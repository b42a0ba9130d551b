"""The module file under real MRML: module metadata, parameter node, the in-Slicer self-test."""
from __future__ import annotations

import types

import numpy as np
import pytest
import slicer

import CGCLesionSeg


def test_module_metadata_has_research_notice():
    parent = types.SimpleNamespace()
    CGCLesionSeg.CGCLesionSeg(parent)
    assert parent.title == "CGC Lesion Seg"
    assert parent.categories == ["Segmentation"]
    assert parent.contributors
    assert "not for clinical diagnosis" in CGCLesionSeg.RESEARCH_NOTICE.lower() or \
        "must not be used for clinical diagnosis" in CGCLesionSeg.RESEARCH_NOTICE
    assert CGCLesionSeg.RESEARCH_NOTICE in parent.helpText
    assert "Research use only" in parent.acknowledgementText


def test_parameter_node_lives_in_the_scene(scene, logic):
    params = logic.getParameterNode()
    assert params.numberOfClusters == 4 and params.threshold == 0.5 and params.device == "auto"
    volume = slicer.util.addVolumeFromArray(np.zeros((3, 4, 5), np.float32), name="flair")
    params.flairVolume = volume
    params.numberOfClusters = 6
    # A second wrapper on the same singleton node sees the same values: they are stored in MRML.
    again = logic.getParameterNode()
    assert again.parameterNode is params.parameterNode
    assert scene.GetSingletonNode("CGCLesionSeg", "vtkMRMLScriptedModuleNode") is params.parameterNode
    assert again.flairVolume is volume and again.numberOfClusters == 6
    assert logic.inputVolumesByName(again) == {"flair": volume}
    assert logic.namedInputs(again) == {"flair": volume}
    again.modality = "ct"  # the first slot holds the CT: models and the CLI call it "ct"
    assert logic.namedInputs(again) == {"ct": volume}
    with pytest.raises(ValueError):
        params.threshold = 1.5


def test_module_self_test_runs_under_slicer_core(mrml):
    """Slicer's own self-test class (registered with slicer_add_python_unittest) passes here too."""
    pytest.importorskip("CGCLesionSegLib.gmm")
    CGCLesionSeg.CGCLesionSegTest().runTest()


def test_ui_file_matches_widget_and_parameter_node():
    """Every widget the Widget code uses exists in the .ui, and every SlicerParameterName is a parameter."""
    import ast
    import re
    import xml.etree.ElementTree as ET
    from pathlib import Path

    source_path = Path(CGCLesionSeg.__file__)
    ui = ET.parse(source_path.parent / "Resources" / "UI" / "CGCLesionSeg.ui")
    widgets = {w.get("name"): w for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", source_path.read_text()))
    assert used and used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"

    tree = ast.parse(source_path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CGCLesionSegParameterNode")
    parameters = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert set(bound.values()) <= parameters, sorted(set(bound.values()) - parameters)
    # Every user setting has a widget (the computed output nodes included).
    assert parameters == set(bound.values())
    # Node selectors get the scene from the top-level qMRMLWidget.
    receivers = {c.findtext("receiver") for c in ui.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers


def test_logic_never_uses_the_application_or_dialogs():
    """DESIGN.md: the Logic runs under slicer-core, so no slicer.app, no dialogs, no loadVolume/saveNode, no Qt."""
    import ast
    import inspect
    from pathlib import Path

    source = Path(CGCLesionSeg.__file__).read_text()
    tree = ast.parse(source)
    logic_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CGCLesionSegLogic")
    logic_source = ast.get_source_segment(source, logic_cls)
    for forbidden in ("slicer.app", "loadVolume(", "saveNode(", "Display(", "qt.", "ctk."):
        assert forbidden not in logic_source, forbidden
    for helper in (CGCLesionSeg.ChildProcess, CGCLesionSeg.parseProgressLine, CGCLesionSeg.killProcessTree):
        text = inspect.getsource(helper)
        assert "slicer.app" not in text and "qt." not in text
