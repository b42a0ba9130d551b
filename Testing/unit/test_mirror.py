"""Test-time mirroring (``InferenceConfig.mirror_axes``, ``cgcseg segment --mirror``): the mean of the
network's probabilities over flips, against a slow per-flip reference."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from CGCLesionSegLib.inference import InferenceConfig, mirrored, predict_probability


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # Asymmetric kernels: flipping the input changes the output in every axis.
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(4, 1, (3, 1, 3), padding=(1, 0, 1))).eval()


def _reference(net, image_czyx: np.ndarray, dims: list[int]) -> np.ndarray:
    """Mean over every subset of ``dims`` (axes of the (Z, Y, X) volume) of sigmoid(net(flipped)) flipped back."""
    x = torch.from_numpy(image_czyx)[None]
    probs = []
    for r in range(len(dims) + 1):
        for subset in itertools.combinations(dims, r):
            d = [k + 2 for k in subset]
            with torch.no_grad():
                out = net(x.flip(d) if d else x)
            probs.append(torch.sigmoid(out.flip(d) if d else out)[0, 0].numpy())
    return np.mean(probs, axis=0)


@pytest.mark.parametrize("axes, dims", [((), []), (("x",), [2]), (("x", "y", "z"), [0, 1, 2]), (("z", "y"), [0, 1])])
def test_mirrored_prediction_matches_a_per_flip_reference(axes, dims):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(2, 8, 10, 12)).astype(np.float32)
    net = _net()
    cfg = InferenceConfig(device="cpu", mirror_axes=axes, window_xyz=(12, 10, 8))  # one window: no blending
    got = predict_probability(net, image, cfg, torch.device("cpu"), window_xyz=(12, 10, 8))
    np.testing.assert_allclose(got, _reference(net, image, dims), rtol=0, atol=2e-6)


def test_mirroring_over_x_makes_the_prediction_x_equivariant():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(2, 8, 10, 12)).astype(np.float32)
    net = _net(1)
    run = lambda img, axes: predict_probability(net, np.ascontiguousarray(img), InferenceConfig(device="cpu", mirror_axes=axes),
                                                torch.device("cpu"), window_xyz=(12, 10, 8))
    flipped = image[..., ::-1]
    # Without mirroring the asymmetric net is not equivariant; with it, a flipped input gives the flipped map.
    assert np.abs(run(flipped, ())[..., ::-1] - run(image, ())).max() > 1e-3
    np.testing.assert_allclose(run(flipped, ("x",))[..., ::-1], run(image, ("x",)), atol=2e-6)


def test_mirrored_without_axes_is_the_plain_predictor_and_axes_are_checked():
    f = lambda b: b[:, :1]
    assert mirrored(f, ()) is f
    assert InferenceConfig(mirror_axes=("z", "x")).mirror_axes == ("x", "z")
    assert InferenceConfig(mirror_axes=["X"]).mirror_axes == ("x",)
    for bad in (("w",), ("x", "x")):
        with pytest.raises(ValueError, match="mirror_axes"):
            InferenceConfig(mirror_axes=bad)


def test_mirrored_probabilities_are_averaged_not_logits():
    # A predictor that ignores its input: logit +10 in the first x column, -2 in the second. Flipped back,
    # the mirrored pass has them the other way round, so every voxel's two passes are +10 and -2: the
    # mean probability is ~0.56; a mean of logits (4, p 0.98) would let the confident pass decide.
    def predict(batch):
        return torch.tensor([10.0, -2.0]).expand(batch.shape[0], 1, *batch.shape[2:4], 2).clone()
    out = torch.sigmoid(mirrored(predict, ("x",))(torch.zeros(1, 1, 1, 1, 2)))
    expected = float((torch.sigmoid(torch.tensor(10.0)) + torch.sigmoid(torch.tensor(-2.0))) / 2)
    np.testing.assert_allclose(out.flatten().numpy(), [expected, expected], atol=1e-6)
