"""The one test-support file for the Slicer glue tests: the application wiring slicer-core lacks.

``pip install slicer-core`` gives the real MRML library (scene, nodes, storage nodes, module logics,
``slicer.util``) but not the Slicer application. Exactly these stand-ins are provided here, and
nothing else (see docs DESIGN.md, "Where Slicer stops"):

- ``qt`` and ``ctk``: empty modules, so that the module file imports (only its Widget uses them,
  and the Widget is not exercised here);
- ``slicer.ScriptedLoadableModule``: the four base classes, with the application's behaviour where
  the Logic relies on it (``getParameterNode`` returns the scene's singleton
  vtkMRMLScriptedModuleNode, as in Slicer);
- ``slicer.parameterNodeWrapper`` when slicer-core does not ship it: a small wrapper that stores
  values as parameters and node references of the real parameter node;
- ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``: a **real** vtkMRMLScene, fresh for
  every test, and **real** module logic objects connected to it (application logic, colours,
  volumes, segmentations, terminologies, and this module's own Logic).

MRML nodes, storage nodes and ``slicer.util`` are never replaced: a mocked ``saveNode`` would
"succeed" and write nothing.
"""
from __future__ import annotations

import importlib
import json
import logging
import pathlib
import sys
import types
import typing
import unittest
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _import_real_slicer():
    """Import slicer-core's ``slicer`` package without picking up this folder as part of it.

    ``slicer/__init__.py`` extends its ``__path__`` with every ``<sys.path entry>/slicer`` folder
    and imports all modules found there. pytest puts ``Testing/`` on sys.path (for its conftest),
    which makes this test folder, also named ``slicer``, look like a portion of the package; hide
    such entries while the package initialises.
    """
    if "slicer" in sys.modules:
        module = sys.modules["slicer"]
        if str(HERE) in list(getattr(module, "__path__", [])):
            raise RuntimeError(f"'slicer' was imported with {HERE} on its path; import slicer-core first")
        return module
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if Path(p or ".").resolve() / "slicer" != HERE]
    try:
        return pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    finally:
        sys.path[:] = saved


slicer = _import_real_slicer()
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "CGCLesionSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


# --------------------------------------------------------------------------------------------
# qt / ctk: the Widget's toolkits do not exist without the application.

def _install_empty_module(name: str) -> None:
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        module = types.ModuleType(name, f"stand-in for {name}: no Qt under slicer-core (Widget not testable here)")
        sys.modules[name] = module


_install_empty_module("qt")
_install_empty_module("ctk")


# --------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule: base classes of scripted modules.

def _install_scripted_loadable_module() -> None:
    if hasattr(slicer, "ScriptedLoadableModule"):
        return
    module = types.ModuleType("slicer.ScriptedLoadableModule", "stand-in base classes of scripted modules")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            self.moduleName = self.__class__.__name__
            for attr, value in (("title", ""), ("categories", []), ("dependencies", []), ("contributors", []),
                                ("helpText", ""), ("acknowledgementText", "")):
                setattr(parent, attr, value)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent
            self.moduleName = self.__class__.__name__[: -len("Widget")]

        def resourcePath(self, filename: str) -> str:
            return str(MODULE_DIR / "Resources" / filename)

        def setup(self) -> None:
            raise RuntimeError("the Widget needs Qt, which slicer-core does not provide")

    class ScriptedLoadableModuleLogic:
        """As in Slicer: the parameter node is the scene's singleton vtkMRMLScriptedModuleNode."""

        def __init__(self, parent=None) -> None:
            name = self.__class__.__name__
            self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            scene = slicer.mrmlScene
            if self.isSingletonParameterNode:
                node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node:
                    return node
            node = self.createParameterNode()
            return scene.AddNode(node)

        def createParameterNode(self):
            node = slicer.vtkMRMLScriptedModuleNode()
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int | None = None) -> None:
            logging.info(message)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    sys.modules[module.__name__] = module
    slicer.ScriptedLoadableModule = module


_install_scripted_loadable_module()


# --------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper (only when slicer-core lacks it): values live in the real node.

