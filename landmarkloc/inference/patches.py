"""Volumes prepared for patch networks, and fast batched patch extraction.

Relative position regression compares patches of *different* images, so every
image is first brought to the same voxel frame: its axes permuted and flipped
to the nearest LPS axes (``geometry.resample.to_model_grid``, no interpolation, so a
flipped or axis-swapped file gives the same voxels as a normally stored one),
resampled to the model spacing and normalised with the intensity preset. Offsets
predicted along these canonical axes become physical LPS displacements through
the grid's full direction matrix (an oblique scan keeps its obliqueness).

Patches are cut from a zero-padded copy by flat indexing (inference) or sampled
with ``grid_sample`` under a random rotation/scaling (training augmentation).
Both use the same convention: the patch of centre voxel ``c`` covers voxels
``c - p // 2 ... c + p - p // 2 - 1`` along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.geometry.intensity import get_preset, normalize
from landmarkloc.geometry.resample import to_model_grid
from landmarkloc.io.image import check_not_constant


@dataclass
class PreparedVolume:
    """A normalised image on a canonical grid at the model spacing, ready for patch cutting.

    ``data``: numpy axis order ``[k, j, i]``; ``geometry``: that grid in LPS;
    ``body``: boolean mask in numpy order; ``foreground``: its ITK-order voxel
    indices ``(M, D)`` (where patch centres may be drawn).
    """

    data: torch.Tensor
    geometry: ImageGeometry
    body: torch.Tensor
    foreground: torch.Tensor
    _padded: dict = field(default_factory=dict, repr=False)

    @property
    def ndim(self) -> int:
        return self.geometry.ndim

    @property
    def device(self) -> torch.device:
        return self.data.device

    def padded(self, patch_size: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
        """Zero-padded data (cached per patch size) and the pad width per ITK axis."""
        key = tuple(patch_size)
        if key not in self._padded:
            pad = np.asarray(patch_size, dtype=np.int64)  # generous: centres are clamped to the image
            torch_pad: list[int] = []
            for p in pad:  # F.pad wants the last axis (i) first
                torch_pad += [int(p), int(p)]
            self._padded[key] = (F.pad(self.data, torch_pad), pad)
        return self._padded[key]

    def body_at(self, voxel: torch.Tensor) -> torch.Tensor:
        """Whether the ITK-order voxel index lies in the body."""
        return self.body[tuple(voxel.flip(-1).tolist())]

    def to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Physical points -> nearest voxel (ITK order, clamped to the grid)."""
        idx = np.rint(self.geometry.physical_to_index(np.asarray(points_lps, dtype=np.float64)))
        return np.clip(idx, 0, np.asarray(self.geometry.size) - 1).astype(np.int64)

    def to_physical(self, index: np.ndarray) -> np.ndarray:
        return self.geometry.index_to_physical(np.asarray(index, dtype=np.float64))

    def offsets_to_physical(self, offsets_mm: np.ndarray) -> np.ndarray:
        """Offsets in mm along the grid axes (ITK order) -> LPS displacement vectors."""
        return np.asarray(offsets_mm, dtype=np.float64) @ self.geometry.direction.T


