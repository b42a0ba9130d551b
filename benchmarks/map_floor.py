"""Where a trained model's map sits where its own training target says "no lesion" (issue 9, cgc-v17).

Label-free: for each run folder, the model segments the training cases its lesion check used (the two
whose target marks the most voxels; cached images on the training grid) and the script reports the
network's probability where the target is below 0.1 and outside the brain (10th / 50th / 90th
percentile), the lesion head's bias and the BCE of the last logged step. A well-fitted map is near 0
there; the shipped recipe's is not.

    python benchmarks/map_floor.py RUN_DIR [RUN_DIR ...]

Writes the docs/BENCHMARKS.md section ``map-floor``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))


def floor_of(run: Path) -> dict:
    """The numbers of one run folder (needs ``last.pt``, ``lesion_check.json``, ``loss_log.csv``, ``cache/``)."""
    import torch

    from CGCLesionSegLib.checkpoint import load_checkpoint, read_checkpoint
    from CGCLesionSegLib.inference import InferenceConfig, predict_probability
    model, info = load_checkpoint(run / "last.pt")
    window_xyz = tuple(info.train_config["crop_xyz"])
    bg, outside = [], []
    for name in json.loads((run / "lesion_check.json").read_text())["cases"]:
        stem = next((run / "cache").glob(f"{name}-*.image.npy")).name[:-len(".image.npy")]
        load = lambda kind: np.load(run / "cache" / f"{stem}.{kind}.npy")
        image, prob, mask = np.array(load("image"), np.float32), load("prob"), load("mask")
        out = predict_probability(model, image, InferenceConfig(pad_to_window=True), torch.device("cpu"),
                                  window_xyz=window_xyz)
        bg.append(out[mask & (prob < 0.1)])
        outside.append(out[~mask])
    with open(run / "loss_log.csv", newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    pct = lambda a: [float(v) for v in np.percentile(np.concatenate(a), [10, 50, 90])]
    return {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
            "target_below_0.1": pct(bg), "outside_brain": pct(outside),
            "head_bias": float(read_checkpoint(run / "last.pt")["model"]["head.bias"]),
            "last_step": int(last["step"]), "last_bce": float(last["bce"])}


def main(argv=None) -> int:
    runs = [Path(a).resolve() for a in (argv if argv is not None else sys.argv[1:])]
    if not runs:
        raise SystemExit(__doc__)
    rows = [floor_of(r) for r in runs]
    f = lambda v: " / ".join(f"{x:.2f}" for x in v)
    lines = ["### Network map where the training target is 0 (`benchmarks/map_floor.py`)", "",
             "Label-free; each model on the two training cases its lesion check used, on the training grid. "
             "Percentiles 10 / 50 / 90 of the network's probability.", "",
             "| run | target < 0.1 | outside the brain | head bias | BCE at the last step |", "|---|---|---|---|---|"]
    lines += [f"| `{r['run']}` | {f(r['target_below_0.1'])} | {f(r['outside_brain'])} | {r['head_bias']:+.2f} | "
              f"{r['last_bce']:.3f} (step {r['last_step']}) |" for r in rows]
    text = "\n".join(lines)
    print(text)
    from _report import write_section
    write_section("map-floor", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
