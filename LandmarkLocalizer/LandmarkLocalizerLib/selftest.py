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


def packages_the_self_test_lacks(testing_enabled: bool, confirm) -> list:
    """The packages whose absence makes a self-test skip; empty when it can run.

    Under Slicer's test runner (testing mode) ``confirmOkCancelDisplay`` answers OK by itself, so asking would
    install PyTorch on a build machine: nothing is installed then and the missing packages are returned.
    Interactively (Reload and Test) the user is asked, as at the first Localize.
    """
    from .dependencies import ensure_installed, missing_packages

    if testing_enabled:
        return missing_packages()
    ensure_installed(confirm)
    return []


def skip_message(missing) -> str:
    return (f"Skipped: the self-test needs {', '.join(missing)}, which is not installed and is not installed by a "
            "test run (click Localize once, or install the PyTorch extension, then test again)")


def check(condition, message: str) -> None:
    """An assertion that also holds under ``python -O`` (self-tests run in Slicer and in CI)."""
    if not condition:
        raise AssertionError(message)


def click_through_localizer(widget, volume, model_path, export_folder, wait_for_job) -> object:
    """What a user clicks in Landmark Localizer: Localize, move a point, Refine selected, Export (three formats).

    ``widget`` is the module widget (Slicer's, or one over stand-ins in CI);
    ``wait_for_job(widget)`` lets the job run to its end (Slicer: process events;
    CI: poll). Returns the result point list.
    """
    import os

    from . import mrml

    p = widget._parameterNode
    p.inputVolume = volume
    widget.selectModelPath(str(model_path))
    check(p.modelPath == str(model_path), f"the model {model_path} was not selected")
    widget.onLocalizeButton()
    check(widget._job is not None, f"Localize did not start: {widget.ui.statusLabel.text}")
    wait_for_job(widget)
    points = p.outputPoints
    check(points is not None and points.GetNumberOfControlPoints() == len(TINY_LANDMARKS),
          f"Localize gave no point list: {widget.ui.statusLabel.text}")
    geometry = mrml.volume_geometry(volume)
    for point in mrml.points_from_node(points):
        check(geometry.contains(point.position[None], margin=8.0)[0], f"{point.label} lies outside the volume")

    moved = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(1, moved)
    points.SetNthControlPointPositionWorld(1, moved[0] + 5.0, moved[1] - 4.0, moved[2] + 3.0)
    widget.ui.resultsTable.selectRow(1)
    widget.onRefineButton()
    check(widget._job is not None, f"Refine did not start: {widget.ui.statusLabel.text}")
    wait_for_job(widget)
    check("local_confidence" in mrml.points_from_node(points)[1].properties,
          f"the point was not refined: {widget.ui.statusLabel.text}")

    os.makedirs(export_folder, exist_ok=True)
    for suffix in (".mrk.json", ".fcsv", ".csv"):
        path = os.path.join(export_folder, "landmarks" + suffix)
        check(widget.exportTo(path) and os.path.getsize(path) > 0, f"Export to {path} failed")
    return points


def process_events_until_idle(widget, timeout_s: float = 600.0) -> None:
    """In Slicer: let the event loop run (the widget's poll timer fires) until the widget's job has ended."""
    import time

    import slicer

    deadline = time.time() + timeout_s
    while widget._job is not None and time.time() < deadline:
        slicer.app.processEvents()
        time.sleep(0.05)
    check(widget._job is None, f"the job did not end within {timeout_s:.0f} s")
