"""Training the global-to-local FCN (Noothout et al. 2020), single process or torchrun DDP.

One optimizer (Adam, lr 1e-3) trains the global network on random crops and
the bank of local networks on landmark-containing sub-images at the same time:
loss = L1 on (log-)displacements + alpha * BCE for each stage. Every
``validate_every`` iterations the whole pipeline localizes the validation
images and the model with the lowest mean radial error (mm) is kept.

The local stage may have several independently initialized networks per
landmark (``local_members``, an ensemble whose disagreement is an uncertainty
signal). A fine stage (a third
bank on a finer grid with smaller sub-images, as the paper's cephalometric
local networks that work at the X-ray's full resolution) can refine the local
estimate. As in the paper, stages can be trained on their own, starting from
a trained model (``init_from``) whose earlier stages stay frozen:
``train_stage`` "local" (a new local stage) or "fine" (a fine stage), "finetune": every network
of the model started from trained further (e.g. with stronger augmentation), or "global": only the
global network trained further, every later stage kept as it was (the global stage is what sends the
local ones to the wrong place when images look unlike the training ones; training it alone on harder
images cannot make the local stages less precise).

Under ``torchrun`` each process trains on its own share of the images with
DistributedDataParallel (gloo on CPU, nccl on CUDA); rank 0 validates, logs and
writes files. On CUDA the networks run in channels-last layout under autocast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..errors import InputError, LandmarkLocError, ModelError
from ..geometry.frames import ImageGeometry
from ..geometry.intensity import get_preset, intensity_profile, profile_preset
from ..geometry.resample import resample_to_grid
from ..inference.fcn import grid_key
from ..io.datasets import LandmarkDataset
from ..io.image import read_image
from ..io.modelfile import load_model, model_paths, read_metadata, save_model
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
    # networks trained further (finetune, global) keep their batch-norm statistics (see ``train_mode``)
    keep_batch_norm: bool = True
    local_members: int = 1  # local networks per landmark (an ensemble when > 1)
    init_from: str | None = None  # a trained FCN model to start from (its global network, grid and intensity)
    train_stage: str = "all"  # "all": global and local together; "local" or "fine": only that stage;
    # "finetune": the global and local networks of ``init_from``, trained further together; "global": its
    # global network trained further, its local (and fine) stage kept
    fine_spacing: tuple | None = None  # grid of the fine stage in mm (train_stage "fine")
    fine_sub_image_size: int = 32
    fine_overrides: dict = field(default_factory=dict)  # FCNConfig fields of the fine bank (local preset)
    # cut every image to its anatomy (plus this margin) before normalization (None: the whole field of view);
    # stored in the model, whose Localizer then cuts every input so
    foreground_margin_mm: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("spacing", "fine_spacing"):
            value = getattr(self, key)
            d[key] = None if value is None else [float(s) for s in value]
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


TRAIN_STAGES = ("all", "local", "fine", "finetune", "global")
CONTINUED_STAGES = ("finetune", "global")  # stages that train networks of the model started from further


def _check(cfg: FCNTrainConfig) -> None:
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise InputError(f"unknown learning-rate schedule {cfg.lr_schedule!r} (constant or cosine)")
    if cfg.local_members < 1:
        raise InputError("local_members must be at least 1")
    if cfg.train_stage not in TRAIN_STAGES:
        raise InputError(f"unknown training stage {cfg.train_stage!r} ({', '.join(TRAIN_STAGES)})")
    if cfg.train_stage != "all" and (cfg.init_from is None or not cfg.use_local):
        raise InputError(f"training the {cfg.train_stage} stage only needs a model to start from (--init-from)")
    if cfg.train_stage == "fine" and cfg.fine_spacing is None:
        raise InputError("a fine stage needs its grid (--fine-spacing)")


def network_configs(cfg: FCNTrainConfig, num_landmarks: int, start: dict | None = None) -> tuple:
    """(global, local, fine) network configurations; ``start``: metadata of the model started from."""
    g = FCNConfig.from_dict(start["global_architecture"]) if start else \
        global_config(cfg.preset, cfg.ndim, num_landmarks, **cfg.global_overrides)
    loc, fine = None, None
    if cfg.train_stage in CONTINUED_STAGES:
        if cfg.train_stage == "finetune" and (not start.get("local_architecture") or start.get("fine_stage")):
            raise InputError("finetune continues a model with a global and a local stage and no fine stage")
        if not start.get("local_architecture"):
            raise InputError("training the global stage alone keeps a local stage: the model started from has none")
        loc = FCNConfig.from_dict(start["local_architecture"])
        if start.get("fine_stage"):
            fine = FCNConfig.from_dict(start["fine_stage"]["architecture"])
    elif cfg.train_stage == "fine":
        if not start.get("local_architecture"):
            raise InputError("a fine stage refines a local stage: the model started from has none")
        loc = FCNConfig.from_dict(start["local_architecture"])
        fine = local_config(cfg.preset, cfg.ndim, num_landmarks, **cfg.fine_overrides)
    elif cfg.use_local:
        loc = local_config(cfg.preset, cfg.ndim, num_landmarks * cfg.local_members, **cfg.local_overrides)
    for bank, size in ((loc, cfg.sub_image_size), (fine, cfg.fine_sub_image_size)):
        if bank is not None and size % bank.patch_size:
            raise InputError(f"sub-image size {size} is not a multiple of the local patch size {bank.patch_size}")
    return g, loc, fine


# --------------------------------------------------------------------------- data


def apply_mask(image: sitk.Image, mask_path) -> sitk.Image:
    """The image with everything outside the mask set to 0 (the mask is resampled onto the image's grid)."""
    mask = read_image(mask_path)
    mask = resample_to_grid(mask, ImageGeometry.from_image(image), "nearest", 0.0)
    return sitk.Mask(image, sitk.Cast(mask > 0.5, sitk.sitkUInt8))


def prepare_cases(dataset: LandmarkDataset, spacing, intensity, input_spacing=None, quiet=True,
                  masked_copies: bool = False, foreground_margin_mm: float | None = None) -> list:
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
            array, geometry = preprocess(img, spacing, intensity, foreground_margin_mm=foreground_margin_mm)
            out.append(PreparedCase(name, array, geometry.spacing, geometry.physical_to_index(lms), geometry))
    return out


def median_spacing(dataset: LandmarkDataset, input_spacing=None) -> tuple:
    from ..io.image import read_image

    spacings = [read_image(c.image_path, spacing=input_spacing).GetSpacing() for c in dataset.cases]
    return tuple(float(s) for s in np.median(np.array(spacings), axis=0))


def _stack_targets(items):
    return [torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(len(items[0]))]


def make_batch(cases, cfg: FCNTrainConfig, crop, global_patch, local_patch, rng, local_cases=None,
               sub_image_size: int | None = None, members: int | None = None):
    """One training batch: global crops with targets and (optionally) local sub-images with targets.

    ``local_cases``: the same cases on the trained local (or fine) stage's grid
    (default: ``cases``), with sub-images of ``sub_image_size`` (default: the
    local stage's) for ``members`` networks per landmark, each with its own
    random sub-images. Without ``global_patch`` no global crops are made.
    """
    variant = get_variant(cfg.variant)
    aug = cfg.augment if cfg.augment.enabled else None
    local_cases = cases if local_cases is None else local_cases
    sub_image_size = sub_image_size or cfg.sub_image_size
    members = members or cfg.local_members
    g_items, l_items = [], []
    grid = tuple(c // global_patch for c in crop[::-1]) if global_patch else None
    for _ in range(cfg.batch_size):
        index = rng.integers(len(cases))
        if global_patch:
            image, pts = global_crop(cases[index], crop, aug, rng)
            g_items.append((image, *fcn_targets(pts, grid, global_patch, variant)))
        if local_patch:
            case = local_cases[index]
            draws = [local_subimages(case, sub_image_size, aug, rng) for _ in range(members)]
            subs = torch.cat([d[0] for d in draws])
            spts = np.concatenate([d[1] for d in draws])
            lgrid = (sub_image_size // local_patch,) * case.ndim
            per_lm = [fcn_targets(spts[n:n + 1], lgrid, local_patch, variant) for n in range(len(spts))]
            l_items.append((subs, *[torch.cat([t[k] for t in per_lm]) for k in range(3)]))
    return (_stack_targets(g_items) if g_items else None), (_stack_targets(l_items) if l_items else None)


def _crop_size(cases, cfg: FCNTrainConfig, patch: int) -> list:
    """Crop (ITK order): the configured size, no larger than the largest image, a multiple of the patch."""
    largest = np.max([c.array.shape[::-1] for c in cases], axis=0)
    size = np.minimum(cfg.crop_size, largest)
    return [int(math.ceil(s / patch) * patch) for s in size]


# --------------------------------------------------------------------------- validation


def validate(model: GlobalToLocal, cases, cfg: FCNTrainConfig, device, stage_cases=()) -> dict:
    """Localize every validation case with the full pipeline; radial errors in mm.

    ``stage_cases``: per local stage (local, fine), its spacing, sub-image size
    and the same cases on its grid.
    """
    from ..inference.fcn import LocalStage, outside_view, run_global, run_stages

    variant = get_variant(cfg.variant)
    errors, missed = [], 0
    was_training = model.training
    model.eval()
    banks = [model.local_net, model.fine_net]
    stages = [LocalStage(bank, np.asarray(spacing), size)
              for bank, (spacing, size, _) in zip(banks, stage_cases) if bank is not None]
    with torch.inference_mode():
        for i, case in enumerate(cases):
            summary = run_global(model.global_net, case.array, variant, case.spacing, device)
            estimate, final_case = summary.estimate, case
            if stages:
                by_spacing = {grid_key(spacing): grid_cases[i] for spacing, _, grid_cases in stage_cases}
                by_spacing[grid_key(case.spacing)] = case

                def grid(spacing, by_spacing=by_spacing):
                    found = by_spacing[grid_key(spacing)]
                    return found.array, found.geometry

                results = run_stages(stages, estimate, case.geometry, grid, variant, device)
                estimate = results[-1].summary.estimate
                final_case = by_spacing[grid_key(stages[-1].spacing)]
            for n, truth in enumerate(final_case.landmarks):
                if not np.all(np.isfinite(truth)):
                    continue
                if outside_view(estimate[[n]], final_case.array.shape)[0] or \
                        outside_view(summary.estimate[[n]], case.array.shape, summary.votes[[n]],
                                     summary.confidence[[n]], border=model.global_net.patch_size)[0]:
                    missed += 1
                errors.append(float(np.linalg.norm((estimate[n] - truth) * final_case.spacing)))
    model.train(was_training)
    errors = np.nan_to_num(np.array(errors), nan=1e6)
    return {"mean_radial_error_mm": float(errors.mean()) if errors.size else float("nan"),
            "median_radial_error_mm": float(np.median(errors)) if errors.size else float("nan"),
            "not_found": int(missed), "n": int(errors.size)}


# --------------------------------------------------------------------------- files


def model_metadata(cfg: FCNTrainConfig, names, global_cfg: FCNConfig, local_cfg, spacing, dataset_summary,
                   validation, training, fine_cfg=None) -> dict:
    dataset_summary = dict(dataset_summary)
    profile = dataset_summary.pop("intensity_profile", None)
    return {
        "kind": "fcn", "method": "global-to-local FCN (Noothout et al. 2020)", "ndim": cfg.ndim,
        "landmark_names": list(names), "spacing": [float(s) for s in spacing],
        "intensity": get_preset(cfg.intensity).to_dict(), "variant": cfg.variant,
        "patch_size": global_cfg.patch_size, "sub_image_size": cfg.sub_image_size,
        "local_patch_size": local_cfg.patch_size if local_cfg else None,
        "local_members": cfg.local_members if local_cfg else 0,
        "fine_stage": {"spacing": [float(s) for s in cfg.fine_spacing], "sub_image_size": cfg.fine_sub_image_size,
                       "architecture": fine_cfg.to_dict()} if fine_cfg else None,
        "global_architecture": global_cfg.to_dict(),
        "local_architecture": local_cfg.to_dict() if local_cfg else None,
        "training_data": dataset_summary, "intensity_profile": profile,
        "training": training, "validation": validation,
        "foreground_margin_mm": cfg.foreground_margin_mm,
        "train_config": cfg.to_dict(),
    }


def _beside(output: Path, suffix: str) -> Path:
    """A file kept beside the model (its log, its resume state): the weights' stem + ``suffix``."""
    weights, _ = model_paths(output)
    return weights.with_name(weights.name[: -len(".safetensors")] + suffix)


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


@contextlib.contextmanager
def _training_log(output: Path, enabled: bool):
    """Log to OUTPUT.log (rank 0: ``enabled``); a run refused before it wrote a model leaves no new log behind."""
    log_path = _beside(output, ".log")
    new_log = not log_path.exists()
    handler = None
    if enabled:
        handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    refused = False
    try:
        yield
    except LandmarkLocError:
        refused = new_log and not model_paths(output)[0].exists()
        raise
    finally:
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
            if refused:
                log_path.unlink(missing_ok=True)


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
    ctx = init_distributed(device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    with contextlib.closing(ctx), _training_log(output, ctx.is_main):
        names = list(dataset.names)
        if val_dataset is not None and list(val_dataset.names) != names:
            raise InputError("the validation dataset must have the same landmark names as the training dataset")
        init = start_model(cfg, names)
        start = init[1] if init is not None else None
        cfg = _run_config(cfg, start, dataset, input_spacing)
        data = _TrainingData(dataset, val_dataset, cfg, input_spacing, ctx, quiet)
        configs = network_configs(cfg, len(names), start)
        val_stages = _validation_stages(cfg, configs, data)
        model = _build_model(cfg, configs, init[0] if init is not None else None, ctx.device)
        trainer = _Trainer(ctx, cfg, names, configs, model, data, val_stages, output, resume)
        trainer.run(quiet)
        return _written_metadata(output, ctx)


def _run_config(cfg: FCNTrainConfig, start: dict | None, dataset: LandmarkDataset, input_spacing) -> FCNTrainConfig:
    """The configuration trained with, completed from the model started from and the images.

    A stage added to a model works on that model's grid, intensity and encoding
    (a fine stage also on its local stage's sub-images); spacings become one
    value per axis, by default the images' median spacing.
    """
    if start is not None:
        cfg = replace(cfg, spacing=tuple(start["spacing"]), intensity=start["intensity"]["name"],
                      variant=start["variant"])
        if cfg.foreground_margin_mm is None:
            cfg = replace(cfg, foreground_margin_mm=start.get("foreground_margin_mm"))
        if cfg.train_stage == "fine" or cfg.train_stage in CONTINUED_STAGES:
            cfg = replace(cfg, sub_image_size=int(start["sub_image_size"]), local_members=max(1, _members(start)))
        if cfg.train_stage == "global" and start.get("fine_stage"):
            cfg = replace(cfg, fine_spacing=tuple(start["fine_stage"]["spacing"]),
                          fine_sub_image_size=int(start["fine_stage"]["sub_image_size"]))
    return replace(cfg, spacing=_per_axis(cfg.spacing or median_spacing(dataset, input_spacing), cfg.ndim),
                   fine_spacing=_per_axis(cfg.fine_spacing, cfg.ndim))


class _TrainingData:
    """This rank's share of the training images and (rank 0) the validation images, read once per grid.

    Each stage works on its own grid (the fine stage on a finer one), so the
    same images are prepared for every grid a stage asks for.
    """

    def __init__(self, dataset: LandmarkDataset, val_dataset: LandmarkDataset | None, cfg: FCNTrainConfig,
                 input_spacing, ctx, quiet: bool):
        self.held_out = val_dataset is None  # validation images held out of the training images (seed, fraction)
        if val_dataset is None:
            train_idx, val_idx = _split(len(dataset.cases), cfg.val_fraction, np.random.default_rng(cfg.seed))
            self.train, self.val = dataset.subset(train_idx), dataset.subset(val_idx)
        else:
            self.train, self.val = dataset, val_dataset
        # each rank reads and trains on its own share of the training images
        self.share = self.train.subset(range(ctx.rank, len(self.train.cases), ctx.world_size)) \
            if len(self.train.cases) >= ctx.world_size else self.train
        self._cfg, self._input_spacing, self._is_main = cfg, input_spacing, ctx.is_main
        self._quiet = quiet or not ctx.is_main
        self._grids: dict = {}
        self.cases, self.val_cases = self.on_grid(cfg.spacing)  # the model's grid

    def on_grid(self, spacing) -> tuple:
        """(training cases, validation cases) on the grid of ``spacing``."""
        key = grid_key(spacing)
        if key not in self._grids:
            cfg = self._cfg
            cases = prepare_cases(self.share, spacing, cfg.intensity, self._input_spacing, quiet=self._quiet,
                                  masked_copies=cfg.masked_copies, foreground_margin_mm=cfg.foreground_margin_mm)
            if any(c.ndim != cfg.ndim for c in cases):
                raise InputError(f"training images must all be {cfg.ndim}D")
            val_cases = prepare_cases(self.val, spacing, cfg.intensity, self._input_spacing, quiet=True,
                                      foreground_margin_mm=cfg.foreground_margin_mm) \
                if self._is_main else []
            self._grids[key] = (cases, val_cases)
        return self._grids[key]

    def summary(self, names) -> dict:
        """The training data as the model's metadata describes it."""
        return {"images": len(self.train.cases), "validation_images": len(self.val.cases),
                # False: given apart (--val), so a held-out split recomputed from the seed would be other images
                "validation_held_out": self.held_out, "landmarks": names,
                "annotations": self.train.summary()["annotations_per_landmark"],
                # what the images look like to the network, to warn about inputs unlike them
                "intensity_profile": self._intensity_profile()}

    def _intensity_profile(self) -> dict:
        """The training images' intensity profile, under the normalization the check compares (for an
        equalizing preset the images are read again with their percentile range)."""
        cfg, view = self._cfg, profile_preset(self._cfg.intensity)
        cases = self.cases if view == get_preset(cfg.intensity) else prepare_cases(
            self.share, cfg.spacing, view, self._input_spacing, quiet=True, masked_copies=cfg.masked_copies,
            foreground_margin_mm=cfg.foreground_margin_mm)
        return intensity_profile([c.array for c in cases], view)


def _validation_stages(cfg: FCNTrainConfig, configs: tuple, data: _TrainingData) -> list:
    """(spacing, sub-image size, validation cases on its grid) of the model's local and fine stage.

    Reads the images on each stage's grid, so the training images are there too.
    """
    _, local_cfg, fine_cfg = configs
    specs = []
    if local_cfg is not None:
        specs.append((cfg.spacing, cfg.sub_image_size))
    if fine_cfg is not None:
        specs.append((cfg.fine_spacing, cfg.fine_sub_image_size))
    return [(spacing, size, data.on_grid(spacing)[1]) for spacing, size in specs]


def _build_model(cfg: FCNTrainConfig, configs: tuple, init_weights: dict | None, device) -> GlobalToLocal:
    """The networks on ``device``; the stages before the one trained are frozen.

    With a model to start from (``init_weights``), its global network and, for
    a fine stage, its local stage are kept.
    """
    model = GlobalToLocal(*configs).to(device)
    frozen = frozen_parts(model, cfg)
    if init_weights is not None:
        kept = {"fine": ("global_net.", "local_net."), "finetune": ("global_net.", "local_net."),
                "global": ("",)}.get(cfg.train_stage, ("global_net.",))  # global: every network kept
        model.load_state_dict({k: v for k, v in init_weights.items() if k.startswith(kept)}, strict=False)
    for part in frozen:
        part.requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=_channels_last(cfg.ndim))
    return model


def _channels_last(ndim: int):
    """The channels-last memory format of 2D or 3D tensors (faster convolutions on CUDA)."""
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


class _Trainer:
    """The optimization loop of one run and its checkpoints (validation, best model, resume state).

    The random streams depend on the seed, the rank and the iteration started
    from, so that a resumed run and each DDP process draw their own batches.
    """

    def __init__(self, ctx, cfg: FCNTrainConfig, names, configs: tuple, model: GlobalToLocal, data: _TrainingData,
                 val_stages: list, output: Path, resume: bool):
        self.ctx, self.cfg, self.names, self.configs = ctx, cfg, names, configs
        self.model, self.data, self.val_stages, self.output = model, data, val_stages, output
        # AMSGrad as in the reference implementation (GEJansen/landmark_detection)
        self.optimizer = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=cfg.learning_rate,
                                          amsgrad=True)
        self.resume_path = _beside(output, ".resume.safetensors")
        self.start_it, self.best, self.elapsed_before = self._resumed() if resume else (0, None, 0.0)
        self.variant = get_variant(cfg.variant)
        self.train_model = model
        if ctx.distributed:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=not (self.variant.classification and self.variant.regression))
        self.rng = np.random.default_rng([cfg.seed, ctx.rank, self.start_it])
        seed_everything(cfg.seed + 1000 * ctx.rank + self.start_it)
        self.crop = _crop_size(data.cases, cfg, configs[0].patch_size)
        self.next_batch = self._batch_maker()
        self.alpha_global = cfg.alpha if cfg.alpha is not None else float(len(names))
        self.alpha_local = cfg.alpha if cfg.alpha is not None else 1.0
        self.summary = data.summary(names)
        self.init_summary = init_summary(cfg.init_from) if cfg.init_from else None  # read once, not per checkpoint
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" \
            else contextlib.nullcontext()

    def _resumed(self) -> tuple:
        """(iteration, best metrics, seconds spent) of the resume state, whose weights and Adam state are loaded."""
        if not model_paths(self.resume_path)[1].is_file():
            raise InputError(f"nothing to resume: {self.resume_path} does not exist")
        meta = load_resume(self.resume_path, self.model, self.optimizer)
        return int(meta["iteration"]), meta.get("best"), float(meta["elapsed_s"])

    def _batch_maker(self):
        """Batches for the stage trained: global crops (all stages) and sub-images of the bank trained."""
        cfg, fine = self.cfg, self.cfg.train_stage == "fine"
        global_cfg, local_cfg, fine_cfg = self.configs
        bank = fine_cfg if fine else local_cfg
        return functools.partial(
            make_batch, self.data.cases, cfg, self.crop,
            global_cfg.patch_size if cfg.train_stage == "all" or cfg.train_stage in CONTINUED_STAGES else 0,
            bank.patch_size if bank and cfg.train_stage != "global" else 0,
            local_cases=self.data.on_grid(cfg.fine_spacing)[0] if fine else self.data.cases,
            sub_image_size=cfg.fine_sub_image_size if fine else cfg.sub_image_size,
            members=1 if fine else cfg.local_members)

    def run(self, quiet: bool) -> None:
        """Train until the last iteration or the --max-minutes budget, checkpointing on the way and at the end."""
        ctx, cfg = self.ctx, self.cfg
        if ctx.is_main:
            LOG.info("training %s (stage %s) on %d images (%d validation), %d landmarks, spacing %s, "
                     "local stages %s, world size %d, device %s, crop %s", cfg.preset, cfg.train_stage,
                     len(self.data.train.cases), len(self.data.val.cases), len(self.names), cfg.spacing,
                     [(spacing, size) for spacing, size, _ in self.val_stages], ctx.world_size, ctx.device,
                     self.crop)
        t0 = time.monotonic()
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes else None
        bar = progress(total=cfg.iterations, desc="train-fcn", quiet=quiet or not ctx.is_main, initial=self.start_it)
        train_mode(self.model, cfg)
        for it in range(self.start_it, cfg.iterations):
            loss, parts = self._step(it)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            done = it + 1
            out_of_time = budget is not None and _agree(time.monotonic() - t0 > budget, ctx)
            if done % cfg.validate_every == 0 or done == cfg.iterations or out_of_time:
                self._checkpoint(done, self.elapsed_before + time.monotonic() - t0, parts)
            if out_of_time:
                if ctx.is_main:
                    LOG.info("stopping after %d iterations: --max-minutes budget used", done)
                break
        bar.close()
        ctx.barrier()

    def _step(self, it: int) -> tuple:
        """One optimizer step on a new batch; returns the loss and its parts."""
        cfg, dev, fine = self.cfg, self.ctx.device, self.cfg.train_stage == "fine"
        glob, local = self.next_batch(self.rng)
        lx = local[0].to(dev) if local else None
        gx = glob[0].to(dev) if glob else None
        if dev.type == "cuda" and gx is not None:
            gx = gx.contiguous(memory_format=_channels_last(cfg.ndim))
        with self.autocast:
            g_out, l_out, f_out = self.train_model(gx, *((None, lx) if fine else (lx, None)))
        l_out = f_out if fine else l_out
        loss, parts = torch.zeros((), device=dev), {}
        if g_out is not None:
            loss, parts = fcn_loss(g_out[0], g_out[1], *(t.to(dev) for t in glob[1:]), self.variant, self.alpha_global)
        if l_out is not None:
            l_loss, l_parts = fcn_loss(l_out[0], l_out[1], *(t.to(dev) for t in local[1:]), self.variant,
                                     self.alpha_local)
            loss = loss + l_loss
            parts.update({f"local_{k}": v for k, v in l_parts.items()})
        if cfg.lr_schedule == "cosine":
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * it / cfg.iterations))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, parts

    def _checkpoint(self, iteration: int, elapsed: float, parts: dict) -> None:
        """Rank 0: validate, keep the best model, write the resume state."""
        ctx, cfg, model = self.ctx, self.cfg, self.model
        if ctx.is_main:
            metrics = validate(model, self.data.val_cases, cfg, ctx.device, self.val_stages)
            train_mode(model, cfg)
            metrics["iteration"] = iteration
            LOG.info("iteration %d: loss %s, validation mean radial error %.3f mm (median %.3f, not found %d)",
                     iteration, {k: round(v, 4) for k, v in parts.items()}, metrics["mean_radial_error_mm"],
                     metrics["median_radial_error_mm"], metrics["not_found"])
            if self.best is None or metrics["mean_radial_error_mm"] <= self.best["mean_radial_error_mm"]:
                self.best = metrics
                training = {"iterations": iteration, "seconds": round(elapsed, 1), "world_size": ctx.world_size,
                            "device": ctx.device.type, "torch": torch.__version__}
                if self.init_summary is not None:
                    training["init_from"] = self.init_summary
                global_cfg, local_cfg, fine_cfg = self.configs
                meta = model_metadata(cfg, self.names, global_cfg, local_cfg, cfg.spacing, self.summary, metrics,
                                      training, fine_cfg)
                save_model(self.output, model.state_dict(), meta)
                LOG.info("saved best model (iteration %d) to %s", iteration, model_paths(self.output)[0])
            save_resume(self.resume_path, model, self.optimizer,
                        {"iteration": iteration, "best": self.best, "elapsed_s": elapsed,
                         "train_config": cfg.to_dict()})
        ctx.barrier()  # self.best is meaningful on rank 0, the only rank that writes files


