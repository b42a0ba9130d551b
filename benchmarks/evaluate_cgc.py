"""Accuracy of the CGC stage against its own GMM stage on the real BraTS cases (whole lesion = seg > 0).

Two modes:

* ``--model CKPT``: segment every case with one model and report per-case Dice of the CGC mask and
  of the GMM mask (P ≥ 0.5 with the GMM settings stored in the model). When the model was trained on
  these cases (the shipped defaults are), the table says so: that is *not* a held-out result.
* ``--folds K --train-minutes M``: leave-cases-out. Cases are split into K folds (sorted names,
  round-robin, fixed before any label is read); for each fold a model is trained on the other cases
  (``python -m CGCTraining``, labels never read) for M minutes, then segments the held-out cases.

Training settings for the folds are declared here, not tuned on labels: the shipped models'
settings (see ``CGCLesionSegLib/models/*.md``). Writes the section ``cgc-accuracy[-NAME]`` of
docs/BENCHMARKS.md.

    python benchmarks/evaluate_cgc.py --model CGCLesionSegLib/models/cgc_flair_t1_t1ce_t2.pt
    python benchmarks/evaluate_cgc.py --folds 2 --train-minutes 30 --modalities flair t1 t1ce t2
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# Declared before running: the settings of the shipped CPU-trained models.
FOLD_TRAIN_ARGS = ["--crop", "96", "96", "64", "--spacing", "1.5", "1.5", "1.5", "--patch", "3", "3", "4",
                   "--lr", "1e-3", "--steps", "1000000", "--checkpoint-every", "50", "--workers", "0"]


def _cases(data: Path) -> list[Path]:
    return sorted(d for d in (data / "brats").iterdir() if d.is_dir())


def _score_case(case: Path, model_path: Path, modalities, device: str) -> dict:
    import numpy as np
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    from CGCLesionSegLib.metrics import dice, sensitivity
    images = [read_image(case / f"{case.name}_{m}.nii.gz") for m in modalities]
    ref = read_image(case / f"{case.name}_seg.nii.gz", dtype=None).array_zyx > 0
    res = segment_case([i.array_zyx for i in images], images[0].geometry, list(modalities), model_path,
                       None, InferenceConfig(device=device), compute_gmm=True)
    gmm_mask = res.gmm_probability >= 0.5
    return {"case": case.name, "cgc_dice": dice(res.mask, ref), "gmm_dice": dice(gmm_mask, ref),
            "cgc_sensitivity": sensitivity(res.mask, ref), "gmm_sensitivity": sensitivity(gmm_mask, ref),
            "seconds": round(res.elapsed_s, 1)}


def _table(rows: list[dict], title: str, note: str) -> str:
    lines = [f"### {title}", "", note, "", "| case | GMM Dice | CGC Dice | Δ | GMM sens. | CGC sens. |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['gmm_dice']:.4f} | {r['cgc_dice']:.4f} | {r['cgc_dice'] - r['gmm_dice']:+.4f} | "
                     f"{r['gmm_sensitivity']:.4f} | {r['cgc_sensitivity']:.4f} |")
    g = statistics.mean(r["gmm_dice"] for r in rows)
    c = statistics.mean(r["cgc_dice"] for r in rows)
    lines.append(f"| **mean** | **{g:.4f}** | **{c:.4f}** | **{c - g:+.4f}** | "
                 f"{statistics.mean(r['gmm_sensitivity'] for r in rows):.4f} | {statistics.mean(r['cgc_sensitivity'] for r in rows):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model")
    ap.add_argument("--folds", type=int)
    ap.add_argument("--train-minutes", type=float, default=30.0)
    ap.add_argument("--modalities", nargs="+", default=["flair", "t1", "t1ce", "t2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default=None, help="section suffix in docs/BENCHMARKS.md")
    ap.add_argument("--work-dir", default=None, help="keep fold runs here (default: a temp folder)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    cases = _cases(Path(args.data))
    if args.model:
        from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
        info = info_from_dict(read_checkpoint(args.model), args.model)
        mods = list(info.channels)
        trained_on = set((info.extra or {}).get("cases", []))
        rows = [_score_case(c, Path(args.model), mods, args.device) for c in cases]
        seen = [r["case"] for r in rows if r["case"] in trained_on]
        note = (f"Model `{Path(args.model).name}` (channels {' '.join(mods)}, step {info.step}). "
                + (f"**These are its training cases** ({len(seen)} of {len(rows)}; no labels were used in training, "
                   "but the images were): not a held-out result." if seen else "None of these cases were in its training set."))
        text = _table(rows, f"CGC vs its GMM stage — {Path(args.model).name}", note)
    elif args.folds:
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="cgc-folds-"))
        folds = [cases[i::args.folds] for i in range(args.folds)]
        rows = []
        for k, test in enumerate(folds):
            train = [c for c in cases if c not in test]
            listing = work / f"fold{k}.csv"
            listing.parent.mkdir(parents=True, exist_ok=True)
            with listing.open("w") as fh:
                fh.write("case," + ",".join(args.modalities) + "\n")
                for c in train:
                    fh.write(c.name + "," + ",".join(str(c / f"{c.name}_{m}.nii.gz") for m in args.modalities) + "\n")
            run = work / f"fold{k}"
            cmd = [sys.executable, "-m", "CGCTraining", "--cases", str(listing), "--modalities", *args.modalities,
                   "--output-dir", str(run), "--max-minutes", str(args.train_minutes), "--progress", "none",
                   "--device", args.device, *FOLD_TRAIN_ARGS]
            if (run / "last.pt").exists():
                cmd.append("--resume")
            t = time.time()
            subprocess.run(cmd, check=True)
            print(f"fold {k}: trained on {len(train)} cases in {time.time() - t:.0f} s", file=sys.stderr)
            rows += [_score_case(c, run / "last.pt", args.modalities, args.device) for c in test]
        rows.sort(key=lambda r: r["case"])
        note = (f"Leave-cases-out: {args.folds} folds (round-robin over sorted case names), each model trained "
                f"{args.train_minutes:g} min on the other cases ({' '.join(args.modalities)}), settings "
                f"`{' '.join(FOLD_TRAIN_ARGS)}`; every case below was held out from its model's training.")
        text = _table(rows, f"CGC vs GMM, leave-cases-out ({' '.join(args.modalities)})", note)
    else:
        ap.error("give --model CKPT or --folds K")
    print(text)
    if not args.no_write:
        from _report import machine_line, write_section
        name = "cgc-accuracy" + (f"-{args.name}" if args.name else "")
        write_section(name, text + "\n\n" + machine_line())
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
