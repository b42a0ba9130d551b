"""Multi-lesion probe (issue 9, protocol ``multi-lesion-v1``): does the self-training round teach the network one
lesion per case?

The shipped recipe's second round learns the shipped default output, which keeps the largest lesion only
(``--pseudo-rule default-output``, protocol cgc-v24). Every case scored so far holds one glioma, so a network that
learned to mark one lesion per case scores as well as one that marks every lesion. Other cohorts hold several
(metastases, multifocal gliomas). This probe adds a second, smaller lesion to each held-out case and asks whether
the network alone (the paper's output, ``--postprocess none``) still marks it, after round 1 and after round 2.

Declared 2026-12-05 03:20 (docs/protocols/README.md ``multi-lesion-v1``), committed with this file before its first
run; no number of it existed. Nothing ships from it.

- **Models**: cgc-v36's `ablation` fold models, FLAIR set, seeds 3600/3601 (the only fold models of the shipped
  recipe whose run folders exist): ``robust-2mm`` (round 1) and ``robust-2mm-std`` (round 2, the shipped recipe);
  each held-out case is scored by its fold's two seeds.
- **Second lesion** (:func:`paste_second_lesion`; label-derived, deterministic, no free parameter tuned on any
  number): the case's own whole lesion (seg > 0) with a 3-voxel margin, every channel and the label shrunk by 0.5
  per axis (1/8 of the volume, like a satellite or a metastasis), pasted with its centre at the mirror image of the
  lesion's centroid across the box's x (left-right) midline, else at the first of that centre moved by 0, ±10, ±20
  voxels in y and z (nearest first) where the pasted label lies ≥ 99 % inside the brain (FLAIR ≠ 0) and ≥ 5 voxels
  from the lesion (city-block distance: 5 dilations with the 6-neighbour cross). Blended with α = the shrunk label smoothed with σ = 1 voxel; only brain voxels change. A case
  with no such place is skipped and reported. Reference: the lesion ∪ the pasted label inside the brain.
- **Columns** (each map on the pasted image): ``network`` (≥ 0.5), ``p`` (the model's P ≥ 0.5), ``p_smooth`` (P
  smoothed with the fold's sigma, ≥ 0.5), ``default`` (the shipped FLAIR output rule: ``single-lesion-recommended``
  at 0.3, seed lesion choice, 0.5·network + 0.5·P_rec). Metrics: sensitivity on the pasted lesion (``sens_second``),
  on the original lesion (``sens_first``), Dice against the two-lesion reference.
- **Reading, declared**: per variant, the mean ``sens_second`` of ``network`` over cases (seeds averaged per case),
  and round 2 − round 1 paired per case with a bootstrap 95 % CI (10 000 resamples, seed 0).
  * round 2 − round 1 < −0.10: the self-training round teaches the network one lesion per case; the README says so
    as a limit of the network's output, and a recipe protocol for round-2 targets that keep every lesion is
    declared next.
  * otherwise: the README says that in this probe the round-2 network marks a second lesion as round 1 does.
  * reported beside: ``sens_first``, the baselines' ``sens_second`` and the default output's (which keeps one lesion
    by design).

    python benchmarks/multi_lesion_probe.py --protocol docs/protocols/cgc-v36.toml --stage ablation \\
        --variants robust-2mm robust-2mm-std --modalities flair

Writes ``docs/protocols/results/multi-lesion-v1.json`` and the docs/BENCHMARKS.md section ``multi-lesion-v1``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

import protocol as base  # noqa: E402

COLUMNS = ("network", "p", "p_smooth", "default")
METRICS = ("sens_second", "sens_first", "dice")
SHRINK = 0.5
MARGIN = 3
MOVES = (0, 10, -10, 20, -20)
MIN_GAP = 5
INSIDE = 0.99


def _shrink(a: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage
    return ndimage.zoom(np.asarray(a, np.float32), SHRINK, order=order)


def paste_second_lesion(channels: list[np.ndarray], lesion: np.ndarray):
    """``(channels, second)`` with a shrunk copy of ``lesion`` pasted as described in the module docstring, or
    None when no place fits. ``channels``: ``(Z, Y, X)`` arrays (the first is FLAIR, whose non-zero voxels are the
    brain); ``lesion``: bool ``(Z, Y, X)``; ``second``: bool, the pasted lesion inside the brain."""
    from scipy import ndimage
    lesion = np.asarray(lesion, bool)
    brain = np.asarray(channels[0]) != 0
    shape = np.array(lesion.shape)
    idx = np.argwhere(lesion)
    lo = np.maximum(idx.min(0) - MARGIN, 0)
    hi = np.minimum(idx.max(0) + MARGIN + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    small_label = _shrink(lesion[box], 1) >= 0.5
    small = [_shrink(np.asarray(c)[box], 1) for c in channels]
    alpha = np.clip(ndimage.gaussian_filter(small_label.astype(np.float32), 1.0), 0.0, 1.0)
    size = np.array(small_label.shape)
    centroid = idx.mean(0)
    mirrored = np.array([centroid[0], centroid[1], shape[2] - 1 - centroid[2]])
    near = ndimage.binary_dilation(lesion, iterations=MIN_GAP)
    moves = sorted(((dz, dy) for dz in MOVES for dy in MOVES), key=lambda m: (abs(m[0]) + abs(m[1]), MOVES.index(m[0]),
                                                                             MOVES.index(m[1])))
    for dz, dy in moves:
        centre = mirrored + np.array([dz, dy, 0])
        start = np.round(centre - (size - 1) / 2).astype(int)
        if (start < 0).any() or (start + size > shape).any():
            continue
        where = tuple(slice(a, a + n) for a, n in zip(start, size))
        second = np.zeros(lesion.shape, bool)
        second[where] = small_label
        if not second.any() or (second & near).any() or (second & brain).sum() < INSIDE * second.sum():
            continue
        out = []
        for c, s in zip(channels, small):
            c = np.array(c, np.float32, copy=True)
            region = c[where]
            a = alpha * brain[where]
            c[where] = (1.0 - a) * region + a * s
            out.append(c)
        return out, second & brain
    return None


def score_case(model: "base.Model", case: "base.CaseData", pasted, sigma: float, device: str) -> dict:
    """:data:`METRICS` of :data:`COLUMNS` for one model on one pasted case."""
    from CGCLesionSegLib.config import config_from_dict
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.gmm import GMMConfig, compute_probability_map
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    from CGCLesionSegLib.postprocess import smooth_probability
    from rules import output_rule_mask
    channels, second, geometry, mods, cache = pasted
    net, info = load_checkpoint(model.run / "last.pt")
    gmm_cfg = config_from_dict(GMMConfig, info.preprocessing["gmm"])
    key = json.dumps(info.preprocessing["gmm"], sort_keys=True)
    if key not in cache:
        cache[key] = compute_probability_map(channels, None, gmm_cfg, names=mods, spacing_xyz=geometry.spacing)
    if "rec" not in cache:
        rec_cfg, _, _ = base._gmm_default_settings(mods)
        cache["rec"] = compute_probability_map(channels, None, rec_cfg, names=mods, spacing_xyz=geometry.spacing)
    p, rec = cache[key].probability, cache["rec"].probability
    res = segment_case(channels, geometry, mods, model.run / "last.pt",
                       config=InferenceConfig(device=device, gmm_weight=0.0), model=net, info=info,
                       gmm_probability_zyx=p)
    masks = {"network": res.probability >= 0.5, "p": p >= 0.5,
             "p_smooth": smooth_probability(p, sigma, geometry.spacing) >= 0.5,
             "default": output_rule_mask(res.probability, rec, res.brain_mask, 0.5, geometry.spacing, threshold=0.3,
                                         lesion_choice="seed")}
    first = case.reference
    both = first | second
    out = {}
    for c, m in masks.items():
        m = np.asarray(m, bool)
        out[c] = {"sens_second": float((m & second).sum() / second.sum()),
                  "sens_first": float((m & first).sum() / first.sum()),
                  "dice": float(2 * (m & both).sum() / max(m.sum() + both.sum(), 1))}
    return out


def summarise(rows: list[dict], variants: list[str], resamples: int = 10000) -> dict:
    """Per variant: each column's metric means over cases (seeds averaged per case); and the paired
    last − first variant difference of the network's ``sens_second`` with its bootstrap CI."""
    per: dict = {}
    for r in rows:
        per.setdefault(r["variant"], {}).setdefault(r["case"], []).append(r)
    out = {"variants": {}, "cases": sorted({r["case"] for r in rows})}
    case_means: dict = {}
    for v in variants:
        cm = {case: {c: {m: statistics.fmean(x[c][m] for x in rs) for m in METRICS} for c in COLUMNS}
              for case, rs in per.get(v, {}).items()}
        case_means[v] = cm
        out["variants"][v] = {c: {m: statistics.fmean(cm[k][c][m] for k in cm) for m in METRICS} for c in COLUMNS}
        out["variants"][v]["per_case_network_sens_second"] = {k: cm[k]["network"]["sens_second"] for k in sorted(cm)}
    if len(variants) >= 2:
        a, b = case_means[variants[0]], case_means[variants[-1]]
        diffs = [b[k]["network"]["sens_second"] - a[k]["network"]["sens_second"] for k in sorted(set(a) & set(b))]
        lo, hi = base.bootstrap_ci(diffs, resamples, 0)
        out["difference"] = {"of": f"{variants[-1]} - {variants[0]}", "mean": statistics.fmean(diffs),
                             "ci95": [lo, hi], "per_case": diffs, "worst": min(diffs)}
    return out


