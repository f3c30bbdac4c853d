#!/usr/bin/env bash
# Train the one-shot RPR models shipped as models/brain-t1-rpr-{coarse,fine} (2-core CPU budget), as they were
# trained: self-supervised on the IXI T1 volumes of the train split only (no labels), validation on the val split.
# Phase 1: 25 min per stage; phase 2: resumed for 16 min; phase 3: resumed for 15 min with skull-stripped copies
# of the volumes (brain masks from prepare_ixi.py) in training and validation, so that the models also work on
# skull-stripped images such as the demo's MNI152 template. Coarse and fine can run at the same time (one core each).
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
common=(--images runs/ixi/train_images.txt --val-images runs/ixi/val_images.txt --preset compact
        --base-channels 8 --intensity mr --seed 0 --device cpu)
for stage in coarse fine; do
    out=runs/rpr/brain-t1-rpr-$stage
    OMP_NUM_THREADS=1 landmarkloc train-rpr "${common[@]}" --stage $stage -o $out --max-minutes 25
    OMP_NUM_THREADS=1 landmarkloc train-rpr "${common[@]}" --stage $stage -o $out --max-minutes 16 --resume
    OMP_NUM_THREADS=1 landmarkloc train-rpr "${common[@]}" --stage $stage -o $out --max-minutes 15 --resume \
        --masks runs/ixi/masks
    cp $out.safetensors $out.json models/
done
python models/recipes/mni152_support_template.py  # the demo's support template depends on these models
