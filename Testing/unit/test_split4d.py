"""4-D inputs: a clear pointer to `cgcseg split4d`, which writes one 3-D file per named channel."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from CGCLesionSegLib.cli import main
from CGCLesionSegLib.image_io import read_image


def _four_d(path, n=4):
    rng = np.random.default_rng(0)
    arrays = [rng.random((6, 7, 8)).astype(np.float32) * (i + 1) for i in range(n)]
    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arrays])
    img.SetSpacing((1.2, 1.3, 1.4, 1.0))
    img.SetOrigin((10.0, -5.0, 3.0, 0.0))
    sitk.WriteImage(img, str(path))
    return arrays


def test_split4d_writes_each_channel_with_its_geometry(tmp_path, capsys):
    arrays = _four_d(tmp_path / "case.nii.gz")
    assert main(["split4d", str(tmp_path / "case.nii.gz"), "--names", "flair", "t1", "t1ce", "t2",
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert "--input flair=" in capsys.readouterr().err
    for i, name in enumerate(["flair", "t1", "t1ce", "t2"]):
        img = read_image(tmp_path / "out" / f"case_{name}.nii.gz")
        np.testing.assert_array_equal(img.array_zyx, arrays[i])
        assert img.geometry.spacing == pytest.approx((1.2, 1.3, 1.4))
        assert img.geometry.origin == pytest.approx((10.0, -5.0, 3.0))
        side = json.loads((tmp_path / "out" / f"case_{name}.nii.gz.json").read_text())
        assert side["channel_index"] == i


def test_4d_input_errors_point_to_split4d(tmp_path, capsys):
    _four_d(tmp_path / "case.nii.gz", n=3)
    assert main(["split4d", str(tmp_path / "case.nii.gz"), "--names", "flair", "t1", "t1ce", "t2",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "holds 3 channels" in capsys.readouterr().err
    assert main(["gmm", "--input", str(tmp_path / "case.nii.gz"), "--output", str(tmp_path / "p.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "4 dimensions" in err and "cgcseg split4d" in err


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_truncated_4d_file_is_refused_not_split_into_zeros(tmp_path, capsys, suffix):
    """SimpleITK reads a truncated 4-D NIfTI without a word and fills the rest with zeros: refused instead."""
    import gzip
    _four_d(tmp_path / "case.nii.gz")
    data = gzip.decompress((tmp_path / "case.nii.gz").read_bytes())
    half = data[: len(data) // 2]
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(gzip.compress(half)[:-8] if suffix == ".nii.gz" else half)
    assert main(["split4d", str(bad), "--names", "flair", "t1", "t1ce", "t2", "--output-dir", str(tmp_path / "out")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
