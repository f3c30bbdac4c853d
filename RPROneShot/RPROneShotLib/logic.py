"""RPROneShot's logic without Qt: gather the support and query, start the worker, build the result nodes.

All checks (volumes present, support points on the support image, a template
or a support, models valid) run before anything is added to the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from LandmarkLocalizerLib import mrml
from LandmarkLocalizerLib.exchange import box_from_dict, point_from_dict, point_to_dict, write_temporary_image
from LandmarkLocalizerLib.jobs import Job, package_paths, starting_workdir
from LandmarkLocalizerLib.logic import checked_image
from LandmarkLocalizerLib.models import ModelInfo, check_model_fits

from landmarkloc.errors import InputError, ModelError
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE
from landmarkloc.io.modelfile import model_paths, read_metadata

from .engine import METHODS

WORKER_MODULE = "RPROneShotLib.worker"
TEMPLATE_KIND = "rpr-template"


def worker_paths() -> list:
    return package_paths("landmarkloc", "LandmarkLocalizerLib", "RPROneShotLib")


@dataclass
class Support:
    """Where the one-shot annotation comes from: a volume plus either points or a label map / segmentation."""

    volume: object = None
    points_node: object = None
    labels_node: object = None  # vtkMRMLSegmentationNode or vtkMRMLLabelMapVolumeNode


@dataclass
class FindOutcome:
    points_node: object
    roi_nodes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # e.g. uncertain points (unselected), query unlike training


def inspect_template(path) -> dict:
    """Validate a saved template's metadata (kind, version, weights present); returns the metadata."""
    weights, _ = model_paths(path)
    meta = read_metadata(path)
    if meta["kind"] != TEMPLATE_KIND:
        raise ModelError(f"{Path(path).name} is a '{meta['kind']}' file, not a one-shot template")
    if not weights.is_file():
        raise ModelError(f"template data not found: {weights}")
    return meta


def _support_request(support: Support, workdir: Path, ndim_model: int = None) -> dict:
    """Write the support for the worker: its image plus points (checked inside it) or a label map."""
    if support.volume is None:
        raise InputError("select the support volume")
    geometry = mrml.volume_geometry(support.volume)
    image = checked_image(support.volume)
    request = {}
    if support.labels_node is not None:
        if support.labels_node.IsA("vtkMRMLSegmentationNode"):
            labelmap, labels, names = mrml.labelmap_from_segmentation(support.labels_node, support.volume)
        else:
            labelmap, labels, names = mrml.labelmap_from_volume(support.labels_node)
        request["labelmap"] = write_temporary_image(labelmap, workdir / "support_labels.mha")
        request["labels"], request["names"] = labels, names
    elif support.points_node is not None:
        points = mrml.points_from_node(support.points_node)
        mrml.check_points_inside(points, geometry, f"support volume {support.volume.GetName()}")
        request["points"] = [point_to_dict(p) for p in points]
    else:
        raise InputError("give the support points (a point list) or a segmentation of the organs to find")
    request["image"] = write_temporary_image(image, workdir / "support.mha")
    return request


def _check_models(model: ModelInfo, fine: ModelInfo, method: str) -> None:
    if method == "rpr" and model is None:
        raise InputError("select an RPR model (coarse) for the rpr method")
    if fine is not None and model is not None and fine.ndim != model.ndim:
        raise InputError("the coarse and fine models are for different image dimensions")


def start_find(query_volume, support: Support, method: str = "rpr", model: ModelInfo = None,
               fine_model: ModelInfo = None, template_path: str = "", runs: int = 15, steps: int = 1,
               device: str = "Auto", python: str = None, refine: str = DEFAULT_REFINE_MODE) -> Job:
    """Check everything, write the inputs and start the worker that locates the support's points in the query.

    ``refine`` (rpr): ``'ncc'`` (default: anchor map + local image match), ``'affine'`` or ``'none'``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if query_volume is None:
        raise InputError("select the query volume")
    if runs < 1 or steps < 1:
        raise InputError("runs and steps must be at least 1")
    _check_models(model, fine_model, method)
    query_geometry = mrml.volume_geometry(query_volume)
    if method == "rpr":
        check_model_fits(model, query_geometry, query_volume.GetName())
    query_image = checked_image(query_volume)
    with starting_workdir() as workdir:
        request = {"task": "locate", "method": method, "runs": int(runs), "steps": int(steps), "device": device,
                   "refine": refine}
        if method == "rpr":
            request.update(model=model.path, fine_model=fine_model.path if fine_model else None)
        if method == "rpr" and template_path:
            meta = inspect_template(template_path)
            if refine != "none" and int(meta.get("template_version", 1)) < 2:
                raise ModelError(f"{Path(template_path).name} was saved by an older version and has no "
                                 "refinement data: save the template again from the support")
            request["template"] = str(template_path)
        else:
            request["support"] = _support_request(support, workdir)
        request["query"] = write_temporary_image(query_image, workdir / "query.mha")
        job = Job(WORKER_MODULE, request, workdir, python_paths=worker_paths(), python=python)
        job.start()
        return job


def start_save_template(support: Support, path, model: ModelInfo, fine_model: ModelInfo = None,
                        device: str = "Auto", python: str = None) -> Job:
    """Encode the support with the models and save it as a template (``NAME.safetensors`` + ``NAME.json``)."""
    if not path:
        raise InputError("choose where to save the template")
    _check_models(model, fine_model, "rpr")
    if support.volume is not None:
        check_model_fits(model, mrml.volume_geometry(support.volume), support.volume.GetName())
    with starting_workdir() as workdir:
        request = {"task": "template", "method": "rpr", "model": model.path, "device": device,
                   "fine_model": fine_model.path if fine_model else None, "save_to": str(path),
                   "support": _support_request(support, workdir)}
        job = Job(WORKER_MODULE, request, workdir, python_paths=worker_paths(), python=python)
        job.start()
        return job


def apply_find(scene, result: dict, query_volume, name: str = "") -> FindOutcome:
    """A point list named after the query (per-point spread in the descriptions) and one ROI per organ."""
    geometry = mrml.volume_geometry(query_volume)
    points = mrml.place_on_slice([point_from_dict(d) for d in result.get("points", [])], geometry)
    boxes = mrml.place_on_slice([box_from_dict(d) for d in result.get("boxes", [])], geometry)
    base = name or f"{query_volume.GetName()} one-shot"
    points_node = mrml.add_points_node(scene, points, base)
    rois = [mrml.add_roi_node(scene, box) for box in boxes]
    return FindOutcome(points_node=points_node, roi_nodes=rois, warnings=list(result.get("warnings", [])))
