"""An inference-rule protocol (docs/protocols/cgc-v3.toml, cgc-v6.toml, cgc-v7.toml, cgc-v8.toml): scores another protocol's trained
models with extra output rules; trains nothing.

Run through ``python benchmarks/evaluate_cgc.py --protocol docs/protocols/cgc-v3.toml --stage screen``
(``benchmarks/evaluate_cgc.py`` sends a protocol file with a ``source`` key here). The models, folds,
seeds and the fold's smoothing sigma all come from the source protocol's stage, so no new choice reads a
label: ``network_smooth`` smooths the network's map with the very Gaussian the ``p_smooth`` baseline uses
("the same rule on P"); ``network_padded`` / ``default_padded`` segment again with the window
zero-padded where the brain's box is smaller than it (``InferenceConfig.pad_to_window``);
``network_mirror_x`` / ``default_mirror_x`` (and ``_xyz``) segment again with test-time mirroring
(``InferenceConfig.mirror_axes``); ``default_net`` / ``default_p`` apply the ``single-lesion`` clean-up to the network's map or to P alone
(:func:`output_rule_mask`; its fused version must reproduce ``cgcseg segment``'s mask, checked per case);
``network_vol`` / ``p_smooth_vol`` / ``default_rec_vol`` (cgc-v23) keep, per case, as many brain voxels as
P ≥ 0.5 (P_rec ≥ 0.5 for the default output) instead of thresholding at a fixed value (:func:`volume_threshold`);
``gmm_default_loo`` / ``default_rec_loo_ensemble`` (cgc-v29) threshold each case at the value best on the other
labelled cases (:func:`choose_leave_one_out`).

A protocol names its ``columns`` and ``differences`` (``[a, b, target]``); without them (cgc-v3) the
columns are :data:`COLUMNS` and the differences :data:`DIFFERENCES`, as that protocol was run.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

import protocol as base

#: Every column a rule protocol may name -> its heading. ``p`` and ``p_smooth`` are always scored.
TITLES = {"p": "P ≥ 0.5", "p_smooth": "smoothed P", "gmm_default": "`cgcseg gmm` default",
          "network": "network ≥ 0.5", "network_smooth": "**smoothed network**",
          "network_padded": "**network ≥ 0.5, padded window**", "default": "default output",
          "default_padded": "**default output, padded window**",
          "default_net": "**`single-lesion` on the network alone**", "default_p": "`single-lesion` on P alone",
          "network_mirror_x": "**network ≥ 0.5, mirrored in x**", "default_mirror_x": "**default output, mirrored in x**",
          "network_mirror_xyz": "**network ≥ 0.5, mirrored in x, y, z**",
          "default_mirror_xyz": "**default output, mirrored in x, y, z**",
          "network_ensemble": "**network ≥ 0.5, seed ensemble**",
          "default_ensemble": "**default output, seed ensemble**",
          "default_rec": "**default output fused with the `cgcseg gmm` P**",
          "default_rec_psmooth": "`single-lesion-recommended` with smoothed P for the network",
          "network_t": "**network ≥ t (fold's t)**", "p_smooth_t": "smoothed P ≥ t (fold's t)",
          "default_rec_t": "**default output at the fold's t**", "gmm_default_t": "`cgcseg gmm` default at the fold's t",
          "network_vol": "**network, P ≥ 0.5's volume**", "p_smooth_vol": "smoothed P, P ≥ 0.5's volume",
          "default_rec_vol": "**default output, P_rec ≥ 0.5's volume**",
          "default_rec_03": "default output as shipped (t = 0.3)",
          "default_rec_03_ensemble": "**default output as shipped (t = 0.3), seed ensemble**",
          "gmm_default_loo": "`cgcseg gmm` default at the case's left-out t",
          "default_rec_loo_ensemble": "**default output, seed ensemble, at the case's left-out t**",
          "default_rec_wloo_ensemble": "**default output, seed ensemble, at the case's left-out weight and t**",
          "network_ensemble2": "network ≥ 0.5, ensemble of the first two seeds",
          "default_rec_03_ensemble2": "default output as shipped (t = 0.3), ensemble of the first two seeds"}
#: What each column is, for the report.
MEANINGS = {"network_smooth": "the network's map smoothed with the fold's smoothed-P sigma, ≥ 0.5",
            "network_padded": "the network's map ≥ 0.5 when the brain's box is zero-padded to the window where "
                              "it is smaller (as training pads a case smaller than its crop) instead of the "
                              "window shrinking to the box",
            "default_padded": "the default output (`single-lesion`) from that padded map",
            "default": "the default output (`single-lesion`), window shrunk as in the source protocol",
            "gmm_default": "`cgcseg gmm` with its defaults",
            "default_net": "the `single-lesion` clean-up (2-D hole filling, opening radius 3, largest lesion) on the "
                           "network's map alone instead of 0.5·network + 0.5·P",
            "default_p": "the same clean-up on P alone (the same rule on P)",
            "network_mirror_x": "the network's map ≥ 0.5 when each window's probabilities are averaged with those of "
                                "its left-right mirror image (`--mirror x`, 2 passes)",
            "default_mirror_x": "the default output (`single-lesion`) from that mirrored map",
            "network_mirror_xyz": "the same averaged over all 8 combinations of flips in x, y and z "
                                  "(`--mirror x y z`, 8 passes)",
            "default_mirror_xyz": "the default output (`single-lesion`) from that map",
            "network_ensemble": "the mean of the network maps of the fold's models of every seed (a model whose "
                                "lesion check says it collapsed left out, as the shipping script refuses it), ≥ 0.5; "
                                "one value per case, the same in every seed's row",
            "default_ensemble": "the default output (`single-lesion`, 0.5·mean network + 0.5·P) from that mean map",
            "default_rec": "the `single-lesion` rule on 0.5·network + 0.5·P_rec, where P_rec is the map `cgcseg gmm` "
                           "thresholds by default (the recommended preset) instead of the model's own P (the paper's "
                           "configuration it was trained on); `cgcseg gmm`'s default output is the same clean-up on "
                           "P_rec alone",
            "default_rec_psmooth": "the network's baseline in the shipped output rule: `single-lesion` on 0.5·smoothed P "
                                   "+ 0.5·P_rec, where smoothed P is the `p_smooth` column's map (the model's own P, "
                                   "the fold's sigma) standing where `default_rec` has the network; no network is used, "
                                   "so `default_rec` − this is what the network adds to the shipped default output",
            "network_t": "the network's map ≥ t, t chosen per fold on the fold's labelled training cases from the "
                         "other folds' models' held-out maps (:func:`choose_thresholds`)",
            "p_smooth_t": "smoothed P (the fold's sigma) ≥ t, t chosen the same way on the same cases",
            "default_rec_t": "the shipped output rule (`default_rec`) at threshold t, t chosen like the network's",
            "gmm_default_t": "`cgcseg gmm`'s default clean-up on P_rec at threshold t, t chosen the same way",
            "network_vol": "the network's map ≥ t, t per case the value that keeps as many brain voxels as P ≥ 0.5 "
                           "(:func:`volume_threshold`; no label, no fitted parameter)",
            "p_smooth_vol": "the smoothed P (the fold's sigma) kept to P ≥ 0.5's volume the same way (the same rule "
                            "on P; P itself kept to its own volume is the P ≥ 0.5 column)",
            "default_rec_vol": "the shipped output rule (`default_rec`) with its threshold set per case so that "
                               "0.5·network + 0.5·P_rec keeps as many brain voxels as P_rec ≥ 0.5 before the "
                               "clean-up (the same rule on `cgcseg gmm`'s output is that output)",
            "default_rec_03": "the shipped output rule at the shipped models' threshold 0.3 (`cgcseg segment`'s "
                              "default output)",
            "default_rec_03_ensemble": "the shipped output rule at 0.3 (`default_rec_03`) with the seed ensemble's mean "
                                       "map in the network's place",
            "gmm_default_loo": "`cgcseg gmm`'s default clean-up on P_rec at threshold t_c, t_c the best mean Dice on "
                               "the other labelled cases of the set (leave one case out, :func:`choose_leave_one_out`)",
            "network_ensemble2": "the mean of the network maps of the fold's first two seeds' models (by seed; the "
                                 "same collapsed-member rule), ≥ 0.5 — the ensemble the shipped files hold",
            "default_rec_03_ensemble2": "the shipped output rule at 0.3 with that two-seed mean map in the network's place",
            "default_rec_loo_ensemble": "the shipped output rule (`single-lesion-recommended`, lesion chosen as at 0.5) "
                                        "on 0.5·(seed ensemble's mean map) + 0.5·P_rec at threshold t_c, t_c chosen "
                                        "leave one case out the same way on the other cases' held-out maps",
            "default_rec_wloo_ensemble": "the shipped output rule on (1 − w_c)·(seed ensemble's mean map) + w_c·P_rec "
                                         "at threshold t_c, the pair (w_c, t_c) chosen together leave one case out "
                                         "(cgc-v33; ties to w nearer 0.5, then t as for a threshold alone)"}
#: cgc-v3's columns and differences (it declares none in its file).
COLUMNS = (("p", TITLES["p"]), ("p_smooth", TITLES["p_smooth"]), ("network", TITLES["network"]),
           ("network_smooth", TITLES["network_smooth"]))
DIFFERENCES = (("network_smooth", "p_smooth", "≥ +0.03, CI > 0"), ("network_smooth", "p", "≥ +0.05, CI > 0"),
               ("network_smooth", "network", "—"), ("network", "p_smooth", "—"))
#: Second segmentation passes: column suffix -> the InferenceConfig fields of that pass (its network map
#: gives ``network_<suffix>``, its default output ``default_<suffix>``).
PASSES = {"padded": {"pad_to_window": True}, "mirror_x": {"mirror_axes": ("x",)},
          "mirror_xyz": {"mirror_axes": ("x", "y", "z")}}
ENSEMBLE_COLUMNS = {"network_ensemble", "default_ensemble", "default_rec_03_ensemble", "default_rec_loo_ensemble",
                    "network_ensemble2", "default_rec_03_ensemble2", "default_rec_wloo_ensemble"}
#: Columns whose threshold is chosen per fold (cgc-v18) -> the swept map family they are read from.
THRESHOLD_COLUMNS = {"network_t": "network", "p_smooth_t": "p_smooth", "default_rec_t": "default_rec",
                     "gmm_default_t": "gmm_default"}
#: Columns whose threshold (cgc-v29), or fusion weight and threshold (cgc-v33), are chosen leave one case out -> the
#: swept map family they are read from. A family swept over weights keys its values "w/t" (:func:`sweep_key`).
LOO_COLUMNS = {"default_rec_loo_ensemble": "default_rec_ensemble", "gmm_default_loo": "gmm_default",
               "default_rec_wloo_ensemble": "default_rec_ensemble_w"}
#: The families a per-fold threshold protocol (cgc-v18, cgc-v25) sweeps (:func:`threshold_sweep`).
FOLD_FAMILIES = {"network", "default_rec", "gmm_default", "p_smooth"}
#: Columns that keep a volume set per case (cgc-v23); their rows record the thresholds and volumes.
VOLUME_COLUMNS = {"network_vol", "p_smooth_vol", "default_rec_vol"}
#: The threshold of the ``_03`` columns: the one cgc-v18 shipped (docs/protocols/README.md); the FLAIR model still
#: records it, the four-channel model 0.35 since cgc-v29.
SHIPPED_THRESHOLD = 0.3


def collapsed(model: base.Model) -> bool:
    """True when ``model``'s training wrote a lesion check that says it collapsed (CGCTraining.sanity);
    runs without a check (trained before it existed) count as healthy."""
    path = model.run / "lesion_check.json"
    return path.exists() and bool(json.loads(path.read_text()).get("collapsed"))


def ensemble_members(model: base.Model, siblings: list) -> list:
    """The models whose maps a seed ensemble of ``model``'s group averages: every seed of its modalities,
    variant and fold (``siblings`` may hold others; they are ignored), collapsed ones left out unless all
    are. Sorted by seed, so every seed's row gets the same ensemble."""
    group = sorted({m.run: m for m in [model, *siblings] if (m.modalities, m.variant, m.fold)
                    == (model.modalities, model.variant, model.fold)}.values(), key=lambda m: m.seed)
    healthy = [m for m in group if not collapsed(m)]
    return healthy or group


