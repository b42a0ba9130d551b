"""Self-training rounds (issue 9's recipe item; the shipped models' second round), for any cohort.

A self-training round segments every training case with the previous round's model, using the rule
:data:`PSEUDO_RULE` (0.5·CGC + 0.5·P, 2-D hole filling, threshold 0.5, *no* keep-largest: a training case
may hold several lesions; no label is read), and trains the next round from the previous round's weights
on those binary maps as targets (the ``prob`` column of a case list). It is what the declared protocols
(benchmarks/protocol.py) and ``scripts/train_default_models.py`` do, in one place.

Two ways to run it:

* ``python -m CGCTraining ... --self-train-rounds 1``: round 1 trains in ``RUN_DIR`` as usual; round
  ``k + 1`` lives in ``RUN_DIR/self-train-<k>/`` (its own run folder, with its targets in ``targets/``);
  ``RUN_DIR/self_train.json`` names the final model. ``--resume`` continues whichever round stopped.
  One process (one GPU or the CPU); under torchrun the rounds are run as three commands:
* ``python -m CGCTraining.self_train --model RUN/last.pt --cases CASES --output-dir DIR`` writes the targets
  and ``DIR/cases.csv``; then ``torchrun ... -m CGCTraining --cases DIR/cases.csv --init-from RUN/last.pt ...``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CGCLesionSeg"))

#: Output rule of the pseudo-labels: the fusion 0.5·CGC + 0.5·P, 2-D hole filling, threshold 0.5, and no
#: keep-largest or opening (a training case may hold several lesions, small ones included).
PSEUDO_RULE = dict(gmm_weight=0.5, fill_holes="2d", keep_largest=0, opening_radius=0, min_component_voxels=0)
#: How the pseudo-label threshold is set per case. ``fixed``: :data:`PSEUDO_RULE`'s 0.5 (the shipped recipe).
#: ``keep-p``: lowered, never raised, so that the target keeps at least the volume of the model's own P >= 0.5
#: (its first training target), down to :data:`KEEP_P_FLOOR` (see :func:`volume_keeping_threshold`).
#: ``default-output``: not the fusion rule at all, but the shipped default output — ``single-lesion-recommended``
#: (0.5·CGC + 0.5·P_rec, P_rec the map ``cgcseg gmm`` thresholds by default; 2-D hole filling, opening 3 mm,
#: the largest lesion) at :data:`DEFAULT_OUTPUT_THRESHOLD` (protocol cgc-v24): the round learns what the whole
#: pipeline outputs. Single-lesion MRI cohorts only (it keeps one lesion per case; P_rec is an MRI preset).
#: ``default-output-all``: the same map and threshold as ``default-output`` but every lesion is kept that holds a
#: voxel where the fused map is >= :data:`CORE` (hysteresis at the shipped rule's two levels, 0.3 and 0.5; no
#: keep-largest, no new parameter): the round learns the pipeline's output without learning "one lesion per case"
#: (protocol multi-lesion-v1 found the shipped round-2 network marks a pasted second lesion at 0.19 against round
#: 1's 0.74). Protocol cgc-v38's screen: it restores the second lesion (0.76) but also keeps the regions P_rec leaks
#: into, and the held-out network falls from 0.813 to 0.743 — an option, not the recipe.
#: ``default-output-agreed``: the ``default-output`` target (opening 3 mm, the largest lesion) plus every other
#: lesion of the same opened map (grown back as that rule grows its lesion) of which the network's own map marks at
#: least :data:`AGREE` of the voxels (>= 0.5): the opening cuts P_rec's leaks off the lesion, and a leak the fused map
#: passes mostly through P_rec is not one the network marks (protocol cgc-v39: its screen passed, second lesion
#: 0.66 vs 0.19 at held-out network −0.010; a confirmation on fresh seeds decides — an option until then).
#: ``default-output-agreed-opened``: the same, but each further lesion is judged and kept as its own opened
#: component, before anything is grown back, and one that touches the rule's own lesion is never added. Why (a
#: review after cgc-v39): ``default-output-agreed`` labels the candidates after the grow-back, so a leak joined to
#: the lesion by a bridge shorter than ~12 mm (two 6 mm grow-backs meet) becomes one candidate with the lesion,
#: passes on the lesion's votes, and is added whole although the network marks none of it — the very leak the
#: opening was there to cut. Its candidates are also made in the model's voxel order, as the rule's own lesion is
#: (the 2-D hole filling runs over the same slices for a case stored with permuted axes). Protocol cgc-v42.
PSEUDO_VOLUMES = ("fixed", "keep-p", "default-output", "default-output-all", "default-output-agreed",
                  "default-output-agreed-opened")
#: Share of a further ``default-output-agreed`` lesion's voxels the network's own map must mark (at least half).
AGREE = 0.5
#: The fused map's level a ``default-output-all`` lesion must reach somewhere (the rules' standard 0.5, as
#: ``lesion_choice="core"`` / ``"seed"`` read it).
CORE = 0.5
KEEP_P_FLOOR = 0.3
#: The ``default-output`` targets' threshold: the default-output threshold the shipped models were trained with,
#: which every fold of cgc-v18's confirmation chose on its own training cases (docs/protocols/README.md). The
#: recipe keeps it; at inference both shipped models now record 0.35 (cgc-v29; the FLAIR model cgc-v44).
DEFAULT_OUTPUT_THRESHOLD = 0.3
#: The ``default-output`` targets' rule: the output preset, its threshold and its lesion choice (also what
#: self_train.json records). The lesion stays the largest (``size``), as in the recipe cgc-v24 confirmed and the
#: shipped models were trained with, although ``cgcseg segment``'s preset now ranks by ``seed`` (hysteresis-v2,
#: an inference rule; on the unshifted held-out cases ``size``, ``core`` and ``seed`` chose the same lesion in every
#: case and seed measured).
DEFAULT_OUTPUT_RULE = {"preset": "single-lesion-recommended", "threshold": DEFAULT_OUTPUT_THRESHOLD, "lesion_choice": "size"}
#: The ``default-output-all`` targets' rule (also what self_train.json records).
DEFAULT_OUTPUT_ALL_RULE = {"preset": "single-lesion-recommended", "threshold": DEFAULT_OUTPUT_THRESHOLD,
                           "keep_largest": 0, "core": CORE}
#: ``--pseudo-rule``'s help, for ``python -m CGCTraining`` and ``python -m CGCTraining.self_train`` alike.
PSEUDO_RULE_HELP = ("how the targets are made. fixed: 0.5*CGC + 0.5*P at 0.5 (the shipped recipe); keep-p: the same "
                    f"per case at the largest threshold <= 0.5 (not below {KEEP_P_FLOOR}) whose target keeps the model's "
                    "P >= 0.5 volume (protocol cgc-v22); default-output: the shipped default output "
                    f"(single-lesion-recommended at {DEFAULT_OUTPUT_THRESHOLD}: fused with cgcseg gmm's map, holes filled, "
                    "opened, the largest lesion only; single-lesion MRI cohorts; protocol cgc-v24); default-output-all: "
                    "the same map and threshold, keeping every lesion that reaches 0.5 somewhere (protocol cgc-v38: "
                    "screened, not adopted); default-output-agreed: the default-output target plus every other lesion "
                    f"of the same opened map of which the network's own map (>= 0.5) marks at least {AGREE:g} of the "
                    "voxels, judged after the grow-back (protocols cgc-v39/v40); default-output-agreed-opened: the same, "
                    "each further lesion judged on its opened core before the grow-back and never one that touches "
                    "the kept lesion (protocol cgc-v42). Recorded in the targets' targets.json")
#: Per-case record of the thresholds and volumes, written beside the targets.
TARGET_RECORD = "targets.json"
#: Sub-folder of RUN_DIR for round k + 1, and the record of the rounds.
ROUND_DIR = "self-train-{k}"
RECORD = "self_train.json"
LISTING = "cases.csv"


def target_rule_text(volume: str) -> str:
    """How a round's targets are made under the pseudo-label rule ``volume`` (:data:`PSEUDO_VOLUMES`), in the
    words of a model card: "segmented the training cases with <this>"."""
    if volume == "fixed":
        return "0.5·CGC + 0.5·P, 2-D hole filling, threshold 0.5 and no keep-largest"
    if volume == "keep-p":
        return (f"0.5·CGC + 0.5·P, 2-D hole filling, a per-case threshold (`--pseudo-rule keep-p`, between {KEEP_P_FLOOR} "
                "and 0.5, keeping the previous round's own P >= 0.5 volume) and no keep-largest")
    if volume == "default-output":
        return (f"the shipped default output (`--pseudo-rule default-output`: 0.5·CGC + 0.5·P_rec at {DEFAULT_OUTPUT_THRESHOLD}, "
                "P_rec the map `cgcseg gmm` thresholds by default; 2-D hole filling, opening 3 mm, the largest lesion only)")
    if volume == "default-output-agreed":
        return (f"the shipped default output plus every further lesion the network agrees with (`--pseudo-rule "
                f"default-output-agreed`: 0.5·CGC + 0.5·P_rec at {DEFAULT_OUTPUT_THRESHOLD}, 2-D hole filling, opening "
                f"3 mm; the largest lesion, and each other opened lesion of which the network's own map marks >= {AGREE:g})")
    if volume == "default-output-agreed-opened":
        return (f"the shipped default output plus every further lesion the network agrees with (`--pseudo-rule "
                f"default-output-agreed-opened`: 0.5·CGC + 0.5·P_rec at {DEFAULT_OUTPUT_THRESHOLD}, 2-D hole filling, "
                f"opening 3 mm; the largest lesion, and each other opened lesion apart from it of which the network's "
                f"own map marks >= {AGREE:g}, grown back by 6 mm)")
    if volume == "default-output-all":
        return (f"the shipped default output's map and threshold keeping every lesion (`--pseudo-rule default-output-all`: "
                f"0.5·CGC + 0.5·P_rec at {DEFAULT_OUTPUT_THRESHOLD}, 2-D hole filling, every connected lesion that "
                f"reaches {CORE} somewhere)")
    raise ValueError(f"pseudo-label rule must be one of {', '.join(PSEUDO_VOLUMES)}, got {volume!r}")


def keep_cored_components(mask_zyx, fused_zyx, core: float = CORE):
    """``mask_zyx`` (``(Z, Y, X)``) without the connected components (26-connectivity) that nowhere reach ``core``
    in ``fused_zyx``: hysteresis thresholding, the low level being the mask's own threshold. bool."""
    import numpy as np
    from scipy import ndimage
    mask = np.asarray(mask_zyx, bool)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    reached = np.zeros(n + 1, bool)
    reached[np.unique(labels[mask & (np.asarray(fused_zyx) >= core)])] = True
    reached[0] = False
    return reached[labels]


