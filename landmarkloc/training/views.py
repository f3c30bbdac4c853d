"""Training views for relative position regression across subjects and appearance.

The paper's pairs come from one image, so a Pnet trained on them may learn the
scanner's appearance rather than anatomy (issue 11: on the MNI152 template the
shipped model's latents barely encoded position). Here a labelled training
volume (image + anatomical label map) is turned into *views*:

* appearance (TorchIO): either the real image or, as in SynthSeg, an image
  synthesised from the label map with a random intensity per label
  (``RandomLabelsToImage``; voxels outside the labels keep the real image: skull,
  scalp), then optionally skull-stripped with the label map (``Mask``), a bias
  field, a lower resolution along one axis, blur, gamma and noise; finally the
  same intensity normalisation as at inference;
* geometry: a random affine map (rotation, per-axis scaling) plus a smooth
  displacement field, drawn per pair and applied when the patches are sampled,
  so that every point's position in the view is known exactly (the inverse is
  solved per point by fixed-point iteration).

A *cross-view pair* takes the support patch from one view and the query patch
from another (its own appearance and deformation) of the same subject; the
target is the offset, in the query view's voxel frame (mm), from the query
centre to the point that corresponds to the support centre, as inference uses
it. A *same-view pair* takes both patches from one view (the paper's pairs,
deformed and re-rendered). Rendering costs about a second per view, so a small
pool of rendered subjects is kept and refreshed one at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from landmarkloc.errors import InputError
from landmarkloc.geometry.intensity import get_preset, normalize
from landmarkloc.geometry.rotations import random_rotation
from landmarkloc.inference.patches import patch_grid, sample_at


@dataclass(frozen=True)
class ViewConfig:
    """How views are rendered and paired (all probabilities per view or per pair)."""

    cross_view_probability: float = 0.5  # pairs from two different views (else both patches from one view)
    synthetic_probability: float = 0.6  # a view synthesised from the label map (else the real image)
    label_mean: tuple[float, float] = (0.05, 1.0)  # random mean intensity per label, U(a, b)
    label_std: tuple[float, float] = (0.0, 0.08)  # random within-label noise, U(a, b)
    skull_strip_probability: float = 0.3  # voxels outside the labels set to 0
    bias_field: float = 0.5  # max polynomial coefficient of RandomBiasField
    bias_probability: float = 0.7
    anisotropy_probability: float = 0.25  # one axis at a lower resolution
    anisotropy_factor: tuple[float, float] = (1.5, 4.0)
    blur_std_mm: tuple[float, float] = (0.0, 1.5)
    blur_probability: float = 0.4
    log_gamma: float = 0.4
    gamma_probability: float = 0.7
    noise_std: tuple[float, float] = (0.0, 0.05)
    noise_probability: float = 0.5
    rotation_deg: float = 15.0  # per axis
    scale: float = 0.12  # per-axis scale factor in [1 - scale, 1 + scale]
    elastic_mm: float = 3.0  # standard deviation of the control-point displacements
    elastic_control_mm: float = 40.0  # control-point spacing of the smooth displacement field
    pool_size: int = 12  # rendered subjects kept (two views each)
    refresh_every: int = 16  # re-render one pool entry every this many batches


@dataclass
class LabelledVolume:
    """A training volume on the model grid: normalised real image and label map, numpy order ``[k, j, i]``."""

    data: torch.Tensor
    labels: torch.Tensor
    spacing: tuple[float, ...]  # mm, ITK order
    body: torch.Tensor  # ITK-order voxel indices where patch centres may lie (body of the real image)
    brain: torch.Tensor  # ITK-order voxel indices inside the labels (centres for skull-stripped views)

    @property
    def ndim(self) -> int:
        return self.data.dim()


def labelled_volume(prepared, labels_on_grid: np.ndarray) -> LabelledVolume:
    """From a :class:`PreparedVolume` and its label map resampled (nearest) onto the same grid."""
    labels = torch.from_numpy(np.ascontiguousarray(labels_on_grid, dtype=np.int16))
    if tuple(labels.shape) != tuple(prepared.data.shape):
        raise InputError(f"label map shape {tuple(labels.shape)} differs from the image {tuple(prepared.data.shape)}")
    brain = torch.nonzero((labels > 0) & prepared.body).flip(-1).contiguous()
    if len(brain) == 0:
        raise InputError("the label map has no labelled voxel inside the body")
    return LabelledVolume(data=prepared.data, labels=labels, spacing=tuple(prepared.geometry.spacing),
                          body=prepared.foreground, brain=brain)


def render(volume: LabelledVolume, config: ViewConfig, generator: torch.Generator,
           intensity: str = "mr") -> tuple[torch.Tensor, bool]:
    """One random appearance of ``volume`` (TorchIO), normalised like inference; and whether it is skull-stripped.

    TorchIO draws its parameters from torch's global generator, which is seeded from ``generator``.
    """
    try:
        import torchio as tio
    except ImportError:
        raise InputError("training on rendered views needs TorchIO: pip install torchio "
                         "(or landmarkloc[train])") from None

    def chance(p: float) -> bool:
        return float(torch.rand(1, generator=generator)) < p

    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    spatial = volume.data[None] if volume.ndim == 3 else volume.data[None, ..., None]
    labels = volume.labels[None] if volume.ndim == 3 else volume.labels[None, ..., None]
    affine = np.diag(list(reversed(volume.spacing)) + ([1.0] if volume.ndim == 2 else []) + [1.0])
    subject = tio.Subject(image=tio.ScalarImage(tensor=spatial.float().clone(), affine=affine),
                          labels=tio.LabelMap(tensor=labels.long(), affine=affine))
    transforms: list = []
    if chance(config.synthetic_probability):
        used = [int(v) for v in torch.unique(volume.labels) if v > 0]
        transforms.append(tio.RandomLabelsToImage(label_key="labels", image_key="image", used_labels=used,
                                                  default_mean=config.label_mean, default_std=config.label_std))
    stripped = chance(config.skull_strip_probability)
    if stripped:
        transforms.append(tio.Mask(masking_method="labels"))
    transforms += [
        tio.RandomBiasField(coefficients=config.bias_field, p=config.bias_probability),
        tio.RandomAnisotropy(axes=tuple(range(volume.ndim)), downsampling=config.anisotropy_factor,
                             p=config.anisotropy_probability),
        tio.RandomBlur(std=config.blur_std_mm, p=config.blur_probability),
        tio.RandomGamma(log_gamma=config.log_gamma, p=config.gamma_probability),
        tio.RandomNoise(std=config.noise_std, p=config.noise_probability),
    ]
    out = tio.Compose(transforms)(subject)["image"].data[0].clamp(min=0)
    out = out if volume.ndim == 3 else out[..., 0]
    array = normalize(out.numpy(), get_preset(intensity))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), stripped


class ViewWarp:
    """A known random deformation: view voxel y (ITK order) -> source voxel ``c + L (y - c) + d(y)``.

    ``L`` is a rotation and per-axis scaling (in mm, expressed in voxels), ``d`` a
    displacement field interpolated (linearly) from a coarse grid of random
    control displacements. :meth:`inverse` solves ``forward(y) = x`` by
    fixed-point iteration (the field is smooth and small, so it contracts).
    """

    def __init__(self, shape_itk: Sequence[int], spacing: Sequence[float], config: ViewConfig | None,
                 generator: torch.Generator) -> None:
        ndim = len(shape_itk)
        self.size = torch.tensor(list(shape_itk), dtype=torch.float64)
        self.centre = (self.size - 1) / 2
        s = torch.tensor(list(spacing), dtype=torch.float64)
        if config is None:  # identity
            self.linear = torch.eye(ndim, dtype=torch.float64)
            self.field = None
            return
        scales = 1 + config.scale * (2 * torch.rand(ndim, generator=generator, dtype=torch.float64) - 1)
        physical = random_rotation(ndim, config.rotation_deg, generator) @ torch.diag(scales)
        self.linear = torch.diag(1 / s) @ physical @ torch.diag(s)
        self.field = None
        if config.elastic_mm > 0:
            extent = (self.size - 1) * s
            control = [max(2, int(math.ceil(float(e) / config.elastic_control_mm)) + 1) for e in extent]
            field = torch.randn((ndim, *reversed(control)), generator=generator, dtype=torch.float64)
            self.field = field * (config.elastic_mm / s).view(-1, *[1] * ndim)  # channel a: voxels along axis a

    def displacement(self, points: torch.Tensor) -> torch.Tensor:
        """``d(y)`` in voxels for ITK-order points ``(N, D)`` (float64)."""
        if self.field is None:
            return torch.zeros_like(points)
        ndim = points.shape[-1]
        grid = (2 * points / (self.size - 1).clamp(min=1) - 1).clamp(-1, 1)
        grid = grid.view(1, *[1] * (ndim - 1), -1, ndim)  # grid_sample wants (x=i, y=j, z=k) last
        out = F.grid_sample(self.field[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(ndim, -1).T

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        points = points.to(torch.float64)
        return self.centre + (points - self.centre) @ self.linear.T + self.displacement(points)

    def inverse(self, points: torch.Tensor, iterations: int = 12) -> torch.Tensor:
        x = points.to(torch.float64)
        inv = torch.linalg.inv(self.linear)
        y = self.centre + (x - self.centre) @ inv.T
        for _ in range(iterations if self.field is not None else 0):
            y = self.centre + (x - self.centre - self.displacement(y)) @ inv.T
        return y


def sample_view(data: torch.Tensor, centres: torch.Tensor, patch_size: tuple[int, ...], warp: ViewWarp) -> torch.Tensor:
    """Patches ``[N, 1, *patch_shape]`` of the view ``data ∘ warp`` centred on view voxels ``centres (N, D)``."""
    offsets = patch_grid(patch_size).to(torch.float64)  # (P, D) ITK order
    points = (centres.to(torch.float64)[:, None, :] + offsets[None]).reshape(-1, len(patch_size))
    source = warp.forward(points).reshape(len(centres), -1, len(patch_size))
    return sample_at(data, source.to(data.dtype), patch_size)


class ViewPairSampler:
    """Draws (support patch, query patch, true offset in mm) batches from rendered views of labelled volumes."""

    def __init__(self, volumes: Sequence[LabelledVolume], patch_size: tuple[int, ...], config: ViewConfig,
                 stage: str, fine_range_mm: float, generator: torch.Generator, intensity: str = "mr") -> None:
        if not volumes:
            raise InputError("no labelled training volumes")
        self.volumes = list(volumes)
        self.patch_size = tuple(patch_size)
        self.config = config
        self.stage = stage
        self.fine_range_mm = fine_range_mm
        self.generator = generator
        self.intensity = intensity
        self.pool: list[tuple[int, list[torch.Tensor], bool]] = []
        self.batches = 0
        while len(self.pool) < min(config.pool_size, max(1, config.pool_size)):
            self.pool.append(self._entry())

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _entry(self) -> tuple[int, list[torch.Tensor], bool]:
        index = self._randint(len(self.volumes))
        views = [render(self.volumes[index], self.config, self.generator, self.intensity) for _ in range(2)]
        return index, [v for v, _ in views], any(s for _, s in views)

    def _centres(self, volume: LabelledVolume, stripped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Two source-voxel centres (ITK order, float64): anywhere in the body, or within the fine range."""
        pool = volume.brain if stripped else volume.body
        x_q = pool[self._randint(len(pool))].to(torch.float64)
        if self.stage == "coarse":
            return pool[self._randint(len(pool))].to(torch.float64), x_q
        spacing = torch.tensor(volume.spacing, dtype=torch.float64)
        r = self.fine_range_mm
        delta = (2 * torch.rand(volume.ndim, generator=self.generator, dtype=torch.float64) - 1) * r
        return x_q + delta / spacing, x_q

    def pair(self, entry, cross: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, views, stripped = entry
        volume = self.volumes[index]
        shape = tuple(reversed(volume.data.shape))
        warp_s = ViewWarp(shape, volume.spacing, self.config, self.generator)
        warp_q = ViewWarp(shape, volume.spacing, self.config, self.generator) if cross else warp_s
        view_s = views[0]
        view_q = views[1] if cross else views[0]
        x_s, x_q = self._centres(volume, stripped)
        c_s = warp_s.inverse(x_s[None])
        c_q = warp_q.inverse(x_q[None])
        target_in_q = warp_q.inverse(x_s[None])  # the support centre's anatomy, seen in the query view
        target = ((target_in_q - c_q)[0] * torch.tensor(volume.spacing, dtype=torch.float64)).to(torch.float32)
        support = sample_view(view_s, c_s, self.patch_size, warp_s)[0]
        query = sample_view(view_q, c_q, self.patch_size, warp_q)[0]
        return support, query, target

    def sample(self, batch_size: int, cross_probability: float | None = None):
        """A batch; one pool entry is re-rendered every ``refresh_every`` batches."""
        p = self.config.cross_view_probability if cross_probability is None else cross_probability
        if self.config.refresh_every > 0 and self.batches and self.batches % self.config.refresh_every == 0:
            self.pool[self.batches // self.config.refresh_every % len(self.pool)] = self._entry()
        self.batches += 1
        supports, queries, targets = [], [], []
        for _ in range(batch_size):
            entry = self.pool[self._randint(len(self.pool))]
            cross = float(torch.rand(1, generator=self.generator)) < p
            s, q, t = self.pair(entry, cross)
            supports.append(s)
            queries.append(q)
            targets.append(t)
        return torch.stack(supports), torch.stack(queries), torch.stack(targets)