def columns_of(proto: dict) -> tuple[tuple, tuple]:
    """``(columns, differences)`` of a rule protocol: its own, or cgc-v3's when it names none."""
    if "columns" not in proto:
        return COLUMNS, DIFFERENCES
    unknown = [c for c in proto["columns"] if c not in TITLES]
    if unknown:
        raise SystemExit(f"{proto['name']}: unknown columns {unknown}; known: {', '.join(TITLES)}")
    cols = tuple((c, TITLES[c]) for c in dict.fromkeys(["p", "p_smooth", *proto["columns"]]))
    diffs = tuple((a, b, t) for a, b, t in proto.get("differences", []))
    for a, b, _ in diffs:
        if a not in dict(cols) or b not in dict(cols):
            raise SystemExit(f"{proto['name']}: difference {a} − {b} names a column that is not scored")
    return cols, diffs


def rule_masks(p, network_probability, sigma: float, spacing_xyz) -> dict:
    """The four binary masks of one case. ``p`` and ``network_probability``: (Z, Y, X) in [0, 1] on the
    input grid; ``sigma`` in mm; returns {column: (Z, Y, X) bool}."""
    from CGCLesionSegLib.postprocess import smooth_probability
    return {"p": p >= 0.5, "p_smooth": smooth_probability(p, sigma, spacing_xyz) >= 0.5,
            "network": network_probability >= 0.5,
            "network_smooth": smooth_probability(network_probability, sigma, spacing_xyz) >= 0.5}


