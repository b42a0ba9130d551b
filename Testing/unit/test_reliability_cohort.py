"""Issue 12, items 1, 3, 5 and 13 (and issue 11 item 2): cohort mode on phantom-sized data.
Case names cannot escape --output-dir, outputs never overwrite inputs, duplicates are refused, a case
is done only when its outputs read back complete with the same model and settings, a full disk
leaves no file under a final name, sidecars record base names only."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CGCLesionSegLib.checkpoint import make_checkpoint_for_inference
from CGCLesionSegLib.cli import main
from CGCLesionSegLib.image_io import read_image
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.phantom import make_cohort

TINY = dict(widths=(2, 4, 4, 8), blocks=(0, 0, 0, 1), decoder_width=2, projection_dim=4, patch_size_xyz=(2, 2, 2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    dirs = make_cohort(root / "cases", 2, seed=3, shape_xyz=(40, 40, 24), spacing_xyz=(3.0, 3.0, 3.0), oversample=1)
    torch.manual_seed(0)
    model = make_checkpoint_for_inference(CGCNet(NetConfig(in_channels=1, **TINY)), root / "tiny.pt", ["flair"])
    return {"root": root, "cases": root / "cases", "dirs": dirs, "model": model}


def _args(cohort, cases, out, *extra):
    return ["segment", "--cases", str(cases), "--output-dir", str(out), "--model", str(cohort["model"]),
            "--modalities", "flair", "--device", "cpu", "--progress", "none", "--window", "32", "32", "16", *extra]


def _csv(path, rows, columns=("case", "flair")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


def _flair(cohort, i=0):
    d = cohort["dirs"][i]
    return str(d / f"{d.name}_flair.nii.gz")


@pytest.mark.parametrize("name", ["../../x", "/tmp/cgc_abs_case", "sub/dir/x", "", "..", ".hidden", "a\\b"])
def test_case_names_cannot_escape_the_output_folder(cohort, tmp_path, capsys, name):
    victim = tmp_path / "victimdir" / "important.nii.gz"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    lst = _csv(tmp_path / "list.csv", [["ok_case", _flair(cohort)], [name, _flair(cohort, 1)]])
    out = tmp_path / "a" / "b" / "out"
    assert main(_args(cohort, lst, out)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "row 3" in err and "plain file name" in err, err
    assert not out.exists() and victim.read_bytes() == b"precious"
    assert not Path("/tmp/cgc_abs_case.nii.gz").exists()


def test_victim_file_is_never_overwritten(cohort, tmp_path, capsys):
    victim = tmp_path / "victimdir" / "important.nii.gz"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    lst = _csv(tmp_path / "list.csv", [["../victimdir/important", _flair(cohort)]])
    assert main(_args(cohort, lst, out)) == 2
    assert victim.read_bytes() == b"precious"


def test_output_may_not_overwrite_an_input_of_the_cohort(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    own_input = out / "caseA_probability.nii.gz"
    own_input.write_bytes(Path(_flair(cohort)).read_bytes())
    before = own_input.read_bytes()
    lst = _csv(tmp_path / "list.csv", [["caseA", str(own_input)]])
    assert main(_args(cohort, lst, out)) == 2
    err = capsys.readouterr().err
    assert "would overwrite the flair input of case caseA" in err, err
    assert own_input.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["caseA_probability.nii.gz"]
    # another case's output colliding with a case's own name is refused too
    lst = _csv(tmp_path / "list2.csv", [["b", _flair(cohort)], ["b_probability", _flair(cohort, 1)]])
    assert main(_args(cohort, lst, tmp_path / "out2")) == 2
    assert "would both write" in capsys.readouterr().err


def test_duplicate_case_names_are_refused(cohort, tmp_path, capsys):
    lst = _csv(tmp_path / "list.csv", [["p1", _flair(cohort)], ["x", _flair(cohort)], ["P1", _flair(cohort, 1)]])
    assert main(_args(cohort, lst, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "rows 2 and 4 both name case 'P1'" in err, err
    assert not (tmp_path / "out").exists()


def test_a_case_is_done_only_when_complete_with_the_same_model_and_settings(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(cohort, cohort["cases"], out)) == 0
    err = capsys.readouterr().err
    assert "2 segmented, 0 already done" in err and "of 2 case(s)" in err and "rank" not in err, err
    names = [d.name for d in cohort["dirs"]]
    first = out / f"{names[0]}.nii.gz"
    good = read_image(first, dtype=None).array_zyx
    # privacy (item 13): base names only, no host
    side = json.loads((out / f"{names[0]}.nii.gz.json").read_text())
    assert "host" not in side and side["inputs"]["flair"] == f"{names[0]}_flair.nii.gz"
    assert side["model"]["path"] == "tiny.pt" and side["output"] == first.name

    # a 0-byte and a cut-off mask are not done: recomputed
    first.write_bytes(b"")
    data = (out / f"{names[1]}_probability.nii.gz").read_bytes()
    (out / f"{names[1]}_probability.nii.gz").write_bytes(data[:len(data) // 2])
    assert main(_args(cohort, cohort["cases"], out)) == 0
    err = capsys.readouterr().err
    assert "2 segmented, 0 already done" in err and "incomplete" in err, err
    np.testing.assert_array_equal(read_image(first, dtype=None).array_zyx, good)
    # complete and same settings: skipped
    assert main(_args(cohort, cohort["cases"], out)) == 0
    assert "0 segmented, 2 already done" in capsys.readouterr().err
    # a sidecar from before a setting existed (no pad_to_window / mirror_axes) ran at its default: done
    for d in names:
        sc = out / f"{d}.nii.gz.json"
        record = json.loads(sc.read_text())
        assert record["inference"].pop("pad_to_window") is False and record["inference"].pop("mirror_axes") == []
        sc.write_text(json.dumps(record))
    assert main(_args(cohort, cohort["cases"], out)) == 0
    assert "0 segmented, 2 already done" in capsys.readouterr().err
    assert main(_args(cohort, cohort["cases"], out, "--mirror", "x")) == 2
    assert "mirror_axes" in capsys.readouterr().err
    # other settings: listed, nothing recomputed without --overwrite
    stamp = first.stat().st_mtime_ns
    assert main(_args(cohort, cohort["cases"], out, "--threshold", "0.3")) == 2
    err = capsys.readouterr().err
    assert "2 case(s)" in err and "threshold" in err and "--overwrite" in err, err
    assert first.stat().st_mtime_ns == stamp
    # another model (same architecture, other weights): the hash differs
    torch.manual_seed(1)
    other = make_checkpoint_for_inference(CGCNet(NetConfig(in_channels=1, **TINY)), tmp_path / "other.pt", ["flair"])
    args = _args(cohort, cohort["cases"], out)
    args[args.index("--model") + 1] = str(other)
    assert main(args) == 2 and "(model)" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert "2 segmented" in capsys.readouterr().err
    assert json.loads((out / f"{names[0]}.nii.gz.json").read_text())["model"]["path"] == "other.pt"


LIMITED = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "from CGCLesionSegLib.cli import main; sys.exit(main(sys.argv[2:]))")


def run_with_file_size_limit(argv, limit):
    """The CLI in a child process that cannot write more than ``limit`` bytes per file (a full disk)."""
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *argv], capture_output=True, text=True,
                          timeout=600)


def test_full_disk_in_cohort_mode_leaves_no_final_file_and_resumes(cohort, tmp_path):
    out = tmp_path / "out"
    r = run_with_file_size_limit(_args(cohort, cohort["cases"], out), 8_000)
    assert r.returncode == 1, r.stderr  # every case failed, and the run says so
    assert "2 failed" in r.stderr and "free space" in r.stderr, r.stderr
    assert not out.exists() or list(out.iterdir()) == []
    assert main(_args(cohort, cohort["cases"], out)) == 0
    assert len(list(out.glob("*_probability.nii.gz"))) == 2


def test_full_disk_in_single_mode_fails_and_keeps_the_good_files(cohort, tmp_path):
    out = tmp_path / "seg.nii.gz"
    args = ["segment", "--input", f"flair={_flair(cohort)}", "--output", str(out), "--probability-output",
            str(tmp_path / "prob.nii.gz"), "--model", str(cohort["model"]), "--device", "cpu", "--progress", "none"]
    r = run_with_file_size_limit(args, 8_000)
    assert r.returncode == 2 and "free space" in r.stderr and "lesion volume" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # no file under a final name, no temporary left
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = run_with_file_size_limit(args + ["--threshold", "0.3"], 8_000)
    assert r.returncode == 2, r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the good files were not replaced
