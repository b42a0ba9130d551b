"""Re-measure the "Dice on its training cases" table of each shipped model card with the current
inference defaults, and rewrite the table and its machine-readable records in the card (the
regression test Testing/e2e/test_default_models.py re-runs one case against these records).

    python benchmarks/update_model_cards.py [--data ../shared/data]

Only the table and the two ``<!-- card-dice... -->`` lines change; the text around them is kept.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

COLS = (("gmm", "GMM (P ≥ 0.5)"), ("cgc", "CGC (≥ 0.5)"), ("gmm_clean", "GMM + clean-up"),
        ("default", "default output (single-lesion)"))


def card_table(rows: list[dict]) -> str:
    lines = ["| case | " + " | ".join(n for _, n in COLS) + " |", "|---|" + "---|" * len(COLS)]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r[k + '_dice']:.4f}" for k, _ in COLS) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{statistics.mean(r[k + '_dice'] for r in rows):.4f}**" for k, _ in COLS) + " |")
    lines += ["", "<!-- card-dice " + json.dumps({r["case"]: round(r["cgc_dice"], 4) for r in rows}) + " -->",
              "<!-- card-dice-default " + json.dumps({r["case"]: round(r["default_dice"], 4) for r in rows}) + " -->"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
    from CGCLesionSegLib.default_models import available_default_models
    from evaluate_cgc import _cases, _score_case
    cases = _cases(Path(args.data))
    for mods, path in sorted(available_default_models().items()):
        info = info_from_dict(read_checkpoint(path), path)
        rows = [_score_case(c, path, list(info.channels), "cpu") for c in cases]
        card = path.with_suffix(".md")
        text = card.read_text()
        pattern = re.compile(r"\| case \| GMM \(P ≥ 0\.5\).*?<!-- card-dice-default \{.*?\} -->", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{card}: no Dice table with card-dice records found")
        card.write_text(pattern.sub(lambda _: card_table(rows), text, count=1))
        print(f"{card.name}: " + ", ".join(f"{n} {statistics.mean(r[k + '_dice'] for r in rows):.4f}" for k, n in COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
