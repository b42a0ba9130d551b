"""Cost of the removed-lesions count that ``cgcseg segment`` adds to a keep-largest output rule.

On real tumour cases, the map is ``cgcseg gmm``'s recommended P (a stand-in for the fused map the shipped rule
thresholds: same grid, same kind of speckle) and the rule is the shipped FLAIR one (`single-lesion-recommended`
clean-up at 0.3, seed lesion choice). Times :func:`CGCLesionSegLib.inference.output_mask` (the rule's own clean-up,
the reference run in the same process) and :func:`CGCLesionSegLib.inference.removed_by_rule` (the count), median of
``--repeats`` runs per case; the ratio count / clean-up is what carries across machines and load.

    python benchmarks/bench_removed.py [--cases 3] [--repeats 5] [--no-write] [--note TEXT]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--note", default="", help="a sentence on the conditions (e.g. other work on the machine)")
    args = ap.parse_args(argv)

    from CGCLesionSegLib.gmm import ProbabilityMapSession, recommended_config
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset, removed_by_rule

    cases = sorted(d for d in (Path(args.data) / "brats").iterdir() if d.is_dir())[:args.cases]
    if not cases:
        print(f"no cases in {args.data}/brats", file=sys.stderr)
        return 1
    cfg = replace(InferenceConfig(**output_preset("single-lesion-recommended")), threshold=0.3)
    rows = []
    for case in cases:
        img = read_image(case / f"{case.name}_flair.nii.gz")
        gmm = ProbabilityMapSession([img.array_zyx], None, names=["flair"], spacing_xyz=img.geometry.spacing)
        res = gmm.run(recommended_config())
        prob, brain, spacing = res.probability, res.mask, img.geometry.spacing
        rule_s, count_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            mask = output_mask(prob, brain, cfg, spacing)
            rule_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            removed = removed_by_rule(prob, brain, cfg, mask, spacing)
            count_s.append(time.perf_counter() - t)
        r, c = statistics.median(rule_s), statistics.median(count_s)
        rows.append(f"| {case.name} | {r:.2f} s | {c:.2f} s | {c / r:.2f} | {removed['count']} / {removed['count_1ml']} |")
    text = "\n".join([
        "## Removed-lesions count (`benchmarks/bench_removed.py`)",
        "",
        f"What `removed_lesions` costs on top of the keep-largest clean-up (median of {args.repeats} runs per case; the map: "
        "the recommended GMM preset's P of the case's FLAIR, thresholded with the shipped FLAIR rule at 0.3).",
        "",
        "| case | clean-up (`output_mask`, reference) | count (`removed_by_rule`) | ratio | removed components / of >= 1 mL |",
        "|---|---|---|---|---|",
        *rows,
    ] + (["", args.note] if args.note else []))
    from _report import machine_line, publish
    publish("removed-lesions", text + "\n\n" + machine_line(), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
