"""The threshold a passing threshold rule ships with (protocol cgc-v18's "Shipping after a confirmation"):
chosen exactly as inside the folds (:func:`rules._best_threshold`: highest mean Dice, seeds averaged per
case first; ties to the value nearer 0.5, then the higher), but over *every* labelled case of the
confirmation — each case's maps come from the fold models that held it out, so no model saw the case
whose Dice picks its threshold.

    python benchmarks/shipped_thresholds.py docs/protocols/results/cgc-v18-confirm-flair.json [--family default_rec]

Prints one line per model set and variant: the chosen threshold and the mean Dice at each threshold.
``--compare A B`` also prints the paired difference of two scored columns of the rows (e.g.
``default_rec_t gmm_default``: the shipped output at its fold threshold against `cgcseg gmm`'s output as
it ships), per case with seeds averaged, its bootstrap 95 % CI over cases and the worst case.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rules  # noqa: E402


def threshold_over_all_cases(rows: list[dict], family: str) -> dict:
    """{"<modalities>/<variant>": {"threshold": t, "scores": {t: mean Dice}, "cases": n}} from the rows'
    ``sweep[family]`` (every held-out case of every fold; seeds averaged per case before the mean)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(f"{'-'.join(r['modalities'])}/{r['variant']}", []).append(r)
    out = {}
    for key, rs in sorted(groups.items()):
        per_case: dict = {}
        for r in rs:
            if family not in r.get("sweep", {}):
                raise SystemExit(f"{key}: a row of case {r['case']} has no '{family}' sweep (families: "
                                 f"{', '.join(r.get('sweep', {})) or 'none'})")
            for t, m in r["sweep"][family].items():
                per_case.setdefault(t, {}).setdefault(r["case"], []).append(m["dice"])
        scores = {t: statistics.mean(statistics.mean(v) for v in by_case.values()) for t, by_case in per_case.items()}
        out[key] = {"threshold": float(rules._best_threshold(scores)), "scores": scores,
                    "cases": len(next(iter(per_case.values())))}
    return out


def paired(rows: list[dict], a: str, b: str, resamples: int = 10000, seed: int = 0) -> dict:
    """{"<modalities>/<variant>": {"mean", "ci95", "worst", "cases"}} of Dice(a) − Dice(b) per case (seeds
    averaged per case first), with the protocols' bootstrap (:func:`protocol.bootstrap_ci`)."""
    import protocol
    groups: dict = {}
    for r in rows:
        if a not in r or b not in r:
            raise SystemExit(f"a row of case {r['case']} lacks column '{a if a not in r else b}'")
        key = f"{'-'.join(r['modalities'])}/{r['variant']}"
        groups.setdefault(key, {}).setdefault(r["case"], []).append(r[a]["dice"] - r[b]["dice"])
    out = {}
    for key, per_case in sorted(groups.items()):
        diffs = [statistics.mean(v) for v in per_case.values()]
        out[key] = {"mean": statistics.mean(diffs), "ci95": protocol.bootstrap_ci(diffs, resamples, seed),
                    "worst": min(diffs), "cases": len(diffs)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results JSON of a threshold protocol's confirmation (cgc-v18)")
    ap.add_argument("--family", default="default_rec", help="swept map family (default: default_rec, the shipped rule)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="also print Dice(A) − Dice(B) of two scored columns")
    args = ap.parse_args(argv)
    for path in args.results:
        rows = json.loads(Path(path).read_text())["rows"]
        for key, c in threshold_over_all_cases(rows, args.family).items():
            print(f"{key}: threshold {c['threshold']:g} over {c['cases']} cases; mean Dice "
                  + ", ".join(f"{t} {s:.4f}" for t, s in sorted(c["scores"].items())))
        if args.compare:
            for key, d in paired(rows, *args.compare).items():
                print(f"{key}: {args.compare[0]} − {args.compare[1]} {d['mean']:+.4f} "
                      f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] over {d['cases']} cases; worst {d['worst']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