def report(summary: dict, skipped: list[str], n_models: int, name: str = "multi-lesion-v1",
           models: str = "cgc-v36 flair fold models") -> str:
    lines = [f"### Multi-lesion probe `{name}` ({models})", "",
             f"{len(summary['cases'])} held-out cases with a pasted second lesion ({', '.join(summary['cases'])}); "
             f"skipped (no place): {', '.join(skipped) or 'none'}; {n_models} models, seeds averaged per case. "
             "Declared in benchmarks/multi_lesion_probe.py.", "",
             "| variant | column | sensitivity, second lesion | sensitivity, first lesion | Dice (both) |",
             "|---|---|---|---|---|"]
    for v, cols in summary["variants"].items():
        for c in COLUMNS:
            m = cols[c]
            lines.append(f"| `{v}` | {c} | {m['sens_second']:.3f} | {m['sens_first']:.3f} | {m['dice']:.3f} |")
    if "difference" in summary:
        d = summary["difference"]
        lines += ["", f"Network's second-lesion sensitivity, {d['of']}: **{d['mean']:+.3f}** "
                      f"(95 % CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], worst case {d['worst']:+.3f}); per case "
                      + ", ".join(f"{x:+.3f}" for x in d["per_case"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", required=True, type=Path)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--variants", nargs="+", required=True, help="first = the reference (round 1), last = the rival")
    ap.add_argument("--modalities", nargs="+", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--name", default="multi-lesion-v1", help="results file and section name (a later protocol's "
                                                               "reading, e.g. multi-lesion-cgc-v38)")
    args = ap.parse_args(argv)
    proto = base.load_protocol(args.protocol)
    work = ROOT / "runs" / f"protocol-{proto['name']}" / args.stage
    results_dir = ROOT / "docs" / "protocols" / "results"
    models = [m for m in base.plan(proto, args.stage, Path(args.data), work, results_dir, [])
              if m.variant in args.variants and list(m.modalities) == args.modalities]
    missing = [m.key for m in models if base._finished(m) is None]
    if not models or missing:
        raise SystemExit(f"no finished models to score ({', '.join(missing) or 'none match'}); train the stage first")
    cases = {d.name: base.CaseData(d) for d in base._case_dirs(Path(args.data) / proto["labelled"])}
    rows, skipped = [], []
    for name in sorted({t.name for m in models for t in m.test}):
        case = cases[name]
        imgs = case.images(list(args.modalities))
        made = paste_second_lesion([i.array_zyx for i in imgs], case.reference)
        if made is None:
            skipped.append(name)
            continue
        pasted = (made[0], made[1], imgs[0].geometry, list(args.modalities), {})
        for m in [m for m in models if name in {t.name for t in m.test}]:
            sigma = json.loads(base.sigma_path(work, m.modalities, base.model_sigma_tag(m)).read_text())["sigma"]
            s = score_case(m, case, pasted, sigma, args.device)
            rows.append({"case": name, "variant": m.variant, "model": m.key, **s})
            print(f"  {m.key} {name}: " + " ".join(f"{c} {s[c]['sens_second']:.2f}/{s[c]['sens_first']:.2f}"
                                                    for c in COLUMNS), file=sys.stderr)
        case._images.clear()
    summary = summarise(rows, args.variants)
    text = report(summary, skipped, len(models), args.name, f"{proto['name']} {args.modalities[0] if len(args.modalities) == 1 else 'four-channel'} fold models")
    print(text)
    if not args.no_write:
        from _report import write_section
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / f"{args.name}.json").write_text(json.dumps({"summary": summary, "skipped": skipped,
                                                                       "rows": rows}, indent=1))
        write_section(args.name, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
