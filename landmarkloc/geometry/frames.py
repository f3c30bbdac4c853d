"""Index <-> physical (LPS mm) mapping, and the one place where LPS meets RAS.

ITK (and therefore this package) works in LPS: x grows to the patient's Left,
y to Posterior, z to Superior. Slicer's world is RAS. A point
p_phys = origin + D @ (spacing * index), with D's columns the directions of the
image axes i, j, k. numpy arrays from SimpleITK are indexed [k, j, i].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

_LPS_RAS = np.array([-1.0, -1.0, 1.0])
ORTHONORMAL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ImageGeometry:
    """The full geometry of a 2D or 3D image grid (ITK order: i, j, k)."""

    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray  # (D, D); column c is the physical direction of index axis c
    size: tuple

    def __post_init__(self):
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(-1))
        d = len(self.origin)
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(d, d))
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        self.validate()

    @property
    def ndim(self) -> int:
        return len(self.origin)

    @classmethod
    def from_image(cls, image: sitk.Image) -> ImageGeometry:
        d = image.GetDimension()
        return cls(
            origin=np.array(image.GetOrigin()),
            spacing=np.array(image.GetSpacing()),
            direction=np.array(image.GetDirection()).reshape(d, d),
            size=image.GetSize(),
        )

    def validate(self) -> None:
        """Refuse geometry that would silently produce wrong millimetres."""
        d = self.ndim
        if d not in (2, 3):
            raise InputError(f"only 2D and 3D images are supported, got {d}D")
        if not (len(self.spacing) == d and len(self.size) == d):
            raise InputError("inconsistent image geometry (origin, spacing and size differ in length)")
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing <= 0):
            raise InputError(f"invalid voxel spacing {self._spacing_text()}: must be finite and positive")
        if np.any(self.spacing > 1e4) or np.any(self.spacing < 1e-4):
            raise InputError(f"implausible voxel spacing {self._spacing_text()} mm (expected 1e-4 to 1e4 mm)")
        if not np.all(np.isfinite(self.origin)):
            raise InputError("image origin is not finite")
        gram = self.direction.T @ self.direction
        if not np.all(np.isfinite(self.direction)) or np.abs(gram - np.eye(d)).max() > ORTHONORMAL_TOLERANCE:
            raise InputError("image direction matrix is not orthonormal (sheared or corrupt header)")

    def _spacing_text(self) -> str:
        return "(" + ", ".join(f"{float(v):g}" for v in self.spacing) + ")"

    def index_to_physical(self, index) -> np.ndarray:
        """Continuous ITK-order index [..., D] -> physical LPS mm [..., D]."""
        idx = np.asarray(index, dtype=np.float64)
        return idx * self.spacing @ self.direction.T + self.origin

    def physical_to_index(self, points) -> np.ndarray:
        """Physical LPS mm [..., D] -> continuous ITK-order index [..., D]."""
        p = np.asarray(points, dtype=np.float64)
        return ((p - self.origin) @ self.direction) / self.spacing

    def contains(self, points, margin: float = 0.5) -> np.ndarray:
        """Whether physical points lie inside the image (voxel centres +- ``margin`` voxels)."""
        idx = self.physical_to_index(points)
        return np.all((idx >= -margin) & (idx <= np.asarray(self.size) - 1 + margin), axis=-1)

    @property
    def extent_mm(self) -> np.ndarray:
        return self.spacing * np.asarray(self.size)

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetOrigin(tuple(self.origin))
        image.SetSpacing(tuple(self.spacing))
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    def to_dict(self) -> dict:
        return {
            "origin": self.origin.tolist(),
            "spacing": self.spacing.tolist(),
            "direction": self.direction.tolist(),
            "size": list(self.size),
        }


def lps_to_ras(points) -> np.ndarray:
    """LPS -> RAS for 3D points [..., 3] (negate x and y). The only LPS/RAS conversion in the core."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError("LPS/RAS conversion needs 3D points; pad 2D points with to_point3 first")
    return p * _LPS_RAS


ras_to_lps = lps_to_ras  # the flip is its own inverse


def lps_to_ras_matrix(matrix) -> np.ndarray:
    """Express a 3x3 matrix of LPS direction columns in RAS (e.g. an ROI orientation)."""
    return np.asarray(matrix, dtype=np.float64) * _LPS_RAS[:, None]


def to_point3(points) -> np.ndarray:
    """Pad 2D points [..., 2] with z = 0 (the plane of a 2D image); 3D points pass through."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] == 3:
        return p
    if p.shape[-1] != 2:
        raise ValueError(f"expected 2D or 3D points, got {p.shape[-1]} coordinates")
    return np.concatenate([p, np.zeros(p.shape[:-1] + (1,))], axis=-1)


def from_point3(points, ndim: int) -> np.ndarray:
    """Keep the first ``ndim`` coordinates of 3D points (inverse of :func:`to_point3`)."""
    return np.asarray(points, dtype=np.float64)[..., :ndim]
