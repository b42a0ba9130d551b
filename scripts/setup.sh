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
