"""Child processes of the module (network inference, training): launch, progress, stop, kill.

No Slicer and no Qt here: the same code runs inside Slicer, in headless scripts and in CI.

Launching follows ``slicer.util.launchConsoleProcess``: on Windows the console window of the child
is hidden (``STARTUPINFO`` with ``SW_HIDE``; we also pass ``CREATE_NO_WINDOW``), so no window opens
per run and none can be closed by the user to kill the job. The child leads its own process group
(POSIX session / Windows process group) so that the whole tree can be killed at once.

``PythonSlicer`` is a launcher that starts ``python-real`` as its child and exits at once on
SIGTERM. Signalling it therefore never reaches the real Python process in time; a clean stop is
asked for through a *stop file* that the trainer polls after every step (``--stop-file``), and the
tree is killed only when that does not end it within a bound.
"""
import json
import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

#: Windows process-creation constants (the values of ``subprocess``'s names on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0

#: Exit statuses of a Python child that was stopped on request: 130 (SIGINT / KeyboardInterrupt,
#: also what ``python -m CGCTraining`` returns when cancelled), 143 (128 + SIGTERM), and the negative
#: signal numbers ``Popen.returncode`` reports for a child ended by that signal.
STOPPED_EXIT_CODES = (130, 143, -int(signal.SIGTERM), -int(signal.SIGINT))


