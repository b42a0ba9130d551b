"""``cgcseg evaluate``: Dice and sensitivity of segmentations against reference labels.

Either one pair (``--prediction P --reference R``) or a folder of predictions matched by case name
to a BraTS-layout folder (``--predictions-dir D --cases DIR``: ``D/<case>*.nii.gz`` against
``DIR/<case>/<case>_seg.nii.gz``). The reference foreground is ``label > 0`` unless ``--labels`` names
the label values to count (e.g. ``--labels 1 4`` for the tumour core).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prediction", metavar="PATH", help="binary segmentation to score")
    p.add_argument("--reference", metavar="PATH", help="reference labelmap on the same grid")
    p.add_argument("--predictions-dir", metavar="DIR", help="folder of predictions named after cases")
    p.add_argument("--cases", metavar="DIR", help="BraTS-layout folder with <case>/<case>_seg.nii.gz")
    p.add_argument("--labels", type=int, nargs="+", metavar="L", help="reference label values that count as lesion (default: all > 0)")
    p.add_argument("--threshold", type=float, default=0.5, help="predictions with values in (0,1) are thresholded at this (default 0.5)")
    p.add_argument("--output", metavar="FILE", help="write the table as .csv or .json")


def _foreground(ref, labels):
    import numpy as np
    return np.isin(ref, labels) if labels else ref > 0


def _score(pred_path: Path, ref_path: Path, labels, threshold: float) -> dict:
    from ..image_io import check_same_grid, read_image
    from ..metrics import dice, sensitivity
    pred = read_image(pred_path)
    ref = read_image(ref_path, dtype=None)
    check_same_grid(ref.geometry, pred.geometry, "reference", "prediction")
    p = pred.array_zyx >= threshold
    r = _foreground(ref.array_zyx, labels)
    return {"dice": dice(p, r), "sensitivity": sensitivity(p, r),
            "predicted_voxels": int(p.sum()), "reference_voxels": int(r.sum())}


def run(args: argparse.Namespace) -> int:
    rows = []
    if args.prediction or args.reference:
        if not (args.prediction and args.reference):
            raise ValueError("give both --prediction and --reference")
        rows.append({"case": Path(args.prediction).name, **_score(Path(args.prediction), Path(args.reference),
                                                                    args.labels, args.threshold)})
    elif args.predictions_dir and args.cases:
        pred_dir, cases = Path(args.predictions_dir), Path(args.cases)
        if not cases.is_dir():
            raise FileNotFoundError(f"--cases folder not found: {cases}")
        for case_dir in sorted(d for d in cases.iterdir() if d.is_dir()):
            ref = case_dir / f"{case_dir.name}_seg.nii.gz"
            preds = sorted(pred_dir.glob(f"{case_dir.name}*.nii*")) if ref.exists() else []
            preds = [q for q in preds if not q.name.endswith(".json")]
            if preds:
                rows.append({"case": case_dir.name, **_score(preds[0], ref, args.labels, args.threshold)})
        if not rows:
            raise ValueError(f"no prediction in {pred_dir} matched a case with labels in {cases}")
    else:
        raise ValueError("give --prediction and --reference, or --predictions-dir and --cases")
    mean_dice = sum(r["dice"] for r in rows) / len(rows)
    mean_sen = sum(r["sensitivity"] for r in rows) / len(rows)
    for r in rows:
        print(f"{r['case']:<40} dice {r['dice']:.4f}  sensitivity {r['sensitivity']:.4f}")
    if len(rows) > 1:
        print(f"{'mean':<40} dice {mean_dice:.4f}  sensitivity {mean_sen:.4f}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".json":
            out.write_text(json.dumps({"cases": rows, "mean_dice": mean_dice, "mean_sensitivity": mean_sen}, indent=2))
        else:
            with out.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        print(f"wrote {out}", file=sys.stderr)
    return 0
