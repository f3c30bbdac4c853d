"""Add the training images' intensity profile to an FCN model trained before train-fcn recorded it.

The profile (what the training images look like to the network; for a model that equalizes
histograms, their own percentile range) lets localize warn about images unlike them. It is
computed as train-fcn does, from the images of the training dataset description (including any
images train-fcn held out for validation), and written into the model's JSON; the weights and
their sha256 are unchanged.

    python models/recipes/add_intensity_profile.py MODEL DATASET [--spacing 0.1] [--masked-copies]
"""

from __future__ import annotations

import argparse
import json

from landmarkloc.geometry.intensity import intensity_profile, profile_preset
from landmarkloc.io.atomic import write_text_atomic
from landmarkloc.io.datasets import load_dataset
from landmarkloc.io.modelfile import model_paths, read_metadata
from landmarkloc.training.fcn import prepare_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--spacing", type=float, help="pixel size of 2D picture inputs")
    parser.add_argument("--masked-copies", action="store_true")
    args = parser.parse_args()
    meta = read_metadata(args.model)
    view = profile_preset(meta["intensity"])  # an equalizing model's profile: the images' percentile range
    cases = prepare_cases(load_dataset(args.dataset), meta["spacing"], view, args.spacing,
                          quiet=False, masked_copies=args.masked_copies,
                          foreground_margin_mm=meta.get("foreground_margin_mm"))
    meta["intensity_profile"] = intensity_profile([c.array for c in cases], view)
    _, meta_path = model_paths(args.model)
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    print(f"added the intensity profile of {len(cases)} training images to {meta_path}")


if __name__ == "__main__":
    main()
