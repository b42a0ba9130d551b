"""Issue 12, items 1-2 and 11: full disks never give a cut-off output, truncated inputs are refused,
values beyond float32 are named. Disk-full is simulated with a file-size limit (RLIMIT_FSIZE, SIGXFSZ
ignored) in a child process, so a short write happens exactly as on a full disk."""
from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import resource
import signal

import numpy as np
import pytest
import SimpleITK as sitk

from CGCLesionSegLib.image_io import Geometry, ImageIOError, StagedWrites, read_image, write_image


def _geometry(shape_zyx=(40, 48, 56)):
    return Geometry(shape_zyx, (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _noise(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _limited_write(path, array, limit, queue):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        write_image(path, array, _geometry(array.shape))
        queue.put("ok")
    except ImageIOError as exc:
        queue.put("ImageIOError: " + str(exc))
    except BaseException as exc:  # noqa: BLE001 - report whatever happened to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def _write_with_file_size_limit(path, array, limit):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_limited_write, args=(str(path), array, limit, queue))
    proc.start()
    proc.join(60)
    return queue.get(timeout=5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_short_write_is_an_error_and_leaves_no_file(tmp_path, suffix):
    array = _noise((40, 48, 56))
    outcome = _write_with_file_size_limit(tmp_path / f"out{suffix}", array, 12_000)
    assert outcome.startswith("ImageIOError") and "free space" in outcome, outcome
    assert list(tmp_path.iterdir()) == [], "a failed write left a file (under its final or a temporary name)"


def test_short_write_never_replaces_a_good_file(tmp_path):
    good = _noise((40, 48, 56), seed=1)
    path = write_image(tmp_path / "prob.nii.gz", good, _geometry())
    before = path.read_bytes()
    outcome = _write_with_file_size_limit(path, _noise((40, 48, 56), seed=2), 12_000)
    assert outcome.startswith("ImageIOError"), outcome
    assert path.read_bytes() == before
    np.testing.assert_array_equal(read_image(path).array_zyx, good)


def test_staged_writes_rename_nothing_when_one_file_fails(tmp_path, monkeypatch):
    (tmp_path / "seg.nii.gz.json").write_text("old")
    staged = StagedWrites()
    staged.text(tmp_path / "seg.nii.gz.json", "{}")
    staged.image(tmp_path / "prob.nii.gz", _noise((4, 5, 6)), _geometry((4, 5, 6)))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(ImageIOError):
        with staged:
            staged.image(tmp_path / "seg.nii.gz", np.ones((4, 5, 6), np.uint8), _geometry((4, 5, 6)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz.json"]
    assert (tmp_path / "seg.nii.gz.json").read_text() == "old"


def _cut_in_half(tmp_path, suffix: str):
    """An image file of ``suffix`` with the second half of its bytes missing."""
    data = write_image(tmp_path / f"img{suffix}", _noise((40, 48, 56)), _geometry()).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[:len(data) // 2])
    return cut


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused(tmp_path, suffix):
    cut = _cut_in_half(tmp_path, suffix)
    # SimpleITK itself reads the cut file and fills the missing half with zeros:
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(cut))) == 0).mean() > 0.4
    with pytest.raises(ImageIOError, match="truncated"):
        read_image(cut)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_truncated_metaimage_or_nrrd_is_refused_without_blaming_a_missing_file(tmp_path, suffix):
    cut = _cut_in_half(tmp_path, suffix)
    with pytest.raises(ImageIOError, match="Is the file complete") as err:
        read_image(cut)
    assert "No such file" not in str(err.value)  # ITK's reason for a cut .mha; the file is there


def test_gzip_stream_without_its_end_is_refused(tmp_path):
    path = write_image(tmp_path / "img.nii", _noise((20, 24, 28)), _geometry((20, 24, 28)))
    full = gzip.compress(path.read_bytes() + b"\0" * 4096)  # voxel data complete, then padding
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full[:-12])  # the stream's last bytes (and its end marker) are missing
    with pytest.raises(ImageIOError, match="truncated|damaged"):
        read_image(cut)


def test_tiny_file_with_a_huge_header_is_refused_fast(tmp_path):
    img = sitk.Image(1000, 1000, 500, sitk.sitkFloat32)  # header only: never fill it
    path = tmp_path / "img.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.float32)), str(path))
    head = bytearray(path.read_bytes()[:352])
    import struct
    head[40:56] = struct.pack("<8h", 3, 1000, 1000, 500, 1, 1, 1, 1)
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(bytes(head) + b"\0" * 3000))
    assert bomb.stat().st_size < 5000
    import time
    t = time.perf_counter()
    with pytest.raises(ImageIOError, match="truncated|memory"):
        read_image(bomb)
    assert time.perf_counter() - t < 2.0
    del img


def test_header_bigger_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import CGCLesionSegLib.image_io as io
    path = write_image(tmp_path / "img.nii.gz", _noise((40, 48, 56)), _geometry())
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 100_000)
    with pytest.raises(ImageIOError, match="memory available"):
        read_image(path)
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 10 * 2**30)
    assert read_image(path).array_zyx.shape == (40, 48, 56)


def test_values_beyond_float32_are_named(tmp_path):
    a = _noise((10, 12, 14), np.float64) * 1e30
    a[0, 0, 0] = 1e300
    path = tmp_path / "big.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    with pytest.raises(ImageIOError, match="beyond the float32 range"):
        read_image(path)
    assert read_image(path, dtype=None).array_zyx.dtype == np.float64
    b = tmp_path / "big32.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray((_noise((10, 12, 14)) * 1e30).astype(np.float32)), str(b))
    with pytest.raises(ImageIOError, match="float32 arithmetic"):
        read_image(b)
