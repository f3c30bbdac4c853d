"""Resampling, cropping and padding that keep the physical geometry exact."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from ..memory import check_fits_in_memory, sizes_text
from .frames import ImageGeometry

# Bytes per voxel of the model grid while a network runs on it: the resampled and normalized float32
# copies plus the first layers' activations (an estimate, used to refuse what cannot fit).
MODEL_GRID_BYTES_PER_VOXEL = 32.0
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def spacing_vector(spacing, ndim: int) -> np.ndarray:
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    return np.repeat(s, ndim) if s.size == 1 else s


def resampled_geometry(geometry: ImageGeometry, spacing) -> ImageGeometry:
    """The grid with the new spacing that covers the same physical extent (voxel edges aligned)."""
    new_spacing = spacing_vector(spacing, geometry.ndim)
    size = np.maximum(1, np.round(geometry.extent_mm / new_spacing)).astype(int)
    # The first voxel's outer edge stays where it was: shift the centre by half the change.
    origin = geometry.origin + geometry.direction @ ((new_spacing - geometry.spacing) / 2.0)
    return ImageGeometry(origin=origin, spacing=new_spacing, direction=geometry.direction, size=tuple(size))


def canonical_axes(direction: np.ndarray) -> tuple:
    """(order, flips) that bring a direction matrix's axes to the nearest LPS axes: ``order[m]`` is the image
    axis that runs closest to physical axis m, ``flips[m]`` whether it then runs against it."""
    ndim = len(direction)
    order = max(itertools.permutations(range(ndim)),
                key=lambda perm: sum(abs(direction[m, perm[m]]) for m in range(ndim)))
    flips = [bool(direction[m, order[m]] < 0) for m in range(ndim)]
    return [int(a) for a in order], flips


def canonical_direction(direction: np.ndarray) -> np.ndarray:
    """The direction matrix :func:`canonical_orientation` gives an image with ``direction`` (no voxels moved)."""
    order, flips = canonical_axes(np.asarray(direction, dtype=np.float64))
    return np.asarray(direction, dtype=np.float64)[:, order] * np.where(flips, -1.0, 1.0)


def canonical_orientation(image: sitk.Image) -> sitk.Image:
    """Permute and flip the image axes to the nearest LPS axes (no interpolation, positions unchanged).

    Networks are trained and run on such grids, so they always see anatomy in
    the same orientation whatever the file's axis order (sagittal IXI scans,
    RAS-stored NIfTI); an oblique scan keeps its small residual rotation in the
    direction matrix, so physical positions stay exact.
    """
    ndim = image.GetDimension()
    order, flips = canonical_axes(np.array(image.GetDirection()).reshape(ndim, ndim))
    if order != list(range(ndim)):
        image = sitk.PermuteAxes(image, order)
    if any(flips):
        image = sitk.Flip(image, flips)
    return image


def to_model_grid(image: sitk.Image, spacing, interpolator: str = "linear") -> sitk.Image:
    """What a network sees: canonical axis order, then the model's spacing.

    A grid too large for memory (a huge field of view, or a model spacing far
    finer than the image) is refused with its size before it is allocated.
    """
    target = resampled_geometry(ImageGeometry.from_image(image), spacing)
    check_fits_in_memory(float(np.prod(np.asarray(target.size, dtype=np.float64))) * MODEL_GRID_BYTES_PER_VOXEL,
                         f"the image on the model grid ({sizes_text(target.size)} voxels of "
                         f"{', '.join(f'{s:g}' for s in target.spacing)} mm)")
    return resample_to_spacing(canonical_orientation(image), spacing, interpolator)


def resample_to_grid(image: sitk.Image, geometry: ImageGeometry, interpolator: str = "linear",
                     default_value: float = 0.0) -> sitk.Image:
    """Resample ``image`` onto an arbitrary grid (physical space is the common frame)."""
    f = sitk.ResampleImageFilter()
    f.SetOutputOrigin(tuple(geometry.origin))
    f.SetOutputSpacing(tuple(geometry.spacing))
    f.SetOutputDirection(tuple(geometry.direction.ravel()))
    f.SetSize([int(s) for s in geometry.size])
    f.SetInterpolator(_INTERPOLATORS[interpolator])
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(image.GetPixelID())
    return f.Execute(image)


def resample_to_spacing(image: sitk.Image, spacing, interpolator: str = "linear",
                        default_value: float = 0.0) -> sitk.Image:
    """Resample to ``spacing`` mm (linear for images, 'nearest' for label maps), same extent and axes."""
    geometry = ImageGeometry.from_image(image)
    target = resampled_geometry(geometry, spacing)
    if np.allclose(target.spacing, geometry.spacing) and target.size == geometry.size:
        return image
    return resample_to_grid(image, target, interpolator, default_value)


def crop_or_pad(image: sitk.Image, start, size, pad_value: float = 0.0) -> sitk.Image:
    """The region [start, start + size) in ITK index order; parts outside the image are padded.

    The result's origin is the physical position of index ``start``, so every
    voxel keeps its physical position.
    """
    geometry = ImageGeometry.from_image(image)
    start = np.asarray(start, dtype=int)
    size = np.asarray(size, dtype=int)
    arr = sitk.GetArrayViewFromImage(image)
    out = np.full(tuple(size[::-1]), pad_value, dtype=arr.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, np.asarray(geometry.size))
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        src = tuple(slice(lo, hi) for lo, hi in zip(src_lo[::-1], src_hi[::-1]))
        dst = tuple(slice(lo, hi) for lo, hi in zip(dst_lo[::-1], dst_hi[::-1]))
        out[dst] = arr[src]
    result = sitk.GetImageFromArray(out)
    cropped = ImageGeometry(origin=geometry.index_to_physical(start), spacing=geometry.spacing,
                            direction=geometry.direction, size=tuple(size))
    return cropped.apply_to(result)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The value that best splits ``values`` into two classes (Otsu: largest between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mass = np.cumsum(hist * centres)
    below, above = weight, total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * below / total - mass) ** 2 / (below * above)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


FOREGROUND_STEP = 2  # the object is found on every 2nd voxel along each axis (8x fewer in 3D); the margin covers it
FOREGROUND_SLICE_SHARE = 0.01  # slices with fewer object voxels than this share of the fullest one are empty
FOREGROUND_KEEP_SHARE = 0.8  # an axis whose box (with the margin) spans this share of the image is not cut


def _main_run(profile: np.ndarray) -> tuple:
    """[first, last] of the contiguous run of non-empty slices around the fullest one."""
    full = profile > FOREGROUND_SLICE_SHARE * profile.max()
    peak = int(np.argmax(profile))
    lo = peak
    while lo > 0 and full[lo - 1]:
        lo -= 1
    hi = peak
    while hi < len(full) - 1 and full[hi + 1]:
        hi += 1
    return lo, hi


def foreground_box(image: sitk.Image, margin_mm: float) -> tuple:
    """(start, size) in ITK index order of the bright object (voxels above the Otsu threshold, the contiguous
    run of non-empty slices around the fullest along each axis; specks of noise elsewhere do not count)
    grown by ``margin_mm`` and kept inside the image, along the axes where it spans less than
    ``FOREGROUND_KEEP_SHARE`` of the image: the head in a wide field of view.

    The whole image when nothing stands out (a constant image).
    """
    geometry = ImageGeometry.from_image(image)
    full = (np.zeros(geometry.ndim, dtype=int), np.asarray(geometry.size, dtype=int))
    step = FOREGROUND_STEP
    coarse = sitk.GetArrayViewFromImage(image)[(slice(None, None, step),) * geometry.ndim]
    if coarse.size == 0 or float(coarse.min()) == float(coarse.max()):
        return full
    mask = coarse > otsu_threshold(coarse)
    lo, hi = [], []
    for axis in range(geometry.ndim):  # array axis order [k, j, i]; ITK order is the reverse
        first, last = _main_run(mask.sum(axis=tuple(a for a in range(geometry.ndim) if a != axis)))
        lo.append(first * step)
        hi.append((last + 1) * step)
    lo, hi = np.array(lo[::-1]), np.array(hi[::-1])
    grow = np.ceil(margin_mm / geometry.spacing).astype(int)
    size = np.asarray(geometry.size)
    start = np.maximum(lo - grow, 0)
    stop = np.minimum(hi + grow, size)
    # an axis the object nearly fills keeps its whole extent: a field of view like the training images' stays
    # exactly as it is (and so do its intensity percentiles); only much wider ones are cut
    keep = (stop - start) >= FOREGROUND_KEEP_SHARE * size
    start, stop = np.where(keep, 0, start), np.where(keep, size, stop)
    return start, stop - start


def crop_to_foreground(image: sitk.Image, margin_mm: float) -> sitk.Image:
    """``image`` cut to :func:`foreground_box` (positions kept): the field of view a network was trained on,
    whatever empty space a scan adds around the anatomy."""
    start, size = foreground_box(image, margin_mm)
    if np.array_equal(size, image.GetSize()):
        return image
    return crop_or_pad(image, start, size)
