"""Segment / Train as child processes: command lines, JSON progress, cancel, read-back into MRML."""
from __future__ import annotations

import os
import sys
import textwrap
import time

import numpy as np
import pytest
import slicer

import CGCLesionSeg
from CGCLesionSeg import ChildProcess, parseProgressLine
from CGCLesionSegSlicer.constants import PROBABILITY_REFERENCE_ROLE
from proc_util import alive as _alive


# ---- JSON progress parsing (pure) -----------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ('{"event": "progress", "fraction": 0.42, "message": "window 12/30"}',
     {"event": "progress", "fraction": 0.42, "message": "window 12/30"}),
    ('  {"event": "progress", "fraction": 1.7}\n', {"event": "progress", "fraction": 1.0, "message": ""}),
    ('{"event": "progress", "fraction": -3, "message": null}', {"event": "progress", "fraction": 0.0, "message": ""}),
    ('{"event": "progress", "fraction": "0.5", "epoch": 3}', {"event": "progress", "fraction": 0.5, "message": "", "epoch": 3}),
    ('{"event": "done", "outputs": ["a.nii.gz"]}', {"event": "done", "outputs": ["a.nii.gz"]}),
])
def test_parse_progress_events(line, expected):
    assert parseProgressLine(line) == expected


@pytest.mark.parametrize("line", [
    "", "epoch 3 loss 0.2", "{not json", '["event", "progress"]', '{"fraction": 0.5}', '{"event": 3}',
    '{"event": "progress"}', '{"event": "progress", "fraction": "half"}', '{"event": "progress", "fraction": NaN}',
    "Traceback (most recent call last):",
])
def test_non_events_are_log_text(line):
    assert parseProgressLine(line) is None


# ---- command builders --------------------------------------------------------------------------

def test_segment_command(logic):
    logic.pythonExecutable = "/opt/Slicer/bin/PythonSlicer"
    cmd = logic.buildSegmentCommand([("flair", "/t/f.nii.gz"), ("t1", "/t/t1.nii.gz")], "/t/seg.nii.gz",
                                    maskPath="/t/m.nii.gz", modelPath="/m/cgc.pt",
                                    probabilityOutputPath="/t/p.nii.gz", threshold=0.4, device="cpu",
                                    postprocess="none")
    assert cmd == ["/opt/Slicer/bin/PythonSlicer", "-m", "CGCLesionSegLib.cli", "segment",
                   "--input", "flair=/t/f.nii.gz", "--input", "t1=/t/t1.nii.gz", "--mask", "/t/m.nii.gz",
                   "--model", "/m/cgc.pt", "--output", "/t/seg.nii.gz", "--probability-output", "/t/p.nii.gz",
                   "--threshold", "0.4", "--postprocess", "none", "--device", "cpu", "--progress", "json"]
    minimal = logic.buildSegmentCommand([(None, "/t/f.nii.gz")], "/t/s.nii.gz")
    assert minimal[4:] == ["--input", "/t/f.nii.gz", "--output", "/t/s.nii.gz", "--postprocess", "auto",
                           "--device", "auto", "--progress", "json"]
    with pytest.raises(ValueError, match="output rule"):
        logic.buildSegmentCommand([("flair", "f")], "s", postprocess="largest")
    with pytest.raises(ValueError, match="threshold"):
        logic.buildSegmentCommand([("flair", "f")], "s", threshold=1.5)
    with pytest.raises(ValueError, match="device"):
        logic.buildSegmentCommand([("flair", "f")], "s", device="tpu")
    with pytest.raises(ValueError, match="input"):
        logic.buildSegmentCommand([], "s")


def test_segment_command_is_accepted_by_the_real_cli(logic):
    """The flags the module builds exist in `cgcseg segment` (parsed, not run)."""
    from CGCLesionSegLib.cli import build_parser
    cmd = logic.buildSegmentCommand([("flair", "f.nii.gz")], "s.nii.gz", maskPath="m.nii.gz", modelPath="c.pt",
                                    probabilityOutputPath="p.nii.gz", threshold=0.3, device="cpu")
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "segment" and args.inputs == ["flair=f.nii.gz"] and args.threshold == 0.3
    assert args.progress == "json" and args.device == "cpu"


