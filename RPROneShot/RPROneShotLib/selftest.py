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


def click_through_one_shot(widget, support_volume, query_volume, coarse_path, fine_path, export_folder, wait_for_job,
                           points_node=None, labels_node=None) -> tuple:
    """What a user clicks in RPR One-Shot: support (a point list or a segmentation), query, models, Find, Export.

    ``widget`` is the module widget (Slicer's, or one over stand-ins in CI);
    ``wait_for_job(widget)`` lets the job run to its end. Returns (point list, organ ROIs, files written).
    """
    import os

    from LandmarkLocalizerLib.selftest import check

    p = widget._parameterNode
    p.supportVolume, p.supportPoints, p.supportLabels = support_volume, points_node, labels_node
    p.queryVolume, p.method, p.templatePath = query_volume, "rpr", ""
    p.modelPath, p.fineModelPath, p.runs, p.device = str(coarse_path), str(fine_path), 3, "CPU"
    widget.initializeParameterNode()  # the models, not shipped, are listed as a saved scene would list them
    check(p.modelPath == str(coarse_path) and p.fineModelPath == str(fine_path), "the models were not selected")
    widget.onFindButton()
    check(widget._job is not None, f"Find did not start: {widget.ui.statusLabel.text}")
    wait_for_job(widget)
    found = p.outputPoints
    check(found is not None and found.GetNumberOfControlPoints() > 0, f"Find gave no points: "
          f"{widget.ui.statusLabel.text}")
    written = widget.exportTo(os.path.join(export_folder, "found.mrk.json"))
    check(written and all(os.path.getsize(path) > 0 for path in written), "Export wrote nothing")
    return found, list(widget._roiNodes), written
