#!/usr/bin/env bash
# Train models/ceph-isbi19: global-to-local FCN (2D), 19 cephalometric landmarks, ISBI 2015 images 001-150.
# 0.5 mm model grid (the X-rays have 0.1 mm pixels), 10 % of the training images held out for model selection.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ceph.py
args=(runs/ceph/train.csv --spacing 0.1 -o runs/fcn/ceph-isbi19 --preset compact --intensity xray
      --model-spacing 0.5 --crop-size 192 --sub-image-size 32 --validate-every 500 --seed 0 --device cpu)
# Phase 1: 6000 iterations (cosine schedule); phase 2: resumed and extended to 9000 iterations
# (the cosine schedule recomputed over 9000 iterations: the rate rises to a quarter of the initial one and
# decays to zero again; the best validation model of both phases is kept), as the shipped model was trained.
landmarkloc train-fcn "${args[@]}" --iterations 6000 --max-minutes 55 "$@"
landmarkloc train-fcn "${args[@]}" --iterations 9000 --max-minutes 30 --resume "$@"
python models/recipes/add_intensity_profile.py runs/fcn/ceph-isbi19 runs/ceph/train.csv --spacing 0.1
cp runs/fcn/ceph-isbi19.safetensors runs/fcn/ceph-isbi19.json models/
