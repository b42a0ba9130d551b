"""The module's panel: binds the .ui to the parameter node and forwards clicks to the Logic.

The only Slicer-side file that uses Qt, ``slicer.app`` and dialogs. The job lifecycle (timers aside)
is :class:`CGCLesionSegSlicer.jobs.JobController`, tested without Qt.
"""
import importlib.util
import subprocess
from typing import Optional

import qt
import ctk  # noqa: F401  (widgets of the .ui)
import vtk
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .constants import MODALITIES, RESEARCH_NOTICE
from .jobs import JobController
from .logic import exportPathWithSuffix, pathOrNone

#: ctkPathLineEdit widgets bound by hand to ``str`` parameters (Slicer's connector takes only
#: pathlib.Path, which shows "." while nothing is chosen). Read by the .ui test as well.
PATH_BINDINGS = {"modelPathLineEdit": "modelPath", "trainingCasesPathLineEdit": "trainingCasesFolder",
                 "trainingOutputPathLineEdit": "trainingOutputFolder"}


class CGCLesionSegWidgetBase(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI. ``CGCLesionSeg.CGCLesionSegWidget`` supplies :meth:`createLogic`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.jobs: Optional[JobController] = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._previewTimer = None
        self._pollTimer = None
        self._lastPreviewKey = None
        self._updatingPaths = False

    def createLogic(self):  # overridden in CGCLesionSeg.py (the Logic with the typed parameter node)
        raise NotImplementedError

    # ---- setup / cleanup ------------------------------------------------------------------------

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CGCLesionSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.noticeLabel.text = RESEARCH_NOTICE

        self.logic = self.createLogic()
        self.jobs = JobController(onProgress=self.onJobProgress, onLog=self.log, onFinished=self.onJobFinished)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.previewButton.connect("clicked(bool)", self.onPreview)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.exportSegNrrdButton.connect("clicked(bool)", lambda: self.onExport("seg.nrrd"))
        self.ui.exportNiftiButton.connect("clicked(bool)", lambda: self.onExport("nii.gz"))
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.loadPhantomButton.connect("clicked(bool)", self.onLoadPhantom)
        for widgetName, parameter in PATH_BINDINGS.items():
            getattr(self.ui, widgetName).currentPathChanged.connect(self._pathSetter(parameter))

        # Debounced live preview: refit 600 ms after the last GMM setting changed.
        self._previewTimer = qt.QTimer()
        self._previewTimer.setSingleShot(True)
        self._previewTimer.setInterval(600)
        self._previewTimer.connect("timeout()", self.onAutoPreview)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer quits or the module is reloaded: end the job (folder removed), stop the timers."""
        for timer in (self._previewTimer, self._pollTimer):
            if timer is not None:
                timer.stop()
        if self.jobs is not None:
            self.jobs.shutdown()
        if self.logic is not None:
            self.logic.clearCaches()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    # ---- scene and parameter node -----------------------------------------------------------------

    def onSceneStartClose(self, caller, event) -> None:
        self._previewTimer.stop()
        abandoned = self.jobs.onSceneStartClose()  # a segment job: killed, folder removed, nothing loaded
        if abandoned is not None:
            self._pollTimer.stop()
        self.logic.clearCaches()
        self._lastPreviewKey = None
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

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.updatePathWidgets()
        self.updateButtons()

    def _pathSetter(self, parameter: str):
        return lambda path: self.onPathChanged(parameter, path)

    def onPathChanged(self, parameter: str, path: str) -> None:
        if self._parameterNode is not None and not self._updatingPaths:
            setattr(self._parameterNode, parameter, str(path or ""))

    def updatePathWidgets(self) -> None:
        self._updatingPaths = True
        try:
            for widgetName, parameter in PATH_BINDINGS.items():
                value = getattr(self._parameterNode, parameter) if self._parameterNode else ""
                widget = getattr(self.ui, widgetName)
                if widget.currentPath != (value or ""):
                    widget.currentPath = value or ""
        finally:
            self._updatingPaths = False

    def _previewKey(self) -> tuple:
        """What the GMM preview depends on; a refit is scheduled only when this changes."""
        p = self._parameterNode
        volumes = tuple((name, node.GetID()) for name, node in self.logic.inputVolumesByName(p).items())
        return (volumes, p.maskVolume.GetID() if p.maskVolume else None, p.modality, p.gmmChannels,
                p.numberOfClusters, p.numberOfForegroundClusters, p.foregroundComponents)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updatePathWidgets()
        self.updateButtons()
        p = self._parameterNode
        # Writing the preview's output nodes modifies the parameter node too: compare keys, not events.
        if (p and p.autoUpdatePreview and p.probabilityVolume and not self.jobs.busy
                and self._lastPreviewKey is not None and self._previewKey() != self._lastPreviewKey):
            self._previewTimer.start()

    def ensurePythonDependencies(self, needTorch: bool) -> bool:
        """Offer to install what the core needs into Slicer's Python (GUI only; the Logic never asks).
        Call inside ``tryWithErrorDisplay``: a failed pip install is shown, not lost."""
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
        busy = bool(self.jobs and self.jobs.busy)
        hasInput = bool(p and self.logic.inputVolumesByName(p))
        self.ui.previewButton.enabled = hasInput and not busy
        self.ui.segmentButton.enabled = hasInput and not busy
        self.ui.trainButton.enabled = bool(p and pathOrNone(p.trainingCasesFolder)
                                           and pathOrNone(p.trainingOutputFolder)) and not busy
        self.ui.cancelButton.enabled = busy
        self.ui.trainingEpochsSpinBox.enabled = bool(p and p.trainingRecipe == "paper")  # shipped: its own length
        self.ui.thresholdSliderWidget.enabled = bool(p and not p.thresholdFromModel)  # ticked: the model's threshold
        self.ui.loadPhantomButton.enabled = not busy
        hasSeg = bool(p and p.outputSegmentation)
        self.ui.exportSegNrrdButton.enabled = hasSeg
        self.ui.exportNiftiButton.enabled = hasSeg
        self.ui.editInSegmentEditorButton.enabled = hasSeg and not busy

    def log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # ---- try-out and GMM preview -------------------------------------------------------------------

    def onLoadPhantom(self) -> None:
        loaded = False
        with slicer.util.tryWithErrorDisplay("Could not create the try-out phantom.", waitCursor=True):
            if not self.ensurePythonDependencies(needTorch=False):
                return
            nodes = self.logic.loadPhantom()
            p = self._parameterNode
            p.flairVolume, p.t1Volume, p.t1ceVolume, p.t2Volume = (nodes[m] for m in MODALITIES)
            p.maskVolume = nodes["mask"]
            p.modality = "mri"
            self.log("Loaded the synthetic four-channel phantom (no patient data). Next: Preview GMM, then Segment.")
            loaded = True
        if loaded:
            self.onPreview()  # its own error display: a failed preview is not a failed phantom

    def onPreview(self) -> None:
        """The Preview button (and after Load phantom): errors are shown in a dialog."""
        if self._parameterNode is None:
            return
        with slicer.util.tryWithErrorDisplay("GMM preview failed.", waitCursor=True):
            self._runPreview()

    def onAutoPreview(self) -> None:
        """The debounced refit while GMM settings are edited: a setting half typed (e.g. "1" on the way to
        "10") must not pop up a dialog, so errors go to the status line and the log; Preview shows them."""
        if self._parameterNode is None:  # the timer fired after the scene closed
            return
        try:
            with slicer.util.WaitCursor():
                self._runPreview()
        except Exception as exc:
            self.ui.statusLabel.text = f"GMM preview not updated: {exc}"
            self.log(f"GMM preview not updated: {exc}")

    def _runPreview(self) -> None:
        self._previewTimer.stop()  # this fit covers whatever the timer was waiting for
        p = self._parameterNode
        if not self.ensurePythonDependencies(needTorch=False):
            return
        self._lastPreviewKey = self._previewKey()
        volumes = self.logic.inputVolumesByName(p)
        config = self.logic.gmmConfigFromParameters(p)
        probability, components = self.logic.computeProbabilityMap(
            volumes, p.maskVolume, config,
            probabilityNode=p.probabilityVolume, componentsNode=p.componentsVolume)
        p.probabilityVolume = probability
        p.componentsVolume = components
        slicer.util.setSliceViewerLayers(background=next(iter(volumes.values())), foreground=probability,
                                         label=components, foregroundOpacity=0.5)
        self.ui.statusLabel.text = "GMM preview updated."

    # ---- Segment / Train ---------------------------------------------------------------------------

    def _tempBase(self) -> Optional[str]:
        return slicer.app.temporaryPath or None

    def _confirmReplaceEdited(self) -> Optional[bool]:
        """The output was edited since the module wrote it: True = replace, False = new node, None = cancel."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("CGC Lesion Seg")
        box.setIcon(qt.QMessageBox.Question)
        box.setText(f"'{self._parameterNode.outputSegmentation.GetName()}' was edited after it was segmented.\n"
                    "Replace its lesion segment with the new result, or write the result to a new segmentation?")
        replace = box.addButton("Replace", qt.QMessageBox.DestructiveRole)
        new = box.addButton("New segmentation", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(new)
        box.exec_()
        clicked = box.clickedButton()
        return True if clicked == replace else False if clicked == new else None

    def onSegment(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start segmentation.", waitCursor=True):
            if not self.ensurePythonDependencies(needTorch=True):
                return
            inputs = self.logic.namedInputs(p)
            target = p.outputSegmentation
            if target is not None and self.logic.isResultEdited(target):
                choice = self._confirmReplaceEdited()
                if choice is None:
                    return
                if choice is False:
                    target = None  # the result goes into a new node; the selection stays as it is until then
            job = self.logic.prepareSegmentJob(inputs, maskNode=p.maskVolume, modelPath=pathOrNone(p.modelPath),
                                               threshold=None if p.thresholdFromModel else p.threshold,
                                               device=p.device, postprocess=p.outputRule,
                                               tempBase=self._tempBase())
            try:
                self.logic.setSegmentJobTarget(job, target)  # fixed now: the selector may change during the run
            except Exception:
                self.logic.cleanupJob(job)
                raise
            self._startJob(job, "Segmenting")  # a failed start removes the job's folder

    def onTrain(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start training."):
            if not self.ensurePythonDependencies(needTorch=True):
                return
            paper = p.trainingRecipe == "paper"  # the shipped recipe has its own length (300 + 300 steps)
            job = self.logic.prepareTrainJob(
                pathOrNone(p.trainingCasesFolder), pathOrNone(p.trainingOutputFolder), tempBase=self._tempBase(),
                modalities=list(self.logic.namedInputs(p).keys()) or list(MODALITIES), recipe=p.trainingRecipe,
                epochs=p.trainingEpochs if paper else None, maxMinutes=p.trainingMaxMinutes or None, device=p.device)
            self._startJob(job, "Training")

    def _startJob(self, job, title: str) -> None:
        self.log(f"{title}: {subprocess.list2cmdline(job.command)}")
        self.jobs.start(job)
        self.ui.progressBar.value = 0
        self.ui.progressBar.setFormat(f"{title} %p%")
        self.ui.statusLabel.text = f"{title}..."
        self._pollTimer.start()
        self.updateButtons()

    def onPollJob(self) -> None:
        try:
            active = self.jobs.poll()
        except Exception as exc:  # onJobFinished shows its own errors; anything else must not kill the timer loop
            active = self.jobs.busy
            self.log(f"Error while handling the job: {exc}")
        if not active:
            self._pollTimer.stop()
            self.updateButtons()

    def onJobProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        if message and not self.jobs.stopping:
            self.ui.statusLabel.text = message

    def onJobFinished(self, job, outcome: str, message: str) -> None:
        """Called by the controller before the job's folder is removed."""
        self.ui.progressBar.value = 100 if outcome == "done" else 0
        self.ui.statusLabel.text = f"{job.kind}: {message.splitlines()[0] if message else outcome}"
        if outcome == "abandoned":
            self.log(f"The {job.kind} job was ended: {message}; nothing was loaded.")
        elif outcome == "cancelled":
            self.log("Cancelled; the scene is unchanged.")
        elif outcome == "stopped":
            self.log(f"Training {message}: {job.extra.get('outputDir', '')}")
        elif outcome == "failed":
            slicer.util.errorDisplay(f"The {job.kind} process failed ({message.splitlines()[0]}).",
                                     detailedText=message)
        elif job.kind == "segment":
            with slicer.util.tryWithErrorDisplay("Could not load the result."):
                self._loadSegmentResult(job)
        else:
            self.log(f"Training finished: {self.logic.trainedModelPath(job.extra.get('outputDir', ''))}")
        self.updateButtons()

    def _loadSegmentResult(self, job) -> None:
        p = self._parameterNode
        if p is None:
            raise ValueError("The scene was closed; the result was not loaded.")
        target, note = self.logic.segmentJobTarget(job)
        if note:
            self.log(note)
        segmentation = self.logic.finishSegmentJob(job, segmentationNode=target, loadProbability=True)
        p.outputSegmentation = segmentation
        statistics = self.logic.resultStatistics(segmentation, job.referenceVolumeNode)
        p.statisticsTable = self.logic.writeStatisticsTable(statistics, p.statisticsTable)
        self.ui.statisticsLabel.text = self.logic.formatStatistics(statistics)
        self.log(f"Segmentation done: {self.logic.formatStatistics(statistics)}.")

    def onCancel(self) -> None:
        state = self.jobs.cancel()
        if state == "stopping":
            self.ui.statusLabel.text = "stopping... (the checkpoint is written after the current step; Cancel again to kill)"

    # ---- after Segment ---------------------------------------------------------------------------

    def onEditInSegmentEditor(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not open the Segment Editor."):
            segmentation = p.outputSegmentation
            source = self.logic.sourceVolumeOf(segmentation) or next(iter(self.logic.inputVolumesByName(p).values()),
                                                                     None)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.util.getModuleWidget("SegmentEditor").editor
            editor.setSegmentationNode(segmentation)
            if source is not None:
                editor.setSourceVolumeNode(source)  # Slicer >= 5.2 name (setMasterVolumeNode before)

    def onExport(self, kind: str) -> None:
        p = self._parameterNode
        segmentation = p.outputSegmentation
        filters = "Segmentation (*.seg.nrrd)" if kind == "seg.nrrd" else "NIfTI labelmap (*.nii.gz)"
        path = qt.QFileDialog.getSaveFileName(None, "Export segmentation", f"{segmentation.GetName()}.{kind}", filters)
        if not path:
            return
        path = exportPathWithSuffix(path, kind)
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            if kind == "seg.nrrd":
                self.logic.exportSegmentation(segmentation, path)
            else:
                reference = self.logic.sourceVolumeOf(segmentation) or next(
                    iter(self.logic.inputVolumesByName(p).values()), None)
                self.logic.exportLabelmap(segmentation, path, referenceVolumeNode=reference)
            self.log(f"Exported {path}")

