"""Every module of the core (CGCLesionSegLib) and of CGCTraining imports without Slicer.

Each module is imported in a fresh subprocess in which ``slicer``, ``qt``, ``ctk`` and ``vtk`` (and
``vtkmodules``, what ``vtk`` is made of) cannot be imported: a meta-path finder placed first on
``sys.meta_path`` raises ImportError for them. Modules are discovered by walking the folders, so
files added later are covered without editing this test.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"CGCLesionSegLib": REPO_ROOT / "CGCLesionSeg" / "CGCLesionSegLib",
            "CGCTraining": REPO_ROOT / "CGCTraining"}
BLOCKED = ("slicer", "qt", "ctk", "vtk", "vtkmodules")


def discover_modules() -> list[str]:
    """Dotted names of every package and module under the two package folders."""
    names = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [package, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


CHILD = r"""
import importlib, importlib.abc, json, sys, traceback
BLOCKED = set(json.loads(sys.argv[1]))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked by test_core_imports: {fullname}")
        return None

sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
failures = {}
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=6)
leaked = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
print(json.dumps({"failures": failures, "leaked": leaked}))
"""


def test_discovery_finds_the_known_modules():
    names = discover_modules()
    for expected in ("CGCLesionSegLib", "CGCLesionSegLib.image_io", "CGCLesionSegLib.cli",
                     "CGCLesionSegLib.commands", "CGCLesionSegLib.commands.segment", "CGCTraining",
                     "CGCTraining.__main__"):
        assert expected in names
    assert not [n for n in names if n.startswith("CGCLesionSeg.")]  # the Slicer module itself is glue


def test_blocker_really_blocks():
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(BLOCKED), json.dumps(["vtk", "json"])],
                         capture_output=True, text=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(result["failures"]) == ["vtk"]
    assert "blocked by test_core_imports" in result["failures"]["vtk"]


def test_core_and_training_import_without_slicer_qt_ctk_vtk():
    names = discover_modules()
    paths = [str(REPO_ROOT / "CGCLesionSeg"), str(REPO_ROOT)]
    env_code = "import sys; sys.path[:0] = " + json.dumps(paths) + "\n" + CHILD
    out = subprocess.run([sys.executable, "-c", env_code, json.dumps(BLOCKED), json.dumps(names)],
                         capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["failures"]:
        pytest.fail("modules that need Slicer/Qt/VTK or fail to import:\n" +
                    "\n".join(f"--- {n}\n{tb}" for n, tb in result["failures"].items()))
    assert result["leaked"] == []
