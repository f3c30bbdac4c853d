"""Self-supervised training of relative position regression (Lei et al. 2021).

No annotation: two patches are cut from the same volume and Pnet learns the
physical offset between their centres, ``r * tanh(Pnet(x_s) - Pnet(x_q)) ~
(c_s - c_q) * spacing`` (MSE). The coarse model sees pairs anywhere in the body;
the fine model sees the second patch within ``fine_range_mm`` of the first.
Patch centres are always body (non-air) voxels.

Augmentation (off in the "paper" preset, as in the reference code) simulates
other subjects: one random rotation and isotropic scaling per pair, applied to
both patches' sampling grids, with the target offset expressed in the rotated,
scaled frame; and independent intensity changes (gamma, contrast, noise) per
patch, since at inference the two patches come from different scans.

With anatomical label maps (``label_dir``), training pairs come from rendered
*views* instead (:mod:`landmarkloc.training.views`): TorchIO appearance
randomisation (images synthesised from the labels, bias field, resolution,
blur, gamma, noise, skull / no skull) and known random deformations, with
cross-view pairs whose two patches come from different views of one subject.
Validation then also measures cross-view pairs, and the best model is chosen on
the mean of the same-image and cross-view MSE.

Distributed training uses ``torchrun`` (gloo on CPU, nccl on CUDA): every rank
samples its own pairs, DDP averages gradients, rank 0 validates and saves.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from landmarkloc.errors import InputError, ModelError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.geometry.intensity import get_preset
from landmarkloc.geometry.resample import resample_to_grid
from landmarkloc.geometry.rotations import random_rotation
from landmarkloc.inference.patches import PreparedVolume, prepare_volume, sample_patches
from landmarkloc.networks.pnet import Pnet, PnetConfig, relative_offset, rpr_metadata
from landmarkloc.training.views import ViewConfig, ViewPairSampler, labelled_volume

STAGES = ("coarse", "fine")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random changes that make the offset regression robust across subjects and scanners."""

    rotation_deg: float = 0.0  # max |angle| of the random rotation about each axis
    scale: float = 0.0  # isotropic scale factor drawn from [1 - scale, 1 + scale]
    intensity_probability: float = 0.0  # chance that a patch gets gamma/contrast/noise changes
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: float = 0.15  # intensity * U(1 - c, 1 + c) + U(-c/2, c/2)
    noise_std: float = 0.03


@dataclass(frozen=True)
class RprTrainingConfig:
    """Everything that defines an RPR training run (saved in the model metadata)."""

    preset: str
    pnet: PnetConfig
    spacing: tuple[float, ...]  # model voxel spacing in mm, ITK order
    intensity: str = "mr"
    foreground_threshold: float = 0.1  # normalised intensity above which a voxel is body, not air
    coarse_radius_mm: float = 300.0  # r_c: covers the largest offset in the body
    fine_radius_mm: float = 30.0  # r_f
    fine_range_mm: float = 15.0  # fine pairs: |c_s - c_q| <= this along each axis
    batch_size: int = 6
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 250
    iterations_per_epoch: int = 2000
    lr_step_epochs: int = 5  # StepLR as in the reference code
    lr_gamma: float = 0.9
    validation_pairs_per_volume: int = 25
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    views: ViewConfig = field(default_factory=ViewConfig)  # used when label maps are given

    def radius(self, stage: str) -> float:
        return self.coarse_radius_mm if stage == "coarse" else self.fine_radius_mm

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pnet"] = self.pnet.to_dict()
        return d


def rpr_preset(name: str, ndim: int = 3) -> RprTrainingConfig:
    """Named configurations.

    "paper": the reference set-up (48^3 patches at 3 mm, Pnet base 16 with three
    convolutions per block, r_c = 300, r_f = 30, fine pairs within 15 mm, batch 6,
    Adam 1e-3, StepLR, no augmentation). "compact": a Pnet small enough for
    sub-second one-shot localisation on a laptop CPU (32^3 patches at 2 mm, base 4,
    two convolutions per block), with augmentation to make up for the smaller net.
    2D variants use the same numbers on two axes.
    """
    if ndim not in (2, 3):
        raise InputError(f"RPR supports 2D and 3D images, not {ndim}D")
    if name == "paper":
        return RprTrainingConfig(
            preset="paper", pnet=PnetConfig(ndim=ndim, patch_size=(48,) * ndim, base_channels=16, convs_per_block=3),
            spacing=(3.0,) * ndim, coarse_radius_mm=300.0, fine_radius_mm=30.0, fine_range_mm=15.0,
            batch_size=6, epochs=250, iterations_per_epoch=2000)
    if name == "compact":
        return RprTrainingConfig(
            preset="compact", pnet=PnetConfig(ndim=ndim, patch_size=(32,) * ndim, base_channels=4, convs_per_block=2),
            spacing=(2.0,) * ndim, coarse_radius_mm=300.0, fine_radius_mm=40.0, fine_range_mm=20.0,
            batch_size=8, epochs=100, iterations_per_epoch=200, lr_step_epochs=5, lr_gamma=0.9,
            augmentation=AugmentationConfig(rotation_deg=10.0, scale=0.1, intensity_probability=0.5))
    raise InputError(f"unknown RPR preset {name!r}; choose 'paper' or 'compact'")


