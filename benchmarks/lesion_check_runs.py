"""The post-training lesion check (CGCTraining.sanity) on existing run folders, from their own caches.

Runs trained before the check existed have no ``lesion_check.json``; this recomputes it for them (no label
is read) and writes the section ``lesion-check`` of docs/BENCHMARKS.md:

    python benchmarks/lesion_check_runs.py RUN_DIR [RUN_DIR ...] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))
sys.path.insert(0, str(ROOT))


def cached_cases(run: Path) -> list:
    """The run's cache entries (``RUN_DIR/cache/<stem>.{image,prob,mask}.npy``) as CachedCase objects."""
    import numpy as np
    from CGCTraining.data import CachedCase
    cases = []
    for manifest in sorted((run / "cache").glob("*.json")):
        stem = manifest.with_suffix("")
        arrays = {n: np.load(f"{stem}.{n}.npy", mmap_mode="r") for n in ("image", "prob", "mask")}
        cases.append(CachedCase(json.loads(manifest.read_text()).get("case", stem.name), arrays["image"],
                                arrays["prob"], arrays["mask"]))
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import torch
    from _report import machine_line, write_section
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from CGCTraining.sanity import COLLAPSE_RATIO, lesion_check
    rows = ["| run | checked cases | network voxels ≥ 0.5 | target voxels ≥ 0.5 | ratio | collapsed |", "|---|---|---|---|---|---|"]
    for run in args.runs:
        crop_xyz = read_checkpoint(run / "last.pt")["train_config"]["crop_xyz"]
        c = lesion_check(run / "last.pt", cached_cases(run), tuple(reversed(crop_xyz)), torch.device("cpu"))
        name = str(run.resolve().relative_to(ROOT)) if run.resolve().is_relative_to(ROOT) else str(run)
        rows.append(f"| `{name}` | {', '.join(c['cases'])} | {c['network_voxels']} | {c['target_voxels']} | "
                    f"{c['ratio']:.3f} | {'**yes**' if c['collapsed'] else 'no'} |" if c["ratio"] is not None
                    else f"| `{name}` | — | — | — | — | no target voxel |")
    text = "\n".join([f"## Lesion check after training (`benchmarks/lesion_check_runs.py`)", "",
                      "The label-free check every training run now ends with (`CGCTraining/sanity.py`): the saved "
                      "model segments the two training cases whose target marks the most voxels, on the training "
                      f"grid; ratio = its voxels ≥ 0.5 over the target's; collapsed below {COLLAPSE_RATIO}. These runs "
                      "predate the check, so it is recomputed from their caches.", "", *rows, "", machine_line()])
    print(text)
    if not args.no_write:
        write_section("lesion-check", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
