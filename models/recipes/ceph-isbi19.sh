#!/usr/bin/env bash
# Train models/ceph-isbi19: global-to-local FCN (2D), 19 cephalometric landmarks, ISBI 2015 images 001-150.
# 0.5 mm model grid (the X-rays have 0.1 mm pixels), 10 % of the training images held out for model selection.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ceph.py
landmarkloc train-fcn runs/ceph/train.csv --spacing 0.1 -o runs/fcn/ceph-isbi19 --preset compact --intensity xray \
    --model-spacing 0.5 --crop-size 192 --sub-image-size 32 --iterations "${ITERATIONS:-6000}" --validate-every 500 \
    --seed 0 --max-minutes "${MAX_MINUTES:-55}" "$@"
cp runs/fcn/ceph-isbi19.safetensors runs/fcn/ceph-isbi19.json models/
