"""Preprocessing-shift stress test (issue 9): held-out fold models on the labelled cases after label-free
changes that other cohorts' preprocessing makes, scored on the original grid against the original label.

Issue 9 measured the shipped networks on unseen cases "from other cohorts and other preprocessing", where
they lost to a smoothed P; every protocol since scored BraTS-preprocessed cases only. This test keeps the
cases and changes their preprocessing, one change at a time (:data:`SHIFTS`), so what each output loses
to the change can be read beside what it scores on the unchanged case. Nothing is trained; the models are
a source protocol stage's fold models (held-out cases only), the smoothed-P sigma is the fold's (chosen by
that protocol on the fold's labelled training cases), and no choice here reads a label.

Declared before its first run (2026-12-02, committed with this file; no number of it existed):
- Shifts: ``none``; ``zscore`` (whole-volume z-score per channel: a non-zero constant outside the brain);
  ``thick5`` (5 mm axial slices: means of 5-slice slabs); ``iso2`` (2 mm isotropic: means of 2×2×2 blocks);
  ``bias`` (a smooth multiplicative field, ×0.7–1.4 over the brain, per channel); ``noise`` (Gaussian,
  SD 5 % of the brain's 99th percentile, inside the brain); ``gamma`` (intensity ** 0.6, rescaled to the
  channel's maximum, inside the brain); ``uint8`` (rounded to 0–255). Random parts are seeded per case and
  channel. Added 2026-12-02 09:45, before its first run, with the same reading: ``clinical`` (``bias``, then
  ``noise``, then ``thick5`` — several changes at once, as a 2-D clinical FLAIR from another scanner has).
- Columns (Dice on the original 1 mm grid; a coarser grid's mask is mapped back by linear interpolation of
  the mask, ≥ 0.5, the same for every column): ``p`` (P ≥ 0.5, the model's GMM settings), ``p_smooth``
  (smoothed P ≥ 0.5, the fold's sigma), ``network`` (≥ 0.5), ``default_rec`` (the shipped output rule,
  `single-lesion-recommended`), ``gmm_default`` (`cgcseg gmm` with its defaults).
- Read: per shift, the mean over held-out cases (seeds averaged per case) of each column and its change
  from ``none``; ``network − p_smooth`` and ``default_rec − gmm_default`` with the bootstrap 95 % CI over
  cases. A column whose mean falls below 0.3 under a shift, or more than 0.15 below its ``none`` score, is
  a failure to trace and fix in the code (not by tuning on these cases); nothing ships from the numbers.

Added 2026-12-02 16:59, before any number of it existed (protocol ``lesion-choice-v1``, docs/protocols/README.md):
column ``default_vote`` — the shipped output rule with ``lesion_choice="network"`` (the opened components of
the fused map ranked by how many voxels the network's own map marks >= 0.5, size breaking ties), from the
same network and P maps as ``default_rec``; the paired difference ``default_vote − default_rec`` per shift
and per case; kept scores without the column are recomputed. Its decisions are declared in that README.
Added 2026-12-02 17:24, before any number of them existed (protocol ``n4-v1``, same README): columns
``gmm_default_n4`` (`cgcseg gmm`'s default with N4 bias-field correction in the recommended preset) and
``default_n4`` (the shipped output rule fused with that map), paired against ``gmm_default`` and
``default_rec``. Added 2026-12-02 18:06, before any number of them existed (protocol ``n4-v2``): columns
``gmm_default_n4x`` and ``default_n4x``, the same with N4 fitted without P_rec >= 0.5
(``ShiftedCase.lesion_excluded_n4``). All three protocols are decided (none adopted), so since 2026-12-02
21:40 their columns are scored only when named with ``--rules`` (each costs extra GMM passes, the N4 ones an
N4 fit, per case and shift); kept scores gain the columns asked for and keep the others.
Added 2026-12-04 01:58, before any shifted number of the models it was added for (protocol ``shift-v24``, same
README): column ``default_rec_03`` (``--rules shipped-0.3``) — ``default_rec``'s fused map and rule at the
threshold shipped since 2026-12-03, 0.3 (``default_rec`` keeps 0.5, as first declared), paired against
``gmm_default`` and ``default_rec``; and ``--against RUN.json``: another run's rows (another recipe's fold models,
same cases and seeds), paired per shift and case with this run's (:func:`compare_runs`).
Added 2026-12-04 02:23, before any number of it existed (protocol ``hysteresis-v1``, same README): column
``default_core_03`` (``--rules hysteresis-v1``, with ``shipped-0.3`` for its pair) — ``default_rec_03`` with its lesion
chosen by the fused map's voxels >= 0.5 (``lesion_choice="core"``), paired against ``default_rec_03``.
Added 2026-12-04 10:12, before any number of it existed (protocol ``hysteresis-v2``, same README): column
``default_seed_03`` (``--rules hysteresis-v2``, with ``shipped-0.3 hysteresis-v1`` for its pairs) — ``default_rec_03``
with its lesion the one the same rule keeps at 0.5 (``lesion_choice="seed"``), paired against ``default_core_03``
(the shipped choice) and ``default_rec_03``.
Added 2026-12-04 13:05 (a report, it decides nothing: protocol cgc-v29 chose the threshold): column
``default_seed_035`` (``--rules shipped-0.35``, with ``hysteresis-v2`` for its pair) — the shipped rule
(``default_seed_03``) at 0.35, the four-channel model's threshold since cgc-v29, paired against ``default_seed_03``
and ``gmm_default``.

    python benchmarks/preprocessing_shift.py --protocol docs/protocols/cgc-v13.toml --stage screen \\
        --variant robust-2mm-st [--modalities flair t1 t1ce t2] [--shifts none zscore ...] [--seeds S ...] [--tag NAME]
        [--rules lesion-choice-v1 n4-v1 n4-v2 shipped-0.3 hysteresis-v1 hysteresis-v2 shipped-0.35] [--against OTHER_RUN.json]

Writes ``docs/protocols/results/shift-<protocol>-<stage>-<modalities>.json`` and the docs/BENCHMARKS.md
section ``shift-<protocol>-<stage>-<modalities>``; per model scores are kept beside it
(``runs/.../<model>/shift-scores.json``) so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

import protocol as base  # noqa: E402

SHIFTS = ("none", "zscore", "thick5", "iso2", "bias", "noise", "gamma", "uint8", "clinical")
#: Columns every run scores, and their paired differences.
BASE_COLUMNS = ("p", "p_smooth", "network", "default_rec", "gmm_default")
BASE_PAIRS = (("network", "p_smooth"), ("default_rec", "gmm_default"))
#: The decided output-rule protocols' columns, scored only when asked for (``--rules``): each costs extra
#: GMM passes (and the N4 ones an N4 fit) per case and shift, and all three protocols are decided.
RULE_COLUMNS = {
    "lesion-choice-v1": (("default_vote",), (("default_vote", "default_rec"),)),
    "n4-v1": (("gmm_default_n4", "default_n4"), (("gmm_default_n4", "gmm_default"), ("default_n4", "default_rec"))),
    "n4-v2": (("gmm_default_n4x", "default_n4x"), (("gmm_default_n4x", "gmm_default"), ("default_n4x", "default_rec"))),
    # Not an output-rule protocol: the shipped rule at the threshold shipped since 2026-12-03 (``default_rec``
    # keeps 0.5, what this script declared first); shift-v24 decides on it.
    "shipped-0.3": (("default_rec_03",), (("default_rec_03", "gmm_default"), ("default_rec_03", "default_rec"))),
    # The shipped rule at 0.3 with its lesion chosen by the fused map's 0.5 core (pair needs shipped-0.3 too).
    "hysteresis-v1": (("default_core_03",), (("default_core_03", "default_rec_03"),)),
    # The shipped rule at 0.3 with its lesion the one it keeps at 0.5 (pairs need shipped-0.3 and hysteresis-v1).
    "hysteresis-v2": (("default_seed_03",), (("default_seed_03", "default_core_03"), ("default_seed_03", "default_rec_03"))),
    # The shipped rule at the four-channel model's threshold since cgc-v29 (pair needs hysteresis-v2 too).
    "shipped-0.35": (("default_seed_035",), (("default_seed_035", "default_seed_03"), ("default_seed_035", "gmm_default"))),
}
#: Every column and pair, in report order (the default of the summary and report functions).
COLUMNS = BASE_COLUMNS + tuple(c for cols, _ in RULE_COLUMNS.values() for c in cols)
PAIRS = BASE_PAIRS + tuple(p for _, pairs in RULE_COLUMNS.values() for p in pairs)


def columns_for(rules) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``(columns, pairs)`` scored with the output-rule protocols ``rules`` (keys of :data:`RULE_COLUMNS`)."""
    unknown = sorted(set(rules) - set(RULE_COLUMNS))
    if unknown:
        raise ValueError(f"unknown rule protocol(s) {', '.join(unknown)}; choose from {', '.join(RULE_COLUMNS)}")
    cols = BASE_COLUMNS + tuple(c for r in RULE_COLUMNS if r in rules for c in RULE_COLUMNS[r][0])
    pairs = BASE_PAIRS + tuple(p for r in RULE_COLUMNS if r in rules for p in RULE_COLUMNS[r][1])
    return cols, pairs
