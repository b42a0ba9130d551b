"""The job lifecycle (CGCLesionSegSlicer.jobs.JobController) under slicer-core, with real processes.

Scene close and module cleanup during a job, Cancel of training through a stand-in for Slicer's
PythonSlicer launcher, failed starts, stop bounds and outcomes. "Alive" means not exited and not a
zombie; every test checks the job's temporary folder is gone and no process of its tree is left.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import slicer

from CGCLesionSegSlicer import runner
from CGCLesionSegSlicer.jobs import JobController
from CGCLesionSegSlicer.runner import ChildJob
from proc_util import alive as _alive

pytestmark = pytest.mark.skipif(os.name == "nt", reason="process trees are checked through /proc (POSIX)")

LAUNCHER = str(Path(__file__).with_name("launcher_standin.py"))


def _wait_for(predicate, timeout: float, what: str, controller: JobController | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if controller is not None:
            controller.poll()
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _pids(pid_file: Path, timeout: float = 60.0) -> list[int]:
    text = _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout, "the launcher's pid file")
    return [int(v) for v in text.split()]


def _scene_state(scene):
    return sorted((scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName())
                  for i in range(scene.GetNumberOfNodes()))


class Recorder:
    """onFinished of the controller, doing what the Widget does for a finished segment job."""

    def __init__(self, logic=None) -> None:
        self.logic = logic
        self.finished: list[tuple[str, str]] = []
        self.logs: list[str] = []
        self.progress: list[dict] = []
        self.loaded = None
        self.folder_existed_in_handler = None

    def onFinished(self, job, outcome, message) -> None:
        self.finished.append((outcome, message))
        self.folder_existed_in_handler = bool(job.tempDir and os.path.isdir(job.tempDir))
        if outcome == "done" and job.kind == "segment" and self.logic is not None:
            self.loaded = self.logic.finishSegmentJob(job, loadProbability=True)

    def controller(self, **kwargs) -> JobController:
        return JobController(onProgress=lambda f, m: self.progress.append({"fraction": f, "message": m}),
                             onLog=self.logs.append, onFinished=self.onFinished, **kwargs)


def _flair(shape=(16, 24, 24)):
    a = np.zeros(shape, np.float32)
    a[2:14, 3:21, 3:21] = 100.0
    a[6:10, 8:14, 8:14] = 180.0
    a += (a > 0) * np.random.default_rng(0).normal(0, 3, shape).astype(np.float32)
    return slicer.util.addVolumeFromArray(a, np.diag([-1.0, -1.2, 2.0, 1.0]), "flair")


def _sleeping_segment_job(logic, tmp_path) -> tuple[ChildJob, Path]:
    """A real prepared segment job (inputs written to its folder) whose command is a launcher with a
    long-running child: the state of a segmentation that is still computing."""
    job = logic.prepareSegmentJob({"flair": _flair()}, device="cpu", tempBase=str(tmp_path / "slicer-temp"))
    pid_file = tmp_path / "pids"
    job.command = [sys.executable, LAUNCHER, str(pid_file), sys.executable, "-c", "import time; time.sleep(300)"]
    return job, pid_file


def test_scene_close_during_segment_job(mrml, logic, scene, tmp_path):
    recorder = Recorder(logic)
    controller = recorder.controller()
    job, pid_file = _sleeping_segment_job(logic, tmp_path)
    assert os.path.isdir(job.tempDir) and any(Path(job.tempDir).glob("*.nrrd"))
    assert Path(job.tempDir).parent == tmp_path / "slicer-temp"  # the Widget's base folder is used
    controller.start(job)
    pids = _pids(pid_file)
    assert all(_alive(p) for p in pids)
    before = _scene_state(scene)

    t0 = time.time()
    assert controller.onSceneStartClose() is job  # what the Widget calls on StartCloseEvent
    scene.Clear(0)
    took = time.time() - t0
    assert not controller.busy and not controller.poll()
    assert recorder.finished == [("abandoned", "the scene was closed")]
    assert recorder.loaded is None
    assert not os.path.exists(job.tempDir)
    assert not any(_alive(p) for p in pids)
    assert took < 5, took
    # No node came from the job: the cleared scene holds only what Clear keeps.
    assert len(_scene_state(scene)) <= len(before)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_scene_close_leaves_training_running(mrml, logic, tmp_path):
    recorder = Recorder()
    controller = recorder.controller()
    job = logic.prepareTrainJob(str(tmp_path / "cases"), str(tmp_path / "run"), tempBase=str(tmp_path))
    pid_file = tmp_path / "pids"
    job.command = [sys.executable, LAUNCHER, str(pid_file), sys.executable, "-c", "import time; time.sleep(300)"]
    controller.start(job)
    pids = _pids(pid_file)
    assert controller.onSceneStartClose() is None  # training does not touch the scene
    assert controller.busy and all(_alive(p) for p in pids)
    controller.shutdownGraceSeconds = 0.5  # this child ignores the stop file: killed after the bound
    assert controller.shutdown() is job
    assert recorder.finished[0][0] == "abandoned"
    assert not os.path.exists(job.tempDir) and not any(_alive(p) for p in pids)


def test_module_cleanup_during_segment_job(mrml, logic, scene, tmp_path):
    recorder = Recorder(logic)
    controller = recorder.controller()
    job, pid_file = _sleeping_segment_job(logic, tmp_path)
    controller.start(job)
    pids = _pids(pid_file)
    state = _scene_state(scene)
    t0 = time.time()
    assert controller.shutdown() is job  # Widget.cleanup(): Slicer quits or the module is reloaded
    assert time.time() - t0 < 5
    assert recorder.finished == [("abandoned", "the module was closed")]
    assert recorder.folder_existed_in_handler  # the handler runs before the folder goes
    assert not os.path.exists(job.tempDir)
    assert not any(_alive(p) for p in pids)
    assert _scene_state(scene) == state
    assert controller.shutdown() is None  # idempotent


def test_failed_start_removes_the_folder(mrml, logic, tmp_path):
    controller = Recorder(logic).controller()
    job = logic.prepareSegmentJob({"flair": _flair()}, device="cpu", tempBase=str(tmp_path))
    job.command = [str(tmp_path / "no-such-PythonSlicer"), "-m", "CGCLesionSegLib.cli"]
    with pytest.raises(OSError):
        controller.start(job)
    assert not os.path.exists(job.tempDir) and not controller.busy


def test_segment_cancel_kills_at_once(mrml, logic, tmp_path):
    recorder = Recorder(logic)
    controller = recorder.controller()
    job, pid_file = _sleeping_segment_job(logic, tmp_path)
    controller.start(job)
    pids = _pids(pid_file)
    t0 = time.time()
    assert controller.cancel() == "cancelled"
    assert time.time() - t0 < 0.5  # the GUI thread is not held while the tree dies
    _wait_for(lambda: not controller.busy, 10, "the job to end", controller)
    assert recorder.finished[0][0] == "cancelled"
    assert not os.path.exists(job.tempDir) and not any(_alive(p) for p in pids)


def test_stop_not_honoured_within_the_bound_is_a_kill(mrml, logic, tmp_path):
    recorder = Recorder()
    controller = recorder.controller(stopGraceSeconds=1.0)
    job = logic.prepareTrainJob(str(tmp_path / "c"), str(tmp_path / "r"), tempBase=str(tmp_path))
    pid_file = tmp_path / "pids"
    job.command = [sys.executable, LAUNCHER, str(pid_file), sys.executable, "-c", "import time; time.sleep(300)"]
    controller.start(job)
    pids = _pids(pid_file)
    assert controller.cancel() == "stopping" and controller.stopping
    assert os.path.isfile(job.stopFile)
    _wait_for(lambda: not controller.busy, 15, "the kill after the bound", controller)
    assert recorder.finished[0][0] == "cancelled"
    assert any("did not stop within" in line for line in recorder.logs)
    assert not any(_alive(p) for p in pids) and not os.path.exists(job.tempDir)


@pytest.mark.parametrize("code, outcome", [(143, "stopped"), (130, "stopped"), (0, "stopped"), (1, "failed")])
def test_exit_status_after_a_stop_request(mrml, logic, tmp_path, code, outcome):
    """A child that was asked to stop and ends with 130/143 (or 0) was stopped, not a failure."""
    recorder = Recorder()
    controller = recorder.controller()
    job = logic.prepareTrainJob(str(tmp_path / "c"), str(tmp_path / "r"), tempBase=str(tmp_path))
    script = textwrap.dedent(f"""
        import os, sys, time
        while not os.path.exists({job.stopFile!r}):
            time.sleep(0.02)
        sys.exit({code})
    """)
    job.command = [sys.executable, "-c", script]
    controller.start(job)
    assert controller.cancel() == "stopping"
    _wait_for(lambda: not controller.busy, 15, "the child to stop", controller)
    assert recorder.finished[0][0] == outcome
    if outcome == "stopped":
        assert recorder.finished[0][1] == "stopped (checkpoint kept)"


def test_finished_segment_job_loads_result_then_removes_folder(mrml, logic, scene, tmp_path, tiny_model_path):
    recorder = Recorder(logic)
    controller = recorder.controller()
    flair = _flair()
    job = logic.prepareSegmentJob({"flair": flair}, modelPath=tiny_model_path, device="cpu", tempBase=str(tmp_path))
    controller.start(job)
    _wait_for(lambda: not controller.busy, 120, "the segment child", controller)
    assert recorder.finished and recorder.finished[0][0] == "done", recorder.finished
    assert recorder.folder_existed_in_handler and not os.path.exists(job.tempDir)
    seg = recorder.loaded
    assert seg is not None and seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert recorder.progress and recorder.progress[-1]["fraction"] == 1.0


def test_cancel_training_through_a_launcher_keeps_the_checkpoint(mrml, logic, tmp_path):
    """Cancel while `python -m CGCTraining` runs under a PythonSlicer-like launcher: the trainer
    finishes its step, writes last.pt and exits; the launcher follows; nothing of the tree is left."""
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from CGCLesionSegLib.phantom import make_cohort
    make_cohort(tmp_path / "cases", 1, seed=0, shape_xyz=(64, 64, 32))
    run = tmp_path / "run"
    recorder = Recorder()
    controller = recorder.controller(stopGraceSeconds=300.0)  # generous: CI machines may be loaded
    job = logic.prepareTrainJob(str(tmp_path / "cases"), str(run), tempBase=str(tmp_path / "slicer-temp"),
                                modalities=["flair"], steps=100000, maxMinutes=3.0, crop=(48, 48, 32), device="cpu")
    assert "--stop-file" in job.command
    pid_file = tmp_path / "pids"
    job.command = [sys.executable, LAUNCHER, str(pid_file), *job.command]
    controller.start(job)
    pids = _pids(pid_file)
    # Wait for the first training step (progress events carry the step).
    _wait_for(lambda: any(p["message"].startswith("step") for p in recorder.progress) or not controller.busy,
              600, "the first step", controller)  # ~15 s on a quiet 2-core machine
    assert controller.busy, (recorder.finished, recorder.logs[-5:])
    t0 = time.time()
    assert controller.cancel() == "stopping"
    _wait_for(lambda: not controller.busy, 400, "the clean stop", controller)
    took = time.time() - t0
    assert recorder.finished[0] == ("stopped", "stopped (checkpoint kept)"), (recorder.finished, recorder.logs[-5:])
    assert took < controller.stopGraceSeconds  # ended by the trainer itself, not by the kill after the bound
    checkpoint = read_checkpoint(run / "last.pt")
    assert checkpoint["step"] >= 1
    assert not any(_alive(p) for p in pids)
    assert not os.path.exists(job.tempDir)
    print(f"clean stop took {took:.1f} s; checkpoint at step {checkpoint['step']}")


# ---- launch arguments ----------------------------------------------------------------------------

def test_windows_launch_hides_the_console(monkeypatch):
    """As slicer.util.launchConsoleProcess: STARTUPINFO with SW_HIDE; plus no console and a new group."""
    class FakeStartupInfo:
        def __init__(self) -> None:
            self.dwFlags = 0
            self.wShowWindow = 1

    monkeypatch.setattr(subprocess, "STARTUPINFO", FakeStartupInfo, raising=False)
    options = runner.popenOptions("nt")
    info = options["startupinfo"]
    assert info.dwFlags & runner.STARTF_USESHOWWINDOW and info.wShowWindow == runner.SW_HIDE == 0
    assert options["creationflags"] & runner.CREATE_NO_WINDOW
    assert options["creationflags"] & runner.CREATE_NEW_PROCESS_GROUP
    assert "start_new_session" not in options
    assert runner.popenOptions("posix") == {"start_new_session": True}
    assert runner.killTreeCommand(1234) == ["taskkill", "/F", "/T", "/PID", "1234"]


def test_windows_kill_uses_taskkill_without_a_window(monkeypatch):
    class FakeStartupInfo:
        dwFlags = 0
        wShowWindow = 1

    launched = []

    class FakePopen:
        def __init__(self, args, **kwargs) -> None:
            launched.append((args, kwargs))

    class Child:
        pid = 4321

        def poll(self):
            return None

    monkeypatch.setattr(subprocess, "STARTUPINFO", FakeStartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    runner.killTree(Child(), osName="nt")
    (args, kwargs), = launched
    assert args == ["taskkill", "/F", "/T", "/PID", "4321"]
    assert kwargs["creationflags"] & runner.CREATE_NO_WINDOW and kwargs["startupinfo"].wShowWindow == 0
