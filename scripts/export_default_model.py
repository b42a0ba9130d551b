"""Turn a training run into a shipped default model: ``CGCLesionSegLib/models/<name>.pt`` (fp16 weights,
no optimizer state), its loss-curve PNG and its model card ``<name>.md``.

    python scripts/export_default_model.py runs/default4 --dice-json results.json --hardware "..." \
        --output-rule single-lesion

``--dice-json``: the per-case rows printed by ``benchmarks/evaluate_cgc.py --model`` (stderr, last line).
``--output-rule``: what ``--postprocess auto`` uses with the model, written into the checkpoint
(``default_output_rule``); declare it from held-out numbers, not from the card's training-case table.
``scripts/train_default_models.py`` trains and exports both shipped models in one command.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "CGCLesionSeg" / "CGCLesionSegLib" / "models"


def loss_curve_png(log_csv: Path, png: Path, width: int = 640, height: int = 300) -> None:
    """Plot total / BCE / coarse / fine loss (moving average of 20 steps) with pillow only."""
    rows = list(csv.DictReader(log_csv.open()))
    series = {k: [float(r[k]) for r in rows] for k in ("total", "bce", "cg", "fg")}
    colors = {"total": (20, 20, 20), "bce": (214, 39, 40), "cg": (31, 119, 180), "fg": (44, 160, 44)}
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 50, width - 10, 10, height - 30
    def smooth(v, n=20):
        out, acc = [], 0.0
        for i, x in enumerate(v):
            acc += x - (v[i - n] if i >= n else 0.0)
            out.append(acc / min(i + 1, n))
        return out
    sm = {k: smooth(v) for k, v in series.items()}
    ymax = max(max(v) for v in sm.values()) * 1.05
    steps = len(rows)
    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - frac * (bottom - top)
        d.text((5, y - 6), f"{frac * ymax:.2f}", fill=(0, 0, 0))
    d.text((left, bottom + 8), "step 1", fill=(0, 0, 0))
    d.text((right - 70, bottom + 8), f"step {steps}", fill=(0, 0, 0))
    for i, (k, v) in enumerate(sm.items()):
        pts = [(left + (right - left) * j / max(steps - 1, 1), bottom - (bottom - top) * y / ymax) for j, y in enumerate(v)]
        d.line(pts, fill=colors[k], width=2)
        d.text((left + 10 + 90 * i, top + 5), k, fill=colors[k])
    img.save(png)


def training_seconds(log_csv: Path) -> tuple[float, int]:
    """Wall-clock seconds of the steps a run kept, and in how many sessions they were trained.

    The log's ``seconds`` column counts from the start of the process that wrote the row, so it starts
    again after ``--resume`` (and the resumed process dropped the rows it redoes): the run's time is
    the sum of each session's last value. Time spent on steps that were thrown away is not counted."""
    total, sessions, prev = 0.0, 0, None
    with log_csv.open(newline="") as fh:
        for row in csv.DictReader(fh):
            t = float(row["seconds"])
            if prev is None or t < prev:  # a new session
                total += prev or 0.0
                sessions += 1
            prev = t
    return total + (prev or 0.0), sessions


def _length_note(run: Path, extra: dict, hardware: str) -> str:
    """The card's wall-clock: this run's sessions summed, plus the run it started from (round 1)."""
    secs, sessions = training_seconds(run / "loss_log.csv")
    note = f"{secs / 60:.0f} min wall-clock on {hardware}" + (f" (summed over {sessions} sessions: resumed)"
                                                             if sessions > 1 else "")
    init = extra.get("init_checkpoint")
    if init:
        note += f"; started from the weights of `{'/'.join(Path(init).parts[-3:-1])}` (`--init-from`)"
        parent_log = Path(init).parent / "loss_log.csv"
        if parent_log.exists():
            p_secs, _ = training_seconds(parent_log)
            note += f", which took {p_secs / 60:.0f} min (both rounds: {(secs + p_secs) / 60:.0f} min)"
    return note


def _xyz(values) -> str:
    return "×".join(f"{v:g}" for v in values)


DICE_HEADING = "## Dice on its training cases"


