#!/usr/bin/env bash
# Creates .venv once and installs the package into it (editable, so code changes need no reinstall).
#   scripts/setup.sh          what the demo needs: the package and its runtime dependencies
#   scripts/setup.sh --test   adds the test extras of pyproject.toml (pytest, scikit-learn, slicer-core, ...)
# A second call with pyproject.toml unchanged makes no pip call. torch is pinned here (not in
# pyproject) so that this machine takes the CPU wheel on its disk; the package itself only asks for
# torch>=2.1, so GPU users keep their own build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want=demo
if [ "${1:-}" = "--test" ]; then want=test; fi
key="$("$PY" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()[:16])')"
stamp() { echo ".venv/.cgc-setup-$1"; }
installed() { [ -f "$(stamp "$1")" ] && [ "$(cat "$(stamp "$1")")" = "$key" ]; }
if [ -x .venv/bin/python ] && { installed test || { [ "$want" = demo ] && installed demo; }; } \
   && .venv/bin/python -c "import CGCLesionSegLib" 2>/dev/null; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (once; about 1-2 minutes)" >&2
  "$PY" -m venv .venv
fi
# pip's own chatter (and this machine's index warnings) goes to .venv/setup.log, shown only on failure.
pip() {
  if ! .venv/bin/python -m pip -q --disable-pip-version-check "$@" >> .venv/setup.log 2>&1; then
    echo "scripts/setup.sh: pip install $* failed; the end of .venv/setup.log:" >&2
    tail -n 30 .venv/setup.log >&2
    exit 1
  fi
}
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
if [ "$want" = test ]; then pip install -e ".[test]"; else pip install -e .; fi
rm -f "$(stamp demo)" "$(stamp test)"
echo "$key" > "$(stamp "$want")"