def _written_metadata(output: Path, ctx) -> dict:
    """Rank 0: the metadata of the best model written (a run that wrote none is an error); other ranks: {}."""
    if not ctx.is_main:
        return {}
    if not model_paths(output)[1].is_file():
        raise ModelError("training ended without writing a model (no iterations were run)")
    return json.loads(model_paths(output)[1].read_text(encoding="utf-8"))


def start_model(cfg: FCNTrainConfig, names) -> tuple | None:
    """(weights, metadata) of the model to start from (``init_from``), checked against this run; or None."""
    if cfg.init_from is None:
        return None
    from ..inference.fcn import MODEL_KIND

    tensors, meta = load_model(cfg.init_from, kind=MODEL_KIND)
    if list(meta.get("landmark_names", [])) != list(names) or meta.get("ndim") != cfg.ndim:
        raise InputError(f"{Path(cfg.init_from).name}: its landmarks or dimension differ from this dataset's")
    return tensors, meta


def init_summary(path) -> dict:
    """What the run started from, for the model card: its file, weights' sha256 and how it was trained."""
    meta = read_metadata(path)
    return {"model": meta.get("weights", Path(path).name), "sha256": meta.get("sha256"),
            **{k: meta[k] for k in ("train_config", "training", "validation") if k in meta}}


