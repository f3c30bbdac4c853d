"""Reference points and boxes derived from a label map: centroids, six extreme points, boxes.

These turn a segmentation into landmarks for training and evaluation, and into
a one-shot support annotation (the RPR paper locates an organ by its extreme
points along the image axes and takes the box they span).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..points import Box, ControlPoint
from .frames import ImageGeometry, to_point3

AXIS_NAMES = ("x", "y", "z")


def _names(labels, names) -> list:
    labels = [int(v) for v in labels]
    if names is None:
        return [str(v) for v in labels]
    names = list(names)
    if len(names) != len(labels):
        raise InputError(f"{len(names)} names given for {len(labels)} labels")
    return [str(n) for n in names]


def label_indices(labelmap: sitk.Image, labels) -> dict:
    """ITK-order voxel indices (N, D) of each requested label; missing labels raise InputError."""
    arr = sitk.GetArrayViewFromImage(labelmap)
    if labelmap.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("the label map must have one component per voxel")
    out, missing = {}, []
    for label in labels:
        idx = np.argwhere(arr == label)
        if len(idx) == 0:
            missing.append(int(label))
        out[int(label)] = idx[:, ::-1].astype(np.float64)  # [k, j, i] -> (i, j, k)
    if missing:
        present = np.unique(arr)
        shown = ", ".join(str(int(v)) for v in present[:20]) + (" ..." if len(present) > 20 else "")
        raise InputError(f"label(s) {', '.join(map(str, missing))} not found in the label map "
                         f"(labels present: {shown})")
    return out


def label_centroids(labelmap: sitk.Image, labels, names=None) -> list:
    """One point per label at the physical centroid of its voxels."""
    geometry = ImageGeometry.from_image(labelmap)
    names = _names(labels, names)
    indices = label_indices(labelmap, labels)
    return [ControlPoint(name, to_point3(geometry.index_to_physical(indices[int(lab)].mean(axis=0))),
                         properties={"label_value": int(lab), "voxels": len(indices[int(lab)])})
            for lab, name in zip(labels, names)]


def extreme_voxels(idx: np.ndarray) -> list:
    """For each axis, the (min, max) voxels of a structure on its extreme slices.

    Of the voxels on an extreme slice, the one closest to their mean is taken,
    so the point lies on the structure and in the middle of its extreme face.
    """
    out = []
    for axis in range(idx.shape[1]):
        pair = []
        for value in (idx[:, axis].min(), idx[:, axis].max()):
            face = idx[idx[:, axis] == value]
            pair.append(face[np.argmin(((face - face.mean(axis=0)) ** 2).sum(axis=1))])
        out.append(pair)
    return out


def label_extreme_points(labelmap: sitk.Image, labels, names=None) -> list:
    """Six points per label (four in 2D): ``<name>_xmin, _xmax, _ymin, _ymax, _zmin, _zmax``."""
    geometry = ImageGeometry.from_image(labelmap)
    names = _names(labels, names)
    indices = label_indices(labelmap, labels)
    points = []
    for lab, name in zip(labels, names):
        for axis, (lo, hi) in enumerate(extreme_voxels(indices[int(lab)])):
            for suffix, voxel in (("min", lo), ("max", hi)):
                points.append(ControlPoint(f"{name}_{AXIS_NAMES[axis]}{suffix}",
                                           to_point3(geometry.index_to_physical(voxel)),
                                           properties={"label_value": int(lab)}))
    return points


def _orientation3(geometry: ImageGeometry) -> np.ndarray:
    d = geometry.ndim
    r = np.eye(3)
    r[:d, :d] = geometry.direction
    return r


def label_boxes(labelmap: sitk.Image, labels, names=None) -> list:
    """The bounding box of each label along the image axes (voxel edges included), as ROIs."""
    geometry = ImageGeometry.from_image(labelmap)
    names = _names(labels, names)
    indices = label_indices(labelmap, labels)
    d = geometry.ndim
    boxes = []
    for lab, name in zip(labels, names):
        idx = indices[int(lab)]
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        center = to_point3(geometry.index_to_physical((lo + hi) / 2.0))
        size = np.zeros(3)
        size[:d] = (hi - lo + 1.0) * geometry.spacing
        boxes.append(Box(name, center, size, _orientation3(geometry), description=f"label={int(lab)}"))
    return boxes


def box_from_points(points, orientation, name: str, padding=None) -> Box:
    """The box spanned by points along the axes of ``orientation`` (columns, LPS).

    ``padding`` (mm per axis, added to the size) turns a box through voxel
    centres into one through voxel edges: pass the image spacing to match
    :func:`label_boxes` when the points are extreme voxels.
    """
    r = np.asarray(orientation, dtype=np.float64).reshape(3, 3)
    local = to_point3(np.asarray(points, dtype=np.float64).reshape(-1, np.shape(points)[-1])) @ r
    lo, hi = local.min(axis=0), local.max(axis=0)
    size = hi - lo
    if padding is not None:
        pad = np.zeros(3)
        p = np.atleast_1d(np.asarray(padding, dtype=np.float64))
        pad[: p.size] = p
        size = size + pad
    return Box(name, r @ ((lo + hi) / 2.0), size, r)


def group_extreme_points(points) -> dict:
    """Group ``<name>_xmin`` ... points by structure name -> {name: [positions]}."""
    groups = {}
    for p in points:
        base, sep, tail = p.label.rpartition("_")
        if sep and len(tail) == 4 and tail[0] in AXIS_NAMES and tail[1:] in ("min", "max"):
            groups.setdefault(base, []).append(p.position)
    return groups
