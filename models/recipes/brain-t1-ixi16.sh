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
# Both cost more accuracy on ordinary images than the target allows (median <= 0.90 mm) within a CPU budget (both
# ran before finetune kept the batch-norm statistics; see step 4).
#
# Step 4 (issue 24, a strong bias field): on the 20 validation subjects under a strong bias
# field the step-2 model put 142 of 320 points more than 3 mm off (median 1.84 mm), 137 of them because its
# global estimate was more than 8 mm off (the local stage reaches 16 mm): the global network first, then the
# local one, once the global estimates came near (a coil profile scales one 32 mm sub-image by 0.5-1.5).
#   4a. the global network alone, trained further with the appearance terms (--train-stage global --augment
#       appearance, lr 3e-4, cosine over 3000 iterations, best validation MRE at 2250, 19 min on one thread).
#       This run updated the batch-norm statistics (--update-batch-norm, then train-fcn's only behaviour; its
#       validation MRE swung 1.08-1.32 mm between checkpoints); the same run with --augment appearance-strong
#       swung to 53 mm and was stopped, which is why train-fcn now keeps them by default. Rerun with them kept
#       (3000 iterations, 11 min), composed with 4b's local networks, it was worse on the validation subjects
#       and their shifted copies (errors above 3 mm pooled 254 against 217, tilted 30 degrees median 1.45 mm).
#   4b. both networks trained further (--train-stage finetune --augment appearance-strong, batch-norm statistics
#       kept): 3000 iterations, best validation MRE at 2500 (1.044 mm, median 0.892; step 2: 1.057 / 0.855),
#       53 min on one thread beside other jobs. Its local networks read biased images (validation, bias field:
#       median 1.05 mm), but its global network lost the wide fields of view and tilts (zero-padded 80 mm:
#       median 2.53 mm, against 0.93 for step 2).
#   shipped as step 4 (the start of step 5): the global network of 4a with the local networks of 4b
#       (compose_stages.py), in float16 (on 10 validation subjects clean and biased, 316 of 320 points within
#       0.1 mm of float32, 4 within 1.4 mm,
#       the same median error and the same 15 points above 3 mm). Validation medians, step 2 -> shipped: clean
#       0.86 -> 0.85, zero-padded 80 mm 0.93 -> 0.88, 600 mm corner 0.91 -> 0.88, tilted 30 degrees
#       0.89 -> 1.00, bias field 1.84 -> 1.07, skull-stripped 0.92 -> 0.91; errors above 3 mm pooled over the
#       shifted copies 207 -> 217 (more on padding and tilts, far fewer under a bias field).
#   Tried and not shipped: the global network alone with --augment appearance-strong and the statistics kept
#   (validation MRE 1.23-2.43 mm over 1250 iterations, stopped); a ceph counterpart (ceph-isbi19.sh).
#
# Step 5, the shipped weights (issue 24, the field of view and tilts that step 4 lost): on the validation subjects and
# their shifted copies step 4 put 225 points more than 3 mm off (zero-padded 80 mm 33, tilted 30 degrees 56, against
# 8 on the original images). The global network of step 4, trained further alone with the clinical augmentation
# (geometry: rotation 30 degrees, scale 15 %, crops reaching beyond the image; appearance as step 4a), batch-norm
# statistics kept (train-fcn's default), from the step-4 file (float16, sha256 d0cba314...; the local networks of
# 4b unchanged): --train-stage global --augment clinical, lr 3e-4, cosine over 3000 iterations, best validation MRE
# at 2500 (0.984 mm, median 0.807; step 4: 1.044 / 0.892), 6.3 min on one thread beside the next run. Validation
# through localize (20 subjects, 320 points per row), step 4 -> step 5: errors above 3 mm pooled over the eight
# shifts 225 -> 101 (zero-padded 33 -> 10, 600 mm corner 28 -> 9, tilted 56 -> 10, bias field 41 -> 33); medians
# clean 0.85 -> 0.81, tilted 1.00 -> 0.85, bias 1.07 -> 1.02 mm. Stored in float16 (clean and bias-field validation
# images: 638 of 640 points within 0.1 mm of float32, max 0.73 mm).
# Tried beside it and not shipped, the same run with --update-batch-norm (pooled 157 errors above 3 mm, tilted 35),
# and with appearance-strong's appearance terms and the clinical geometry (--augment '{"rotation_deg": 30, "scale":
# 0.15, "intensity_scale": 0.5, "intensity_shift": 0.1, "gamma": 0.4, "bias_field": 0.8, "noise_std": 0.05,
# "blur_mm": 1.5, "anisotropy": 0.3, "outside_view": 0.3}'; pooled 208, zero-padded 33).
#
# Steps 1-3: bash models/recipes/brain-t1-ixi16.sh [--local-only]; step 4 (from step 2's runs/fcn/brain-local3):
# bash models/recipes/brain-t1-ixi16.sh --step4; step 5 (from the file step 4 ships): ... --step5
# A budget stop (--max-minutes) leaves runs/fcn/NAME.resume.*: continue with the same command and --resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" == "--step4" ]]; then  # issue 24: step 4 from the step-2 model (see above)
  landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-global-appearance \
      --init-from runs/fcn/brain-local3 --train-stage global --augment appearance --update-batch-norm \
      --foreground-margin 20 --masked-copies --seed 0 --iterations 3000 --validate-every 250 --lr 3e-4 \
      --max-minutes 60 --device cpu
  landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-finetune-bn \
      --init-from runs/fcn/brain-local3 --train-stage finetune --augment appearance-strong --foreground-margin 20 \
      --masked-copies --seed 0 --iterations 3000 --validate-every 250 --lr 3e-4 --max-minutes 60 --device cpu
  python models/recipes/compose_stages.py runs/fcn/brain-global-appearance runs/fcn/brain-finetune-bn \
      runs/fcn/brain-robust
  python models/recipes/ship_model.py runs/fcn/brain-robust brain-t1-ixi16 --float16
  echo "now calibrate: bash models/recipes/calibrate.sh brain"
  exit 0
fi
if [[ "${1:-}" == "--step5" ]]; then  # issue 24: step 5 from the step-4 file in models/ (see above)
  landmarkloc train-fcn runs/ixi/train.csv --val runs/ixi/val.csv -o runs/fcn/brain-global-clinical-kept \
      --init-from models/brain-t1-ixi16 --train-stage global --augment clinical --foreground-margin 20 \
      --masked-copies --seed 0 --iterations 3000 --validate-every 250 --lr 3e-4 --max-minutes 45 --device cpu
  python models/recipes/ship_model.py runs/fcn/brain-global-clinical-kept brain-t1-ixi16 --float16
  echo "now calibrate: bash models/recipes/calibrate.sh brain"
  exit 0
fi
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
