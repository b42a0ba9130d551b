#!/usr/bin/env bash
# Creates .venv and installs the package with its test extras. Idempotent.
# torch is pinned here (not in pyproject) so that this machine takes the CPU wheel on its disk;
# the package itself only asks for torch>=2.1, so GPU users keep their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# Qt's offscreen platform (PySide6, the .ui layout test) loads these system libraries. Most machines
# have them; install the missing ones with apt when we can (root or passwordless sudo), else say so.
missing_qt_libs=""
for pair in libGL.so.1:libgl1 libEGL.so.1:libegl1 libxkbcommon.so.0:libxkbcommon0 \
            libfontconfig.so.1:libfontconfig1 libglib-2.0.so.0:libglib2.0-0 libdbus-1.so.3:libdbus-1-3; do
  if command -v ldconfig >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q "${pair%%:*}"; then
    missing_qt_libs="$missing_qt_libs ${pair##*:}"
  fi
done
if [ -n "$missing_qt_libs" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $missing_qt_libs >/dev/null
  else
    echo "note: Qt offscreen needs:$missing_qt_libs (the .ui layout test is skipped or fails without them)" >&2
  fi
fi
