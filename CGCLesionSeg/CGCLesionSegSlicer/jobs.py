"""The lifecycle of a child job, without Qt: start, poll, cancel, stop with a bound, clean-up.

The Widget drives a :class:`JobController` from a ``qt.QTimer`` (``poll()`` every 100 ms while it
returns True); tests and scripts drive it from a loop. Every path that ends a job (done, failed,
cancelled, stopped, scene closed, module cleaned up, a failed start) removes the job's temporary
folder, which may hold patient data, and leaves no process of the job's tree alive.

Outcomes passed to ``onFinished(job, outcome, message)``:

- ``"done"``: exit status 0 (for a segment job the caller loads the result before the folder goes);
- ``"stopped"``: a clean stop was asked for and the child ended with 0, 130 or 143 (the trainer
  wrote its checkpoint);
- ``"cancelled"``: killed on request (segment Cancel, or a stop that did not end within the bound);
- ``"failed"``: any other exit status (``message`` holds the child's last stderr lines);
- ``"abandoned"``: ended because the scene closed or the module was cleaned up (nothing is loaded).
"""
import logging
import shutil
import time
from typing import Callable, Optional

from .runner import STOPPED_EXIT_CODES, ChildJob, ChildProcess, event_text

#: How long a clean stop of training may take before the tree is killed (a CPU step takes 2-30 s,
#: then the checkpoint is written).
DEFAULT_STOP_GRACE_SECONDS = 90.0
#: Bound of the blocking wait for a clean stop when the module is cleaned up (Slicer quits or the
#: module is reloaded): longer would freeze the closing application.
DEFAULT_SHUTDOWN_GRACE_SECONDS = 15.0


def removeJobFolder(job: Optional[ChildJob]) -> None:
    """Remove the job's temporary folder (inputs, outputs, stop file); never raises."""
    if job is not None and job.tempDir:
        shutil.rmtree(job.tempDir, ignore_errors=True)


