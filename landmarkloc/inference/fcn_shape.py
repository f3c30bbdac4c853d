"""Shape consistency: does a point lie where the other landmarks put it?

The landmarks of one model form a configuration that varies little between
subjects once position, orientation and size are taken out. A point far from
where a robust similarity fit of the mean configuration to the other points
places it is probably wrong, whatever its own network said; most points far off
mean the image is unlike the training images (another contrast, a damaged or
mostly empty scan) even when its intensities looked alike. Both work without
retraining and hold under the shifts that fool the networks themselves.

The same fit gives the head's (or skull's) pose: the rotation from the mean
configuration, kept in the orientation the validation images have relative to
their model grids, to the points found. A pose far from any seen there (a
tilted head) is turned back by localizing again on a grid rotated with it
(``Localizer``), so the networks see the anatomy as they were trained to.

The mean configuration (``ShapeModel``) is fitted by ``landmarkloc calibrate``
on the reference points of the validation images and stored in the model's
metadata under ``shape``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError


def similarity_fit(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> tuple:
    """(scale, rotation, translation) minimizing sum w |s R source + t - target|^2 (Umeyama; proper rotation)."""
    w = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_t = w @ source, w @ target
    a, b = source - mu_s, target - mu_t
    cov = (b * w[:, None]).T @ a
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(len(d))
    sign[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag(sign) @ vt
    var = float(w @ np.sum(a * a, axis=1))
    scale = float(np.sum(d * sign) / var) if var > 0 else 1.0
    return scale, rotation, mu_t - scale * rotation @ mu_s


def robust_fit(points: np.ndarray, mean: np.ndarray, keep: float = 0.6, rounds: int = 3) -> tuple | None:
    """(rotation, residuals): the similarity fit of ``mean`` to the best-fitting ``keep`` share of ``points``
    (trimmed, refitted ``rounds`` times) and each point's distance (in the points' own mm) from where it puts
    it; NaN points give NaN. None when too few points are finite."""
    valid = np.all(np.isfinite(points), axis=1)
    if valid.sum() < max(3, points.shape[1] + 1):
        return None
    p, m = points[valid], mean[valid]
    chosen = np.ones(len(p), dtype=bool)
    for _ in range(rounds):
        scale, rot, shift = similarity_fit(m[chosen], p[chosen])
        residual = np.linalg.norm(m @ (scale * rot).T + shift - p, axis=1)
        chosen = residual <= np.quantile(residual, keep)
    out = np.full(len(points), np.nan)
    out[valid] = residual
    return rot, out


def robust_residuals(points: np.ndarray, mean: np.ndarray) -> np.ndarray:
    fitted = robust_fit(points, mean)
    return np.full(len(points), np.nan) if fitted is None else fitted[1]


def rotation_angle_deg(rotation: np.ndarray) -> float:
    if len(rotation) == 2:
        return float(abs(np.degrees(np.arctan2(rotation[1, 0], rotation[0, 0]))))
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))


def mean_rotation(rotations: list) -> np.ndarray:
    """The proper rotation nearest to the sum of ``rotations`` (their chordal mean)."""
    u, _, vt = np.linalg.svd(np.sum(rotations, axis=0))
    sign = np.ones(len(u))
    sign[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ np.diag(sign) @ vt


@dataclass
class ShapeModel:
    """Mean landmark configuration (Procrustes mean, unit size) and what is usual for its residuals."""

    names: list
    mean: np.ndarray  # (L, D) unit centroid size
    typical_mm: float  # median point residual on the validation references
    image_limit_mm: float  # an image whose median residual exceeds this is unlike the training images
    # ``mean`` is oriented as the references lie on their model grids; a pose further than this from it is
    # turned back (None: no pose known, e.g. an older model)
    pose_limit_deg: float | None = None

    @classmethod
    def fit(cls, names, shapes: list, image_limit_factor: float = 4.0, grid_shapes: list | None = None,
            pose_limit_factor: float = 1.5, min_pose_limit_deg: float = 5.0) -> ShapeModel:
        """Generalized Procrustes mean of ``shapes`` ((L, D) arrays, NaN for missing points).

        ``grid_shapes``: the same shapes in their model grid's axes (mm along the grid directions); the mean
        is then turned to their average pose, and the pose limit is ``pose_limit_factor`` times the largest
        of the 95 % of their angles from it that are smallest (at least ``min_pose_limit_deg``).
        """
        shapes = [np.asarray(s, dtype=np.float64) for s in shapes]
        complete = [s for s in shapes if np.all(np.isfinite(s))]
        if len(complete) < 3:
            raise ValueError("a shape model needs at least 3 images with every landmark")
        mean = _unit(complete[0])
        for _ in range(10):
            aligned = []
            for s in complete:
                scale, rot, shift = similarity_fit(s, mean)
                aligned.append(s @ (scale * rot).T + shift)
            new = _unit(np.mean(aligned, axis=0))
            if np.max(np.abs(new - mean)) < 1e-9:
                break
            mean = new
        residuals = np.concatenate([robust_residuals(s, mean) for s in shapes])
        typical = float(np.nanmedian(residuals))
        pose_limit = None
        if grid_shapes is not None:
            rotations = [fitted[0] for fitted in (robust_fit(np.asarray(g, dtype=np.float64), mean)
                                                  for g in grid_shapes) if fitted is not None]
            mean = mean @ mean_rotation(rotations).T
            angles = [rotation_angle_deg(r) for r in (robust_fit(np.asarray(g, dtype=np.float64), mean)[0]
                                                     for g in grid_shapes)]
            pose_limit = max(min_pose_limit_deg, pose_limit_factor * float(np.percentile(angles, 95)))
        return cls(list(names), mean, typical, image_limit_factor * typical, pose_limit)

    def pose(self, grid_points: np.ndarray) -> np.ndarray | None:
        """The rotation from the mean's orientation to ``grid_points`` (found points in their grid's axes, NaN
        for others) when it exceeds the pose limit; else None (or no pose known, or too few points)."""
        if self.pose_limit_deg is None:
            return None
        fitted = robust_fit(np.asarray(grid_points, dtype=np.float64), self.mean)
        if fitted is None or rotation_angle_deg(fitted[0]) <= self.pose_limit_deg:
            return None
        return fitted[0]

    def residuals(self, points: np.ndarray) -> np.ndarray:
        return robust_residuals(np.asarray(points, dtype=np.float64), self.mean)

    def to_metadata(self) -> dict:
        return {"names": self.names, "mean": np.round(self.mean, 6).tolist(),
                "typical_mm": round(self.typical_mm, 4), "image_limit_mm": round(self.image_limit_mm, 4),
                "pose_limit_deg": None if self.pose_limit_deg is None else round(self.pose_limit_deg, 3)}

    @classmethod
    def from_metadata(cls, meta: dict | None, names) -> ShapeModel | None:
        data = (meta or {}).get("shape")
        if data is None:
            return None
        try:
            pose = data.get("pose_limit_deg")
            model = cls(list(data["names"]), np.asarray(data["mean"], dtype=np.float64), float(data["typical_mm"]),
                        float(data["image_limit_mm"]), None if pose is None else float(pose))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model metadata: malformed shape model ({exc})") from None
        if model.names != list(names) or model.mean.shape[0] != len(names):
            raise ModelError("model metadata: the shape model's landmarks differ from the model's")
        return model


def _unit(shape: np.ndarray) -> np.ndarray:
    centred = shape - shape.mean(axis=0)
    return centred / np.sqrt(np.sum(centred * centred) / len(shape))
