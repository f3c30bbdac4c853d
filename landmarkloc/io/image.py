"""Read and write images with their full physical geometry (SimpleITK).

Every image comes back as a float32 scalar ``SimpleITK.Image`` of dimension 2
or 3 with validated geometry. 2D photographs/X-ray formats do not store a
trustworthy pixel size, so the caller must give one: guessing 1 mm would make
every millimetre we report wrong.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry.frames import ImageGeometry
from ..memory import COPIES_IN_MEMORY, check_fits_in_memory, sizes_text
from . import dicom, nifti
from .atomic import atomic_path
from .completeness import check_data_complete

PLAIN_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_LUMA = np.array([0.299, 0.587, 0.114])
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz",):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def is_plain_2d(path) -> bool:
    """Whether ``path`` is a 2D picture format without a reliable pixel size."""
    return _suffix(Path(path)) in PLAIN_2D_SUFFIXES


def _dicom_stack(folder: Path, series: str = None) -> tuple:
    """(slice geometry, voxel size) of the DICOM series of ``folder`` (or ``series``), header and slice positions
    checked."""
    files = dicom.series_files(folder, series)
    if len(files) < 2:
        raise InputError(f"DICOM series in {folder} has a single slice; a volume is needed")
    size = _check_header(_read_header(Path(files[0])), folder.name, slices=len(files))
    return dicom.stack_geometry(files, folder.name), size


def _read_header(path: Path) -> sitk.ImageFileReader:
    """The file's header only (size, spacing, pixel type): nothing is allocated for the voxels yet."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read {path.name} as an image: {_first_line(exc)}") from None
    return reader


def _check_header(header: sitk.ImageFileReader, name: str, slices: int = 1) -> tuple:
    """The image's size in voxels; refuses what the header already tells is unusable: 4D series, bad spacing,
    too large for memory."""
    size = list(header.GetSize())
    if slices > 1:  # a DICOM series: one file's header, times the number of slices
        size = size[:2] + [slices * (size[2] if len(size) > 2 else 1)]
    dim = len(size)
    if dim == 4 and size[3] > 1:
        raise InputError(f"{name} is a 4D image ({size[3]} volumes of {sizes_text(size[:3])}); "
                         "give one 3D volume (e.g. one time point)")
    if dim not in (2, 3, 4):
        raise InputError(f"{name} is a {dim}D image; only 2D and 3D scalar images are supported")
    spacing = np.asarray(header.GetSpacing(), dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{name} has an invalid voxel spacing {tuple(float(v) for v in spacing)} in its header: "
                         "spacings must be positive")
    pixel_bytes = 8 if "64" in sitk.GetPixelIDValueAsString(header.GetPixelID()) else 4  # float32 copy: >= 4
    voxels = float(np.prod(np.asarray(size, dtype=np.float64)))
    components = max(1, header.GetNumberOfComponents())
    check_fits_in_memory(voxels * components * pixel_bytes * COPIES_IN_MEMORY,
                         f"{name} ({sizes_text(size)} voxels)")
    return tuple(int(v) for v in size)


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "Exception" not in ln and not ln.startswith("/")]
    return (useful or lines or ["unknown error"])[-1][:200]


def _to_grey(image: sitk.Image) -> sitk.Image:
    """RGB(A) -> one grey channel: the channel itself when all are equal, else luminance."""
    n = image.GetNumberOfComponentsPerPixel()
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    rgb = arr[..., :3] if n >= 3 else arr[..., :1]
    if n >= 3 and not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        grey = rgb @ _LUMA.astype(np.float32)
    else:
        grey = rgb[..., 0]
    out = sitk.GetImageFromArray(grey)
    out.CopyInformation(image)
    return out


def check_spacing_applies(paths, spacing) -> None:
    """Refuse a ``spacing`` that would apply to none of ``paths``: it is for pictures without a pixel size and
    never replaces a stored one, so given for volumes only it is a mistake (a header's spacing is kept)."""
    paths = [Path(p) for p in paths]
    if spacing is not None and paths and not any(is_plain_2d(p) for p in paths):
        raise InputError(f"{paths[0].name} stores its own voxel spacing; --spacing is only for 2D pictures (PNG, "
                         "JPEG, BMP, TIFF), which do not")


@contextlib.contextmanager
def without_itk_warnings():
    """ITK prints its warnings (source file, line number, object address) straight to stderr; what they are about
    is checked here and said in one line of our own."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


@without_itk_warnings()
def check_image_file(path, series: str = None) -> tuple:
    """What can be checked without reading the voxels: the file exists, is not empty, its header is
    readable, describes a 2D/3D image with positive spacing and fits in memory, and the file holds all the
    data its header promises (io.completeness). A DICOM folder: its one series (or ``series``, a
    SeriesInstanceUID) and where its slices are (io.dicom). Returns the image's size in voxels (from the
    header)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if path.is_dir():
        return _dicom_stack(path, series)[1]
    if path.stat().st_size == 0:
        raise InputError(f"image file is empty: {path}")
    size = _check_header(_read_header(path), path.name)
    check_data_complete(path)
    header = _nifti_header(path)
    if header is not None:
        nifti.check_not_sheared(path, header)
    return size