def agreed_lesions(candidates_zyx, network_marks_zyx, agree: float = AGREE):
    """The connected components (26-connectivity) of ``candidates_zyx`` of which at least ``agree`` of the voxels
    are in ``network_marks_zyx`` (bool ``(Z, Y, X)`` arrays). bool."""
    import numpy as np
    from scipy import ndimage
    cand = np.asarray(candidates_zyx, bool)
    labels, n = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return cand
    size = np.bincount(labels.ravel(), minlength=n + 1)
    marked = np.bincount(labels.ravel(), weights=np.asarray(network_marks_zyx, bool).ravel().astype(float),
                         minlength=n + 1)
    keep = marked >= agree * size
    keep[0] = False
    return keep[labels]


def opened_candidates(fused_zyx, brain_zyx, spacing_xyz, threshold: float = DEFAULT_OUTPUT_THRESHOLD):
    """Every lesion candidate of the shipped rule before it picks one: the fused map >= ``threshold`` in the brain,
    holes filled slice by slice, opened by the preset's radius (mm) and grown back as the rule grows its lesion. bool."""
    from CGCLesionSegLib.inference import output_preset
    from CGCLesionSegLib.postprocess import binarize, open_and_keep
    preset = output_preset(DEFAULT_OUTPUT_RULE["preset"])
    mask = binarize(fused_zyx, threshold, fill_holes=preset["fill_holes"], mask_zyx=brain_zyx, spacing_xyz=spacing_xyz)
    return open_and_keep(mask, preset["opening_radius"], keep_largest=0, spacing_xyz=spacing_xyz)


