"""``landmarkloc train-rpr``: self-supervised training of a coarse or fine RPR model (no annotation)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..io.atomic import check_writable
from ..io.image import PLAIN_2D_SUFFIXES, VOLUME_SUFFIXES, read_image
from ..io.modelfile import model_paths
from . import add_device_argument, add_quiet_argument, parse_floats
from .outputs import output_paths

EXAMPLE = """examples:
  landmarkloc train-rpr --images ixi/t1 --stage coarse --preset compact -o models/rpr_brain_coarse --max-minutes 60
  landmarkloc train-rpr --images train.txt --val-images val.txt --stage fine -o models/rpr_brain_fine
  landmarkloc train-rpr --images ixi/t1 --labels ixi/seg --stage coarse --stem-stride 2 -o models/rpr_coarse
  (with --labels: TorchIO appearance randomisation from the label maps and cross-view pairs)
  torchrun --nproc_per_node 4 -m landmarkloc train-rpr --images ixi/t1 --stage coarse -o models/rpr_coarse
  (writes NAME.safetensors + NAME.json, the best model by validation MSE, and NAME.last.* to --resume from)
"""


def register(sub) -> None:
    p = sub.add_parser("train-rpr", help="train a one-shot RPR projection network (self-supervised)",
                       description="Train the projection network of relative position regression (Lei et al. "
                       "2021) on unannotated images: it learns the physical offset between two patches of the "
                       "same image. Train a coarse model (patches anywhere in the body) and a fine model "
                       "(patches close together) for 'landmarkloc oneshot'.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, nargs="+",
                   help="training images: a folder, a text file listing paths (one per line) or image files")
    p.add_argument("--val-images", nargs="+",
                   help="validation images (same forms); default: the last --val-fraction of --images")
    p.add_argument("--val-fraction", type=float, default=0.15,
                   help="share of --images held out for validation when --val-images is not given (default 0.15)")
    p.add_argument("--stage", required=True, choices=("coarse", "fine"))
    p.add_argument("--preset", default="compact", choices=("paper", "compact"),
                   help="configuration preset (default: compact); the options below override it")
    p.add_argument("--intensity", help="intensity preset: ct, mr or xray (default: mr)")
    p.add_argument("--spacing", help="model voxel spacing in mm, one value or one per axis")
    p.add_argument("--patch-size", help="patch size in voxels (multiples of 8, >= 16), one value or one per axis")
    p.add_argument("--base-channels", type=int, help="Pnet width b (blocks 2b, 2b, 4b, 8b, 4b)")
    p.add_argument("--stem-stride", type=int, choices=(1, 2),
                   help="2: a strided convolution halves the patch before the blocks (about 4x cheaper)")
    p.add_argument("--radius", type=float, help="r in mm for this stage (coarse: largest offset, fine: small)")
    p.add_argument("--fine-range", type=float, help="fine stage: max offset between the two patches, mm per axis")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iterations", type=int, help="iterations per epoch")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--no-augment", action="store_true", help="no rotation/scale/intensity augmentation")
    p.add_argument("--max-minutes", type=float, help="stop (and keep the best model) after this many minutes")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.last.safetensors")
    p.add_argument("--masks", help="folder of masks named like the images (e.g. brain masks): each image with a "
                   "mask is also used masked (skull-stripped), for training and validation")
    p.add_argument("--labels", help="folder of anatomical label maps named like the images (e.g. segmentations): "
                   "train on rendered views (random intensity per label, bias field, blur, resolution, gamma, "
                   "noise, skull / no skull; known random deformations) with pairs across views of a subject")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel-spacing", type=float, help="pixel size in mm for 2D picture formats (PNG, JPEG ...)")
    p.add_argument("-o", "--output", required=True,
                   help="model path (NAME or NAME.safetensors), or a folder: IMAGES_STAGE.safetensors in it")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES + PLAIN_2D_SUFFIXES)


def expand_images(items) -> list[Path]:
    """Image paths from folders, list files (one path per line, relative to the list) and files."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_image(p))
            if not files:
                raise InputError(f"no image files in folder {path}")
            out += files
        elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            out += [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                    for ln in lines if ln and not ln.startswith("#")]
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"image or folder not found: {path}")
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise InputError(f"listed image(s) not found: {', '.join(missing[:3])}")
    return out


def _per_axis(text: str | None, what: str, ndim: int, cast=float):
    if text is None:
        return None
    values = [cast(v) for v in parse_floats(text, what)]
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise InputError(f"{what} needs 1 or {ndim} values")
    return tuple(values)


def run(args) -> int:
    from ..training.rpr import AugmentationConfig, rpr_preset, train_rpr, with_overrides

    # a folder: IMAGES_STAGE.safetensors in it, named after the (first) --images folder or list
    args.output = str(output_paths(args.images[:1], args.output, f"_{args.stage}")[0])
    check_writable(model_paths(args.output)[0])  # before any reading or training

    images = expand_images(args.images)
    if args.val_images:
        train, val = images, expand_images(args.val_images)
    else:
        if not 0 <= args.val_fraction < 1:
            raise InputError("--val-fraction must be in [0, 1)")
        n_val = int(round(len(images) * args.val_fraction)) if len(images) > 1 else 0
        n_val = max(1, n_val) if len(images) > 1 and args.val_fraction > 0 else n_val
        train, val = images[: len(images) - n_val], images[len(images) - n_val:]

    def read(path):
        return read_image(path, spacing=args.pixel_spacing)

    ndim = read(train[0]).GetDimension()
    config = rpr_preset(args.preset, ndim)
    radius = {"coarse_radius_mm": args.radius} if args.stage == "coarse" else {"fine_radius_mm": args.radius}
    config = with_overrides(
        config, intensity=args.intensity, spacing=_per_axis(args.spacing, "--spacing", ndim),
        patch_size=_per_axis(args.patch_size, "--patch-size", ndim, int), base_channels=args.base_channels,
        stem_stride=args.stem_stride,
        fine_range_mm=args.fine_range, epochs=args.epochs, iterations_per_epoch=args.iterations,
        batch_size=args.batch_size, learning_rate=args.lr,
        augmentation=AugmentationConfig() if args.no_augment else None, **radius)
    if args.masks and not Path(args.masks).is_dir():
        raise InputError(f"--masks must be a folder of masks named like the images: {args.masks}")
    if args.labels and not Path(args.labels).is_dir():
        raise InputError(f"--labels must be a folder of label maps named like the images: {args.labels}")
    result = train_rpr(train, val, Path(args.output), config, args.stage, read=read, seed=args.seed,
                       device=args.device, max_minutes=args.max_minutes, resume=args.resume, quiet=args.quiet,
                       mask_dir=Path(args.masks) if args.masks else None,
                       label_dir=Path(args.labels) if args.labels else None)
    if not args.quiet:
        print(f"best validation MSE {result.best_validation_mse:.2f} mm^2 (mean error "
              f"{result.best_validation_error_mm:.2f} mm) after {result.epochs_done} epochs"
              + (" (stopped at --max-minutes)" if result.stopped_early else "") + f"; model: {args.output}")
    return 0
