"""Speed of the GMM stage on a real 240×240×155 case: one refit = EM fit + P on every brain voxel.

Compared in the same process with scikit-learn's GaussianMixture (the reference), fitted on all
brain voxels and, as a second reference, on the same 100k subsample, each followed by
predict_proba on every brain voxel. The whole measurement is repeated ``--rounds`` times (each
round: medians of ``--repeats`` refits; scikit-learn's all-voxel fit once per round) and the
medians over rounds are reported, with the ratio ours/scikit-learn taken within each round — on a
shared machine the absolute times drift with the load, the within-round ratios much less.

Run from the repository root:  python benchmarks/bench_gmm.py [--case DIR] [--rounds 3] [--repeats 5]
It writes the "gmm-speed" section of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from CGCLesionSegLib.gmm import GMMConfig, ProbabilityMapSession, recommended_config  # noqa: E402
from CGCLesionSegLib.image_io import read_image  # noqa: E402

MODALITIES = ("flair", "t1", "t1ce", "t2")
CONFIGS = {
    "4 channels, K=4 (the target case)": GMMConfig(n_clusters=4, channels=None),
    "FLAIR only, K=4 (GMMConfig() default)": GMMConfig(n_clusters=4),
    "4 channels, K=8": GMMConfig(n_clusters=8, channels=None),
    "FLAIR, recommended_config() (5 fits, K=4..8)": recommended_config(),
}
TARGET = "4 channels, K=4 (the target case)"


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one_round(chans, repeats: int) -> dict:
    out: dict = {}
    for label, cfg in CONFIGS.items():
        t = time.perf_counter()
        session = ProbabilityMapSession(chans, None)
        res = session.run(cfg)
        out[(label, "first")] = time.perf_counter() - t

        def refit(cfg=cfg, session=session):
            session.clear_fits()  # force EM + full posterior, keep the prepared voxels
            return session.run(cfg)
        out[(label, "refit")] = timed(refit, repeats)
        if cfg.ensemble_clusters is None:
            k = cfg.n_clusters
            out[(label, "fg")] = timed(lambda: session.run(replace(cfg, foreground_components=(k - 2, k - 1))), repeats)
        out[(label, "iters")] = int(res.model.n_iter_)
        if label == TARGET:
            out["X"] = np.ascontiguousarray(session.prepared.features)
            out["sub"] = np.ascontiguousarray(session.prepared.fit_rows(100_000, 0))
            out["model"] = res.model
    from sklearn.mixture import GaussianMixture
    X, sub = out.pop("X"), out.pop("sub")

    def sk_full():
        gm = GaussianMixture(4, covariance_type="full", random_state=0).fit(X)
        gm.predict_proba(X)
        return gm
    t = time.perf_counter()
    gm = sk_full()
    out["sk_full"] = time.perf_counter() - t
    out["sk_sub"] = timed(lambda: GaussianMixture(4, covariance_type="full", random_state=0).fit(sub).predict_proba(X),
                          max(1, repeats // 2))
    gm_sub = GaussianMixture(4, covariance_type="full", random_state=0).fit(sub)
    out["ll"] = (float(out.pop("model").score(X)), float(gm.score(X)), float(gm_sub.score(X)))
    out["n"] = X.shape[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default=None, help="BraTS case folder (default: first of ../shared/data/brats)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.case:
        case = Path(args.case)
    else:
        root = ROOT.parent / "shared" / "data" / "brats"
        cases = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
        if not cases:
            print(f"no case found under {root}", file=sys.stderr)
            return 2
        case = cases[0]
    chans = [read_image(case / f"{case.name}_{m}.nii.gz").array_zyx for m in MODALITIES]
    shape = chans[0].shape
    loads = [os.getloadavg()[0]]
    rounds = []
    for r in range(args.rounds):
        rounds.append(one_round(chans, args.repeats))
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}: target refit {rounds[-1][(TARGET, 'refit')]:.3f} s, scikit-learn all-voxel "
              f"{rounds[-1]['sk_full']:.2f} s, load {loads[-1]:.1f}", file=sys.stderr)

    def med(key):
        return statistics.median(r[key] for r in rounds)
    ratio_full = statistics.median(r["sk_full"] / r[(TARGET, "refit")] for r in rounds)
    ratio_sub = statistics.median(r["sk_sub"] / r[(TARGET, "refit")] for r in rounds)
    busy = max(loads) > 1.5
    import torch
    from _report import machine_line
    lines = ["## GMM speed (`benchmarks/bench_gmm.py`)", "",
             f"Case {case.name}, {shape[2]}×{shape[1]}×{shape[0]} (x×y×z), {rounds[0]['n']} brain voxels. A *refit* = "
             "EM on a 100k-voxel subsample + posterior and P of every brain voxel + label map (what the GUI "
             "does when K changes); *foreground-only* = other lesion components, no refit (the GUI's component "
             f"picking). Medians over {args.rounds} rounds of the per-round medians of {args.repeats} refits; "
             "ratios to scikit-learn are taken within each round, then the median.",
             f"{machine_line()} 1-min load average during the runs: {min(loads):.1f}–{max(loads):.1f} "
             + ("(**the machine was loaded by other engineers' jobs**: absolute times are inflated, the ratios less)."
                if busy else "(machine otherwise idle)."),
             "", "| configuration | first call (incl. reading mask + normalising) | **refit** | foreground-only | EM iterations |",
             "|---|---|---|---|---|"]
    for label in CONFIGS:
        fg = f"{med((label, 'fg')) * 1000:.0f} ms" if (label, "fg") in rounds[0] else "—"
        lines.append(f"| {label} | {med((label, 'first')):.2f} s | **{med((label, 'refit')):.3f} s** | {fg} | "
                     f"{rounds[0][(label, 'iters')]} |")
    ll_ours, ll_sk, ll_sk_sub = rounds[-1]["ll"]
    lines += ["", "| reference, same voxels (4 channels, K=4, full covariance) | time | ratio to our refit |", "|---|---|---|",
              f"| scikit-learn GaussianMixture fit on all voxels + predict_proba | {med('sk_full'):.2f} s | ×{ratio_full:.0f} |",
              f"| scikit-learn fit on the same 100k subsample + predict_proba on all | {med('sk_sub'):.2f} s | ×{ratio_sub:.1f} |",
              "", f"Target: ≤ 0.3 s per refit for K = 4 on a four-channel case, 2 cores: **{med((TARGET, 'refit')):.3f} s**. "
              f"Mean log-likelihood per voxel on all voxels: ours (fit on the subsample) {ll_ours:.4f}, scikit-learn "
              f"fit on the same subsample {ll_sk_sub:.4f}, scikit-learn fit on all voxels {ll_sk:.4f} (differences "
              f"of this size are other local optima of EM — they change with the seed — not fitting error). Threads: numpy/OpenBLAS default, torch {torch.get_num_threads()} (unused here)."]
    if busy:
        # The issue measured the subsampled scikit-learn run at 0.55-0.9 s on this machine when quiet;
        # the within-round ratio carries over to that state.
        lines += ["", f"On a quiet machine the subsampled scikit-learn run takes 0.55–0.9 s (issue 3); with the "
                  f"within-round ratio ×{ratio_sub:.1f} that corresponds to a refit of about "
                  f"{0.55 / ratio_sub:.2f}–{0.9 / ratio_sub:.2f} s (an inference from the ratio, not a measurement)."]
    from _report import publish
    publish("gmm-speed", "\n".join(lines), not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