def test_train_command(logic):
    logic.pythonExecutable = sys.executable
    cmd = logic.buildTrainCommand("/data/brats", "/runs/a", modalities=["FLAIR", "t1"], epochs=5,
                                  maxMinutes=30, crop=(96, 96, 32), device="cuda", resume=True)
    assert cmd == [sys.executable, "-m", "CGCTraining", "--cases", "/data/brats", "--modalities", "flair", "t1",
                   "--output-dir", "/runs/a", "--epochs", "5", "--max-minutes", "30.0", "--crop", "96", "96", "32",
                   "--device", "cuda", "--resume", "--progress", "json"]
    steps = logic.buildTrainCommand("/c", "/o", steps=10)
    assert "--steps" in steps and "--epochs" not in steps and "--max-minutes" not in steps
    with pytest.raises(ValueError, match="not both"):
        logic.buildTrainCommand("/c", "/o", epochs=1, steps=1)
    with pytest.raises(ValueError, match="x y z"):
        logic.buildTrainCommand("/c", "/o", crop=(1, 2))


def test_child_environment_finds_both_packages(logic, tmp_path):
    env = logic.childEnvironment()
    code = "import CGCLesionSegLib, CGCTraining, sys; print(CGCLesionSegLib.__file__)"
    import subprocess
    env_clean = dict(env)
    out = subprocess.run([sys.executable, "-c", code], env=env_clean, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(CGCLesionSeg.MODULE_DIR)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == CGCLesionSeg.MODULE_DIR


# ---- ChildProcess -------------------------------------------------------------------------------

def _script(tmp_path, body: str) -> list:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_child_process_reports_progress_log_and_errors(tmp_path):
    cmd = _script(tmp_path, """
        import json, sys
        for i in range(3):
            print(json.dumps({"event": "progress", "fraction": (i + 1) / 3, "message": f"step {i + 1}"}), flush=True)
        print("plain text line", flush=True)
        print(json.dumps({"event": "warning", "kind": "removed_lesions", "case": "c7", "message": "2 removed"}), flush=True)
        print(json.dumps({"event": "warning", "kind": "lesion_check", "message": "empty"}), flush=True)
        print(json.dumps({"event": "prepared", "index": 1}), flush=True)
        print("cgcseg segment: error: something went wrong", file=sys.stderr, flush=True)
        sys.exit(2)
    """)
    child = ChildProcess(cmd)
    child.start()
    progress, logs = [], []
    code = child.wait(onProgress=lambda f, m: progress.append((round(f, 3), m)), onLog=logs.append)
    assert code == 2 and not child.cancelled
    assert progress == [(0.333, "step 1"), (0.667, "step 2"), (1.0, "step 3")]
    assert "plain text line" in logs
    # warnings read as words in the module's log; other events stay JSON
    assert "c7: warning: 2 removed" in logs and "warning: empty" in logs
    assert '{"event": "prepared", "index": 1}' in logs
    assert child.errorSummary().endswith("error: something went wrong")


@pytest.mark.skipif(os.name == "nt", reason="process-group kill is tested on POSIX")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    cmd = _script(tmp_path, f"""
        import json, subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(g.pid))
        print(json.dumps({{"event": "progress", "fraction": 0.1, "message": "started"}}), flush=True)
        time.sleep(120)
    """)
    child = ChildProcess(cmd)
    child.start()
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert _alive(grandchild)
    t0 = time.time()
    child.cancel()
    assert child.process.poll() is not None and child.cancelled
    deadline = time.time() + 10
    while _alive(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived the cancel"
    assert time.time() - t0 < 10


# ---- Segment through the real `cgcseg segment` child process -------------------------------------

def _flair_volume(shape=(16, 24, 24)):
    a = np.zeros(shape, np.float32)
    a[2:14, 3:21, 3:21] = 100.0
    a[6:10, 8:14, 8:14] = 180.0
    a += (a > 0) * np.random.default_rng(0).normal(0, 3, shape).astype(np.float32)
    ijk_to_ras = np.array([[-1.0, 0, 0, 5.0], [0, -1.2, 0, -3.0], [0, 0, 2.0, 8.0], [0, 0, 0, 1]])
    return slicer.util.addVolumeFromArray(a, ijk_to_ras, "flair")


def _state(scene):
    return sorted((scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName())
                  for i in range(scene.GetNumberOfNodes()))


def test_segment_end_to_end_reads_result_into_scene(logic, scene, tiny_model_path):
    flair = _flair_volume()
    probability = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "P")
    progress = []
    seg = logic.segment({"flair": flair}, modelPath=tiny_model_path, threshold=0.5, device="cpu",
                        probabilityNode=probability, onProgress=lambda f, m: progress.append(f))
    assert progress and progress[-1] == 1.0
    mask = logic.segmentationToArray(seg, flair)
    p = slicer.util.arrayFromVolume(probability)
    assert mask.shape == p.shape == (16, 24, 24)
    # The segment is exactly the thresholded probability the child wrote (same grid, no flip or shift).
    np.testing.assert_array_equal(mask, (p >= 0.5).astype(np.uint8))
    assert (p[slicer.util.arrayFromVolume(flair) == 0] == 0).all()  # P is 0 outside the brain
    np.testing.assert_allclose(logic.ijkToRasArray(probability), logic.ijkToRasArray(flair))
    segment = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion"))
    assert segment is not None
    # Into the same segmentation again: its probability volume is reused, no volume piles up.
    n_volumes = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    again = logic.segment({"flair": flair}, modelPath=tiny_model_path, device="cpu", segmentationNode=seg,
                          loadProbability=True)
    assert again is seg and seg.GetSegmentation().GetNumberOfSegments() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes
    assert seg.GetNodeReference(PROBABILITY_REFERENCE_ROLE) is probability
    # A new segmentation gets a new probability volume, named after the input.
    other = logic.segment({"flair": flair}, modelPath=tiny_model_path, device="cpu", loadProbability=True)
    assert other is not seg
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == n_volumes + 1
    created = scene.GetFirstNodeByName("flair CGC probability")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(created), p)


