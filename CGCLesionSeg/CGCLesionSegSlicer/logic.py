"""The module's Logic: MRML nodes <-> arrays, GMM preview, child jobs, statistics, try-out phantom.

Arrays returned and accepted here are ``(z, y, x)``, as ``slicer.util.arrayFromVolume`` gives them.
The Logic never touches ``slicer.app``, never opens dialogs and never calls
``slicer.util.loadVolume``/``saveNode``: it uses ``slicer.mrmlScene``, module logics and storage
nodes only, so it runs under the ``slicer-core`` wheel in CI as it does inside Slicer. Temporary
folders come from :mod:`tempfile`; inside Slicer the Widget passes Slicer's temporary folder as base.
"""
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from typing import Callable, Optional, Sequence

import numpy as np
import vtk
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .constants import (LABELMAP_HASH_ATTRIBUTE, LESION_COLOR, LESION_TERMINOLOGY, MODALITIES, MODULE_DIR,
                        PROBABILITY_REFERENCE_ROLE, REMOVED_LESIONS_ATTRIBUTE, SOURCE_REFERENCE_ROLE,
                        TRAINING_RECIPES)
from .runner import CancelledError, ChildJob, ChildProcess

if MODULE_DIR not in sys.path:  # CGCLesionSegLib lives beside CGCLesionSeg.py
    sys.path.insert(0, MODULE_DIR)

from CGCLesionSegLib.image_io import Geometry, check_same_grid, default_file_mode  # noqa: E402  (numpy + SimpleITK only)
from CGCLesionSegLib.commands import OUTPUT_RULES  # noqa: E402  (argparse only)

#: Name of the stop file the trainer polls (``python -m CGCTraining --stop-file``).
STOP_FILE_NAME = "stop-training"


def childPythonExecutable(executable: Optional[str] = None) -> Optional[str]:
    """The Python interpreter for child processes: ``PythonSlicer`` on the PATH or beside ``executable``
    (default ``sys.executable``), else ``executable`` itself — unless that is the Slicer application (inside
    Slicer ``sys.executable`` is ``SlicerApp-real``, which ``-m`` would start as a second application): None."""
    executable = executable or sys.executable
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = os.path.join(os.path.dirname(executable), name)
        if os.path.isfile(candidate):
            return candidate
    return None if os.path.basename(executable).lower().startswith("slicer") else executable


