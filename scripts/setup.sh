#!/usr/bin/env bash
# Create .venv (once) and install landmarkloc into it with the given extras.
# torch: the pinned CPU build is installed first unless torch is already in .venv
# (install your CUDA build of torch into .venv first to use a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,slicer,demo,train,deformable}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version 2>&1)"
    "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
echo "setup: installing landmarkloc[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