def test_failed_segment_leaves_scene_unchanged(logic, scene, tmp_path, tiny_model_path):
    flair = _flair_volume()
    before = _state(scene)
    logs = []
    with pytest.raises(RuntimeError, match="exit code 2"):
        logic.segment({"flair": flair}, modelPath=str(tmp_path / "missing.pt"), device="cpu", onLog=logs.append)
    assert _state(scene) == before
    assert any("error" in line for line in logs)
    # A model for other modalities: the child refuses, the scene stays as it was.
    with pytest.raises(RuntimeError):
        logic.segment({"t2": flair}, modelPath=tiny_model_path, device="cpu")
    assert _state(scene) == before


def test_cancelled_segment_leaves_scene_and_temp_files_clean(logic, scene, tiny_model_path):
    flair = _flair_volume()
    before = _state(scene)
    job = logic.prepareSegmentJob({"flair": flair}, modelPath=tiny_model_path, device="cpu")
    assert os.path.isfile(job.command[job.command.index("--input") + 1].split("=", 1)[1])
    try:
        with pytest.raises(CGCLesionSeg.CancelledError):
            logic.runJob(job, shouldStop=lambda: True)
    finally:
        logic.cleanupJob(job)
    assert not os.path.exists(job.tempDir)
    assert _state(scene) == before


