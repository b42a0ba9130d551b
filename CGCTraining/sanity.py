"""A label-free check after training: does the saved model mark lesion on its own training cases, and
not far more than its target does?

A run can end with a model that puts no voxel at or above 0.5 anywhere (seen once in protocol cgc-v5: a
FLAIR-only fold model whose training loss looked normal gave Dice 0 on every held-out case). Nothing in
the loss log shows it, and a user would only find out on their data. So after training, the saved
model segments the training cases where its target marks the most lesion, and its voxels >= 0.5 are
compared with the target's. No label is read: the comparison is with the training target (P, or the
pseudo-labels of a self-training round) on the training grid.

The opposite failure was seen in protocol cgc-v14: two of twelve 150-step models (the same seed in both
folds) marked 6.2 and 6.8 times as many voxels as their targets, i.e. most of the brain's bright tissue;
their loss logs looked normal too. Such a model is reported as *overgrown*.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

#: Below this ratio (network voxels >= 0.5 over target voxels >= 0.5, on the checked cases) the model
#: is reported as collapsed. Measured on cgc-v5's 2 mm models (their own caches): 5 healthy ones
#: 0.40-0.66, the collapsed FLAIR fold model 0.0. The threshold only separates those, it is not a quality score.
COLLAPSE_RATIO = 0.05
#: Above this ratio the model is reported as overgrown. Label-free ratios of the protocols' models: the 69
#: healthy ones checked in cgc-v5 (five), cgc-v9, cgc-v12 and cgc-v13 0.35-1.05, cgc-v14's other ten 0.63-1.33,
#: its two overgrown ones 6.2 and 6.8. A model trained towards its target has no reason to mark three times as much; like COLLAPSE_RATIO
#: the bound only separates those groups, it is not a quality score.
OVERGROWTH_RATIO = 3.0
#: Cases checked (the ones whose target marks the most voxels): enough to see a collapse, cheap to run.
MAX_CASES = 2


def lesion_check(checkpoint: str | Path, cases: Sequence, window_zyx: Sequence[int], device: torch.device,
                 max_cases: int = MAX_CASES, overgrowth_ratio: float = OVERGROWTH_RATIO) -> dict:
    """Segment up to ``max_cases`` cached training cases (``CachedCase``: ``image`` ``(C, Z, Y, X)``,
    ``prob`` and ``mask`` ``(Z, Y, X)`` on the training grid) with the model in ``checkpoint``, windows
    of ``window_zyx`` zero-padded where the case is smaller (as training pads a crop).

    Returns ``{"cases", "network_voxels", "target_voxels", "ratio", "collapsed", "overgrown"}``; ``ratio``
    is None (and both flags False) when no checked case has a target voxel >= 0.5. ``overgrowth_ratio``:
    the bound of ``overgrown`` (``--overgrowth-ratio``; default :data:`OVERGROWTH_RATIO`)."""
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.inference import InferenceConfig, predict_probability
    sizes = [int(np.count_nonzero((np.asarray(c.prob) >= 0.5) & np.asarray(c.mask))) for c in cases]
    order = [i for i in sorted(range(len(cases)), key=lambda i: -sizes[i]) if sizes[i] > 0][:max_cases]
    result = {"cases": [cases[i].name for i in order], "network_voxels": 0, "target_voxels": 0, "ratio": None,
              "collapsed": False, "overgrown": False}
    if not order:
        return result
    model, _ = load_checkpoint(checkpoint, device=device)
    config = InferenceConfig(pad_to_window=True)  # overlap 0.5, Gaussian blending: as `cgcseg segment` tiles
    for i in order:
        case = cases[i]
        image = np.array(case.image, dtype=np.float32)  # a copy: the cache is read-only
        prob = predict_probability(model, image, config, torch.device(device), window_xyz=tuple(reversed(window_zyx)))
        result["network_voxels"] += int(np.count_nonzero((prob >= 0.5) & np.asarray(case.mask)))
        result["target_voxels"] += sizes[i]
    result["ratio"] = result["network_voxels"] / result["target_voxels"]
    result["collapsed"] = result["ratio"] < COLLAPSE_RATIO
    result["overgrown"] = result["ratio"] > overgrowth_ratio
    return result


def failure(check: dict | None) -> str | None:
    """``"collapsed"`` or ``"overgrown"`` when a lesion check (as written to ``RUN_DIR/lesion_check.json``)
    failed, else None."""
    if check and check.get("collapsed"):
        return "collapsed"
    if check and check.get("overgrown"):
        return "overgrown"
    return None


def failed(check: dict | None) -> bool:
    """True when a lesion check (as written to ``RUN_DIR/lesion_check.json``) says collapsed or overgrown."""
    return failure(check) is not None


def check_message(check: dict, checkpoint: str | Path) -> str | None:
    """The warning for a model that failed the check (what was measured, what to do); None if it passed."""
    if check.get("collapsed"):
        return collapse_message(check, checkpoint)
    if check.get("overgrown"):
        return (f"warning: the trained model {checkpoint} marks {check['ratio']:.1f} times as many voxels as its "
                f"training target on its own training cases ({check['network_voxels']} voxels >= 0.5 against "
                f"{check['target_voxels']}, on {', '.join(check['cases'])}): it has overgrown and will mark healthy "
                "tissue as lesion. Train again with another --seed (and keep this run folder for comparison)")
    return None


def collapse_message(check: dict, checkpoint: str | Path) -> str:
    """The warning for a collapsed model: what was measured and what to do."""
    return (f"warning: the trained model {checkpoint} marks almost no lesion on its own training cases "
            f"({check['network_voxels']} voxels >= 0.5 where its training target has {check['target_voxels']}, "
            f"on {', '.join(check['cases'])}): it has collapsed to background and will miss lesions. Train again "
            "with another --seed (and keep this run folder for comparison); a lower --lr also helps")
