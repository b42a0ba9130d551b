"""GMM accuracy on the real BraTS cases: Dice of the binary output (whole lesion = seg > 0).

Protocol: the grids below are fixed in this file before they are run against the labels (see git
history: round 1 was committed and run first; round 2 was declared after round 1 missed the
target, so its design was informed by round 1's outcome, and round 3 likewise after round 2 —
reported openly). Every configuration is
scored on every case. A configuration is *selected* by leave-one-case-out (LOCO): for each held-out
case, the configuration with the best mean Dice on the other cases is picked (ties: first in grid
order) and scored on the held-out case; the mean of those held-out scores is the honest estimate of
"select on labelled cases, apply to a new case". The configuration the same rule picks on all cases
(union of both rounds) is the shipped default. Label-free references are reported next to it: the
paper's configuration (FLAIR, K = 4, brightest component, no post-processing) and K chosen by BIC.

Run from the repository root:  python benchmarks/gmm_accuracy.py  [--cases ../shared/data/brats]
It writes the "gmm-accuracy" section of docs/BENCHMARKS.md and a JSON with every score.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from CGCLesionSegLib.gmm import (RECOMMENDED_POSTPROCESS, GMMConfig, ProbabilityMapSession,  # noqa: E402
                                 compute_probability_map, recommended_config)
from CGCLesionSegLib.image_io import read_image  # noqa: E402
from CGCLesionSegLib.metrics import dice  # noqa: E402
from CGCLesionSegLib.postprocess import binarize  # noqa: E402


class Cfg(NamedTuple):
    channels: str      # key of CHANNEL_SETS
    n4: bool
    k: object          # int, or "bic"
    fg: str            # "top1", "top2" (brightest n) or "z1.5" (outlier rule, outlier_z = 1.5)
    post: str          # key of POSTPROCESS

    def __str__(self) -> str:
        return f"{self.channels}{' +N4' if self.n4 else ''} K={self.k} fg={self.fg} post={self.post}"


# ---- declared up front -----------------------------------------------------------------------------
CHANNEL_SETS = {"flair": ("flair",), "flair+t2": ("flair", "t2"), "all4": ("flair", "t1", "t1ce", "t2")}
POSTPROCESS = {                       # binarize() options applied to P >= THRESHOLD
    "none": {},
    "clean": {"fill_holes": "2d", "min_component_voxels": 1000},
    "largest": {"fill_holes": "2d", "keep_largest": 1},
    "open2-largest": {"fill_holes": "2d", "keep_largest": 1, "opening_radius": 2},   # round 4
    "open3-largest": {"fill_holes": "2d", "keep_largest": 1, "opening_radius": 3},   # round 4
}
BIC_CANDIDATES = (3, 4, 5, 6)         # K = "bic": lowest BIC on the fit subsample (label-free)
THRESHOLD = 0.5
BASE = GMMConfig(covariance_type="full", seed=0, subsample=100_000, channels=None)  # every listed channel

POST_R123 = ("none", "clean", "largest")   # the post-processing of rounds 1-3

# Round 1 (run first): channel sets × K × brightest-n × post-processing.
ROUND1 = [Cfg(ch, False, k, f"top{n}", pp)
          for ch, k, n, pp in itertools.product(CHANNEL_SETS, (3, 4, 5, 6, "bic"), (1, 2), POST_R123)
          if k == "bic" or n < k]
# Round 2 (declared after round 1 stayed below 0.76): FLAIR only (round 1: extra channels hurt the
# brightest-mean rule), N4 off/on, more K, and the "outlier" rule (components >= z SD above the brain
# average) that adapts the number of lesion components per case.
ROUND2 = [Cfg("flair", n4, k, fg, pp)
          for n4, k, fg, pp in itertools.product((False, True), (4, 5, 6, 8),
                                                  ("top1", "top2", "z1.0", "z1.5", "z2.0"), POST_R123)]
# Round 3 (declared after round 2: its best in-sample configuration reached 0.773 but LOCO fell to
# 0.590 because the picks flip between neighbouring K / z whose partitions are unstable across
# seeds): ensembles that average P over several K (same rule) to reduce that variance.
# K = "e4-8": mean of P for K = 4, 5, 6, 7, 8; "e3-6": K = 3..6.
ENSEMBLES = {"e4-8": (4, 5, 6, 7, 8), "e3-6": (3, 4, 5, 6)}
ROUND3 = [Cfg("flair", n4, k, fg, pp)
          for n4, k, fg, pp in itertools.product((False, True), tuple(ENSEMBLES),
                                                  ("top1", "top2", "z0.5", "z1.0", "z1.5"), POST_R123)]
# Round 4 (declared after round 3: LOCO 0.70): a deliberately small grid. Hypothesis: where "largest
# component" fails, the lesion is joined to cortex / other bright tissue by thin bridges; an opening
# before picking the largest component (then grown back) cuts them. P sources:
# the paper's rule and the two best-behaved families of rounds 2-3.
ROUND4 = [Cfg("flair", n4, k, fg, pp)
          for n4, (k, fg), pp in itertools.product((False, True), ((4, "top1"), (6, "z1.0"), ("e4-8", "z1.0")),
                                                   ("largest", "open2-largest", "open3-largest"))]
PAPER = Cfg("flair", False, 4, "top1", "none")
# What the library ships as recommended_config() + RECOMMENDED_POSTPROCESS (checked below).
SHIPPED = Cfg("flair", False, "e4-8", "z1.0", "open3-largest")
# ----------------------------------------------------------------------------------------------------


def gmm_config(cfg: Cfg, k: int) -> GMMConfig:
    if cfg.fg.startswith("top"):
        return replace(BASE, n_clusters=k, foreground_rule="brightest", n_foreground=min(int(cfg.fg[3:]), k - 1))
    return replace(BASE, n_clusters=k, foreground_rule="outlier", outlier_z=float(cfg.fg[1:]))


def score_case(case_dir: Path, configs: list[Cfg]) -> tuple[dict, dict]:
    """Dice of every configuration on one case, and the BIC choice of K per (channels, N4)."""
    case = case_dir.name
    vols = {m: read_image(case_dir / f"{case}_{m}.nii.gz").array_zyx
            for m in {m for c in configs for m in CHANNEL_SETS[c.channels]}}
    ref = read_image(case_dir / f"{case}_seg.nii.gz", dtype=None).array_zyx > 0
    scores: dict = {}
    bic_choice: dict = {}
    for (ch, n4), group in itertools.groupby(sorted(configs, key=lambda c: (c.channels, c.n4)),
                                             key=lambda c: (c.channels, c.n4)):
        group = list(group)
        session = ProbabilityMapSession([vols[m] for m in CHANNEL_SETS[ch]], None, names=list(CHANNEL_SETS[ch]))
        needed: dict = {}  # K -> set of fg rules
        for c in group:
            ks = BIC_CANDIDATES if c.k == "bic" else ENSEMBLES.get(c.k, (c.k,))
            for k in ks:
                needed.setdefault(k, set()).add(c.fg)
        probs: dict = {}
        bics: dict = {}
        for k in sorted(needed):
            for fg in sorted(needed[k]):
                res = session.run(replace(gmm_config(Cfg(ch, n4, k, fg, "none"), k), n4=n4))
                bics[k] = res.model.fit_bic()
                probs[(k, fg)] = res.probability
        for ename, eks in ENSEMBLES.items():
            for fg in {c.fg for c in group if c.k == ename}:
                probs[(ename, fg)] = np.mean([probs[(k, fg)] for k in eks], axis=0)
        kb = min((k for k in bics if k in BIC_CANDIDATES), key=bics.get, default=None)
        bic_choice[f"{ch}{'+N4' if n4 else ''}"] = kb
        for c in group:
            k = kb if c.k == "bic" else c.k
            scores[c] = dice(binarize(probs[(k, c.fg)], THRESHOLD, **POSTPROCESS[c.post]), ref)
    return scores, bic_choice


def loco(table: np.ndarray) -> tuple[list[int], list[float]]:
    picks, held = [], []
    for j in range(table.shape[1]):
        i = int(np.argmax(np.delete(table, j, axis=1).mean(axis=1)))
        picks.append(i)
        held.append(float(table[i, j]))
    return picks, held


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=str(ROOT.parent / "shared" / "data" / "brats"))
    ap.add_argument("--json", default="/tmp/gmm_accuracy.json")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--reuse", metavar="JSON", help="take the scores of configurations already in this JSON "
                    "(written by an earlier run of this script on the same cases) instead of recomputing them")
    args = ap.parse_args()
    cases = sorted(d for d in Path(args.cases).iterdir() if d.is_dir()) if Path(args.cases).is_dir() else []
    if not cases:
        print(f"no cases in {args.cases}", file=sys.stderr)
        return 2
    configs = list(dict.fromkeys(ROUND1 + ROUND2 + ROUND3 + ROUND4))  # union, earlier rounds first
    table = np.zeros((len(configs), len(cases)))
    bic_choices = {}
    old = {}
    if args.reuse:
        prev = json.loads(Path(args.reuse).read_text())
        if prev["cases"] != [c.name for c in cases]:
            raise SystemExit(f"{args.reuse} was made on other cases")
        old = {name: np.asarray(row) for name, row in zip(prev["configs"], prev["dice"])}
        bic_choices = prev.get("bic", {})
    todo = [c for c in configs if str(c) not in old]
    t0 = time.perf_counter()
    for j, case_dir in enumerate(cases):
        scores, bic = score_case(case_dir, todo) if todo else ({}, {})
        bic_choices.setdefault(case_dir.name, {}).update(bic)
        table[:, j] = [scores[c] if c in scores else old[str(c)][j] for c in configs]
        print(f"{case_dir.name}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    index = {c: i for i, c in enumerate(configs)}
    rounds = {"round 1": [index[c] for c in ROUND1], "round 2": [index[c] for c in ROUND2],
              "round 3": [index[c] for c in ROUND3], "round 4": [index[c] for c in ROUND4],
              "union": list(range(len(configs)))}
    loco_lines = []
    loco_mean = {}
    for rname, rows_idx in rounds.items():
        sub = table[rows_idx]
        picks, held = loco(sub)
        loco_mean[rname] = float(np.mean(held))
        pick_names = sorted({str(configs[rows_idx[p]]) for p in picks})
        loco_lines.append(f"| {rname} ({len(rows_idx)} configurations) | **{np.mean(held):.4f}** | "
                          f"{', '.join(f'{h:.3f}' for h in held)} | {'; '.join(pick_names)} |")
    i_default = int(np.argmax(table.mean(axis=1)))
    default = configs[i_default]
    # The shipped default must be the selected configuration, computed through the public API.
    shipped = []
    for case_dir in cases:
        flair = read_image(case_dir / f"{case_dir.name}_flair.nii.gz").array_zyx
        ref = read_image(case_dir / f"{case_dir.name}_seg.nii.gz", dtype=None).array_zyx > 0
        p = compute_probability_map([flair], None, recommended_config()).probability
        shipped.append(dice(binarize(p, **RECOMMENDED_POSTPROCESS), ref))
    shipped = np.asarray(shipped)
    same = default == SHIPPED and np.allclose(shipped, table[index[SHIPPED]], atol=1e-9)
    print(f"shipped recommended_config() {'matches' if same else 'DOES NOT match'} the selected configuration "
          f"{default}", file=sys.stderr)
    shown = [("default (selected on all cases, union grid)", default), ("paper configuration", PAPER)]
    for alt in [Cfg(default.channels, default.n4, default.k, default.fg, "none"),
                Cfg(default.channels, not default.n4, default.k, default.fg, default.post),
                Cfg("flair", False, "bic", "top1", "none"), Cfg("flair", False, "bic", "top1", "largest"),
                Cfg("flair", False, 4, "top1", "largest"), Cfg("flair+t2", False, 4, "top1", "none"),
                Cfg("all4", False, 4, "top1", "none")]:
        if alt in index and alt not in [s for _, s in shown]:
            shown.append(("alternative", alt))
    short = [c.name.replace("BraTS2021_", "21_").replace("BraTS20_Training_", "20_") for c in cases]
    lines = ["## GMM accuracy (`benchmarks/gmm_accuracy.py`)", "",
             f"Dice of the binary output (P ≥ {THRESHOLD}, then the post-processing named) against the whole "
             f"lesion (seg > 0) on the {len(cases)} real BraTS cases; full covariance, seed 0, EM on a 100k-voxel "
             "subsample, P on every brain voxel. Post-processing: none; clean = 2-D hole filling + drop "
             "components < 1000 voxels; largest = 2-D hole filling + keep the largest component; openR-largest = the same, "
             "but the largest component is chosen after an opening of radius R voxels and grown back. "
             "fg: topN = the N brightest FLAIR components (paper's rule); zT = every component whose mean "
             "is ≥ T SD above the brain's FLAIR average. K=e4-8 / e3-6: P averaged over K = 4..8 / 3..6. "
             "Grids are declared in the script; rounds 2-4 were each declared after the previous round "
             "missed the target, so their design saw earlier results (the LOCO numbers cannot account for that).", "",
             f"**Summary.** Shipped default (`recommended_config()` + `RECOMMENDED_POSTPROCESS`, = {default}): "
             f"mean Dice {table[i_default].mean():.4f} on these cases (in-sample: it was selected on them); "
             f"leave-one-case-out estimate of the selection procedure over the union grid: "
             f"**{loco_mean['union']:.4f}** (target ≥ 0.76). The paper's configuration (K = 4, brightest "
             f"component, plain threshold): {table[index[PAPER]].mean():.4f}. Nearly all of the gain comes from "
             "the binary post-processing (largest lesion after an opening); P itself changes little "
             "(compare the rows with post=none).", "",
             "Leave-one-case-out estimate of \"select the best configuration of the grid on the other cases\":", "",
             "| grid | LOCO mean Dice | held-out Dice per case | configurations picked |", "|---|---|---|---|",
             *loco_lines, "",
             "| configuration | " + " | ".join(short) + " | mean | sd |",
             "|---|" + "---|" * (len(cases) + 2)]
    for label, c in shown:
        vals = table[index[c]]
        lines.append(f"| {label}: {c} | " + " | ".join(f"{v:.3f}" for v in vals)
                     + f" | **{vals.mean():.4f}** | {vals.std():.3f} |")
    lines.append("| shipped default through the public API: `compute_probability_map(..., recommended_config())` + "
                 "`binarize(**RECOMMENDED_POSTPROCESS)` | " + " | ".join(f"{v:.3f}" for v in shipped)
                 + f" | **{shipped.mean():.4f}** | {shipped.std():.3f} |")
    lines += ["", "K chosen by BIC: " + "; ".join(f"{c}: " + ", ".join(f"{k} {v}" for k, v in b.items())
                                                 for c, b in bic_choices.items()), "",
              "Top 10 of the union grid by mean Dice (in-sample, optimistic; for orientation only):", "",
              "| configuration | mean Dice |", "|---|---|"]
    for i in np.argsort(-table.mean(axis=1), kind="stable")[:10]:
        lines.append(f"| {configs[i]} | {table[i].mean():.4f} |")
    md = "\n".join(lines)
    print(md)
    Path(args.json).write_text(json.dumps({"cases": [c.name for c in cases], "configs": [str(c) for c in configs],
                                           "dice": table.tolist(), "bic": bic_choices}, indent=1))
    if not args.no_write:
        from _report import write_section
        write_section("gmm-accuracy", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