def test_train_command_is_accepted_by_the_real_training_parser(logic):
    from CGCTraining.__main__ import build_parser
    cmd = logic.buildTrainCommand("/c", "/o", modalities=["flair", "t2"], steps=3, maxMinutes=2.5, crop=(64, 64, 32),
                                  device="cpu", resume=True)
    assert cmd[1:3] == ["-m", "CGCTraining"]
    args = build_parser().parse_args(cmd[3:])
    assert args.cases == "/c" and args.output_dir == "/o" and args.modalities == ["flair", "t2"]
    assert args.steps == 3 and args.max_minutes == 2.5 and list(args.crop) == [64, 64, 32]
    assert args.resume and args.progress == "json" and args.device == "cpu"


def test_train_command_with_a_recipe(logic, tmp_path):
    """The recipe reaches the real parser with its defaults; the shipped recipe keeps its own length when no
    epochs are given (what the widget does), and the module finds the final self-training model."""
    import json
    from CGCTraining.__main__ import apply_recipe, build_parser
    parser = build_parser()
    cmd = logic.buildTrainCommand("/c", "/o", modalities=["flair"], recipe="shipped", maxMinutes=5, device="cpu")
    args = apply_recipe(parser, cmd[3:], parser.parse_args(cmd[3:]))
    assert (args.recipe, args.steps, args.epochs, args.self_train_rounds, args.ema) == ("shipped", 300, None, 1, 0.99)
    cmd = logic.buildTrainCommand("/c", "/o", recipe="paper", epochs=7)
    args = apply_recipe(parser, cmd[3:], parser.parse_args(cmd[3:]))
    assert (args.recipe, args.epochs, args.self_train_rounds, args.ema) == ("paper", 7, 0, 0.0)
    with pytest.raises(ValueError, match="recipe must be one of"):
        logic.buildTrainCommand("/c", "/o", recipe="fast")
    assert logic.trainedModelPath(str(tmp_path)) == str(tmp_path / "last.pt")
    (tmp_path / "self_train.json").write_text(json.dumps({"final_model": "self-train-1/last.pt"}))
    assert logic.trainedModelPath(str(tmp_path)) == str(tmp_path / "self-train-1" / "last.pt")
    (tmp_path / "self_train.json").write_text("{not json")
    assert logic.trainedModelPath(str(tmp_path)) == str(tmp_path / "last.pt")


@pytest.mark.slow
def test_train_then_segment_through_the_module(logic, scene, tmp_path):
    """Train (child process, JSON progress) on a tiny phantom cohort, then Segment with the checkpoint."""
    from CGCLesionSegLib.phantom import make_cohort
    case_dirs = make_cohort(tmp_path / "cases", 2, seed=0, shape_xyz=(48, 48, 24))
    run = tmp_path / "run"
    cmd = logic.buildTrainCommand(str(tmp_path / "cases"), str(run), modalities=["flair"], steps=1,
                                  crop=(48, 48, 32), device="cpu")
    child = ChildProcess(cmd, env=logic.childEnvironment())
    child.start()
    progress = []
    assert child.wait(onProgress=lambda f, m: progress.append(f)) == 0, child.errorSummary()
    assert progress and progress[-1] == 1.0
    checkpoint = run / "last.pt"
    assert checkpoint.is_file()

    case = case_dirs[0]
    flair = logic.readVolume(str(next(case.glob("*_flair.nii.gz"))))
    seg = logic.segment({"flair": flair}, modelPath=str(checkpoint), device="cpu")
    mask = logic.segmentationToArray(seg, flair)
    assert mask.shape == slicer.util.arrayFromVolume(flair).shape
    assert not mask[slicer.util.arrayFromVolume(flair) == 0].any()  # nothing outside the brain


@pytest.mark.skipif(os.name == "nt", reason="process groups are POSIX")
def test_orphaned_grandchild_holding_the_pipe_does_not_hang(tmp_path):
    cmd = _script(tmp_path, """
        import json, subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # inherits stdout
        print(json.dumps({"event": "progress", "fraction": 1.0, "message": "done"}), flush=True)
    """)
    child = ChildProcess(cmd)
    child.start()
    t0 = time.time()
    assert child.wait() == 0
    assert time.time() - t0 < 15
