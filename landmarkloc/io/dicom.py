"""DICOM series: choose the series, check where its slices are, regularize an irregular stack.

ITK stacks a series' slices at the distance of the first to the last divided
by their number, along the slice normal: a missing slice, uneven spacing or a
gantry tilt (slice positions not along the normal) then gives a volume whose
voxels are not where the scanner put them (ITK only prints a warning). We read
every slice's position (ImagePositionPatient, ImageOrientationPatient, header
only) and, like Slicer's acquisition geometry regularization, resample such a
stack onto a regular grid (the in-plane axes, the slice normal, the median
slice distance) with linear interpolation, with a one-line warning. What
cannot be a single volume (slices sharing a position, other orientations,
positions off a line) is refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputWarning
from .labelmap import distinct_labels

TOLERANCE_MM = 0.01  # positions and distances closer than this are equal
RELATIVE_TOLERANCE = 0.01  # slice distances within 1 % of the median are regular
TILT_TOLERANCE = 1e-3  # in-plane shift per mm along the normal (0.06 degrees)
LISTED_SERIES = 10


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _header(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM file {Path(path).name}: {str(exc).strip().splitlines()[-1][:200]}") \
            from None
    return reader


def series_files(folder: Path, series_uid: str = None) -> list:
    """The files of the folder's one series, or of ``series_uid``; several series without a choice are listed."""
    reader = sitk.ImageSeriesReader()
    uids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"{folder} is a folder without a DICOM series (give an image file or a DICOM folder)")
    files = {uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}
    if series_uid:
        if series_uid not in files:
            raise InputError(f"{folder} holds no DICOM series {series_uid}; it holds: {_listing(files)}")
        return files[series_uid]
    if len(uids) > 1:
        raise InputError(f"{folder} holds {len(uids)} DICOM series; choose one with --series UID: {_listing(files)}")
    return files[uids[0]]


def _listing(files: dict) -> str:
    items = []
    for uid, names in sorted(files.items(), key=lambda item: -len(item[1]))[:LISTED_SERIES]:
        description = _tag(_header(names[0]), "0008|103e")
        slices = f"{len(names)} slice{'s' if len(names) != 1 else ''}"
        items.append(f"{uid} ({slices}{', ' + description if description else ''})")
    more = f", and {len(files) - LISTED_SERIES} more" if len(files) > LISTED_SERIES else ""
    return "; ".join(items) + more


@dataclass
class StackGeometry:
    """Where a series' slices are: files sorted along the normal, their positions and what is irregular."""

    files: list
    origins: np.ndarray  # (N, 3) LPS position of each slice's first voxel, sorted along the normal
    direction: np.ndarray  # 3x3: columns = row axis, column axis, slice normal
    distances: np.ndarray  # (N,) position along the normal
    spacing: float  # median distance between neighbouring slices
    shift_per_mm: np.ndarray  # in-plane shift of the slice origin per mm along the normal (gantry tilt)
    problems: list  # what is irregular, in words; empty: ITK reads the series right

    @property
    def tilt_degrees(self) -> float:
        return float(np.degrees(np.arctan(np.linalg.norm(self.shift_per_mm))))


def stack_geometry(files: list, name: str) -> StackGeometry:
    """Each slice's position and orientation from its header; refuses stacks that are not one volume."""
    headers = [_header(f) for f in files]
    if not all(h.HasMetaDataKey("0020|0032") for h in headers):  # no positions: ITK's order and spacing stand
        return StackGeometry(list(files), np.zeros((len(files), 3)), np.eye(3), np.arange(len(files), dtype=float),
                             1.0, np.zeros(3), [])
    directions = np.array([np.reshape(h.GetDirection(), (3, 3)) for h in headers])
    if np.abs(directions - directions[0]).max() > 1e-4:
        raise InputError(f"the DICOM series in {name} mixes slice orientations; it is not one volume")
    direction = directions[0]
    normal = direction[:, 2]
    origins = np.array([h.GetOrigin() for h in headers], dtype=np.float64)
    distances = origins @ normal
    order = np.argsort(distances, kind="stable")
    origins, distances = origins[order], distances[order]
    steps = np.diff(distances)
    if np.any(steps < TOLERANCE_MM):
        shared = int(np.sum(steps < TOLERANCE_MM))
        raise InputError(f"the DICOM series in {name} has {shared} slice(s) at the position of another (several "
                         "volumes, echoes or time points in one series?); export one volume per series")
    spacing = float(np.median(steps))
    in_plane = origins - distances[:, None] * normal[None]
    fit, residual = _line_fit(distances, in_plane)
    if residual > max(TOLERANCE_MM, RELATIVE_TOLERANCE * spacing):
        raise InputError(f"the slice positions of the DICOM series in {name} do not lie on a line "
                         f"({residual:.2g} mm off); it is not one volume")
    shift = fit[1] if np.linalg.norm(fit[1]) > TILT_TOLERANCE else np.zeros(3)
    problems = []
    uneven = np.abs(steps - spacing) > max(TOLERANCE_MM, RELATIVE_TOLERANCE * spacing)
    if np.any(uneven):
        multiples = np.round(steps / spacing)
        gaps = uneven & (multiples >= 2) & (np.abs(steps - multiples * spacing) <= RELATIVE_TOLERANCE * steps)
        if np.array_equal(gaps, uneven):
            missing = int(np.sum(multiples[gaps] - 1))
            problems.append(f"{missing} missing slice{'s' if missing > 1 else ''} (a gap of "
                            f"{steps[gaps].max():.3g} mm where slices are {spacing:.3g} mm apart)")
        else:
            problems.append(f"uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm)")
    geometry = StackGeometry([files[i] for i in order], origins, direction, distances, spacing, shift, problems)
    if np.any(shift):
        problems.append(f"a gantry tilt of {geometry.tilt_degrees:.3g} degrees")
    return geometry


