"""How much self-training's targets change from one round to the next (issue 9; label-free).

Each self-training round trains on binary pseudo-labels that the previous round's model wrote
(``RUN-pseudo/<case>.nii.gz``, see ``benchmarks/protocol.py``). For two such folders (an earlier and a
later round of the same fold), this prints per case the two target volumes and their Dice: a round that
barely changes its targets cannot teach the next model much, and one that shrinks or grows them shows
which way the rounds drift. No reference label is read.

    python benchmarks/pseudo_label_drift.py EARLIER_PSEUDO_DIR LATER_PSEUDO_DIR [MORE PAIRS ...] [--section NAME]

Cases are those present in both folders of a pair. With ``--section`` the table is written into
docs/BENCHMARKS.md under that name.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))


def drift(earlier: np.ndarray, later: np.ndarray, voxel_ml: float) -> dict:
    """Volumes (mL) of two binary targets ``(Z, Y, X)`` on one grid and their Dice (1.0 when both are empty)."""
    from CGCLesionSegLib.metrics import dice
    a, b = np.asarray(earlier) > 0.5, np.asarray(later) > 0.5
    if a.shape != b.shape:
        raise ValueError(f"targets on different grids: {a.shape} vs {b.shape}")
    return {"earlier_ml": float(a.sum()) * voxel_ml, "later_ml": float(b.sum()) * voxel_ml, "dice": dice(b, a)}


def compare(earlier_dir: Path, later_dir: Path) -> dict:
    """{case: :func:`drift`} over the cases whose target both folders hold."""
    from CGCLesionSegLib.image_io import read_image
    out = {}
    for f in sorted(later_dir.glob("*.nii.gz")):
        g = earlier_dir / f.name
        if not g.exists():
            continue
        a, b = read_image(g), read_image(f)
        out[f.name[:-len(".nii.gz")]] = drift(a.array_zyx, b.array_zyx, float(np.prod(b.geometry.spacing)) / 1000.0)
    return out


def _short(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def report(pairs: list[tuple[Path, Path, dict]]) -> str:
    def rel(p: Path) -> str:  # variant/run-pseudo: enough to tell the rounds and folds apart
        return "/".join(p.resolve().parts[-2:])
    lines = ["### Self-training targets from one round to the next (`benchmarks/pseudo_label_drift.py`)", "",
             "Label-free: per training case, the binary target of the earlier round and of the later round (each "
             "written by the previous round's model under `PSEUDO_RULE`), in mL, and their Dice. Folders: "
             + ", ".join(f"`{_short(d)}`" for d in dict.fromkeys(x.resolve().parent.parent for a, b, _ in pairs
                                                                  for x in (a, b))) + ".", "",
             "| earlier → later | case | earlier (mL) | later (mL) | later ÷ earlier | Dice |", "|---|---|---|---|---|---|"]
    for a, b, rows in pairs:
        for case, r in rows.items():
            ratio = r["later_ml"] / r["earlier_ml"] if r["earlier_ml"] else float("nan")
            lines.append(f"| `{rel(a)}` → `{rel(b)}` | {case} | {r['earlier_ml']:.1f} | {r['later_ml']:.1f} | "
                         f"{ratio:.3f} | {r['dice']:.3f} |")
        if rows:
            d = [r["dice"] for r in rows.values()]
            tot = sum(r["later_ml"] for r in rows.values()) / max(sum(r["earlier_ml"] for r in rows.values()), 1e-9)
            lines.append(f"| **{len(rows)} cases** | | | | **{tot:.3f}** (total) | **{np.mean(d):.3f}** "
                         f"(min {min(d):.3f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="pairs of pseudo-label folders: EARLIER LATER ...")
    ap.add_argument("--section", help="write the table into docs/BENCHMARKS.md under this name")
    args = ap.parse_args(argv)
    if len(args.dirs) % 2:
        raise SystemExit("give the folders in pairs: EARLIER LATER [EARLIER LATER ...]")
    pairs = []
    for a, b in zip(args.dirs[::2], args.dirs[1::2]):
        for d in (a, b):
            if not d.is_dir():
                raise SystemExit(f"{d} is not a folder of pseudo-labels")
        pairs.append((a, b, compare(a, b)))
    text = report(pairs)
    print(text)
    if args.section:
        from _report import write_section
        write_section(args.section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
