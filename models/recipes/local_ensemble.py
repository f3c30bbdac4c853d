"""Stack the local (or fine) stages of FCN models that share everything else into one model with an ensemble.

    python models/recipes/local_ensemble.py OUTPUT FIRST MEMBER [MEMBER ...] [--stage local|fine]

FIRST is the model whose networks are kept (its local or fine bank is the first
member); each MEMBER was trained from the same start with ``train-fcn
--init-from START --train-stage local|fine`` and another seed, so all share the
other networks (checked). The output's bank holds FIRST's networks followed by
the members'; its metadata is FIRST's with the new architecture, the members'
training runs and no calibration (refit it with ``landmarkloc calibrate``).
"""

from __future__ import annotations

import argparse
import sys

import torch

from landmarkloc.inference.fcn import MODEL_KIND
from landmarkloc.io.modelfile import load_model, save_model
from landmarkloc.networks.fcn import stack_banks

PREFIX = {"local": "local_net.", "fine": "fine_net."}


def _bank(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def main(output: str, first: str, members: list, stage: str = "local") -> None:
    prefix = PREFIX[stage]
    tensors, meta = load_model(first, kind=MODEL_KIND)
    banks, runs = [_bank(tensors, prefix)], []
    if not banks[0]:
        sys.exit(f"{first} has no {stage} stage")
    for path in members:
        member, member_meta = load_model(path, kind=MODEL_KIND)
        shared = all(k in member and torch.equal(member[k], v) for k, v in tensors.items()
                     if not k.startswith(prefix))
        if not shared:
            sys.exit(f"{path}: its other networks differ from {first}'s (not trained from the same start)")
        banks.append(_bank(member, prefix))
        runs.append({"model": path, "train_config": member_meta["train_config"],
                     "training": member_meta["training"], "validation": member_meta["validation"]})
    stacked = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    stacked.update({prefix + k: v for k, v in stack_banks(banks).items()})
    meta = {k: v for k, v in meta.items() if k not in ("calibration", "sha256", "weights", "format_version")}
    if stage == "local":
        meta["local_architecture"] = {**meta["local_architecture"],
                                      "num_landmarks": len(meta["landmark_names"]) * len(banks)}
        meta["local_members"] = len(banks)
    else:
        fine = dict(meta["fine_stage"])
        fine["architecture"] = {**fine["architecture"], "num_landmarks": len(meta["landmark_names"]) * len(banks)}
        meta["fine_stage"] = {**fine, "members": len(banks)}
    meta[f"{stage}_member_runs"] = runs
    save_model(output, stacked, meta)
    print(f"{output}: {stage} ensemble of {len(banks)} members (the first is {first}'s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("first")
    parser.add_argument("members", nargs="+")
    parser.add_argument("--stage", choices=sorted(PREFIX), default="local")
    args = parser.parse_args()
    main(args.output, args.first, args.members, args.stage)