def volume_threshold(values, brain, voxels: int) -> float:
    """The threshold t at which ``values >= t`` inside ``brain`` keeps ``voxels`` voxels: the ``voxels``-th
    largest value in the brain (ties at t are all kept, so a plateau may add voxels). ``values`` and
    ``brain``: ``(Z, Y, X)``; ``voxels`` 0 gives +inf (an empty mask); more than the brain holds gives its
    smallest value (the whole brain)."""
    inside = np.asarray(values, dtype=np.float64)[np.asarray(brain, bool)]
    if voxels <= 0 or inside.size == 0:
        return float("inf")
    k = inside.size - min(int(voxels), inside.size)
    return float(np.partition(inside, k)[k])


def volume_matched(values, brain, voxels: int):
    """``(mask, t)``: ``values >= t`` inside ``brain`` with t = :func:`volume_threshold`; mask bool ``(Z, Y, X)``."""
    t = volume_threshold(values, brain, voxels)
    return (np.asarray(values) >= t) & np.asarray(brain, bool), t


def output_rule_mask(network_probability, p, brain, gmm_weight: float, spacing_xyz=None, threshold: float = 0.5,
                     lesion_choice: str = "size"):
    """The ``single-lesion`` output rule with the fused map ``(1 − w)·network + w·P`` (``w`` = ``gmm_weight``,
    0 … 1; 0.5 is what ``cgcseg segment`` does) thresholded at ``threshold``, its lesion picked by
    ``lesion_choice`` ("size", "core" or "seed"; "network" needs the network's map apart: ``output_mask``); all arrays
    ``(Z, Y, X)`` on the input grid (``spacing_xyz`` in mm, as ``cgcseg segment`` passes it; None counts the
    opening in voxels, the same on 1 mm grids); returns bool."""
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    fused = (1.0 - gmm_weight) * network_probability + gmm_weight * p
    config = InferenceConfig(**{**output_preset("single-lesion"), "threshold": threshold, "lesion_choice": lesion_choice})
    return output_mask(fused, brain, config, spacing_xyz).astype(bool)


def score_model(model: base.Model, cases: dict, sigma: float, device: str = "cpu", columns=COLUMNS,
                siblings: list = (), thresholds: tuple = (), fold_sigmas: dict | None = None,
                gmm_weights: tuple = ()) -> list[dict]:
    """Rows of ``model``'s held-out cases for ``columns``; ``siblings``: the stage's other models (the
    seed-ensemble columns average the maps of ``model``'s group among them, :func:`ensemble_members`);
    ``thresholds`` and ``gmm_weights``: the grids a swept column chooses from (:func:`threshold_sweep`)."""
    names = [c for c, _ in columns]
    if set(names) <= {c for c, _ in COLUMNS}:  # cgc-v3: one pass without the output rule, as it was run
        rows = []
        for case, p, res, info, _ in base.segment_held_out(model, cases, device):
            # No fusion in this config, so the thresholded map is the network's own (network_probability is None).
            net_map = res.network_probability if res.network_probability is not None else res.probability
            masks = rule_masks(p, net_map, sigma, case.geometry.spacing)
            rows.append(base.score_row(model, case, info, {c: masks[c] for c in names}, sigma))
        return rows
    return _score_with_output_rule(model, cases, sigma, device, names, list(siblings), thresholds, fold_sigmas,
                                   gmm_weights)