def body_mask(data: torch.Tensor, threshold: float) -> torch.Tensor:
    """Voxels whose 3^D neighbourhood mean exceeds ``threshold``: body, not air or stray noise."""
    pool = F.avg_pool3d if data.dim() == 3 else F.avg_pool2d
    smooth = pool(data[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return smooth > threshold


def prepare_volume(image: sitk.Image, spacing, preset, foreground_threshold: float = 0.1,
                   device: torch.device | str = "cpu", name: str = "image") -> PreparedVolume:
    """Reorient, resample to ``spacing`` mm, normalise with ``preset`` and find the body voxels."""
    check_not_constant(image, name)
    image = to_model_grid(image, spacing)
    geometry = ImageGeometry.from_image(image)
    array = normalize(sitk.GetArrayViewFromImage(image), get_preset(preset))
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
    body = body_mask(data, foreground_threshold)
    foreground = torch.nonzero(body).flip(-1).contiguous()  # numpy order -> ITK order
    if len(foreground) == 0:
        raise InputError(f"{name} has no voxel above the foreground threshold {foreground_threshold} "
                         "(empty or all air?)")
    return PreparedVolume(data=data, geometry=geometry, body=body, foreground=foreground)


def _patch_offsets(patch_size: tuple[int, ...]) -> list[np.ndarray]:
    return [np.arange(p, dtype=np.int64) - p // 2 for p in patch_size]


def extract_patches(volume: PreparedVolume, centres: np.ndarray, patch_size: tuple[int, ...]) -> torch.Tensor:
    """Patches ``[N, 1, *reversed(patch_size)]`` centred on ITK-order voxel indices ``centres (N, D)``.

    One gather on the padded volume, no Python loop over patches.
    """
    padded, pad = volume.padded(patch_size)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, volume.ndim) + pad
    shape = padded.shape  # numpy order
    strides = np.cumprod((1,) + tuple(reversed(shape[1:])))  # stride of ITK axis a
    flat = torch.zeros((len(centres),) + tuple(reversed(patch_size)), dtype=torch.int64)
    n = len(patch_size)
    for axis, offsets in enumerate(_patch_offsets(patch_size)):
        view = [len(centres)] + [1] * n
        view[n - axis] = len(offsets)  # ITK axis a is tensor dim n - a (after the batch dim)
        pos = centres[:, axis][:, None] + offsets[None, :]
        flat += torch.from_numpy(pos * int(strides[axis])).reshape(view)
    patches = padded.reshape(-1)[flat.to(padded.device)]
    return patches.unsqueeze(1)


def patch_grid(patch_size: tuple[int, ...]) -> torch.Tensor:
    """Voxel offsets ``(P, D)`` (ITK order, ITK axis 0 slowest) of a patch around its centre."""
    offsets = torch.meshgrid(*[torch.from_numpy(o) for o in _patch_offsets(patch_size)], indexing="ij")
    return torch.stack(offsets, dim=-1).reshape(-1, len(patch_size))


def sample_at(data: torch.Tensor, positions: torch.Tensor, patch_size: tuple[int, ...]) -> torch.Tensor:
    """Patches ``[N, 1, *reversed(patch_size)]`` sampled (linearly) at continuous ITK-order voxel positions
    ``(N, P, D)`` laid out as :func:`patch_grid`; outside the volume reads as 0, like the padding at inference."""
    ndim = data.dim()
    size = torch.tensor(list(reversed(data.shape)), dtype=data.dtype, device=data.device)
    normalised = 2.0 * positions / (size - 1).clamp(min=1) - 1.0
    # grid built with ITK axis 0 slowest -> reshape to (i, j, k), then permute to (k, j, i)
    normalised = normalised.reshape((len(positions),) + tuple(patch_size) + (ndim,))
    normalised = normalised.permute(0, *range(ndim, 0, -1), ndim + 1)
    return F.grid_sample(data[None, None].expand(len(positions), 1, *data.shape), normalised,
                         mode="bilinear", padding_mode="zeros", align_corners=True)


def sample_patches(data: torch.Tensor, centres: torch.Tensor, patch_size: tuple[int, ...],
                   matrices: torch.Tensor) -> torch.Tensor:
    """Patches by trilinear/bilinear sampling around continuous ITK-order ``centres (N, D)``.

    ``matrices (N, D, D)`` map patch voxel offsets to volume voxel offsets (a
    rotation/scaling in voxel units; identity reproduces :func:`extract_patches`).
    Outside the volume reads as 0, like the zero padding at inference.
    """
    grid = patch_grid(patch_size).to(data)
    pos = centres[:, None, :] + grid[None] @ matrices.transpose(1, 2)  # (N, P, D)
    return sample_at(data, pos, patch_size)
