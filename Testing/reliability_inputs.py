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