def _score_with_output_rule(model: base.Model, cases: dict, sigma: float, device: str, names: list,
                            siblings: list = (), thresholds: tuple = (), fold_sigmas: dict | None = None,
                            gmm_weights: tuple = ()) -> list[dict]:
    """Columns from the default output rule (``single-lesion``, as the source protocol scored it), and, for
    each :data:`PASSES` entry a column names, from another pass with that entry's settings."""
    from CGCLesionSegLib.inference import output_preset
    from CGCLesionSegLib.postprocess import smooth_probability
    preset = output_preset("single-lesion")
    bare = base.segment_held_out(model, cases, device, **preset)
    passes = {k: base.segment_held_out(model, cases, device, **v, **preset) for k, v in PASSES.items()
              if {f"network_{k}", f"default_{k}"} & set(names)}
    members = ensemble_members(model, list(siblings)) if ENSEMBLE_COLUMNS & set(names) else []
    # One pass per member (the model's own reused when it is one), in the model's case order.
    member_passes = [None if m.run == model.run else base.segment_held_out(m, cases, device, **preset) for m in members]
    rows = []
    for case, p, res, info, _ in bare:
        other = {k: next(gen)[2] for k, gen in passes.items()}
        if members:
            maps = [res.network_probability if gen is None else next(gen)[2].network_probability for gen in member_passes]
            mean_map = np.mean(maps, axis=0)
            mean_two = lambda maps=maps: np.mean(maps[:2], axis=0)  # members are sorted by seed
            make_ensemble = {"network_ensemble": lambda: mean_map >= 0.5,
                             "default_ensemble": lambda: output_rule_mask(mean_map, p, res.brain_mask, 0.5, case.geometry.spacing),
                             "default_rec_03_ensemble": lambda: output_rule_mask(
                                 mean_map, base.gmm_default_probability(case, list(model.modalities)), res.brain_mask,
                                 0.5, case.geometry.spacing, SHIPPED_THRESHOLD),
                             "network_ensemble2": lambda: mean_two() >= 0.5,
                             "default_rec_03_ensemble2": lambda: output_rule_mask(
                                 mean_two(), base.gmm_default_probability(case, list(model.modalities)), res.brain_mask,
                                 0.5, case.geometry.spacing, SHIPPED_THRESHOLD)}
        make = {"p": lambda: p >= 0.5,
                "p_smooth": lambda: smooth_probability(p, sigma, case.geometry.spacing) >= 0.5,
                "gmm_default": lambda: base.gmm_default_mask(case, list(model.modalities)),
                "network": lambda: res.network_probability >= 0.5,
                "network_smooth": lambda: smooth_probability(res.network_probability, sigma,
                                                             case.geometry.spacing) >= 0.5,
                "default": lambda: res.mask.astype(bool),
                "default_net": lambda: output_rule_mask(res.network_probability, p, res.brain_mask, 0.0, case.geometry.spacing),
                "default_p": lambda: output_rule_mask(res.network_probability, p, res.brain_mask, 1.0, case.geometry.spacing),
                "default_rec": lambda: output_rule_mask(res.network_probability,
                                                        base.gmm_default_probability(case, list(model.modalities)),
                                                        res.brain_mask, 0.5, case.geometry.spacing),
                "default_rec_psmooth": lambda: output_rule_mask(
                    smooth_probability(p, sigma, case.geometry.spacing),
                    base.gmm_default_probability(case, list(model.modalities)), res.brain_mask, 0.5,
                    case.geometry.spacing)}
        if members:
            make.update(make_ensemble)
        volumes: dict = {}
        if VOLUME_COLUMNS & set(names) or "default_rec_03" in names:
            make.update(_volume_columns(case, list(model.modalities), p, res, sigma, volumes))
        for k, r in other.items():
            make[f"network_{k}"] = lambda r=r: r.network_probability >= 0.5
            make[f"default_{k}"] = lambda r=r: r.mask.astype(bool)
        if {"default_net", "default_p", "default_ensemble", "default_rec"} & set(names) and not np.array_equal(
                output_rule_mask(res.network_probability, p, res.brain_mask, 0.5, case.geometry.spacing),
                res.mask.astype(bool)):
            # e.g. an input whose voxel order the model turns: 2-D hole filling would run along other axes
            raise RuntimeError(f"{model.key} {case.name}: the output rule recomputed here does not reproduce "
                               "`cgcseg segment`'s mask, so its variants would not be comparable")
        extra = {"window_xyz": list(res.window_xyz or ())}
        if members:
            extra["ensemble"] = [m.key for m in members]
        masks = {c: make[c]() for c in names if c not in THRESHOLD_COLUMNS and c not in LOO_COLUMNS}
        if volumes:
            extra["volumes"] = volumes
        loo = {LOO_COLUMNS[c] for c in names if c in LOO_COLUMNS}
        if THRESHOLD_COLUMNS.keys() & set(names) or loo:
            families = (FOLD_FAMILIES if THRESHOLD_COLUMNS.keys() & set(names) else set()) | loo
            ensemble = (tuple(m.key for m in members), mean_map) if members else None
            extra["sweep"] = threshold_sweep(case, list(model.modalities), p, res, thresholds, fold_sigmas or {},
                                             families, ensemble, gmm_weights)
        rows.append(base.score_row(model, case, info, masks, sigma, **extra))
    return rows


def _volume_columns(case, mods: list, p, res, sigma: float, volumes: dict) -> dict:
    """cgc-v23's column makers for one case: {column: () -> (Z, Y, X) bool}. Each records its threshold and
    volumes in ``volumes`` when called (V = P ≥ 0.5's brain voxels; V_rec = P_rec ≥ 0.5's)."""
    from CGCLesionSegLib.postprocess import smooth_probability
    brain = np.asarray(res.brain_mask, bool)
    spacing = case.geometry.spacing
    v = int(((p >= 0.5) & brain).sum())
    volumes.update(p_voxels=v, network_voxels=int(((res.network_probability >= 0.5) & brain).sum()))

    def matched(column, values, voxels):
        mask, t = volume_matched(values, brain, voxels)
        volumes[f"{column}_t"] = t
        return mask

    def default_rec(threshold):
        return output_rule_mask(res.network_probability, base.gmm_default_probability(case, mods), brain, 0.5,
                                spacing, threshold)

    def rec_volume_t():
        p_rec = base.gmm_default_probability(case, mods)
        v_rec = int(((p_rec >= 0.5) & brain).sum())
        t = volume_threshold(0.5 * res.network_probability + 0.5 * p_rec, brain, v_rec)
        volumes.update(p_rec_voxels=v_rec, default_rec_vol_t=t)
        return t

    return {"network_vol": lambda: matched("network_vol", res.network_probability, v),
            "p_smooth_vol": lambda: matched("p_smooth_vol", smooth_probability(p, sigma, spacing), v),
            "default_rec_vol": lambda: default_rec(rec_volume_t()),
            "default_rec_03": lambda: default_rec(SHIPPED_THRESHOLD)}


def sweep_key(gmm_weight: float, threshold: float) -> str:
    """The key of one (fusion weight, threshold) pair in a family swept over both: "0.25/0.35"."""
    return f"{gmm_weight:.2f}/{threshold:.2f}"


