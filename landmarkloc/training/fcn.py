"""Training the global-to-local FCN (Noothout et al. 2020), single process or torchrun DDP.

One optimizer (Adam, lr 1e-3) trains the global network on random crops and
the bank of local networks on landmark-containing sub-images at the same time:
loss = L1 on (log-)displacements + alpha * BCE for each stage. Every
``validate_every`` iterations the whole pipeline localizes the validation
images and the model with the lowest mean radial error (mm) is kept.

Under ``torchrun`` each process trains on its own share of the images with
DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 validates, logs and
writes files. On CUDA the networks run in channels-last layout under autocast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError, LandmarkLocError, ModelError
from ..geometry.frames import ImageGeometry
from ..geometry.intensity import get_preset, intensity_profile
from ..geometry.resample import resample_to_grid
from ..io.datasets import LandmarkDataset
from ..io.image import read_image
from ..io.modelfile import load_model, model_paths, save_model
from ..networks.fcn import FCNConfig, GlobalToLocal, global_config, local_config
from ..networks.fcn_encoding import DEFAULT_VARIANT, fcn_targets, get_variant
from ..runtime import init_distributed, progress, seed_everything
from .fcn_loss import fcn_loss
from .fcn_sampling import AugmentConfig, PreparedCase, global_crop, local_subimages

LOG = logging.getLogger("landmarkloc.train_fcn")
RESUME_KIND = "fcn-resume"


@dataclass
class FCNTrainConfig:
    """Everything that defines a training run (stored in the model's metadata)."""

    preset: str = "compact"
    ndim: int = 3
    spacing: tuple | None = None  # model grid in mm; None: the median spacing of the training images
    intensity: str = "mr"
    variant: str = DEFAULT_VARIANT
    use_local: bool = True  # False: the paper's "global only" ablation
    global_overrides: dict = field(default_factory=dict)  # FCNConfig fields to change
    local_overrides: dict = field(default_factory=dict)
    crop_size: int = 48  # global training crops (voxels), rounded up to a multiple of the patch size
    sub_image_size: int = 16  # local sub-images (voxels), a multiple of the local patch size
    batch_size: int = 4
    iterations: int = 2000
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over ``iterations`` (short CPU runs settle)
    alpha: float | None = None  # BCE weight; None: the number of landmarks (global), 1 (local)
    validate_every: int = 200
    val_fraction: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    max_minutes: float | None = None
    # Train also on a copy of every image that has a mask, with the mask applied (e.g. skull-stripped brains),
    # so the model works on images that were masked before they reach it.
    masked_copies: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["spacing"] = None if self.spacing is None else [float(s) for s in self.spacing]
        return d


def train_config(preset: str, ndim: int, **overrides) -> FCNTrainConfig:
    """Presets: ``paper`` (published settings) and ``compact`` (trains on a 2-core CPU in minutes)."""
    if preset == "paper":
        base = FCNTrainConfig(preset="paper", ndim=ndim, crop_size=72 if ndim == 3 else 592, batch_size=4,
                              iterations=300_000, validate_every=10_000,
                              augment=AugmentConfig(enabled=False))
        if ndim == 2:  # the paper's cephalometric network pools before all four stages
            base.global_overrides = {"pool_before": (True, True, True, True)}
    elif preset == "compact":
        base = FCNTrainConfig(preset="compact", ndim=ndim, crop_size=48 if ndim == 3 else 128, batch_size=4,
                              iterations=2000, validate_every=200, lr_schedule="cosine")
    else:
        raise InputError(f"unknown training preset {preset!r} (use 'paper' or 'compact')")
    unknown = set(overrides) - set(FCNTrainConfig.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown training settings: {sorted(unknown)}")
    for key in ("global_overrides", "local_overrides"):  # merge with the preset's own changes
        if key in overrides:
            overrides[key] = {**getattr(base, key), **overrides[key]}
    cfg = replace(base, **overrides)
    _check(cfg)
    return cfg


def _check(cfg: FCNTrainConfig) -> None:
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise InputError(f"unknown learning-rate schedule {cfg.lr_schedule!r} (constant or cosine)")


def network_configs(cfg: FCNTrainConfig, num_landmarks: int) -> tuple:
    g = global_config(cfg.preset, cfg.ndim, num_landmarks, **cfg.global_overrides)
    loc = local_config(cfg.preset, cfg.ndim, num_landmarks, **cfg.local_overrides) if cfg.use_local else None
    if loc is not None and cfg.sub_image_size % loc.patch_size:
        raise InputError(f"sub-image size {cfg.sub_image_size} is not a multiple of the local patch size "
                         f"{loc.patch_size}")
    return g, loc


# --------------------------------------------------------------------------- data


def apply_mask(image: sitk.Image, mask_path) -> sitk.Image:
    """The image with everything outside the mask set to 0 (the mask is resampled onto the image's grid)."""
    mask = read_image(mask_path)
    mask = resample_to_grid(mask, ImageGeometry.from_image(image), "nearest", 0.0)
    return sitk.Mask(image, sitk.Cast(mask > 0.5, sitk.sitkUInt8))


def prepare_cases(dataset: LandmarkDataset, spacing, intensity, input_spacing=None, quiet=True,
                  masked_copies: bool = False) -> list:
    """Read, resample and normalize every case; landmarks become indices of the model grid.

    With ``masked_copies``, each case that has a mask is added a second time with
    the mask applied before normalization, as a masked (skull-stripped) scan is.
    """
    from ..inference.fcn import preprocess

    out = []
    for case in progress(dataset.cases, desc="reading images", quiet=quiet):
        image, lms = case.load(dataset.names, spacing=input_spacing)
        variants = [(case.name, image)]
        if masked_copies and case.mask_path is not None:
            variants.append((f"{case.name}#masked", apply_mask(image, case.mask_path)))
        for name, img in variants:
            array, geometry = preprocess(img, spacing, intensity)
            out.append(PreparedCase(name, array, geometry.spacing, geometry.physical_to_index(lms)))
    return out


def median_spacing(dataset: LandmarkDataset, input_spacing=None) -> tuple:
    from ..io.image import read_image

    spacings = [read_image(c.image_path, spacing=input_spacing).GetSpacing() for c in dataset.cases]
    return tuple(float(s) for s in np.median(np.array(spacings), axis=0))


def _stack_targets(items):
    return [torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(len(items[0]))]


def make_batch(cases, cfg: FCNTrainConfig, crop, global_patch, local_patch, rng):
    """One training batch: global crops with targets and (optionally) local sub-images with targets."""
    variant = get_variant(cfg.variant)
    aug = cfg.augment if cfg.augment.enabled else None
    g_items, l_items = [], []
    grid = tuple(c // global_patch for c in crop[::-1])
    for _ in range(cfg.batch_size):
        case = cases[rng.integers(len(cases))]
        image, pts = global_crop(case, crop, aug, rng)
        g_items.append((image, *fcn_targets(pts, grid, global_patch, variant)))
        if local_patch:
            subs, spts = local_subimages(case, cfg.sub_image_size, aug, rng)
            lgrid = (cfg.sub_image_size // local_patch,) * case.ndim
            per_lm = [fcn_targets(spts[n:n + 1], lgrid, local_patch, variant) for n in range(len(spts))]
            l_items.append((subs, *[torch.cat([t[k] for t in per_lm]) for k in range(3)]))
    return _stack_targets(g_items), (_stack_targets(l_items) if l_items else None)


def _crop_size(cases, cfg: FCNTrainConfig, patch: int) -> list:
    """Crop (ITK order): the configured size, no larger than the largest image, a multiple of the patch."""
    largest = np.max([c.array.shape[::-1] for c in cases], axis=0)
    size = np.minimum(cfg.crop_size, largest)
    return [int(math.ceil(s / patch) * patch) for s in size]


# --------------------------------------------------------------------------- validation


def validate(model: GlobalToLocal, cases, cfg: FCNTrainConfig, device) -> dict:
    """Localize every validation case with the full pipeline; radial errors in mm."""
    from ..inference.fcn import outside_view, run_global, run_local

    variant = get_variant(cfg.variant)
    errors, missed = [], 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for case in cases:
            summary = run_global(model.global_net, case.array, variant, case.spacing, device)
            estimate = summary.estimate
            if model.local_net is not None:
                estimate = run_local(model.local_net, case.array, estimate, cfg.sub_image_size, variant,
                                     case.spacing, device).estimate
            for n, truth in enumerate(case.landmarks):
                if not np.all(np.isfinite(truth)):
                    continue
                if outside_view(estimate[[n]], case.array.shape)[0] or \
                        outside_view(summary.estimate[[n]], case.array.shape, summary.votes[[n]],
                                     summary.confidence[[n]], border=model.global_net.patch_size)[0]:
                    missed += 1
                errors.append(float(np.linalg.norm((estimate[n] - truth) * case.spacing)))
    model.train(was_training)
    errors = np.nan_to_num(np.array(errors), nan=1e6)
    return {"mean_radial_error_mm": float(errors.mean()) if errors.size else float("nan"),
            "median_radial_error_mm": float(np.median(errors)) if errors.size else float("nan"),
            "not_found": int(missed), "n": int(errors.size)}


# --------------------------------------------------------------------------- files


def model_metadata(cfg: FCNTrainConfig, names, global_cfg: FCNConfig, local_cfg, spacing, dataset_summary,
                   validation, training) -> dict:
    dataset_summary = dict(dataset_summary)
    profile = dataset_summary.pop("intensity_profile", None)
    return {
        "kind": "fcn", "method": "global-to-local FCN (Noothout et al. 2020)", "ndim": cfg.ndim,
        "landmark_names": list(names), "spacing": [float(s) for s in spacing],
        "intensity": get_preset(cfg.intensity).to_dict(), "variant": cfg.variant,
        "patch_size": global_cfg.patch_size, "sub_image_size": cfg.sub_image_size,
        "local_patch_size": local_cfg.patch_size if local_cfg else None,
        "global_architecture": global_cfg.to_dict(),
        "local_architecture": local_cfg.to_dict() if local_cfg else None,
        "training_data": dataset_summary, "intensity_profile": profile,
        "training": training, "validation": validation,
        "train_config": cfg.to_dict(),
    }


def _resume_path(output: Path) -> Path:
    weights, _ = model_paths(output)
    return weights.with_name(weights.name[: -len(".safetensors")] + ".resume.safetensors")


def save_resume(path: Path, model: GlobalToLocal, optimizer, state: dict) -> None:
    """Weights + Adam state as safetensors (never pickle) for ``--resume``."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, value in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    save_model(path, tensors, {"kind": RESUME_KIND, "param_groups": opt["param_groups"], **state})


def load_resume(path: Path, model: GlobalToLocal, optimizer) -> dict:
    tensors, meta = load_model(path, kind=RESUME_KIND)
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{Path(path).name} does not fit this training configuration: "
                         f"{str(exc).splitlines()[0]}") from None
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


# --------------------------------------------------------------------------- the trainer


def _setup_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


def _split(n: int, fraction: float, rng) -> tuple:
    if n < 3 or fraction <= 0:
        return list(range(n)), list(range(n))  # too few images to hold any out: validate on training data
    n_val = max(1, int(round(n * fraction)))
    order = rng.permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def held_out_indices(n: int, fraction: float, seed: int) -> list:
    """The indices of the images train-fcn held out for validation (no --val) with this fraction and seed."""
    return _split(n, fraction, np.random.default_rng(seed))[1]


def train_fcn(dataset: LandmarkDataset, output, cfg: FCNTrainConfig, val_dataset: LandmarkDataset | None = None,
              input_spacing=None, device: str = "auto", resume: bool = False, quiet: bool = False) -> dict:
    """Train and write ``output`` (.safetensors + .json); returns the metadata written."""
    output = Path(output)
    weights_path, _ = model_paths(output)
    ctx = init_distributed(device)
    dev = ctx.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    log_path = weights_path.with_name(weights_path.name[: -len(".safetensors")] + ".log")
    new_log = not log_path.exists()
    handler = _setup_log(log_path) if ctx.is_main else None
    try:
        names = list(dataset.names)
        if val_dataset is not None and list(val_dataset.names) != names:
            raise InputError("the validation dataset must have the same landmark names as the training dataset")
        spacing = cfg.spacing or median_spacing(dataset, input_spacing)
        if len(spacing) == 1:
            spacing = tuple(spacing) * cfg.ndim
        cfg = replace(cfg, spacing=tuple(float(s) for s in spacing))
        split_rng = np.random.default_rng(cfg.seed)
        if val_dataset is None:
            train_idx, val_idx = _split(len(dataset.cases), cfg.val_fraction, split_rng)
            train_ds, val_ds = dataset.subset(train_idx), dataset.subset(val_idx)
        else:
            train_ds, val_ds = dataset, val_dataset
        # each rank reads and trains on its own share of the training images
        share = train_ds.subset(range(ctx.rank, len(train_ds.cases), ctx.world_size)) \
            if len(train_ds.cases) >= ctx.world_size else train_ds
        cases = prepare_cases(share, cfg.spacing, cfg.intensity, input_spacing, quiet=quiet or not ctx.is_main,
                              masked_copies=cfg.masked_copies)
        if any(c.ndim != cfg.ndim for c in cases):
            raise InputError(f"training images must all be {cfg.ndim}D")
        val_cases = prepare_cases(val_ds, cfg.spacing, cfg.intensity, input_spacing, quiet=True) \
            if ctx.is_main else []

        global_cfg, local_cfg = network_configs(cfg, len(names))
        model = GlobalToLocal(global_cfg, local_cfg).to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last if cfg.ndim == 2 else torch.channels_last_3d)
        # AMSGrad as in the reference implementation (GEJansen/landmark_detection)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, amsgrad=True)
        start_it, best, elapsed_before = 0, None, 0.0
        resume_path = _resume_path(output)
        if resume:
            if not model_paths(resume_path)[1].is_file():
                raise InputError(f"nothing to resume: {resume_path} does not exist")
            meta = load_resume(resume_path, model, optimizer)
            start_it, best, elapsed_before = int(meta["iteration"]), meta.get("best"), float(meta["elapsed_s"])
        variant = get_variant(cfg.variant)
        train_model = model
        if ctx.distributed:
            train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=not (variant.classification and variant.regression))
        rng = np.random.default_rng([cfg.seed, ctx.rank, start_it])
        seed_everything(cfg.seed + 1000 * ctx.rank + start_it)
        crop = _crop_size(cases, cfg, global_cfg.patch_size)
        alpha_global = cfg.alpha if cfg.alpha is not None else float(len(names))
        alpha_local = cfg.alpha if cfg.alpha is not None else 1.0
        summary = {"images": len(train_ds.cases), "validation_images": len(val_ds.cases),
                   "landmarks": names, "annotations": train_ds.summary()["annotations_per_landmark"],
                   # what the images look like to the network, to warn about inputs unlike them
                   "intensity_profile": intensity_profile([c.array for c in cases])}
        if ctx.is_main:
            LOG.info("training %s on %d images (%d validation), %d landmarks, spacing %s, world size %d, "
                     "device %s, crop %s", cfg.preset, len(train_ds.cases), len(val_ds.cases), len(names),
                     cfg.spacing, ctx.world_size, dev, crop)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
        t0 = time.monotonic()
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes else None
        bar = progress(total=cfg.iterations, desc="train-fcn", quiet=quiet or not ctx.is_main, initial=start_it)
        last_val, it = None, start_it
        model.train()
        for it in range(start_it, cfg.iterations):
            (gx, gcls, greg, gann), local = make_batch(cases, cfg, crop, global_cfg.patch_size,
                                                       local_cfg.patch_size if local_cfg else 0, rng)
            lx = local[0].to(dev) if local else None
            gx = gx.to(dev)
            if dev.type == "cuda":
                gx = gx.contiguous(memory_format=torch.channels_last if cfg.ndim == 2 else torch.channels_last_3d)
            with amp if amp is not None else contextlib.nullcontext():
                (g_logits, g_disp), l_out = train_model(gx, lx)
            loss, parts = fcn_loss(g_logits, g_disp, gcls.to(dev), greg.to(dev), gann.to(dev), variant,
                                   alpha_global)
            if l_out is not None:
                lcls, lreg, lann = (t.to(dev) for t in local[1:])
                l_loss, l_parts = fcn_loss(l_out[0], l_out[1], lcls, lreg, lann, variant, alpha_local)
                loss = loss + l_loss
                parts.update({f"local_{k}": v for k, v in l_parts.items()})
            if cfg.lr_schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            done = it + 1
            out_of_time = budget is not None and _agree(time.monotonic() - t0 > budget, ctx)
            if done % cfg.validate_every == 0 or done == cfg.iterations or out_of_time:
                best = _checkpoint(ctx, model, optimizer, cfg, val_cases, dev, names, global_cfg, local_cfg,
                                   summary, output, resume_path, done, best, elapsed_before + time.monotonic() - t0,
                                   parts)
                last_val = done
            if out_of_time:
                if ctx.is_main:
                    LOG.info("stopping after %d iterations: --max-minutes budget used", done)
                break
        bar.close()
        if last_val != it + 1 and cfg.iterations > start_it:
            best = _checkpoint(ctx, model, optimizer, cfg, val_cases, dev, names, global_cfg, local_cfg, summary,
                               output, resume_path, it + 1, best, elapsed_before + time.monotonic() - t0, {})
        ctx.barrier()
        if ctx.is_main and not model_paths(output)[1].is_file():
            raise ModelError("training ended without writing a model (no iterations were run)")
        meta = json.loads(model_paths(output)[1].read_text(encoding="utf-8")) if ctx.is_main else {}
        return meta
    except LandmarkLocError:
        if handler is not None and new_log and not weights_path.exists():
            LOG.removeHandler(handler)
            handler.close()
            handler = None
            log_path.unlink(missing_ok=True)  # refused before any model: leave nothing behind
        raise
    finally:
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
        ctx.close()


def _agree(flag: bool, ctx) -> bool:
    """All ranks stop together: true if any rank says so."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _checkpoint(ctx, model, optimizer, cfg, val_cases, dev, names, global_cfg, local_cfg, summary, output,
                resume_path, iteration, best, elapsed, parts):
    """Rank 0: validate, keep the best model, write the resume state. Returns the best metrics."""
    if ctx.is_main:
        metrics = validate(model, val_cases, cfg, dev)
        metrics["iteration"] = iteration
        LOG.info("iteration %d: loss %s, validation mean radial error %.3f mm (median %.3f, not found %d)",
                 iteration, {k: round(v, 4) for k, v in parts.items()}, metrics["mean_radial_error_mm"],
                 metrics["median_radial_error_mm"], metrics["not_found"])
        if best is None or metrics["mean_radial_error_mm"] <= best["mean_radial_error_mm"]:
            best = metrics
            training = {"iterations": iteration, "seconds": round(elapsed, 1), "world_size": ctx.world_size,
                        "device": dev.type, "torch": torch.__version__}
            meta = model_metadata(cfg, names, global_cfg, local_cfg, cfg.spacing, summary, metrics, training)
            save_model(output, model.state_dict(), meta)
            LOG.info("saved best model (iteration %d) to %s", iteration, model_paths(output)[0])
        save_resume(resume_path, model, optimizer,
                    {"iteration": iteration, "best": best, "elapsed_s": elapsed, "train_config": cfg.to_dict()})
    ctx.barrier()
    return best  # meaningful on rank 0, the only rank that writes files
