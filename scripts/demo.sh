#!/usr/bin/env bash
# Sets up the environment and runs the main job on a generated phantom (or on the paths given:
# scripts/demo.sh --input flair=F.nii.gz ...). Writes the segmentation and a PNG overview.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cgcseg demo --output-dir demo-output "$@"