def frozen_parts(model: GlobalToLocal, cfg: FCNTrainConfig) -> list:
    """The networks this run keeps as they were trained (the stages before the one it trains)."""
    return {"all": [], "finetune": [], "local": [model.global_net], "fine": [model.global_net, model.local_net],
            "global": [n for n in (model.local_net, model.fine_net) if n is not None]}[cfg.train_stage]


def train_mode(model: GlobalToLocal, cfg: FCNTrainConfig) -> None:
    """Training mode, except frozen networks (their batch-norm statistics stay as trained).

    Networks trained further (``train_stage`` "finetune" or "global") keep their batch-norm statistics
    too: they are trained on harder images than they were, and four crops a batch under strong appearance
    changes made the running statistics swing (validation 1.1 -> 53 mm within 750 iterations on the brain
    model); with the statistics of their first training their weights learn to read the harder images.
    """
    model.train()
    for part in frozen_parts(model, cfg):
        part.eval()
    if cfg.keep_batch_norm and cfg.train_stage in CONTINUED_STAGES:
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
                module.eval()


def _per_axis(spacing, ndim: int):
    """A spacing given as one value or one per axis -> one float per axis (None stays None)."""
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)
    return spacing * ndim if len(spacing) == 1 else spacing


def _members(meta: dict) -> int:
    """Local networks per landmark of a model's metadata."""
    local = meta.get("local_architecture")
    return int(local["num_landmarks"]) // len(meta["landmark_names"]) if local else 0


def _agree(flag: bool, ctx) -> bool:
    """All ranks stop together: true if any rank says so."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
