"""Distribution shifts: an image changed the way clinical images differ from a training set, its anatomy kept.

Each shift keeps every physical position where it was (a new grid over the same
content, or a change of intensities only), so the reference points of the
original image stay exact: a wider or off-centre field of view, a tilted grid,
another voxel size, a bias field, a skull-stripped or cut-off volume, an
inverted contrast. Used to measure robustness (``models/recipes``), to fit the
calibration on images unlike the clean validation ones (``landmarkloc calibrate
--shifts``) and in tests. One code path for 2D and 3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .rotations import rotation_matrix  # noqa: F401  (also imported from here by recipes and tests)


def grid_of(image: sitk.Image) -> tuple:
    """(origin, spacing, direction matrix, size) of ``image`` as numpy arrays."""
    d = image.GetDimension()
    return (np.array(image.GetOrigin()), np.array(image.GetSpacing()),
            np.array(image.GetDirection()).reshape(d, d), np.array(image.GetSize()))


def resample_onto(image: sitk.Image, origin, spacing, direction, size, label: bool = False,
                  fill: float = 0.0) -> sitk.Image:
    """``image`` on another grid (same physical content; ``fill`` outside it)."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, [int(v) for v in size], sitk.Transform(image.GetDimension(), sitk.sitkIdentity),
                         interpolator, tuple(float(v) for v in origin), tuple(float(v) for v in spacing),
                         tuple(float(v) for v in np.asarray(direction).ravel()), float(fill), image.GetPixelID())


def centre_of(image: sitk.Image) -> np.ndarray:
    origin, spacing, direction, size = grid_of(image)
    return origin + direction @ (spacing * (size - 1) / 2.0)


def pad(image: sitk.Image, mm: float, label: bool = False) -> sitk.Image:
    """Zero-padded by ``mm`` on every side (a wider field of view of nothing)."""
    origin, spacing, direction, size = grid_of(image)
    voxels = np.ceil(mm / spacing).astype(int)
    return resample_onto(image, origin - direction @ (voxels * spacing), spacing, direction, size + 2 * voxels,
                         label)


def field_of_view(image: sitk.Image, fov_mm: float, offset: float, rng: np.random.Generator,
                  label: bool = False) -> sitk.Image:
    """The image inside a cubic field of view of ``fov_mm`` (same spacing and axes), moved off its centre.

    ``offset`` in [0, 1]: 0 centres the image, 1 pushes it into a random corner
    (as far as the field of view allows; an image larger than it is cut).
    """
    origin, spacing, direction, size = grid_of(image)
    new_size = np.maximum(np.round(fov_mm / spacing).astype(int), 1)
    room = np.maximum(new_size - size, 0) * spacing / 2.0  # how far the image can move along each axis
    sign = rng.choice([-1.0, 1.0], size=len(size))
    shift = offset * room * sign
    new_centre = centre_of(image) - direction @ shift
    new_origin = new_centre - direction @ (spacing * (new_size - 1) / 2.0)
    return resample_onto(image, new_origin, spacing, direction, new_size, label)


def tilt(image: sitk.Image, degrees: float, axis: int = 0, label: bool = False) -> sitk.Image:
    """The same content on a grid turned by ``degrees`` about the image centre (3D: about image axis ``axis``):
    the anatomy turns relative to the image axes, what the networks see; corners beyond the old grid are 0."""
    origin, spacing, direction, size = grid_of(image)
    centre = centre_of(image)
    new_direction = direction @ rotation_matrix(len(size), degrees, axis)
    new_origin = centre - new_direction @ (spacing * (size - 1) / 2.0)
    return resample_onto(image, new_origin, spacing, new_direction, size, label)


def respace(image: sitk.Image, spacing_mm, label: bool = False) -> sitk.Image:
    """Resampled to ``spacing_mm`` (one value or one per axis) over the same field of view (voxel edges kept)."""
    origin, spacing, direction, size = grid_of(image)
    new_spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), spacing.shape)
    new_size = np.maximum(np.round(size * spacing / new_spacing).astype(int), 1)
    new_origin = origin + direction @ ((new_spacing - spacing) / 2.0)
    return resample_onto(image, new_origin, new_spacing, direction, new_size, label)


def bias_field(image: sitk.Image, coefficients: float, seed: int) -> sitk.Image:
    """Multiplied by a smooth field (TorchIO's RandomBiasField, order 3), as an uncorrected MR coil profile."""
    import torch

    try:
        import torchio as tio
    except ImportError:
        raise InputError("the bias-field shift needs TorchIO: pip install 'landmarkloc[train]'") from None

    array = sitk.GetArrayFromImage(image).astype(np.float32)
    volume = array if array.ndim == 3 else array[None]
    torch.manual_seed(seed)
    field = tio.RandomBiasField(coefficients=coefficients, order=3)(torch.ones((1,) + volume.shape)).numpy()[0]
    out = sitk.GetImageFromArray((volume * field).reshape(array.shape))
    out.CopyInformation(image)
    return out


