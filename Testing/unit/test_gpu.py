"""CUDA checks (bf16 autocast inference, a training step, the shipped default output against the CPU, a CUDA
training run resumed and read back on the CPU); skipped on machines without a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CGCLesionSegLib.inference import InferenceConfig, predict_probability, resolve_device
from CGCLesionSegLib.losses import LossConfig, cgc_loss
from CGCLesionSegLib.network import CGCNet, NetConfig

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")


@needs_cuda
def test_bf16_cuda_inference_matches_cpu():
    torch.manual_seed(0)
    net = CGCNet(NetConfig(in_channels=2)).eval()
    image = np.random.default_rng(0).normal(size=(2, 40, 56, 48)).astype(np.float32)
    cfg = InferenceConfig(window_xyz=(32, 32, 32), overlap=0.5)
    cpu = predict_probability(net, image, cfg, torch.device("cpu"))
    gpu = predict_probability(net.cuda(), image, cfg, torch.device("cuda"))
    assert np.abs(cpu - gpu).max() < 0.05  # bf16 autocast
    assert np.abs(cpu - gpu).mean() < 0.01


@needs_cuda
def test_cuda_bf16_training_step_is_finite():
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=1, patch_size_xyz=(3, 3, 4))
    net = CGCNet(cfg).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(2, 1, 32, 48, 48, device="cuda")
    p = (torch.rand(2, 1, 32, 48, 48, device="cuda") > 0.7).float()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
    loss, _ = cgc_loss(out, p, LossConfig(), cfg.patch_size_zyx)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def _segment(args, threads: int = 4) -> subprocess.CompletedProcess:
    from test_training_synth import REPO, subprocess_env
    return subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", "segment", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=subprocess_env(threads), cwd=str(REPO))


@needs_cuda
def test_shipped_default_output_on_cuda_matches_cpu(tmp_path):
    """The user's path end to end: ``cgcseg segment`` with the shipped four-channel ensemble and its
    default output rule, on a generated phantom, once on the CPU (float32) and once on CUDA (bf16
    autocast). The thresholded maps may differ by bf16 rounding; the masks must agree."""
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    paths = save_phantom(make_phantom(seed=3), tmp_path / "case")
    out = {}
    for dev in ("cpu", "cuda"):
        seg, prob = tmp_path / dev / "seg.nii.gz", tmp_path / dev / "p.nii.gz"
        r = _segment([*[f"--input={m}={paths[m]}" for m in ("flair", "t1", "t1ce", "t2")], "--output", seg,
                      "--probability-output", prob, "--device", dev, "--progress", "none"])
        assert r.returncode == 0, r.stderr
        side = json.loads(Path(str(seg) + ".json").read_text())
        assert json.dumps(side).count(dev) >= 1  # the sidecar says where it ran
        out[dev] = (read_image(seg, dtype=None).array_zyx > 0, read_image(prob).array_zyx)
    (m_cpu, p_cpu), (m_gpu, p_gpu) = out["cpu"], out["cuda"]
    assert m_cpu.sum() > 1000  # a lesion was found, so the agreement below means something
    dice = 2 * np.logical_and(m_cpu, m_gpu).sum() / (m_cpu.sum() + m_gpu.sum())
    assert dice >= 0.99, dice
    diff = np.abs(p_cpu - p_gpu)
    assert diff.max() < 0.05 and diff.mean() < 0.002, (diff.max(), diff.mean())


@needs_cuda
def test_cuda_training_resumes_and_its_checkpoint_loads_on_cpu(tmp_path):
    """``python -m CGCTraining --device cuda`` (bf16 autocast), stopped at step 4 and resumed to 6; the
    checkpoint is then read on a machine without a GPU (tensors saved on the CPU) and gives finite maps."""
    from CGCLesionSegLib.checkpoint import load_checkpoint, read_checkpoint
    from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_csv_with_prob
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    run = tmp_path / "run"
    args = ["--cases", cases, "--modalities", *MODS, "--output-dir", run, "--crop", "16", "16", "16",
            "--batch-size", "2", "--workers", "0", "--device", "cuda", "--checkpoint-every", "2",
            "--progress", "none", *TINY_NET_ARGS]
    r = run_cli([*args, "--steps", "4"])
    assert r.returncode == 0, r.stderr
    assert int(read_checkpoint(run / "last.pt")["step"]) == 4
    r = run_cli([*args, "--steps", "6", "--resume"])
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(run / "last.pt")
    assert int(ckpt["step"]) == 6
    assert all(t.device.type == "cpu" for t in ckpt["model"].values() if torch.is_tensor(t))
    model, info = load_checkpoint(run / "last.pt", device="cpu")
    x = torch.randn(1, len(MODS), 16, 16, 16)
    with torch.no_grad():
        logits = model(x)["logits"]
    assert logits.shape[-3:] == (16, 16, 16) and torch.isfinite(logits).all()


@needs_cuda
def test_segment_case_runs_a_model_loaded_on_the_cpu_on_cuda():
    """A pre-loaded model (cohort mode, the self-training round, the benchmarks load on the CPU) runs on the
    device the config names; this crashed with 'Input type (CUDABFloat16Type) and weight type
    (torch.FloatTensor)' before."""
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.default_models import default_model_path
    from CGCLesionSegLib.inference import segment_case
    from CGCLesionSegLib.phantom import make_phantom
    ph = make_phantom(seed=4)
    mods = ["flair", "t1", "t1ce", "t2"]
    path = default_model_path(mods)
    model, info = load_checkpoint(path)  # on the CPU
    res = {dev: segment_case([ph.channels[m] for m in mods], ph.geometry, mods, path, compute_gmm=False,
                             config=InferenceConfig(device=dev), model=model, info=info) for dev in ("cuda", "cpu")}
    assert res["cuda"].device.startswith("cuda")
    assert np.abs(res["cuda"].probability - res["cpu"].probability).max() < 0.05


