"""A generated volume and a tiny (untrained, seeded) FCN model: enough to run the whole workflow in a self-test.

The model's numbers mean nothing; it exercises the real file format, the
worker, the engine and the MRML output, in Slicer and in CI alike.
"""

from __future__ import annotations

import numpy as np

TINY_LANDMARKS = ("Apex", "Base", "Notch")


def blob_volume(shape=(24, 28, 32), seed: int = 0) -> np.ndarray:
    """A [k, j, i] float32 volume: a bright ellipsoid with a few blobs and noise."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    volume = 400.0 * ((i / 0.8) ** 2 + (j / 0.7) ** 2 + (k / 0.75) ** 2 <= 1.0)
    for ci, cj, ck in ((0.3, -0.2, 0.1), (-0.4, 0.25, -0.2), (0.0, 0.4, 0.35)):
        volume += 600.0 * np.exp(-((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) / 0.02)
    return (volume + rng.normal(0.0, 10.0, shape)).astype(np.float32)


def make_tiny_fcn_model(path, ndim: int = 3, names=TINY_LANDMARKS, spacing: float = 2.0, seed: int = 0) -> str:
    """Write a seeded, untrained compact global-to-local FCN as ``path`` (.safetensors + .json)."""
    import torch

    from landmarkloc.geometry.intensity import get_preset
    from landmarkloc.io.modelfile import save_model
    from landmarkloc.networks.fcn import GlobalToLocal, global_config, local_config

    torch.manual_seed(seed)
    global_cfg = global_config("compact", ndim, len(names))
    local_cfg = local_config("compact", ndim, len(names))
    network = GlobalToLocal(global_cfg, local_cfg)
    metadata = {
        "kind": "fcn", "name": "tiny-test", "description": "untrained test model (self-test only)",
        "ndim": ndim, "landmark_names": list(names), "spacing": [float(spacing)] * ndim,
        "intensity": get_preset("ct").to_dict(), "variant": "R_log+C", "patch_size": global_cfg.patch_size,
        "sub_image_size": 16, "local_patch_size": local_cfg.patch_size,
        "global_architecture": global_cfg.to_dict(), "local_architecture": local_cfg.to_dict(),
        # an untrained network has no calibrated confidence: report every landmark
        "always_found": True,
    }
    _, meta_path = save_model(path, network.state_dict(), metadata)
    return str(meta_path)
