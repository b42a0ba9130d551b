"""CGC Lesion Seg: the 3D Slicer scripted module (Module, parameter node, Widget, Logic, Test).

The module is glue between MRML nodes and the Slicer-free core ``CGCLesionSegLib``:

- the Logic turns volume nodes into ``(z, y, x)`` numpy arrays with their :class:`Geometry` and
  binary arrays back into segmentation nodes; it runs the GMM preview in-process and launches
  network inference and training as child processes (``PythonSlicer -m ...``) that report progress
  as JSON lines; it exports segmentations through real storage nodes;
- the Widget binds the ``.ui`` to a ``@parameterNodeWrapper`` parameter node and calls the Logic.

The Logic never touches ``slicer.app``, never opens dialogs and never calls
``slicer.util.loadVolume``/``saveNode``: it uses ``slicer.mrmlScene``, module logics and storage
nodes only, so it runs under the ``slicer-core`` wheel in CI as it does inside Slicer.

Research use only, not for clinical diagnosis.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional, Sequence

import numpy as np
import qt  # noqa: F401  (Widget only)
import ctk  # noqa: F401  (Widget only)
import vtk
import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:  # CGCLesionSegLib lives beside this file
    sys.path.insert(0, MODULE_DIR)

from CGCLesionSegLib.image_io import Geometry, check_same_grid  # noqa: E402  (numpy + SimpleITK only)
from CGCLesionSegLib.commands import OUTPUT_RULES  # noqa: E402  (argparse only)

RESEARCH_NOTICE = ("Research use only. CGC Lesion Seg is not a medical device and must not be used for "
                   "clinical diagnosis or treatment decisions.")

#: Modalities in the documented input order (the first present one is the reference channel).
MODALITIES = ("flair", "t1", "t1ce", "t2")

#: Segment appearance: DICOM / SNOMED-CT coded terminology and a colour that reads well on MRI.
LESION_COLOR = (0.96, 0.36, 0.14)
LESION_TERMINOLOGY = {
    "context": "Segmentation category and type - DICOM master list",
    "category": ("SCT", "49755003", "Morphologically Altered Structure"),
    "type": ("SCT", "52988006", "Lesion"),
}


#
# CGCLesionSeg
#

class CGCLesionSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CGC Lesion Seg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["CGC Lesion Seg developers"]
        self.parent.helpText = f"""
<p><b>{RESEARCH_NOTICE}</b></p>
<p>Unsupervised lesion segmentation of brain MRI (FLAIR, T1, T1ce, T2) or head CT.
Select 1&ndash;4 co-registered volumes, tune the Gaussian mixture model until its foreground
probability map covers the lesion (<b>Preview</b>), then click <b>Segment</b>: a cross-granularity
contrastive (CGC) network refines the map into a segmentation that the Segment Editor can edit and
that can be exported as <code>.seg.nrrd</code> or a NIfTI labelmap. The network is trained without
labels, on your own cohort, from the <b>Train</b> section or on the command line
(<code>python -m CGCTraining</code>).</p>
<p>Inference and training run as separate processes: Slicer stays responsive and <b>Cancel</b>
stops them and frees GPU memory. Volumes under a transform must be hardened first.</p>
"""
        self.parent.acknowledgementText = f"""
<p>{RESEARCH_NOTICE}</p>
<p>Method: unsupervised lesion segmentation with a GMM-derived foreground map and a 3-D CNN
trained with coarse- and fine-granularity contrastive losses (see the extension's README for the
paper reference). Built on 3D Slicer, SimpleITK, NumPy and PyTorch. Licensed under Apache-2.0.</p>
"""


#
# Parameter node
#

@parameterNodeWrapper
class CGCLesionSegParameterNode:
    """All user choices of the module, stored in the scene (saved and restored with it).

    Inputs: up to four co-registered volumes by modality and an optional brain mask; for CT the
    first slot holds the CT (in HU) and ``modality`` is "ct".
    GMM: which channels enter it ("reference" = the first volume only, as in the paper, or "all"),
    the number of clusters, how many of them are lesion (highest reference mean), or an explicit
    list of lesion labels (1-based, as shown in the components labelmap).
    Segment: model file (empty = the model shipped for these modalities), threshold, output rule
    (``cgcseg segment --postprocess``: auto, none, single-lesion), device.
    Train: cohort folder (BraTS layout), run folder, epochs and an optional time limit.
    """

    flairVolume: vtkMRMLScalarVolumeNode
    t1Volume: vtkMRMLScalarVolumeNode
    t1ceVolume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    maskVolume: vtkMRMLScalarVolumeNode  # labelmaps are scalar volumes too

    modality: Annotated[str, Choice(["mri", "ct"])] = "mri"
    gmmChannels: Annotated[str, Choice(["reference", "all"])] = "reference"
    numberOfClusters: Annotated[int, WithinRange(2, 10)] = 4
    numberOfForegroundClusters: Annotated[int, WithinRange(1, 9)] = 1
    foregroundComponents: str = ""
    autoUpdatePreview: bool = True
    probabilityVolume: vtkMRMLScalarVolumeNode
    componentsVolume: vtkMRMLLabelMapVolumeNode

    modelPath: pathlib.Path
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    outputRule: Annotated[str, Choice(list(OUTPUT_RULES))] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode

    trainingCasesFolder: pathlib.Path
    trainingOutputFolder: pathlib.Path
    trainingEpochs: Annotated[int, WithinRange(1, 100000)] = 400
    trainingMaxMinutes: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0


def _pathOrNone(value: Any) -> Optional[str]:
    """A parameter-node path, or None when unset (``pathlib.Path()`` is ``"."``)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else text


#
# CGCLesionSegWidget
#

class CGCLesionSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: binds the .ui to the parameter node and forwards button clicks to the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: "Optional[CGCLesionSegLogic]" = None
        self._parameterNode: Optional[CGCLesionSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._job: "Optional[ChildJob]" = None
        self._previewTimer = None
        self._pollTimer = None
        self._lastPreviewKey = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CGCLesionSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.noticeLabel.text = RESEARCH_NOTICE

        self.logic = CGCLesionSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.exportSegNrrdButton.connect("clicked(bool)", lambda: self.onExport("seg.nrrd"))
        self.ui.exportNiftiButton.connect("clicked(bool)", lambda: self.onExport("nii.gz"))

        # Debounced live preview: refit 600 ms after the last GMM setting changed.
        self._previewTimer = qt.QTimer()
        self._previewTimer.setSingleShot(True)
        self._previewTimer.setInterval(600)
        self._previewTimer.connect("timeout()", self.onPreview)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.process.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.flairVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.flairVolume = first

    def setParameterNode(self, inputParameterNode: Optional[CGCLesionSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.updateButtons()

    def _previewKey(self) -> tuple:
        """What the GMM preview depends on; a refit is scheduled only when this changes."""
        p = self._parameterNode
        volumes = tuple((name, node.GetID()) for name, node in self.logic.inputVolumesByName(p).items())
        return (volumes, p.maskVolume.GetID() if p.maskVolume else None, p.modality, p.gmmChannels,
                p.numberOfClusters, p.numberOfForegroundClusters, p.foregroundComponents)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtons()
        p = self._parameterNode
        # Writing the preview's output nodes modifies the parameter node too: compare keys, not events.
        if (p and p.autoUpdatePreview and p.probabilityVolume and self._job is None
                and self._lastPreviewKey is not None and self._previewKey() != self._lastPreviewKey):
            self._previewTimer.start()

    def ensurePythonDependencies(self, needTorch: bool) -> bool:
        """Offer to install what the core needs into Slicer's Python (GUI only; the Logic never asks)."""
        import importlib.util
        missing = [name for name in ("scipy", "tqdm") if importlib.util.find_spec(name) is None]
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    f"CGC Lesion Seg needs the Python package(s) {', '.join(missing)}. Install them now?"):
                return False
            with slicer.util.WaitCursor():
                slicer.util.pip_install(" ".join(missing))
        if needTorch and importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils  # the PyTorch extension picks the build that matches the GPU driver
            except ImportError:
                if not slicer.util.confirmOkCancelDisplay("PyTorch is needed. Install it now with pip "
                                                          "(CPU/GPU build chosen by pip)?"):
                    return False
                with slicer.util.WaitCursor():
                    slicer.util.pip_install("torch")
            else:
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                    return False
        return True

    def updateButtons(self) -> None:
        p = self._parameterNode
        busy = self._job is not None
        hasInput = bool(p and self.logic.inputVolumesByName(p))
        self.ui.previewButton.enabled = hasInput and not busy
        self.ui.segmentButton.enabled = hasInput and not busy
        self.ui.trainButton.enabled = bool(p and _pathOrNone(p.trainingCasesFolder)
                                           and _pathOrNone(p.trainingOutputFolder)) and not busy
        self.ui.cancelButton.enabled = busy
        hasSeg = bool(p and p.outputSegmentation)
        self.ui.exportSegNrrdButton.enabled = hasSeg
        self.ui.exportNiftiButton.enabled = hasSeg

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onPreview(self) -> None:
        p = self._parameterNode
        if not self.ensurePythonDependencies(needTorch=False):
            return
        self._lastPreviewKey = self._previewKey()
        with slicer.util.tryWithErrorDisplay("GMM preview failed.", waitCursor=True):
            volumes = self.logic.inputVolumesByName(p)
            config = self.logic.gmmConfigFromParameters(p)
            probability, components = self.logic.computeProbabilityMap(
                volumes, p.maskVolume, config,
                probabilityNode=p.probabilityVolume, componentsNode=p.componentsVolume)
            p.probabilityVolume = probability
            p.componentsVolume = components
            slicer.util.setSliceViewerLayers(background=next(iter(volumes.values())), foreground=probability,
                                             label=components, foregroundOpacity=0.5)

    def onSegment(self) -> None:
        p = self._parameterNode
        if not self.ensurePythonDependencies(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Could not start segmentation.", waitCursor=True):
            job = self.logic.prepareSegmentJob(self.logic.namedInputs(p), maskNode=p.maskVolume,
                                               modelPath=_pathOrNone(p.modelPath), threshold=p.threshold,
                                               device=p.device, postprocess=p.outputRule)
            self._startJob(job, "Segmenting")

    def onTrain(self) -> None:
        p = self._parameterNode
        if not self.ensurePythonDependencies(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Could not start training."):
            command = self.logic.buildTrainCommand(
                _pathOrNone(p.trainingCasesFolder), _pathOrNone(p.trainingOutputFolder),
                modalities=list(self.logic.namedInputs(p).keys()) or list(MODALITIES),
                epochs=p.trainingEpochs, maxMinutes=p.trainingMaxMinutes or None, device=p.device)
            self._startJob(ChildJob(command=command, env=self.logic.childEnvironment(), kind="train"), "Training")

    def _startJob(self, job: "ChildJob", title: str) -> None:
        self.log(f"{title}: {subprocess.list2cmdline(job.command)}")
        job.process = ChildProcess(job.command, env=job.env)
        job.process.start()
        self._job = job
        self.ui.progressBar.value = 0
        self.ui.progressBar.setFormat(f"{title} %p%")
        self._pollTimer.start()
        self.updateButtons()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        for kind, payload in job.process.poll():
            if kind == "progress":
                self.ui.progressBar.value = int(round(100 * payload["fraction"]))
                if payload.get("message"):
                    self.ui.statusLabel.text = payload["message"]
            elif kind in ("log", "event"):
                self.log(payload if isinstance(payload, str) else json.dumps(payload))
        if not job.process.finished:
            return
        self._pollTimer.stop()
        self._job = None
        try:
            if job.process.cancelled:
                self.log("Cancelled; the scene is unchanged.")
            elif job.process.returncode != 0:
                slicer.util.errorDisplay(f"The {job.kind} process failed (exit code {job.process.returncode}):\n"
                                         + job.process.errorSummary())
            elif job.kind == "segment":
                p = self._parameterNode
                segmentation = self.logic.finishSegmentJob(job, segmentationNode=p.outputSegmentation,
                                                           loadProbability=True)
                p.outputSegmentation = segmentation
                self.log("Segmentation done.")
            else:
                self.log("Training finished.")
        except Exception as exc:  # a failed read-back leaves the scene as it was
            slicer.util.errorDisplay(f"Could not load the result: {exc}")
        finally:
            self.logic.cleanupJob(job)
            self.ui.progressBar.value = 100 if job.process.returncode == 0 else 0
            self.updateButtons()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.process.cancel()

    def onExport(self, kind: str) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation
        filters = "Segmentation (*.seg.nrrd)" if kind == "seg.nrrd" else "NIfTI labelmap (*.nii.gz)"
        path = qt.QFileDialog.getSaveFileName(None, "Export segmentation", f"{segmentation.GetName()}.{kind}", filters)
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            if kind == "seg.nrrd":
                self.logic.exportSegmentation(segmentation, path)
            else:
                reference = next(iter(self.logic.inputVolumesByName(p).values()), None)
                self.logic.exportLabelmap(segmentation, path, referenceVolumeNode=reference)
            self.log(f"Exported {path}")


#
# Child processes (inference, training)
#

def parseProgressLine(line: str) -> Optional[dict]:
    """Parse one stdout line of a child process into an event dict, or None for plain text.

    Children print one JSON object per line, e.g. ``{"event": "progress", "fraction": 0.42,
    "message": "window 12/30"}``. Anything that is not a JSON object with a string ``"event"`` is
    log text. For ``progress`` events ``fraction`` is coerced to a float clamped to [0, 1] (a
    missing or non-numeric fraction makes the line log text) and ``message`` defaults to "".
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    if record["event"] == "progress":
        try:
            fraction = float(record.get("fraction"))
        except (TypeError, ValueError):
            return None
        if fraction != fraction:  # NaN
            return None
        record["fraction"] = min(max(fraction, 0.0), 1.0)
        record["message"] = str(record.get("message", "") or "")
    return record


def killProcessTree(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a child started by :class:`ChildProcess` and all its descendants.

    POSIX: the child leads its own session, so its process group holds every grandchild (data
    loader workers, torchrun ranks); SIGTERM, then SIGKILL after ``timeout`` seconds.
    Windows: ``taskkill /T /F`` kills the tree.
    """
    if process.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
    else:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ChildProcess:
    """A child process whose stdout JSON lines become events; never blocks the caller.

    Reader threads fill a queue; :meth:`poll` (called from a GUI timer or a loop) returns the
    events received so far as ``(kind, payload)`` with kind ``"progress"`` (payload: the event dict),
    ``"event"`` (other JSON events) or ``"log"`` (payload: a text line, stderr included).
    """

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> None:
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.process: Optional[subprocess.Popen] = None
        self.cancelled = False
        self._events: deque = deque()
        self._stderrTail: deque = deque(maxlen=20)
        self._threads: list[threading.Thread] = []
        self._exitedAt: Optional[float] = None
        self.lastProgress: Optional[dict] = None

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                        text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)
        for stream, isStderr in ((self.process.stdout, False), (self.process.stderr, True)):
            t = threading.Thread(target=self._read, args=(stream, isStderr), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, stream, isStderr: bool) -> None:
        for line in iter(stream.readline, ""):
            line = line.rstrip("\r\n")
            if isStderr:
                if line.strip():
                    self._stderrTail.append(line)
                self._events.append(("log", line))
                continue
            record = parseProgressLine(line)
            if record is None:
                self._events.append(("log", line))
            elif record["event"] == "progress":
                self.lastProgress = record
                self._events.append(("progress", record))
            else:
                self._events.append(("event", record))
        stream.close()

    def poll(self) -> list[tuple[str, Any]]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    @property
    def finished(self) -> bool:
        """True once the process exited and both output streams were read to the end.

        A leftover grandchild that keeps the pipes open (e.g. an orphaned data-loader worker) is
        killed 2 s after the child exited, so a finished job never hangs the GUI.
        """
        if self.process is None or self.process.poll() is None:
            return False
        if not any(t.is_alive() for t in self._threads):
            return True
        if self._exitedAt is None:
            self._exitedAt = time.monotonic()
        elif time.monotonic() - self._exitedAt > 2.0:
            if os.name != "nt":
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for t in self._threads:
                t.join(timeout=1.0)
            return True
        return False

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def errorSummary(self) -> str:
        """The last lines the child wrote on stderr (its ``error:`` line comes last)."""
        return "\n".join(self._stderrTail) or "(no error output)"

    def cancel(self) -> None:
        """Kill the whole process tree (frees GPU memory held by the child)."""
        self.cancelled = True
        if self.process is not None:
            killProcessTree(self.process)

    def wait(self, onProgress: Optional[Callable[[float, str], None]] = None,
             onLog: Optional[Callable[[str], None]] = None,
             shouldStop: Optional[Callable[[], bool]] = None, interval: float = 0.05) -> int:
        """Block until the child ends, forwarding events; ``shouldStop()`` → cancel. Returns the exit code."""
        while True:
            for kind, payload in self.poll():
                if kind == "progress" and onProgress:
                    onProgress(payload["fraction"], payload["message"])
                elif kind == "log" and onLog:
                    onLog(payload)
                elif kind == "event" and onLog:
                    onLog(json.dumps(payload))
            if self.finished:
                for kind, payload in self.poll():
                    if kind == "log" and onLog:
                        onLog(payload)
                return self.returncode
            if shouldStop is not None and not self.cancelled and shouldStop():
                self.cancel()
            time.sleep(interval)


@dataclass
class ChildJob:
    """A prepared child-process job: the command, its environment and where its files go."""

    command: list
    env: dict
    kind: str = "segment"
    tempDir: Optional[str] = None
    outputPath: Optional[str] = None
    probabilityOutputPath: Optional[str] = None
    referenceVolumeNode: Any = None
    segmentName: str = "Lesion"
    process: Optional[ChildProcess] = None
    extra: dict = field(default_factory=dict)


class CancelledError(RuntimeError):
    """The user cancelled a running job; nothing was added to the scene."""


#
# CGCLesionSegLogic
#

class CGCLesionSegLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable without the GUI (headless scripts, tests).

    Arrays returned and accepted here are ``(z, y, x)``, as ``slicer.util.arrayFromVolume`` gives them.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._gmmCache: Optional[dict] = None
        #: Interpreter for child processes; inside Slicer it is PythonSlicer.
        self.pythonExecutable = shutil.which("PythonSlicer") or sys.executable

    def getParameterNode(self) -> CGCLesionSegParameterNode:
        return CGCLesionSegParameterNode(super().getParameterNode())

    # ---- nodes <-> arrays --------------------------------------------------------------------

    @staticmethod
    def _checkNoTransform(volumeNode) -> None:
        transform = volumeNode.GetParentTransformNode()
        if transform is not None:
            kind = "linear" if transform.IsLinear() else "non-linear"
            raise ValueError(
                f"Volume '{volumeNode.GetName()}' is under the {kind} transform '{transform.GetName()}'. "
                "Harden the transform first (Data module: right-click the volume > Harden transform) "
                "or remove it, so that the voxels are where the array says they are.")

    @staticmethod
    def ijkToRasArray(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def volumeToArray(self, volumeNode) -> tuple[np.ndarray, Geometry]:
        """Copy of the voxels as a ``(z, y, x)`` array, and the grid as a core :class:`Geometry` (LPS).

        Raises ValueError for a missing volume, a volume without voxels or one under a transform.
        """
        if volumeNode is None:
            raise ValueError("No volume selected.")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"Volume '{volumeNode.GetName()}' has no voxel data.")
        self._checkNoTransform(volumeNode)
        array = np.copy(slicer.util.arrayFromVolume(volumeNode))  # VTK owns the original buffer
        if array.ndim != 3:
            raise ValueError(f"Volume '{volumeNode.GetName()}' is not a scalar 3-D volume (array shape {array.shape}).")
        return array, Geometry.from_ijk_to_ras_matrix(self.ijkToRasArray(volumeNode), array.shape)

    def _checkArrayFitsVolume(self, array: np.ndarray, volumeNode, what: str) -> None:
        dims = volumeNode.GetImageData().GetDimensions() if volumeNode.GetImageData() else None
        expected = tuple(reversed(dims)) if dims else None
        if expected is None or tuple(array.shape) != expected:
            raise ValueError(f"{what} has shape {tuple(array.shape)} (z, y, x) but volume "
                             f"'{volumeNode.GetName()}' has {expected}.")

    def arrayToVolume(self, array_zyx: np.ndarray, referenceVolumeNode, volumeNode=None, name: str = "",
                      labelmap: bool = False):
        """Write ``array_zyx`` into a (new or given) volume node on the reference volume's grid."""
        self._checkNoTransform(referenceVolumeNode)
        self._checkArrayFitsVolume(array_zyx, referenceVolumeNode, "Array")
        before = self._nodeIds()
        if volumeNode is None:
            className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
            volumeNode = slicer.mrmlScene.AddNewNodeByClass(className, name or className)
        try:
            matrix = vtk.vtkMatrix4x4()
            referenceVolumeNode.GetIJKToRASMatrix(matrix)
            volumeNode.SetIJKToRASMatrix(matrix)
            slicer.util.updateVolumeFromArray(volumeNode, np.ascontiguousarray(array_zyx))
            if volumeNode.GetDisplayNode() is None:
                volumeNode.CreateDefaultDisplayNodes()
        except Exception:
            self._removeNodesAddedSince(before)
            raise
        return volumeNode

    def arrayToSegmentation(self, mask_zyx: np.ndarray, referenceVolumeNode, segmentationNode=None,
                            segmentName: str = "Lesion"):
        """Put a binary ``(z, y, x)`` mask (non-zero = inside) into a named, coloured segment.

        The segment gets the coded terminology "Morphologically Altered Structure" / "Lesion" and
        the reference volume's geometry. An existing segment of that name is replaced; other
        segments are kept. Returns the segmentation node (created when not given).
        """
        if referenceVolumeNode is None:
            raise ValueError("A reference volume is needed to place the segmentation.")
        self._checkNoTransform(referenceVolumeNode)
        mask = np.asarray(mask_zyx)
        self._checkArrayFitsVolume(mask, referenceVolumeNode, "Mask")
        before = self._nodeIds()
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{referenceVolumeNode.GetName()} {segmentName.lower()}")
        try:
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            segmentation = segmentationNode.GetSegmentation()
            segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", segmentName, list(LESION_COLOR))
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*LESION_COLOR)
            if hasattr(segment, "SetTerminology"):
                segment.SetTerminology(self.lesionTerminology())
            else:  # Slicer before 5.8 stores the entry as a plain segment tag
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), self.lesionTerminology())
            slicer.util.updateSegmentBinaryLabelmapFromArray((mask != 0).astype(np.uint8), segmentationNode,
                                                            segmentId, referenceVolumeNode)
        except Exception:
            self._removeNodesAddedSince(before)
            raise
        return segmentationNode

    def segmentationToArray(self, segmentationNode, referenceVolumeNode, segmentName: str = "Lesion") -> np.ndarray:
        """The named segment as a ``(z, y, x)`` uint8 array on the reference volume's grid."""
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
        if not segmentId:
            raise ValueError(f"Segmentation '{segmentationNode.GetName()}' has no segment named '{segmentName}'.")
        return np.asarray(slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId,
                                                                     referenceVolumeNode), dtype=np.uint8)

    @staticmethod
    def lesionTerminology() -> str:
        """The segment's terminology entry, serialized as Slicer stores it in the segment tag."""
        entry = slicer.vtkSlicerTerminologyEntry()
        entry.SetTerminologyContextName(LESION_TERMINOLOGY["context"])
        for obj, (scheme, value, meaning) in ((entry.GetCategoryObject(), LESION_TERMINOLOGY["category"]),
                                              (entry.GetTypeObject(), LESION_TERMINOLOGY["type"])):
            obj.SetCodingSchemeDesignator(scheme)
            obj.SetCodeValue(value)
            obj.SetCodeMeaning(meaning)
        return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)

    # ---- files through storage nodes -----------------------------------------------------------

    def readVolume(self, path: str, name: Optional[str] = None, labelmap: bool = False):
        """Read an image file into a new volume node through a vtkMRMLVolumeArchetypeStorageNode.

        The storage node stays attached (as when Slicer loads a file). On failure nothing is added.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"Image file not found: {path}")
        if name is None:
            base = os.path.basename(path)
            for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd"):
                if base.lower().endswith(suffix):
                    base = base[: -len(suffix)]
                    break
            name = base
        className = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        scene = slicer.mrmlScene
        before = self._nodeIds()
        volumeNode = scene.AddNewNodeByClass(className, name)
        storageNode = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storageNode.SetFileName(path)
        storageNode.SetSingleFile(True)  # a file whose name looks like a series is still one volume
        volumeNode.SetAndObserveStorageNodeID(storageNode.GetID())
        if not storageNode.ReadData(volumeNode) or volumeNode.GetImageData() is None:
            self._removeNodesAddedSince(before)
            raise ValueError(f"Could not read {path} as a volume.")
        volumeNode.SetName(name)
        volumeNode.CreateDefaultDisplayNodes()
        return volumeNode

    @staticmethod
    def _atomicWrite(path: str, writer: Callable[[str], bool], what: str) -> str:
        """Write to a temporary name in the target folder, then rename: no half-written file remains."""
        path = os.path.abspath(os.fspath(path))
        folder, base = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        stem, dot, suffix = base.partition(".")
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{stem}-", suffix=dot + suffix, dir=folder)
        os.close(fd)
        try:
            if not writer(tmp) or not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
                raise ValueError(f"Writing {what} to {path} failed.")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def writeVolume(self, volumeNode, path: str) -> str:
        """Write a volume (NIfTI, NRRD, MHA: chosen by the suffix) through a volume storage node.

        The storage node is not added to the scene, so the node's own storage settings are untouched.
        """
        self._checkNoTransform(volumeNode)

        def write(tmp: str) -> bool:
            storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storageNode.SetFileName(tmp)
            storageNode.SetUseCompression(True)
            return bool(storageNode.WriteData(volumeNode))

        return self._atomicWrite(path, write, f"volume '{volumeNode.GetName()}'")

    def exportSegmentation(self, segmentationNode, path: str) -> str:
        """Save all segments, with names, colours and terminology, as a ``.seg.nrrd`` file."""
        if not os.fspath(path).lower().endswith(".seg.nrrd"):
            raise ValueError(f"A segmentation file must end with .seg.nrrd, got {path}")

        def write(tmp: str) -> bool:
            storageNode = slicer.vtkMRMLSegmentationStorageNode()
            storageNode.SetFileName(tmp)
            storageNode.SetUseCompression(True)
            return bool(storageNode.WriteData(segmentationNode))

        return self._atomicWrite(path, write, f"segmentation '{segmentationNode.GetName()}'")

    def exportLabelmap(self, segmentationNode, path: str, referenceVolumeNode=None) -> str:
        """Save the segments as one labelmap (segment i → label i, 0 = background), e.g. ``.nii.gz``.

        The grid is the reference volume's (default: the segmentation's reference geometry), so the
        file lines up voxel by voxel with the input images in any other tool.
        """
        if not os.fspath(path).lower().endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
            raise ValueError(f"Labelmap export needs a .nii.gz, .nii, .nrrd or .mha file name, got {path}")
        scene = slicer.mrmlScene
        before = self._nodeIds()
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__cgc_export__")
        try:
            logic = slicer.modules.segmentations.logic()
            if referenceVolumeNode is not None:
                ok = logic.ExportAllSegmentsToLabelmapNode(segmentationNode, labelmapNode,
                                                           slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
                if ok:  # resample onto the reference volume's grid exactly
                    ids = vtk.vtkStringArray()
                    segmentationNode.GetSegmentation().GetSegmentIDs(ids)
                    ok = logic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelmapNode, referenceVolumeNode)
            else:
                ok = logic.ExportAllSegmentsToLabelmapNode(segmentationNode, labelmapNode,
                                                           slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not ok:
                raise ValueError(f"Could not convert segmentation '{segmentationNode.GetName()}' to a labelmap.")
            return self.writeVolume(labelmapNode, path)
        finally:
            # The export adds a display node and a colour table besides the labelmap: drop them all.
            self._removeNodesAddedSince(before)

    @staticmethod
    def _nodeIds() -> set:
        scene = slicer.mrmlScene
        return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}

    def _removeNodesAddedSince(self, before: set) -> None:
        """Remove every node added to the scene after ``before = self._nodeIds()`` (temporary work)."""
        scene = slicer.mrmlScene
        for nodeId in self._nodeIds() - before:
            node = scene.GetNodeByID(nodeId)
            if node is not None:
                scene.RemoveNode(node)

    # ---- GMM preview (in-process) --------------------------------------------------------------

    def inputVolumesByName(self, parameterNode) -> dict:
        """``{"flair": node, ...}`` for the selected volumes, in the documented modality order."""
        out = {}
        for name in MODALITIES:
            node = getattr(parameterNode, f"{name}Volume")
            if node is not None:
                out[name] = node
        return out

    def namedInputs(self, parameterNode) -> dict:
        """Inputs named as models and the CLI expect them: the first slot is ``ct`` for CT."""
        volumes = self.inputVolumesByName(parameterNode)
        if parameterNode.modality == "ct" and "flair" in volumes:
            volumes = {("ct" if name == "flair" else name): node for name, node in volumes.items()}
        return volumes

    @staticmethod
    def gmmConfigFromParameters(parameterNode):
        """The core's GMMConfig from the GUI settings.

        Lesion components are typed as the labels shown in the components labelmap (1..K); the core
        counts them from 0.
        """
        from CGCLesionSegLib.gmm import GMMConfig
        text = (parameterNode.foregroundComponents or "").replace(";", ",").strip()
        components = None
        if text:
            try:
                labels = [int(v) for v in text.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"Lesion components must be labels separated by commas (e.g. 3,4), got '{text}'")
            if any(not 1 <= v <= parameterNode.numberOfClusters for v in labels):
                raise ValueError(f"Lesion components must be labels between 1 and {parameterNode.numberOfClusters}, "
                                 f"got '{text}'")
            components = tuple(sorted(set(v - 1 for v in labels)))
        return GMMConfig(n_clusters=parameterNode.numberOfClusters,
                         n_foreground=min(parameterNode.numberOfForegroundClusters, parameterNode.numberOfClusters - 1),
                         foreground_components=components, modality=parameterNode.modality,
                         channels=(0,) if parameterNode.gmmChannels == "reference" else None)

    def _inputKey(self, volumeNodes: Sequence, maskNode) -> tuple:
        """Identifies the voxels and grids of the inputs; changes whenever any of them is modified."""
        key = []
        for node in list(volumeNodes) + [maskNode]:
            if node is None:
                key.append(None)
                continue
            image = node.GetImageData()
            key.append((node.GetID(), image.GetMTime() if image else 0,
                        tuple(np.round(self.ijkToRasArray(node).ravel(), 9))))
        return tuple(key)

    def prepareInputs(self, volumeNodes, maskNode=None) -> dict:
        """The inputs as a GMM session (channel arrays, mask, prepared voxels, fitted model), cached.

        ``volumeNodes``: ``{"flair": node, ...}`` or a list; the first volume is the reference
        channel. Channels must share one grid; the mask, if given, must be on that grid too. The
        cached :class:`ProbabilityMapSession` is reused until an input's voxels, grid or selection
        change, so a refit with other GMM settings skips copying and normalising the volumes.
        """
        from CGCLesionSegLib.gmm import ProbabilityMapSession
        if isinstance(volumeNodes, dict):
            named = [(name, node) for name, node in volumeNodes.items() if node is not None]
        else:
            named = [(None, node) for node in volumeNodes if node is not None]
        volumeNodes = [node for _, node in named]
        if not volumeNodes:
            raise ValueError("Select at least one input volume.")
        key = self._inputKey(volumeNodes, maskNode)
        if self._gmmCache is not None and self._gmmCache["key"] == key:
            return self._gmmCache
        channels = []
        reference = None
        for node in volumeNodes:
            array, geometry = self.volumeToArray(node)
            if reference is None:
                reference = geometry
            else:
                check_same_grid(reference, geometry, volumeNodes[0].GetName(), node.GetName())
            channels.append(array.astype(np.float32, copy=False))
        mask = None
        if maskNode is not None:
            maskArray, maskGeometry = self.volumeToArray(maskNode)
            check_same_grid(reference, maskGeometry, volumeNodes[0].GetName(), maskNode.GetName())
            mask = maskArray != 0
        names = [name or node.GetName() for name, node in named]
        session = ProbabilityMapSession(channels, mask, names=names, spacing_xyz=reference.spacing)
        self._gmmCache = {"key": key, "channels": channels, "mask": mask, "geometry": reference,
                          "reference": volumeNodes[0], "session": session}
        return self._gmmCache

    def computeProbabilityMap(self, volumeNodes, maskNode, gmmConfig, probabilityNode=None,
                              componentsNode=None, progress=None, shouldStop=None):
        """Fit the GMM in-process and show P and the components.

        Writes the foreground probability P (float32, 0..1) into a scalar volume node and the
        component labels (0 outside the mask, 1..K) into a labelmap node, each created when not
        given. Returns ``(probabilityNode, componentsNode)``; the core's result is kept in
        ``self.lastGmmResult``. Input arrays are cached between refits while the inputs do not change.
        """
        data = self.prepareInputs(volumeNodes, maskNode)
        result = data["session"].run(gmmConfig, progress=progress, should_stop=shouldStop)
        reference = data["reference"]
        probabilityNode = self.arrayToVolume(np.asarray(result.probability, dtype=np.float32), reference,
                                             probabilityNode, name="GMM probability")
        display = probabilityNode.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
        componentsNode = self.arrayToVolume(np.asarray(result.labels, dtype=np.uint8), reference,
                                            componentsNode, name="GMM components", labelmap=True)
        self.lastGmmResult = result
        return probabilityNode, componentsNode

    # ---- child processes -----------------------------------------------------------------------

    def childEnvironment(self) -> dict:
        """Environment for child processes: PYTHONPATH gets the folder holding CGCLesionSegLib and CGCTraining."""
        env = dict(os.environ)
        paths = [MODULE_DIR]
        parent = os.path.dirname(MODULE_DIR)
        if (not os.path.isdir(os.path.join(MODULE_DIR, "CGCTraining"))
                and os.path.isdir(os.path.join(parent, "CGCTraining"))):
            paths.append(parent)  # source checkout: CGCTraining sits at the repository root
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def buildSegmentCommand(self, inputs: Sequence[tuple[str, str]], outputPath: str, maskPath: Optional[str] = None,
                            modelPath: Optional[str] = None, probabilityOutputPath: Optional[str] = None,
                            threshold: Optional[float] = None, device: str = "auto",
                            postprocess: str = "auto") -> list:
        """``python -m CGCLesionSegLib.cli segment --input NAME=PATH ... --output OUT --progress json``.

        ``postprocess``: the output rule (auto, none, single-lesion; see ``cgcseg segment --help``)."""
        if not inputs:
            raise ValueError("At least one input is needed.")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        if postprocess not in OUTPUT_RULES:
            raise ValueError(f"output rule must be one of {', '.join(OUTPUT_RULES)}, got {postprocess!r}")
        command = [self.pythonExecutable, "-m", "CGCLesionSegLib.cli", "segment"]
        for name, path in inputs:
            command += ["--input", f"{name}={path}" if name else str(path)]
        if maskPath:
            command += ["--mask", str(maskPath)]
        if modelPath:
            command += ["--model", str(modelPath)]
        command += ["--output", str(outputPath)]
        if probabilityOutputPath:
            command += ["--probability-output", str(probabilityOutputPath)]
        if threshold is not None:
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold must be in [0, 1], got {threshold}")
            command += ["--threshold", repr(float(threshold))]
        command += ["--postprocess", postprocess, "--device", device, "--progress", "json"]
        return command

    def buildTrainCommand(self, casesDir: str, outputDir: str, modalities: Sequence[str] = MODALITIES,
                          epochs: Optional[int] = None, steps: Optional[int] = None,
                          maxMinutes: Optional[float] = None, crop: Optional[Sequence[int]] = None,
                          device: str = "auto", resume: bool = False) -> list:
        """``python -m CGCTraining --cases DIR --modalities ... --output-dir RUN --progress json``.

        ``crop`` is x, y, z as on the command line. ``epochs`` and ``steps`` are exclusive.
        """
        if not casesDir or not outputDir:
            raise ValueError("Choose the cases folder and the output (run) folder.")
        if epochs is not None and steps is not None:
            raise ValueError("Give epochs or steps, not both.")
        command = [self.pythonExecutable, "-m", "CGCTraining", "--cases", str(casesDir),
                   "--modalities", *[m.lower() for m in modalities], "--output-dir", str(outputDir)]
        if epochs is not None:
            command += ["--epochs", str(int(epochs))]
        if steps is not None:
            command += ["--steps", str(int(steps))]
        if maxMinutes:
            command += ["--max-minutes", repr(float(maxMinutes))]
        if crop is not None:
            if len(crop) != 3:
                raise ValueError(f"crop needs three sizes x y z, got {crop}")
            command += ["--crop", *[str(int(c)) for c in crop]]
        command += ["--device", device]
        if resume:
            command.append("--resume")
        command += ["--progress", "json"]
        return command

    def prepareSegmentJob(self, inputVolumes, maskNode=None, modelPath: Optional[str] = None,
                          threshold: Optional[float] = None, device: str = "auto",
                          withProbability: bool = True, segmentName: str = "Lesion",
                          postprocess: str = "auto") -> ChildJob:
        """Write the inputs to a temporary folder (NIfTI, through storage nodes) and build the command.

        ``inputVolumes``: ``{"flair": node, ...}`` (names as the model expects) or a list of nodes
        (unnamed, documented order). Nothing is added to the scene.
        """
        items = list(inputVolumes.items()) if isinstance(inputVolumes, dict) else [(None, n) for n in inputVolumes]
        items = [(name, node) for name, node in items if node is not None]
        if not items:
            raise ValueError("Select at least one input volume.")
        reference = items[0][1]
        referenceGeometry = self.volumeToArray(reference)[1]
        tempDir = tempfile.mkdtemp(prefix="CGCLesionSeg-")
        try:
            inputs = []
            for index, (name, node) in enumerate(items):
                geometry = self.volumeToArray(node)[1]
                check_same_grid(referenceGeometry, geometry, reference.GetName(), node.GetName())
                path = os.path.join(tempDir, f"input{index}_{name or 'channel'}.nii.gz")
                self.writeVolume(node, path)
                inputs.append((name, path))
            maskPath = None
            if maskNode is not None:
                check_same_grid(referenceGeometry, self.volumeToArray(maskNode)[1], reference.GetName(),
                                maskNode.GetName())
                maskPath = self.writeVolume(maskNode, os.path.join(tempDir, "mask.nii.gz"))
            outputPath = os.path.join(tempDir, "segmentation.nii.gz")
            probabilityPath = os.path.join(tempDir, "probability.nii.gz") if withProbability else None
            command = self.buildSegmentCommand(inputs, outputPath, maskPath=maskPath, modelPath=modelPath,
                                               probabilityOutputPath=probabilityPath, threshold=threshold,
                                               device=device, postprocess=postprocess)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return ChildJob(command=command, env=self.childEnvironment(), kind="segment", tempDir=tempDir,
                        outputPath=outputPath, probabilityOutputPath=probabilityPath,
                        referenceVolumeNode=reference, segmentName=segmentName)

    def _readArrayOnGrid(self, path: str, referenceVolumeNode, labelmap: bool) -> np.ndarray:
        """Read a result file through a storage node (temporary node) and check it is on the reference grid."""
        before = self._nodeIds()
        try:
            node = self.readVolume(path, name="__cgc_result__", labelmap=labelmap)
            array, geometry = self.volumeToArray(node)
        finally:
            self._removeNodesAddedSince(before)
        check_same_grid(self.volumeToArray(referenceVolumeNode)[1], geometry,
                        referenceVolumeNode.GetName(), os.path.basename(path))
        return array

    def finishSegmentJob(self, job: ChildJob, segmentationNode=None, probabilityNode=None,
                         loadProbability: bool = False):
        """Load a finished job's output into a segmentation node.

        The network's probability map goes into ``probabilityNode`` when given, or into a new
        "CGC probability" volume with ``loadProbability``. Everything is read and checked before the
        scene is modified.
        """
        if not job.outputPath or not os.path.isfile(job.outputPath):
            raise ValueError("The segmentation process wrote no output file.")
        mask = self._readArrayOnGrid(job.outputPath, job.referenceVolumeNode, labelmap=True)
        probability = None
        wanted = probabilityNode is not None or loadProbability
        if wanted and job.probabilityOutputPath and os.path.isfile(job.probabilityOutputPath):
            probability = self._readArrayOnGrid(job.probabilityOutputPath, job.referenceVolumeNode, labelmap=False)
        segmentationNode = self.arrayToSegmentation(mask, job.referenceVolumeNode, segmentationNode, job.segmentName)
        if probability is not None:
            self.arrayToVolume(probability.astype(np.float32), job.referenceVolumeNode, probabilityNode,
                               name="CGC probability")
        return segmentationNode

    @staticmethod
    def cleanupJob(job: ChildJob) -> None:
        if job.tempDir:
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def runJob(self, job: ChildJob, onProgress=None, onLog=None, shouldStop=None) -> int:
        """Run a prepared job to the end (headless use); raises CancelledError or RuntimeError."""
        job.process = ChildProcess(job.command, env=job.env)
        job.process.start()
        code = job.process.wait(onProgress=onProgress, onLog=onLog, shouldStop=shouldStop)
        if job.process.cancelled:
            raise CancelledError("Cancelled by the user; the scene is unchanged.")
        if code != 0:
            raise RuntimeError(f"{job.kind} process failed (exit code {code}): {job.process.errorSummary()}")
        return code

    def segment(self, inputVolumes, maskNode=None, modelPath: Optional[str] = None, threshold: Optional[float] = None,
                device: str = "auto", segmentationNode=None, probabilityNode=None, loadProbability: bool = False,
                onProgress=None, onLog=None, shouldStop=None, postprocess: str = "auto"):
        """Network segmentation in a child process, blocking (scripts, tests). Returns the segmentation node.

        On failure or cancel the scene is unchanged and the temporary files are removed.
        """
        job = self.prepareSegmentJob(inputVolumes, maskNode, modelPath, threshold, device,
                                     withProbability=probabilityNode is not None or loadProbability,
                                     postprocess=postprocess)
        try:
            self.runJob(job, onProgress, onLog, shouldStop)
            return self.finishSegmentJob(job, segmentationNode, probabilityNode, loadProbability)
        finally:
            self.cleanupJob(job)


#
# CGCLesionSegTest
#

class CGCLesionSegTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test (also run by pytest under slicer-core): synthetic volume → GMM → segment."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    def runTest(self) -> None:
        self.setUp()
        self.test_ArrayRoundTrip()
        self.setUp()
        self.test_GmmPreview()

    def _syntheticVolume(self):
        rng = np.random.default_rng(0)
        z, y, x = np.mgrid[0:12, 0:20, 0:24]
        brain = ((x - 12) / 10.0) ** 2 + ((y - 10) / 8.0) ** 2 + ((z - 6) / 5.0) ** 2 < 1
        lesion = ((x - 15) / 3.0) ** 2 + ((y - 10) / 3.0) ** 2 + ((z - 6) / 2.5) ** 2 < 1
        image = np.where(brain, 100.0, 0.0) + np.where(lesion, 80.0, 0.0)
        image = (image + brain * rng.normal(0, 5, image.shape)).astype(np.float32)
        ijkToRas = np.array([[-0.9, 0, 0, 10], [0, -1.1, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
        node = slicer.util.addVolumeFromArray(image, ijkToRas, "CGCTestFLAIR")
        return node, brain, lesion

    def test_ArrayRoundTrip(self) -> None:
        self.delayDisplay("Volume and segmentation round trip")
        logic = CGCLesionSegLogic()
        node, brain, lesion = self._syntheticVolume()
        array, geometry = logic.volumeToArray(node)
        self.assertEqual(array.shape, (12, 20, 24))
        self.assertEqual(geometry.spacing, (0.9, 1.1, 2.0))
        segmentation = logic.arrayToSegmentation(lesion, node)
        back = logic.segmentationToArray(segmentation, node)
        self.assertTrue(np.array_equal(back, lesion.astype(np.uint8)))
        self.delayDisplay("Round trip passed")

    def test_GmmPreview(self) -> None:
        self.delayDisplay("GMM preview")
        from CGCLesionSegLib.gmm import GMMConfig
        logic = CGCLesionSegLogic()
        node, brain, lesion = self._syntheticVolume()
        probability, components = logic.computeProbabilityMap([node], None, GMMConfig(n_clusters=2, n_foreground=1))
        p = slicer.util.arrayFromVolume(probability)
        self.assertGreater(float(p[lesion].mean()), 0.9)
        self.assertLess(float(p[brain & ~lesion].mean()), 0.1)
        self.assertEqual(int(slicer.util.arrayFromVolume(components).max()), 2)
        self.delayDisplay("GMM preview passed")
