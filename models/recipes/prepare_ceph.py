"""Prepare the ISBI 2015 cephalograms (reads ../shared/data/ceph, writes runs/ceph).

Training set: images 001-150 (the challenge's training set); Test1: 151-300.
Writes pixel tables for train-fcn (absolute image paths) and, for evaluation,
the Test1 reference landmarks as markups in physical mm (0.1 mm pixels,
origin 0, x = column, y = row), and the training set split as train-fcn splits
it with seed 0 (``heldout_train.csv``: 135 images, ``heldout_val.csv``: the 15
held out), so stages trained with other seeds keep the same validation images.
Nothing from the data enters the repository.

    python models/recipes/prepare_ceph.py [--data ../shared/data/ceph] [--out runs/ceph]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from landmarkloc.io.markups import write_points
from landmarkloc.points import ControlPoint
from landmarkloc.training.fcn import held_out_indices

PIXEL_MM = 0.1


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=repo.parent / "shared" / "data" / "ceph")
    parser.add_argument("--out", type=Path, default=repo / "runs" / "ceph")
    args = parser.parse_args()
    with open(args.data / "landmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    (args.out / "test1_ref").mkdir(parents=True, exist_ok=True)
    splits = {"train": range(1, 151), "test1": range(151, 301)}
    for split, numbers in splits.items():
        names = {f"{n:03d}.jpg" for n in numbers}
        chosen = [r for r in rows if r["image"] in names]
        with open(args.out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "index", "landmark", "x_px", "y_px"])
            for r in chosen:
                w.writerow([str(args.data / "images" / r["image"]), r["index"], r["landmark"], r["x_px"], r["y_px"]])
        (args.out / f"{split}_images.txt").write_text(
            "".join(f"{args.data / 'images' / name}\n" for name in sorted(names)))
        print(f"{split}: {len(names)} images -> {args.out / f'{split}.csv'}")
    train_images = sorted({r["image"] for r in rows if int(r["image"][:3]) in splits["train"]})
    held_out = {train_images[i] for i in held_out_indices(len(train_images), 0.1, seed=0)}
    for name, keep in (("heldout_train", False), ("heldout_val", True)):
        with open(args.out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "index", "landmark", "x_px", "y_px"])
            for r in rows:
                if r["image"] in train_images and (r["image"] in held_out) == keep:
                    w.writerow([str(args.data / "images" / r["image"]), r["index"], r["landmark"], r["x_px"],
                                r["y_px"]])
    for image in sorted({r["image"] for r in rows if int(r["image"][:3]) in splits["test1"]}):
        points = [ControlPoint(r["landmark"], [float(r["x_px"]) * PIXEL_MM, float(r["y_px"]) * PIXEL_MM, 0.0])
                  for r in rows if r["image"] == image]
        write_points(args.out / "test1_ref" / f"{image[:-4]}.mrk.json", points)


if __name__ == "__main__":
    main()
