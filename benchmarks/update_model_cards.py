"""Re-measure the "Dice on its training cases" table of each shipped model card with the current
inference defaults, and rewrite that section and its machine-readable records in the card (the
regression test Testing/e2e/test_default_models.py re-runs one case against these records).

    python benchmarks/update_model_cards.py [--data ../shared/data]
    python benchmarks/update_model_cards.py --output-rule single-lesion-recommended   # re-declare the rule

``--output-rule``: record another default output rule (what ``--postprocess auto`` uses) in every shipped
checkpoint and its card, then re-measure; only after a declared protocol's confirmation chose it. The
weights are not touched. Only the Dice section, the card's "Output rule" line and the checkpoint's
``default_output_rule`` change.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))

RULE_LINE = re.compile(r"^- \*\*Output rule\*\* \(`--postprocess auto`\): `[\w-]+`\.$", re.M)


def record_output_rule(path: Path, rule: str) -> None:
    """Write ``rule`` as ``default_output_rule`` into the checkpoint ``path`` (atomically; weights kept) and
    into its card's "Output rule" line."""
    from CGCLesionSegLib.checkpoint import OUTPUT_RULE_NAMES, read_checkpoint, save_checkpoint_dict
    if rule not in OUTPUT_RULE_NAMES:
        raise SystemExit(f"unknown output rule {rule!r}; choose one of {', '.join(OUTPUT_RULE_NAMES)}")
    card = path.with_suffix(".md")
    text = card.read_text()
    if not RULE_LINE.search(text):
        raise SystemExit(f"{card}: no '- **Output rule** (`--postprocess auto`): `...`.' line; nothing changed")
    ck = read_checkpoint(path)
    ck["default_output_rule"] = rule
    save_checkpoint_dict(path, ck)
    card.write_text(RULE_LINE.sub(f"- **Output rule** (`--postprocess auto`): `{rule}`.", text, count=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--output-rule", help="record this default output rule in every shipped model first")
    ap.add_argument("--models-dir", help="folder of the models (default: the package's shipped models)")
    args = ap.parse_args(argv)
    from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
    from CGCLesionSegLib.default_models import available_default_models
    from evaluate_cgc import _cases, _score_case
    from export_default_model import update_card
    cases = _cases(Path(args.data))
    models = (sorted(Path(args.models_dir).glob("cgc_*.pt")) if args.models_dir
              else [p for _, p in sorted(available_default_models().items())])
    if not models:
        raise SystemExit(f"no cgc_*.pt model in {args.models_dir}")
    for path in models:
        if args.output_rule:
            record_output_rule(path, args.output_rule)
        info = info_from_dict(read_checkpoint(path), path)
        rows = [_score_case(c, path, list(info.channels), "cpu") for c in cases]
        update_card(path.with_suffix(".md"), rows)
        print(f"{path.with_suffix('.md').name} ({rows[0]['default_rule']}): "
              + ", ".join(f"{k} {statistics.mean(r[k + '_dice'] for r in rows):.4f}" for k in ("gmm", "cgc", "default")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
