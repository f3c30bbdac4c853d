"""LandmarkLocalizer's logic without Qt: check inputs, start the worker, turn its result into MRML nodes.

Every check runs before anything is added to the scene, so bad input (no
volume, a 2D model on a 3D volume, a corrupt model file) changes nothing and
raises a LandmarkLocError whose message the GUI shows as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from landmarkloc.errors import InputError
from landmarkloc.io.image import check_image, check_not_constant
from landmarkloc.points import ControlPoint

from . import mrml
from .exchange import point_from_dict, point_to_dict, read_temporary_image, write_temporary_image
from .jobs import Job, package_paths, starting_workdir
from .models import ModelInfo, check_model_fits

WORKER_MODULE = "LandmarkLocalizerLib.worker"
DEVICE_ATTRIBUTE = "landmarkloc.device"  # on a result point list: the torch device the worker ran on


def worker_paths() -> list:
    return package_paths("landmarkloc", "LandmarkLocalizerLib")


@dataclass
class LocalizeOutcome:
    points_node: object
    evidence_node: object = None
    not_found: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # shown to the user beside the result (not errors)


def checked_image(volume_node):
    """The volume as an image, refused at once (before the worker) if its voxels are NaN/Inf or all equal."""
    image = mrml.volume_to_image(volume_node)
    check_image(image, volume_node.GetName())
    check_not_constant(image, volume_node.GetName())
    return image


def start_worker(request: dict, image, python: str = None) -> Job:
    """Write ``image`` for the worker process, start it on ``request`` and return at once."""
    with starting_workdir() as workdir:
        job = Job(WORKER_MODULE, {**request, "image": write_temporary_image(image, workdir / "input.mha")}, workdir,
                  python_paths=worker_paths(), python=python)
        job.start()
        return job


def start_download(released, python: str = None) -> Job:
    """Download a released model (landmarkloc.distribution.ReleasedModel) into the cache folder in the worker."""
    from landmarkloc.distribution import cache_folder

    with starting_workdir() as workdir:
        job = Job(WORKER_MODULE, {"task": "download", "release": released.to_dict(), "folder": str(cache_folder())},
                  workdir, python_paths=worker_paths(), python=python)
        job.start()
        return job


def output_name(volume_node, model: ModelInfo) -> str:
    return f"{volume_node.GetName()} {model.name}"


def start_localize(volume_node, model: ModelInfo, device: str = "Auto", evidence: bool = False,
                   python: str = None) -> Job:
    """Check the inputs, write the volume for the worker and start it (returns at once)."""
    if volume_node is None:
        raise InputError("select an input volume")
    if model is None:
        raise InputError("select a model")
    geometry = mrml.volume_geometry(volume_node)
    check_model_fits(model, geometry, volume_node.GetName())
    return start_worker({"task": "localize", "model": model.path, "device": device, "evidence": bool(evidence)},
                        checked_image(volume_node), python)


def apply_localization(scene, result: dict, volume_node, model: ModelInfo, uncertain_below: float = 0.5,
                       points_node=None, evidence_node=None) -> LocalizeOutcome:
    """The worker's result as a point list (and evidence volume) named after the volume and model."""
    points = mrml.place_on_slice([point_from_dict(d) for d in result.get("points", [])],
                                 mrml.volume_geometry(volume_node))
    evidence_image = read_temporary_image(result["evidence"]) if result.get("evidence") else None
    name = output_name(volume_node, model)
    node = mrml.add_points_node(scene, points, name, confidence_threshold=uncertain_below, node=points_node)
    mrml.set_source_volume(node, volume_node)
    node.SetAttribute(DEVICE_ATTRIBUTE, str(result.get("device", "")))
    evidence = None
    if evidence_image is not None:
        evidence = mrml.show_evidence(scene, evidence_image, f"{name} evidence", node=evidence_node)
    return LocalizeOutcome(points_node=node, evidence_node=evidence, not_found=list(result.get("not_found", [])),
                           warnings=list(result.get("warnings", [])))


def start_refine(volume_node, model: ModelInfo, points_node, index: int, device: str = "Auto",
                 python: str = None) -> Job:
    """Re-run the local stage of the point ``index`` from where it is now (e.g. after the user moved it)."""
    if points_node is None or not 0 <= index < points_node.GetNumberOfControlPoints():
        raise InputError("select a point of the result to refine")
    if volume_node is None:
        raise InputError("select the input volume the points belong to")
    label = points_node.GetNthControlPointLabel(index)
    if model.landmarks and label not in model.landmarks:
        raise InputError(f"{model.name} has no landmark {label!r}; refine needs a point the model knows")
    geometry = mrml.volume_geometry(volume_node)
    check_model_fits(model, geometry, volume_node.GetName())
    if not mrml.position_defined(points_node, index):
        raise InputError(f"point {label!r} has no position yet")
    mrml.world_transform(points_node)  # refuses a non-linear parent transform
    point = ControlPoint(label, mrml.point_position_lps(points_node, index))
    return start_worker({"task": "refine", "model": model.path, "device": device, "point": point_to_dict(point)},
                        checked_image(volume_node), python)


def refine_volume(points_node, selected_volume):
    """The volume to refine ``points_node`` on: the one it was localized in while that is in the scene, else the
    selected one (a point list placed by hand, or its volume removed)."""
    return mrml.source_volume(points_node) or selected_volume


def apply_refinement(points_node, point_id: str, result: dict, volume_node, uncertain_below: float = 0.5) -> None:
    """Move the refined point (found by its ID: points removed or added meanwhile move the others' indices) and
    update its description and selection (uncertain = unselected)."""
    index = points_node.GetNthControlPointIndexByID(point_id) if points_node.GetScene() is not None else -1
    if index < 0:
        raise InputError("the point being refined was removed during the run; the scene was not changed")
    refined = mrml.place_on_slice([point_from_dict(result["points"][0])], mrml.volume_geometry(volume_node))[0]
    mrml.set_point(points_node, index, refined)
    mrml.set_engine_flag(points_node, index, not refined.selected)
    points_node.SetNthControlPointSelected(
        index, mrml.shown_as_confident(refined.selected, refined.properties, uncertain_below))
