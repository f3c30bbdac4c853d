"""Adapter to the one-shot engine (:mod:`landmarkloc.inference.oneshot` and its baselines).

The only place where this module knows the engine's API; the worker calls
these functions in its own process. Images are SimpleITK images in LPS
(single-slice volumes become 2D images for 2D models); points are
ControlPoints in LPS, boxes are Boxes in LPS.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from LandmarkLocalizerLib.progress import reporting_stages

from landmarkloc.errors import InputError
from landmarkloc.geometry.labels import group_extreme_points
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE
from landmarkloc.io.image import squeeze_single_slice

METHODS = ("rpr", "ncc", "registration")


def as_model_image(image: sitk.Image, ndim: int) -> sitk.Image:
    """Slicer holds 2D images as single-slice volumes: give 2D methods the 2D image."""
    if ndim == 2 and image.GetDimension() == 3:
        return squeeze_single_slice(image)
    return image


def image_ndim(image: sitk.Image) -> int:
    return 2 if image.GetDimension() == 2 or image.GetSize()[2] == 1 else 3


def load_locator(coarse_path, fine_path=None, device: str = "auto", fine_steps: int = 1):
    """The coarse (and fine) models on ``device`` (auto, cpu, cuda or mps)."""
    from landmarkloc.inference.oneshot import OneShotLocator

    return OneShotLocator.from_files(coarse_path, fine_path or None, device,
                                     fine_steps=max(1, int(fine_steps)))


def make_template(locator, support_image: sitk.Image, support_points):
    return locator.make_template(as_model_image(support_image, locator.ndim), list(support_points))


def save_template(template, path) -> None:
    template.save(path)


def load_template(path):
    from landmarkloc.inference.oneshot import Template

    return Template.load(path)


def locate_rpr(locator, template, query: sitk.Image, runs: int, seed: int = 0, refine: str = DEFAULT_REFINE_MODE,
               report=None) -> tuple:
    """(points, boxes, warnings); uncertain points come unselected with the reason in their description.

    ``report(fraction, stage)`` hears the stages after the coarse runs (anchor map, local image match).
    """
    from landmarkloc.inference import oneshot

    stages = ((oneshot, "fit_affine", 0.75, "Anchor map"), (oneshot, "ncc_search", 0.85, "Local image match"))
    with reporting_stages(stages, report or (lambda fraction, stage: None)):
        result = locator.locate(as_model_image(query, locator.ndim), template, runs=int(runs), seed=int(seed),
                                refine=refine)
    return result.points, with_spread(result.boxes, result.points), list(result.warnings)


def locate_baseline(method: str, query: sitk.Image, support_image: sitk.Image, support_points) -> tuple:
    """(points, boxes, warnings) of the ncc or registration baseline; both need the support image itself."""
    from landmarkloc.inference.baselines import ncc_locate, registration_locate

    if method not in ("ncc", "registration"):
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    ndim = image_ndim(query)
    if image_ndim(support_image) != ndim:
        raise InputError("the support and query images differ in dimension (2D vs 3D)")
    run = ncc_locate if method == "ncc" else registration_locate
    result = run(as_model_image(query, ndim), as_model_image(support_image, ndim), list(support_points))
    return result.points, with_spread(result.boxes, result.points), list(result.warnings)


def with_spread(boxes, points) -> list:
    """Describe each organ box with the largest spread of its extreme points (how much to trust it)."""
    spread = {p.label: p.properties.get("spread_mm") for p in points}
    groups = group_extreme_points(points)
    for box in boxes:
        values = [spread[p.label] for p in points if p.label.rpartition("_")[0] == box.name
                  and isinstance(spread.get(p.label), (int, float))]
        if values and box.name in groups:
            box.description = f"spread_mm={float(np.max(values)):.3g}"
    return boxes


def support_from_labels(labelmap: sitk.Image, labels, names) -> list:
    """Six extreme points per organ (four in 2D): the support annotation for organ boxes."""
    from landmarkloc.inference.oneshot import support_points_from_labels

    return support_points_from_labels(as_model_image(labelmap, image_ndim(labelmap)), labels, names)