def pathOrNone(value) -> Optional[str]:
    """A parameter-node path, or None when unset ("" or ``pathlib.Path()``'s ".")."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else text


class CGCLesionSegLogicBase(ScriptedLoadableModuleLogic):
    """Everything the module does, usable without the GUI (headless scripts, tests).

    ``CGCLesionSeg.CGCLesionSegLogic`` adds the typed parameter node. Arrays returned and accepted
    here are ``(z, y, x)``, as ``slicer.util.arrayFromVolume`` gives them.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.moduleName = "CGCLesionSeg"  # the parameter node's singleton tag, whatever the subclass
        self._gmmCache: Optional[dict] = None
        #: The last GMM result (P, labels, model); dropped with :meth:`clearCaches`.
        self.lastGmmResult = None
        #: Interpreter for child processes; inside Slicer it is PythonSlicer (None: not found, see
        #: :func:`childPythonExecutable`; building a command then says so).
        self.pythonExecutable = childPythonExecutable()

    def clearCaches(self) -> None:
        """Forget the cached GMM inputs (every channel's voxels) and the last result (scene closed)."""
        self._gmmCache = None
        self.lastGmmResult = None

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
        undo = None  # a given node: what to put back if writing into it fails half way
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{referenceVolumeNode.GetName()} {segmentName.lower()}")
        else:
            self._checkBinaryLabelmapSource(segmentationNode)
            segmentation = segmentationNode.GetSegmentation()
            undo = {"geometry": segmentation.GetConversionParameter(self._geometryParameter())}
        try:
            if segmentationNode.GetDisplayNode() is None:
                segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
            segmentation = segmentationNode.GetSegmentation()
            segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", segmentName, list(LESION_COLOR))
                if undo is not None:
                    undo["added"] = segmentId
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*LESION_COLOR)
            if hasattr(segment, "SetTerminology"):
                segment.SetTerminology(self.lesionTerminology())
            else:  # vtkSegment::SetTerminology exists from Slicer 5.10; before, the entry is this tag
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), self.lesionTerminology())
            slicer.util.updateSegmentBinaryLabelmapFromArray((mask != 0).astype(np.uint8), segmentationNode,
                                                            segmentId, referenceVolumeNode)
        except Exception:
            if undo is not None:  # the user's node: drop the segment this call added, restore its geometry
                segmentation = segmentationNode.GetSegmentation()
                if undo.get("added"):
                    segmentation.RemoveSegment(undo["added"])
                segmentation.SetConversionParameter(self._geometryParameter(), undo["geometry"] or "")
            self._removeNodesAddedSince(before)
            raise
        return segmentationNode

    @staticmethod
    def _geometryParameter() -> str:
        return slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()

    @staticmethod
    def _checkBinaryLabelmapSource(segmentationNode) -> None:
        """Refuse, before anything is changed, a segmentation whose segments are stored as another
        representation (e.g. closed surfaces imported from a model): a labelmap cannot be written into it."""
        segmentation = segmentationNode.GetSegmentation()
        source = (segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName")
                  else segmentation.GetMasterRepresentationName())  # the name before Slicer 5.4
        labelmap = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        if source != labelmap:
            raise ValueError(f"Segmentation '{segmentationNode.GetName()}' stores its segments as '{source}', not as "
                             f"'{labelmap}', so the result cannot be written into it. Choose 'Create new segmentation' "
                             "as the output, or make 'Binary labelmap' its source representation (Segmentations module, "
                             "Representations).")

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
            # mkstemp makes the file owner-only (0600) and a writer that fills the existing file keeps that:
            # give it the mode a plain new file gets (or the replaced file's), as other programs' files have.
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else default_file_mode())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def writeVolume(self, volumeNode, path: str, compress: bool = True) -> str:
        """Write a volume (NIfTI, NRRD, MHA: chosen by the suffix) through a volume storage node.

        ``compress=False`` writes raw voxels (fast: inputs for a child process are written so).
        The storage node is not added to the scene, so the node's own storage settings are untouched.
        """
        self._checkNoTransform(volumeNode)

        def write(tmp: str) -> bool:
            storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storageNode.SetFileName(tmp)
            storageNode.SetUseCompression(bool(compress))
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
            if referenceVolumeNode is not None:  # onto the reference volume's whole grid, exactly
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
        inputs = list(volumeNodes.values()) if isinstance(volumeNodes, dict) else list(volumeNodes)
        self.checkOutputsAreNotInputs({"probability map": probabilityNode, "components": componentsNode},
                                      inputs + [maskNode])
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

    @staticmethod
    def checkOutputsAreNotInputs(outputs: dict, inputs: Sequence) -> None:
        """Refuse output nodes (``{"what": node or None}``) that are an input (a channel, the brain mask) or
        another output: writing the result would overwrite the user's data in place, with no undo."""
        inputIds = {node.GetID(): node.GetName() for node in inputs if node is not None}
        seen = {}
        for what, node in outputs.items():
            if node is None:
                continue
            if node.GetID() in inputIds:
                raise ValueError(f"The {what} output '{node.GetName()}' is one of the inputs: writing it would "
                                 "overwrite that volume. Choose another output volume, or 'Create new volume'.")
            if node.GetID() in seen:
                raise ValueError(f"The {what} and {seen[node.GetID()]} outputs are the same volume "
                                 f"'{node.GetName()}'. Choose a separate volume for each.")
            seen[node.GetID()] = what

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

    def _childPython(self) -> str:
        if not self.pythonExecutable:
            raise ValueError("PythonSlicer, Slicer's Python interpreter for background jobs, was not found on the "
                             f"PATH or beside {sys.executable}. Start Slicer with its launcher (the 'Slicer' "
                             "program, which sets the PATH), or reinstall Slicer.")
        return self.pythonExecutable

    def buildSegmentCommand(self, inputs: Sequence[tuple[str, str]], outputPath: str, maskPath: Optional[str] = None,
                            modelPath: Optional[str] = None, probabilityOutputPath: Optional[str] = None,
                            threshold: Optional[float] = None, device: str = "auto",
                            postprocess: str = "auto") -> list:
        """``python -m CGCLesionSegLib.cli segment --input NAME=PATH ... --output OUT --progress json``.

        ``postprocess``: the output rule (auto, none, single-lesion, single-lesion-recommended; see ``cgcseg segment --help``).
        ``threshold`` None: no ``--threshold``, so the child uses the threshold the model records for its own
        rule (0.5 for other rules and models without one)."""
        if not inputs:
            raise ValueError("At least one input is needed.")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        if postprocess not in OUTPUT_RULES:
            raise ValueError(f"output rule must be one of {', '.join(OUTPUT_RULES)}, got {postprocess!r}")
        command = [self._childPython(), "-m", "CGCLesionSegLib.cli", "segment"]
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
                          device: str = "auto", resume: bool = False, recipe: Optional[str] = None) -> list:
        """``python -m CGCTraining --cases DIR --modalities ... --output-dir RUN --progress json``.

        ``crop`` is x, y, z as on the command line. ``epochs`` and ``steps`` are exclusive. ``recipe``
        (:data:`TRAINING_RECIPES`; None = the command line's default) sets the defaults the other options
        override; ``shipped`` brings its own length (give neither epochs nor steps to keep it) and one
        self-training round, whose model is ``RUN/self-train-1/last.pt``.
        """
        if not casesDir or not outputDir:
            raise ValueError("Choose the cases folder and the output (run) folder.")
        if epochs is not None and steps is not None:
            raise ValueError("Give epochs or steps, not both.")
        if recipe is not None and recipe not in TRAINING_RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(TRAINING_RECIPES)}, got {recipe!r}")
        command = [self._childPython(), "-m", "CGCTraining", "--cases", str(casesDir),
                   "--modalities", *[m.lower() for m in modalities], "--output-dir", str(outputDir)]
        if recipe is not None:
            command += ["--recipe", recipe]
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
                          postprocess: str = "auto", tempBase: Optional[str] = None) -> ChildJob:
        """Write the inputs to a new temporary folder and build the command; nothing enters the scene.

        Inputs are written as uncompressed ``.nrrd`` through storage nodes (fast; the child reads
        them with SimpleITK). ``inputVolumes``: ``{"flair": node, ...}`` (names as the model expects)
        or a list of nodes (unnamed, documented order). ``tempBase``: folder under which the job's
        folder is made (Slicer's temporary folder inside Slicer; default: the system's). On any
        error the folder is removed before the error is raised.
        """
        items = list(inputVolumes.items()) if isinstance(inputVolumes, dict) else [(None, n) for n in inputVolumes]
        items = [(name, node) for name, node in items if node is not None]
        if not items:
            raise ValueError("Select at least one input volume.")
        reference = items[0][1]
        referenceGeometry = self.volumeToArray(reference)[1]
        tempDir = self.makeJobFolder(tempBase)
        try:
            inputs = []
            for index, (name, node) in enumerate(items):
                geometry = self.volumeToArray(node)[1]
                check_same_grid(referenceGeometry, geometry, reference.GetName(), node.GetName())
                path = os.path.join(tempDir, f"input{index}_{name or 'channel'}.nrrd")
                self.writeVolume(node, path, compress=False)
                inputs.append((name, path))
            maskPath = None
            if maskNode is not None:
                check_same_grid(referenceGeometry, self.volumeToArray(maskNode)[1], reference.GetName(),
                                maskNode.GetName())
                maskPath = self.writeVolume(maskNode, os.path.join(tempDir, "mask.nrrd"), compress=False)
            outputPath = os.path.join(tempDir, "segmentation.nii.gz")
            probabilityPath = os.path.join(tempDir, "probability.nii.gz") if withProbability else None
            command = self.buildSegmentCommand(inputs, outputPath, maskPath=maskPath, modelPath=modelPath,
                                               probabilityOutputPath=probabilityPath, threshold=threshold,
                                               device=device, postprocess=postprocess)
        except BaseException:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return ChildJob(command=command, env=self.childEnvironment(), kind="segment", tempDir=tempDir,
                        outputPath=outputPath, probabilityOutputPath=probabilityPath,
                        referenceVolumeNode=reference, segmentName=segmentName,
                        extra={"threshold": None if threshold is None else float(threshold)})  # None: the model's

    @staticmethod
    def makeJobFolder(tempBase: Optional[str] = None) -> str:
        """A new private folder for one job (``tempfile``; under ``tempBase`` when given)."""
        if tempBase:
            os.makedirs(tempBase, exist_ok=True)
        return tempfile.mkdtemp(prefix="CGCLesionSeg-", dir=tempBase or None)

    @staticmethod
    def trainedModelPath(outputDir: str) -> str:
        """The model a finished training in ``outputDir`` produced: the final self-training round's
        (``RUN/self_train.json``, written by ``--self-train-rounds``), else ``RUN/last.pt``."""
        record = os.path.join(outputDir, "self_train.json")
        try:
            with open(record) as fh:
                final = json.load(fh).get("final_model")
        except (OSError, ValueError):
            final = None
        return os.path.join(outputDir, final if final else "last.pt")

    def prepareTrainJob(self, casesDir: str, outputDir: str, tempBase: Optional[str] = None, **kwargs) -> ChildJob:
        """A training job: :meth:`buildTrainCommand` plus a stop file in a new temporary folder, so
        that Cancel asks the trainer to checkpoint and exit (``--stop-file``) instead of killing it."""
        command = self.buildTrainCommand(casesDir, outputDir, **kwargs)
        tempDir = self.makeJobFolder(tempBase)
        stopFile = os.path.join(tempDir, STOP_FILE_NAME)
        command = command[:3] + ["--stop-file", stopFile] + command[3:]
        return ChildJob(command=command, env=self.childEnvironment(), kind="train", tempDir=tempDir,
                        stopFile=stopFile, extra={"outputDir": str(outputDir)})

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
                         loadProbability: bool = False, closedSurface: bool = True):
        """Load a finished job's output into a segmentation node.

        The network's probability map goes into ``probabilityNode`` when given; with
        ``loadProbability`` into the volume this segmentation's earlier run filled (node reference),
        or a new "<reference> CGC probability" volume: re-running never piles up volumes. The
        result's labelmap hash is stored (:meth:`isResultEdited`); ``closedSurface`` adds the 3-D
        representation. Everything is read and checked before the scene is modified.
        """
        reference = job.referenceVolumeNode
        if reference is None or reference.GetScene() is not slicer.mrmlScene:
            raise ValueError("The input volume is no longer in the scene; the result was not loaded.")
        self.checkOutputsAreNotInputs({"probability": probabilityNode}, [reference])
        if not job.outputPath or not os.path.isfile(job.outputPath):
            raise ValueError("The segmentation process wrote no output file.")
        mask = self._readArrayOnGrid(job.outputPath, reference, labelmap=True)
        removed = self._removedLesions(job.outputPath)
        probability = None
        wanted = probabilityNode is not None or loadProbability
        if wanted and job.probabilityOutputPath and os.path.isfile(job.probabilityOutputPath):
            probability = self._readArrayOnGrid(job.probabilityOutputPath, reference, labelmap=False)
        if probabilityNode is None and probability is not None and segmentationNode is not None:
            previous = segmentationNode.GetNodeReference(PROBABILITY_REFERENCE_ROLE)
            if previous is not None and previous.IsA("vtkMRMLScalarVolumeNode") and not previous.IsA(
                    "vtkMRMLLabelMapVolumeNode"):
                probabilityNode = previous
        segmentationNode = self.arrayToSegmentation(mask, reference, segmentationNode, job.segmentName)
        self.storeResultHash(segmentationNode, reference, job.segmentName)
        segmentationNode.SetNodeReferenceID(SOURCE_REFERENCE_ROLE, reference.GetID())
        segmentationNode.SetAttribute(REMOVED_LESIONS_ATTRIBUTE, json.dumps(removed) if removed else "")
        if probability is not None:
            probabilityNode = self.arrayToVolume(probability.astype(np.float32), reference, probabilityNode,
                                                 name=f"{reference.GetName()} CGC probability")
            segmentationNode.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, probabilityNode.GetID())
        if closedSurface:
            segmentationNode.CreateClosedSurfaceRepresentation()
        return segmentationNode

    def setSegmentJobTarget(self, job: ChildJob, segmentationNode=None) -> None:
        """Fix, when a segment job starts, the segmentation its result will go into (None: a new node), and
        remember its lesion segment as it is now. The output selector may change, and the segment may be
        edited, during a run of minutes: :meth:`segmentJobTarget` reads this record, not the GUI. A node the
        result cannot be written into is refused now, not after the run."""
        if segmentationNode is not None:
            self._checkBinaryLabelmapSource(segmentationNode)
        job.extra["targetId"] = segmentationNode.GetID() if segmentationNode is not None else None
        job.extra["targetHash"] = (self.labelmapHash(segmentationNode, job.referenceVolumeNode, job.segmentName)
                                   if segmentationNode is not None and job.referenceVolumeNode is not None else None)

    def segmentJobTarget(self, job: ChildJob) -> tuple:
        """``(segmentationNode or None, note)``: where a finished job's result goes. The node fixed by
        :meth:`setSegmentJobTarget`, unless it left the scene or its lesion segment changed during the run
        (an edit in the Segment Editor): then None — a new node, so that nothing the user did is
        overwritten — and ``note`` says why ('' otherwise)."""
        targetId = job.extra.get("targetId")
        if not targetId:
            return None, ""
        node = slicer.mrmlScene.GetNodeByID(targetId)
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            return None, "The output segmentation was removed during the run; the result went into a new segmentation."
        reference = job.referenceVolumeNode
        if reference is not None and self.labelmapHash(node, reference, job.segmentName) != job.extra.get("targetHash"):
            return None, (f"'{node.GetName()}' changed during the run (its '{job.segmentName}' segment was edited or "
                          "replaced), so it was left as it is; the result went into a new segmentation.")
        return node, ""

    @staticmethod
    def _removedLesions(outputPath: str) -> Optional[dict]:
        """The sidecar's ``removed_lesions`` (what keep-largest removed), None when absent or unreadable."""
        from CGCLesionSegLib.sidecar import sidecar_path
        try:
            with open(sidecar_path(outputPath)) as fh:
                removed = json.load(fh).get("removed_lesions")
        except (OSError, ValueError, AttributeError):
            return None
        return removed if isinstance(removed, dict) else None

    @staticmethod
    def cleanupJob(job: ChildJob) -> None:
        if job.tempDir:
            shutil.rmtree(job.tempDir, ignore_errors=True)

    def runJob(self, job: ChildJob, onProgress=None, onLog=None, shouldStop=None) -> int:
        """Run a prepared job to the end (headless use); raises CancelledError or RuntimeError."""
        job.process = ChildProcess(job.command, env=job.env, stopFile=job.stopFile)
        job.process.start()
        code = job.process.wait(onProgress=onProgress, onLog=onLog, shouldStop=shouldStop)
        if job.process.cancelled:
            raise CancelledError("Cancelled by the user; the scene is unchanged.")
        if code != 0 and not job.process.stopRequested:
            raise RuntimeError(f"{job.kind} process failed (exit code {code}): {job.process.errorSummary()}")
        return code

    def segment(self, inputVolumes, maskNode=None, modelPath: Optional[str] = None, threshold: Optional[float] = None,
                device: str = "auto", segmentationNode=None, probabilityNode=None, loadProbability: bool = False,
                onProgress=None, onLog=None, shouldStop=None, postprocess: str = "auto",
                tempBase: Optional[str] = None, closedSurface: bool = False):
        """Network segmentation in a child process, blocking (scripts, tests). Returns the segmentation node.

        On failure or cancel the scene is unchanged and the temporary files are removed.
        """
        job = self.prepareSegmentJob(inputVolumes, maskNode, modelPath, threshold, device,
                                     withProbability=probabilityNode is not None or loadProbability,
                                     postprocess=postprocess, tempBase=tempBase)
        try:
            self.runJob(job, onProgress, onLog, shouldStop)
            return self.finishSegmentJob(job, segmentationNode, probabilityNode, loadProbability,
                                         closedSurface=closedSurface)
        finally:
            self.cleanupJob(job)

    @staticmethod
    def sourceVolumeOf(segmentationNode):
        """The volume a result segmentation was computed on (None when unknown or removed)."""
        if segmentationNode is None:
            return None
        return segmentationNode.GetNodeReference(SOURCE_REFERENCE_ROLE)

    # ---- re-run safety: was the result edited? --------------------------------------------------

    def labelmapHash(self, segmentationNode, referenceVolumeNode, segmentName: str = "Lesion") -> Optional[str]:
        """SHA-256 of the named segment's labelmap on the reference grid (None without that segment)."""
        if not segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName):
            return None
        array = np.ascontiguousarray(self.segmentationToArray(segmentationNode, referenceVolumeNode, segmentName) != 0)
        digest = hashlib.sha256(repr(array.shape).encode())
        digest.update(np.packbits(array).tobytes())
        return digest.hexdigest()

    def storeResultHash(self, segmentationNode, referenceVolumeNode, segmentName: str = "Lesion") -> str:
        value = self.labelmapHash(segmentationNode, referenceVolumeNode, segmentName)
        segmentationNode.SetAttribute(LABELMAP_HASH_ATTRIBUTE, value or "")
        return value

    def isResultEdited(self, segmentationNode, referenceVolumeNode=None, segmentName: str = "Lesion") -> bool:
        """True when the segment differs from what the module wrote (edited in the Segment Editor),
        or the node holds a segment of that name that the module did not write. Unknown → True."""
        if segmentationNode is None or not segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName):
            return False
        stored = segmentationNode.GetAttribute(LABELMAP_HASH_ATTRIBUTE)
        reference = referenceVolumeNode or segmentationNode.GetNodeReference(SOURCE_REFERENCE_ROLE)
        if not stored or reference is None:
            return True
        return self.labelmapHash(segmentationNode, reference, segmentName) != stored

    # ---- result statistics ---------------------------------------------------------------------

    @staticmethod
    def lesionStatistics(mask_zyx: np.ndarray, spacing_xyz: Sequence[float],
                         probability_zyx: Optional[np.ndarray] = None) -> dict:
        """Volume (mL), number of connected lesions (26-connectivity), largest lesion (mL) and the
        mean of the map that was thresholded (the network's probability) inside the mask."""
        from scipy import ndimage
        mask = np.asarray(mask_zyx) != 0
        voxelMl = float(np.prod([float(s) for s in spacing_xyz])) / 1000.0
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(0, dtype=np.int64)
        meanP = None
        if probability_zyx is not None and mask.any():
            meanP = float(np.asarray(probability_zyx, dtype=np.float64)[mask].mean())
        return {"volume_ml": int(mask.sum()) * voxelMl, "voxels": int(mask.sum()), "lesions": int(count),
                "largest_ml": (int(sizes.max()) * voxelMl) if count else 0.0, "mean_probability": meanP}

    def resultStatistics(self, segmentationNode, referenceVolumeNode, probabilityNode=None,
                         segmentName: str = "Lesion") -> dict:
        """:meth:`lesionStatistics` of a result segment (probability: its network map by default), plus
        ``"removed"``: what the output rule's keep-largest removed when this module wrote the result (the
        sidecar's ``removed_lesions``), else None."""
        mask = self.segmentationToArray(segmentationNode, referenceVolumeNode, segmentName)
        geometry = self.volumeToArray(referenceVolumeNode)[1]
        if probabilityNode is None:
            probabilityNode = segmentationNode.GetNodeReference(PROBABILITY_REFERENCE_ROLE)
        probability = self.volumeToArray(probabilityNode)[0] if probabilityNode is not None else None
        if probability is not None and probability.shape != mask.shape:
            probability = None
        statistics = self.lesionStatistics(mask, geometry.spacing, probability)
        try:
            removed = json.loads(segmentationNode.GetAttribute(REMOVED_LESIONS_ATTRIBUTE) or "null")
        except ValueError:
            removed = None
        statistics["removed"] = removed if isinstance(removed, dict) else None
        return statistics

    def writeStatisticsTable(self, statistics: dict, tableNode=None, name: str = "CGC lesion statistics"):
        """Put the statistics into a vtkMRMLTableNode (columns Measure, Value, Unit); created when not given."""
        if tableNode is None:
            tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
        table = tableNode.GetTable()
        table.Initialize()
        columns = []
        for title in ("Measure", "Value", "Unit"):
            column = vtk.vtkStringArray()
            column.SetName(title)
            table.AddColumn(column)
            columns.append(column)
        meanP = statistics.get("mean_probability")
        rows = [("Lesion volume", f"{statistics['volume_ml']:.3f}", "mL"),
                ("Connected lesions (26-connectivity)", str(statistics["lesions"]), ""),
                ("Largest lesion", f"{statistics['largest_ml']:.3f}", "mL"),
                ("Mean probability inside the mask", "" if meanP is None else f"{meanP:.4f}", "")]
        removed = statistics.get("removed")
        if removed:  # the output rule's keep-largest (a result of this module's Segment)
            rows += [("Candidates >= 1 mL removed by the output rule", str(removed.get("count_1ml", 0)), ""),
                     ("Largest removed candidate", f"{removed.get('largest_ml', 0.0):.3f}", "mL")]
        table.SetNumberOfRows(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                table.SetValue(row, column, vtk.vtkVariant(value))
        table.Modified()
        tableNode.Modified()
        return tableNode

    @staticmethod
    def formatStatistics(statistics: dict) -> str:
        meanP = statistics.get("mean_probability")
        text = (f"{statistics['volume_ml']:.2f} mL in {statistics['lesions']} lesion(s); "
                f"largest {statistics['largest_ml']:.2f} mL")
        text += f"; mean probability {meanP:.2f}" if meanP is not None else ""
        removed = statistics.get("removed")
        if removed and removed.get("count_1ml"):
            n = removed["count_1ml"]
            text += (f"; the output rule removed {n} other candidate{'s' if n != 1 else ''} of >= 1 mL (largest "
                     f"{removed['largest_ml']:.1f} mL; Output rule 'none' keeps them)")
        return text

    # ---- one-click try-out -----------------------------------------------------------------------

    def loadPhantom(self, shapeXyz: Sequence[int] = (96, 96, 60), spacingXyz: Sequence[float] = (2.0, 2.0, 2.0),
                    seed: int = 0, withTruth: bool = True) -> dict:
        """Generate the four-channel phantom (``CGCLesionSegLib.phantom``, synthetic, no patient data)
        into the scene. Returns ``{"flair", "t1", "t1ce", "t2", "mask"[, "truth"]}`` → nodes (mask and
        ground truth as labelmaps)."""
        from CGCLesionSegLib.phantom import make_phantom
        phantom = make_phantom(shape_xyz=shapeXyz, spacing_xyz=spacingXyz, seed=seed)
        ijkToRas = phantom.geometry.ijk_to_ras_matrix()
        before = self._nodeIds()
        nodes = {}
        try:
            for name, array in phantom.channels.items():
                nodes[name] = slicer.util.addVolumeFromArray(np.ascontiguousarray(array, dtype=np.float32), ijkToRas,
                                                             f"Phantom {name.upper()}")
            nodes["mask"] = slicer.util.addVolumeFromArray(np.ascontiguousarray(phantom.brain_mask), ijkToRas,
                                                           "Phantom brain mask", "vtkMRMLLabelMapVolumeNode")
            if withTruth:
                truth = (phantom.labels != 0).astype(np.uint8)
                nodes["truth"] = slicer.util.addVolumeFromArray(truth, ijkToRas, "Phantom lesion (truth)",
                                                                "vtkMRMLLabelMapVolumeNode")
            for node in nodes.values():
                if node.GetDisplayNode() is None:
                    node.CreateDefaultDisplayNodes()
        except BaseException:
            self._removeNodesAddedSince(before)
            raise
        return nodes


def exportPathWithSuffix(path: str, kind: str) -> str:
    """The save dialog's answer with the export's suffix added when it has none (a bare name such as
    ``lesion`` becomes ``lesion.seg.nrrd`` / ``lesion.nii.gz``)."""
    path = os.fspath(path)
    lower = path.lower()
    if kind == "seg.nrrd":
        if lower.endswith(".seg.nrrd"):
            return path
        if lower.endswith(".nrrd"):
            path = path[: -len(".nrrd")]
        return path + ".seg.nrrd"
    if kind == "nii.gz":
        return path if lower.endswith((".nii.gz", ".nii", ".nrrd", ".mha")) else path + ".nii.gz"
    raise ValueError(f"unknown export kind {kind!r}")
