"""An inference-rule protocol (e.g. docs/protocols/cgc-v3.toml): scores another protocol's trained models
with extra output rules; trains nothing.

Run through ``python benchmarks/evaluate_cgc.py --protocol docs/protocols/cgc-v3.toml --stage screen``
(``benchmarks/evaluate_cgc.py`` sends a protocol file with a ``source`` key here). The models, folds,
seeds and the fold's smoothing sigma all come from the source protocol's stage, so no new choice reads a
label: ``network_smooth`` smooths the network's map with the very Gaussian the ``p_smooth`` baseline uses
("the same rule on P").
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import protocol as base

#: rule name -> heading; ``p`` and ``p_smooth`` are the baselines, always scored.
COLUMNS = (("p", "P ≥ 0.5"), ("p_smooth", "smoothed P"), ("network", "network ≥ 0.5"),
           ("network_smooth", "**smoothed network**"))
DIFFERENCES = (("network_smooth", "p_smooth", "≥ +0.03, CI > 0"), ("network_smooth", "p", "≥ +0.05, CI > 0"),
               ("network_smooth", "network", "—"), ("network", "p_smooth", "—"))


def rule_masks(p, network_probability, sigma: float, spacing_xyz) -> dict:
    """The four binary masks of one case. ``p`` and ``network_probability``: (Z, Y, X) in [0, 1] on the
    input grid; ``sigma`` in mm; returns {column: (Z, Y, X) bool}."""
    from CGCLesionSegLib.postprocess import smooth_probability
    return {"p": p >= 0.5, "p_smooth": smooth_probability(p, sigma, spacing_xyz) >= 0.5,
            "network": network_probability >= 0.5,
            "network_smooth": smooth_probability(network_probability, sigma, spacing_xyz) >= 0.5}


def score_model(model: base.Model, cases: dict, sigma: float, device: str = "cpu") -> list[dict]:
    rows = []
    for case, p, res, info, _ in base.segment_held_out(model, cases, device):
        # No fusion in this config, so the thresholded map is the network's own (network_probability is None).
        net_map = res.network_probability if res.network_probability is not None else res.probability
        masks = rule_masks(p, net_map, sigma, case.geometry.spacing)
        rows.append(base.score_row(model, case, info, masks, sigma))
    return rows


def pick_winner(summary: dict, control: str, rules: list) -> str:
    """Highest mean Dice over the groups; a rule must beat ``control`` by more than 0.01 to replace it."""
    return base.winner_by_margin({r: statistics.mean(g["means"][r]["dice"] for g in summary.values()) for r in rules},
                                 control)


def report(proto: dict, src: dict, stage_name: str, summary: dict, sigmas: dict, winner) -> str:
    stage = proto["stages"][stage_name]
    lines = [f"### Protocol {proto['name']}, stage `{stage_name}` (inference rules)", "",
             f"Protocol file `docs/protocols/{proto['name']}.toml` (committed before its first run). Nothing trained: "
             f"the `{stage['variant']}` models of `{src['name']}`'s stage `{stage['source_stage']}` segment their held-out "
             "cases again; `smoothed network` = the network's map smoothed with the fold's smoothed-P sigma (chosen in "
             f"{src['name']} on the fold's labelled training cases), ≥ 0.5. Sigmas: "
             + "; ".join(f"{k}: {v['sigma']:g} mm" for k, v in sorted(sigmas.items())) + ".", ""]
    if stage_name == "confirm":
        lines += [f"Caveat: {src['name']}'s four-channel confirmation models had been scored with the `network` rule "
                  "before this protocol was written (not with the smoothed network); its FLAIR models had not.", ""]
    for g in summary.values():
        lines += [f"#### {g['modalities']} — `{g['variant']}`", ""] + base.group_table(g, COLUMNS, DIFFERENCES) + [""]
    if winner:
        lines += [f"Winner by the declared rule ({stage.get('winner_rule', '')}): **`{winner}`**.", ""]
    return "\n".join(lines)


def run(args, proto: dict, proto_path: Path) -> int:
    if args.stage not in proto["stages"]:
        raise SystemExit(f"stage {args.stage!r} is not in {proto_path}; it has {', '.join(proto['stages'])}")
    stage = proto["stages"][args.stage]
    src_path = proto_path.parent / proto["source"]
    src = base.load_protocol(src_path)
    results_dir = base.ROOT / "docs" / "protocols" / "results"
    work = Path(args.work_dir or base.ROOT / "runs" / f"protocol-{src['name']}") / stage["source_stage"]
    data = Path(args.data)
    models = [m for m in base.plan(src, stage["source_stage"], data, work, results_dir, [])
              if m.variant == stage["variant"]]
    missing = [m.key for m in models if base._finished(m) is None]
    if missing and not args.score_available:
        raise SystemExit(f"{src['name']} has not finished these models yet: {', '.join(missing)}; run its stage "
                         f"{stage['source_stage']} first (or give --score-available for a partial look)")
    models = [m for m in models if base._finished(m) is not None]
    cases = {d.name: base.CaseData(d) for d in base._case_dirs(data / src["labelled"])}
    rows, sigmas = [], {}
    for m in models:
        skey = f"{'-'.join(m.modalities)} fold {m.fold}"
        # The source protocol's own choice, made on the fold's labelled training cases.
        sfile = base.sigma_path(work, m.modalities, f"fold{m.fold}")
        if not sfile.exists() and args.score_available:  # a partial look skips what cannot be scored yet
            missing.append(f"{m.key} (no {sfile.name} yet)")
            continue
        if not sfile.exists():
            raise SystemExit(f"{sfile} not found: score {src['name']}'s stage {stage['source_stage']} first")
        sigmas.setdefault(skey, json.loads(sfile.read_text()))
        score_file = m.run / f"rules-{proto['name']}.json"
        stamp = {"sigma": sigmas[skey]["sigma"], "step": base._finished(m).get("step")}
        rows += base.kept_scores(score_file, stamp, lambda: score_model(m, cases, sigmas[skey]["sigma"], args.device))
    summary = base.summarise(rows, proto, COLUMNS, DIFFERENCES)
    winner = pick_winner(summary, proto["control"], proto["rules"]) if "winner_rule" in stage else None
    text = report(proto, src, args.stage, summary, sigmas, winner)
    if args.score_available or missing:
        print(f"PARTIAL: {len({r['model'] for r in rows})} finished model(s) scored; not yet finished: {', '.join(missing) or 'none'}. "
              "Progress, not the stage's result.\n\n" + text)
        return 0
    print(text)
    if not args.no_write:
        base.write_stage(results_dir, f"{proto['name']}-{args.stage}", text,
                         {"protocol": proto["name"], "stage": args.stage, "winner": winner, "sigmas": sigmas,
                          "summary": summary, "rows": rows})
    return 0
