"""The patch-based FCN's target encoding: variants, cell centres, log transform, targets.

This is part of the method (Noothout et al. 2020), shared by training (which
encodes annotated landmarks as targets) and inference (which decodes the
network outputs into votes, :mod:`landmarkloc.inference.fcn_votes`).

Conventions:

* Points are continuous indices of the network input in ITK order (i, j, k);
  tensors are indexed [..., k, j, i]. Displacement channels are in ITK order.
* Output cell ``c`` (ITK order) covers input voxels ``c*P .. c*P + P - 1``;
  its patch centre is the continuous index ``(c + 0.5) * P - 0.5`` (i.e.
  ``(c + 0.5) * P`` measured from the edge of voxel 0).
* Displacement ``d = landmark - patch centre`` (voxels); the regression target
  is ``sign(d) * log10(|d| + 1)`` for the log variants (Noothout et al. 2020,
  and the reference code's ``log``/``loginv`` pair).
* Classification target: 1 only for the cell containing the landmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landmarkloc.errors import ModelError


@dataclass(frozen=True)
class Variant:
    """A training/inference variant of the paper's ablation (Table I)."""

    name: str
    regression: str | None  # "log", "linear" or None (classification only)
    classification: bool


VARIANTS = {
    v.name: v
    for v in (
        Variant("R", "linear", False),
        Variant("R_log", "log", False),
        Variant("C", None, True),
        Variant("R+C", "linear", True),
        Variant("R_log+C", "log", True),
    )
}
DEFAULT_VARIANT = "R_log+C"


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ModelError(f"unknown FCN variant {name!r} (one of {', '.join(VARIANTS)})") from None


def log_transform(d: torch.Tensor) -> torch.Tensor:
    """``sign(d) * log10(|d| + 1)``: near displacements weigh more in the L1 loss."""
    return torch.sign(d) * torch.log10(d.abs() + 1.0)


def inverse_log(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`log_transform`."""
    return torch.sign(y) * (torch.pow(10.0, y.abs()) - 1.0)


def cell_centres(grid_shape, patch_size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Patch centres (continuous ITK indices), shape (D, *grid_shape).

    ``grid_shape`` is in array order (k, j, i); component ``a`` of the result is
    ITK axis ``a``.
    """
    ndim = len(grid_shape)
    axes = [(torch.arange(n, dtype=dtype, device=device) + 0.5) * patch_size - 0.5 for n in grid_shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # array order
    return torch.stack([mesh[ndim - 1 - a] for a in range(ndim)])


def fcn_targets(landmarks: torch.Tensor, grid_shape, patch_size: int, variant: Variant):
    """Targets for one image (or sub-image).

    ``landmarks`` (L, D): continuous ITK indices in the network input; a row of
    NaN marks a landmark that is not annotated in this image (masked out of the
    loss). A landmark outside the input still has valid displacements (every
    cell points at it) but no positive cell: the network learns "not here".

    Returns ``class_target (L, *grid)``, ``regression_target (L, D, *grid)``
    and ``annotated (L,)`` (bool).
    """
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    n, ndim = landmarks.shape
    annotated = torch.isfinite(landmarks).all(dim=1)
    safe = torch.where(annotated[:, None], landmarks, torch.zeros_like(landmarks))
    centres = cell_centres(grid_shape, patch_size)  # (D, *grid)
    disp = safe.reshape(n, ndim, *([1] * ndim)) - centres[None]
    if variant.regression == "log":
        disp = log_transform(disp)
    class_target = torch.zeros((n, *grid_shape), dtype=torch.float32)
    cells = torch.floor((safe + 0.5) / patch_size).long()  # ITK order
    sizes = torch.tensor(list(grid_shape)[::-1])
    inside = annotated & (cells >= 0).all(dim=1) & (cells < sizes).all(dim=1)
    for lm in torch.nonzero(inside).flatten().tolist():
        class_target[(lm, *cells[lm].flip(0).tolist())] = 1.0
    return class_target, disp, annotated