def _nifti_header(path: Path):
    return nifti.read_header(path) if _suffix(path) in (".nii", ".nii.gz") else None


@without_itk_warnings()
def read_image(path, spacing=None, allow_single_slice: bool = True, series: str = None) -> sitk.Image:
    """Read an image file or DICOM folder as a float32 scalar image with validated geometry.

    ``spacing`` (a number or one value per axis, in mm) sets the pixel size of
    2D picture formats (PNG, JPEG, BMP, TIFF), which is required for them; other
    formats keep the spacing they store (see :func:`check_spacing_applies`). ``series`` chooses a series of a DICOM
    folder by its SeriesInstanceUID; a series with missing slices, uneven spacing or a gantry
    tilt is resampled onto a regular grid with an :class:`InputWarning` (io.dicom).
    """
    path = Path(path)
    if path.is_dir():
        image = dicom.read_series(_dicom_stack(path, series)[0], path.name)
    else:
        check_image_file(path)
        header = _nifti_header(path)
        if header is not None:
            nifti.check_finite_voxels(path, header)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot read {path.name} as an image: {_first_line(exc)}") from None
        if header is not None:
            nifti.warn_if_forms_disagree(path, header, image)
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dim = 3
    if dim not in (2, 3):
        raise InputError(f"{path.name} is a {dim}D image; only 2D and 3D scalar images are supported")
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        if dim == 3 and image.GetSize()[2] > 1 or ncomp not in (2, 3, 4):
            raise InputError(f"{path.name} has {ncomp} components per voxel (a vector, tensor or 4D series "
                             "stored as vectors); a scalar image is needed")
        image = _to_grey(image)
    if dim == 3 and image.GetSize()[2] == 1 and is_plain_2d(path):
        image = image[:, :, 0]
        dim = 2
    image = sitk.Cast(image, sitk.sitkFloat32)
    if spacing is not None and is_plain_2d(path):
        values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
        if values.size == 1:
            values = np.repeat(values, dim)
        if values.size != dim:
            raise InputError(f"--spacing needs 1 or {dim} values for the {dim}D image {path.name}")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise InputError(f"spacing must be positive, got {tuple(float(v) for v in values)}")
        image.SetSpacing(tuple(float(v) for v in values))
    elif is_plain_2d(path):
        raise InputError(
            f"{path.name} does not store a reliable pixel size; give it in mm, e.g. --spacing 0.1"
        )
    check_image(image, name=path.name, allow_single_slice=allow_single_slice)
    return image


def check_image(image: sitk.Image, name: str = "image", allow_single_slice: bool = True) -> ImageGeometry:
    """Validate geometry and voxel values of an image already in memory (from a file or from Slicer)."""
    try:
        geometry = ImageGeometry.from_image(image)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    size = np.array(geometry.size)
    in_plane = size[:2]
    if np.any(in_plane < 2) or (not allow_single_slice and np.any(size < 2)):
        raise InputError(f"{name} is too small to localize anything (size {sizes_text(size)})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} is not a scalar image")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite voxel values")
    return geometry


def check_not_constant(image: sitk.Image, name: str = "image") -> None:
    """Refuse an image whose voxels all have one value: there is nothing to find in it, only noise to report."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size and float(arr.min()) == float(arr.max()):
        raise InputError(f"{name} is constant (every voxel is {float(arr.flat[0]):g}): there is nothing to localize")


def squeeze_single_slice(image: sitk.Image) -> sitk.Image:
    """A 3D image with one slice (how Slicer holds a 2D picture) -> the 2D image, geometry kept.

    Only valid when the slice's in-plane axes lie in the physical x-y plane, so
    that the 2D coordinates are the first two LPS coordinates of the 3D points.
    """
    if image.GetDimension() == 2:
        return image
    if image.GetSize()[2] != 1:
        raise InputError("a 2D model needs a 2D image or a single-slice volume")
    geometry = ImageGeometry.from_image(image)
    if np.abs(geometry.direction[2, :2]).max() > 1e-6:
        raise InputError("this single-slice volume is not in the x-y plane; it cannot be used as a 2D image")
    out = image[:, :, 0]
    out.SetOrigin(tuple(geometry.origin[:2]))
    out.SetSpacing(tuple(geometry.spacing[:2]))
    out.SetDirection(tuple(geometry.direction[:2, :2].ravel()))
    return out


@without_itk_warnings()
def write_image(image: sitk.Image, path) -> None:
    """Write an image atomically; the format follows the file name's suffix."""
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:
            raise InputError(f"cannot write image {path}: {_first_line(exc)}") from None

