"""Copy a trained model into models/ under its shipped name (weights unchanged, so the same sha256).

    python models/recipes/ship_model.py runs/fcn/ceph-fine ceph-isbi19

The metadata is the trained model's, with ``weights`` naming the shipped file.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from landmarkloc.io.atomic import atomic_path, write_text_atomic
from landmarkloc.io.modelfile import model_paths, read_metadata

MODELS = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained model (stem, .safetensors or .json)")
    parser.add_argument("name", help="the shipped name, e.g. brain-t1-ixi16")
    args = parser.parse_args()
    weights, _ = model_paths(args.model)
    meta = read_metadata(args.model)
    shipped_weights, shipped_meta = model_paths(MODELS / args.name)
    with atomic_path(shipped_weights) as tmp:
        shutil.copyfile(weights, tmp)
    meta["weights"] = shipped_weights.name
    write_text_atomic(shipped_meta, json.dumps(meta, indent=2) + "\n")
    print(f"{args.model} -> {shipped_weights}")


if __name__ == "__main__":
    main()
