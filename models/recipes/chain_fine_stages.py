"""Chain the fine stages of FCN models that share their global and local networks into one model.

    python models/recipes/chain_fine_stages.py OUTPUT FIRST SECOND [MORE ...] [--val CSV --spacing MM]

Each input was trained from the same start with ``train-fcn --init-from START
--train-stage fine`` (a fine stage is trained on sub-images that hold its
landmark anywhere, whatever came before it, so stages trained apart can be
chained). The output refines the local estimate with FIRST's fine stages, then
SECOND's, and so on: e.g. a fine network that sees more context followed by one
with finer cells. Its metadata is FIRST's with the chained ``fine_stages``, each
input's training run (``fine_stage_runs``), no calibration (refit it with
``landmarkloc calibrate``) and, with ``--val``, the chain's validation (as train-fcn measures it).
"""

from __future__ import annotations

import argparse
import sys

import torch

from landmarkloc.inference.fcn import load_fcn_model
from landmarkloc.io.datasets import load_dataset
from landmarkloc.io.modelfile import save_model
from landmarkloc.training.fcn import FCNTrainConfig, prepare_cases, validate

SHARED = ("global_net.", "local_net.")


def chain(models: list) -> tuple:
    """(weights, metadata) of the chained model."""
    tensors, meta = load_fcn_model(models[0])
    shared = {k: v for k, v in tensors.items() if k.startswith(SHARED)}
    out, stages, runs = dict(shared), [], []
    for path in models:
        weights, path_meta = load_fcn_model(path)
        same = all(k in weights and torch.equal(weights[k], v) for k, v in shared.items())
        if not same or len(weights.keys() & shared.keys()) != len(shared):
            sys.exit(f"{path}: its global or local networks differ from {models[0]}'s (not trained from one start)")
        if not path_meta["fine_stages"]:
            sys.exit(f"{path} has no fine stage")
        for i, stage in enumerate(path_meta["fine_stages"]):
            prefix, new = f"fine_nets.{i}.", f"fine_nets.{len(stages)}."
            out.update({new + k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
            stages.append(stage)
        runs.append({"model": str(path), "sha256": path_meta.get("sha256"), "train_config": path_meta["train_config"],
                     "training": path_meta["training"], "validation": path_meta["validation"]})
    meta = {k: v for k, v in meta.items() if k not in ("calibration", "sha256", "weights", "format_version")}
    meta.update(fine_stages=stages, fine_stage_runs=runs)
    return out, meta


def chain_validation(weights: dict, meta: dict, val_csv: str, spacing) -> dict:
    """The chained model's validation, as train-fcn measures it (every stage on its own grid)."""
    from landmarkloc.inference.fcn import build_network

    network = build_network(meta)
    network.load_state_dict(weights, strict=True)
    cfg = FCNTrainConfig(ndim=meta["ndim"], variant=meta["variant"])
    dataset = load_dataset(val_csv)
    grids = [(meta["spacing"], meta["sub_image_size"])] + [(s["spacing"], s["sub_image_size"])
                                                             for s in meta["fine_stages"]]
    cases = {tuple(sp): prepare_cases(dataset, sp, meta["intensity"]["name"], spacing, quiet=True)
             for sp, _ in grids}
    stage_cases = [(sp, size, cases[tuple(sp)]) for sp, size in grids]
    return validate(network, cases[tuple(meta["spacing"])], cfg, torch.device("cpu"), stage_cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--val", help="validation images (a train-fcn dataset) to measure the chain on")
    parser.add_argument("--spacing", type=float, help="pixel size in mm of 2D picture inputs, e.g. 0.1")
    args = parser.parse_args()
    if len(args.models) < 2:
        sys.exit("give at least two models to chain")
    weights, meta = chain(args.models)
    if args.val:
        meta["validation"] = {**chain_validation(weights, meta, args.val, args.spacing), "images": args.val}
        print(f"validation: {meta['validation']}")
    save_model(args.output, weights, meta)
    print(f"{args.output}: {len(meta['fine_stages'])} fine stages chained ({', '.join(args.models)})")


if __name__ == "__main__":
    main()