def dice_section(rows: list[dict]) -> list[str]:
    """The card's per-case Dice table (rows of ``benchmarks/evaluate_cgc.py``) and the machine-readable
    records the regression test reads: raw CGC (``card-dice``) and the default output rule
    (``card-dice-default``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from evaluate_cgc import RULE_TEXT
    if not rows:
        return []
    rule = rows[0].get("default_rule", "single-lesion")  # rows made before the field: the shipped rule then
    threshold = rows[0].get("default_threshold", 0.5)  # rows made before the field: 0.5
    cols = [("gmm", "GMM (P ≥ 0.5)"), ("cgc", "CGC (≥ 0.5)"), ("gmm_clean", "GMM + clean-up"),
            ("default", f"default output ({rule})")]
    lines = [DICE_HEADING, "",
             "**These are the cases it was trained on** (without labels): not a held-out result; see "
             "docs/BENCHMARKS.md for leave-cases-out numbers (its `cgc-accuracy-*` sections are another CPU run of the "
             "same measurement: values may differ in the fourth decimal). Whole lesion = seg > 0; GMM = P with the settings above; "
             "CGC = this model's map ≥ 0.5 on CPU (the paper's output); clean-up = 2-D hole filling + largest lesion "
             "after an opening r = 3 mm; default = what `cgcseg segment` writes with this model (its output rule `"
             + rule + "` at threshold " + f"{threshold:g}" + (f": {RULE_TEXT[rule]}" if rule in RULE_TEXT else "")
             + ").", "",
             "| case | " + " | ".join(n for _, n in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r[k + '_dice']:.4f}" for k, _ in cols) + " |")
    mean = lambda k: sum(r[k + "_dice"] for r in rows) / len(rows)
    lines += ["| **mean** | " + " | ".join(f"**{mean(k):.4f}**" for k, _ in cols) + " |", "",
              "<!-- card-dice " + json.dumps({r["case"]: round(r["cgc_dice"], 4) for r in rows}) + " -->",
              "<!-- card-dice-default " + json.dumps({r["case"]: round(r["default_dice"], 4) for r in rows}) + " -->", ""]
    return lines


def update_card(card: Path, rows: list[dict]) -> None:
    """Replace the Dice section of an existing card (the model file is not touched)."""
    text = card.read_text()
    head, sep, tail = text.partition(DICE_HEADING)
    if not sep:
        raise SystemExit(f"{card}: no '{DICE_HEADING}' section")
    # The section ends at the card-dice records; what follows (notes) is kept.
    rest = tail.split("-->\n", 2)[-1] if "card-dice-default" in tail else tail.split("-->\n", 1)[-1]
    card.write_text(head + "\n".join(dice_section(rows)) + rest)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--name", help="file stem (default: cgc_<modalities>)")
    ap.add_argument("--dice-json", help="per-case rows of benchmarks/evaluate_cgc.py")
    ap.add_argument("--hardware", default="2 CPU cores (shared with other jobs), no GPU")
    ap.add_argument("--notes", default="", help="markdown appended to the card")
    ap.add_argument("--models-dir", default=str(MODELS), help="where to write (default: the package's models folder)")
    ap.add_argument("--output-rule", choices=("none", "single-lesion", "single-lesion-recommended"),
                    help="default_output_rule recorded in the exported checkpoint (default: keep the run's)")
    ap.add_argument("--members", nargs="+", default=[], metavar="RUN_DIR",
                    help="more runs of the same recipe (other seeds): ship a seed ensemble of run_dir and these "
                         "(`cgcseg ensemble`; their last.pt must match run_dir's in every shared field)")
    ap.add_argument("--update-card", action="store_true",
                    help="only rewrite the Dice section of models/NAME.md from --dice-json (run_dir is the card's model stem)")
    args = ap.parse_args(argv)
    models_dir = Path(args.models_dir)
    if args.update_card:
        update_card(models_dir / f"{args.run_dir}.md", json.loads(Path(args.dice_json).read_text()))
        return 0
    sys.path.insert(0, str(ROOT))
    from CGCLesionSegLib.checkpoint import combine_checkpoints, info_from_dict, read_checkpoint, save_checkpoint_dict
    from CGCLesionSegLib.default_models import model_file_name
    run = Path(args.run_dir)
    members = [Path(m) for m in args.members]
    # an ensemble: every run's EMA weights ("model"), checked to match in everything but the weights
    ck = combine_checkpoints([run / "last.pt"] + [m / "last.pt" for m in members]) if members else read_checkpoint(run / "last.pt")
    info = info_from_dict(ck, run / "last.pt")
    name = args.name or Path(model_file_name(info.channels)).stem
    models_dir.mkdir(parents=True, exist_ok=True)
    half = lambda state: {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    ck["model"] = half(ck["model"])
    if members:
        ck["members"] = [half(m) for m in ck["members"]]
    ck["optimizer"] = None
    ck.pop("train_model", None)  # EMA runs: ship the averaged weights ("model") only
    ck["extra"] = {**(ck.get("extra") or {}), "exported_from": run.name, "weights_dtype": "float16",
                   **({"exported_members": [m.name for m in members]} if members else {})}
    if args.output_rule:
        ck["default_output_rule"] = args.output_rule
    out = save_checkpoint_dict(models_dir / f"{name}.pt", ck)
    loss_curve_png(run / "loss_log.csv", models_dir / f"{name}_loss.png")
    rows = list(csv.DictReader((run / "loss_log.csv").open()))
    n_params = sum(v.numel() for v in ck["model"].values())
    tc, extra = ck["train_config"] or {}, ck.get("extra") or {}
    first, last = rows[0], rows[-1]
    spacing = [float(v) for v in ck["preprocessing"].get("spacing_xyz") or (1.0, 1.0, 1.0)]
    crop = [int(v) for v in tc.get("crop_xyz") or ()]
    patch = list((ck.get("net_config") or {}).get("patch_size_xyz") or ())
    n_last = rows[-50:]
    mean = lambda k: sum(float(r[k]) for r in n_last) / len(n_last)
    dice_rows = json.loads(Path(args.dice_json).read_text()) if args.dice_json else []
    lines = [
        f"# Model card: `{name}.pt`",
        "",
        "**Research use only, not for clinical diagnosis.**",
        "",
        f"- **What**: CGC network (paper's method: BCE to the GMM map P + coarse-grained + fine-grained contrastive "
        f"paths), input channels **{', '.join(info.channels)}** (in this order), {n_params / 1e6:.2f} M "
        + (f"parameters per network, **a seed ensemble of {info.members} networks** (the same recipe and data, training "
           f"seeds {', '.join(str(s['seed']) for s in ck['extra']['ensemble'])}; `cgcseg segment` averages their "
           "probabilities, `cgcseg ensemble`), " if members else "parameters ")
        + f"stored in float16 ({out.stat().st_size / 1e6:.1f} MB).",
        f"- **Data**: {len(extra.get('cases', []))} tumour cases "
        f"({', '.join(extra.get('cases', []))}); images only — **no label was read** in training.",
        f"- **P**: GMM settings `{json.dumps(ck['preprocessing'].get('gmm'))}` (the paper's FLAIR-only configuration).",
        f"- **Spacing**: trained at {' × '.join(str(v) for v in ck['preprocessing'].get('spacing_xyz') or [])} mm; inputs "
        "are resampled to it and outputs back to the input grid.",
        f"- **Network**: `{json.dumps(ck['net_config'])}`",
        f"- **Training**: `{json.dumps({k: tc.get(k) for k in ('crop_xyz', 'batch_size', 'lr', 'lr_schedule', 'ema', 'augment', 'lesion_crop_fraction', 'flip', 'intensity_jitter', 'target_sigma_mm', 'seed')})}`; "
        f"losses `{json.dumps(tc.get('loss'))}`.",
        f"- **Length**: {info.step} steps ({info.epoch} epochs of {extra.get('steps_per_epoch')} steps), "
        + _length_note(run, extra, args.hardware)
        + "".join(f"; member {i + 2} (`{m.name}`): " + _length_note(m, read_checkpoint(m / "last.pt").get("extra") or {},
                                                                     args.hardware)
                  for i, m in enumerate(members)) + ".",
        f"- **Output rule** (`--postprocess auto`): `{ck.get('default_output_rule', 'none')}`.",
        *([f"- **Threshold** of that rule when none is given (`--threshold`): `{float(ck['default_threshold']):g}`."]
          if ck.get("default_threshold") is not None else []),
        f"- **Why not the paper's schedule**: the paper trains 400 epochs on 228 subjects at 192×192×64 (≈ 45,600 steps) on "
        f"two A6000 GPUs. This model had a budget of hours, not days, so it uses a {_xyz(spacing)} mm grid, "
        f"{_xyz(crop)} crops ({_xyz([c * v for c, v in zip(crop, spacing)])} mm), {_xyz(patch)} mini-patches of the "
        f"{_xyz([c // 8 for c in crop])} bottleneck and lr {tc.get('lr'):g} (the paper: 1 mm, 192×192×64, lr 1e-4). "
        "It is a usable starting point, not the paper's model: "
        "retrain with `cgcseg train` on a GPU for that.",
        f"- **Loss**: first step total {float(first['total']):.3f} (BCE {float(first['bce']):.3f}, coarse {float(first['cg']):.3f}, "
        f"fine {float(first['fg']):.3f}); mean of the last 50 steps total {mean('total'):.3f} (BCE {mean('bce'):.3f}, "
        f"coarse {mean('cg'):.3f}, fine {mean('fg'):.3f}). Curve: `{name}_loss.png`.",
        "",
        f"![loss curve]({name}_loss.png)",
        "",
    ]
    lines += dice_section(dice_rows)
    if args.notes:
        lines += [args.notes, ""]
    (models_dir / f"{name}.md").write_text("\n".join(lines))
    print(f"wrote {out}, {models_dir / (name + '.md')}, {models_dir / (name + '_loss.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
