#!/usr/bin/env bash
# Set up .venv and run the linter and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,slicer,demo,train,deformable
.venv/bin/ruff check landmarkloc Testing LandmarkLocalizer RPROneShot scripts models
.venv/bin/python -m pytest "$@"