def threshold_sweep(case: base.CaseData, mods: list, p, res, thresholds, fold_sigmas: dict,
                    families: set | None = None, ensemble: tuple | None = None, gmm_weights=()) -> dict:
    """Every metric of each swept map family at each threshold of ``thresholds``, for one held-out case:
    {family: {"0.45": metrics}}. Families: ``network`` (the network's map), ``default_rec`` (the output
    rule ``single-lesion`` on 0.5·network + 0.5·P_rec, as cgc-v18/cgc-v25 swept it), ``gmm_default``
    (``cgcseg gmm``'s clean-up on P_rec; the same for every model, memoised per case), ``p_smooth@K`` (P
    smoothed with fold K's sigma, for every fold of ``fold_sigmas`` {fold: sigma mm}: a fold's threshold is
    chosen with its own sigma on its training cases, which are other folds' held-out cases) and
    ``default_rec_ensemble`` (cgc-v29: the shipped rule ``single-lesion-recommended``, lesion chosen as at 0.5,
    on 0.5·mean map + 0.5·P_rec; ``ensemble`` = ``(member keys, mean map)``, memoised per case and members, as
    every seed of a fold shares it); ``default_rec_ensemble_w`` (cgc-v33: the same rule on (1 − w)·mean map +
    w·P_rec for every P_rec weight w of ``gmm_weights`` and every t, keyed :func:`sweep_key`; memoised alike).
    ``families``: which to sweep (None: :data:`FOLD_FAMILIES`, cgc-v25's). Maps ``(Z, Y, X)`` on the input grid."""
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    from CGCLesionSegLib.metrics import all_metrics
    from CGCLesionSegLib.postprocess import binarize, smooth_probability
    spacing = case.geometry.spacing
    spacing_zyx = tuple(reversed(spacing))
    p_rec = base.gmm_default_probability(case, mods)
    fused = 0.5 * res.network_probability + 0.5 * p_rec
    preset = output_preset("single-lesion")
    _, _, post = base._gmm_default_settings(mods)
    families = FOLD_FAMILIES if families is None else set(families)
    smoothed = {k: smooth_probability(p, s, spacing) for k, s in sorted(fold_sigmas.items())} if "p_smooth" in families else {}

    def sweep(make) -> dict:
        return {f"{t:.2f}": all_metrics(make(t), case.reference, spacing_zyx) for t in thresholds}

    memo = case.__dict__.setdefault("_memo", {})
    out = {}
    if "gmm_default" in families:
        key = ("gmm_default_sweep", tuple(mods), tuple(thresholds))
        if key not in memo:
            memo[key] = sweep(lambda t: binarize(p_rec, t, mask_zyx=case.brain(mods), spacing_xyz=spacing, **post))
        out["gmm_default"] = memo[key]
    if "network" in families:
        out["network"] = sweep(lambda t: res.network_probability >= t)
    if "default_rec" in families:
        out["default_rec"] = sweep(lambda t: output_mask(fused, res.brain_mask, InferenceConfig(**{**preset, "threshold": t}),
                                                         spacing).astype(bool))
    if "p_smooth" in families:
        for k, sm in smoothed.items():
            out[f"p_smooth@{k}"] = sweep(lambda t, sm=sm: sm >= t)
    def ensemble_sweep(w: float) -> dict:
        """The shipped rule on (1 − w)·mean map + w·P_rec at every threshold, memoised per case, members and w: every
        seed of a fold shares it, and both ensemble families share w = 0.5."""
        key = ("default_rec_ensemble_sweep", tuple(mods), tuple(ensemble[0]), tuple(thresholds), float(w))
        if key not in memo:
            shipped = output_preset("single-lesion-recommended")
            fused_w = (1.0 - w) * ensemble[1] + w * p_rec
            memo[key] = sweep(lambda t: output_mask(fused_w, res.brain_mask, InferenceConfig(**{**shipped, "threshold": t}),
                                                    spacing).astype(bool))
        return memo[key]

    if "default_rec_ensemble" in families:
        if ensemble is None:
            raise ValueError("the default_rec_ensemble family needs the seed ensemble's (member keys, mean map)")
        out["default_rec_ensemble"] = ensemble_sweep(0.5)
    if "default_rec_ensemble_w" in families:
        if ensemble is None or not len(gmm_weights):
            raise ValueError("the default_rec_ensemble_w family needs the seed ensemble's (member keys, mean map) "
                             "and the protocol's gmm_weights")
        out["default_rec_ensemble_w"] = {sweep_key(w, float(t)): m for w in gmm_weights
                                         for t, m in ensemble_sweep(w).items()}
    return out


def _best_threshold(scores: dict) -> str:
    """The key of ``scores`` ({"0.45": mean Dice}) with the highest score; ties to the value nearer 0.5,
    then the higher value (scores rounded to 1e-6, so float noise does not decide). Keys "w/t" (a weight and a
    threshold, :func:`sweep_key`): ties to w nearer 0.5 first, then t as above, then the higher w."""
    def rank(k):
        if "/" not in k:
            return (round(scores[k], 6), -abs(float(k) - 0.5), float(k))
        w, t = (float(v) for v in k.split("/"))
        return (round(scores[k], 6), -abs(w - 0.5), -abs(t - 0.5), t, w)
    return max(scores, key=rank)


def _grid_order(key: str) -> tuple:
    """Sort order of a sweep's keys: "0.45", or "w/t" by weight, then threshold."""
    return tuple(float(v) for v in key.split("/"))


def choose_thresholds(rows: list[dict]) -> dict:
    """Fills each row's threshold columns (:data:`THRESHOLD_COLUMNS`) in place and returns the choice
    {"<modalities>/<variant> fold K": {column: {"threshold": t, "scores": {t: Dice}}}}.

    Fold K's threshold for a family is the one with the highest mean Dice over fold K's labelled training
    cases — the rows of every other fold of the same modalities and variant (their held-out cases), seeds
    averaged per case first — read from those rows' sweeps (``p_smooth`` with fold K's own sigma). So no
    label of fold K's held-out cases is read for fold K."""
    choice: dict = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault(("-".join(r["modalities"]), r["variant"]), []).append(r)
    for (mods, variant), rs in groups.items():
        for fold in sorted({r["fold"] for r in rs}):
            others = [r for r in rs if r["fold"] != fold]
            if not others:
                raise SystemExit(f"{mods}/{variant}: fold {fold} has no other fold's rows to choose its threshold on")
            entry = choice.setdefault(f"{mods}/{variant} fold {fold}", {})
            for col, family in THRESHOLD_COLUMNS.items():
                fam = f"{family}@{fold}" if family == "p_smooth" else family  # fold K's own sigma
                per_case: dict = {}
                for r in others:
                    for t, m in r["sweep"][fam].items():
                        per_case.setdefault(t, {}).setdefault(r["case"], []).append(m["dice"])
                scores = {t: statistics.mean(statistics.mean(v) for v in by_case.values())
                          for t, by_case in per_case.items()}
                best = _best_threshold(scores)
                entry[col] = {"threshold": float(best), "scores": scores}
                for r in rs:
                    if r["fold"] == fold:
                        r[col] = dict(r["sweep"][fam][best])
                        r.setdefault("thresholds", {})[col] = float(best)
    return choice


