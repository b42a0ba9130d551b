"""Rival − control of one column across two stages of an inference-rule protocol, paired over cases.

A control-against-rival confirmation (cgc-v43) reads its fourth criterion from an inference-rule protocol whose
``control`` and ``rival`` stages score the two recipes' fold models separately (cgc-v44): each stage's results file
holds one recipe. This pairs them: per held-out case the stage summary's value (already averaged over seeds), the
rival's minus the control's, then the mean and the protocol's bootstrap 95 % CI over cases (its
``bootstrap_resamples`` / ``bootstrap_seed``). Nothing is re-scored; the two results files are read.

    python benchmarks/stage_pairs.py --protocol docs/protocols/cgc-v44.toml --model-set flair
    python benchmarks/stage_pairs.py --protocol docs/protocols/cgc-v44.toml --model-set flair t1 t1ce t2

Writes ``docs/protocols/results/<name>-rival-vs-control-<modalities>.json`` and the docs/BENCHMARKS.md section
``protocol-<name>-rival-vs-control-<modalities>``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "protocols" / "results"
#: The column a rule protocol's reading compares (cgc-v44: the shipped rule on the two-seed ensemble, threshold
#: chosen leave one case out).
COLUMN = "default_rec_loo_ensemble"


def stage_group(results_dir: Path, name: str, stage: str, mods: tuple, variant: str) -> dict | None:
    """The summary group of ``variant`` for the model set ``mods`` in stage ``stage``'s results (the set's own file,
    ``<name>-<stage>-<modalities>.json``, else the whole stage's); None when it is not there."""
    key = "-".join(mods)
    for path in (Path(results_dir) / f"{name}-{stage}-{key}.json", Path(results_dir) / f"{name}-{stage}.json"):
        if path.exists():
            group = json.loads(path.read_text()).get("summary", {}).get(f"{key}/{variant}")
            if group:
                return group
    return None


def paired(rival: dict, control: dict, column: str = COLUMN, resamples: int = 10000, seed: int = 0) -> dict | None:
    """``{"cases", "per_case", "mean", "ci95", "worst", "rival", "control"}`` of rival − control of ``column`` over
    the cases both summary groups scored (per-case values are the groups' seed means); None when they share no case
    or one group lacks the column."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import protocol
    r = {c: v[column]["dice"] for c, v in rival.get("per_case", {}).items() if column in v}
    k = {c: v[column]["dice"] for c, v in control.get("per_case", {}).items() if column in v}
    cases = sorted(set(r) & set(k))
    if not cases:
        return None
    diffs = {c: r[c] - k[c] for c in cases}
    return {"cases": cases, "per_case": diffs, "mean": statistics.mean(diffs.values()),
            "ci95": list(protocol.bootstrap_ci([diffs[c] for c in cases], resamples, seed)),
            "worst": min(diffs.values()), "rival": {c: r[c] for c in cases}, "control": {c: k[c] for c in cases}}


def stages_of(proto: dict) -> tuple[str, str]:
    """(rival variant, control variant) of a rule protocol with ``rival`` and ``control`` stages."""
    stages = proto.get("stages", {})
    if "rival" not in stages or "control" not in stages:
        raise SystemExit(f"{proto['name']} has no `rival` and `control` stages (it has {', '.join(stages)})")
    return stages["rival"]["variant"], stages["control"]["variant"]


def report(proto: dict, mods: tuple, rival: str, control: str, result: dict, column: str) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import protocol
    key = "-".join(mods)
    resamples, seed = protocol.bootstrap_settings(proto)
    lines = [f"### Protocol {proto['name']}: `rival` − `control`, {key}", "",
             f"The two stages' results (`protocol-{proto['name']}-rival-{key}`, `protocol-{proto['name']}-control-{key}`) "
             f"paired over held-out cases by `benchmarks/stage_pairs.py`: column `{column}` (per case the mean over "
             f"seeds), `{rival}` − `{control}`; bootstrap 95 % CI over cases ({resamples} "
             f"resamples, seed {seed}). Nothing re-scored.", "",
             f"| case | `{control}` | `{rival}` | difference |", "|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c} | {result['control'][c]:.4f} | {result['rival'][c]:.4f} | {result['per_case'][c]:+.4f} |")
    lines += [f"| **mean** | **{statistics.mean(result['control'].values()):.4f}** | "
              f"**{statistics.mean(result['rival'].values()):.4f}** | **{result['mean']:+.4f}** |", "",
              f"Difference {result['mean']:+.4f}, CI [{result['ci95'][0]:+.4f}, {result['ci95'][1]:+.4f}], worst case "
              f"{result['worst']:+.4f}, over {len(result['cases'])} cases.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", required=True, help="an inference-rule protocol with rival and control stages")
    ap.add_argument("--model-set", nargs="+", required=True, metavar="MODALITY")
    ap.add_argument("--column", default=COLUMN)
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import tomllib
    proto = tomllib.loads(Path(args.protocol).read_text())
    mods = tuple(args.model_set)
    rival, control = stages_of(proto)
    groups = {v: stage_group(Path(args.results_dir), proto["name"], s, mods, v)
              for v, s in ((rival, "rival"), (control, "control"))}
    missing = [f"{s} ({v})" for v, s in ((rival, "rival"), (control, "control")) if groups[v] is None]
    if missing:
        raise SystemExit(f"{proto['name']}: no results of stage {' and '.join(missing)} for {' '.join(mods)}; run "
                         f"`python benchmarks/evaluate_cgc.py --protocol {args.protocol} --stage ... --model-set "
                         f"{' '.join(mods)}` first")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import protocol
    result = paired(groups[rival], groups[control], args.column, *protocol.bootstrap_settings(proto))
    if result is None:
        raise SystemExit(f"the two stages share no case with column {args.column!r}")
    text = report(proto, mods, rival, control, result, args.column)
    print(text)
    if not args.no_write:
        name = f"{proto['name']}-rival-vs-control-{'-'.join(mods)}"
        out = Path(args.results_dir) / f"{name}.json"
        out.write_text(json.dumps({"protocol": proto["name"], "rival": rival, "control": control,
                                   "column": args.column, "modalities": list(mods), **result}, indent=1))
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _report import machine_line, write_section
        write_section(f"protocol-{name}", text + "\n" + machine_line())
        print(f"wrote {out} and docs/BENCHMARKS.md section protocol-{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
