"""Stand-in for Slicer's PythonSlicer launcher (used by test_slicer_jobs.py, not a test itself).

PythonSlicer starts ``python-real`` as its *child* and exits at once on SIGTERM, leaving that child
running. This script does the same: ``launcher_standin.py PIDFILE COMMAND...`` starts COMMAND as its
child (stdout/stderr inherited, so the child writes into the module's pipes), writes
``<launcher pid> <child pid>`` to PIDFILE, exits with 143 at once on SIGTERM, and otherwise exits
with the child's exit status.
"""
import os
import signal
import subprocess
import sys


def main() -> int:
    pid_file, command = sys.argv[1], sys.argv[2:]
    child = subprocess.Popen(command)
    with open(pid_file + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}\n")
    os.replace(pid_file + ".tmp", pid_file)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(143))
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
