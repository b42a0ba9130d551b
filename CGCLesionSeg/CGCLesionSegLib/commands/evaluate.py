"""``cgcseg evaluate``: Dice, sensitivity, precision, HD95 and ASSD (mm) of segmentations against
reference labels. Values that are undefined for a case (sensitivity with an empty reference,
precision with an empty prediction, surface distances when either is empty) are printed as
``undefined`` with the reason, written as empty cells / null, and left out of the means.

Either one pair (``--prediction P --reference R``) or a folder of predictions matched by case name
to a BraTS-layout folder (``--predictions-dir D --cases DIR``: ``D/<case>*.nii.gz`` against
``DIR/<case>/<case>_seg.nii.gz``; ``D/<case>.nii.gz`` is preferred, else one ``D/<case>_<tag>`` file that is
not a ``_probability`` map and not another case's file). The reference foreground is ``label > 0`` unless ``--labels`` names
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


#: A labelmap prediction has at most this many distinct integer values.
MAX_LABELS = 32


def check_prediction_values(array, name: str) -> None:
    """Refuse an image that is neither a mask/probability map (values in [0, 1]) nor a small integer
    labelmap — e.g. a FLAIR given by mistake, which would otherwise be thresholded and scored."""
    import numpy as np
    a = np.asarray(array)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return
    values = np.unique(a) if a.size else a
    if np.all(np.mod(values, 1) == 0) and values.size <= MAX_LABELS and lo >= 0:
        return
    raise ValueError(f"{name} is not a segmentation: its values run from {lo:g} to {hi:g} with "
                     f"{min(values.size, 10**6)}{'+' if values.size >= 10**6 else ''} distinct values (a mask holds 0/1, a "
                     f"probability map values in [0, 1], a labelmap at most {MAX_LABELS} integer labels). Give the "
                     "mask written by `cgcseg segment`/`cgcseg gmm`, not an input image")


def check_reference_values(array, name: str) -> None:
    """Refuse a reference that is not a labelmap (non-negative integers, at most :data:`MAX_LABELS` values) —
    e.g. the FLAIR given as --reference, whose every brain voxel would count as lesion."""
    import numpy as np
    a = np.asarray(array)
    values = np.unique(a) if a.size else a
    if values.size and (values.min() < 0 or not np.all(np.mod(values, 1) == 0) or values.size > MAX_LABELS):
        raise ValueError(f"{name} is not a labelmap: its values run from {float(values.min()):g} to "
                         f"{float(values.max()):g} with {values.size} distinct values (a reference holds a few "
                         "non-negative integer labels, 0 = background). Give the expert segmentation (e.g. "
                         "<case>_seg.nii.gz), not an input image")


def _score(pred_path: Path, ref_path: Path, labels, threshold: float) -> dict:
    from ..image_io import check_same_grid, read_image
    from ..metrics import all_metrics
    pred = read_image(pred_path)
    ref = read_image(ref_path, dtype=None)
    check_same_grid(ref.geometry, pred.geometry, "reference", "prediction")
    check_prediction_values(pred.array_zyx, f"the prediction {pred_path.name}")
    check_reference_values(ref.array_zyx, f"the reference {ref_path.name}")
    if labels:
        import numpy as np
        absent = [int(v) for v in labels if not np.any(ref.array_zyx == v)]
        if absent:  # a typo (--labels 7) would otherwise score against an empty reference without a word
            print(f"warning: --labels {' '.join(map(str, absent))} {'does' if len(absent) == 1 else 'do'} not occur in "
                  f"{ref_path.name} (its labels: {' '.join(str(int(v)) for v in np.unique(ref.array_zyx))})",
                  file=sys.stderr)
    p = pred.array_zyx >= threshold
    r = _foreground(ref.array_zyx, labels)
    spacing_zyx = tuple(reversed(pred.geometry.spacing))
    return {**all_metrics(p, r, spacing_zyx), "predicted_voxels": int(p.sum()), "reference_voxels": int(r.sum())}


METRICS = (("dice", "dice", "{:.4f}"), ("sensitivity", "sensitivity", "{:.4f}"), ("precision", "precision", "{:.4f}"),
           ("hd95_mm", "HD95", "{:.2f} mm"), ("assd_mm", "ASSD", "{:.2f} mm"))


def _means(rows: list[dict]) -> dict:
    """Mean of each metric over the cases where it is defined (None where it is nowhere defined)."""
    out = {}
    for key, _, _ in METRICS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out


def _line(label: str, values: dict, reason=None) -> str:
    cells = [f"{name} " + ("undefined" if values.get(key) is None else fmt.format(values[key]))
             for key, name, fmt in METRICS]
    return f"{label:<40} " + "  ".join(cells) + (f"  ({reason})" if reason else "")


_TABLE_SUFFIXES = (".csv", ".json")


def _image_stem(path: Path) -> str | None:
    """File name without its image suffix, or None when it is not an image file."""
    from ..image_io import SUPPORTED_SUFFIXES
    name = path.name
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return None


def _find_prediction(files: dict[str, Path], case: str, all_cases: list[str]) -> Path | None:
    """The prediction of ``case`` among ``files`` ({stem: path}). ``<case>`` itself wins; otherwise one
    ``<case>_<tag>`` / ``<case>-<tag>`` file, never a probability map and never a file of another case
    whose name starts with this one (case ``X_1`` must not take ``X_10``'s prediction)."""
    if case in files:
        return files[case]
    longer = [c for c in all_cases if c != case and c.startswith(case)]
    hits = sorted(stem for stem in files
                  if stem[len(case):len(case) + 1] in ("_", "-") and stem.startswith(case)
                  and not stem.endswith("_probability")
                  and not any(stem == c or stem.startswith((c + "_", c + "-")) for c in longer))
    if len(hits) > 1:
        raise ValueError(f"case {case}: several predictions match ({', '.join(files[h].name for h in hits)}); "
                         f"name the one to score {case}.nii.gz")
    return files[hits[0]] if hits else None


def _check_table_output(path: str, inputs: list[Path]) -> Path:
    from ..image_io import check_output_paths
    if Path(path).suffix.lower() not in _TABLE_SUFFIXES:
        raise ValueError(f"--output {Path(path).name}: the table is written as .csv or .json; choose such a file name")
    return check_output_paths({"--output": path}, inputs, formats=_TABLE_SUFFIXES)["--output"]


def _write_table(out: Path, rows: list[dict], means: dict) -> None:
    """Write atomically (temp file + rename): an interrupted run never leaves half a table."""
    import io

    from ..image_io import atomic_write
    if out.suffix.lower() == ".json":
        text = json.dumps({"cases": rows, **{f"mean_{k}": v for k, v in means.items()}}, indent=2)
    else:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    with atomic_write(out, newline="") as fh:
        fh.write(text)


def run(args: argparse.Namespace) -> int:
    rows = []
    inputs = [Path(p) for p in (args.prediction, args.reference) if p]
    out = _check_table_output(args.output, inputs) if args.output else None
    if args.prediction or args.reference:
        if not (args.prediction and args.reference):
            raise ValueError("give both --prediction and --reference")
        rows.append({"case": Path(args.prediction).name, **_score(Path(args.prediction), Path(args.reference),
                                                                    args.labels, args.threshold)})
    elif args.predictions_dir and args.cases:
        pred_dir, cases = Path(args.predictions_dir), Path(args.cases)
        if not cases.is_dir():
            raise FileNotFoundError(f"--cases folder not found: {cases}")
        if not pred_dir.is_dir():
            raise FileNotFoundError(f"--predictions-dir folder not found: {pred_dir}")
        files = {stem: q for q in pred_dir.iterdir() if q.is_file() and (stem := _image_stem(q)) is not None}
        case_dirs = sorted(d for d in cases.iterdir() if d.is_dir())
        names = [d.name for d in case_dirs]
        for case_dir in case_dirs:
            ref = case_dir / f"{case_dir.name}_seg.nii.gz"
            pred = _find_prediction(files, case_dir.name, names) if ref.exists() else None
            if pred is not None:
                rows.append({"case": case_dir.name, **_score(pred, ref, args.labels, args.threshold)})
        if not rows:
            raise ValueError(f"no prediction in {pred_dir} matched a case with labels in {cases}")
    else:
        raise ValueError("give --prediction and --reference, or --predictions-dir and --cases")
    means = _means(rows)
    for r in rows:
        print(_line(r["case"], r, r.get("undefined")))
    if len(rows) > 1:
        print(_line("mean (defined cases)", means))
    if out is not None:
        _write_table(out, rows, means)
        print(f"wrote {out}", file=sys.stderr)
    return 0
