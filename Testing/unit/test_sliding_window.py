import itertools

import numpy as np
import pytest
import torch

from CGCLesionSegLib.sliding_window import (brain_bounding_box, gaussian_weight, sliding_window_probability,
                                            window_starts)
from CGCLesionSegLib.progress import Cancelled


def _reference(fn, image, window, overlap, sigma_scale):
    """Slow voxel-by-voxel blend: for every voxel, weighted mean over the windows that contain it."""
    C, Z, Y, X = image.shape
    w = gaussian_weight(window, sigma_scale).numpy()
    starts = [window_starts(s, n, overlap) for s, n in zip((Z, Y, X), window)]
    preds = {}
    for z, y, x in itertools.product(*starts):
        patch = image[None, :, z:z + window[0], y:y + window[1], x:x + window[2]]
        preds[(z, y, x)] = torch.sigmoid(fn(patch))[0, 0].numpy()
    out = np.zeros((Z, Y, X))
    for k, j, i in itertools.product(range(Z), range(Y), range(X)):
        num = den = 0.0
        for (z, y, x), p in preds.items():
            if z <= k < z + window[0] and y <= j < y + window[1] and x <= i < x + window[2]:
                ww = w[k - z, j - y, i - x]
                num += ww * p[k - z, j - y, i - x]
                den += ww
        out[k, j, i] = num / den
    return out


def test_window_starts_cover_axis():
    for size, window, overlap in [(10, 4, 0.5), (7, 7, 0.25), (5, 8, 0.0), (100, 33, 0.25)]:
        s = window_starts(size, window, overlap)
        covered = np.zeros(size, bool)
        for a in s:
            covered[a:a + window] = True
        assert covered.all() and s[0] == 0 and s[-1] + min(window, size) == size
    with pytest.raises(ValueError):
        window_starts(10, 4, 1.0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_blend_matches_voxelwise_reference(batch_size):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 1, 3, padding=1)  # output depends on window position at borders
    image = torch.randn(2, 7, 9, 6)
    with torch.no_grad():
        fast = sliding_window_probability(conv, image, (4, 5, 4), overlap=0.5, batch_size=batch_size)
        ref = _reference(conv, image, (4, 5, 4), 0.5, 0.125)
    np.testing.assert_allclose(fast.numpy(), ref, atol=1e-5)


def test_single_window_and_small_image_and_cancel():
    image = torch.randn(1, 3, 4, 5)
    ident = lambda x: x[:, :1]
    out = sliding_window_probability(ident, image, (8, 8, 8))
    np.testing.assert_allclose(out.numpy(), torch.sigmoid(image[0]).numpy(), atol=1e-6)
    with pytest.raises(Cancelled):
        sliding_window_probability(ident, image, (2, 2, 2), should_stop=lambda: True)


def test_bounding_box():
    m = np.zeros((10, 10, 10), bool)
    m[2:4, 5, 6:9] = True
    assert brain_bounding_box(m, margin=1) == (slice(1, 5), slice(4, 7), slice(5, 10))
    with pytest.raises(ValueError, match="empty"):
        brain_bounding_box(np.zeros((3, 3, 3)))


def _instance_normed(batch):
    """A stand-in for the network's instance norm: each window's output depends on the whole window."""
    x = batch[:, :1]
    return (x - x.mean(dim=(2, 3, 4), keepdim=True)) / (x.std(dim=(2, 3, 4), keepdim=True) + 1e-3)


def test_pad_to_window_matches_a_padded_reference_and_is_a_no_op_where_the_image_fills_the_window():
    torch.manual_seed(1)
    image = torch.rand(1, 7, 9, 3) + 1.0  # x (3) is shorter than the window's 6; z and y are not
    seen = []
    fn = lambda b: (seen.append(tuple(b.shape[2:])), _instance_normed(b))[1]
    padded = sliding_window_probability(fn, image, (4, 5, 6), overlap=0.5, pad_to_window=True)
    assert set(seen) == {(4, 5, 6)} and padded.shape == (7, 9, 3)
    # Slow reference: zeros appended at the far end of x (as training pads a short case), the voxelwise
    # blend over full windows, then the image's own voxels.
    big = np.pad(image.numpy(), [(0, 0), (0, 0), (0, 0), (0, 3)])
    ref = _reference(_instance_normed, torch.from_numpy(big), (4, 5, 6), 0.5, 0.125)[:, :, :3]
    np.testing.assert_allclose(padded.numpy(), ref, atol=1e-5)
    shrunk = sliding_window_probability(_instance_normed, image, (4, 5, 6), overlap=0.5)
    assert np.abs(shrunk.numpy() - padded.numpy()).max() > 0.01  # the window's statistics differ
    full = torch.rand(1, 8, 9, 10)
    np.testing.assert_array_equal(
        sliding_window_probability(_instance_normed, full, (4, 5, 6), pad_to_window=True).numpy(),
        sliding_window_probability(_instance_normed, full, (4, 5, 6)).numpy())
