"""Generated images with landmarks at known positions for the FCN tests (no real data)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.io.image import write_image
from landmarkloc.io.markups import write_points
from landmarkloc.points import ControlPoint

# Two landmarks on a soft-tissue background (CT-like values, "ct" window): the centres of a bright
# blob (peak 1400 HU) and of a dark one (peak -1000 HU).
BACKGROUND = -200.0
BLOBS = (("Bright", 1400.0, 2.0), ("Dark", -1000.0, 3.0))


def oblique_flipped_direction(ndim: int) -> np.ndarray:
    """A 30 degree in-plane rotation combined with an axis flip (determinant -1)."""
    t = np.deg2rad(30.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    if ndim == 2:
        return rot @ np.diag([1.0, -1.0])
    out = np.eye(3)
    out[:2, :2] = rot
    return out @ np.diag([-1.0, 1.0, 1.0])


def blob_image(size, spacing, rng, direction=None, margin=6):
    """(image, {name: LPS position (D,)}) with the blobs at random continuous positions."""
    ndim = len(size)
    geometry = ImageGeometry(origin=rng.uniform(-50, 50, ndim), spacing=np.full(ndim, spacing),
                             direction=oblique_flipped_direction(ndim) if direction is None else direction,
                             size=size)
    grid = np.meshgrid(*[np.arange(n) for n in size], indexing="ij")  # ITK order
    arr = BACKGROUND + rng.normal(0.0, 20.0, size)
    points, centres = {}, []
    for name, amplitude, radius in BLOBS:
        centre = rng.uniform(margin, np.array(size) - 1 - margin)
        while any(np.linalg.norm(centre - c) < 12 for c in centres):  # distinct blobs
            centre = rng.uniform(margin, np.array(size) - 1 - margin)
        centres.append(centre)
        arr += (amplitude - BACKGROUND) * np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre)) / (2 * radius ** 2))
        points[name] = geometry.index_to_physical(centre)
    image = geometry.apply_to(sitk.GetImageFromArray(arr.T.astype(np.float32)))
    return image, points


def write_blob_dataset(folder, n, size, spacing, seed):
    """A folder dataset: IMG.nii.gz + IMG.mrk.json per case; returns [(image path, points)]."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n):
        image, points = blob_image(size, spacing, rng)
        path = folder / f"case{i:02d}.nii.gz"
        write_image(image, path)
        write_points(folder / f"case{i:02d}.mrk.json", [ControlPoint(k, p) for k, p in points.items()])
        cases.append((path, points))
    return cases


TINY_GLOBAL = {"stem_channels": 8, "stage_channels": (8, 16), "stage_blocks": (1, 1),
               "pool_before": (True, True), "head_channels": 16}
TINY_LOCAL = {"stage_channels": (8, 16), "head_channels": 16}
