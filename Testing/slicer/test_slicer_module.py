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
    """Every widget the Widget code uses exists in the .ui, and every parameter has exactly one widget
    (bound by SlicerParameterName, or by hand for the str paths: widget.PATH_BINDINGS)."""
    import ast
    import re
    import xml.etree.ElementTree as ET
    from pathlib import Path

    module_path = Path(CGCLesionSeg.__file__)
    widget_path = module_path.parent / "CGCLesionSegSlicer" / "widget.py"
    ui = ET.parse(module_path.parent / "Resources" / "UI" / "CGCLesionSeg.ui")
    widgets = {w.get("name"): w for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", widget_path.read_text()))
    assert used and used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"

    tree = ast.parse(module_path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CGCLesionSegParameterNode")
    parameters = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    from CGCLesionSegSlicer.widget import PATH_BINDINGS
    assert not set(PATH_BINDINGS) & set(bound), "a path widget is bound twice"
    assert set(PATH_BINDINGS) <= set(widgets)
    bound.update(PATH_BINDINGS)
    assert sorted(bound.values()) == sorted(set(bound.values())), "two widgets for one parameter"
    assert set(bound.values()) == parameters, (sorted(set(bound.values()) - parameters),
                                               sorted(parameters - set(bound.values())))
    # Node selectors get the scene from the top-level qMRMLWidget.
    receivers = {c.findtext("receiver") for c in ui.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    combos = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= receivers


def test_path_parameters_are_empty_until_chosen(scene, logic):
    """A pathlib.Path parameter shows "." in its line edit before anything is chosen; ours are str."""
    params = logic.getParameterNode()
    for name in ("modelPath", "trainingCasesFolder", "trainingOutputFolder"):
        assert getattr(params, name) == "", name
        assert CGCLesionSeg.pathOrNone(getattr(params, name)) is None
    params.modelPath = "/models/cgc.pt"
    assert logic.getParameterNode().modelPath == "/models/cgc.pt"


def _forbidden_uses(source: str) -> list:
    """Code (not docstrings) that needs the application: slicer.app, qt/ctk, dialogs, loadVolume/saveNode."""
    import ast
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "slicer" and node.attr == "app" or node.value.id in ("qt", "ctk"):
                found.append(f"{node.value.id}.{node.attr}")
            if node.attr in ("loadVolume", "saveNode") or node.attr.endswith("Display"):
                found.append(node.attr)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [n for n in names if n in ("qt", "ctk")]
    return found


def test_slicer_side_never_uses_the_application_or_dialogs_outside_the_widget():
    """DESIGN.md: Logic, job controller and runner run under slicer-core: no slicer.app, no dialogs,
    no loadVolume/saveNode, no Qt. Only widget.py may use them."""
    from pathlib import Path

    package = Path(CGCLesionSeg.__file__).parent / "CGCLesionSegSlicer"
    for name in ("logic.py", "jobs.py", "runner.py", "constants.py"):
        assert not _forbidden_uses((package / name).read_text()), name
    assert {"qt", "slicer.app"} <= set(_forbidden_uses((package / "widget.py").read_text()))
    thin = Path(CGCLesionSeg.__file__).read_text()
    assert set(_forbidden_uses(thin)) <= {"delayDisplay"}  # the self-test's own progress messages
    assert len(thin.splitlines()) < 300, "CGCLesionSeg.py should stay thin"
