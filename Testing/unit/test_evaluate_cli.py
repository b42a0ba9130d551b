"""`cgcseg evaluate`: case matching in a predictions folder and the --output table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from CGCLesionSegLib.cli import main
from CGCLesionSegLib.image_io import Geometry, write_image

G = Geometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _mask(*boxes):
    m = np.zeros(G.shape_zyx, np.uint8)
    for b in boxes:
        m[b] = 1
    return m


@pytest.fixture()
def cohort(tmp_path):
    """Cases X_1 and X_10 (one name is a prefix of the other) with labels; predictions for X_10 only
    (X_1 failed, as a per-case error in a cohort run would leave it)."""
    cases, preds = tmp_path / "cases", tmp_path / "preds"
    ref1, ref10 = _mask(np.s_[0:2, 0:2, 0:2]), _mask(np.s_[2:4, 3:5, 3:6])
    for name, ref in (("X_1", ref1), ("X_10", ref10)):
        write_image(cases / name / f"{name}_seg.nii.gz", ref, G)
    write_image(preds / "X_10.nii.gz", ref10, G)
    write_image(preds / "X_10_probability.nii.gz", ref10.astype(np.float32), G)
    return tmp_path, cases, preds


def test_a_case_never_takes_the_prediction_of_a_case_with_a_longer_name(cohort, capsys):
    tmp, cases, preds = cohort
    out = tmp / "table.json"
    assert main(["evaluate", "--predictions-dir", str(preds), "--cases", str(cases), "--output", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [r["case"] for r in table["cases"]] == ["X_10"]
    assert table["cases"][0]["dice"] == 1.0


def test_tagged_prediction_is_found_but_not_a_probability_map(cohort):
    tmp, cases, preds = cohort
    (preds / "X_10.nii.gz").rename(preds / "X_10_seg.nii.gz")
    out = tmp / "t.csv"
    assert main(["evaluate", "--predictions-dir", str(preds), "--cases", str(cases), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("case,dice") and len(lines) == 2 and lines[1].startswith("X_10,1.0")
    write_image(preds / "X_10_other.nii.gz", _mask(), G)
    assert main(["evaluate", "--predictions-dir", str(preds), "--cases", str(cases)]) == 2


def test_output_must_be_a_table_and_never_an_input(cohort, capsys):
    tmp, cases, preds = cohort
    ref = cases / "X_10" / "X_10_seg.nii.gz"
    before = ref.read_bytes()
    for bad in (ref, tmp / "table.nii.gz", tmp / "table.txt"):
        rc = main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(ref),
                   "--output", str(bad)])
        assert rc == 2
        assert ".csv or .json" in capsys.readouterr().err
    assert ref.read_bytes() == before
    assert not (tmp / "table.nii.gz").exists() and not (tmp / "table.txt").exists()
    rc = main(["evaluate", "--prediction", str(ref), "--reference", str(ref), "--output", str(tmp / "x.csv")])
    assert rc == 0 and not list(tmp.glob(".tmp-*"))


def test_an_input_image_is_refused_as_a_prediction(cohort, capsys):
    tmp, cases, _ = cohort
    flair = np.random.default_rng(0).normal(300, 80, G.shape_zyx).astype(np.float32)
    write_image(tmp / "flair.nii.gz", flair, G)
    rc = main(["evaluate", "--prediction", str(tmp / "flair.nii.gz"), "--reference", str(cases / "X_1" / "X_1_seg.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a segmentation" in err and "flair.nii.gz" in err
    labels = _mask(np.s_[0:2, 0:2, 0:2]) * 4  # a BraTS-style labelmap is a segmentation
    write_image(tmp / "labels.nii.gz", labels, G)
    assert main(["evaluate", "--prediction", str(tmp / "labels.nii.gz"), "--reference",
                 str(cases / "X_1" / "X_1_seg.nii.gz")]) == 0


def test_empty_reference_gives_undefined_sensitivity_and_distances(cohort, capsys):
    tmp, cases, preds = cohort
    write_image(tmp / "empty_seg.nii.gz", _mask(), G)
    out = tmp / "t.json"
    rc = main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(tmp / "empty_seg.nii.gz"),
               "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "sensitivity undefined" in printed and "HD95 undefined" in printed
    assert "reference is empty" in printed
    row = json.loads(out.read_text())["cases"][0]
    assert row["sensitivity"] is None and row["hd95_mm"] is None and row["precision"] == 0.0
    rc = main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(cases / "X_10" / "X_10_seg.nii.gz")])
    assert rc == 0 and "HD95 0.00 mm" in capsys.readouterr().out


def test_an_input_image_is_refused_as_the_reference_and_absent_labels_are_named(cohort, capsys):
    """The FLAIR given as --reference would make every brain voxel "lesion": refused, as for --prediction
    (and for `cgcseg demo --reference`). A --labels value the reference does not hold is said, not scored silently."""
    tmp, cases, preds = cohort
    flair = np.random.default_rng(0).normal(300, 80, G.shape_zyx).astype(np.float32)
    write_image(tmp / "flair.nii.gz", flair, G)
    rc = main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(tmp / "flair.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a labelmap" in err and "flair.nii.gz" in err
    ref = cases / "X_10" / "X_10_seg.nii.gz"
    assert main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(ref), "--labels", "7"]) == 0
    err = capsys.readouterr().err
    assert "--labels 7 does not occur in X_10_seg.nii.gz (its labels: 0 1)" in err
    assert main(["evaluate", "--prediction", str(preds / "X_10.nii.gz"), "--reference", str(ref), "--labels", "1"]) == 0
    assert "warning" not in capsys.readouterr().err
    rc = main(["demo", "--input", f"flair={tmp / 'flair.nii.gz'}", "--reference", str(tmp / "flair.nii.gz"),
               "--output-dir", str(tmp / "demo")])
    assert rc == 2 and "not a labelmap" in capsys.readouterr().err
