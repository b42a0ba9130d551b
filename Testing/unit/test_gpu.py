"""CUDA checks (bf16 autocast inference and a training step); skipped on machines without a GPU."""
from __future__ import annotations

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
