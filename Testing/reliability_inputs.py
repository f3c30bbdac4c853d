"""Bad and awkward inputs for the reliability tests, made on the fly (no real data).

Header-only files (MetaImage text headers) describe what SimpleITK refuses to
create in memory: zero or negative spacing, a sheared direction, a volume far
larger than memory, a zero-size image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from fcn_helpers import TINY_GLOBAL, TINY_LOCAL

from landmarkloc.geometry.intensity import get_preset
from landmarkloc.io.modelfile import save_model
from landmarkloc.networks.fcn import GlobalToLocal, global_config, local_config

NAMES = ("Apex", "Base")
SPACING = (2.0, 2.0, 2.0)


def body_volume(shape=(20, 22, 24), seed: int = 0) -> np.ndarray:
    """A [k, j, i] MR-like volume: an ellipsoid of graded tissue with two blobs and noise (values 0..~900)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = (i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.8) ** 2
    volume = np.where(r2 <= 1.0, 250.0 + 400.0 * (1.0 - r2), 0.0)
    for ci, cj, ck in ((0.3, -0.2, 0.1), (-0.35, 0.25, -0.2)):
        volume += 300.0 * np.exp(-((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) / 0.03)
    return (volume + rng.normal(0.0, 8.0, shape)).astype(np.float32)


def ct_like_volume(shape=(20, 22, 24), seed: int = 0) -> np.ndarray:
    """A [k, j, i] CT-like head: air (-1000 HU), uniform soft tissue (40 HU) and a bright skull (1500 HU)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((i / 0.85) ** 2 + (j / 0.8) ** 2 + (k / 0.8) ** 2)
    volume = np.where(r <= 1.0, 40.0, -1000.0)
    volume = np.where((r > 0.85) & (r <= 1.0), 1500.0, volume)
    return (volume + rng.normal(0.0, 5.0, shape)).astype(np.float32)


def image(array: np.ndarray, spacing=SPACING, origin=None, direction=None) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    ndim = out.GetDimension()
    out.SetSpacing(tuple(float(s) for s in spacing[:ndim]))
    if origin is not None:
        out.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        out.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return out


def write(img: sitk.Image, path) -> Path:
    sitk.WriteImage(img, str(path))
    return Path(path)


def metaimage_header(path, size=(24, 22, 20), spacing="2 2 2", direction="1 0 0 0 1 0 0 0 1",
                     with_data: bool = True) -> Path:
    """A .mha file written by hand: any header a broken scanner or tool may produce."""
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"TransformMatrix = {direction}\nOffset = 0 0 0\nElementSpacing = {spacing}\n"
              f"DimSize = {size[0]} {size[1]} {size[2]}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    data = body_volume(tuple(size[::-1])).tobytes() if with_data and np.prod(size) else b""
    Path(path).write_bytes(header.encode("ascii") + data)
    return Path(path)


def tiny_fcn(path, ndim: int = 3, names=NAMES, intensity: str = "mr", spacing: float = 2.0, profile=None,
             seed: int = 0) -> Path:
    """A seeded, untrained, very small global-to-local FCN saved as ``path`` (.safetensors + .json)."""
    torch.manual_seed(seed)
    global_cfg = global_config("compact", ndim, len(names), **TINY_GLOBAL)
    local_cfg = local_config("compact", ndim, len(names), **TINY_LOCAL)
    network = GlobalToLocal(global_cfg, local_cfg)
    metadata = {
        "kind": "fcn", "name": "tiny-reliability", "ndim": ndim, "landmark_names": list(names),
        "spacing": [float(spacing)] * ndim, "intensity": get_preset(intensity).to_dict(), "variant": "R_log+C",
        "patch_size": global_cfg.patch_size, "sub_image_size": 8, "local_patch_size": local_cfg.patch_size,
        "global_architecture": global_cfg.to_dict(), "local_architecture": local_cfg.to_dict(),
        "always_found": True,  # untrained: report every landmark
    }
    if profile is not None:
        metadata["intensity_profile"] = profile
    weights, _ = save_model(path, network.state_dict(), metadata)
    return weights


SERIES_UID = "1.2.826.0.1.3680043.2.1125.7001"


def blobs_at(points: np.ndarray) -> np.ndarray:
    """Two Gaussian blobs (LPS centres BLOB_CENTRES, 7 mm wide) on a faint body: a volume defined in physical space,
    so a series can sample it on any slice geometry and the blobs' true positions are known."""
    values = np.full(len(points), 100.0)
    for centre, height in zip(BLOB_CENTRES, (800.0, 500.0)):
        values += height * np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * 7.0 ** 2))
    return values


BLOB_CENTRES = np.array([[4.0, -6.0, 3.0], [-12.0, 8.0, -9.0]])


