"""Training speed and memory of the CGC network (eq. 8, Adam), CPU and, when present, CUDA.

For each crop it times full optimisation steps (forward, eq. 8, backward, Adam) of the default
:class:`NetConfig` on random inputs with a blob-shaped P (median of ``--repeats`` steps after one
warm-up) and reports, measured in the same process:

* the CGC overhead: step time of the full model ÷ the "backbone + P" model (both paths off);
* activation memory: bytes of tensors autograd saves for backward (float32; and under bf16
  autocast, which is what CUDA training uses) plus parameters, gradients and Adam state — an
  estimate of GPU memory that does not need a GPU;
* peak RSS of the process (CPU);
* on CUDA: steps/s at 192×192×64 batch 2 with bf16, ``torch.cuda.max_memory_allocated`` and the
  estimated time of the paper's schedule (400 epochs × 228 subjects / batch 2).

Also re-measures the forward time of one 4-channel 128³ window for a few widths (the table in the
``NetConfig`` docstring). Writes the "train" section of docs/BENCHMARKS.md ("train-cuda" with ``--device cuda``;
``--no-write`` prints).

    python benchmarks/bench_train.py [--device cpu|cuda] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PAPER_EPOCHS, PAPER_SUBJECTS, PAPER_BATCH = 400, 228, 2


def _batch(crop_zyx, batch, device, torch):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, *crop_zyx, generator=g)
    p = torch.zeros(batch, 1, *crop_zyx)
    z, y, xx = crop_zyx
    p[:, :, z // 4: z // 2, y // 4: y // 2, xx // 3: xx // 2] = 1.0
    return x.to(device), p.to(device)


def _saved_bytes(net, x, p, cfg, amp_dtype, torch, cgc_loss, LossConfig):
    """Bytes autograd keeps for backward in one forward + loss (unique storages)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device_type=x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = net(x)
        loss, _ = cgc_loss(out, p, LossConfig(), cfg.patch_size_zyx)
    del loss, out
    return total[0]


