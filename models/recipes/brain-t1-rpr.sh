#!/usr/bin/env bash
# Train the one-shot RPR models shipped as models/brain-t1-rpr-{coarse,fine} (2-core CPU budget).
# Self-supervised: IXI T1 volumes of the train split only (no labels), validation on the val split.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
common=(--images runs/ixi/train_images.txt --val-images runs/ixi/val_images.txt --preset compact
        --base-channels 8 --intensity mr --seed 0 --device cpu)
landmarkloc train-rpr "${common[@]}" --stage coarse -o runs/rpr/brain-t1-rpr-coarse --max-minutes "${COARSE_MINUTES:-25}" "$@"
landmarkloc train-rpr "${common[@]}" --stage fine -o runs/rpr/brain-t1-rpr-fine --max-minutes "${FINE_MINUTES:-25}" "$@"
cp runs/rpr/brain-t1-rpr-coarse.safetensors runs/rpr/brain-t1-rpr-coarse.json \
   runs/rpr/brain-t1-rpr-fine.safetensors runs/rpr/brain-t1-rpr-fine.json models/
