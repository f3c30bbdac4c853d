"""Rotation matrices in physical (LPS) space: a fixed rotation about one image axis (the tilt shift, tests) and a
random one with bounded angles (the training augmentations of ``training/rpr.py`` and ``training/views.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported only by random_rotation: the shifts that use rotation_matrix need numpy only
    import torch


def rotation_matrix(ndim: int, degrees: float, axis: int = 0) -> np.ndarray:
    """A rotation by ``degrees`` (3D: about image axis ``axis``; 2D: in the plane)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    if ndim == 2:
        return np.array([[c, -s], [s, c]])
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def random_rotation(ndim: int, max_deg: float, generator: torch.Generator) -> torch.Tensor:
    """A random rotation matrix with angles up to ``max_deg`` about each axis (float64).

    3D: one angle per axis, uniform in [-max_deg, max_deg], composed as ``R_0 R_1 R_2``; 2D: one angle.
    """
    import torch

    degrees = (torch.rand(3 if ndim == 3 else 1, generator=generator, dtype=torch.float64) * 2 - 1) * max_deg
    rot = np.eye(ndim)
    for axis, d in enumerate(degrees.tolist()):
        rot = rot @ rotation_matrix(ndim, d, axis)
    return torch.from_numpy(rot)
