"""Projection network (Pnet) of relative position regression (Lei et al. 2021).

Pnet maps an image patch to a D-dimensional latent vector (D = 2 or 3, the
image dimension) so that ``r * tanh(Pnet(x_s) - Pnet(x_q))`` is the physical
offset in mm from the query patch to the support patch, along the image axes.

Architecture as in the reference implementation (LWHYC/RPR-Loc, ``Pnet_2``):
an optional strided stem, then five residual blocks (three conv-norm-ReLU layers plus a 1x1 skip, instance
norm, ReLU) with channels ``(2b, 2b, 4b, 8b, 4b)`` and a max-pool after each
of the first three, then fully connected layers ``8b -> 4b -> D`` on the
flattened features (flattening keeps the spatial layout, which carries the
position information). Unlike the reference, ReLUs separate the fully
connected layers: without them the three layers collapse to one linear map.
The same code builds the 2D and the 3D network.

The stem (``stem_stride`` 2: one strided 3^D convolution, norm, ReLU) is not in
the reference: it halves every axis before the first block, so the blocks run on
1/8 of the voxels (3D) and a patch costs about a quarter of the FLOPs (0.16
instead of 0.67 GFLOP for 32^3, b = 8), which one-shot inference needs on a CPU.
``stem_stride`` 1 (no stem) is the reference layout and that of older model files.

Patches are tensors ``[N, 1, *spatial]`` in numpy axis order (``[k, j, i]``
for 3D); :attr:`PnetConfig.patch_size` is in ITK order ``(i, j[, k])``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from landmarkloc.errors import ModelError
from landmarkloc.networks.layers import Conv2d, Conv3d

POOLINGS = 3  # three max-pools: every patch axis must be a multiple of 8


@dataclass(frozen=True)
class PnetConfig:
    """Shape of a Pnet.

    ``patch_size`` voxels along the image axes in ITK order; ``base_channels``
    b gives block widths (2b, 2b, 4b, 8b, 4b); ``convs_per_block`` 3 as in the
    reference ("TribleResConv"), fewer for a faster network.
    """

    ndim: int = 3
    patch_size: tuple[int, ...] = (48, 48, 48)
    base_channels: int = 16
    convs_per_block: int = 3
    stem_stride: int = 1  # 2: a strided convolution halves the patch before the blocks (4x fewer FLOPs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(s) for s in self.patch_size))
        if self.ndim not in (2, 3):
            raise ModelError(f"Pnet supports 2D and 3D images, not ndim={self.ndim}")
        if len(self.patch_size) != self.ndim:
            raise ModelError(f"Pnet patch_size {self.patch_size} does not have {self.ndim} entries")
        if self.stem_stride not in (1, 2):
            raise ModelError(f"Pnet stem_stride must be 1 or 2, not {self.stem_stride}")
        step = self.stem_stride * 2**POOLINGS
        if any(s < 2 * step or s % step for s in self.patch_size):
            raise ModelError(f"Pnet patch_size {self.patch_size}: every axis must be a multiple of {step}, "
                             f">= {2 * step}")
        if self.base_channels < 1 or self.convs_per_block < 1:
            raise ModelError("Pnet base_channels and convs_per_block must be positive")

    @property
    def channels(self) -> tuple[int, ...]:
        b = self.base_channels
        return (2 * b, 2 * b, 4 * b, 8 * b, 4 * b)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """Patch shape in numpy axis order (the tensor's spatial shape)."""
        return tuple(reversed(self.patch_size))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PnetConfig:
        try:
            return cls(
                ndim=int(d["ndim"]),
                patch_size=tuple(d["patch_size"]),
                base_channels=int(d["base_channels"]),
                convs_per_block=int(d["convs_per_block"]),
                stem_stride=int(d.get("stem_stride", 1)),  # older model files have no stem
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"invalid Pnet configuration in model metadata: {exc}") from exc


def _layers(ndim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if ndim == 3:
        return Conv3d, nn.InstanceNorm3d, nn.MaxPool3d
    return Conv2d, nn.InstanceNorm2d, nn.MaxPool2d


class ResidualBlock(nn.Module):
    """``convs`` x (3^D conv, instance norm, ReLU) plus a 1x1 skip, then norm and ReLU."""

    def __init__(self, ndim: int, c_in: int, c_out: int, convs: int) -> None:
        super().__init__()
        conv, norm, _ = _layers(ndim)
        layers: list[nn.Module] = []
        for n in range(convs):
            layers += [conv(c_in if n == 0 else c_out, c_out, 3, padding=1), norm(c_out), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.skip = conv(c_in, c_out, 1)
        self.out = nn.Sequential(norm(c_out), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.skip(x))


class Pnet(nn.Module):
    """Patch -> latent position vector (``[N, 1, *patch_shape]`` -> ``[N, ndim]``)."""

    def __init__(self, config: PnetConfig) -> None:
        super().__init__()
        self.config = config
        conv, norm, pool = _layers(config.ndim)
        widths = config.channels
        blocks: list[nn.Module] = []
        c_in = 1
        if config.stem_stride > 1:
            blocks += [conv(1, widths[0], 3, stride=config.stem_stride, padding=1), norm(widths[0]),
                       nn.ReLU(inplace=True)]
            c_in = widths[0]
        for n, c_out in enumerate(widths):
            blocks.append(ResidualBlock(config.ndim, c_in, c_out, config.convs_per_block))
            if n < POOLINGS:
                blocks.append(pool(2, 2))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        cells = 1
        for s in config.patch_size:
            cells *= s // (config.stem_stride * 2**POOLINGS)
        b = config.base_channels
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cells * widths[-1], 8 * b),
            nn.ReLU(inplace=True),
            nn.Linear(8 * b, 4 * b),
            nn.ReLU(inplace=True),
            nn.Linear(4 * b, config.ndim),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        expected = (1, *self.config.patch_shape)
        if tuple(patches.shape[1:]) != expected:
            raise ModelError(f"Pnet expects patches [N, {', '.join(map(str, expected))}], got {tuple(patches.shape)}")
        return self.head(self.features(patches))


def relative_offset(latent_support: torch.Tensor, latent_query: torch.Tensor, radius: float) -> torch.Tensor:
    """Predicted offset in mm from query to support patch (paper eq. 2), along the image axes."""
    return radius * torch.tanh(latent_support - latent_query)


@dataclass
class RprModel:
    """A trained Pnet with what is needed to use it: stage, spacing, radius, intensity preset."""

    net: Pnet
    stage: str  # "coarse" | "fine"
    spacing: tuple[float, ...]  # mm, ITK order
    radius_mm: float
    intensity: dict
    foreground_threshold: float
    sha256: str
    metadata: dict

    @property
    def ndim(self) -> int:
        return self.net.config.ndim

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.net.config.patch_size


def rpr_metadata(config: PnetConfig, stage: str, spacing, radius_mm: float, intensity: dict,
                 foreground_threshold: float, **extra: Any) -> dict:
    """Model-file metadata of an RPR model (the JSON beside the weights)."""
    return {
        "kind": "rpr",
        "stage": stage,
        "ndim": config.ndim,
        "pnet": config.to_dict(),
        "spacing": [float(s) for s in spacing],
        "radius_mm": float(radius_mm),
        "intensity": intensity,
        "foreground_threshold": float(foreground_threshold),
        **extra,
    }


def load_rpr_model(path, device: torch.device | str = "cpu") -> RprModel:
    """Load an RPR model file (``.safetensors`` + ``.json``), checked by :mod:`landmarkloc.io.modelfile`."""
    from landmarkloc.io.modelfile import load_model

    tensors, meta = load_model(path, kind="rpr")
    try:
        config = PnetConfig.from_dict(meta["pnet"])
        stage = str(meta["stage"])
        spacing = tuple(float(s) for s in meta["spacing"])
        radius = float(meta["radius_mm"])
        intensity = dict(meta["intensity"])
        threshold = float(meta.get("foreground_threshold", 0.1))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: incomplete RPR model metadata ({exc})") from None
    if stage not in ("coarse", "fine") or len(spacing) != config.ndim:
        raise ModelError(f"{path}: inconsistent RPR model metadata (stage {stage!r}, spacing {spacing})")
    net = Pnet(config)
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the Pnet described in its metadata: {exc}") from None
    net.eval().to(device)
    return RprModel(net=net, stage=stage, spacing=spacing, radius_mm=radius, intensity=intensity,
                    foreground_threshold=threshold, sha256=meta["sha256"], metadata=meta)
