#!/usr/bin/env bash
# Fit the calibrated uncertainty ("uncertain" = likely error above the radius) of the shipped FCN models on their
# validation splits and store it in their JSON metadata (weights and sha256 unchanged). Rerun after retraining.
#   brain-t1-ixi16: IXI validation split (sorted ids 101-120), radius 3 mm, flag budget 10 % (skull-stripped
#                   copies are one of the shifts). Tried: --masked-copies (the label-mask skull-stripped copies
#                   counted with the originals for the budget and the guards): skull-stripped validation points
#                   flagged 15 % -> 10 % (the same 7 errors above 3 mm), but the wider guards let a tilted head's
#                   point 5.6 mm off through (P 0.02, local and global estimates 15.3 mm apart, guard 15.5 mm);
#                   not kept, so skull-stripped images get more flags than the originals (docs/results.md);
#   ceph-isbi19:    the 15 training images train-fcn held out (heldout_val.csv, seed 0), each also under four
#                   random draws of the three cephalogram shifts (--shifts 'ceph*4': 195 images, 199 errors above
#                   4 mm), radius 4 mm, flag budget 20 %. (Before, without shifts, those 15 images had only 9 errors
#                   above 4 mm and the calibration was cross-fitted over all 150 training images; on them the
#                   errors are smaller than on new images, which a conformal radius must not learn from.)
# Both also see shifted copies of their images (--shifts, issue 24: wider and off-centre fields of view, tilts,
# other voxel sizes, bias fields, skull stripping, cut-off tops; cephalograms rotated, resampled, cropped), aim to
# catch 80 % of the errors above the radius (--catch 0.8) within the flag budget counted on the unshifted images
# (brain 10 %, ceph 20 %), and get guards, the shape model and the 90 % conformal error radius. Each runs twice:
# the first run (unshifted images only) fits the shape model, whose pose the second run's localizations use (a
# tilted head is localized again on a turned grid), so the calibration sees what localize does.
set -euo pipefail
cd "$(dirname "$0")/../.."
python models/recipes/prepare_ixi.py
python models/recipes/prepare_ceph.py
mkdir -p runs/calib
only="${1:-all}"
if [[ "$only" == all || "$only" == brain ]]; then
  landmarkloc calibrate models/brain-t1-ixi16.json --val runs/ixi/val.csv --radius 3 --catch 0.8 \
      --max-flagged 0.10 --device cpu
  landmarkloc calibrate models/brain-t1-ixi16.json --val runs/ixi/val.csv --radius 3 --catch 0.8 \
      --max-flagged 0.10 --shifts brain --records runs/calib/brain_val_shift.json --device cpu
fi
if [[ "$only" == all || "$only" == ceph ]]; then
  landmarkloc calibrate models/ceph-isbi19.json --val runs/ceph/heldout_val.csv --spacing 0.1 --radius 4 \
      --catch 0.8 --max-flagged 0.20 --device cpu
  landmarkloc calibrate models/ceph-isbi19.json --val runs/ceph/heldout_val.csv --spacing 0.1 --radius 4 \
      --catch 0.8 --max-flagged 0.20 --shifts 'ceph*4' --records runs/calib/ceph_heldout_shift.json --device cpu
fi