class JobController:
    """Runs at most one :class:`ChildJob` at a time and owns its lifecycle.

    ``onProgress(fraction, message)``, ``onLog(text)`` and ``onFinished(job, outcome, message)``
    are called from :meth:`poll` (the GUI thread inside Slicer). ``onFinished`` runs before the
    job's folder is removed, so it can read the outputs; an exception in it is logged and the
    folder is still removed.
    """

    def __init__(self, onProgress: Optional[Callable[[float, str], None]] = None,
                 onLog: Optional[Callable[[str], None]] = None,
                 onFinished: Optional[Callable[[ChildJob, str, str], None]] = None,
                 stopGraceSeconds: float = DEFAULT_STOP_GRACE_SECONDS,
                 shutdownGraceSeconds: float = DEFAULT_SHUTDOWN_GRACE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.onProgress = onProgress
        self.onLog = onLog
        self.onFinished = onFinished
        self.stopGraceSeconds = stopGraceSeconds
        self.shutdownGraceSeconds = shutdownGraceSeconds
        self.clock = clock
        self.job: Optional[ChildJob] = None
        self._stopDeadline: Optional[float] = None

    # ---- state ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.job is not None

    @property
    def stopping(self) -> bool:
        """A clean stop was requested and the child has not ended yet."""
        return self.job is not None and self._stopDeadline is not None

    # ---- start --------------------------------------------------------------------------------

    def start(self, job: ChildJob) -> ChildJob:
        """Start the job's process. On failure the job's folder is removed and the error raised."""
        if self.job is not None:
            removeJobFolder(job)
            raise RuntimeError("Another job is running; cancel it first.")
        try:
            job.process = ChildProcess(job.command, env=job.env, stopFile=job.stopFile)
            job.process.start()
        except BaseException:
            removeJobFolder(job)
            raise
        self.job = job
        self._stopDeadline = None
        return job

    # ---- poll (timer) -------------------------------------------------------------------------

    def poll(self) -> bool:
        """Forward the child's events; finish the job when it ended. True while a job is active."""
        job = self.job
        if job is None:
            return False
        for kind, payload in job.process.poll():
            if kind == "progress":
                self._emitProgress(payload["fraction"], payload.get("message", ""))
            elif kind == "event":
                self._emitLog(event_text(payload))
            else:
                self._emitLog(payload)
        if (self._stopDeadline is not None and not job.process.cancelled
                and self.clock() > self._stopDeadline and job.process.running):
            self._emitLog(f"The {job.kind} process did not stop within {self.stopGraceSeconds:.0f} s; killing it.")
            job.process.cancel(wait=False)
        if not job.process.finished:
            return True
        self._finish(job, *self._outcome(job))
        return False

    def _outcome(self, job: ChildJob) -> tuple:
        process = job.process
        code = process.returncode
        if process.stopRequested and not process.cancelled and (code == 0 or code in STOPPED_EXIT_CODES):
            return "stopped", "stopped (checkpoint kept)" if job.kind == "train" else "stopped"
        if process.cancelled:
            return "cancelled", "cancelled"
        if code == 0:
            return "done", "done"
        return "failed", f"exit code {code}: {process.errorSummary()}"

    def _finish(self, job: ChildJob, outcome: str, message: str) -> None:
        self.job = None
        self._stopDeadline = None
        for kind, payload in job.process.poll():  # last lines written before the exit
            if kind in ("log", "event"):
                self._emitLog(payload if kind == "log" else event_text(payload))
        try:
            if self.onFinished is not None:
                self.onFinished(job, outcome, message)
        except Exception:  # the folder must go whatever the handler does
            logging.exception("CGC Lesion Seg: handling the end of the %s job failed", job.kind)
            raise
        finally:
            removeJobFolder(job)

    # ---- cancel / stop --------------------------------------------------------------------------

    def cancel(self) -> str:
        """The user's Cancel. Training with a stop file: ask for a clean stop (killed after
        ``stopGraceSeconds``), returns "stopping". Otherwise kill the tree now, returns "cancelled".
        The job ends on a following :meth:`poll`. Returns "" when no job runs."""
        job = self.job
        if job is None:
            return ""
        if job.process.stopRequested or job.process.cancelled:
            # A second Cancel while stopping: kill now.
            job.process.cancel(wait=False)
            return "cancelled"
        if job.process.requestStop():
            self._stopDeadline = self.clock() + self.stopGraceSeconds
            self._emitLog("Stopping after the current step (the checkpoint is kept)...")
            return "stopping"
        job.process.cancel(wait=False)  # never blocks the GUI; poll() sees the end
        return "cancelled"

    def abandon(self, reason: str, graceSeconds: float = 0.0) -> Optional[ChildJob]:
        """End the job now without loading anything (scene closed, module cleaned up).

        With ``graceSeconds`` and a stop file, a clean stop is requested and waited for (blocking,
        at most that long) before the tree is killed. The folder is removed; ``onFinished`` gets
        outcome "abandoned". Returns the job, or None when none ran.
        """
        job = self.job
        if job is None:
            return None
        process = job.process
        if graceSeconds > 0 and process.running and (process.stopRequested or process.requestStop()):
            deadline = time.monotonic() + graceSeconds
            while process.running and time.monotonic() < deadline:
                time.sleep(0.05)
        process.cancel()
        deadline = time.monotonic() + 3.0
        while not process.finished and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self._finish(job, "abandoned", reason)
        except Exception:
            pass  # logged in _finish; abandoning must not raise (scene close, application exit)
        return job

    def onSceneStartClose(self) -> Optional[ChildJob]:
        """The scene is closing: a segment job's result could only reference removed nodes, so it
        is abandoned. Training does not touch the scene and keeps running."""
        if self.job is not None and self.job.kind != "train":
            return self.abandon("the scene was closed")
        return None

    def shutdown(self) -> Optional[ChildJob]:
        """Module cleanup (Slicer quits, the module is reloaded): end any job, folder removed.
        Training gets a bounded chance to write its checkpoint first."""
        if self.job is None:
            return None
        grace = self.shutdownGraceSeconds if self.job.kind == "train" else 0.0
        return self.abandon("the module was closed", graceSeconds=grace)

    # ---- callbacks ----------------------------------------------------------------------------

    def _emitProgress(self, fraction: float, message: str) -> None:
        if self.onProgress is not None:
            self.onProgress(fraction, message)

    def _emitLog(self, text: str) -> None:
        if self.onLog is not None:
            self.onLog(text)
