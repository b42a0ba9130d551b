"""Inference speed and memory of a whole real case (``cgcseg segment``'s engine), CPU and CUDA.

Times the network stage of :func:`CGCLesionSegLib.inference.segment_case` on a 240×240×155 four-
channel BraTS case (median of ``--repeats`` runs), next to a reference measured in the same process:
one 16-filter 3×3×3 convolution over the whole 4-channel volume (a hardware unit, so the ratio can be
compared across machines). Peak RAM is the max RSS of a separate ``cgcseg segment`` process.
Writes the "inference" section of docs/BENCHMARKS.md (or prints with ``--no-write``).

    python benchmarks/bench_inference.py [--model CKPT] [--device cpu|cuda] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _case(data: Path) -> Path:
    cases = sorted(d for d in (data / "brats").iterdir() if d.is_dir())
    return cases[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped 4-channel model, else a random-weight default net)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from CGCLesionSegLib.checkpoint import load_checkpoint, save_checkpoint
    from CGCLesionSegLib.default_models import available_default_models
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    from CGCLesionSegLib.network import CGCNet, NetConfig

    case = _case(Path(args.data))
    mods = ["flair", "t1", "t1ce", "t2"]
    images = [read_image(case / f"{case.name}_{m}.nii.gz") for m in mods]
    channels, geometry = [i.array_zyx for i in images], images[0].geometry
    tmp = Path(tempfile.mkdtemp())
    model_path = args.model or available_default_models().get(tuple(mods))
    model_note = "shipped 4-channel model"
    if model_path is None:
        # Speed does not depend on the weights: a randomly initialised default network is measured.
        from CGCLesionSegLib.config import config_to_dict
        from CGCLesionSegLib.preprocess import NormalizationConfig
        net_cfg = NetConfig(in_channels=4)
        model_path = save_checkpoint(tmp / "random.pt", CGCNet(net_cfg), net_cfg, mods,
                                     {"normalization": config_to_dict(NormalizationConfig()), "gmm": None,
                                      "spacing_xyz": [1.5, 1.5, 1.5]})
        model_note = "default NetConfig, random weights"
    device = torch.device(args.device)
    model, info = load_checkpoint(model_path, device=str(device))
    cfg = InferenceConfig(device=args.device)
    from CGCLesionSegLib.inference import LEGACY_WINDOW_XYZ, window_for_checkpoint
    window = window_for_checkpoint(cfg, info.train_config)
    # Reference in the same process: the window used before it followed the training crop.
    legacy_cfg = InferenceConfig(device=args.device, window_xyz=LEGACY_WINDOW_XYZ, overlap=0.25)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Reference: one Conv3d(4→16, 3³) over the full volume.
    ref_conv = torch.nn.Conv3d(4, 16, 3, padding=1).to(device)
    vol = torch.from_numpy(np.stack(channels)[None]).to(device)
    ref_times = []
    for _ in range(args.repeats):
        sync(); t = time.perf_counter()
        with torch.inference_mode():
            ref_conv(vol)
        sync(); ref_times.append(time.perf_counter() - t)
    del vol

    def timed(path, net, net_info) -> tuple[list, list]:
        """Whole-case and network-stage seconds of ``args.repeats`` runs after a warm-up."""
        totals, nets = [], []
        segment_case(channels, geometry, mods, path, None, cfg, compute_gmm=False, model=net, info=net_info)
        for _ in range(args.repeats):
            sync(); t = time.perf_counter()
            res = segment_case(channels, geometry, mods, path, None, cfg, compute_gmm=False, model=net, info=net_info)
            sync(); totals.append(time.perf_counter() - t)
            nets.append(res.timings["network_s"])
        return totals, nets

    totals, nets = timed(model_path, model, info)
    legacy = []
    for _ in range(args.repeats):
        sync(); t = time.perf_counter()
        segment_case(channels, geometry, mods, model_path, None, legacy_cfg, compute_gmm=False, model=model, info=info)
        sync(); legacy.append(time.perf_counter() - t)
    from CGCLesionSegLib.inference import output_preset

    def rule_times_of(rule: str) -> list:
        cfg_rule = InferenceConfig(device=args.device, **output_preset(rule))
        times = []
        for _ in range(args.repeats):
            sync(); t = time.perf_counter()
            segment_case(channels, geometry, mods, model_path, None, cfg_rule, model=model, info=info)
            sync(); times.append(time.perf_counter() - t)
        return times

    # The shipped models' default output rule adds a GMM fit, the fusion and the clean-up;
    # single-lesion-recommended fuses the recommended preset's map instead (its GMM fits K = 4..8).
    rule_times, rec_times = rule_times_of("single-lesion"), rule_times_of("single-lesion-recommended")

    # The other side of a seed ensemble's cost (`cgcseg ensemble`: one pass per network and window): for an
    # ensemble, its first network alone; for one network, a two-network ensemble of it with itself (cost only;
    # the accuracy of a real ensemble is protocol cgc-v28's).
    from CGCLesionSegLib.checkpoint import combine_checkpoints, first_member, read_checkpoint, save_checkpoint_dict
    pair = save_checkpoint_dict(tmp / "pair.pt", first_member(read_checkpoint(model_path)) if info.members > 1
                                else combine_checkpoints([model_path, model_path]))
    pair_totals, pair_nets = timed(pair, *load_checkpoint(pair, device=str(device)))

    # Peak RAM of the whole command in its own process (reads files, the model's default output rule —
    # single-lesion for a shipped model, GMM included —, writes outputs).
    cmd = [sys.executable, "-c",
           "import resource,sys; from CGCLesionSegLib.cli import main; rc=main(sys.argv[1:]); "
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
           "segment", *[f"--input={m}={case / f'{case.name}_{m}.nii.gz'}" for m in mods],
           "--model", str(model_path), "--output", str(tmp / "seg.nii.gz"), "--device", args.device, "--progress", "none"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    cli_s = time.perf_counter() - t
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return 1
    rss_gb = int(out.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024 ** 2
    # What any such command pays before it reads a voxel: Python, the torch import and (on a GPU) the CUDA
    # context, in a process of its own. On an H200 the command took longer than on 2 CPU cores.
    start = [sys.executable, "-c", f"import torch; torch.zeros(1, device={device.type!r}).sum().item()"]
    t = time.perf_counter()
    subprocess.run(start, capture_output=True, text=True, check=True)
    start_s = time.perf_counter() - t

    threads = torch.get_num_threads()
    med, ref = statistics.median(totals), statistics.median(ref_times)
    rows = [
        "## Inference (`benchmarks/bench_inference.py`" + ("" if device.type == "cpu" else f", {device.type.upper()}") + ")",
        "",
        f"Case {case.name} (240×240×155, 4 channels), model: {model_note} "
        + (f"(a seed ensemble of {info.members} networks, {sum(p.numel() for p in model.parameters()) / 1e6 / info.members:.2f} "
           "M parameters each), window " if info.members > 1 else
           f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), window ")
        + f"{'×'.join(map(str, window))} (the training crop recorded in the model; overlap {cfg.overlap}), model spacing {info.preprocessing.get('spacing_xyz')} mm (the case is "
        f"resampled to it and the outputs back to 1 mm; included in the times), device {device.type}, torch threads {threads}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| segment_case, whole case (median of {args.repeats}) | {med:.2f} s |",
        f"| of which network | {statistics.median(nets):.2f} s |",
        f"| the same with the earlier default window {'×'.join(map(str, LEGACY_WINDOW_XYZ))}, overlap 0.25 | "
        f"{statistics.median(legacy):.2f} s (ratio default / earlier {med / statistics.median(legacy):.2f}) |",
        f"| segment_case with the output rule single-lesion (+ GMM fit, fusion, clean-up) | {statistics.median(rule_times):.2f} s |",
        f"| segment_case with the output rule single-lesion-recommended (+ the recommended preset's GMM fit, K = 4..8) | "
        f"{statistics.median(rec_times):.2f} s |",
        (f"| segment_case with its first network alone | {statistics.median(pair_totals):.2f} s, of which network "
         f"{statistics.median(pair_nets):.2f} s (network ratio ensemble / one {statistics.median(nets) / statistics.median(pair_nets):.2f}) |"
         if info.members > 1 else
         f"| segment_case with a seed ensemble of 2 networks (`cgcseg ensemble`, the model with itself) | "
         f"{statistics.median(pair_totals):.2f} s, of which network {statistics.median(pair_nets):.2f} s "
         f"(network ratio ensemble / one {statistics.median(pair_nets) / statistics.median(nets):.2f}) |"),
        f"| reference: one Conv3d 4→16 3³ over the volume | {ref:.3f} s |",
        f"| ratio segment_case / reference | {med / ref:.1f} |",
        f"| `cgcseg segment` command end to end (read, infer with the model's default rule, write) | {cli_s:.1f} s |",
        f"| peak RAM of that command | {rss_gb:.2f} GB |",
        f"| of that command: Python, `import torch` and a first tensor on {device.type} (a process of its own) | "
        f"{start_s:.1f} s |",
        "",
        "Targets (issues 5 and 9): ≤ 20 s on 2 CPU cores, ≤ 1 s on an H200, ≤ 4 GB RAM on CPU.",
    ]
    text = "\n".join(rows)
    print(text)
    if not args.no_write:
        from _report import machine_line, write_section
        write_section(f"inference-{device.type}", text + "\n\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