def _line_fit(t: np.ndarray, points: np.ndarray) -> tuple:
    """Least-squares points = a + b t; returns ((a, b), largest distance of a point from the line)."""
    design = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(design, points, rcond=None)
    residual = float(np.linalg.norm(points - design @ coef, axis=1).max()) if len(t) else 0.0
    return coef, residual


def read_series(geometry: StackGeometry, name: str) -> sitk.Image:
    """The series as one volume; an irregular stack is resampled onto a regular grid, with a warning."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(geometry.files)
    display = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(not geometry.problems)  # ITK's own stderr warning: we say it better
    try:
        stack = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read the DICOM series in {name}: {str(exc).strip().splitlines()[-1][:200]}") \
            from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(display)
    if not geometry.problems:
        return stack
    image = regularize(stack, geometry)
    warnings.warn(f"the DICOM series in {name} has {' and '.join(geometry.problems)}; resampled onto a regular "
                  f"grid of {geometry.spacing:.3g} mm slices along the slice normal", InputWarning, stacklevel=2)
    return image


def regularize(stack: sitk.Image, geometry: StackGeometry) -> sitk.Image:
    """Resample the slices (in ``geometry``'s order, at its positions) onto a regular orthogonal grid.

    Along the normal, slices at the regular distances are interpolated linearly
    between their two acquired neighbours (in-plane origins too); this is
    exact trilinear interpolation of the acquired stack. A tilted stack is then
    a regular sheared grid, resampled onto the grid of the in-plane axes and
    the normal that covers it. A label map (few distinct integers) takes the
    nearest slice and voxel instead.
    """
    slices = sitk.GetArrayFromImage(stack).astype(np.float32)  # [k, j, i], k in geometry.files order
    labels = distinct_labels(slices) > 0  # a label map: nearest neighbour (a mix of labels is another label)
    d = geometry.distances
    count = int(round((d[-1] - d[0]) / geometry.spacing)) + 1
    targets = d[0] + geometry.spacing * np.arange(count)
    upper = np.clip(np.searchsorted(d, targets, side="right"), 1, len(d) - 1)
    gap = d[upper] - d[upper - 1]
    weight = (targets - d[upper - 1]) / gap
    weight[weight * gap < TOLERANCE_MM] = 0.0  # a scanned slice at the target is kept as it is
    weight[(1 - weight) * gap < TOLERANCE_MM] = 1.0
    if labels:
        weight = (weight > 0.5).astype(np.float64)
    weight = weight.astype(np.float32)
    regular = np.empty((count,) + slices.shape[1:], np.float32)
    for m in range(count):
        regular[m] = (1 - weight[m]) * slices[upper[m] - 1] + weight[m] * slices[upper[m]]
    in_plane_spacing = np.asarray(stack.GetSpacing()[:2], dtype=np.float64)
    out = sitk.GetImageFromArray(regular)
    out.SetOrigin(tuple(geometry.origins[0]))
    step = geometry.spacing * (geometry.direction[:, 2] + geometry.shift_per_mm)  # from one slice to the next
    sheared = geometry.direction.copy()
    sheared[:, 2] = step / np.linalg.norm(step)
    out.SetSpacing(tuple(in_plane_spacing) + (float(np.linalg.norm(step)),))
    out.SetDirection(tuple(sheared.ravel()))
    if not np.any(geometry.shift_per_mm):
        return out
    # The sheared grid's corners in the orthogonal frame: the output grid covers them all.
    size = np.array(out.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    physical = np.array([out.TransformIndexToPhysicalPoint([int(c) for c in corner]) for corner in corners])
    local = (physical - geometry.origins[0]) @ geometry.direction
    spacing = np.r_[in_plane_spacing, geometry.spacing]
    low, high = local.min(axis=0), local.max(axis=0)
    grid = sitk.Image([int(n) for n in np.floor((high - low) / spacing + 1e-6) + 1], sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in spacing))
    grid.SetDirection(tuple(geometry.direction.ravel()))
    grid.SetOrigin(tuple(geometry.origins[0] + geometry.direction @ low))
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(out, grid, sitk.Transform(), interpolator, float(regular.min()), sitk.sitkFloat32)