FAIL_BELOW, FAIL_DROP = 0.3, 0.15


def _rng(case: str, shift: str, channel: int) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{case}/{shift}/{channel}".encode()))


def block_mean(a: np.ndarray, factors_zyx: tuple[int, int, int]) -> np.ndarray:
    """Means of ``factors_zyx`` blocks of ``a`` (Z, Y, X); a partial last block is the mean of what it has."""
    out = np.asarray(a, np.float64)
    for axis, f in enumerate(factors_zyx):
        if f == 1:
            continue
        n = out.shape[axis]
        starts = np.arange(0, n, f)
        sums = np.add.reduceat(out, starts, axis=axis)
        counts = np.minimum(starts + f, n) - starts
        shape = [1, 1, 1]
        shape[axis] = len(starts)
        out = sums / counts.reshape(shape)
    return out.astype(np.float32)


def coarse_geometry(geometry, factors_zyx):
    """The grid of :func:`block_mean`: spacing × factor, origin at the first block's centre."""
    from CGCLesionSegLib.image_io import Geometry
    fx = factors_zyx[::-1]
    shape = tuple(-(-n // f) for n, f in zip(geometry.shape_zyx, factors_zyx))
    spacing = tuple(s * f for s, f in zip(geometry.spacing, fx))
    shift_ijk = np.array([(f - 1) / 2 for f in fx])
    origin = tuple(geometry.index_to_lps(shift_ijk))
    return Geometry(shape, spacing, origin, geometry.direction)


def smooth_field(shape_zyx, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative bias field: exp of a random quadratic in the box's normalised coordinates, scaled
    to span ×0.7–1.4 over the box."""
    z, y, x = (np.linspace(-1, 1, n) for n in shape_zyx)
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    terms = [Z, Y, X, Z * Y, Z * X, Y * X, Z ** 2, Y ** 2, X ** 2]
    s = sum(c * t for c, t in zip(rng.normal(size=len(terms)), terms))
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-9)  # 0 … 1
    return np.exp(np.log(0.7) + s * (np.log(1.4) - np.log(0.7))).astype(np.float32)


def apply_shift(shift: str, channels: list, geometry, case: str):
    """``(channels, geometry)`` after ``shift``; channels are (Z, Y, X) arrays of a skull-stripped case."""
    out = []
    if shift == "clinical":
        chans, g = channels, geometry
        for part in ("bias", "noise", "thick5"):
            chans, g = apply_shift(part, chans, g, case)
        return chans, g
    if shift in ("thick5", "iso2"):
        f = (5, 1, 1) if shift == "thick5" else (2, 2, 2)
        return [block_mean(c, f) for c in channels], coarse_geometry(geometry, f)
    brain = np.zeros(channels[0].shape, bool)
    for ch in channels:
        brain |= ch != 0
    for i, ch in enumerate(channels):
        a = np.asarray(ch, np.float32)
        rng = _rng(case, shift, i)
        if shift == "none":
            b = a
        elif shift == "zscore":
            b = (a - a.mean()) / a.std()
        elif shift == "bias":
            b = a * smooth_field(a.shape, rng)
        elif shift == "noise":
            sd = 0.05 * float(np.percentile(a[brain], 99))
            b = np.where(brain, a + rng.normal(0, sd, a.shape).astype(np.float32), 0)
        elif shift == "gamma":
            top = float(a.max())
            b = np.where(brain, top * np.clip(a / top, 0, None) ** 0.6, 0)
        elif shift == "uint8":
            lo, hi = float(a.min()), float(a.max())
            b = np.round(255 * (a - lo) / (hi - lo))
        else:
            raise ValueError(f"unknown shift {shift!r}; known: {', '.join(SHIFTS)}")
        out.append(np.asarray(b, np.float32))
    return out, geometry


def back_to(mask: np.ndarray, geometry, target) -> np.ndarray:
    """A mask on ``geometry`` on the ``target`` grid (linear interpolation of the mask, ≥ 0.5)."""
    if geometry == target:
        return np.asarray(mask, bool)
    from CGCLesionSegLib.resample import resample_to_grid
    return resample_to_grid(np.asarray(mask, np.float32), geometry, target, "linear") >= 0.5


class ShiftedCase:
    """One held-out case under one shift: P maps memoised, shared by the fold's seeds."""

    def __init__(self, case: "base.CaseData", mods, shift: str):
        imgs = case.images(list(mods))
        self.channels, self.geometry = apply_shift(shift, [i.array_zyx for i in imgs], imgs[0].geometry, case.name)
        self.mods = list(mods)
        self._p: dict = {}

    def probability(self, gmm_cfg):
        from CGCLesionSegLib.config import config_to_dict
        from CGCLesionSegLib.gmm import compute_probability_map
        key = json.dumps(config_to_dict(gmm_cfg), sort_keys=True)
        if key not in self._p:
            self._p[key] = compute_probability_map(self.channels, None, gmm_cfg, names=self.mods,
                                                   spacing_xyz=self.geometry.spacing)
        return self._p[key]

    def lesion_excluded_n4(self, gmm_cfg, rec):
        """n4-v2's map: the FLAIR corrected by N4 fitted inside ``rec``'s brain mask without ``rec.probability
        >= 0.5`` (the lesion candidates, so a large lesion is not absorbed into the field) and divided out over
        the whole mask, then the recommended preset ``gmm_cfg`` (no N4 of its own) on it; memoised."""
        from CGCLesionSegLib.bias_field import n4_correct
        from CGCLesionSegLib.gmm import compute_probability_map
        if "n4x" not in self._p:
            fi = self.mods.index("flair")
            chans = list(self.channels)
            chans[fi] = n4_correct(chans[fi], rec.mask & (rec.probability < 0.5), spacing_xyz=self.geometry.spacing,
                                   apply_mask_zyx=rec.mask)
            self._p["n4x"] = compute_probability_map(chans, rec.mask, gmm_cfg, names=self.mods,
                                                     spacing_xyz=self.geometry.spacing)
        return self._p["n4x"]


_LOADED: dict = {}


def _load(model: "base.Model"):
    """``(network, info)`` of ``model``, read once per run of this script."""
    from CGCLesionSegLib.checkpoint import load_checkpoint
    if model.run not in _LOADED:
        _LOADED[model.run] = load_checkpoint(model.run / "last.pt")
    return _LOADED[model.run]


def score(model: "base.Model", case: "base.CaseData", shifted: ShiftedCase, sigma: float, device: str,
          rules=tuple(RULE_COLUMNS)) -> dict:
    """Dice (and the other metrics) of :data:`BASE_COLUMNS` and of the columns of the output-rule protocols
    ``rules`` for one model, case and shift."""
    from CGCLesionSegLib.config import config_from_dict
    from CGCLesionSegLib.gmm import GMMConfig
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset, segment_case
    from CGCLesionSegLib.metrics import all_metrics
    from CGCLesionSegLib.postprocess import binarize, smooth_probability
    from rules import output_rule_mask
    net, info = _load(model)
    p = shifted.probability(config_from_dict(GMMConfig, info.preprocessing["gmm"])).probability
    gmm_cfg, threshold, post = base._gmm_default_settings(shifted.mods)
    rec = shifted.probability(gmm_cfg)
    res = segment_case(shifted.channels, shifted.geometry, shifted.mods, model.run / "last.pt",
                       config=InferenceConfig(device=device, gmm_weight=0.0), model=net, info=info,
                       gmm_probability_zyx=p)
    g = shifted.geometry
    masks = {"p": p >= 0.5, "p_smooth": smooth_probability(p, sigma, g.spacing) >= 0.5,
             "network": res.probability >= 0.5,
             "default_rec": output_rule_mask(res.probability, rec.probability, res.brain_mask, 0.5, g.spacing),
             "gmm_default": binarize(rec.probability, threshold, mask_zyx=rec.mask, spacing_xyz=g.spacing, **post)}
    if "lesion-choice-v1" in rules:  # the shipped rule, its component chosen by the network's votes
        vote = InferenceConfig(**{**output_preset("single-lesion"), "lesion_choice": "network"})
        masks["default_vote"] = output_mask(0.5 * res.probability + 0.5 * rec.probability, res.brain_mask, vote,
                                            g.spacing, res.probability).astype(bool)
    if "n4-v1" in rules:  # the recommended preset with N4 first; the shipped rule fused with that map
        rec_n4 = shifted.probability(dataclasses.replace(gmm_cfg, n4=True))
        masks["gmm_default_n4"] = binarize(rec_n4.probability, threshold, mask_zyx=rec_n4.mask, spacing_xyz=g.spacing,
                                           **post)
        masks["default_n4"] = output_rule_mask(res.probability, rec_n4.probability, res.brain_mask, 0.5, g.spacing)
    if "n4-v2" in rules:  # N4 fitted on the brain without P_rec >= 0.5, divided out over the whole brain
        rec_x = shifted.lesion_excluded_n4(gmm_cfg, rec)
        masks["gmm_default_n4x"] = binarize(rec_x.probability, threshold, mask_zyx=rec_x.mask, spacing_xyz=g.spacing,
                                            **post)
        masks["default_n4x"] = output_rule_mask(res.probability, rec_x.probability, res.brain_mask, 0.5, g.spacing)
    if "shipped-0.3" in rules:  # the same fused map and rule as default_rec, at 0.3
        masks["default_rec_03"] = output_rule_mask(res.probability, rec.probability, res.brain_mask, 0.5, g.spacing,
                                                   threshold=0.3)
    if "hysteresis-v1" in rules:  # default_rec_03 with the lesion chosen by the fused map's voxels >= 0.5
        masks["default_core_03"] = output_rule_mask(res.probability, rec.probability, res.brain_mask, 0.5, g.spacing,
                                                    threshold=0.3, lesion_choice="core")
    if "hysteresis-v2" in rules:  # default_rec_03 with the lesion chosen as the rule at 0.5 chooses it
        masks["default_seed_03"] = output_rule_mask(res.probability, rec.probability, res.brain_mask, 0.5, g.spacing,
                                                    threshold=0.3, lesion_choice="seed")
    if "shipped-0.35" in rules:  # the shipped rule (lesion chosen as at 0.5) at 0.35
        masks["default_seed_035"] = output_rule_mask(res.probability, rec.probability, res.brain_mask, 0.5, g.spacing,
                                                     threshold=0.35, lesion_choice="seed")
    target = case.geometry
    spacing_zyx = tuple(reversed(target.spacing))
    return {c: all_metrics(back_to(m, g, target), case.reference, spacing_zyx) for c, m in masks.items()}


def summarise(rows: list, shifts, resamples: int = 10000) -> dict:
    """Per shift: column means (seeds averaged per case), change from ``none``, the :data:`PAIRS`' paired
    differences (with the per-case values of each), over the columns every row has (a run without
    ``--rules`` has only :data:`BASE_COLUMNS`)."""
    cols = tuple(c for c in COLUMNS if rows and all(c in r for r in rows))
    pairs = tuple((a, b) for a, b in PAIRS if a in cols and b in cols)
    out = {}
    for s in shifts:
        per_case: dict = {}
        for r in rows:
            if r["shift"] == s:
                per_case.setdefault(r["case"], []).append(r)
        if not per_case:
            continue
        mean_case = {c: {col: statistics.mean(x[col]["dice"] for x in rs) for col in cols} for c, rs in per_case.items()}
        means = {col: statistics.mean(v[col] for v in mean_case.values()) for col in cols}
        diffs = {}
        for a, b in pairs:
            d = [v[a] - v[b] for v in mean_case.values()]
            lo, hi = base.bootstrap_ci(d, resamples, 0)
            diffs[f"{a} − {b}"] = {"mean": statistics.mean(d), "ci95": [lo, hi], "min_case": min(d),
                                  "per_case": {c: v[a] - v[b] for c, v in mean_case.items()}}
        lowest = {col: min(mean_case, key=lambda c: mean_case[c][col]) for col in cols}
        out[s] = {"cases": len(mean_case), "means": means, "differences": diffs,
                  "lowest": {col: {"case": c, "dice": mean_case[c][col]} for col, c in lowest.items()}}
    if "none" in out:
        for s, v in out.items():
            v["change"] = {col: v["means"][col] - out["none"]["means"][col] for col in cols}
    return out


def failures(summary: dict) -> list[str]:
    """The declared failure rule: a mean below 0.3, or more than 0.15 below the unchanged case."""
    bad = []
    for s, v in summary.items():
        for col in v["means"]:
            m, ch = v["means"][col], v.get("change", {}).get(col, 0.0)
            if m < FAIL_BELOW or ch < -FAIL_DROP:
                bad.append(f"{s}/{col} ({m:.3f}, {ch:+.3f})")
    return bad


#: Declared limits of the output-rule protocols read here (docs/protocols/README.md): no shift's mean
#: below the first, no (shift, case) pair below the second.
RULE_SHIFT_FLOOR, RULE_CASE_FLOOR = -0.005, -0.05
#: Protocol -> (rival, baseline, (shift, case) pairs and shifts read apart as in-sample or targeted).
RULE_PROTOCOLS = {
    "lesion-choice-v1": ("default_vote", "default_rec", {("clinical", "BraTS2021_00000")}),
    "n4-v1 (`cgcseg gmm`)": ("gmm_default_n4", "gmm_default", {"bias", "clinical"}),
    "n4-v1 (shipped rule)": ("default_n4", "default_rec", {"bias", "clinical"}),
    "n4-v2 (`cgcseg gmm`)": ("gmm_default_n4x", "gmm_default", {"bias", "clinical"}),
    "n4-v2 (shipped rule)": ("default_n4x", "default_rec", {"bias", "clinical"}),
    "hysteresis-v1": ("default_core_03", "default_rec_03", {("bias", "BraTS2021_00000"), ("clinical", "BraTS2021_00000")}),
    # Apart: the (shift, case) pairs where the shipped choice was seen to fail on other fold models before the
    # rule was written (hysteresis-v1's and shift-v24's rows).
    "hysteresis-v2": ("default_seed_03", "default_core_03", {("bias", "BraTS2021_00000"), ("thick5", "BraTS2021_00000"),
                                                             ("gamma", "BraTS2021_00000")}),
}


def rule_reading(summary: dict, name: str) -> str:
    """A declared output-rule protocol's decisions on ``rival − baseline`` (:data:`RULE_PROTOCOLS`): every
    (shift, case) that changed, the mean over all pairs and without those read apart, and the two limits."""
    a, b, apart = RULE_PROTOCOLS[name]
    key = f"{a} − {b}"
    pairs = {(s, c): d for s, v in summary.items() if key in v["differences"]
             for c, d in v["differences"][key]["per_case"].items()}
    if not pairs:
        return ""
    changed = {k: d for k, d in pairs.items() if abs(d) > 1e-9}
    rest = [d for k, d in pairs.items() if k not in apart and k[0] not in apart]
    low_shifts = [s for s, v in summary.items() if key in v["differences"]
                  and v["differences"][key]["mean"] < RULE_SHIFT_FLOOR]
    low_cases = [f"{s}/{c}" for (s, c), d in pairs.items() if d < RULE_CASE_FLOOR]
    listed = ": " + ", ".join(f"{s}/{c} {d:+.3f}" for (s, c), d in sorted(changed.items())) if changed else ""
    aside = ", ".join(sorted("/".join(x) if isinstance(x, tuple) else f"`{x}`" for x in apart))
    verdict = "passes" if not low_shifts and not low_cases else "fails"
    return (f"`{key}` (protocol {name}): {len(changed)} of {len(pairs)} (shift, case) pairs changed{listed}. "
            f"Mean over all pairs {statistics.mean(pairs.values()):+.4f}; without {aside} (read apart) "
            f"{statistics.mean(rest) if rest else float('nan'):+.4f}. Shift means below {RULE_SHIFT_FLOOR}: "
            f"{', '.join(f'`{x}`' for x in low_shifts) or 'nothing'}; pairs below {RULE_CASE_FLOOR}: "
            f"{', '.join(low_cases) or 'nothing'} — {verdict} the declared limits.")


def compare_runs(rows: list, other_rows: list, shifts, resamples: int = 10000) -> dict:
    """Per shift and per column both runs have: ``this − other`` paired per case (each run's seeds averaged per
    case first), over the cases both runs scored under that shift; mean, bootstrap 95 % CI, worst case and the
    per-case values. Two runs of different models on the same cases (e.g. two recipes' fold models, same seeds)."""
    def per_case(rs):
        out: dict = {}
        for r in rs:
            out.setdefault((r["shift"], r["case"]), []).append(r)
        return out
    mine, theirs = per_case(rows), per_case(other_rows)
    cols = [c for c in COLUMNS if rows and other_rows and all(c in r for r in rows + other_rows)]
    out = {}
    for s in shifts:
        cases = sorted(c for (sh, c) in mine if sh == s and (s, c) in theirs)
        if not cases:
            continue
        out[s] = {}
        for col in cols:
            d = {c: statistics.mean(x[col]["dice"] for x in mine[(s, c)])
                 - statistics.mean(x[col]["dice"] for x in theirs[(s, c)]) for c in cases}
            lo, hi = base.bootstrap_ci(list(d.values()), resamples, 0)
            out[s][col] = {"mean": statistics.mean(d.values()), "ci95": [lo, hi], "min_case": min(d.values()),
                           "per_case": d}
    return out


def shifts_below(comparison: dict, column: str, margin: float) -> list[str]:
    """The shifts other than ``none`` whose mean ``this − other`` of ``column`` is below ``-margin``."""
    return [s for s, v in comparison.items() if s != "none" and column in v and v[column]["mean"] < -margin]


def comparison_report(comparison: dict, this: str, other: str) -> str:
    cols = list(next(iter(comparison.values()), {}))
    lines = ["", f"Paired against {other} (same cases and seeds; this run − that one, mean Dice difference, bootstrap "
             "95 % CI over cases, worst case):", "", "| shift | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for s, v in comparison.items():
        lines.append(f"| {s} | " + " | ".join(f"{v[c]['mean']:+.3f} [{v[c]['ci95'][0]:+.3f}, {v[c]['ci95'][1]:+.3f}], "
                                                f"worst {v[c]['min_case']:+.3f}" for c in cols) + " |")
    for col, margin in (("default_rec_03", 0.02), ("default_rec", 0.02)):
        if any(col in v for v in comparison.values()):
            low = shifts_below(comparison, col, margin)
            lines += ["", f"Shifts (other than `none`) where {this}'s `{col}` is more than {margin} below {other}'s: "
                      f"{len(low)}{' (' + ', '.join(f'`{x}`' for x in low) + ')' if low else ''}."]
    return "\n".join(lines)


def report(title: str, summary: dict, n_models: int) -> str:
    first = next(iter(summary.values()), {"means": {}, "differences": {}})
    cols, diffs = list(first["means"]), list(first["differences"])
    head = "| shift | " + " | ".join(cols) + " | " + " | ".join(f"{d} (95 % CI)" for d in diffs) + " |"
    lines = [f"### {title}", "", f"`benchmarks/preprocessing_shift.py` (declared in its docstring before its first run). "
             f"{n_models} fold models, held-out cases only, seeds averaged per case; mean Dice on the original grid "
             "(change from `none` in brackets).", "", head, "|" + "---|" * (len(cols) + len(diffs) + 1)]
    for s, v in summary.items():
        cells = [f"{v['means'][c]:.3f} ({v.get('change', {}).get(c, 0.0):+.3f})" for c in cols]
        for d in v["differences"].values():
            cells.append(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], worst {d['min_case']:+.3f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Lowest case per column (Dice, seeds averaged):", "", "| shift | " + " | ".join(cols) + " |",
              "|" + "---|" * (len(cols) + 1)]
    for s, v in summary.items():
        lines.append(f"| {s} | " + " | ".join(f"{v['lowest'][c]['dice']:.3f} ({v['lowest'][c]['case']})" for c in cols) + " |")
    lines += [x for name in RULE_PROTOCOLS for x in ("", rule_reading(summary, name)) if rule_reading(summary, name)]
    bad = failures(summary)
    lines += ["", "Failures by the declared rule (mean < 0.3 or > 0.15 below `none`): " + (", ".join(bad) or "none") + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", required=True, type=Path)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--modalities", nargs="+", default=None, help="one model set of the stage (default: every one)")
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="only the stage's models of these seeds (default: every one; e.g. the seeds rebuilt after runs/ was lost)")
    ap.add_argument("--rules", nargs="+", default=[], choices=list(RULE_COLUMNS), metavar="PROTOCOL",
                    help="also score these decided output-rule protocols' columns (" + ", ".join(RULE_COLUMNS)
                    + "; default: none, as they cost extra GMM and N4 passes)")
    ap.add_argument("--against", type=Path, default=None, metavar="RESULTS_JSON",
                    help="another run's results file (same cases and seeds, e.g. another recipe's fold models): "
                         "adds the paired per-shift differences this run − that one to the report")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--tag", default="", help="suffix of the results file and section name, so a later run (e.g. of "
                                              "another protocol on rebuilt models) does not overwrite an earlier record")
    args = ap.parse_args(argv)
    columns, _ = columns_for(args.rules)
    proto = base.load_protocol(args.protocol)
    work = ROOT / "runs" / f"protocol-{proto['name']}" / args.stage
    results_dir = ROOT / "docs" / "protocols" / "results"
    models = [m for m in base.plan(proto, args.stage, Path(args.data), work, results_dir, [])
              if m.variant == args.variant and (args.modalities is None or list(m.modalities) == args.modalities)
              and (args.seeds is None or m.seed in args.seeds)]
    missing = [m.key for m in models if base._finished(m) is None]
    if not models or missing:
        raise SystemExit(f"no finished models to score ({', '.join(missing) or 'none match'}); train the stage first")
    cases = {d.name: base.CaseData(d) for d in base._case_dirs(Path(args.data) / proto["labelled"])}
    rows = []
    for s in args.shifts:
        for name in sorted({t.name for m in models for t in m.test}):
            case = cases[name]
            for mods in sorted({m.modalities for m in models}):
                shifted = None
                for m in [m for m in models if m.modalities == mods and name in {t.name for t in m.test}]:
                    keep = m.run / "shift-scores.json"
                    kept = json.loads(keep.read_text()) if keep.exists() else {}
                    key = f"{s}/{name}"
                    if key not in kept or any(c not in kept[key] for c in columns):
                        shifted = shifted or ShiftedCase(case, mods, s)
                        sigma = json.loads(base.sigma_path(work, mods, base.model_sigma_tag(m)).read_text())["sigma"]
                        kept[key] = {**kept.get(key, {}), **score(m, case, shifted, sigma, args.device, args.rules)}
                        keep.write_text(json.dumps(kept))
                    rows.append({"shift": s, "case": name, "model": m.key, "modalities": list(mods),
                                 **{c: kept[key][c] for c in columns}})
                    print(f"  {s} {m.key} {name}: " + " ".join(f"{c} {kept[key][c]['dice']:.3f}" for c in columns),
                          file=sys.stderr)
            case._images.clear()  # one case's images at a time
    tag = "-".join(args.modalities or ["all"])
    summary = summarise(rows, args.shifts)
    name = f"shift-{proto['name']}-{args.stage}-{tag}" + (f"-{args.tag}" if args.tag else "")
    text = report(f"Preprocessing shifts: {proto['name']} `{args.stage}`, `{args.variant}`, {tag}", summary, len(models))
    comparison = None
    if args.against is not None:
        comparison = compare_runs(rows, json.loads(args.against.read_text())["rows"], args.shifts)
        if not comparison:
            raise SystemExit(f"{args.against} shares no (shift, case) with this run: nothing to compare")
        text += "\n" + comparison_report(comparison, f"`{args.variant}`", f"`{args.against.name}`")
    print(text)
    if not args.no_write:
        from _report import write_section
        results_dir.mkdir(parents=True, exist_ok=True)
        record = {"summary": summary, "rows": rows}
        if comparison is not None:
            record["against"] = {"file": args.against.name, "differences": comparison}
        (results_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
        write_section(name, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
