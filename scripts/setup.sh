#!/usr/bin/env bash
# Create a virtual environment (once; .venv, or $VENV) and install landmarkloc into it with the given extras.
# torch: the pinned CPU build is installed first unless torch is already there
# (install your CUDA build of torch into the environment first to use a GPU).
# The web app has its own environment (docs/web.md): VENV=.venv-web bash scripts/setup.sh web
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,slicer,demo,train,deformable}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
echo "setup: installing landmarkloc[$extras] into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
