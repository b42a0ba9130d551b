"""The multi-lesion probe's second lesion (benchmarks/multi_lesion_probe.py): where it goes and what it changes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from multi_lesion_probe import MIN_GAP, paste_second_lesion  # noqa: E402


def _case(shape=(40, 48, 64), centre=(20, 24, 16), radius=5):
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    brain = ((z - 20) / 18) ** 2 + ((y - 24) / 22) ** 2 + ((x - 32) / 30) ** 2 < 1
    lesion = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius ** 2
    flair = np.where(brain, 100.0, 0.0) + np.where(lesion, 80.0, 0.0)
    t2 = np.where(brain, 50.0, 0.0) + np.where(lesion, 40.0, 0.0)
    return [flair.astype(np.float32), t2.astype(np.float32)], lesion, brain


def _brute_distance(a, b):
    pa, pb = np.argwhere(a), np.argwhere(b)
    return int(np.abs(pa[:, None, :] - pb[None, :, :]).sum(-1).min())  # city-block: the dilation's cross


def test_the_second_lesion_is_a_small_copy_at_the_mirror_place_and_only_brain_changes():
    channels, lesion, brain = _case()
    out, second = paste_second_lesion(channels, lesion)
    assert second.any() and not (second & lesion).any()
    assert 0.08 < second.sum() / lesion.sum() < 0.2  # a copy shrunk by 0.5 per axis: about 1/8 of the volume
    cz, cy, cx = np.argwhere(second).mean(0)
    assert abs(cx - (lesion.shape[2] - 1 - 16)) <= 1.5 and abs(cz - 20) <= 1.5 and abs(cy - 24) <= 1.5  # mirrored in x
    assert _brute_distance(second, lesion) > MIN_GAP
    for before, after in zip(channels, out):
        changed = before != after
        assert changed.any() and not (changed & ~brain).any()
        assert after[second].mean() > before[second].mean() + 0.5 * (before[lesion].mean() - before[brain & ~lesion].mean())
    assert (channels[0] == _case()[0][0]).all()  # inputs untouched


def test_a_lesion_on_the_midline_moves_the_copy_and_none_when_nothing_fits():
    channels, lesion, brain = _case(centre=(20, 24, 32), radius=4)  # its mirror image is itself
    made = paste_second_lesion(channels, lesion)
    assert made is not None
    second = made[1]
    assert not (second & lesion).any() and _brute_distance(second, lesion) > MIN_GAP
    channels, lesion, brain = _case(shape=(20, 20, 20), centre=(10, 10, 10), radius=8)  # fills the small box
    assert paste_second_lesion(channels, lesion) is None
