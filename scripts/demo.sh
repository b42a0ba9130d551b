#!/usr/bin/env bash
# Sets up .venv once (runtime dependencies only) and runs the whole pipeline on a generated phantom,
# or on the case given: scripts/demo.sh --input flair=F.nii.gz ... [--output-dir DIR].
# Outputs go to <repo>/demo-output unless --output-dir says otherwise; relative paths are taken from
# the folder you run it in.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/cgcseg" demo --output-dir "$repo/demo-output" "$@"
