"""`cgcseg` on bad input, found by an audit: a given brain mask that is mostly the image's empty background
(e.g. all ones on a skull-stripped image) is refused by `cgcseg gmm`, `cgcseg segment` and the core they share,
while a real brain mask, even a generous one, is not; a folder given as --model is named a folder; cohort problems
every case shares are refused once, up front; a SIGTERM is reported and replaces nothing."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CGCLesionSegLib.cli import main
from CGCLesionSegLib.image_io import read_image, write_image
from CGCLesionSegLib.phantom import make_phantom, save_phantom
from CGCLesionSegLib.preprocess import MASK_BACKGROUND_SHARE, check_given_mask


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return save_phantom(make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(2.0, 2.0, 2.0), seed=4),
                        tmp_path_factory.mktemp("m"), "p")


def _share_on_background(mask, image):
    """The slow, obvious reference: the share of mask voxels whose value is the most common face value."""
    faces = np.concatenate([image[0].ravel(), image[-1].ravel(), image[:, 0].ravel(), image[:, -1].ravel(),
                            image[:, :, 0].ravel(), image[:, :, -1].ravel()])
    values, counts = np.unique(faces, return_counts=True)
    fill = values[counts.argmax()]
    return sum(1 for v, m in zip(image.ravel(), mask.ravel()) if m and v == fill) / mask.sum()


def test_the_rule_against_a_plain_count(case):
    flair = read_image(case["flair"]).array_zyx
    brain = read_image(case["mask"]).array_zyx > 0
    rng = np.random.default_rng(0)
    for mask in (brain, ndimage.binary_dilation(brain, iterations=3), np.ones_like(brain),
                 rng.random(brain.shape) < 0.5):
        share = _share_on_background(mask, flair)
        if share > MASK_BACKGROUND_SHARE:
            with pytest.raises(ValueError, match="empty background"):
                check_given_mask(mask, flair)
        else:
            check_given_mask(mask, flair)
    assert _share_on_background(np.ones_like(brain), flair) > MASK_BACKGROUND_SHARE  # the case that must fail
    assert _share_on_background(ndimage.binary_dilation(brain, iterations=3), flair) < MASK_BACKGROUND_SHARE


def test_gmm_and_segment_refuse_an_all_ones_mask(tmp_path, case, capsys):
    ones = tmp_path / "ones.nii.gz"
    image = read_image(case["flair"])
    write_image(ones, np.ones(image.array_zyx.shape, np.uint8), image.geometry)
    for command in (["gmm", "--input", f"flair={case['flair']}", "--mask", str(ones), "--output", str(tmp_path / "g.nii.gz")],
                    ["segment", "--input", f"flair={case['flair']}", "--mask", str(ones), "--output",
                     str(tmp_path / "s.nii.gz"), "--device", "cpu", "--progress", "none"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "empty background" in err and "leave the mask out" in err
    assert not (tmp_path / "g.nii.gz").exists() and not (tmp_path / "s.nii.gz").exists()
    # The phantom's own brain mask is accepted.
    assert main(["gmm", "--input", f"flair={case['flair']}", "--mask", str(case["mask"]),
                 "--output", str(tmp_path / "g.nii.gz")]) == 0


def test_a_folder_given_as_the_model_is_named_a_folder(tmp_path, case, capsys):
    (tmp_path / "run").mkdir()
    assert main(["segment", "--input", f"flair={case['flair']}", "--model", str(tmp_path / "run"),
                 "--output", str(tmp_path / "s.nii.gz"), "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "last.pt" in err


def test_cohort_problems_shared_by_every_case_are_refused_once_up_front(tmp_path, case, capsys):
    """A modality no case has, --modalities the model was not trained on, an output folder that cannot be
    written: one message before any case is read, not one error per case."""
    import shutil
    cohort = tmp_path / "cohort"
    for name in ("a", "b"):
        (cohort / name).mkdir(parents=True)
        shutil.copy(case["flair"], cohort / name / f"{name}_flair.nii.gz")
    out = tmp_path / "out"
    assert main(["segment", "--cases", str(cohort), "--output-dir", str(out), "--device", "cpu",
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "no case has a t1 image" in err and "give --modalities flair" in err and "a: error" not in err
    assert main(["segment", "--cases", str(cohort), "--output-dir", str(out), "--modalities", "flair", "t1",
                 "--model", str(_shipped("flair")), "--device", "cpu", "--progress", "none"]) == 2
    assert "do not match the model's channels flair" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["segment", "--cases", str(cohort), "--output-dir", str(blocker / "out"), "--modalities", "flair",
                 "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and err.count("cannot be written") == 1
    assert not out.exists()


def _shipped(*channels):
    from CGCLesionSegLib.default_models import default_model_path
    return default_model_path(list(channels))


def test_sigterm_is_reported_and_replaces_nothing(tmp_path, case):
    """A SIGTERM (a scheduler's stop) while `cgcseg gmm` works: one line saying so, exit 143, the earlier
    output kept whole — not a silent death."""
    import json
    import os
    import signal
    import subprocess
    import sys
    out = tmp_path / "g.nii.gz"
    assert main(["gmm", "--input", f"flair={case['flair']}", "--output", str(out)]) == 0
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "CGCLesionSegLib.cli", "gmm", "--input", f"flair={case['flair']}",
                             "--clusters", "8", "--n4", "--output", str(out), "--progress", "json"],  # N4: seconds
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the handler is in place once the command reports
        assert json.loads(first)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert out.read_bytes() == before and not list(tmp_path.glob(".tmp-*"))
