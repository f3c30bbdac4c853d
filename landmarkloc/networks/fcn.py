"""Patch-based fully convolutional networks of Noothout et al. (2020).

One code path for 2D and 3D: the layer types are picked by ``ndim``. A network
maps an image (B, C, *spatial) to, per landmark and per output cell,

* a classification logit (is the landmark inside this cell's patch?) and
* a displacement vector from the patch centre to the landmark (ITK axis order
  i, j, k; log-transformed or plain voxels depending on the training variant).

The total stride ``patch_size`` = stem stride x 2^(number of pooling layers):
output cell ``c`` covers input voxels ``[c * P, (c + 1) * P)`` along each axis.

The global network (ResNet34-like: stem 7/2, [3, 4, 6, 3] residual pairs of
32/64/128/256 channels, average pooling before the first two stages) and the
local network (two residual stages of 32 and 64 channels with pooling between
them) come from the same :class:`FCNConfig`. The local networks of all
landmarks are evaluated as *one* grouped network (``groups = num_landmarks``):
mathematically L independent networks, but one forward pass for all sub-images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from landmarkloc.errors import ModelError
from landmarkloc.networks.layers import Conv2d, Conv3d


@dataclass(frozen=True)
class FCNConfig:
    """Architecture of a global network or of a bank of local networks."""

    ndim: int = 3
    num_landmarks: int = 1
    in_channels: int = 1
    # Strided stem convolution; ``stem_channels = 0`` means no stem (local networks).
    stem_channels: int = 16
    stem_kernel: int = 7
    stem_stride: int = 2
    stage_channels: tuple[int, ...] = (32, 64, 128, 256)
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    # Average pooling (size and stride 2) before each stage.
    pool_before: tuple[bool, ...] = (True, True, False, False)
    head_channels: int = 256
    head_layers: int = 2
    batch_norm: bool = True
    # True: one independent network per landmark, run as grouped convolutions.
    per_landmark: bool = False

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ModelError(f"FCN supports 2D and 3D images, not ndim={self.ndim}")
        n = len(self.stage_channels)
        if len(self.stage_blocks) != n or len(self.pool_before) != n or n == 0:
            raise ModelError("stage_channels, stage_blocks and pool_before must have the same length")
        if self.num_landmarks < 1:
            raise ModelError("an FCN needs at least one landmark")

    @property
    def patch_size(self) -> int:
        """Input voxels per output cell along each axis (the total stride 2^n)."""
        stride = self.stem_stride if self.stem_channels else 1
        return stride * 2 ** sum(bool(p) for p in self.pool_before)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("stage_channels", "stage_blocks", "pool_before"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FCNConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"unknown FCN architecture fields: {sorted(unknown)}")
        d = dict(d)
        for key in ("stage_channels", "stage_blocks", "pool_before"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _layers(ndim: int):
    if ndim == 2:
        return Conv2d, nn.BatchNorm2d, nn.AvgPool2d
    return Conv3d, nn.BatchNorm3d, nn.AvgPool3d


class _ResidualPair(nn.Module):
    """Two 3^D convolutions with batch norm, an identity (or 1x1) shortcut, ReLU."""

    def __init__(self, ndim: int, cin: int, cout: int, groups: int, batch_norm: bool):
        super().__init__()
        conv, norm, _ = _layers(ndim)
        self.conv1 = conv(cin, cout, 3, padding=1, groups=groups, bias=not batch_norm)
        self.norm1 = norm(cout) if batch_norm else nn.Identity()
        self.conv2 = conv(cout, cout, 3, padding=1, groups=groups, bias=not batch_norm)
        self.norm2 = norm(cout) if batch_norm else nn.Identity()
        self.shortcut = nn.Identity() if cin == cout else conv(cin, cout, 1, groups=groups)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _Head(nn.Module):
    """``head_layers`` 1x1 convolutions with ReLU, then the linear 1x1 output layer."""

    def __init__(self, ndim: int, cin: int, hidden: int, layers: int, cout: int, groups: int):
        super().__init__()
        conv, _, _ = _layers(ndim)
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [conv(cin, hidden, 1, groups=groups), nn.ReLU(inplace=True)]
            cin = hidden
        mods.append(conv(cin, cout, 1, groups=groups))
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x)


class FCN(nn.Module):
    """Classification + displacement-regression FCN (global, or a per-landmark local bank).

    ``forward(x)`` takes (B, in_channels, *spatial) for a shared network, or
    (B, num_landmarks * in_channels, *spatial) for a per-landmark bank (channel
    group l is landmark l's sub-image), with spatial sizes a multiple of
    ``patch_size``. It returns ``(class_logits (B, L, *grid),
    displacement (B, L, ndim, *grid))`` with ``grid = spatial / patch_size``.
    """

    def __init__(self, config: FCNConfig):
        super().__init__()
        self.config = config
        c = config
        g = c.num_landmarks if c.per_landmark else 1
        conv, norm, pool = _layers(c.ndim)
        layers: list[nn.Module] = []
        channels = c.in_channels
        if c.stem_channels:
            layers += [
                conv(channels * g, c.stem_channels * g, c.stem_kernel, stride=c.stem_stride,
                     padding=c.stem_kernel // 2, groups=g, bias=not c.batch_norm),
                norm(c.stem_channels * g) if c.batch_norm else nn.Identity(),
                nn.ReLU(inplace=True),
            ]
            channels = c.stem_channels
        for width, blocks, pool_first in zip(c.stage_channels, c.stage_blocks, c.pool_before):
            if pool_first:
                layers.append(pool(2))
            for _ in range(blocks):
                layers.append(_ResidualPair(c.ndim, channels * g, width * g, g, c.batch_norm))
                channels = width
        self.features = nn.Sequential(*layers)
        out_classes = c.num_landmarks if not c.per_landmark else 1
        self.classification = _Head(c.ndim, channels * g, c.head_channels * g, c.head_layers,
                                    out_classes * g, g)
        self.regression = _Head(c.ndim, channels * g, c.head_channels * g, c.head_layers,
                                out_classes * c.ndim * g, g)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        logits = self.classification(feats)
        disp = self.regression(feats)
        b, grid = disp.shape[0], disp.shape[2:]
        return logits, disp.reshape(b, self.config.num_landmarks, self.config.ndim, *grid)


def global_config(preset: str, ndim: int, num_landmarks: int, **overrides) -> FCNConfig:
    """Global network presets: ``paper`` (as published) and ``compact`` (CPU-trainable)."""
    if preset == "paper":
        base = FCNConfig(ndim=ndim, num_landmarks=num_landmarks)
    elif preset == "compact":
        base = FCNConfig(ndim=ndim, num_landmarks=num_landmarks, stem_channels=8,
                         stage_channels=(16, 32, 32, 64), stage_blocks=(1, 1, 1, 1),
                         pool_before=(True, True, False, False), head_channels=64)
    else:
        raise ModelError(f"unknown FCN preset {preset!r} (use 'paper' or 'compact')")
    return FCNConfig.from_dict({**base.to_dict(), **overrides})


def local_config(preset: str, ndim: int, num_landmarks: int, **overrides) -> FCNConfig:
    """Local network presets; the bank holds one independent network per landmark."""
    if preset == "paper":
        base = FCNConfig(ndim=ndim, num_landmarks=num_landmarks, stem_channels=0,
                         stage_channels=(32, 64), stage_blocks=(1, 1), pool_before=(False, True),
                         head_channels=64, per_landmark=True)
    elif preset == "compact":
        base = FCNConfig(ndim=ndim, num_landmarks=num_landmarks, stem_channels=0,
                         stage_channels=(16, 32), stage_blocks=(1, 1), pool_before=(False, True),
                         head_channels=32, per_landmark=True)
    else:
        raise ModelError(f"unknown FCN preset {preset!r} (use 'paper' or 'compact')")
    return FCNConfig.from_dict({**base.to_dict(), **overrides})



def bank_members(bank: FCN, num_landmarks: int) -> int:
    """Networks per landmark in a per-landmark bank (an ensemble when > 1)."""
    return bank.config.num_landmarks // num_landmarks


class GlobalToLocal(nn.Module):
    """The global network, the bank of local networks and an optional fine bank, saved together.

    The local bank may hold several members per landmark (an ensemble: ``local_members``
    independently trained local networks each): its ``num_landmarks`` is then
    members x landmarks, row ``m * L + l`` being member ``m`` of landmark ``l``,
    still one grouped forward pass. Their disagreement is an uncertainty signal.
    The fine bank (beyond the paper) refines the local estimate once more on a
    finer grid, with smaller sub-images.
    """

    def __init__(self, global_cfg: FCNConfig, local_cfg: FCNConfig | None = None,
                 fine_cfg: FCNConfig | None = None):
        super().__init__()
        for cfg in (local_cfg, fine_cfg):
            if cfg is not None and (cfg.ndim != global_cfg.ndim or cfg.num_landmarks % global_cfg.num_landmarks
                                    or not cfg.per_landmark):
                raise ModelError("the local networks must be a per-landmark bank (one or more members per "
                                 "landmark) for the global network's landmarks")
        if fine_cfg is not None and local_cfg is None:
            raise ModelError("a fine stage needs a local stage before it")
        self.global_net = FCN(global_cfg)
        self.local_net = FCN(local_cfg) if local_cfg is not None else None
        self.fine_net = FCN(fine_cfg) if fine_cfg is not None else None

    @property
    def local_members(self) -> int:
        """Local networks per landmark (0 without a local stage)."""
        return 0 if self.local_net is None else bank_members(self.local_net, self.global_net.config.num_landmarks)

    def forward(self, global_x: torch.Tensor | None, local_x: torch.Tensor | None = None,
                fine_x: torch.Tensor | None = None):
        """(global, local, fine) outputs of the inputs given (None for the others)."""
        out_global = self.global_net(global_x) if global_x is not None else None
        out_local = self.local_net(local_x) if local_x is not None and self.local_net is not None else None
        out_fine = self.fine_net(fine_x) if fine_x is not None and self.fine_net is not None else None
        return out_global, out_local, out_fine


def stack_banks(state_dicts: list) -> dict:
    """The state dict of one local bank whose members are the given banks, in order.

    Every per-landmark layer is grouped, with group ``g``'s channels at
    ``[g * C, (g + 1) * C)``, so banks of the same architecture stack along the
    channel axis of every tensor: member ``m`` of the result is bank ``m``. Lets
    ensemble members be trained in separate processes (or one be an existing
    model's local stage) and shipped as one bank, run in one grouped pass.
    """
    if not state_dicts:
        raise ModelError("no local banks to stack")
    keys = list(state_dicts[0])
    if any(list(sd) != keys for sd in state_dicts[1:]):
        raise ModelError("the local banks to stack have different architectures")
    out = {}
    for key in keys:
        tensors = [sd[key] for sd in state_dicts]
        if tensors[0].dim() == 0:  # batch-norm step counters
            out[key] = tensors[0].clone()
        else:
            out[key] = torch.cat(tensors, dim=0)
    return out
