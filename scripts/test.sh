#!/usr/bin/env bash
# Set up .venv (and .venv-web, the web app's own environment: docs/web.md) and run the linter and the whole
# test suite. The browser tests (Testing/test_web.py) also need Chromium at /usr/bin/chromium; .ci/run installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,slicer,demo,train,deformable
VENV=.venv-web bash scripts/setup.sh web
.venv/bin/ruff check landmarkloc Testing LandmarkLocalizer RPROneShot LandmarkLocWeb scripts models
.venv/bin/python -m pytest "$@"
