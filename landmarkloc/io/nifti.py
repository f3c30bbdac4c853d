"""What ITK's NIfTI reader does not say: NaN/Inf voxels it reads as 0, a sheared sform it silently replaces by the
qform, and a qform and sform that disagree (it uses one without a word).

The header is parsed here (NIfTI-1 and NIfTI-2, either byte order); the voxels are streamed from the file in
chunks, so checking them holds no second copy of the image.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputWarning

_CHUNK = 1 << 22
_FLOAT_TYPES = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}  # datatype code -> numpy type of what can be NaN
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
SHEAR_TOLERANCE = 1e-4  # largest |cosine| between two sform axes taken as orthogonal (float32 rounding: ~1e-7)
DISAGREEMENT_MM = 1.0  # qform and sform further apart than this at a corner of the image: a warning


@dataclass
class NiftiHeader:
    endian: str
    dims: tuple  # dim[1..dim[0]]
    datatype: int
    vox_offset: int
    pixdim: tuple  # pixdim[0..7]; pixdim[0] is qfac
    qform_code: int
    sform_code: int
    quatern: tuple  # b, c, d
    qoffset: tuple
    srow: np.ndarray  # 3 x 4, RAS

    def qform(self) -> np.ndarray:
        """The qform's 3 x 4 voxel -> RAS matrix (NIfTI-1 standard, method 2)."""
        b, c, d = self.quatern
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
        qfac = -1.0 if self.pixdim[0] < 0 else 1.0
        scale = np.array([self.pixdim[1], self.pixdim[2], qfac * self.pixdim[3]])
        return np.c_[rotation * scale, np.asarray(self.qoffset, dtype=np.float64)]

    def corners(self) -> np.ndarray:
        """(8, 4) homogeneous voxel indices of the image's corners."""
        size = [max(int(n), 1) - 1 for n in (list(self.dims) + [1, 1, 1])[:3]]
        return np.array([[i, j, k, 1.0] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])])


def read_header(path) -> NiftiHeader | None:
    """The NIfTI header of a .nii / .nii.gz file, or None when it is not one (the reader then says why)."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError):
        return None
    for endian in "<>":
        def u(fmt, at, endian=endian):
            return struct.unpack(endian + fmt, head[at: at + struct.calcsize(endian + fmt)])

        if len(head) >= 348 and u("i", 0)[0] == 348:
            dims, datatype, pixdim, offset = u("8h", 40), u("h", 70)[0], u("8f", 76), int(u("f", 108)[0])
            codes, quatern, qoffset, srow = u("2h", 252), u("3f", 256), u("3f", 268), u("12f", 280)
            break
        if len(head) >= 540 and u("i", 0)[0] == 540:
            datatype, dims, pixdim, offset = u("h", 12)[0], u("8q", 16), u("8d", 104), u("q", 168)[0]
            codes, quatern, qoffset, srow = u("2i", 344), u("3d", 352), u("3d", 376), u("12d", 400)
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        return None
    return NiftiHeader(endian, tuple(int(d) for d in dims[1: ndim + 1]), int(datatype), int(offset),
                       tuple(float(v) for v in pixdim), int(codes[0]), int(codes[1]),
                       tuple(float(v) for v in quatern), tuple(float(v) for v in qoffset),
                       np.reshape(np.asarray(srow, dtype=np.float64), (3, 4)))


def check_finite_voxels(path, header: NiftiHeader) -> None:
    """Refuse NaN or infinite voxels, read from the file itself: ITK reads them as 0."""
    code = _FLOAT_TYPES.get(header.datatype)
    if code is None:
        return
    dtype = np.dtype(header.endian + code)
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    voxels = int(np.prod([max(d, 1) for d in header.dims], dtype=np.float64))
    left = voxels * dtype.itemsize
    step = _CHUNK - _CHUNK % dtype.itemsize
    with opener(path, "rb") as f:
        f.seek(header.vox_offset)
        while left > 0:
            chunk = f.read(min(step, left))
            if not chunk:
                return  # truncated: io.completeness says so
            chunk = chunk[: len(chunk) - len(chunk) % dtype.itemsize]
            if not np.isfinite(np.frombuffer(chunk, dtype=dtype)).all():
                raise InputError(f"{path.name} contains NaN or infinite voxel values (ITK alone reads them as 0)")
            left -= len(chunk)


def _is_sheared(matrix: np.ndarray) -> bool:
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms == 0):
        return True
    unit = matrix / norms
    return bool(np.abs(unit.T @ unit - np.eye(3)).max() > SHEAR_TOLERANCE)


def _lps_corners(ras_matrix: np.ndarray, header: NiftiHeader) -> np.ndarray:
    return header.corners() @ (_LPS_FROM_RAS @ ras_matrix).T


def _itk_corners(image: sitk.Image, header: NiftiHeader) -> np.ndarray:
    direction = np.reshape(image.GetDirection(), (3, 3))
    index = header.corners()[:, :3]
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T


def check_not_sheared(path, header: NiftiHeader) -> None:
    """Refuse a sheared sform: ITK would silently put the image where the qform says."""
    sform = header.srow
    if header.sform_code <= 0 or not _is_sheared(sform[:, :3]):
        return
    apart = ""
    if header.qform_code > 0:
        distance = np.linalg.norm(_lps_corners(sform, header) - _lps_corners(header.qform(), header), axis=1).max()
        apart = f"; its qform, which ITK would use instead, is up to {distance:.1f} mm away"
    raise InputError(f"{Path(path).name} has a sheared NIfTI sform (its axes are not perpendicular), which an image "
                     f"grid of origin, spacing and direction cannot hold{apart}; resample it onto an unsheared grid")


def warn_if_forms_disagree(path, header: NiftiHeader, image: sitk.Image) -> None:
    """Warn when the qform and sform put the image in different places, naming the one ITK used (``image`` as it
    read the file)."""
    if header.qform_code <= 0 or header.sform_code <= 0 or image.GetDimension() != 3:
        return
    from_sform, from_qform = _lps_corners(header.srow, header), _lps_corners(header.qform(), header)
    distance = np.linalg.norm(from_sform - from_qform, axis=1).max()
    if distance > DISAGREEMENT_MM:
        read = _itk_corners(image, header)
        used = ("sform" if np.linalg.norm(read - from_sform, axis=1).max()
                <= np.linalg.norm(read - from_qform, axis=1).max() else "qform")
        warnings.warn(f"{Path(path).name}: its NIfTI qform and sform disagree by up to {distance:.1f} mm; the {used} "
                      "is used", InputWarning, stacklevel=3)
