"""One FCN model from two trained from the same start: the global network of one, the later stages of the other.

    python models/recipes/compose_stages.py runs/fcn/brain-global-appearance runs/fcn/brain-finetune-bn \
        runs/fcn/brain-robust

Why (issue 24, brain-t1-ixi16 step 4): trained further on harder images, the global network read a strong bias
field best when trained alone (``--train-stage global``), and the local networks best when trained with it
(``--train-stage finetune``), whose own global network lost the wide fields of view and tilts; so the shipped
model takes each from the run that trained it best, measured on the validation subjects (docs/results.md).
Both runs must share the architecture and the grid; the metadata is the later stages' run's, with both named
under ``training.composed_from``.
"""

from __future__ import annotations

import argparse

from landmarkloc.errors import InputError
from landmarkloc.io.modelfile import load_model, save_model

DROPPED = ("weights", "sha256", "format_version")  # the output gets its own


def compose(global_from: str, stages_from: str, output: str) -> None:
    tensors_g, meta_g = load_model(global_from)
    tensors_l, meta_l = load_model(stages_from)
    for key in ("global_architecture", "spacing", "intensity", "variant", "landmark_names"):
        if meta_g.get(key) != meta_l.get(key):
            raise InputError(f"the two models differ in {key}: they cannot be composed")
    tensors = {**{k: v for k, v in tensors_l.items() if not k.startswith("global_net.")},
               **{k: v for k, v in tensors_g.items() if k.startswith("global_net.")}}
    meta = {k: v for k, v in meta_l.items() if k not in DROPPED}
    meta["training"] = {**meta["training"], "composed_from": {
        "global_net": {"model": meta_g.get("weights"), "sha256": meta_g.get("sha256"),
                       "train_config": meta_g.get("train_config"), "iterations": meta_g["training"].get("iterations")},
        "later_stages": {"model": meta_l.get("weights"), "sha256": meta_l.get("sha256")}}}
    save_model(output, tensors, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("global_from", help="the model whose global network is kept")
    parser.add_argument("stages_from", help="the model whose local (and fine) stages and metadata are kept")
    parser.add_argument("output")
    args = parser.parse_args()
    compose(args.global_from, args.stages_from, args.output)
    print(f"{args.output}: global network of {args.global_from}, later stages of {args.stages_from}")


if __name__ == "__main__":
    main()