def masked(image: sitk.Image, mask: sitk.Image, dilate_voxels: int = 2) -> sitk.Image:
    """Voxels outside ``mask`` (dilated) set to 0: a skull-stripped brain, a masked radiograph."""
    m = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if dilate_voxels:
        m = sitk.BinaryDilate(m, [int(dilate_voxels)] * image.GetDimension())
    return sitk.Mask(image, m)


def cut_off(image: sitk.Image, fraction: float, physical_axis: int, upper: bool = True) -> sitk.Image:
    """The ``fraction`` of the field of view at the upper (``upper``) or lower end of LPS axis ``physical_axis``
    removed, along the image axis closest to it (a scan that does not reach the top of the head)."""
    direction = np.array(image.GetDirection()).reshape(image.GetDimension(), -1)
    axis = int(np.argmax(np.abs(direction[physical_axis])))
    n = image.GetSize()[axis]
    cut = int(round(fraction * n))
    towards_upper = direction[physical_axis, axis] > 0
    lo, hi = (0, n - cut) if towards_upper == upper else (cut, n)
    index = [slice(None)] * image.GetDimension()
    index[axis] = slice(lo, hi)
    return image[tuple(index)]


def inverted(image: sitk.Image) -> sitk.Image:
    """Intensities turned upside down (max - value): another contrast, a T2-like or a negative radiograph."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(float(array.max()) - array)
    out.CopyInformation(image)
    return out


@dataclass(frozen=True)
class Shift:
    """One named shift with its settings; ``apply(image, mask, seed)`` (mask: for skull stripping)."""

    name: str
    description: str
    kind: str
    amount: float = 0.0
    offset: float = 0.0
    axis: int = 0
    ndim: int = 3

    def apply(self, image: sitk.Image, mask: sitk.Image | None = None, seed: int = 0) -> sitk.Image:
        rng = np.random.default_rng(seed)
        if self.kind == "pad":
            return pad(image, self.amount)
        if self.kind == "fov":
            return field_of_view(image, self.amount, self.offset, rng)
        if self.kind == "tilt":
            return tilt(image, self.amount * rng.choice([-1.0, 1.0]), self.axis)
        if self.kind == "respace":
            return respace(image, self.amount)
        if self.kind == "scale":  # resampled by 1 +- ``amount`` (another detector pixel size, given truly)
            return respace(image, np.array(image.GetSpacing()) * (1.0 + self.amount * rng.uniform(-1.0, 1.0)))
        if self.kind == "bias":
            return bias_field(image, self.amount, seed)
        if self.kind == "mask":
            if mask is None:
                raise InputError(f"the {self.name} shift needs a mask")
            return masked(image, mask)
        if self.kind == "cut":  # axis -1: a side drawn at random
            if self.axis >= 0:
                return cut_off(image, self.amount, self.axis)
            return cut_off(image, self.amount, int(rng.integers(image.GetDimension())), bool(rng.integers(2)))
        if self.kind == "invert":
            return inverted(image)
        raise InputError(f"unknown shift kind {self.kind!r}")


# The shifts of issue 24's targets, by name. Brain (3D, LPS: axis 2 is superior); cephalograms (2D).
SHIFTS = {s.name: s for s in (
    Shift("pad80", "zero-padded 80 mm on every side", "pad", 80.0),
    Shift("fov400", "off-centre in a 400 mm field of view", "fov", 400.0, offset=0.6),
    Shift("corner600", "in a corner of a 600 mm field of view", "fov", 600.0, offset=1.0),
    Shift("tilt30", "tilted 30 degrees (about the left-right axis)", "tilt", 30.0, axis=0),
    Shift("tilt30ap", "tilted 30 degrees (about the anterior-posterior axis)", "tilt", 30.0, axis=1),
    Shift("iso1mm", "resampled to 1 mm", "respace", 1.0),
    Shift("bias", "a strong bias field (TorchIO coefficients 0.8)", "bias", 0.8),
    Shift("stripped", "skull-stripped", "mask"),
    Shift("top25", "top 25 % of the field of view cut off", "cut", 0.25, axis=2),
    Shift("inverted", "inverted contrast", "invert"),
    Shift("ceph_rot10", "rotated up to 10 degrees", "tilt", 10.0, ndim=2),
    Shift("ceph_scale10", "resampled by 0.9-1.1 (another pixel size, given truly)", "scale", 0.1, ndim=2),
    Shift("ceph_crop20", "20 % of the picture cut off (a side drawn at random)", "cut", 0.2, axis=-1, ndim=2),
)}
BRAIN_SHIFTS = ("pad80", "fov400", "corner600", "tilt30", "iso1mm", "bias", "stripped", "top25")
CEPH_SHIFTS = ("ceph_rot10", "ceph_scale10", "ceph_crop20")


def get_shift(name: str) -> Shift:
    try:
        return SHIFTS[name]
    except KeyError:
        raise InputError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}") from None
