"""Training samples for the FCN: random crops (global) and landmark sub-images (local).

Cases are already resampled to the model spacing and intensity-normalized; a
case is a numpy array (array order [k, j, i]) plus landmarks as continuous ITK
indices (i, j, k). Crops are taken through one affine map per sample

    source_index = centre_src + M (output_index - centre_out),
    M = S^-1 R Z S   (S = diag(spacing), R small rotation, Z isotropic scale),

so geometric augmentation rotates and scales in physical space (also for
anisotropic voxels) and the landmarks follow exactly by the inverse map.
No flips: they would swap left and right landmarks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from landmarkloc.geometry.rotations import rotation_matrix


@dataclass
class AugmentConfig:
    """Random augmentation that keeps landmarks correct.

    The appearance terms (bias field, noise, blur, lower resolution) are TorchIO
    transforms on the global crops, as clinical scans differ from a research
    cohort; ``outside_view`` is the chance that a global crop reaches beyond the
    image (zeros there), as a wider field of view shows empty space.
    """

    rotation_deg: float = 10.0  # maximum rotation about each rotation axis
    scale: float = 0.1  # isotropic scale factor in [1 - scale, 1 + scale]
    intensity_scale: float = 0.1  # multiply by [1 - s, 1 + s]
    intensity_shift: float = 0.1  # add [-s, s]
    gamma: float = 0.2  # x ** exp(U(-g, g)) on the non-negative part
    bias_field: float = 0.0  # TorchIO RandomBiasField coefficients (0: off)
    noise_std: float = 0.0  # TorchIO RandomNoise, at most this standard deviation (normalized intensities)
    blur_mm: float = 0.0  # TorchIO RandomBlur, at most this standard deviation in mm
    anisotropy: float = 0.0  # chance of TorchIO RandomAnisotropy (one axis at 1.5-3x the voxel size)
    outside_view: float = 0.0  # chance that a global crop's centre may lie anywhere in the image
    enabled: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def appearance(self) -> bool:
        return bool(self.bias_field or self.noise_std or self.blur_mm or self.anisotropy)


# Named augmentation settings (train-fcn --augment NAME): the default, and what clinics produce (issue 24:
# tilted heads, other sizes, coil profiles, noise, thicker slices, empty space around the anatomy).
AUGMENT_PRESETS = {
    "default": AugmentConfig(),
    "clinical": AugmentConfig(rotation_deg=30.0, scale=0.15, intensity_scale=0.15, intensity_shift=0.1, gamma=0.3,
                              bias_field=0.5, noise_std=0.03, blur_mm=1.0, anisotropy=0.25, outside_view=0.3),
    # the appearance of clinical scans with the default geometry: for models whose Localizer turns fields of
    # view and poses back (foreground crop, pose from the shape model), which leave appearance to training
    "appearance": AugmentConfig(intensity_scale=0.15, intensity_shift=0.1, gamma=0.3, bias_field=0.5,
                                noise_std=0.03, blur_mm=1.0, anisotropy=0.25),
    # the same, stronger: uncorrected coil profiles of surface coils reach a factor of 3-4 across a head, and
    # of 0.5-1.5 across one local sub-image (which sees the intensity scale, not the field)
    "appearance-strong": AugmentConfig(intensity_scale=0.5, intensity_shift=0.1, gamma=0.4, bias_field=0.8,
                                       noise_std=0.05, blur_mm=1.5, anisotropy=0.3),
    # radiographs from other machines and positionings: head rotation and magnification, exposure and
    # contrast (gamma, uneven exposure as a smooth field), noise and blur, a picture that does not show it all
    "radiograph": AugmentConfig(rotation_deg=15.0, scale=0.15, intensity_scale=0.2, intensity_shift=0.1, gamma=0.4,
                                bias_field=0.3, noise_std=0.03, blur_mm=1.0, outside_view=0.2),
}


@dataclass
class PreparedCase:
    """One training image on the model grid."""

    name: str
    array: np.ndarray  # float32, array order, intensity-normalized
    spacing: np.ndarray  # (D,) ITK order, mm
    landmarks: np.ndarray  # (L, D) continuous ITK indices; NaN rows = not annotated
    geometry: object = None  # ImageGeometry of the grid (to map indices between a case's grids)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def size(self) -> np.ndarray:
        return np.array(self.array.shape[::-1], dtype=np.float64)


def _rotation(ndim: int, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """A random rotation, angles up to ``max_deg`` about each axis, from a numpy generator (the crops' draws)."""
    if max_deg <= 0:
        return np.eye(ndim)
    rot = np.eye(ndim)
    for axis, degrees in enumerate(rng.uniform(-max_deg, max_deg, size=1 if ndim == 2 else 3)):
        rot = rot @ rotation_matrix(ndim, float(degrees), axis)
    return rot


def random_affine(ndim: int, spacing, augment: AugmentConfig | None, rng) -> np.ndarray:
    """The index-space matrix M of one sample (identity without augmentation)."""
    if augment is None or not augment.enabled:
        return np.eye(ndim)
    s = np.diag(np.asarray(spacing, dtype=np.float64))
    zoom = rng.uniform(1 - augment.scale, 1 + augment.scale)
    return np.linalg.inv(s) @ _rotation(ndim, augment.rotation_deg, rng) @ (zoom * s)


def sample_affine(array: np.ndarray, matrix: np.ndarray, centre_src: np.ndarray, out_size) -> torch.Tensor:
    """Resample ``array`` on an output grid of ``out_size`` (ITK order), linear, zero outside."""
    ndim = array.ndim
    out_size = [int(s) for s in out_size]
    centre_out = (np.asarray(out_size, dtype=np.float64) - 1) / 2
    axes = [torch.arange(n, dtype=torch.float64) - centre_out[a] for a, n in enumerate(out_size)]
    mesh = torch.meshgrid(*axes[::-1], indexing="ij")  # array order
    offsets = torch.stack([mesh[ndim - 1 - a] for a in range(ndim)], dim=-1)  # (..., D) ITK order
    src = offsets @ torch.as_tensor(matrix, dtype=torch.float64).T + torch.as_tensor(centre_src)
    size = torch.tensor(array.shape[::-1], dtype=torch.float64)
    norm = 2 * src / (size - 1).clamp_min(1) - 1  # align_corners=True convention
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.grid_sample(image, norm[None].float(), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0]


def map_points(points: np.ndarray, matrix: np.ndarray, centre_src: np.ndarray, out_size) -> np.ndarray:
    """Source continuous indices -> output-grid continuous indices (inverse of the affine map)."""
    centre_out = (np.asarray(out_size, dtype=np.float64) - 1) / 2
    return (points - centre_src) @ np.linalg.inv(matrix).T + centre_out


def augment_appearance(x: torch.Tensor, spacing, augment: AugmentConfig, rng) -> torch.Tensor:
    """TorchIO's bias field, blur, lower resolution and noise on one crop (array order, 2D or 3D), each drawn
    from ``rng`` (TorchIO draws from torch's generator, seeded here)."""
    import torchio as tio

    torch.manual_seed(int(rng.integers(2**31)))
    volume = x if x.ndim == 3 else x[..., None]  # TorchIO wants (C, W, H, D); a 2D crop is one slice thick
    ndim = x.ndim
    sp = tuple(float(v) for v in np.asarray(spacing)[::-1]) + ((1.0,) if ndim == 2 else ())
    transforms = []
    if augment.bias_field:
        transforms.append(tio.RandomBiasField(coefficients=augment.bias_field, order=3, p=0.5))
    if augment.blur_mm:
        transforms.append(tio.RandomBlur(std=(0.0, augment.blur_mm), p=0.3))
    if augment.anisotropy:
        transforms.append(tio.RandomAnisotropy(axes=tuple(range(ndim)), downsampling=(1.5, 3.0),
                                               p=augment.anisotropy))
    if augment.noise_std:
        transforms.append(tio.RandomNoise(std=(0.0, augment.noise_std), p=0.5))
    image = tio.ScalarImage(tensor=volume[None].float(), affine=np.diag(sp + (1.0,)))
    out = tio.Compose(transforms)(image).data[0]
    return out if ndim == 3 else out[..., 0]


def augment_intensity(x: torch.Tensor, augment: AugmentConfig | None, rng) -> torch.Tensor:
    if augment is None or not augment.enabled:
        return x
    gamma = math.exp(rng.uniform(-augment.gamma, augment.gamma))
    x = torch.where(x > 0, x.clamp_min(0) ** gamma, x)
    x = x * rng.uniform(1 - augment.intensity_scale, 1 + augment.intensity_scale)
    return x + rng.uniform(-augment.intensity_shift, augment.intensity_shift)


def _snap(centre_src: np.ndarray, out_size, matrix: np.ndarray) -> np.ndarray:
    """Without rotation/scale, move the crop to whole voxels so no interpolation blurs it."""
    if not np.allclose(matrix, np.eye(len(centre_src))):
        return centre_src
    centre_out = (np.asarray(out_size, dtype=np.float64) - 1) / 2
    return np.round(centre_src - centre_out) + centre_out


def global_crop(case: PreparedCase, crop_size, augment: AugmentConfig | None, rng):
    """A random crop of ``crop_size`` (ITK order) and the landmarks in its index grid.

    Where the image is larger than the crop, the crop lies inside the image;
    where it is smaller, the image lies inside the (zero-padded) crop.
    """
    crop = np.asarray(crop_size, dtype=np.float64)
    half = (crop - 1) / 2
    lo = np.minimum(half, case.size - 1 - half)
    hi = np.maximum(half, case.size - 1 - half)
    if augment is not None and augment.enabled and rng.random() < augment.outside_view:
        lo, hi = np.zeros_like(lo), case.size - 1  # the crop may reach beyond the image: empty space
    centre_src = rng.uniform(lo, hi)
    matrix = random_affine(case.ndim, case.spacing, augment, rng)
    centre_src = _snap(centre_src, crop, matrix)
    image = sample_affine(case.array, matrix, centre_src, crop)
    if augment is not None and augment.enabled and augment.appearance:
        image = augment_appearance(image, case.spacing, augment, rng)
    image = augment_intensity(image, augment, rng)
    return image[None], map_points(case.landmarks, matrix, centre_src, crop)


def local_subimages(case: PreparedCase, sub_size: int, augment: AugmentConfig | None, rng):
    """One sub-image per landmark that contains it at a random position (as in the paper).

    Returns images (L, *sub) and each landmark's position (L, D) in its own
    sub-image (NaN where not annotated).
    """
    ndim, n = case.ndim, len(case.landmarks)
    out = np.full(ndim, float(sub_size))
    centre_out = (out - 1) / 2
    images, points = [], []
    for lm in case.landmarks:
        matrix = random_affine(ndim, case.spacing, augment, rng)
        if np.all(np.isfinite(lm)):
            target = rng.uniform(0, sub_size - 1, size=ndim)  # where the landmark will lie
            centre_src = lm - matrix @ (target - centre_out)
        else:
            centre_src = rng.uniform(0, case.size - 1)
        centre_src = _snap(centre_src, out, matrix)
        images.append(augment_intensity(sample_affine(case.array, matrix, centre_src, out), augment, rng))
        points.append(map_points(lm[None], matrix, centre_src, out)[0])
    return torch.stack(images) if n else torch.zeros((0, *[sub_size] * ndim)), np.array(points)