def popenOptions(osName: Optional[str] = None) -> dict:
    """Keyword arguments of ``subprocess.Popen`` for a child job on this platform.

    Windows: hidden console (as ``slicer.util.launchConsoleProcess``), no console window at all
    (``CREATE_NO_WINDOW``) and a new process group. POSIX: a new session, so the child's process
    group holds all its descendants (``python-real`` under PythonSlicer, data loader workers).
    """
    osName = os.name if osName is None else osName
    if osName == "nt":
        info = subprocess.STARTUPINFO()
        info.dwFlags |= STARTF_USESHOWWINDOW
        info.wShowWindow = SW_HIDE
        return {"startupinfo": info, "creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def killTreeCommand(pid: int) -> list:
    """Windows: the command that kills a process and all its descendants."""
    return ["taskkill", "/F", "/T", "/PID", str(int(pid))]


def killTree(process: subprocess.Popen, osName: Optional[str] = None) -> None:
    """Kill a child started with :func:`popenOptions` and all its descendants; never blocks.

    POSIX: SIGKILL to the child's process group. Windows: ``taskkill /F /T`` started with a hidden
    window and not waited for.
    """
    if process is None:
        return
    if (osName or os.name) == "nt":
        if process.poll() is not None:  # taskkill /T needs the parent alive
            return
        try:
            subprocess.Popen(killTreeCommand(process.pid), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, **popenOptions("nt"))
        except OSError:
            process.kill()
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader: kill it even if the leader exited
    except (ProcessLookupError, PermissionError):
        pass


def killProcessTree(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Kill the tree (:func:`killTree`) and reap the child, waiting at most ``timeout`` seconds."""
    killTree(process)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def parseProgressLine(line: str) -> Optional[dict]:
    """Parse one stdout line of a child process into an event dict, or None for plain text.

    Children print one JSON object per line, e.g. ``{"event": "progress", "fraction": 0.42,
    "message": "window 12/30"}``. Anything that is not a JSON object with a string ``"event"`` is
    log text. For ``progress`` events ``fraction`` is coerced to a float clamped to [0, 1] (a
    missing or non-numeric fraction makes the line log text) and ``message`` defaults to "".
    """
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("event"), str):
        return None
    if record["event"] == "progress":
        try:
            fraction = float(record.get("fraction"))
        except (TypeError, ValueError):
            return None
        if fraction != fraction:  # NaN
            return None
        record["fraction"] = min(max(fraction, 0.0), 1.0)
        record["message"] = str(record.get("message", "") or "")
    return record


def event_text(payload) -> str:
    """A child's JSON event as a log line; warnings as their words (``warning: ...``)."""
    if isinstance(payload, str):
        return payload
    if payload.get("event") == "warning" and payload.get("message"):
        case = f"{payload['case']}: " if payload.get("case") else ""
        return f"{case}warning: {payload['message']}"
    return json.dumps(payload)


class ChildProcess:
    """A child process whose stdout JSON lines become events; never blocks the caller.

    Reader threads fill a queue; :meth:`poll` (called from a GUI timer or a loop) returns the
    events received so far as ``(kind, payload)`` with kind ``"progress"`` (payload: the event dict),
    ``"event"`` (other JSON events) or ``"log"`` (payload: a text line, stderr included).

    ``stopFile``: a path the child polls (``python -m CGCTraining --stop-file``); :meth:`requestStop`
    creates it. Without one, a stop request is a kill.
    """

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None,
                 stopFile: Optional[str] = None) -> None:
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = cwd
        self.stopFile = stopFile
        self.process: Optional[subprocess.Popen] = None
        self.cancelled = False       # killed on request (no clean stop)
        self.stopRequested = False   # asked to stop cleanly (stop file written)
        self.killed = False
        self._events: deque = deque()
        self._stderrTail: deque = deque(maxlen=20)
        self._threads: list = []
        self._exitedAt: Optional[float] = None
        self.lastProgress: Optional[dict] = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                        text=True, encoding="utf-8", errors="replace", bufsize=1, **popenOptions())
        for stream, isStderr in ((self.process.stdout, False), (self.process.stderr, True)):
            t = threading.Thread(target=self._read, args=(stream, isStderr), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, stream, isStderr: bool) -> None:
        try:
            for line in iter(stream.readline, ""):
                line = line.rstrip("\r\n")
                if isStderr:
                    if line.strip():
                        self._stderrTail.append(line)
                    self._events.append(("log", line))
                    continue
                record = parseProgressLine(line)
                if record is None:
                    self._events.append(("log", line))
                elif record["event"] == "progress":
                    self.lastProgress = record
                    self._events.append(("progress", record))
                else:
                    self._events.append(("event", record))
        except (OSError, ValueError):  # stream closed under us
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def poll(self) -> list:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def finished(self) -> bool:
        """True once the process exited and both output streams were read to the end.

        A leftover descendant that keeps the pipes open (e.g. an orphaned data-loader worker) is
        killed 2 s after the child exited, so a finished job never hangs the GUI.
        """
        if self.process is None or self.process.poll() is None:
            return False
        if not any(t.is_alive() for t in self._threads):
            return True
        if self._exitedAt is None:
            self._exitedAt = time.monotonic()
        elif time.monotonic() - self._exitedAt > 2.0:
            killTree(self.process)
            for t in self._threads:
                t.join(timeout=1.0)
            return True
        return False

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def errorSummary(self) -> str:
        """The last lines the child wrote on stderr (its ``error:`` line comes last)."""
        return "\n".join(self._stderrTail) or "(no error output)"

    def requestStop(self) -> bool:
        """Ask the child to stop cleanly (write the stop file). False when it has no stop file."""
        if not self.stopFile:
            return False
        self.stopRequested = True
        with open(self.stopFile, "w") as fh:
            fh.write("stop\n")
        return True

    def kill(self) -> None:
        """Kill the whole process tree now (frees GPU memory held by the child); does not wait."""
        self.killed = True
        if self.process is not None:
            killTree(self.process)

    def cancel(self, timeout: float = 5.0, wait: bool = True) -> None:
        """Kill the tree; with ``wait``, reap the child (at most ``timeout`` s; SIGKILL makes that short).
        The GUI cancels with ``wait=False`` and sees the end on its next poll."""
        self.cancelled = True
        self.kill()
        if wait and self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def wait(self, onProgress: Optional[Callable[[float, str], None]] = None,
             onLog: Optional[Callable[[str], None]] = None,
             shouldStop: Optional[Callable[[], bool]] = None, interval: float = 0.05,
             stopGraceSeconds: float = 60.0) -> int:
        """Block until the child ends, forwarding events. Returns the exit code.

        ``shouldStop()`` true: a clean stop is requested when the child has a stop file (killed
        after ``stopGraceSeconds`` if it has not ended), else the tree is killed.
        """
        stopDeadline = None
        while True:
            for kind, payload in self.poll():
                if kind == "progress" and onProgress:
                    onProgress(payload["fraction"], payload["message"])
                elif kind == "log" and onLog:
                    onLog(payload)
                elif kind == "event" and onLog:
                    onLog(event_text(payload))
            if self.finished:
                for kind, payload in self.poll():
                    if kind == "log" and onLog:
                        onLog(payload)
                return self.returncode
            if shouldStop is not None and not (self.cancelled or self.stopRequested) and shouldStop():
                if self.requestStop():
                    stopDeadline = time.monotonic() + stopGraceSeconds
                else:
                    self.cancel()
            if stopDeadline is not None and time.monotonic() > stopDeadline and not self.cancelled:
                self.cancel()
            time.sleep(interval)


@dataclass
class ChildJob:
    """A prepared child-process job: the command, its environment and where its files go.

    ``tempDir`` holds the inputs written for the child, its outputs and the stop file; it may hold
    patient data and is removed on every path (see :class:`CGCLesionSegSlicer.jobs.JobController`).
    """

    command: list
    env: dict
    kind: str = "segment"
    tempDir: Optional[str] = None
    outputPath: Optional[str] = None
    probabilityOutputPath: Optional[str] = None
    referenceVolumeNode: Any = None
    segmentName: str = "Lesion"
    stopFile: Optional[str] = None
    process: Optional[ChildProcess] = None
    extra: dict = field(default_factory=dict)


class CancelledError(RuntimeError):
    """The user cancelled a running job; nothing was added to the scene."""
