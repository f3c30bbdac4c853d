#!/usr/bin/env bash
# Set up .venv-web (once: the web app's own environment, docs/web.md) and serve `landmarkloc web` with the
# given options, e.g. bash scripts/web.sh --data-folder ~/scans
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-web bash scripts/setup.sh web
exec .venv-web/bin/landmarkloc web "$@"
