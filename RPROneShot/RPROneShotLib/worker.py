"""The RPROneShot worker: ``python -m RPROneShotLib.worker request.json`` (see ``LandmarkLocalizerLib.jobs``).

Tasks: ``template`` (make and save a template from a support) and ``locate``
(find the points and organ boxes in a query with rpr, ncc or registration).
The support is a point list or a label map whose organs give six extreme
points each; the template, once saved, replaces the support for rpr.
"""

from __future__ import annotations

from LandmarkLocalizerLib.devices import run_with_cpu_fallback
from LandmarkLocalizerLib.exchange import (
    box_to_dict,
    point_from_dict,
    point_to_dict,
    read_temporary_image,
)
from LandmarkLocalizerLib.jobs import exit_worker, run_worker

from landmarkloc.errors import InputError
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE

from . import engine


def support_points(request: dict, report) -> list:
    support = request.get("support") or {}
    if support.get("labelmap"):
        report(0.1, "Extreme points of the organs")
        labelmap = read_temporary_image(support["labelmap"])
        return engine.support_from_labels(labelmap, support["labels"], support["names"])
    points = [point_from_dict(d) for d in support.get("points", [])]
    if not points:
        raise InputError("the support has no points: place points or choose a segmentation")
    return points


def handle(request: dict, workdir, report) -> dict:
    task = request.get("task")
    method = request.get("method", "rpr")
    if task not in ("template", "locate"):
        raise InputError(f"unknown task {task!r}")
    if method not in engine.METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(engine.METHODS)}")
    if task == "locate" and method != "rpr":
        report(0.05, "Reading support and query")
        points = support_points(request, report)
        support_image = read_temporary_image(request["support"]["image"])
        query = read_temporary_image(request["query"])
        report(0.2, "Registering" if method == "registration" else "Template matching")
        found, boxes, warnings = engine.locate_baseline(method, query, support_image, points)
        report(0.95, "Writing results")
        return {"points": [point_to_dict(p) for p in found], "boxes": [box_to_dict(b) for b in boxes],
                "warnings": warnings, "device": "cpu"}
    def run(device: str) -> tuple:
        report(0.05, "Loading models")
        locator = engine.load_locator(request["model"], request.get("fine_model"), device, request.get("steps", 1))
        if request.get("template") and task == "locate":
            report(0.15, "Loading template")
            template = engine.load_template(request["template"])
        else:
            points = support_points(request, report)
            report(0.2, "Encoding the support")
            template = engine.make_template(locator, read_temporary_image(request["support"]["image"]), points)
        if task == "template":
            report(0.9, "Saving template")
            engine.save_template(template, request["save_to"])
            return {"template": request["save_to"], "names": list(template.names)}, str(locator.device)
        report(0.4, f"Locating ({request.get('runs', 15)} runs)")
        found, boxes, warnings = engine.locate_rpr(locator, template, read_temporary_image(request["query"]),
                                                   request.get("runs", 15), request.get("seed", 0),
                                                   request.get("refine", DEFAULT_REFINE_MODE), report)
        return {"points": [point_to_dict(p) for p in found], "boxes": [box_to_dict(b) for b in boxes],
                "warnings": warnings}, str(locator.device)

    out, device, device_warnings = run_with_cpu_fallback(run, request.get("device", "Auto"), report)
    report(0.95, "Writing results")
    return {**out, "device": device, "warnings": device_warnings + out.get("warnings", [])}


if __name__ == "__main__":
    exit_worker(run_worker(handle))
