"""``landmarkloc train-fcn``: train a global-to-local FCN landmark model."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ..errors import InputError
from ..io.atomic import check_writable
from ..io.datasets import load_dataset
from ..io.image import check_spacing_applies
from ..io.modelfile import model_paths
from ..networks.fcn_encoding import VARIANTS
from ..training.fcn import TRAIN_STAGES, train_config, train_fcn
from ..training.fcn_sampling import AUGMENT_PRESETS, AugmentConfig
from . import add_device_argument, add_quiet_argument, add_spacing_argument, parse_floats, parse_spacing
from .outputs import check_outputs_are_not_inputs, model_files, output_paths

EXAMPLE = """examples:
  landmarkloc train-fcn ixi_train/ -o models/ixi16 --intensity mr --model-spacing 2 --max-minutes 45
  landmarkloc train-fcn ceph/landmarks.csv --spacing 0.1 --model-spacing 0.8 --intensity xray -o ceph
  torchrun --nproc_per_node 4 -m landmarkloc train-fcn data/ -o model --preset paper --device cuda
  landmarkloc train-fcn ixi_train.csv -o brain-ensemble --init-from brain-t1-ixi16 --train-stage local \
      --local-members 3
  landmarkloc train-fcn ceph/landmarks.csv --spacing 0.1 -o ceph-fine --init-from ceph-isbi19 \
      --train-stage fine --fine-spacing 0.2 --fine-sub-image-size 32
  landmarkloc train-fcn ixi_train.csv --val ixi_val.csv -o brain-robust --init-from brain-t1-ixi16 \
      --train-stage finetune --augment clinical --foreground-margin 20
  (--train-stage local: keep the --init-from model's global network, train a new local stage, with
   --local-members networks per landmark (an ensemble); --train-stage fine: keep its global and local
   stages and train a fine stage on a finer grid that refines the local estimate; --train-stage finetune:
   train its global and local networks further, e.g. on images changed as clinical ones differ;
   --train-stage global: train only its global network further, its local and fine stages kept as trained)
  landmarkloc train-fcn ixi_train.csv --val ixi_val.csv -o brain-global --init-from brain-t1-ixi16 \\
      --train-stage global --augment appearance-strong
  (a dataset is a folder of images with IMG.mrk.json/.fcsv/.csv landmark files, a CSV with columns
   image,landmarks, or a pixel table image,landmark,x_px,y_px; writes model.safetensors + model.json,
   a training log model.log and resume state model.resume.*)
