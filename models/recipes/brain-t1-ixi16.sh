#!/usr/bin/env bash
# Train models/brain-t1-ixi16: global-to-local FCN, 16 brain landmarks (IXI-16 centroids), T1 MRI, 2 mm.
# Train split (100 subjects, each also as a skull-stripped copy), validation split (20) for model selection.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-t1-ixi16 --preset compact \
    --intensity mr --model-spacing 2 --iterations 4000 --validate-every 500 --masked-copies --seed 0 \
    --max-minutes "${MAX_MINUTES:-55}" --device cpu "$@"
python models/recipes/add_intensity_profile.py runs/fcn/brain-t1-ixi16 runs/ixi/train.csv --masked-copies
cp runs/fcn/brain-t1-ixi16.safetensors runs/fcn/brain-t1-ixi16.json models/
