#!/usr/bin/env bash
# Set up .venv and run the demo: brain landmarks and one-shot boxes on the MNI152 template.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
.venv/bin/landmarkloc demo "$@"
