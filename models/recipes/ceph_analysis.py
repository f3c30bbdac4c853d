"""Error analysis of a cephalometric FCN model on the images train-fcn held out for validation.

Takes the validation images the model was trained with (``--val``, or train-fcn's
split of the training description: seed and fraction from the model's metadata),
then localizes every one and records per landmark: the global stage's error, the
local stage's, the final error (after the fine stage of a model that has one), the
local stages' error when started at the reference point (their own accuracy, free
of global errors), a second pass of the last stage from the final output, and the
global confidence.
Optionally the same on some training images (fit vs generalization). Used by
evaluate.py (``--only ceph-analysis``); never touches Test1.

    python models/recipes/ceph_analysis.py MODEL runs/ceph/train.csv [--spacing 0.1] [--train-images 15]
    python models/recipes/ceph_analysis.py MODEL runs/ceph/heldout_train.csv --val runs/ceph/heldout_val.csv
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from landmarkloc.inference.fcn import Localizer, grid_key, run_global, run_stages
from landmarkloc.io.datasets import load_dataset
from landmarkloc.io.modelfile import read_metadata
from landmarkloc.training.fcn import _split, prepare_cases

TAIL_MM = 4.0


def validation_split(dataset, train_config: dict) -> tuple:
    """(training indices, validation indices) exactly as train-fcn chose them."""
    rng = np.random.default_rng(train_config.get("seed", 0))
    return _split(len(dataset.cases), float(train_config.get("val_fraction", 0.1)), rng)


def _errors(estimate, geometry, truth_mm) -> list:
    """Radial errors (mm) of ``estimate`` (indices of ``geometry``) from the reference points (physical mm)."""
    return [float(np.linalg.norm(e - t)) for e, t in zip(geometry.index_to_physical(estimate), truth_mm)]


@torch.inference_mode()
def analyse_cases(loc: Localizer, grids: dict) -> dict:
    """Per case and landmark: errors (mm) of the global stage, the local and final results, oracle and repeated
    last-stage passes. ``grids``: spacing -> the same prepared cases on that grid (one per stage's grid)."""
    net = loc.network
    out = {}
    cases = grids[grid_key(loc.spacing)]
    for i, case in enumerate(cases):
        def grid(spacing, i=i):
            c = grids[grid_key(spacing)][i]
            return c.array, c.geometry

        truth_mm = case.geometry.index_to_physical(case.landmarks)
        glob = run_global(net.global_net, case.array, loc.variant, case.spacing, loc.device)
        stages = run_stages(loc.stages, glob.estimate, case.geometry, grid, loc.variant, loc.device)
        last = stages[-1]
        again = run_stages(loc.stages[-1:], last.summary.estimate, last.geometry, grid, loc.variant, loc.device)[-1]
        oracle = run_stages(loc.stages, np.nan_to_num(case.landmarks), case.geometry, grid, loc.variant,
                            loc.device)[-1]
        out[case.name] = {"global": _errors(glob.estimate, case.geometry, truth_mm),
                          "local": _errors(stages[0].summary.estimate, stages[0].geometry, truth_mm),
                          "final": _errors(last.summary.estimate, last.geometry, truth_mm),
                          "local_twice": _errors(again.summary.estimate, again.geometry, truth_mm),
                          "local_from_truth": _errors(oracle.summary.estimate, oracle.geometry, truth_mm),
                          "global_confidence": [float(c) for c in glob.confidence],
                          "global_spread_mm": [float(s) for s in glob.spread_mm]}
    return out


def summary(cases: dict, names: list) -> dict:
    """Overall and per-landmark numbers, and the long tail (final error > TAIL_MM)."""
    def stats(key, rows=None):
        e = np.array([c[key] for c in cases.values()])  # (images, landmarks)
        e = e if rows is None else e[:, rows]
        return {"median": float(np.median(e)), "mean": float(np.mean(e)), "sdr2": float(np.mean(e < 2.0)),
                "over4": int(np.sum(e > TAIL_MM))}

    keys = ("global", "local", "final", "local_twice", "local_from_truth")
    per_landmark = {n: {k: stats(k, [i]) for k in keys} for i, n in enumerate(names)}
    tail = []
    for name, c in cases.items():
        for i, n in enumerate(names):
            if c["final"][i] > TAIL_MM:
                tail.append({"image": name, "landmark": n, "global": round(c["global"][i], 2),
                             "final": round(c["final"][i], 2), "local_from_truth": round(c["local_from_truth"][i], 2),
                             "global_confidence": round(c["global_confidence"][i], 3)})
    g = np.array([c["global"] for c in cases.values()]).ravel()
    f = np.array([c["final"] for c in cases.values()]).ravel()
    return {"images": len(cases), "overall": {k: stats(k) for k in keys}, "per_landmark": per_landmark,
            "tail": sorted(tail, key=lambda t: -t["final"]),
            "tail_from_global": int(np.sum((f > TAIL_MM) & (g > TAIL_MM))),
            "local_better_1mm": int(np.sum(g - f > 1.0)), "local_worse_1mm": int(np.sum(f - g > 1.0))}


def analyse(model, dataset_path, spacing=None, train_images: int = 0, val_path=None) -> dict:
    """The analysis on the validation images: those of ``val_path`` (a model trained with ``--val``; the
    training images are then ``dataset_path``'s), else those train-fcn held out of ``dataset_path``."""
    meta = read_metadata(model)
    loc = Localizer.from_file(model, device="cpu")
    dataset = load_dataset(dataset_path)
    if val_path is None:
        if (meta.get("training_data") or {}).get("validation_held_out") is False:
            raise SystemExit(f"{model} was validated on images given apart at training: give them with --val")
        train_idx, val_idx = validation_split(dataset, meta.get("train_config", {}))
        val_set = dataset.subset(val_idx)
    else:
        train_idx, val_set = list(range(len(dataset.cases))), load_dataset(val_path)
    spacings = {grid_key(sp): sp for sp in [loc.spacing] + [st.spacing for st in loc.stages]}

    def grids(images):
        return {key: prepare_cases(images, sp, meta["intensity"], spacing) for key, sp in spacings.items()}

    val_grids = grids(val_set)
    result = {"model": str(model), "fine_stage": len(loc.stages) > 1,
              "validation_images": [c.name for c in val_grids[grid_key(loc.spacing)]],
              "validation": summary(analyse_cases(loc, val_grids), loc.names)}
    if train_images:
        chosen = train_idx[:: max(1, len(train_idx) // train_images)][:train_images]
        result["training"] = summary(analyse_cases(loc, grids(dataset.subset(chosen))), loc.names)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--spacing", type=float)
    parser.add_argument("--train-images", type=int, default=0)
    parser.add_argument("--val", help="the validation images of a model trained with train-fcn --val")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    result = analyse(args.model, args.dataset, args.spacing, args.train_images, args.val)
    text = json.dumps(result, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    for part in ("validation", "training"):
        if part in result:
            print(part, json.dumps(result[part]["overall"]), "tail", len(result[part]["tail"]),
                  "tail_from_global", result[part]["tail_from_global"])


if __name__ == "__main__":
    main()