def choose_leave_one_out(rows: list[dict], columns) -> dict:
    """Fills each row's leave-one-case-out columns among ``columns`` (:data:`LOO_COLUMNS`) in place and returns
    the choice {"<modalities>/<variant>": {column: {"per_case": {case: {"threshold", "scores"}}, "all": {...}}}}.

    Case c's threshold for a family is the one with the highest mean Dice over the other labelled cases of the
    same modalities and variant (seeds averaged per case first; every case's map comes from a fold model that
    did not train on it), read from the rows' sweeps; ties as :func:`_best_threshold`. So no label of case c
    is read for case c. ``"all"``: the same choice over every case (what the procedure would ship)."""
    choice: dict = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault(("-".join(r["modalities"]), r["variant"]), []).append(r)
    for (mods, variant), rs in groups.items():
        for col in [c for c in columns if c in LOO_COLUMNS]:
            family = LOO_COLUMNS[col]
            by_case: dict = {}
            for r in rs:
                for t, m in r["sweep"][family].items():
                    by_case.setdefault(r["case"], {}).setdefault(t, []).append(m["dice"])
            dice = {c: {t: statistics.mean(v) for t, v in ts.items()} for c, ts in by_case.items()}
            if len(dice) < 2:
                raise SystemExit(f"{mods}/{variant}: leave one case out needs at least 2 scored cases, got {len(dice)}")
            grid = sorted(next(iter(dice.values())), key=_grid_order)
            entry = choice.setdefault(f"{mods}/{variant}", {}).setdefault(col, {"per_case": {}})
            for c in sorted(dice):
                scores = {t: statistics.mean(dice[o][t] for o in dice if o != c) for t in grid}
                best = _best_threshold(scores)
                pair = _pair(best)
                entry["per_case"][c] = {**pair, "scores": scores}
                for r in rs:
                    if r["case"] == c:
                        r[col] = dict(r["sweep"][family][best])
                        r.setdefault("thresholds", {})[col] = pair["threshold"]
                        if "gmm_weight" in pair:
                            r.setdefault("gmm_weights", {})[col] = pair["gmm_weight"]
            scores = {t: statistics.mean(dice[o][t] for o in dice) for t in grid}
            entry["all"] = {**_pair(_best_threshold(scores)), "scores": scores}
    return choice


def _pair(key: str) -> dict:
    """{"threshold": t} from "0.45", {"gmm_weight": w, "threshold": t} from "w/t"."""
    if "/" not in key:
        return {"threshold": float(key)}
    w, t = (float(v) for v in key.split("/"))
    return {"gmm_weight": w, "threshold": t}


def _choice_text(c: dict) -> str:
    """One choice as the report shows it: "0.35", or "0.25/0.35" (weight/threshold)."""
    return sweep_key(c["gmm_weight"], c["threshold"]) if "gmm_weight" in c else f"{c['threshold']:.2f}"


def loo_report(choice: dict, rows: list[dict]) -> str:
    """Markdown: each case's left-out threshold per column, the threshold the procedure gives on every case
    (with the mean Dice there and at 0.30, cgc-v18's value), and whether the swept shipped rule at 0.30
    reproduces the ``default_rec_03_ensemble`` column (that column picks its lesion by size, the sweep as
    shipped, by the lesion at 0.5: equal unless the choice matters). A weight-and-threshold column shows "w/t" and
    its mean Dice at 0.50/0.30."""
    lines = ["", "#### Thresholds chosen leave one case out", ""]
    for group, cols in sorted(choice.items()):
        cases = sorted(next(iter(cols.values()))["per_case"])
        lines += [f"{group}: t_c (or w_c/t_c) per held-out case (each chosen on the other {len(cases) - 1} cases)", "",
                  "| column | " + " | ".join(cases) + " | t over all cases | mean Dice there (at 0.30) |",
                  "|---|" + "---|" * (len(cases) + 2)]
        for col, c in cols.items():
            t_all = _choice_text(c["all"])
            at_03 = "0.50/0.30" if "gmm_weight" in c["all"] else "0.30"
            lines.append(f"| {col} | " + " | ".join(_choice_text(c["per_case"][k]) for k in cases)
                         + f" | {t_all} | {c['all']['scores'][t_all]:.4f} ({c['all']['scores'][at_03]:.4f}) |")
        lines.append("")
    pairs = [(r["sweep"]["default_rec_ensemble"]["0.30"]["dice"], r["default_rec_03_ensemble"]["dice"]) for r in rows
             if "default_rec_ensemble" in r.get("sweep", {}) and "default_rec_03_ensemble" in r]
    if pairs:
        same = sum(abs(a - b) <= 1e-9 for a, b in pairs)
        lines.append(f"The swept shipped rule at 0.30 (lesion chosen as at 0.5) equals `default_rec_03_ensemble` (lesion "
                     f"chosen by size) on {same} of {len(pairs)} rows.")
    return "\n".join(lines) + "\n"


def fold_sigmas_of(model: base.Model, models: list, work: Path) -> dict:
    """{fold: smoothed-P sigma in mm} of every fold of ``model``'s modalities in the source stage (the
    source protocol's choices, read from its sigma files)."""
    out = {}
    for m in models:
        if m.modalities == model.modalities and m.fold not in out:
            sfile = base.sigma_path(work, m.modalities, base.model_sigma_tag(m))
            if not sfile.exists():
                raise SystemExit(f"{sfile} not found: score the source stage first (its sigma choice per fold)")
            out[m.fold] = float(json.loads(sfile.read_text())["sigma"])
    return out


def check_sweep_at_half(rows: list[dict]) -> None:
    """The sweeps at t = 0.5 must reproduce the rows' own 0.5 columns (the same maps and clean-ups), and a sweep over
    weights at w = 0.5 the threshold sweep of the same rule, else the swept columns would not be comparable."""
    for r in rows:
        for col, fam in [(c, c) for c in ("network", "default_rec", "gmm_default")] + [("p_smooth", f"p_smooth@{r['fold']}")]:
            if col in r and fam in r["sweep"] and abs(r[col]["dice"] - r["sweep"][fam]["0.50"]["dice"]) > 1e-9:
                raise RuntimeError(f"{r['model']} {r['case']}: the sweep of {fam} at 0.5 gives Dice "
                                   f"{r['sweep'][fam]['0.50']['dice']:.6f}, the {col} column {r[col]['dice']:.6f}")
        # cgc-v33: the weight-and-threshold sweep at weight 0.5 is cgc-v29's threshold sweep of the same rule.
        both = r["sweep"].get("default_rec_ensemble"), r["sweep"].get("default_rec_ensemble_w")
        if all(both):
            for t, m in both[0].items():
                k = sweep_key(0.5, float(t))
                if k in both[1] and abs(both[1][k]["dice"] - m["dice"]) > 1e-9:
                    raise RuntimeError(f"{r['model']} {r['case']}: the weighted sweep at {k} gives Dice "
                                       f"{both[1][k]['dice']:.6f}, the threshold sweep at {t} {m['dice']:.6f}")


