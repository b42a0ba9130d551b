"""How much of the brain P leaves undecided, per training case (issue 9; label-free).

The network is trained with BCE on P (the paper's GMM posterior). Where P is neither near 0 nor near 1
the target itself is uncertain; this script reports, for each case cached by a training run (the P and
brain mask on the training grid, ``RUN_DIR/cache/<case>-<hash>.{prob,mask}.npy``), the share of brain
voxels with P >= 0.5, with 0.1 < P < 0.9, with 0.1 <= P < 0.2, and the mean P. No label is read.

    python benchmarks/p_haze.py RUN_DIR [RUN_DIR ...]

Cases cached by several runs are counted once (the first run's cache). Writes the docs/BENCHMARKS.md
section ``p-haze``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def shares(prob: np.ndarray, mask: np.ndarray) -> dict:
    """Shares of the brain voxels (``mask``, bool ``(Z, Y, X)``) by P (``prob``, same shape) and mean P."""
    v = np.asarray(prob, np.float64)[np.asarray(mask, bool)]
    if v.size == 0:
        raise ValueError("the brain mask is empty")
    return {"p_ge_0.5": float((v >= 0.5).mean()), "undecided_0.1_0.9": float(((v > 0.1) & (v < 0.9)).mean()),
            "low_0.1_0.2": float(((v >= 0.1) & (v < 0.2)).mean()), "mean_p": float(v.mean()), "voxels": int(v.size)}


def cases_of(runs: list[Path]) -> dict:
    """{case name: (prob path, mask path)} over the runs' caches, first run first."""
    out: dict = {}
    for run in runs:
        for prob in sorted((run / "cache").glob("*.prob.npy")):
            name = prob.name[:-len(".prob.npy")].rsplit("-", 1)[0]
            out.setdefault(name, (prob, prob.with_name(prob.name.replace(".prob.npy", ".mask.npy"))))
    return out


def main(argv=None) -> int:
    runs = [Path(a).resolve() for a in (argv if argv is not None else sys.argv[1:])]
    if not runs:
        raise SystemExit(__doc__)
    found = cases_of(runs)
    if not found:
        raise SystemExit("no cached P (cache/*.prob.npy) in the given run folders")
    rows = {n: shares(np.load(p), np.load(m)) for n, (p, m) in sorted(found.items())}
    lines = ["### How much of the brain P leaves undecided (`benchmarks/p_haze.py`)", "",
             "Label-free; P (the paper's GMM posterior) and the brain mask as cached by the training runs "
             f"({', '.join(f'`{r.relative_to(ROOT) if r.is_relative_to(ROOT) else r}`' for r in runs)}), on the training grid.", "",
             "| case | P ≥ 0.5 | 0.1 < P < 0.9 | 0.1 ≤ P < 0.2 | mean P |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['p_ge_0.5']:.3f} | {r['undecided_0.1_0.9']:.3f} | {r['low_0.1_0.2']:.3f} | {r['mean_p']:.3f} |"
              for n, r in rows.items()]
    from _report import write_section
    print("\n".join(lines))
    write_section("p-haze", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
