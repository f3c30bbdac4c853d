"""Tiny (untrained, seeded) coarse and fine RPR models: enough to run the one-shot workflow in a self-test."""

from __future__ import annotations

from pathlib import Path


def make_tiny_rpr_models(folder, ndim: int = 3, seed: int = 0) -> tuple:
    """Write ``tiny-rpr-coarse`` and ``tiny-rpr-fine`` into ``folder``; returns their metadata paths."""
    import torch

    from landmarkloc.geometry.intensity import get_preset
    from landmarkloc.io.modelfile import save_model
    from landmarkloc.networks.pnet import Pnet, PnetConfig, rpr_metadata

    torch.manual_seed(seed)
    config = PnetConfig(ndim, (16,) * ndim, base_channels=2, convs_per_block=1)
    paths = []
    for stage, radius in (("coarse", 100.0), ("fine", 20.0)):
        meta = rpr_metadata(config, stage, (4.0,) * ndim, radius, get_preset("ct").to_dict(), 0.1,
                            name=f"tiny-rpr-{stage}", description="untrained test model (self-test only)")
        _, meta_path = save_model(Path(folder) / f"tiny-rpr-{stage}", Pnet(config).state_dict(), meta)
        paths.append(str(meta_path))
    return tuple(paths)