def threshold_report(choice: dict, decisions: dict | None) -> str:
    """Markdown: the threshold chosen per fold and column (with the training-case Dice it was chosen by),
    and the declared decisions."""
    lines = ["", "#### Thresholds chosen inside the training folds", "",
             "| fold | column | t | mean Dice on the fold's labelled training cases at t (at 0.5) |", "|---|---|---|---|"]
    for fold, cols in sorted(choice.items()):
        for col, c in cols.items():
            t = f"{c['threshold']:.2f}"
            lines.append(f"| {fold} | {col} | {t} | {c['scores'][t]:.4f} ({c['scores']['0.50']:.4f}) |")
    return "\n".join(lines) + "\n" + (decision_report(decisions) if decisions else "")


def decision_report(decisions: dict) -> str:
    """Markdown: the declared decisions of :func:`decide`, one row per decision and model group."""
    lines = ["", "| decision | models | rule − control | (rule − its baseline) − (control − its baseline) | passes |",
             "|---|---|---|---|---|"]
    for name, groups in decisions.items():
        for g, d in groups.items():
            lines.append(f"| {name} (`{d['rule']}` vs `{d['control']}`; baseline `{d['baseline_rule']}` vs "
                         f"`{d['baseline']}`) | {g} | {d['gain']:+.4f} | {d['gain_over_baseline']:+.4f} | "
                         f"{'**yes**' if d['passes'] else 'no'} |")
    return "\n".join(lines) + "\n"


def volume_report(rows: list[dict]) -> str:
    """Markdown: per case (seeds averaged), the volumes cgc-v23's columns keep and the thresholds that keep
    them — P ≥ 0.5's voxels, the network's own ≥ 0.5 voxels, the thresholds of the network, the smoothed P
    and the fused map of the default output."""
    by: dict = {}
    for r in rows:
        if "volumes" in r:
            by.setdefault(("-".join(r["modalities"]), r["case"]), []).append(r["volumes"])
    lines = ["", "#### Volumes kept per case (seeds averaged)", "",
             "| models | case | P ≥ 0.5 voxels | network ≥ 0.5 / P ≥ 0.5 | t network | t smoothed P | P_rec ≥ 0.5 voxels | t default |",
             "|---|---|---|---|---|---|---|---|"]

    def mean(vs, k, fmt):
        got = [v[k] for v in vs if k in v and np.isfinite(v[k])]
        return format(statistics.mean(got), fmt) if got else "—"

    for (mods, case), vs in sorted(by.items()):
        ratio = [v["network_voxels"] / v["p_voxels"] for v in vs if v.get("p_voxels")]
        lines.append(f"| {mods} | {case} | {mean(vs, 'p_voxels', '.0f')} | "
                     f"{format(statistics.mean(ratio), '.2f') if ratio else '—'} | {mean(vs, 'network_vol_t', '.3f')} | "
                     f"{mean(vs, 'p_smooth_vol_t', '.3f')} | {mean(vs, 'p_rec_voxels', '.0f')} | "
                     f"{mean(vs, 'default_rec_vol_t', '.3f')} |")
    return "\n".join(lines) + "\n"


def decide(summary: dict, decisions: list, margin: float) -> dict:
    """cgc-v18's declared reading, per summary group: a decision passes when its rule beats its control by
    more than ``margin`` mean Dice AND its margin over its baseline rule grows by more than ``margin``
    ((rule − baseline_rule) − (control − baseline)). Returns {decision name: {group: {...}}}."""
    out: dict = {}
    for d in decisions:
        for gname, g in summary.items():
            m = {k: g["means"][d[k]]["dice"] for k in ("rule", "control", "baseline_rule", "baseline")}
            gain = m["rule"] - m["control"]
            over = (m["rule"] - m["baseline_rule"]) - (m["control"] - m["baseline"])
            out.setdefault(d["name"], {})[gname] = {"gain": gain, "gain_over_baseline": over,
                                                    "passes": gain > margin and over > margin, **d}
    return out


def pick_winner(summary: dict, control: str, rules: list, companions: dict | None = None,
                tolerance: float = 0.01, margin: float = 0.01) -> str:
    """Highest mean Dice over the groups; a rule must beat ``control`` by more than ``margin`` (the protocol's
    ``winner_margin``, 0.01 unless it names one) to replace it.
    ``companions`` ({rule: column}, e.g. the default output made from that rule's map): the winner's
    companion must also not fall below the control's by more than ``tolerance`` in any group, else the
    control stays."""
    mean = {r: statistics.mean(g["means"][r]["dice"] for g in summary.values()) for r in rules}
    winner = base.winner_by_margin(mean, control, margin)
    if companions and winner != control:
        a, b = companions[winner], companions[control]
        if any(g["means"][a]["dice"] - g["means"][b]["dice"] < -tolerance for g in summary.values()):
            return control
    return winner


def stage_winner(summary: dict, proto: dict, stage: dict) -> str | None:
    """The stage's winner by :func:`pick_winner` with the protocol's control, rules, companions and margin; None
    without a ``winner_rule`` or a summary. A stage with ``winner_per_set`` (cgc-v28's confirmation: each shipped
    model follows its own set) decides each model set apart: "<set>: `<winner>`; ..." (else the winner's name)."""
    if "winner_rule" not in stage or not summary:
        return None
    pick = lambda groups: pick_winner(groups, proto["control"], proto["rules"], proto.get("companions"),
                                      proto.get("companion_tolerance", 0.01), proto.get("winner_margin", 0.01))
    if stage.get("winner_per_set"):
        return "; ".join(f"{g['modalities']}: `{pick({k: g})}`" for k, g in summary.items())
    return pick(summary)


#: cgc-v3's confirmation caveat (that file names none; it may not be edited after its numbers).
V3_CONFIRM_CAVEAT = ("Caveat: {src}'s four-channel confirmation models had been scored with the `network` rule "
                     "before this protocol was written (not with the smoothed network); its FLAIR models had not.")


def report(proto: dict, src: dict, stage_name: str, summary: dict, sigmas: dict, winner) -> str:
    stage = proto["stages"][stage_name]
    columns, differences = columns_of(proto)
    meant = "; ".join(f"{TITLES[c].strip('*')}: {MEANINGS[c]}" for c, _ in columns if c in MEANINGS)
    lines = [f"### Protocol {proto['name']}, stage `{stage_name}` (inference rules)", "",
             f"Protocol file `docs/protocols/{proto['name']}.toml` (committed before its first run). Nothing trained: "
             f"the `{stage['variant']}` models of `{src['name']}`'s stage `{stage['source_stage']}` segment their held-out "
             f"cases again. {meant}. Smoothed-P sigma: the fold's, chosen in {src['name']} on the fold's labelled "
             "training cases: " + "; ".join(f"{k}: {v['sigma']:g} mm" for k, v in sorted(sigmas.items())) + ".", ""]
    caveat = stage.get("caveat") or (V3_CONFIRM_CAVEAT if proto["name"] == "cgc-v3" and stage_name == "confirm" else None)
    if caveat:
        lines += [caveat.format(src=src["name"]), ""]
    for g in summary.values():
        lines += [f"#### {g['modalities']} — `{g['variant']}`", ""] + base.group_table(g, columns, differences) + [""]
    if winner:
        shown = winner if stage.get("winner_per_set") else f"`{winner}`"
        lines += [f"Winner by the declared rule ({stage.get('winner_rule', '')}): **{shown}**.", ""]
    return "\n".join(lines)