def labels_at(points: np.ndarray) -> np.ndarray:
    """A label map in physical space: labels 1 and 2 are 7 mm balls at BLOB_CENTRES."""
    values = np.zeros(len(points))
    for label, centre in enumerate(BLOB_CENTRES, start=1):
        values[np.linalg.norm(points - centre, axis=1) < 7.0] = label
    return values


def dicom_series(folder, slice_origins, size=(40, 36), pixel=(1.5, 1.5), row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0),
                 skip=(), uid=SERIES_UID, description="T1 phantom", values=blobs_at) -> Path:
    """Write a DICOM series (int16 MR slices with position, orientation and UIDs) that samples ``values`` (a function
    of LPS points) at each slice of the given origins; slices whose index is in ``skip`` are left out (a gap)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(row, float), np.asarray(col, float)
    i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy")  # [j, i]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, origin in enumerate(np.asarray(slice_origins, float)):
        if k in skip:
            continue
        points = origin + (i.reshape(-1, 1) * pixel[0]) * row + (j.reshape(-1, 1) * pixel[1]) * col
        pixels = np.round(values(points)).reshape(size[1], size[0]).astype(np.int16)
        slice_image = sitk.GetImageFromArray(pixels)
        slice_image.SetSpacing(tuple(float(p) for p in pixel))
        tags = {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0018": f"{uid}.{k + 1}",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.7000", "0020|000e": uid, "0008|103e": description,
                "0020|0013": str(k + 1), "0020|0032": "\\".join(f"{v:.4f}" for v in origin),
                "0020|0037": "\\".join(f"{v:.6f}" for v in np.r_[row, col])}
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_image)
    return folder


def stack_origins(count=24, first=(-30.0, -27.0, -30.0), step=2.5, normal=(0.0, 0.0, 1.0), shift=(0.0, 0.0, 0.0),
                  steps=None) -> np.ndarray:
    """Slice origins: ``step`` mm apart along ``normal`` (or the given ``steps``), each moved by ``shift`` (mm of
    in-plane shift per mm along the normal: a gantry tilt)."""
    distances = np.r_[0.0, np.cumsum(steps)] if steps is not None else step * np.arange(count)
    return np.asarray(first) + distances[:, None] * (np.asarray(normal) + np.asarray(shift))[None]


def blob_centre(img: sitk.Image, near: np.ndarray, radius: float = 8.0) -> np.ndarray:
    """Intensity-weighted LPS centre of the blob near ``near`` (voxels within ``radius`` mm, above the body)."""
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    k, j, i = np.nonzero(np.ones_like(arr, dtype=bool))
    index = np.stack([i, j, k], axis=1).astype(np.float64)
    direction = np.reshape(img.GetDirection(), (3, 3))
    points = np.asarray(img.GetOrigin()) + (index * np.asarray(img.GetSpacing())) @ direction.T
    weight = np.clip(arr.reshape(-1) - 150.0, 0.0, None) * (np.linalg.norm(points - near, axis=1) < radius)
    return (points * weight[:, None]).sum(axis=0) / weight.sum()


def error_against_truth(img: sitk.Image, acquired=None) -> float:
    """Largest |voxel - blobs_at(its LPS position)|, over the voxels inside ``acquired`` (a function of LPS points
    that says which lie inside the scanned stack; default: all)."""
    arr = sitk.GetArrayFromImage(img).astype(np.float64).reshape(-1)
    k, j, i = np.indices(sitk.GetArrayViewFromImage(img).shape)
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    direction = np.reshape(img.GetDirection(), (3, 3))
    points = np.asarray(img.GetOrigin()) + (index * np.asarray(img.GetSpacing())) @ direction.T
    inside = acquired(points) if acquired is not None else np.ones(len(points), bool)
    return float(np.abs(arr - blobs_at(points))[inside].max())


def nifti_with_forms(path, array: np.ndarray, spacing=SPACING, sform=None, qoffset=None) -> Path:
    """A NIfTI file (``.nii`` or ``.nii.gz``) of ``array`` whose header is then edited as other tools write it:
    ``sform`` (3 x 4, voxel -> RAS, sform_code 1) and the qform's offset ``qoffset`` (RAS mm)."""
    import gzip
    import struct

    path = Path(path)
    plain = path.with_name(path.name[: -len(".gz")]) if path.name.endswith(".gz") else path
    sitk.WriteImage(image(array, spacing), str(plain))
    data = bytearray(plain.read_bytes())
    if sform is not None:
        data[254:256] = struct.pack("<h", 1)
        data[280:328] = struct.pack("<12f", *np.asarray(sform, dtype=float).ravel())
    if qoffset is not None:
        data[268:280] = struct.pack("<3f", *qoffset)
    if plain != path:
        plain.unlink()
        path.write_bytes(gzip.compress(bytes(data)))
    else:
        path.write_bytes(bytes(data))
    return path
