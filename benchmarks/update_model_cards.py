"""Re-measure the "Dice on its training cases" table of each shipped model card with the current
inference defaults, and rewrite that section and its machine-readable records in the card (the
regression test Testing/e2e/test_default_models.py re-runs one case against these records).

    python benchmarks/update_model_cards.py [--data ../shared/data]
    python benchmarks/update_model_cards.py --output-rule single-lesion-recommended   # re-declare the rule
    python benchmarks/update_model_cards.py --default-threshold cgc_flair=0.3 --threshold-note "protocol ..."

``--output-rule``: record another default output rule (what ``--postprocess auto`` uses) in every shipped
checkpoint and its card, then re-measure; only after a declared protocol's confirmation chose it. The
weights are not touched. Only the Dice section, the card's "Output rule" line and the checkpoint's
``default_output_rule`` change. ``--default-threshold NAME=T``: likewise record the threshold of that rule
(``default_threshold``, what ``cgcseg segment`` uses without ``--threshold``) in model NAME and a
"Threshold" line of its card, with ``--threshold-note`` saying which protocol chose it.
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
THRESHOLD_LINE = re.compile(r"^- \*\*Threshold\*\* of that rule .*$\n?", re.M)


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


def record_threshold(path: Path, threshold: float, note: str) -> None:
    """Write ``threshold`` as ``default_threshold`` into the checkpoint ``path`` (atomically; weights kept)
    and a "Threshold" line, after the "Output rule" line, into its card (replacing an earlier one)."""
    from CGCLesionSegLib.checkpoint import read_checkpoint, save_checkpoint_dict, valid_threshold
    if not valid_threshold(threshold):
        raise SystemExit(f"a threshold in (0, 1) is needed, got {threshold}")
    card = path.with_suffix(".md")
    text = THRESHOLD_LINE.sub("", card.read_text())
    found = RULE_LINE.search(text)
    if not found:
        raise SystemExit(f"{card}: no '- **Output rule** (`--postprocess auto`): `...`.' line; nothing changed")
    ck = read_checkpoint(path)
    ck["default_threshold"] = float(threshold)
    save_checkpoint_dict(path, ck)
    line = (f"- **Threshold** of that rule when none is given (`--threshold`): `{float(threshold):g}`"
            + (f" — {note}" if note else "") + ".")
    card.write_text(text[:found.end()] + "\n" + line + text[found.end():])


def _thresholds(items) -> dict:
    """``NAME=T`` arguments → {model file stem: T}."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value) if sep else float("nan")
        except ValueError:
            out[name] = float("nan")
        if not sep or out[name] != out[name]:
            raise SystemExit(f"--default-threshold takes NAME=T (e.g. cgc_flair=0.3), got {item!r}")
    return out


def model_paths(models_dir=None) -> list[Path]:
    """The model files to work on: ``cgc_*.pt`` in ``models_dir``, else the package's shipped default models."""
    from CGCLesionSegLib.default_models import available_default_models
    if models_dir:
        return sorted(Path(models_dir).glob("cgc_*.pt"))
    return [p for _, p in sorted(available_default_models().items())]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--output-rule", help="record this default output rule in every shipped model first")
    ap.add_argument("--models-dir", help="folder of the models (default: the package's shipped models)")
    ap.add_argument("--default-threshold", nargs="+", metavar="NAME=T",
                    help="record threshold T of the default output rule in model NAME (file stem) first")
    ap.add_argument("--threshold-note", default="", help="which protocol chose the thresholds (written to the card)")
    args = ap.parse_args(argv)
    thresholds = _thresholds(args.default_threshold)
    from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
    from evaluate_cgc import _cases, _score_case
    from export_default_model import update_card
    cases = _cases(Path(args.data))
    models = model_paths(args.models_dir)
    if not models:
        raise SystemExit(f"no cgc_*.pt model in {args.models_dir}")
    unknown = sorted(set(thresholds) - {p.stem for p in models})
    if unknown:
        raise SystemExit(f"--default-threshold names {', '.join(unknown)}; the models are "
                         f"{', '.join(p.stem for p in models)}")
    for path in models:
        if args.output_rule:
            record_output_rule(path, args.output_rule)
        if path.stem in thresholds:
            record_threshold(path, thresholds[path.stem], args.threshold_note)
        info = info_from_dict(read_checkpoint(path), path)
        rows = [_score_case(c, path, list(info.channels), "cpu") for c in cases]
        update_card(path.with_suffix(".md"), rows)
        print(f"{path.with_suffix('.md').name} ({rows[0]['default_rule']}): "
              + ", ".join(f"{k} {statistics.mean(r[k + '_dice'] for r in rows):.4f}" for k in ("gmm", "cgc", "default")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