def run(args, proto: dict, proto_path: Path) -> int:
    if args.stage not in proto["stages"]:
        raise SystemExit(f"stage {args.stage!r} is not in {proto_path}; it has {', '.join(proto['stages'])}")
    stage = proto["stages"][args.stage]
    columns, differences = columns_of(proto)
    src_path = proto_path.parent / stage.get("source", proto.get("source"))
    src = base.load_protocol(src_path)
    results_dir = base.ROOT / "docs" / "protocols" / "results"
    work = Path(args.work_dir or base.ROOT / "runs" / f"protocol-{src['name']}") / stage["source_stage"]
    data = Path(args.data)
    models = [m for m in base.plan(src, stage["source_stage"], data, work, results_dir, [])
              if m.variant == stage["variant"] and ("seeds" not in stage or m.seed in stage["seeds"])]
    models, set_tag = base.only_model_set(models, getattr(args, "model_set", None), stage)
    missing = [m.key for m in models if base._finished(m) is None]
    if missing and not args.score_available:
        raise SystemExit(f"{src['name']} has not finished these models yet: {', '.join(missing)}; run its stage "
                         f"{stage['source_stage']} first (or give --score-available for a partial look)")
    models = [m for m in models if base._finished(m) is not None]
    cases = {d.name: base.CaseData(d) for d in base._case_dirs(data / src["labelled"])}
    rows, sigmas, all_fold_sigmas = [], {}, {}
    thresholds = tuple(float(t) for t in proto.get("thresholds", ()))
    gmm_weights = tuple(float(w) for w in proto.get("gmm_weights", ()))
    per_fold = bool(THRESHOLD_COLUMNS.keys() & {c for c, _ in columns})
    loo_cols = [c for c, _ in columns if c in LOO_COLUMNS]
    swept = per_fold or bool(loo_cols)
    if swept and 0.5 not in thresholds:
        raise SystemExit(f"{proto['name']}: its thresholds must include 0.5 (the columns it is checked against)")
    if "default_rec_wloo_ensemble" in loo_cols and (0.5 not in gmm_weights or 0.3 not in thresholds):
        raise SystemExit(f"{proto['name']}: a weight-and-threshold column needs gmm_weights with 0.5 and thresholds "
                         "with 0.3 (the shipped fusion and the point its report compares with)")
    for m in models:
        tag = base.model_sigma_tag(m)
        skey = f"{'-'.join(m.modalities)} fold {m.fold}" + tag[len(f"fold{m.fold}"):]
        # The source protocol's own choice, made on the fold's labelled training cases.
        sfile = base.sigma_path(work, m.modalities, tag)
        if not sfile.exists() and args.score_available:  # a partial look skips what cannot be scored yet
            missing.append(f"{m.key} (no {sfile.name} yet)")
            continue
        if not sfile.exists():
            raise SystemExit(f"{sfile} not found: score {src['name']}'s stage {stage['source_stage']} first")
        sigmas.setdefault(skey, json.loads(sfile.read_text()))
        score_file = m.run / f"rules-{proto['name']}.json"
        stamp = {"sigma": sigmas[skey]["sigma"], "step": base._finished(m).get("step")}
        if ENSEMBLE_COLUMNS & {c for c, _ in columns}:  # the ensemble changes when a member does
            stamp["ensemble"] = {e.key: base._finished(e).get("step") for e in ensemble_members(m, models)}
        # Every fold's sigma, read once per modality set (each read opens every model's checkpoint).
        if swept and m.modalities not in all_fold_sigmas:
            all_fold_sigmas[m.modalities] = fold_sigmas_of(m, models, work)
        fold_sigmas = all_fold_sigmas.get(m.modalities, {})
        if swept:
            stamp.update(thresholds=list(thresholds), fold_sigmas={str(k): v for k, v in fold_sigmas.items()},
                         **({"gmm_weights": list(gmm_weights)} if gmm_weights else {}))
        rows += base.kept_scores(score_file, stamp,
                                 lambda: score_model(m, cases, sigmas[skey]["sigma"], args.device, columns, models,
                                                     thresholds, fold_sigmas, gmm_weights))
    choice = decisions = loo = None
    if swept and not missing:
        check_sweep_at_half(rows)
        choice = choose_thresholds(rows) if per_fold else None
        loo = choose_leave_one_out(rows, loo_cols) if loo_cols else None
    summary = base.summarise(rows, proto, columns, differences) if not (swept and missing) else {}
    if (not swept or choice is not None or loo is not None) and summary and "decisions" in proto:
        decisions = decide(summary, proto["decisions"], float(proto.get("margin", 0.01)))
    winner = stage_winner(summary, proto, stage)
    text = report(proto, src, args.stage, summary, sigmas, winner)
    if choice is not None:
        text += threshold_report(choice, decisions)
    elif decisions:
        text += decision_report(decisions)
    if loo is not None:
        text += loo_report(loo, rows)
    if VOLUME_COLUMNS & {c for c, _ in columns} and rows:
        text += volume_report(rows)
    text += base.model_set_note(set_tag)
    if args.score_available or missing:
        print(f"PARTIAL: {len({r['model'] for r in rows})} finished model(s) scored; not yet finished: {', '.join(missing) or 'none'}. "
              "Progress, not the stage's result.\n\n" + text)
        return 0
    print(text)
    if not args.no_write:
        base.write_stage(results_dir, f"{proto['name']}-{args.stage}{set_tag}", text,
                         {"protocol": proto["name"], "stage": args.stage, "winner": winner, "sigmas": sigmas,
                          "summary": summary, "rows": rows, **({"thresholds": choice} if choice is not None else {}),
                          **({"decisions": decisions} if decisions is not None else {}),
                          **({"leave_one_out": loo} if loo is not None else {})})
    return 0
