"""Tune and measure the channel check (CGCLesionSegLib.channel_check) on real cases.

    python scripts/channel_check_eval.py --tune          # profile + margin from ../shared/data/brats
    python scripts/channel_check_eval.py                 # detection table: brats (tuning), unlabelled
                                                         # and ms_isbi2015 (validation), unchanged

For every case: the correct naming, the same after z-scoring and after min-max scaling each volume,
and each pairwise swap among FLAIR, T1 and T2 (T1 <-> T1ce reported apart). A swap counts as detected
when the intensity check flags it (the file-name check would flag every swap of these BraTS-named
files, so it is left out of the table); a correct naming counts as a false alarm when anything warns.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

from CGCLesionSegLib import channel_check as cc  # noqa: E402

MODS = ("flair", "t1", "t1ce", "t2")
SWAPS = (("flair", "t1"), ("flair", "t2"), ("t1", "t2"), ("t1", "t1ce"))


def data_root() -> Path:
    return Path(os.environ.get("CGC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_case(case_dir: Path, mods) -> tuple[list[np.ndarray], list[str], np.ndarray | None]:
    import SimpleITK as sitk
    read = lambda p: sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float32)
    paths = [str(case_dir / f"{case_dir.name}_{m}.nii.gz") for m in mods]
    mask_path = case_dir / f"{case_dir.name}_mask.nii.gz"
    return [read(p) for p in paths], paths, (read(mask_path) > 0 if mask_path.exists() else None)


def variants(channels):
    yield "as given", channels
    yield "z-scored", [(c - c.mean()) / c.std() for c in channels]
    yield "min-max", [(c - c.min()) / (c.max() - c.min()) for c in channels]


def tune(cases) -> None:
    feats = {pair: [] for pair in itertools.permutations(MODS, 2)}
    loaded = []
    for d in cases:
        ch, _, mask = load_case(d, MODS)
        hi, lo = cc.signature(ch, mask)
        loaded.append((hi, lo))
        for a, b in feats:
            i, j = MODS.index(a), MODS.index(b)
            feats[(a, b)].append((hi[i, j], lo[i, j]))
    profile = {}
    print("PROFILE = {")
    for pair, values in feats.items():
        v = np.array(values)
        profile[pair] = (v[:, 0].mean(), v[:, 0].std(ddof=1), v[:, 1].mean(), v[:, 1].std(ddof=1))
        print(f"    {pair}: ({profile[pair][0]:.3f}, {profile[pair][1]:.3f}, {profile[pair][2]:.3f}, "
              f"{profile[pair][3]:.3f}),")
    print("}")
    # Margin: largest improvement any other naming achieves on correctly named cases vs the
    # smallest improvement of the correct naming over each swapped one.
    worst_correct, weakest_swap = -np.inf, np.inf
    for hi, lo in loaded:
        given, best, _ = cc.best_alternative(hi, lo, MODS, profile)
        worst_correct = max(worst_correct, given - best)
        for a, b in SWAPS[:3]:
            perm = [b if m == a else a if m == b else m for m in MODS]
            g, bst, _ = cc.best_alternative(hi, lo, perm, profile)
            weakest_swap = min(weakest_swap, g - bst)
    print(f"correct namings: best other naming better by at most {worst_correct:.3f}")
    print(f"swapped namings (FLAIR/T1/T2): improved by at least {weakest_swap:.3f}")


def evaluate(group: str, cases, mods) -> dict:
    rows = {}
    for d in cases:
        ch, paths, mask = load_case(d, mods)
        row = {}
        for label, chans in variants(ch):
            check = cc.check_channels(chans, list(mods), paths, mask)
            row[label] = check
        for a, b in SWAPS:
            if a not in mods or b not in mods:
                continue
            names = [b if m == a else a if m == b else m for m in mods]
            row[f"{a}<->{b}"] = cc.check_channels(ch, names, None, mask)
            row[f"{a}<->{b} (file)"] = cc.check_channels(ch, names, paths, mask, intensity=False)
        rows[d.name] = row
    return rows


def subsets_summary(group: str, cases) -> None:
    """Two or three inputs (e.g. FLAIR + T2): correct naming quiet? each swap flagged?"""
    print(f"\n{group}, subsets of the inputs (intensity check alone):\n")
    loaded = [load_case(d, MODS) for d in cases]
    for k in (2, 3):
        for subset in itertools.combinations(range(len(MODS)), k):
            names = [MODS[i] for i in subset]
            quiet, swaps = 0, {}
            for ch, _, mask in loaded:
                chans = [ch[i] for i in subset]
                quiet += cc.check_channels(chans, names, None, mask).ok
                for a, b in itertools.combinations(range(k), 2):
                    perm = list(names)
                    perm[a], perm[b] = perm[b], perm[a]
                    key = f"{names[a]}<->{names[b]}"
                    swaps[key] = swaps.get(key, 0) + (not cc.check_channels(chans, perm, None, mask).ok)
            n = len(loaded)
            print(f"- {'+'.join(names)}: correct quiet {quiet}/{n}; " +
                  ", ".join(f"{key} flagged {v}/{n}" for key, v in swaps.items()))


def table(group: str, rows: dict) -> None:
    print(f"\n### {group}\n")
    cols = list(next(iter(rows.values())).keys())
    cols = [c for c in cols if not c.endswith("(file)")]
    print("| case | " + " | ".join(cols) + " | misfit given / best other |")
    print("|---|" + "---|" * (len(cols) + 1))
    for case, row in rows.items():
        cells = []
        for c in cols:
            flagged = not row[c].ok
            det = row[c].details["intensity"] or {}
            gap = f" ({det['misfit'] - det['best_other_misfit']:+.2f})" if "misfit" in det else ""
            cells.append((("**flagged**" if flagged else "missed") if "<->" in c else ("WARNS" if flagged else "quiet")) + gap)
        det = row["as given"].details["intensity"]
        fit = f"{det['misfit']:.2f} / {det['best_other_misfit']:.2f}" if "misfit" in det else det.get("skipped", "")
        print(f"| {case} | " + " | ".join(cells) + f" | {fit} |")
    n = len(rows)
    summary = []
    for c in cols:
        k = sum(not r[c].ok for r in rows.values())
        summary.append(f"{c}: {k}/{n} {'flagged' if '<->' in c else 'warn'}")
    file_cols = [c for c in next(iter(rows.values())) if c.endswith("(file)")]
    for c in file_cols:
        summary.append(f"{c}: {sum(not r[c].ok for r in rows.values())}/{n}")
    print("\n" + "; ".join(summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune", action="store_true", help="print the profile and margins from brats/")
    args = ap.parse_args()
    root = data_root()
    if not (root / "brats").is_dir():
        print(f"no data at {root}", file=sys.stderr)
        return 1
    brats = sorted(p for p in (root / "brats").iterdir() if p.is_dir())
    if args.tune:
        tune(brats)
        return 0
    print(f"channel check: margin {cc.MARGIN}, tail {cc.TAIL}")
    table("brats (tuning)", evaluate("brats", brats, MODS))
    subsets_summary("brats", brats)
    unlabelled = sorted(p for p in (root / "unlabelled").iterdir() if p.is_dir())
    table("unlabelled (validation)", evaluate("unlabelled", unlabelled, MODS))
    subsets_summary("unlabelled", unlabelled)
    table("ms_isbi2015 (validation, FLAIR only)",
          evaluate("ms", sorted((root / "ms_isbi2015").iterdir()), ("flair",)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
