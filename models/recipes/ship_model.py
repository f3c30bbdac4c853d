"""Copy a trained model into models/ under its shipped name (weights unchanged, so the same sha256).

    python models/recipes/ship_model.py runs/fcn/ceph-fine ceph-isbi19
    python models/recipes/ship_model.py runs/fcn/brain-robust brain-t1-ixi16 --float16

The metadata is the trained model's, with ``weights`` naming the shipped file. ``--float16`` stores the weights in
half precision (half the file, a new sha256, ``weights_dtype: float16`` in the metadata); measure that the
localizations do not change before shipping so (docs/results.md records it for the brain model).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from landmarkloc.io.atomic import atomic_path, write_text_atomic
from landmarkloc.io.modelfile import as_float16, load_model, model_paths, read_metadata, save_model

MODELS = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained model (stem, .safetensors or .json)")
    parser.add_argument("name", help="the shipped name, e.g. brain-t1-ixi16")
    parser.add_argument("--float16", action="store_true", help="store the weights in half precision")
    args = parser.parse_args()
    if args.float16:
        tensors, meta = load_model(args.model)
        meta = {k: v for k, v in meta.items() if k not in ("weights", "sha256", "format_version")}
        weights, _ = save_model(MODELS / args.name, as_float16(tensors), {**meta, "weights_dtype": "float16"})
        print(f"{args.model} -> {weights} (float16)")
        return
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