"""


def register(sub) -> None:
    p = sub.add_parser("train-fcn", help="train a global-to-local FCN landmark model (Noothout et al. 2020)",
                       description="Train the global network and the per-landmark local networks on a "
                       "dataset of images with landmarks; validation keeps the best model.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset folder or CSV description")
    p.add_argument("-o", "--output", required=True,
                   help="model path stem (writes STEM.safetensors + STEM.json), or a folder: DATASET.safetensors in it")
    p.add_argument("--val", help="validation dataset (default: hold out --val-fraction of the images)")
    p.add_argument("--landmarks-dir", help="folder with the landmark files of a folder dataset")
    p.add_argument("--preset", default="compact", choices=["compact", "paper"],
                   help="architecture and schedule (default: compact, CPU-trainable)")
    add_spacing_argument(p)
    p.add_argument("--model-spacing", help="grid spacing of the model in mm, one value or one per axis "
                   "(default: the median spacing of the training images)")
    p.add_argument("--intensity", default="mr",
                   help="intensity preset: ct, mr, xray or xray-equalized (histogram equalization) (default: mr)")
    p.add_argument("--variant", default="R_log+C", choices=list(VARIANTS),
                   help="regression/classification variant of the paper's ablation (default: R_log+C)")
    p.add_argument("--global-only", action="store_true", help="no local stage (the paper's 'global' ablation)")
    p.add_argument("--iterations", type=int, help="training iterations (preset default)")
    p.add_argument("--batch-size", type=int, help="crops per iteration and process")
    p.add_argument("--crop-size", type=int, help="global training crop in voxels")
    p.add_argument("--sub-image-size", type=int, help="local sub-image size in voxels (default 16)")
    p.add_argument("--validate-every", type=int, help="iterations between validations")
    p.add_argument("--val-fraction", type=float, help="share of images held out for validation (default 0.1)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--alpha", type=float, help="weight of the classification loss (default: number of landmarks)")
    p.add_argument("--no-augment", action="store_true", help="no intensity or geometric augmentation")
    p.add_argument("--augment", default="default",
                   help=f"augmentation preset ({', '.join(AUGMENT_PRESETS)}) or JSON of settings to change, e.g. "
                   '\'{"rotation_deg": 30}\'; clinical: rotation 30 deg, scale 15 %%, bias field, noise, blur, '
                   "thicker slices, crops beyond the image")
    p.add_argument("--foreground-margin", type=float,
                   help="cut every image to its anatomy plus this margin in mm before normalization, in training "
                   "and (stored in the model) at every localization: a wider or off-centre field of view then "
                   "looks like the training images (default: off; a --init-from model's setting)")
    p.add_argument("--update-batch-norm", action="store_true",
                   help="finetune / global: update the batch-norm statistics of the networks trained further "
                   "(default: keep them as first trained; updating them made small batches under strong "
                   "appearance changes swing)")
    p.add_argument("--masked-copies", action="store_true",
                   help="also train on a copy of each image with its mask applied (CSV list 'mask' column), "
                   "e.g. skull-stripped brains")
    p.add_argument("--global-arch", help='JSON of network settings to change, e.g. \'{"head_channels": 64}\'')
    p.add_argument("--local-arch", help="JSON of local network settings to change")
    p.add_argument("--local-members", type=int, help="local networks per landmark, an ensemble (default 1)")
    p.add_argument("--init-from", help="start from this trained FCN model (its global network, grid, intensity)")
    p.add_argument("--train-stage", choices=TRAIN_STAGES, default="all",
                   help="all (default): global and local together; local / fine (with --init-from): train only "
                   "a new local stage / a fine stage, the earlier stages kept as they are; finetune: all networks "
                   "further; global: only the global network further, the later stages kept")
    p.add_argument("--fine-spacing", help="grid of the fine stage in mm, e.g. 0.2")
    p.add_argument("--fine-sub-image-size", type=int, help="fine-stage sub-image size in voxels (default 32)")
    p.add_argument("--fine-arch", help="JSON of fine network settings to change (local preset)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-minutes", type=float, help="stop (and keep the best model) after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.resume.* of an earlier run")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _json_dict(text, what) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def run(args) -> int:
    args.output = str(output_paths([args.dataset], args.output, "")[0])  # a folder: DATASET.safetensors in it
    if args.init_from:
        check_outputs_are_not_inputs(model_files("--init-from", args.init_from),
                                     [("-o", path) for path in model_paths(args.output)])
    check_writable(model_paths(args.output)[0])  # before any reading or training
    dataset = load_dataset(args.dataset, landmarks_dir=args.landmarks_dir)
    val = load_dataset(args.val, landmarks_dir=args.landmarks_dir) if args.val else None
    input_spacing = parse_spacing(args.spacing)
    check_spacing_applies([c.image_path for c in dataset.cases], input_spacing)
    image, _ = dataset.cases[0].load(dataset.names, spacing=input_spacing)
    overrides = {
        "intensity": args.intensity, "variant": args.variant, "use_local": not args.global_only, "seed": args.seed,
        "masked_copies": args.masked_copies, "keep_batch_norm": not args.update_batch_norm,
        "global_overrides": _json_dict(args.global_arch, "--global-arch"),
        "local_overrides": _json_dict(args.local_arch, "--local-arch"),
        "fine_overrides": _json_dict(args.fine_arch, "--fine-arch"), "train_stage": args.train_stage,
    }
    for key, value in (("iterations", args.iterations), ("batch_size", args.batch_size),
                       ("crop_size", args.crop_size), ("sub_image_size", args.sub_image_size),
                       ("validate_every", args.validate_every), ("val_fraction", args.val_fraction),
                       ("learning_rate", args.lr), ("alpha", args.alpha), ("max_minutes", args.max_minutes),
                       ("local_members", args.local_members), ("init_from", args.init_from),
                       ("fine_sub_image_size", args.fine_sub_image_size),
                       ("foreground_margin_mm", args.foreground_margin)):
        if value is not None:
            overrides[key] = value
    if args.model_spacing:
        overrides["spacing"] = tuple(parse_floats(args.model_spacing, "--model-spacing"))
    if args.fine_spacing:
        overrides["fine_spacing"] = tuple(parse_floats(args.fine_spacing, "--fine-spacing"))
    if args.augment != "default":  # the preset's own otherwise (paper: none)
        overrides["augment"] = _augment(args.augment)
    cfg = train_config(args.preset, image.GetDimension(), **overrides)
    if args.no_augment:
        cfg.augment.enabled = False
    meta = train_fcn(dataset, args.output, cfg, val_dataset=val, input_spacing=input_spacing, device=args.device,
                     resume=args.resume, quiet=args.quiet)
    if meta:
        v = meta["validation"]
        print(f"best model (iteration {v['iteration']}): validation mean radial error "
              f"{v['mean_radial_error_mm']:.2f} mm, median {v['median_radial_error_mm']:.2f} mm -> "
              f"{model_paths(args.output)[0]}")
    return 0


def _augment(text: str) -> AugmentConfig:
    """--augment: a preset name, or JSON of AugmentConfig fields changed from the default."""
    if text in AUGMENT_PRESETS:
        return replace(AUGMENT_PRESETS[text])
    changes = _json_dict(text, "--augment")
    unknown = set(changes) - set(AugmentConfig.__dataclass_fields__)
    if unknown:
        raise InputError(f"--augment: unknown settings {sorted(unknown)} (known: "
                         f"{', '.join(AugmentConfig.__dataclass_fields__)}; presets: {', '.join(AUGMENT_PRESETS)})")
    return replace(AugmentConfig(), **changes)