def agreed_opened_lesions(fused_zyx, brain_zyx, network_marks_zyx, kept_zyx, spacing_xyz,
                          threshold: float = DEFAULT_OUTPUT_THRESHOLD, agree: float = AGREE):
    """The further lesions of ``--pseudo-rule default-output-agreed-opened``, bool ``(Z, Y, X)``.

    The shipped rule's steps up to its choice: the fused map ``fused_zyx`` >= ``threshold``, holes filled as the
    preset fills them, opened by the preset's radius (mm, ``spacing_xyz``). Each opened component (26-connected)
    that shares no voxel with ``kept_zyx`` (the rule's own lesion) and of which at least ``agree`` of the voxels are
    in ``network_marks_zyx`` (the network's own map >= 0.5) is kept, and the kept ones are grown back inside the
    unopened mask by twice the radius, as the rule grows its lesion back; limited to ``brain_zyx``. The agreement is
    read on the opened core, before any grow-back, so a leak the opening cut off is judged on its own voxels."""
    import numpy as np
    from scipy import ndimage
    from CGCLesionSegLib.inference import output_preset
    from CGCLesionSegLib.postprocess import binarize, grow_back, open_binary
    preset = output_preset(DEFAULT_OUTPUT_RULE["preset"])
    mask = binarize(fused_zyx, threshold, fill_holes=preset["fill_holes"], spacing_xyz=spacing_xyz).astype(bool)
    opened = open_binary(mask, preset["opening_radius"], spacing_xyz)
    labels, n = ndimage.label(opened, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros(mask.shape, bool)
    size = np.bincount(labels.ravel(), minlength=n + 1)
    marked = np.bincount(labels.ravel(), weights=np.asarray(network_marks_zyx, bool).ravel().astype(float),
                         minlength=n + 1)
    keep = marked >= agree * size
    keep[np.unique(labels[np.asarray(kept_zyx, bool)])] = False  # the rule's own lesion (and label 0)
    keep[0] = False
    grown = grow_back(keep[labels], mask, preset["opening_radius"], spacing_xyz)
    return grown & np.asarray(brain_zyx, bool)


def agreed_opened_target(res, geometry, orientation: Optional[str]):
    """The ``default-output-agreed-opened`` target of one case, bool ``(Z, Y, X)`` on ``geometry``: ``res.mask``
    (the ``default-output`` target of :func:`CGCLesionSegLib.inference.segment_case`) plus
    :func:`agreed_opened_lesions` of its fused map ``res.probability`` and network map ``res.network_probability``.
    The candidates are made in the model's voxel order ``orientation`` (None: the input's), where segment_case made
    ``res.mask``: for a case stored with permuted axes the 2-D hole filling then fills the same slices."""
    import numpy as np
    from CGCLesionSegLib.orientation import Reorientation
    turn = Reorientation(geometry, orientation)
    kept = np.asarray(res.mask) > 0
    further = agreed_opened_lesions(turn.forward(np.asarray(res.probability, np.float32)),
                                    turn.forward(np.asarray(res.brain_mask, bool)),
                                    turn.forward(np.asarray(res.network_probability) >= 0.5), turn.forward(kept),
                                    turn.geometry.spacing)
    return kept | turn.back(further)


def round_dir(run_dir: str | os.PathLike, k: int) -> Path:
    """Run folder of self-training round ``k`` (1-based: round 1 is the first retraining, in
    ``RUN_DIR/self-train-1``; the first training is ``RUN_DIR`` itself)."""
    return Path(run_dir) / ROUND_DIR.format(k=k)


def volume_keeping_threshold(fused_zyx, p_zyx, brain_zyx, floor: float = KEEP_P_FLOOR,
                             ceiling: float = 0.5) -> float:
    """Threshold of the fused map ``fused_zyx`` (``(Z, Y, X)``) for a ``keep-p`` pseudo-label: ``ceiling``
    when ``fused >= ceiling`` already holds at least as many brain voxels as ``p >= 0.5`` (the model's first
    target); else the largest t with ``|fused >= t| >= |p >= 0.5|`` (the V-th largest fused value in the
    brain), but not below ``floor``.

    Why (cgc-v22): each self-training round thresholds 0.5·CGC + 0.5·P at 0.5, and the held-out network is
    conservative (it misses lesion rather than adding it), so the targets shrink round by round. Holding
    the target's volume at the first target's — a label-free quantity — is the simplest way to stop that;
    the threshold is only lowered (a round never grows a target beyond what P itself marked) and the floor
    keeps the network's background level (~0.3-0.4 of its map) from entering through the fusion."""
    import numpy as np
    brain = np.asarray(brain_zyx, bool)
    want = int(np.count_nonzero((np.asarray(p_zyx) >= 0.5) & brain))
    values = np.asarray(fused_zyx, np.float32)[brain]
    if want == 0 or int(np.count_nonzero(values >= ceiling)) >= want:
        return float(ceiling)
    want = min(want, values.size)
    kth = float(np.partition(values, values.size - want)[values.size - want])  # the want-th largest
    return float(min(ceiling, max(floor, kth)))


def write_pseudo_labels(model_path: str | os.PathLike, cases: Sequence, modalities: Sequence[str],
                        out_dir: str | os.PathLike, device: str = "cpu",
                        log: Callable[[str], None] = lambda s: None, volume: str = "fixed") -> Path:
    """Segment ``cases`` (:class:`CGCTraining.data.CaseSpec`) with ``model_path`` under :data:`PSEUDO_RULE`
    and write one binary map per case (``out_dir/<case>.nii.gz``, float32 0/1 on the case's own grid) and
    ``out_dir/cases.csv`` (the case's images, its mask if it had one, the map as ``prob``). ``volume``
    (:data:`PSEUDO_VOLUMES`): ``keep-p`` thresholds each case at :func:`volume_keeping_threshold` instead of
    0.5. ``out_dir/targets.json`` records each case's threshold and voxel counts. A map already written is
    kept (an interrupted call resumes); each is written atomically. Returns the CSV's path."""
    from dataclasses import replace
    import numpy as np
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.image_io import atomic_write, read_image, write_image
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset, resolve_device, segment_case
    if volume not in PSEUDO_VOLUMES:
        raise ValueError(f"pseudo-label volume rule must be one of {', '.join(PSEUDO_VOLUMES)}, got {volume!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modalities = [m.lower() for m in modalities]
    net, info = load_checkpoint(model_path, device=str(resolve_device(device)))
    stored = [str(m).lower() for m in info.channels]
    if stored and stored != modalities:
        raise ValueError(f"{model_path} was trained on {' '.join(stored)}, not {' '.join(modalities)}: give the "
                         "modalities of the model whose targets these are")
    if volume in ("default-output", "default-output-agreed", "default-output-agreed-opened"):
        config = InferenceConfig(device=device, **{**output_preset(DEFAULT_OUTPUT_RULE["preset"]),
                                                   "threshold": DEFAULT_OUTPUT_RULE["threshold"],
                                                   "lesion_choice": DEFAULT_OUTPUT_RULE["lesion_choice"]})
    elif volume == "default-output-all":
        config = InferenceConfig(device=device, **{**output_preset(DEFAULT_OUTPUT_ALL_RULE["preset"]),
                                                   "threshold": DEFAULT_OUTPUT_ALL_RULE["threshold"], "keep_largest": 0,
                                                   "opening_radius": 0, "lesion_choice": "size"})  # both only rank
    else:
        config = InferenceConfig(device=device, **PSEUDO_RULE)
    has_mask = any(c.mask for c in cases)
    record_path = out / TARGET_RECORD
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if not record and volume != "fixed" and any(out.glob("*.nii.gz")):
        raise ValueError(f"{out} holds targets without a record of their rule: give another output folder for "
                         f"--pseudo-rule {volume}")
    if record.get("volume", volume) != volume:
        raise ValueError(f"{out} holds targets of the pseudo-label volume rule {record['volume']!r}, not {volume!r}: "
                         "give another output folder")
    record.update(volume=volume, model=str(model_path))
    record.setdefault("cases", {})
    rows = []
    for i, case in enumerate(cases):
        target = out / f"{case.name}.nii.gz"
        if not target.exists():
            imgs = [read_image(case.images[m]) for m in modalities]
            mask = read_image(case.mask).array_zyx > 0 if case.mask else None
            res = segment_case([im.array_zyx for im in imgs], imgs[0].geometry, modalities, model_path,
                               mask_zyx=mask, config=config, model=net, info=info)
            threshold, target_mask = config.threshold, res.mask
            if volume == "default-output-all":  # res.probability is the fused map the mask thresholds
                target_mask = keep_cored_components(res.mask, res.probability)
            elif volume == "default-output-agreed":
                further = agreed_lesions(opened_candidates(res.probability, res.brain_mask, imgs[0].geometry.spacing),
                                         res.network_probability >= 0.5)
                target_mask = (np.asarray(res.mask) > 0) | further
            elif volume == "default-output-agreed-opened":
                from CGCLesionSegLib.checkpoint import model_orientation
                target_mask = agreed_opened_target(res, imgs[0].geometry, model_orientation(info))
            if volume == "keep-p":
                threshold = volume_keeping_threshold(res.probability, res.gmm_probability, res.brain_mask)
                if threshold != config.threshold:
                    target_mask = output_mask(res.probability, res.brain_mask, replace(config, threshold=threshold),
                                              imgs[0].geometry.spacing)
            write_image(target, target_mask.astype("float32"), imgs[0].geometry)
            record["cases"][case.name] = {
                "threshold": threshold, "voxels": int(target_mask.sum()),
                **({} if volume.startswith("default-output") else {"voxels_at_0.5": int(res.mask.sum())}),
                **({"rule_voxels": int(np.count_nonzero(res.mask))} if volume == "default-output-agreed-opened" else {}),
                "p_voxels": int(((res.gmm_probability >= 0.5) & res.brain_mask).sum())}
            with atomic_write(record_path) as fh:
                json.dump(record, fh, indent=1)
                fh.write("\n")
            log(f"pseudo-label {i + 1}/{len(cases)}: {case.name} ({int(target_mask.sum())} voxels"
                + (f", threshold {threshold:.3f}" if volume != "fixed" else "") + ")")
        rows.append([case.name, *(str(Path(case.images[m]).resolve()) for m in modalities)]
                    + ([str(Path(case.mask).resolve()) if case.mask else ""] if has_mask else [])
                    + [str(target.resolve())])
    header = ["case", *modalities] + (["mask"] if has_mask else []) + ["prob"]
    listing = out / LISTING
    with atomic_write(listing) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return listing


def finished(result) -> bool:
    """Whether a :class:`CGCTraining.train.TrainResult` reached its last step (no budget stop, no signal)."""
    return result.signal is None and not result.stopped_early and result.step >= result.total_steps


def require_passed(check: Optional[dict], checkpoint: str | os.PathLike) -> None:
    """Refuse (ValueError) to make targets from a model whose lesion check failed (:mod:`CGCTraining.sanity`):
    a collapsed or overgrown model's pseudo-labels would teach the next round the same failure."""
    from CGCTraining.sanity import failure
    state = failure(check)
    if state:
        raise ValueError(f"self-training stopped: {checkpoint} failed its lesion check ({state}: {check['network_voxels']} "
                         f"voxels >= 0.5 where its target has {check['target_voxels']}), so its pseudo-labels would "
                         "teach the next round the same failure. Train again with another --seed in a new --output-dir")


def run_rounds(rounds: int, run_dir: str | os.PathLike, cases: Sequence, modalities: Sequence[str],
               train_round: Callable[[int, Path, str, Optional[Path], bool], object], device: str = "cpu",
               log: Callable[[str], None] = lambda s: None, volume: str = "fixed"):
    """Run self-training rounds 1..``rounds`` after the first training in ``run_dir`` has finished.

    ``train_round(k, round_dir, cases_csv, init_from, resume)`` trains round ``k`` and returns a
    :class:`CGCTraining.train.TrainResult`. A round folder that holds a checkpoint is resumed (a finished
    one returns at once); a round that stops before its last step (budget, signal) ends the sequence, and a
    round whose model failed its lesion check raises ValueError before its targets are made.
    Writes ``RUN_DIR/self_train.json`` (rounds, finished rounds, the final model once there is one) after
    each round. ``volume`` (:data:`PSEUDO_VOLUMES`) sets how every round's targets are thresholded
    (:func:`write_pseudo_labels`). Returns the result of the last round run."""
    from CGCLesionSegLib.image_io import atomic_write
    prev = Path(run_dir) / "last.pt"
    record_path = Path(run_dir) / RECORD
    result = None
    for k in range(1, rounds + 1):
        here = round_dir(run_dir, k)
        listing = write_pseudo_labels(prev, cases, modalities, here / "targets", device=device, log=log,
                                      volume=volume)
        resume = (here / "last.pt").exists()
        log(f"self-training round {k}/{rounds}: {'continuing' if resume else 'training'} {here} "
            f"from {prev} on its pseudo-labels")
        result = train_round(k, here, str(listing), None if resume else prev, resume)
        done = finished(result)
        with atomic_write(record_path) as fh:
            json.dump({"rounds": rounds, "finished_rounds": k if done else k - 1,
                       "final_model": str(Path(ROUND_DIR.format(k=k)) / "last.pt") if done and k == rounds else None,
                       "pseudo_rule": {"default-output": DEFAULT_OUTPUT_RULE,
                                       "default-output-all": DEFAULT_OUTPUT_ALL_RULE,
                                       "default-output-agreed": {**DEFAULT_OUTPUT_RULE, "agree": AGREE},
                                       "default-output-agreed-opened": {**DEFAULT_OUTPUT_RULE, "agree": AGREE,
                                                                        "agreement_on": "opened lesion"}}.get(volume,
                                                                                                   PSEUDO_RULE),
                       "pseudo_volume": volume}, fh, indent=1)
            fh.write("\n")
        if not done:
            break
        if k < rounds:
            require_passed(result.lesion_check, here / "last.pt")
        prev = here / "last.pt"
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m CGCTraining.self_train``: write one round's pseudo-labels and case list."""
    from CGCLesionSegLib.cli import ArgumentParser
    from CGCLesionSegLib.image_io import ImageIOError
    from CGCTraining.data import discover_cases
    p = ArgumentParser(prog="python -m CGCTraining.self_train",
                       description="Write self-training targets: segment the training cases with a model (0.5·CGC + "
                                   "0.5·P, 2-D hole filling, no keep-largest; no label read) and list them as a "
                                   "case list whose prob column is the target. Then train the next round with "
                                   "python -m CGCTraining --cases OUT/cases.csv --init-from MODEL ...")
    p.add_argument("--model", required=True, help="the previous round's last.pt")
    p.add_argument("--cases", required=True, metavar="DIR|LIST", help="the training cases (as given to CGCTraining)")
    p.add_argument("--modalities", nargs="+", help="input channels in order (default: the model's)")
    p.add_argument("--output-dir", required=True, help="where the targets and cases.csv are written")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--pseudo-rule", "--pseudo-volume", dest="pseudo_volume", choices=PSEUDO_VOLUMES, default="fixed",
                   help=PSEUDO_RULE_HELP)
    args = p.parse_args(argv)
    try:
        from CGCLesionSegLib.checkpoint import load_checkpoint
        mods = args.modalities or list(load_checkpoint(args.model)[1].channels)  # CheckpointError is a ValueError
        cases = discover_cases(args.cases, mods)
        listing = write_pseudo_labels(args.model, cases, mods, args.output_dir, device=args.device,
                                      log=lambda s: print(s, file=sys.stderr), volume=args.pseudo_volume)
    except (ValueError, ImageIOError, FileNotFoundError) as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(listing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