class PairSampler:
    """Draws (support patch, query patch, true offset in mm) batches from prepared volumes."""

    def __init__(self, volumes: Sequence[PreparedVolume], config: RprTrainingConfig, stage: str,
                 generator: torch.Generator, augment: bool = True) -> None:
        if stage not in STAGES:
            raise InputError(f"unknown RPR stage {stage!r}; choose 'coarse' or 'fine'")
        self.volumes = list(volumes)
        self.config = config
        self.stage = stage
        self.generator = generator
        self.augment = augment
        self.spacing = torch.tensor(config.spacing, dtype=torch.float64)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _transform(self, ndim: int) -> torch.Tensor:
        """Physical-space matrix A: a patch offset u (mm, new frame) samples the volume at A u."""
        aug = self.config.augmentation
        if not self.augment or (aug.rotation_deg <= 0 and aug.scale <= 0):
            return torch.eye(ndim, dtype=torch.float64)
        scale = float(self._uniform(1, 1 - aug.scale, 1 + aug.scale)) if aug.scale > 0 else 1.0
        return scale * random_rotation(ndim, aug.rotation_deg, self.generator)

    def pair_centres(self, volume: PreparedVolume, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """(c_s, c_q) continuous ITK-order voxel centres and the target offset q -> s in mm (new frame)."""
        fg = volume.foreground
        c_q = fg[self._randint(len(fg))].to(torch.float64)
        s = self.spacing
        if self.stage == "coarse":
            c_s = fg[self._randint(len(fg))].to(torch.float64)
            target = torch.linalg.solve(matrix, (c_s - c_q) * s)
            return c_s, c_q, target
        size = torch.tensor(volume.geometry.size, dtype=torch.float64)
        r = self.config.fine_range_mm
        for _ in range(20):  # keep the second centre in the body too
            delta = self._uniform(volume.ndim, -r, r)
            c_s = c_q + (matrix @ delta) / s
            voxel = torch.round(c_s).long()
            if bool(((c_s >= 0) & (c_s <= size - 1)).all()) and bool(volume.body_at(voxel)):
                break
        return c_s, c_q, delta

    def _intensity(self, patch: torch.Tensor) -> torch.Tensor:
        aug = self.config.augmentation
        if not self.augment or float(torch.rand(1, generator=self.generator)) >= aug.intensity_probability:
            return patch
        gamma = float(self._uniform(1, *aug.gamma))
        out = patch.clamp(min=0) ** gamma
        c = aug.contrast
        out = out * float(self._uniform(1, 1 - c, 1 + c)) + float(self._uniform(1, -c / 2, c / 2))
        noise = torch.randn(out.shape, generator=self.generator, dtype=torch.float32)
        return out + aug.noise_std * noise.to(out)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        supports, queries, targets = [], [], []
        for _ in range(batch_size):
            volume = self.volumes[self._randint(len(self.volumes))]
            matrix = self._transform(volume.ndim)
            c_s, c_q, target = self.pair_centres(volume, matrix)
            # S^-1 A S: patch voxel offsets -> volume voxel offsets
            voxel_matrix = torch.diag(1 / self.spacing) @ matrix @ torch.diag(self.spacing)
            centres = torch.stack([c_s, c_q]).to(volume.data)
            mats = voxel_matrix.to(volume.data)[None].expand(2, -1, -1)
            patches = sample_patches(volume.data, centres, self.config.pnet.patch_size, mats)
            supports.append(self._intensity(patches[0]))
            queries.append(self._intensity(patches[1]))
            targets.append(target.to(torch.float32))
        return torch.stack(supports), torch.stack(queries), torch.stack(targets)


def load_volumes(paths: Sequence[Path], config: RprTrainingConfig, read: Callable[[Path], sitk.Image],
                 quiet: bool = True, mask_dir: Path | None = None) -> list[PreparedVolume]:
    """Read, reorient, resample and normalise training volumes (kept in memory).

    With ``mask_dir``, an image with a mask of the same file name there is also
    used with the mask applied (e.g. skull-stripped), so the model learns both.
    """
    from landmarkloc.runtime import progress

    volumes = []
    for path in progress(paths, desc="loading volumes", quiet=quiet):
        image = read(path)
        if image.GetDimension() != config.pnet.ndim:
            raise InputError(f"{path}: {image.GetDimension()}D image, but the model is {config.pnet.ndim}D")
        variants = [image]
        mask_path = Path(mask_dir) / Path(path).name if mask_dir is not None else None
        if mask_path is not None and mask_path.is_file():
            mask = resample_to_grid(read(mask_path), ImageGeometry.from_image(image), "nearest", 0.0)
            variants.append(sitk.Mask(image, sitk.Cast(mask > 0.5, sitk.sitkUInt8)))
        volumes += [prepare_volume(v, config.spacing, get_preset(config.intensity), config.foreground_threshold)
                    for v in variants]
    return volumes


def load_labelled_volumes(paths: Sequence[Path], config: RprTrainingConfig, read: Callable[[Path], sitk.Image],
                          label_dir: Path, quiet: bool = True):
    """Training volumes with their label maps (same file name in ``label_dir``) on the model grid."""
    from landmarkloc.runtime import progress
    from landmarkloc.training.views import LabelledVolume  # noqa: F401  (type of the result)

    volumes = []
    for path in progress(paths, desc="loading labelled volumes", quiet=quiet):
        label_path = Path(label_dir) / Path(path).name
        if not label_path.is_file():
            raise InputError(f"no label map {label_path} for {path}")
        prepared = prepare_volume(read(path), config.spacing, get_preset(config.intensity),
                                  config.foreground_threshold)
        labels = resample_to_grid(read(label_path), prepared.geometry, "nearest", 0.0)
        volumes.append(labelled_volume(prepared, sitk.GetArrayFromImage(labels)))
    return volumes


def validation_pairs(volumes: Sequence[PreparedVolume], config: RprTrainingConfig, stage: str,
                     seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A fixed set of validation batches (one per volume), without augmentation."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for volume in volumes:
        sampler = PairSampler([volume], config, stage, generator, augment=False)
        batches.append(sampler.sample(config.validation_pairs_per_volume))
    return batches


def cross_view_validation(volumes, config: RprTrainingConfig, stage: str,
                          seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A fixed set of cross-view validation batches: per volume, two rendered views and pairs across them."""
    generator = torch.Generator().manual_seed(seed)
    views = replace(config.views, pool_size=1, refresh_every=0)
    batches = []
    for volume in volumes:
        sampler = ViewPairSampler([volume], config.pnet.patch_size, views, stage, config.fine_range_mm,
                                  generator, config.intensity)
        batches.append(sampler.sample(config.validation_pairs_per_volume, cross_probability=1.0))
    return batches


def pair_loss(net: torch.nn.Module, support: torch.Tensor, query: torch.Tensor, target: torch.Tensor,
              radius: float) -> torch.Tensor:
    """MSE between predicted and true offsets (paper eq. 3); both patches in one forward pass."""
    latents = net(torch.cat([support, query]))
    n = len(support)
    predicted = relative_offset(latents[:n].float(), latents[n:].float(), radius)
    return F.mse_loss(predicted, target)


@torch.inference_mode()
def evaluate(net: Pnet, batches, radius: float, device: torch.device) -> tuple[float, float]:
    """(MSE in mm^2 per component, mean Euclidean error in mm) on the validation pairs."""
    net.eval()
    sq, err, count = 0.0, 0.0, 0
    for support, query, target in batches:
        latents = net(torch.cat([support, query]).to(device))
        n = len(support)
        predicted = relative_offset(latents[:n].float(), latents[n:].float(), radius).cpu()
        sq += float(((predicted - target) ** 2).mean(dim=1).sum())
        err += float(torch.linalg.norm(predicted - target, dim=1).sum())
        count += n
    return sq / max(count, 1), err / max(count, 1)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-able parts."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.reshape(-1) if value.dim() == 0 else value
                scalars[f"{index}.{name}.scalar"] = value.dim() == 0
    return tensors, {"param_groups": state["param_groups"], "scalar": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optimizer."):
            continue
        _, index, name = key.split(".", 2)
        if meta["scalar"].get(f"{index}.{name}.scalar"):
            value = value.reshape(())
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoint_path(output: Path) -> Path:
    """Where the resumable last state of a run writing ``output`` lives."""
    name = output.name
    for suffix in (".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return output.with_name(name + ".last.safetensors")


@dataclass
class TrainingResult:
    best_validation_mse: float
    best_validation_error_mm: float
    epochs_done: int
    stopped_early: bool
    history: list[dict[str, float]]


def train_rpr(train_paths: Sequence[Path], val_paths: Sequence[Path], output: Path, config: RprTrainingConfig,
              stage: str, *, read: Callable[[Path], sitk.Image], seed: int = 0, device: str = "auto",
              max_minutes: float | None = None, resume: bool = False, quiet: bool = False,
              mask_dir: Path | None = None, label_dir: Path | None = None) -> TrainingResult:
    """Train a coarse or fine Pnet; saves the best model (by validation MSE) to ``output``.

    ``read`` turns a path into an image (the CLI passes ``read_image``). With
    ``label_dir`` (label maps named like the images) pairs come from rendered views,
    half of them across views. Works in a single process or under torchrun.
    """
    from landmarkloc.io.modelfile import load_model, model_paths, save_model
    from landmarkloc.runtime import init_distributed, progress, seed_everything

    if stage not in STAGES:
        raise InputError(f"unknown RPR stage {stage!r}; choose 'coarse' or 'fine'")
    if not train_paths:
        raise InputError("no training images")
    context = init_distributed(device)
    dev = context.device
    seed_everything(seed + context.rank)
    start = time.monotonic()
    quiet = quiet or not context.is_main
    radius = config.radius(stage)

    views = label_dir is not None  # rendered views of labelled volumes instead of the volumes themselves
    volumes = [] if views else load_volumes(train_paths, config, read, quiet, mask_dir)
    val_volumes = load_volumes(val_paths or train_paths, config, read, quiet, mask_dir) if val_paths or views \
        else volumes
    # The best validation MSE is only comparable on the same validation set.
    validation_set = {"images": [str(p) for p in (val_paths or train_paths)], "volumes": len(val_volumes),
                      "cross_view": views}
    val_batches = validation_pairs(val_volumes, config, stage, seed=seed + 10_007) if context.is_main else []
    cross_batches: list = []
    if views:
        labelled = load_labelled_volumes(train_paths, config, read, label_dir, quiet)
        sampler = ViewPairSampler(labelled, config.pnet.patch_size, config.views, stage, config.fine_range_mm,
                                  torch.Generator().manual_seed(seed * 1000 + context.rank), config.intensity)
        if context.is_main:
            cross_batches = cross_view_validation(
                load_labelled_volumes(val_paths or train_paths, config, read, label_dir, quiet), config, stage,
                seed=seed + 20_011)
    else:
        sampler = PairSampler(volumes, config, stage, torch.Generator().manual_seed(seed * 1000 + context.rank))

    net = Pnet(config.pnet).to(dev)
    cuda = dev.type == "cuda"
    memory_format = torch.channels_last_3d if config.pnet.ndim == 3 else torch.channels_last
    if cuda:
        net = net.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)
    amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp_dtype == torch.float16)

    first_epoch, best_mse, best_err, history = 0, math.inf, math.inf, []
    last_path = checkpoint_path(output)
    if resume:
        if not model_paths(last_path)[1].is_file():
            raise InputError(f"resume: no checkpoint {last_path} to resume from")
        tensors, meta = load_model(last_path, kind="rpr-checkpoint")
        if meta.get("stage") != stage or meta.get("pnet") != config.pnet.to_dict():
            raise ModelError(f"{last_path}: checkpoint is for a different stage or network; cannot resume")
        net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(optimizer, tensors, meta["optimizer"])
        first_epoch = int(meta["epochs_done"])
        scheduler.last_epoch = first_epoch
        if meta.get("validation_set", {}) == validation_set:
            best_mse, best_err = float(meta["best_validation_mse"]), float(meta["best_validation_error_mm"])
        history = list(meta.get("history", []))
        sampler.generator.manual_seed(seed * 1000 + context.rank + 7919 * first_epoch)
        torch.manual_seed(seed * 1000 + context.rank + 7919 * first_epoch)

    model = net
    if context.distributed:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if cuda else None)

    def save_best(epochs_done: int, val_mse: float, val_err: float) -> None:
        tensors = {k: v.detach().float() for k, v in net.state_dict().items()}
        save_model(output, tensors, rpr_metadata(
            config.pnet, stage, config.spacing, radius, get_preset(config.intensity).to_dict(),
            config.foreground_threshold, fine_range_mm=config.fine_range_mm if stage == "fine" else None,
            training={"config": config.to_dict(), "epochs_done": epochs_done, "validation_mse": val_mse,
                      "validation_error_mm": val_err, "validation": history[-1] if history else {},
                      "train_images": len(train_paths), "views_from_label_maps": label_dir is not None,
                      "validation_images": len(val_paths), "masked_copies": mask_dir is not None, "seed": seed,
                      "world_size": context.world_size}))

    def save_last(epochs_done: int) -> None:
        tensors = {f"model.{k}": v.detach().float() for k, v in net.state_dict().items()}
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        save_model(last_path, tensors, {
            "kind": "rpr-checkpoint", "stage": stage, "pnet": config.pnet.to_dict(), "epochs_done": epochs_done,
            "best_validation_mse": best_mse, "best_validation_error_mm": best_err, "history": history,
            "validation_set": validation_set, "optimizer": opt_meta})

    deadline = start + 60.0 * max_minutes if max_minutes else None
    stopped = False
    epoch = first_epoch
    for epoch in range(first_epoch, config.epochs):
        model.train()
        bar = progress(range(config.iterations_per_epoch), desc=f"{stage} epoch {epoch + 1}/{config.epochs}",
                       quiet=quiet)
        losses = []
        for _ in bar:
            support, query, target = sampler.sample(config.batch_size)
            support, query, target = support.to(dev), query.to(dev), target.to(dev)
            if cuda:
                support = support.contiguous(memory_format=memory_format)
                query = query.contiguous(memory_format=memory_format)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=cuda):
                loss = pair_loss(model, support, query, target, radius)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(mse=f"{np.mean(losses[-50:]):.1f}")
            if deadline is not None and _agreed_stop(time.monotonic() > deadline, context):
                stopped = True
                break
        bar.close()
        if stopped and not losses:
            break
        scheduler.step()
        if context.is_main:
            val_mse, val_err = evaluate(net, val_batches, radius, dev)
            record = {"epoch": epoch + 1, "train_mse": float(np.mean(losses)), "val_mse": val_mse,
                      "val_error_mm": val_err, "minutes": (time.monotonic() - start) / 60}
            text = f"validation mse {val_mse:.2f} (mean error {val_err:.2f} mm)"
            if cross_batches:
                cross_mse, cross_err = evaluate(net, cross_batches, radius, dev)
                record.update(same_image_mse=val_mse, same_image_error_mm=val_err, cross_view_mse=cross_mse,
                              cross_view_error_mm=cross_err)
                text = (f"validation same-image mse {val_mse:.2f} ({val_err:.2f} mm), cross-view mse "
                        f"{cross_mse:.2f} ({cross_err:.2f} mm)")
                val_mse, val_err = (val_mse + cross_mse) / 2, (val_err + cross_err) / 2
                record.update(val_mse=val_mse, val_error_mm=val_err)
            history.append(record)
            if not quiet:
                print(f"epoch {epoch + 1}: train mse {np.mean(losses):.2f}, {text}", flush=True)
            if val_mse < best_mse:
                best_mse, best_err = val_mse, val_err
                save_best(epoch + 1, val_mse, val_err)
            save_last(epoch + 1)
        context.barrier()
        if stopped:
            break
    epochs_done = int(history[-1]["epoch"]) if history else first_epoch
    context.close()
    return TrainingResult(best_mse, best_err, epochs_done, stopped, history)


def _agreed_stop(local_stop: bool, context) -> bool:
    """All ranks stop together: rank 0's clock decides (a broadcast of one number under DDP)."""
    if not context.distributed:
        return local_stop
    flag = torch.tensor([1.0 if local_stop else 0.0], device=context.device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item() > 0)


def with_overrides(config: RprTrainingConfig, **overrides: Any) -> RprTrainingConfig:
    """A copy of ``config`` with the given (non-None) fields replaced; ``patch_size`` and ``base_channels``
    go into the Pnet configuration."""
    pnet_fields = {k: overrides.pop(k) for k in ("patch_size", "base_channels", "convs_per_block", "stem_stride")
                   if overrides.get(k) is not None}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    pnet = replace(config.pnet, **pnet_fields) if pnet_fields else config.pnet
    return replace(config, pnet=pnet, **overrides)
