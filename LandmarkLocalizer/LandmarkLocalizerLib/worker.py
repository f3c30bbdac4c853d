"""The LandmarkLocalizer worker: ``python -m LandmarkLocalizerLib.worker request.json`` (see :mod:`.jobs`).

Tasks: ``localize`` (all landmarks, optional evidence map) and ``refine``
(one landmark's local stage from a user-moved point).
"""

from __future__ import annotations

import sys

from landmarkloc.errors import InputError

from . import engine
from .exchange import point_from_dict, point_to_dict, read_temporary_image, write_temporary_image
from .jobs import run_worker


def handle(request: dict, workdir, report) -> dict:
    task = request.get("task")
    if task not in ("localize", "refine"):
        raise InputError(f"unknown task {task!r}")
    report(0.05, "Loading model")
    model = engine.load(request["model"], request.get("device", "Auto"))
    report(0.15, "Reading volume")
    image = read_temporary_image(request["image"])
    if task == "refine":
        report(0.3, "Local stage")
        start = point_from_dict(request["point"])
        point = engine.refine(model, image, start.label, start.position)
        report(0.95, "Writing results")
        return {"points": [point_to_dict(point)]}
    report(0.3, "Global and local stage")
    result = engine.localize(model, image, bool(request.get("evidence")))
    report(0.9, "Writing results")
    out = {"points": [point_to_dict(p) for p in result.points], "not_found": list(result.not_found),
           "properties": result.properties, "warnings": list(result.warnings)}
    if result.evidence is not None:
        out["evidence"] = write_temporary_image(result.evidence, workdir / "evidence.mha")
    return out


if __name__ == "__main__":
    sys.exit(run_worker(handle))
