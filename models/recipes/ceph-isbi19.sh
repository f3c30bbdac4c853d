#!/usr/bin/env bash
# Train models/ceph-isbi19: global-to-local FCN (2D) with a fine stage, 19 cephalometric landmarks, ISBI 2015
# images 001-150. 10 % of the training images held out for model selection (seed 0: the same 15 images throughout).
#
# Step 1, global and local stages on a 0.5 mm grid (the X-rays have 0.1 mm pixels). Changes after the first error
# analysis in docs/results.md: histogram equalization, pooling before all four stages of the global network (as the
# paper's ceph network), wider last stages, 256-pixel crops, 10000 iterations. The shipped run: exactly this
# command, one process, one thread, on a 2-core CPU shared with other jobs; 10000 iterations took 48 minutes, the
# best validation model (iteration 9500) is the start of step 2 (sha256 cbd1c387...).
# (Tried afterwards, not used: --resume --iterations 15000 --max-minutes 28, which did not improve validation.)
#
# Step 2, fine stage: the second error analysis found the local stage's own accuracy at 0.5 mm to set the floor of
# the median (0.85 mm when started at the true position). A third bank of local networks on a 0.2 mm grid with
# 32-pixel (6.4 mm) sub-images refines the local estimate; the global and local networks of step 1 stay frozen.
# Third error analysis: a first fine stage of two levels (16/32 channels, 0.4 mm cells, as the local networks)
# reached median 0.75 mm on validation and the same on its own training images, so it lacked reach, not data: each
# output cell saw 10 pixels (2 mm), too little for landmarks defined by a larger shape (sella, nasion, gonion,
# articulare). The shipped fine networks have a third level (16/32/64 channels, head 64; 0.8 mm cells, each seeing
# 28 pixels = 5.6 mm). Three seeds of each: median 0.69-0.78 mm, MRE 1.05-1.07 mm, against 0.75-0.80 / 1.10-1.12
# for two levels; the shipped one is the seed with the lowest validation MRE (train-fcn's criterion), seed 2.
# The shipped run: exactly this command but started from the model shipped before it (--init-from ceph-isbi19:
# step 1 with the two-level fine stage; the same frozen global and local networks, so the same start, and its fine
# stage is not kept) and written to runs/fcn/ceph-fine-deep-s2; one thread, beside another run: 12000 iterations
# in 30 minutes, the best validation MRE at iteration 8000. heldout_train/heldout_val are train-fcn's split of
# step 1 (prepare_ceph.py), given as files so that every seed is selected on the same 15 images.
#
# A budget stop (--max-minutes) leaves runs/fcn/NAME.resume.*: continue with the same command and --resume.
# Tried and not shipped (issue 24): the global network alone trained further on radiographs from other machines
# and positionings (--train-stage global --augment radiograph: rotation 15 deg, scale 15 %, exposure, contrast,
# uneven exposure, noise, blur, crops beyond the picture; batch-norm statistics kept; lr 3e-4, cosine over 6000
# iterations, 19 min on one thread), from the shipped model on heldout_train/heldout_val:
#   landmarkloc train-fcn runs/ceph/heldout_train.csv --val runs/ceph/heldout_val.csv --spacing 0.1 \
#       -o runs/fcn/ceph-global --init-from runs/fcn/ceph-isbi19 --train-stage global --augment radiograph \
#       --crop-size 256 --seed 0 --iterations 6000 --validate-every 500 --lr 3e-4 --max-minutes 50 --device cpu
# Validation MRE stayed at 1.03-1.07 mm at every checkpoint (shipped 1.05). On the 15 validation images and their
# shifted copies (eval_shift.py ceph heldout_val --model): pooled errors above 4 mm 57 -> 52 (best checkpoint)
# or 55 (last), medians within 0.04 mm: no measurable gain for a new 10 MB model file, so not shipped. Its large
# errors are mostly of the local and fine stages (the nasion of image 065 is 5.5 mm off even when started at the
# reference point), which no global network reaches.
# Tried and not shipped (issue 24, second round): a fine-stage ensemble, the shipped fine networks (seed 2) with two
# more trained exactly as step 2 with seeds 0 and 1 (12000 iterations each, two runs at once, 30 min; best validation
# MRE 1.073 / 1.066 mm at iterations 8000 / 7000), stacked with
#   python models/recipes/local_ensemble.py runs/s32/ceph-fine3.json models/ceph-isbi19.json \
#       runs/fcn/ceph-fine-s0.json runs/fcn/ceph-fine-s1.json --stage fine
# On the 15 validation images and four draws of each shift (3638 points): errors above 4 mm 134 -> 118, above 5 mm
# 53 -> 35, MRE 1.15 -> 1.13 mm; but the errors left are the confident ones (the members' disagreement has AUC 0.73,
# every other signal fell) and the calibration refitted on them caught fewer out of fold (AUC 0.73 -> 0.64; 62 ->
# 48 % of the errors above 4 mm at 20 % flagged); the one point above 5 mm written selected (image 065's nasion) stayed
# selected in every copy. The three fine banks weigh 24 MB (12 MB in float16): a fresh clone would pass 90 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ceph.py
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" != "--fine-only" ]]; then
  landmarkloc train-fcn runs/ceph/train.csv --spacing 0.1 -o runs/fcn/ceph-isbi19 --preset compact \
      --intensity xray-equalized --model-spacing 0.5 --crop-size 256 --sub-image-size 32 \
      --global-arch '{"pool_before": [true, true, true, true], "stage_channels": [16, 32, 64, 128], "head_channels": 128}' \
      --validate-every 500 --seed 0 --device cpu --iterations 10000 --max-minutes 80
fi
landmarkloc train-fcn runs/ceph/heldout_train.csv --val runs/ceph/heldout_val.csv --spacing 0.1 -o runs/fcn/ceph-fine \
    --init-from runs/fcn/ceph-isbi19 --train-stage fine --fine-spacing 0.2 --fine-sub-image-size 32 \
    --fine-arch '{"stage_channels": [16, 32, 64], "stage_blocks": [1, 1, 1], "pool_before": [false, true, true], "head_channels": 64}' \
    --iterations 12000 --validate-every 1000 --seed 2 --device cpu --max-minutes 60
python models/recipes/ship_model.py runs/fcn/ceph-fine ceph-isbi19
echo "now calibrate: bash models/recipes/calibrate.sh ceph"
