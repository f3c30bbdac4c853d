#!/usr/bin/env bash
# Train models/brain-t1-ixi16: global-to-local FCN, 16 brain landmarks (IXI-16 centroids), T1 MRI, 2 mm.
# Train split (100 subjects, each also as a skull-stripped copy), validation split (20) for model selection.
#
# Step 1, global and local stages together (compact preset): 4000 iterations, 30.6 min on one thread; its best
# validation model (iteration 4000, sha256 a9a018e3...) was the model shipped until the brain error analysis in
# docs/results.md and is the start of step 2.
#
# Step 2, a deeper local stage: that analysis found the local networks to err almost as much on their own training
# images as on validation images (median 1.14 vs 1.28 mm; the errors above 3 mm mostly not caused by the global
# estimate), so they lacked reach, not data: each output cell of the two-level networks (16/32 channels, 4 mm
# cells) saw 10 voxels (20 mm). The shipped local networks have a third level (16/32/64 channels, head 64; 8 mm
# cells, each seeing the whole 16-voxel sub-image), trained with the global network of step 1 frozen. Two seeds:
# validation MRE 1.057 / 1.061 mm, median 0.855 / 0.876 mm (step 1: 1.515 / 1.283); the shipped one is the seed
# with the lower validation MRE (train-fcn's criterion), seed 0. The shipped run: exactly this command but started
# from the model shipped before it (--init-from models/brain-t1-ixi16, the same file as step 1's output), one
# thread, beside the seed-1 run: 6000 iterations in 45 minutes, the best validation MRE at iteration 6000.
#
# Step 3, robustness to the images clinics produce (issue 24): the error analysis on the validation subjects
# changed as clinical images differ (models/recipes/eval_shift.py, docs/results.md) found the shipped model up to
# hundreds of mm off on a wider or off-centre field of view (empty space pulled the global votes and shifted the
# intensity percentiles) and 2 mm off in median on a 30-degree tilt. The step: every image cut to its anatomy plus
# 20 mm before normalization (foreground_margin_mm: 20 in the model's JSON; the weights of step 2 unchanged), and
# the pose from the shape model that calibrate.sh fits (a head tilted beyond any validation pose is localized again
# on a turned grid). On the validation subjects these two alone brought the 80 mm zero-padded images from median
# 8.3 to 0.90 mm and the 30-degree tilts from 1.83 to 0.79 mm (8 subjects; docs/results.md).
# Tried and not shipped, measured on the validation subjects (train-fcn's best-MRE checkpoint; step 2: MRE 1.06 mm,
# median 0.86 mm): continuing both networks with the augmentation of clinical scans, one thread each beside the
# other jobs, both from step 2 with --train-stage finetune --foreground-margin 20 --masked-copies --seed 0:
#   --augment clinical --lr 5e-4 --iterations 3000 (stopped at 2300 for time; best at 2000): MRE 1.60, median 1.19;
#     on 6 subjects its local stage did better than step 2 under a strong bias field (median 2.02 vs 3.40 mm) and
#     worse on the images as they are (1.30 vs 0.86 mm);
#   --augment appearance --lr 3e-4 --iterations 2000 (best at 1000): MRE 1.19, median 0.97 mm.
# Both cost more accuracy on ordinary images than the target allows (median <= 0.90 mm) within a CPU budget; a
# longer run (or a GPU) is the next try. The commands, to rerun them:
#   landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-appearance \
#       --init-from runs/fcn/brain-local3 --train-stage finetune --augment appearance --foreground-margin 20 \
#       --masked-copies --seed 0 --iterations 2000 --validate-every 500 --lr 3e-4 --device cpu
#
# A budget stop (--max-minutes) leaves runs/fcn/NAME.resume.*: continue with the same command and --resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" != "--local-only" ]]; then
  landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-t1-ixi16 --preset compact \
      --intensity mr --model-spacing 2 --iterations 4000 --validate-every 500 --masked-copies --seed 0 \
      --max-minutes "${MAX_MINUTES:-55}" --device cpu
  python models/recipes/add_intensity_profile.py runs/fcn/brain-t1-ixi16 runs/ixi/train.csv --masked-copies
fi
landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-local3 \
    --init-from runs/fcn/brain-t1-ixi16 --train-stage local --masked-copies --seed 0 \
    --local-arch '{"stage_channels": [16, 32, 64], "stage_blocks": [1, 1, 1], "pool_before": [false, true, true], "head_channels": 64}' \
    --iterations 6000 --validate-every 500 --max-minutes "${MAX_MINUTES:-55}" --device cpu
python models/recipes/ship_model.py runs/fcn/brain-local3 brain-t1-ixi16
python - <<'PY'  # step 3: the shipped model cuts every image to its anatomy plus 20 mm (metadata only)
import json, pathlib
path = pathlib.Path("models/brain-t1-ixi16.json")
meta = json.loads(path.read_text())
meta["foreground_margin_mm"] = 20.0
path.write_text(json.dumps(meta, indent=2) + "\n")
PY
echo "now calibrate: bash models/recipes/calibrate.sh brain"
