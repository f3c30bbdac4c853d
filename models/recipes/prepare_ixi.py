"""Prepare the IXI brain MRI for training and evaluation (reads ../shared/data/ixi, writes runs/ixi).

Reference landmarks and boxes are derived from the automatic DLMUSE label maps
(IXI-16 centroids, IXI-8 boxes and extreme points), so results are "against a
reference derived from an automatic segmentation". Split as the data README
suggests: sorted ids, first 100 train, next 20 validation, last 20 test.
Nothing from the data is written into the repository.

    python models/recipes/prepare_ixi.py [--data ../shared/data/ixi] [--out runs/ixi]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import SimpleITK as sitk

from landmarkloc.geometry.labels import label_boxes, label_centroids, label_extreme_points
from landmarkloc.io.image import write_image
from landmarkloc.io.markups import write_boxes, write_points
from landmarkloc.runtime import progress

IXI16 = {"3rdVentricle": 4, "4thVentricle": 11, "BrainStem": 35, "Amygdala_R": 31, "Amygdala_L": 32,
         "Caudate_R": 36, "Caudate_L": 37, "Hippocampus_R": 47, "Hippocampus_L": 48, "Pallidum_R": 55,
         "Pallidum_L": 56, "Putamen_R": 57, "Putamen_L": 58, "ThalamusProper_R": 59, "ThalamusProper_L": 60,
         "CorpusCallosum": 95}
IXI8 = {"BrainStem": 35, "Hippocampus_R": 47, "Hippocampus_L": 48, "LateralVentricle_R": 51,
        "LateralVentricle_L": 52, "ThalamusProper_R": 59, "ThalamusProper_L": 60, "CerebellumExterior_R": 38}
SPLITS = (("train", 0, 100), ("val", 100, 120), ("test", 120, 140))


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "ixi")
    parser.add_argument("--out", type=Path, default=repo / "runs" / "ixi")
    args = parser.parse_args()
    ids = sorted(p.name[: -len(".nii.gz")] for p in (args.data / "t1").glob("*.nii.gz"))
    for sub in ("landmarks", "boxes", "extreme", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for subject in progress(ids, desc="deriving references"):
        seg = sitk.Cast(sitk.ReadImage(str(args.data / "seg" / f"{subject}.nii.gz")), sitk.sitkUInt16)
        write_points(args.out / "landmarks" / f"{subject}.mrk.json",
                     label_centroids(seg, list(IXI16.values()), list(IXI16)))
        write_boxes(args.out / "boxes" / f"{subject}.mrk.json", label_boxes(seg, list(IXI8.values()), list(IXI8)))
        write_points(args.out / "extreme" / f"{subject}.mrk.json",
                     label_extreme_points(seg, list(IXI8.values()), list(IXI8)))
        write_image(sitk.Cast(seg > 0, sitk.sitkUInt8), args.out / "masks" / f"{subject}.nii.gz")
    for split, lo, hi in SPLITS:
        with open(args.out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "landmarks", "mask"])
            for subject in ids[lo:hi]:
                w.writerow([str(args.data / "t1" / f"{subject}.nii.gz"),
                            str(args.out / "landmarks" / f"{subject}.mrk.json"),
                            str(args.out / "masks" / f"{subject}.nii.gz")])
        (args.out / f"{split}_images.txt").write_text(
            "".join(f"{args.data / 't1' / f'{subject}.nii.gz'}\n" for subject in ids[lo:hi]))
        print(f"{split}: {hi - lo} subjects -> {args.out / f'{split}.csv'}, {args.out / f'{split}_images.txt'}")


if __name__ == "__main__":
    main()
