"""Adapter to the global-to-local FCN engine (:mod:`landmarkloc.inference.fcn`).

The only place where this module knows the engine's API; the worker calls
these functions in its own process, never in Slicer's. Images are SimpleITK
images in LPS (3D, single-slice volumes for 2D images); points are
ControlPoints in LPS with ``confidence`` and ``spread_mm`` properties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .progress import reporting_stages


def engine_stages() -> tuple:
    """The FCN engine's stage functions, in the order Localizer.localize (and refine) calls them."""
    from landmarkloc.inference import fcn

    return ((fcn, "run_global", 0.2, "Global stage"), (fcn, "run_stages", 0.45, "Local stage"),
            (fcn, "local_tta_estimates", 0.7, "Refining (test-time passes)"))


@dataclass
class Localization:
    points: list  # ControlPoints (LPS) of the landmarks found
    not_found: list  # names of landmarks the model did not find in this image
    evidence: sitk.Image = None  # posterior maps of all landmarks (max), on the input grid
    properties: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # e.g. the image is unlike the model's training images


def load(model_path, device: str):
    """The loaded model (weights checked); ``device``: auto, cpu, cuda or mps."""
    from landmarkloc.inference.fcn import Localizer

    return Localizer.from_file(model_path, device=device)


def localize(model, image: sitk.Image, with_evidence: bool, report) -> Localization:
    """All landmarks of ``image``; the evidence is the voxel-wise maximum of the landmarks' posteriors."""
    with reporting_stages(engine_stages(), report):
        result = model.localize(image, evidence=True if with_evidence else ())
    evidence = None
    if result.evidence:
        maps = list(result.evidence.values())
        combined = sitk.GetArrayFromImage(maps[0])
        for other in maps[1:]:
            combined = np.maximum(combined, sitk.GetArrayViewFromImage(other))
        evidence = sitk.GetImageFromArray(combined.astype(np.float32))
        evidence.CopyInformation(maps[0])
    notice = [model.calibration_notice] if getattr(model, "calibration_notice", None) else []
    return Localization(points=result.points, not_found=result.not_found, evidence=evidence,
                        properties={"seconds": round(result.seconds, 3)}, warnings=list(result.warnings) + notice)


def refine(model, image: sitk.Image, label: str, position_lps, report):
    """The landmark ``label`` re-localized by the local stage from ``position_lps`` (a ControlPoint)."""
    from landmarkloc.inference.fcn import refine as refine_point

    with reporting_stages(engine_stages(), report):
        return refine_point(model, image, label, position_lps)