def _make_step(net, opt, x, p, cfg, amp, torch, cgc_loss, LossConfig):
    def step():
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss, _ = cgc_loss(out, p, LossConfig(), cfg.patch_size_zyx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
    return step


def _interleaved_medians(steps: dict, repeats: int) -> dict:
    """Warm up each step once, then time them in turn (so background load hits all alike)."""
    for f in steps.values():
        f()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, f in steps.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from CGCLesionSegLib.config import xyz_to_zyx
    from CGCLesionSegLib.losses import LossConfig, cgc_loss
    from CGCLesionSegLib.network import CGCNet, NetConfig, count_parameters

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    lines = []
    default = NetConfig()
    n_params = count_parameters(CGCNet(default))
    state_bytes = n_params * 4 * 4  # weights + grads + Adam m and v, float32

    # --- window forward time per width (inference-relevant; the NetConfig docstring table) ------------------
    widths = [((8, 16, 32, 64), (0, 1, 1, 2)), ((8, 24, 48, 96), (0, 1, 1, 2)), ((16, 32, 64, 128), (0, 1, 1, 2))]
    fwd_rows = []
    if device.type == "cpu":
        x = torch.randn(1, 4, 128, 128, 128)
        nets = [CGCNet(NetConfig(widths=w, blocks=b)).eval() for w, b in widths]
        res = {i: [] for i in range(len(nets))}
        with torch.inference_mode():
            for net in nets:
                net.segment_logits(x)
            for _ in range(args.repeats):  # interleaved, so background load hits every config alike
                for i, net in enumerate(nets):
                    t = time.perf_counter()
                    net.segment_logits(x)
                    res[i].append(time.perf_counter() - t)
        base = statistics.median(res[1])
        for i, (w, b) in enumerate(widths):
            med = statistics.median(res[i])
            fwd_rows.append(f"| {w} / {b} | {count_parameters(nets[i]) / 1e6:.2f} M | {med:.2f} s | "
                            f"{med / base:.2f} |")
        del nets

    # --- training steps ------------------------------------------------------------------------------------
    # 192×192×64: the paper's crop; 96×96×64: the shipped recipe's (at 2 mm).
    crops = [(192, 192, 64), (96, 96, 64)]
    rows = []
    for crop in crops:
        crop_zyx = xyz_to_zyx(crop)
        x, p = _batch(crop_zyx, PAPER_BATCH, device, torch)
        amp = device.type == "cuda"
        full_cfg, bb_cfg = default, NetConfig(coarse=False, fine=False)
        torch.manual_seed(0)
        full = CGCNet(full_cfg).to(device).train()
        torch.manual_seed(0)
        bb = CGCNet(bb_cfg).to(device).train()
        steps = {"full": _make_step(full, torch.optim.Adam(full.parameters(), lr=1e-4), x, p, full_cfg, amp,
                                    torch, cgc_loss, LossConfig),
                 "backbone": _make_step(bb, torch.optim.Adam(bb.parameters(), lr=1e-4), x, p, bb_cfg, amp,
                                        torch, cgc_loss, LossConfig)}
        if device.type == "cuda":
            # Steady state: the first step also holds cuDNN's algorithm search and creates Adam's state.
            steps["full"]()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            steps["full"]()
            peak_cuda = torch.cuda.max_memory_allocated()
        else:
            peak_cuda = None
        med = _interleaved_medians(steps, args.repeats)
        s32 = _saved_bytes(full, x, p, full_cfg, None, torch, cgc_loss, LossConfig)
        s16 = _saved_bytes(full, x, p, full_cfg, torch.bfloat16, torch, cgc_loss, LossConfig)
        results = {"full": (med["full"], peak_cuda, s32, s16), "backbone": (med["backbone"],)}
        del full, bb, steps
        t_full, peak_cuda, s32, s16 = results["full"]
        t_bb = results["backbone"][0]
        gib = 1024 ** 3
        row = (f"| {crop[0]}×{crop[1]}×{crop[2]} | {PAPER_BATCH} | {t_full:.2f} s | {1 / t_full:.3f} | "
               f"{t_full / t_bb:.2f} | {(s32 + state_bytes) / gib:.2f} GiB | {(s16 + state_bytes) / gib:.2f} GiB |")
        if device.type == "cuda":
            row += f" {peak_cuda / gib:.2f} GiB |"
        rows.append(row)
        if device.type == "cuda" and crop == (192, 192, 64):
            steps = PAPER_EPOCHS * -(-PAPER_SUBJECTS // PAPER_BATCH)
            lines.append(f"Paper schedule ({PAPER_EPOCHS} epochs × {PAPER_SUBJECTS} subjects, batch {PAPER_BATCH} = "
                         f"{steps} steps) at {1 / t_full:.2f} steps/s: ≈ {steps * t_full / 3600:.1f} h on one GPU.")
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

    from _report import machine_line
    head = ["## train" + ("" if device.type == "cpu" else f" ({device.type.upper()})"), "", "Script: `python benchmarks/bench_train.py --device " + args.device + "`. " + machine_line(),
            f"Default NetConfig: widths {default.widths}, blocks {default.blocks}, {n_params / 1e6:.2f} M parameters; "
            "one step = forward, eq. 8 (BCE + coarse + fine), backward, Adam; random inputs, median of "
            f"{args.repeats} steps after a warm-up, {args.threads} threads.", ""]
    cols = ("| crop x×y×z | batch | step time | steps/s | full ÷ backbone+P | est. memory fp32 | "
            "est. memory bf16 autocast |")
    sep = "|---|---|---|---|---|---|---|"
    if device.type == "cuda":
        cols += " CUDA peak allocated |"
        sep += "---|"
    body = head + [cols, sep] + rows + [""]
    body.append("\"est. memory\" = tensors autograd saves for backward (unique storages) + weights, gradients and "
                "Adam state; it is what a GPU needs beyond the CUDA context (~0.5 GB). The 7 GB target at "
                "192×192×64 batch 2 with bf16 is met when the bf16 column is well under 6 GiB.")
    body.append(f"Peak RSS of this process (CPU, all runs above): {peak_rss_gib:.2f} GiB.")
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body.append(f"1-minute load average at start / end: {load_start:.1f} / {load_end:.1f} (the box is shared; with "
                f"load above the core count, absolute times are inflated — ratios from interleaved runs less so).")
    if device.type == "cpu":
        body.append("No GPU on this machine: GPU steps/s and the paper-schedule estimate are not measured here; run "
                    "`python benchmarks/bench_train.py --device cuda` on a GPU machine to add them.")
    body += lines
    if fwd_rows:
        body += ["", "Forward time of one 4-channel 128×128×128 window (`segment_logits`, eval, inference mode), "
                 "interleaved runs, ratio to the default:", "",
                 "| widths / blocks | params | forward | ÷ default |", "|---|---|---|---|"] + fwd_rows
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        from _report import write_section
        # The CPU section stays "train"; a GPU run gets its own section instead of replacing it.
        write_section("train" if device.type == "cpu" else f"train-{device.type}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
