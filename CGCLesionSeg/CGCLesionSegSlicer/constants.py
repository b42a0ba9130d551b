"""Constants shared by the Slicer-side files of the module."""
import os

#: Folder holding CGCLesionSeg.py, CGCLesionSegLib/ and (when installed) CGCTraining/.
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RESEARCH_NOTICE = ("Research use only. CGC Lesion Seg is not a medical device and must not be used for "
                   "clinical diagnosis or treatment decisions.")

#: Modalities in the documented input order (the first present one is the reference channel).
MODALITIES = ("flair", "t1", "t1ce", "t2")

#: Training recipes offered by the Train section (``python -m CGCTraining --recipe NAME``; the same names as
#: ``CGCTraining.config.RECIPES``, which imports torch and so is not imported here). ``shipped`` first: the
#: recipe of the shipped models, the best measured on held-out cases with a CPU budget (300 + 300 steps, its
#: own length); ``paper``: the paper's settings, trained for the Epochs given.
TRAINING_RECIPES = ("shipped", "paper")

#: Segment appearance: a colour that reads well on MRI and a coded terminology entry that Slicer's
#: terminology selector can match. "Mass" (SCT 4147007) under "Morphologically Altered Structure"
#: (SCT 49755003) is in both SegmentationCategoryTypeModifier-DICOM-Master.json and
#: -SlicerGeneralAnatomy.json of Slicer 5.6 to main; the General Anatomy list is Slicer's default
#: segmentation context. ("Lesion", SCT 52988006, is in neither.)
LESION_COLOR = (0.96, 0.36, 0.14)
LESION_TERMINOLOGY = {
    "context": "Segmentation category and type - 3D Slicer General Anatomy list",
    "category": ("SCT", "49755003", "Morphologically Altered Structure"),
    "type": ("SCT", "4147007", "Mass"),
}

#: Attribute of a result segmentation node: SHA-256 of its lesion labelmap when the module wrote it.
LABELMAP_HASH_ATTRIBUTE = "CGCLesionSeg.LabelmapHash"
#: Attribute of a result segmentation node: what the output rule's keep-largest removed (JSON of the sidecar's
#: ``removed_lesions``; empty when the rule keeps every component).
REMOVED_LESIONS_ATTRIBUTE = "CGCLesionSeg.RemovedLesions"
#: Node reference role from a result segmentation to its network probability volume.
PROBABILITY_REFERENCE_ROLE = "CGCLesionSegProbability"
#: Node reference role from a result segmentation to the volume it was computed on.
SOURCE_REFERENCE_ROLE = "CGCLesionSegSource"
