"""The module's .ui loaded with real Qt (PySide6, offscreen platform): layout, classes, names.

Slicer uses Qt 5 and its own widget classes; PySide6 is Qt 6 without them. So this checks the
*layout* of the panel, not Slicer's widgets: every Slicer/CTK class is replaced by a plain Qt
class that looks alike (all are QWidget subclasses, as the real ones are), ``connections`` that
need MRML are dropped, and the loader's messages are collected. The test fails on a cell that two
items claim ("Cell (r, c) already occupied", the Segment button once landed over the section
header that way), on a widget its parent's layout does not hold, on overlapping rows, and on a
class that is neither a known Slicer class nor a Qt class. It also checks that every ``self.ui.NAME``
of the Widget exists and every interactive widget is used, and writes a PNG of the panel.

Needs ``PySide6-Essentials`` (test extra; the offscreen platform needs no display).
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtCore = pytest.importorskip("PySide6.QtCore", reason="PySide6 is not installed (pip install -e '.[test]')")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "CGCLesionSeg"
UI_PATH = MODULE_DIR / "Resources" / "UI" / "CGCLesionSeg.ui"
WIDGET_PATH = MODULE_DIR / "CGCLesionSegSlicer" / "widget.py"
PARAMETERS_PATH = MODULE_DIR / "CGCLesionSeg.py"

#: Slicer / CTK classes -> a Qt class standing in for them (same role, so the layout reads alike).
STAND_INS = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",   # a titled container (its "text" becomes the group's title)
    "qMRMLNodeComboBox": "QComboBox",
    "ctkPathLineEdit": "QLineEdit",
    "ctkSliderWidget": "QSlider",
}
#: Classes whose widgets the user operates (each must be bound to a parameter or used by the Widget).
INTERACTIVE = {"QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QCheckBox", "QLineEdit",
               "qMRMLNodeComboBox", "ctkPathLineEdit", "ctkSliderWidget"}


def _ui_tree() -> ET.ElementTree:
    return ET.parse(UI_PATH)


def _qt_ready_ui() -> tuple[bytes, dict]:
    """The .ui with stand-ins for Slicer classes; returns (xml bytes, {name: original class})."""
    tree = _ui_tree()
    root = tree.getroot()
    classes = {}
    for widget in root.iter("widget"):
        original = widget.get("class")
        classes[widget.get("name")] = original
        if original in STAND_INS:
            widget.set("class", STAND_INS[original])
            if original == "ctkCollapsibleButton":
                for prop in widget.findall("property"):
                    if prop.get("name") == "text":
                        prop.set("name", "title")
                    elif prop.get("name") == "collapsed":
                        widget.remove(prop)
            else:  # properties of the Slicer class that the stand-in lacks
                keep = {"toolTip", "enabled", "geometry", "minimum", "maximum", "value", "singleStep"}
                for prop in widget.findall("property"):
                    if prop.get("stdset") != "0" and prop.get("name") not in keep:
                        widget.remove(prop)
                if original == "ctkSliderWidget":
                    for prop in widget.findall("property"):  # QSlider is integer: show 0..100
                        if prop.get("name") in ("minimum", "maximum", "value", "singleStep"):
                            widget.remove(prop)
                    orientation = ET.SubElement(widget, "property", {"name": "orientation"})
                    ET.SubElement(orientation, "enum").text = "Qt::Horizontal"
    for tag in ("customwidgets", "connections"):
        for element in root.findall(tag):
            root.remove(element)
    return ET.tostring(root), classes


def _offscreen_qt_works() -> str:
    """'' when a QApplication starts on the offscreen platform (probed in a child: a missing system
    library makes Qt abort the process), else the reason."""
    import subprocess
    import sys
    probe = "from PySide6.QtWidgets import QApplication; QApplication(['probe', '-platform', 'offscreen'])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["exit code %d" % result.returncode])[-1]


@pytest.fixture(scope="module")
def app():
    if QtWidgets.QApplication.instance() is None:
        reason = _offscreen_qt_works()
        if reason:
            message = f"Qt offscreen platform does not start ({reason}); run scripts/setup.sh"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
    instance = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["test_ui_layout", "-platform", "offscreen"])
    yield instance


@pytest.fixture(scope="module")
def loaded(app):
    """(panel widget, Qt messages while loading, {name: original class})."""
    data, classes = _qt_ready_ui()
    messages: list[str] = []

    def handler(mode, context, message):
        messages.append(message)

    previous = QtCore.qInstallMessageHandler(handler)
    try:
        buffer = QtCore.QBuffer()
        buffer.setData(QtCore.QByteArray(data))
        buffer.open(QtCore.QIODevice.ReadOnly)
        loader = QtUiTools.QUiLoader()
        panel = loader.load(buffer)
        error = loader.errorString()
    finally:
        QtCore.qInstallMessageHandler(previous)
    assert panel is not None, f"QUiLoader could not load {UI_PATH.name}: {error}"
    panel.resize(420, 1400)
    panel.show()
    app.processEvents()
    panel.layout().activate()
    yield panel, messages, classes
    panel.close()
    panel.deleteLater()


def test_every_class_is_a_slicer_class_or_a_qt_class():
    unknown = sorted({w.get("class") for w in _ui_tree().getroot().iter("widget")
                      if w.get("class") not in STAND_INS and not hasattr(QtWidgets, w.get("class"))})
    assert not unknown, f"unknown widget classes in the .ui: {unknown}"
    layouts = sorted({l.get("class") for l in _ui_tree().getroot().iter("layout")
                      if not hasattr(QtWidgets, l.get("class"))})
    assert not layouts, f"unknown layout classes: {layouts}"


def test_loads_without_layout_warnings(loaded):
    panel, messages, _ = loaded
    bad = [m for m in messages if "already occupied" in m or "unknown" in m.lower() or "cannot create" in m.lower()]
    assert not bad, "\n".join(bad)


def test_no_two_items_claim_one_form_cell():
    """The XML itself: (row, column span) of every item of a QFormLayout/QGridLayout is unique."""
    for layout in _ui_tree().getroot().iter("layout"):
        if layout.get("class") not in ("QFormLayout", "QGridLayout"):
            continue
        taken: dict = {}
        for item in layout.findall("item"):
            row = int(item.get("row"))
            columns = range(int(item.get("column")), int(item.get("column")) + int(item.get("colspan", 1)))
            for column in columns:
                child = item.find("widget")
                name = child.get("name") if child is not None else "(layout/spacer)"
                assert (row, column) not in taken, (f"{layout.get('name')}: cell ({row}, {column}) holds both "
                                                    f"{taken[(row, column)]} and {name}")
                taken[(row, column)] = name


def test_every_widget_is_held_by_its_parents_layout(loaded):
    panel, _, classes = loaded
    for name in classes:
        if name == panel.objectName():
            continue
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, f"{name} was not created"
        parent = widget.parentWidget()
        assert parent is not None and parent.layout() is not None, name
        assert parent.layout().indexOf(widget) >= 0, f"{name} is not in its parent's layout (it floats at {widget.geometry()})"


def test_rows_of_each_section_do_not_overlap(loaded):
    panel, _, classes = loaded
    for section in panel.findChildren(QtWidgets.QGroupBox):
        layout = section.layout()
        boxes = []
        for i in range(layout.count()):
            w = layout.itemAt(i).widget()
            if w is not None and w.isVisible():
                boxes.append((w.objectName(), w.geometry()))
        assert boxes, section.objectName()
        for i, (a, ra) in enumerate(boxes):
            assert ra.top() >= section.contentsRect().top() or ra.height() == 0, a
            for b, rb in boxes[i + 1:]:
                assert not ra.intersects(rb), f"{a} {ra} overlaps {b} {rb} in {section.objectName()}"


def test_widget_code_and_ui_agree():
    """Every self.ui.NAME exists; every interactive widget is bound to a parameter or used by the Widget."""
    _, classes = _qt_ready_ui()
    code = WIDGET_PATH.read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used, "the Widget uses no self.ui names?"
    missing = sorted(used - set(classes))
    assert not missing, f"used by widget.py but not in the .ui: {missing}"
    bound = set()
    for widget in _ui_tree().getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.add(widget.get("name"))
    manual = set(re.findall(r'"(\w+)": "\w+"', re.search(r"PATH_BINDINGS = \{(.*?)\}", code, re.S).group(1)))
    assert manual and manual <= set(classes)
    unused = sorted(n for n, c in classes.items() if c in INTERACTIVE and n not in used | bound | manual)
    assert not unused, f"interactive widgets in the .ui that nothing uses: {unused}"


def test_writes_a_png_of_the_panel(loaded, tmp_path):
    panel, _, _ = loaded
    path = tmp_path / "CGCLesionSeg-panel.png"
    assert panel.grab().save(str(path))
    image = QtWidgets.QApplication.instance() and __import__("PySide6.QtGui", fromlist=["QImage"]).QImage(str(path))
    assert image.width() >= 400 and image.height() >= 600
    # The Segment button is drawn inside the Segment section, below its header, not at the panel's top.
    button = panel.findChild(QtWidgets.QPushButton, "segmentButton")
    section = panel.findChild(QtWidgets.QGroupBox, "segmentCollapsibleButton")
    top_left = button.mapTo(panel, QtCore.QPoint(0, 0))
    section_top = section.mapTo(panel, QtCore.QPoint(0, 0)).y()
    assert top_left.y() > section_top + 10, (top_left.y(), section_top)
    print(f"panel image: {path}")


def test_output_rule_combo_lists_the_rules_the_cli_accepts():
    """Slicer's Choice connector refills the combo from OUTPUT_RULES; the .ui's own items (what Designer and
    the panel PNG show) must be the same list in the same order, so the two cannot drift apart."""
    from CGCLesionSegLib.commands import OUTPUT_RULES
    combo = next(w for w in _ui_tree().getroot().iter("widget") if w.get("name") == "outputRuleComboBox")
    items = [i.find("property/string").text for i in combo.findall("item")]
    assert items == list(OUTPUT_RULES)


def test_training_recipe_combo_lists_the_recipes_the_cli_accepts():
    """The Train section's recipe combo, the parameter's Choice list and `python -m CGCTraining --recipe` agree."""
    from CGCLesionSegSlicer.constants import TRAINING_RECIPES
    from CGCTraining.config import RECIPES
    combo = next(w for w in _ui_tree().getroot().iter("widget") if w.get("name") == "trainingRecipeComboBox")
    items = [i.find("property/string").text for i in combo.findall("item")]
    assert items == list(TRAINING_RECIPES) and set(TRAINING_RECIPES) == set(RECIPES)
    bound = [p.find("string").text for p in combo.findall("property") if p.get("name") == "SlicerParameterName"]
    assert bound == ["trainingRecipe"]
