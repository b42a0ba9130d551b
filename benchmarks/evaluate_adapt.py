"""``cgcseg segment --adapt`` on real cases: Dice reached and time on this machine.

Two scenarios a user without a suitable model meets, each on the first ``--cases`` BraTS cases
(sorted names, declared before running):

* ``scratch``: inputs FLAIR + T2 — no shipped model has these modalities, so the default architecture is
  trained from scratch on the case itself for ``--minutes``;
* ``finetune``: inputs FLAIR, T1, T1ce, T2 — the shipped four-channel model is fine-tuned on the case, and
  the same command without ``--adapt`` is scored beside it. The shipped model trained on these cases, so this
  row is in-sample: it shows what adapting changes, not how the model generalises.
* ``finetune-flair``: the same with FLAIR alone and the shipped FLAIR model.

Dice of the CGC mask and of the GMM mask (P ≥ 0.5, the same P the adaptation trains on) against
seg > 0. Writes the "adapt" section of docs/BENCHMARKS.md.

    python benchmarks/evaluate_adapt.py --cases 3 --minutes 3
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
SCENARIOS = {"scratch": ["flair", "t2"], "finetune": ["flair", "t1", "t1ce", "t2"], "finetune-flair": ["flair"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.metrics import dice
    cases = sorted(d for d in (Path(args.data) / "brats").iterdir() if d.is_dir())[: args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="cgc-adapt-bench-"))
    rows = []
    for scenario in args.scenarios:
        mods = SCENARIOS[scenario]
        for case in cases:
            out = tmp / scenario / case.name
            segment = [sys.executable, "-m", "CGCLesionSegLib.cli", "segment",
                       *[f"--input={m}={case / f'{case.name}_{m}.nii.gz'}" for m in mods],
                       "--device", "cpu", "--progress", "none"]
            cmd = [*segment, "--output", str(out / "seg.nii.gz"), "--gmm-output", str(out / "gmm.nii.gz"),
                   "--adapt", "--adapt-minutes", str(args.minutes)]
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            ref = read_image(case / f"{case.name}_seg.nii.gz", dtype=None).array_zyx > 0
            base_dice = None
            if scenario.startswith("finetune"):  # the same command without --adapt: what adapting changes
                rb = subprocess.run([*segment, "--output", str(out / "base.nii.gz")], capture_output=True, text=True)
                if rb.returncode != 0:
                    print(rb.stderr, file=sys.stderr)
                    return 1
                base_dice = dice(read_image(out / "base.nii.gz").array_zyx > 0, ref)
            side = json.loads((out / "seg.nii.gz.json").read_text())
            rows.append({"scenario": scenario, "case": case.name,
                         "cgc_dice": dice(read_image(out / "seg.nii.gz").array_zyx > 0, ref),
                         "gmm_dice": dice(read_image(out / "gmm.nii.gz").array_zyx >= 0.5, ref),
                         "base_dice": base_dice,
                         "seconds": seconds, "steps": _steps(out)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    lines = ["## `segment --adapt` (`benchmarks/evaluate_adapt.py`)", "",
             f"Budget {args.minutes:g} min of training per case on CPU; first {len(cases)} cases (sorted). "
             "scratch = FLAIR+T2 inputs (no shipped model has them: trained from scratch on the case); finetune = "
             "the shipped four-channel model fine-tuned on the case (its first network; the output keeps the model's "
             "default rule and threshold), next to the same command without --adapt; finetune-flair = the same with "
             "FLAIR alone and the shipped FLAIR model. **In-sample for finetune**: the shipped models trained on these "
             "cases, so those rows show what adapting changes, not how it generalises. "
             "GMM = P ≥ 0.5 of the same P the adaptation trains on; CGC = the command's output mask.", "",
             "| scenario | case | GMM Dice | CGC Dice | without --adapt | steps | total time |",
             "|---|---|---|---|---|---|---|"]

    def fmt(v):
        return "—" if v is None else f"{v:.4f}"
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['case']} | {r['gmm_dice']:.4f} | {r['cgc_dice']:.4f} | "
                     f"{fmt(r['base_dice'])} | {r['steps']} | {r['seconds']:.0f} s |")
    for scenario in args.scenarios:
        sub = [r for r in rows if r["scenario"] == scenario]
        if sub:
            base = [r["base_dice"] for r in sub if r["base_dice"] is not None]
            lines.append(f"| **{scenario} mean** | | **{statistics.mean(r['gmm_dice'] for r in sub):.4f}** | "
                         f"**{statistics.mean(r['cgc_dice'] for r in sub):.4f}** | "
                         f"{fmt(statistics.mean(base)) if base else '—'} | | "
                         f"{statistics.mean(r['seconds'] for r in sub):.0f} s |")
    from _report import machine_line, publish
    publish("adapt", "\n".join(lines) + "\n\n" + machine_line(), not args.no_write)
    return 0


def _steps(out: Path):
    from CGCLesionSegLib.checkpoint import read_checkpoint
    return read_checkpoint(out / "seg.nii.gz.adapted.pt")["step"]


if __name__ == "__main__":
    sys.exit(main())
