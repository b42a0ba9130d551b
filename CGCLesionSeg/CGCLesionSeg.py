"""CGC Lesion Seg: the 3D Slicer scripted module (module class, parameter node, self-test).

This file stays thin. The Slicer side lives in the package ``CGCLesionSegSlicer`` beside it, one
file each: ``widget.py`` (the Qt panel), ``logic.py`` (MRML nodes <-> arrays, GMM preview, child
jobs, statistics), ``jobs.py`` (the Qt-free job lifecycle) and ``runner.py`` (child processes). The
Slicer-free core is ``CGCLesionSegLib``. The Logic never touches ``slicer.app`` and never opens
dialogs, so it runs under the ``slicer-core`` wheel in CI as it does inside Slicer.

Research use only, not for clinical diagnosis.
"""
import os
import sys
from typing import Annotated

import numpy as np
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:  # CGCLesionSegSlicer and CGCLesionSegLib live beside this file
    sys.path.insert(0, MODULE_DIR)

from CGCLesionSegLib.commands import OUTPUT_RULES  # noqa: E402  (argparse only)
from CGCLesionSegSlicer.constants import (LESION_COLOR, LESION_TERMINOLOGY, MODALITIES,  # noqa: E402,F401
                                          RESEARCH_NOTICE, TRAINING_RECIPES)
from CGCLesionSegSlicer.logic import CGCLesionSegLogicBase, pathOrNone  # noqa: E402,F401
from CGCLesionSegSlicer.runner import (CancelledError, ChildJob, ChildProcess, killProcessTree,  # noqa: E402,F401
                                       parseProgressLine)

#: Submodules of the Slicer-side package, reloaded (in this order) by the Widget's "Reload".
SLICER_SIDE_MODULES = ("constants", "runner", "jobs", "logic", "widget")


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
<p>Inference and training run as separate processes: Slicer stays responsive; <b>Cancel</b>
stops a segmentation at once and asks training to write its checkpoint and stop. New here?
<b>Load try-out phantom</b> puts a synthetic four-channel case into the scene. Volumes under a
transform must be hardened first.</p>
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
    Segment: model file (empty = the model shipped for these modalities), threshold (the model's own by
    default: ``thresholdFromModel``), output rule
    (``cgcseg segment --postprocess``: auto, none, single-lesion, single-lesion-recommended), device; the result segmentation
    and the table its statistics are written to.
    Train: cohort folder (BraTS layout), run folder, recipe (shipped: the shipped models' recipe and length, with targets for any cohort;
    paper: the paper's settings for the epochs given) and an optional time limit.
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

    modelPath: str = ""  # paths are str: a pathlib.Path parameter shows "." before anything is chosen
    thresholdFromModel: bool = True  # the threshold the model records for its own rule (else 0.5); off: `threshold`
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    outputRule: Annotated[str, Choice(list(OUTPUT_RULES))] = "auto"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    outputSegmentation: vtkMRMLSegmentationNode
    statisticsTable: vtkMRMLTableNode

    trainingCasesFolder: str = ""
    trainingOutputFolder: str = ""
    trainingRecipe: Annotated[str, Choice(list(TRAINING_RECIPES))] = "shipped"
    trainingEpochs: Annotated[int, WithinRange(1, 100000)] = 400
    trainingMaxMinutes: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0



#
# Logic and Widget (their code is in CGCLesionSegSlicer/logic.py and widget.py)
#

class CGCLesionSegLogic(CGCLesionSegLogicBase):
    """The module's Logic (see :class:`CGCLesionSegSlicer.logic.CGCLesionSegLogicBase`)."""

    def getParameterNode(self) -> CGCLesionSegParameterNode:
        return CGCLesionSegParameterNode(super().getParameterNode())


def _widgetBase():
    """The Widget's code needs Qt, which exists only inside Slicer (not under slicer-core in CI)."""
    try:
        from CGCLesionSegSlicer.widget import CGCLesionSegWidgetBase
    except ImportError:  # no qt / ctk: the module file still imports, the Widget cannot be built
        return object
    return CGCLesionSegWidgetBase


class CGCLesionSegWidget(_widgetBase()):
    """The module's panel (see :class:`CGCLesionSegSlicer.widget.CGCLesionSegWidgetBase`)."""

    def createLogic(self) -> CGCLesionSegLogic:
        return CGCLesionSegLogic()

    def onReload(self) -> None:
        """Reload the Slicer-side package too (Slicer's reload re-reads only this file)."""
        import importlib
        for name in SLICER_SIDE_MODULES:
            module = sys.modules.get(f"CGCLesionSegSlicer.{name}")
            if module is not None:
                importlib.reload(module)
        super().onReload()


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
        self.setUp()
        self.test_Statistics()

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


    def test_Statistics(self) -> None:
        self.delayDisplay("Result statistics")
        logic = CGCLesionSegLogic()
        node, brain, lesion = self._syntheticVolume()
        segmentation = logic.arrayToSegmentation(lesion, node)
        statistics = logic.resultStatistics(segmentation, node)
        self.assertEqual(statistics["lesions"], 1)
        self.assertAlmostEqual(statistics["volume_ml"], lesion.sum() * 0.9 * 1.1 * 2.0 / 1000.0, places=6)
        table = logic.writeStatisticsTable(statistics)
        self.assertEqual(table.GetNumberOfRows(), 4)
        self.delayDisplay("Statistics passed")