@needs_cuda
def test_self_training_round_on_cuda(tmp_path):
    """``--self-train-rounds 1 --device cuda``: the first round's pseudo-labels are written on the GPU and the
    second round trains on them (the shipped recipe crashed here on CUDA before)."""
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from test_training_synth import MODS, TINY_NET_ARGS, run_cli, write_brats_folder
    cases = write_brats_folder(tmp_path / "cases", n_cases=2)
    run = tmp_path / "run"
    r = run_cli(["--cases", cases, "--output-dir", run, "--self-train-rounds", "1", "--modalities", *MODS,
                 "--crop", "16", "16", "16", "--batch-size", "1", "--workers", "0", "--device", "cuda", "--steps", "2",
                 "--progress", "none", "--checkpoint-every", "1", *TINY_NET_ARGS, "--overgrowth-ratio", "1000"],
                timeout=600)
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run / "self-train-1" / "last.pt")["step"] == 2
    assert len(list((run / "self-train-1" / "targets").glob("*.nii.gz"))) == 2


@needs_cuda
def test_torchrun_one_gpu_nccl(tmp_path):
    """torchrun on a GPU takes the NCCL backend; one process on one GPU trains and writes its checkpoint."""
    import socket
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from test_training_synth import MODS, REPO, TINY_NET_ARGS, subprocess_env, write_csv_with_prob
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cases = write_csv_with_prob(tmp_path / "list", n_cases=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "CGCTraining",
           "--cases", str(cases), "--modalities", *MODS, "--output-dir", str(run), "--crop", "16", "16", "16",
           "--batch-size", "1", "--steps", "3", "--workers", "0", "--device", "cuda", "--progress", "none",
           *TINY_NET_ARGS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(2), cwd=str(REPO))
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_checkpoint(run / "last.pt")["step"] == 3


@needs_cuda
def test_segment_adapt_on_cuda(tmp_path):
    """``cgcseg segment --adapt --device cuda``: the shipped four-channel model is fine-tuned on the case on the
    GPU, the case is segmented with it, and the adapted model is kept beside the output."""
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    paths = save_phantom(make_phantom(seed=5), tmp_path / "case")
    seg = tmp_path / "out" / "seg.nii.gz"
    r = _segment([*[f"--input={m}={paths[m]}" for m in ("flair", "t1", "t1ce", "t2")], "--output", seg,
                  "--adapt", "--adapt-steps", "3", "--device", "cuda", "--progress", "none"])
    assert r.returncode == 0, r.stderr
    assert Path(str(seg) + ".adapted.pt").is_file()
    assert read_image(seg, dtype=None).array_zyx.sum() > 0


@pytest.mark.parametrize("capability, expected", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_autocast_only_on_gpus_with_bf16_hardware(monkeypatch, capability, expected):
    """bf16 autocast (inference and training) only where the GPU has bf16 units; V100/T4-class GPUs run
    float32. Runs without a GPU: the CUDA queries are stood in for."""
    from CGCLesionSegLib import inference
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert inference.bf16_autocast_ok(torch.device("cuda")) is expected
    assert inference.bf16_autocast_ok(torch.device("cpu")) is False


def test_pre_ampere_inference_runs_float32(monkeypatch):
    """predict_probability enables autocast exactly when bf16_autocast_ok says so."""
    from CGCLesionSegLib import inference
    seen = []
    real = torch.autocast

    class Spy(real):
        def __init__(self, *args, enabled=True, **kw):
            seen.append(enabled)
            super().__init__("cpu", dtype=torch.bfloat16, enabled=False)
    monkeypatch.setattr(torch, "autocast", Spy)
    net = CGCNet(NetConfig(in_channels=1)).eval()
    image = np.zeros((1, 16, 16, 16), np.float32)
    cfg = InferenceConfig(window_xyz=(16, 16, 16))
    for ok in (False, True):
        monkeypatch.setattr(inference, "bf16_autocast_ok", lambda device, ok=ok: ok)
        seen.clear()
        inference.predict_probability(net, image, cfg, torch.device("cpu"))
        assert seen and all(e is ok for e in seen)
