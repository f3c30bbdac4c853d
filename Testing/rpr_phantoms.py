"""Generated 'anatomy' for the RPR tests: a body with blobs at subject-specific positions.

Each subject is the same template anatomy moved (+-8 mm), scaled (+-5 %) and
with its own intensity scale and noise, so an offset regressor trained on some
subjects can be tested on others, and the blob centres are true landmarks.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from landmarkloc.points import ControlPoint

# blob centres (mm, relative to the body centre), radii (mm) and intensities
BLOBS = (
    ((-22.0, -12.0, -8.0), 9.0, 1.0),
    ((20.0, -16.0, 6.0), 7.0, 0.7),
    ((0.0, 18.0, -10.0), 8.0, 0.9),
    ((-10.0, 10.0, 14.0), 6.0, 0.55),
    ((14.0, 14.0, -16.0), 6.0, 0.8),
)
BODY_RADII = (38.0, 34.0, 30.0)


def phantom(seed: int, size=(40, 40, 34), spacing=(2.5, 2.5, 2.5), ndim: int = 3,
            direction=None) -> tuple[sitk.Image, list[ControlPoint], sitk.Image]:
    """(image, blob-centre points in LPS, label map with blob k = label k + 1)."""
    rng = np.random.default_rng(seed)
    size = tuple(size[:ndim])
    spacing = np.asarray(spacing[:ndim], dtype=np.float64)
    shift = rng.uniform(-8, 8, ndim)
    scale = rng.uniform(0.95, 1.05)
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, spacing)], indexing="ij")
    pos = np.stack(grids, axis=-1)  # (i, j, k) order, mm from the grid centre
    rel = (pos - shift) / scale
    body = ((rel / np.asarray(BODY_RADII[:ndim])) ** 2).sum(-1) <= 1.0
    values = np.where(body, 0.3 + 0.1 * rel[..., 0] / BODY_RADII[0], 0.0)
    labels = np.zeros(size, dtype=np.int16)
    centres = []
    for n, (centre, radius, value) in enumerate(BLOBS):
        c = np.asarray(centre[:ndim])
        inside = ((rel - c) ** 2).sum(-1) <= radius**2
        values = np.where(inside, value, values)
        labels[inside] = n + 1
        centres.append(c * scale + shift)
    values = values * rng.uniform(0.8, 1.2) * 1000 + rng.normal(0, 15, size) * body
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(values, tuple(range(ndim))[::-1]),
                                                        dtype=np.float32))
    label_image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(labels, tuple(range(ndim))[::-1])))
    direction = np.eye(ndim) if direction is None else np.asarray(direction, dtype=np.float64)
    # grid centre at the physical origin of the anatomy frame
    origin = -direction @ ((np.asarray(size) - 1) / 2 * spacing)
    for img in (image, label_image):
        img.SetSpacing(tuple(spacing))
        img.SetDirection(tuple(direction.ravel()))
        img.SetOrigin(tuple(origin))
    points = []
    for n, c in enumerate(centres):
        p = np.zeros(3)
        p[:ndim] = direction @ c
        points.append(ControlPoint(f"blob{n + 1}", p))
    return image, points, label_image