def _install_parameter_node_wrapper() -> None:
    try:
        importlib.import_module("slicer.parameterNodeWrapper")
        return
    except Exception:  # absent, or present but needing the Qt that slicer-core lacks
        sys.modules.pop("slicer.parameterNodeWrapper", None)
    module = types.ModuleType("slicer.parameterNodeWrapper", "stand-in for Slicer's parameterNodeWrapper")

    class _Validator:
        def validate(self, value) -> None:  # pragma: no cover - overridden
            pass

    class WithinRange(_Validator):
        def __init__(self, minimum, maximum) -> None:
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value) -> None:
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"value {value} is not within [{self.minimum}, {self.maximum}]")

    class Minimum(_Validator):
        def __init__(self, minimum) -> None:
            self.minimum = minimum

        def validate(self, value) -> None:
            if value < self.minimum:
                raise ValueError(f"value {value} is below {self.minimum}")

    class Maximum(_Validator):
        def __init__(self, maximum) -> None:
            self.maximum = maximum

        def validate(self, value) -> None:
            if value > self.maximum:
                raise ValueError(f"value {value} is above {self.maximum}")

    class Choice(_Validator):
        def __init__(self, choices) -> None:
            self.choices = list(choices)

        def validate(self, value) -> None:
            if value not in self.choices:
                raise ValueError(f"value {value!r} is not one of {self.choices}")

    class Default:
        def __init__(self, value) -> None:
            self.value = value

    _missing = object()

    def _is_node_type(t) -> bool:
        return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)

    def _encode(t, value) -> str:
        if t is bool:
            return "true" if value else "false"
        if t in (int, float, str):
            return json.dumps(t(value))
        if isinstance(t, type) and issubclass(t, pathlib.PurePath):
            return str(value)
        return json.dumps(value)

    def _decode(t, text: str):
        if t is bool:
            return text == "true"
        if t in (int, float, str):
            return t(json.loads(text))
        if isinstance(t, type) and issubclass(t, pathlib.PurePath):
            return t(text)
        return json.loads(text)

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {}
        for name, hint in hints.items():
            base, meta = hint, ()
            if typing.get_origin(hint) is typing.Annotated:
                base, *meta = typing.get_args(hint)
            validators = [m for m in meta if isinstance(m, _Validator)]
            default = cls.__dict__.get(name, _missing)
            for m in meta:
                if isinstance(m, Default):
                    default = m.value
            if default is _missing:
                default = None if _is_node_type(base) else base()
            fields[name] = (base, validators, default)

        def __init__(self, parameterNode) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            for name, (base, _, default) in fields.items():
                if not _is_node_type(base) and not parameterNode.HasParameter(name):
                    parameterNode.SetParameter(name, _encode(base, default))

        def __getattr__(self, name):
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            base = fields[name][0]
            if _is_node_type(base):
                return self.parameterNode.GetNodeReference(name)
            return _decode(base, self.parameterNode.GetParameter(name))

        def __setattr__(self, name, value) -> None:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            base, validators, _ = fields[name]
            if _is_node_type(base):
                if value is not None and not isinstance(value, base):
                    raise TypeError(f"{name} needs a {base.__name__}, got {value.GetClassName()}")
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            for v in validators:
                v.validate(value)
            self.parameterNode.SetParameter(name, _encode(base, value))

        def connectGui(self, gui):
            raise RuntimeError("connectGui needs Qt, which slicer-core does not provide")

        def disconnectGui(self, tag) -> None:
            pass

        wrapper = type(cls.__name__, (), {"__init__": __init__, "__getattr__": __getattr__,
                                          "__setattr__": __setattr__, "connectGui": connectGui,
                                          "disconnectGui": disconnectGui, "__doc__": cls.__doc__,
                                          "allParameters": dict(fields), "__module__": cls.__module__})
        return wrapper

    for obj in (WithinRange, Minimum, Maximum, Choice, Default, parameterNodeWrapper):
        setattr(module, obj.__name__, obj)
    sys.modules[module.__name__] = module
    slicer.parameterNodeWrapper = module


_install_parameter_node_wrapper()


# --------------------------------------------------------------------------------------------
# slicer.mrmlScene and slicer.modules.<name>.logic(): a real scene and real logics, per test.

class _ModuleEntry:
    """What ``slicer.modules.<name>`` offers the code under test: ``logic()``."""

    def __init__(self, logic) -> None:
        self._logic = logic

    def logic(self):
        return self._logic


def _wire_application() -> dict:
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app_logic)
    colors.SetMRMLScene(scene)
    app_logic.SetColorLogic(colors)
    app_logic.SetModuleLogic("Colors", colors)
    logics = {"colors": colors}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name.lower()] = logic
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{name: _ModuleEntry(logic) for name, logic in logics.items()})
    import CGCLesionSeg  # after the stand-ins exist
    module_logic = CGCLesionSeg.CGCLesionSegLogic()
    slicer.modules.cgclesionseg = _ModuleEntry(module_logic)
    return {"scene": scene, "app_logic": app_logic, "logics": logics, "module_logic": module_logic}


@pytest.fixture
def mrml():
    """A fresh, real MRML scene wired as in the application; yields the wiring dict."""
    wiring = _wire_application()
    try:
        yield wiring
    finally:
        wiring["scene"].Clear(1)
        for attr in ("mrmlScene", "modules"):
            if hasattr(slicer, attr):
                delattr(slicer, attr)


@pytest.fixture
def scene(mrml):
    return mrml["scene"]


@pytest.fixture
def logic(mrml):
    """The module's real Logic (``slicer.modules.cgclesionseg.logic()``)."""
    return slicer.modules.cgclesionseg.logic()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """An untrained one-channel CGC network: enough to run the whole Segment path quickly."""
    torch = pytest.importorskip("torch")
    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.network import CGCNet, NetConfig
    torch.manual_seed(0)
    config = NetConfig(in_channels=1)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, CGCNet(config), config, ["flair"], {})
    return str(path)
