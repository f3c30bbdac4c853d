"""The LandmarkLocalizer worker: ``python -m LandmarkLocalizerLib.worker request.json`` (see :mod:`.jobs`).

Tasks: ``localize`` (all landmarks, optional evidence map), ``refine``
(one landmark's local stage from a user-moved point) and ``download`` (a
released model into the cache folder, for both modules).
"""

from __future__ import annotations

from landmarkloc.errors import InputError

from . import engine
from .devices import run_with_cpu_fallback
from .exchange import point_from_dict, point_to_dict, read_temporary_image, write_temporary_image
from .jobs import exit_worker, run_worker


def handle(request: dict, workdir, report) -> dict:
    task = request.get("task")
    if task == "download":
        return download(request, report)
    if task not in ("localize", "refine"):
        raise InputError(f"unknown task {task!r}")
    report(0.02, "Reading image")
    image = read_temporary_image(request["image"])

    def run(device: str) -> tuple:
        report(0.05, "Loading model")
        model = engine.load(request["model"], device)
        if task == "refine":
            start = point_from_dict(request["point"])
            return engine.refine(model, image, start.label, start.position, report), str(model.device)
        return engine.localize(model, image, bool(request.get("evidence")), report), str(model.device)

    result, device, device_warnings = run_with_cpu_fallback(run, request.get("device", "Auto"), report)
    report(0.95, "Writing results")
    if task == "refine":
        return {"points": [point_to_dict(result)], "device": device, "warnings": device_warnings}
    out = {"points": [point_to_dict(p) for p in result.points], "not_found": list(result.not_found),
           "properties": result.properties, "warnings": device_warnings + list(result.warnings), "device": device}
    if result.evidence is not None:
        out["evidence"] = write_temporary_image(result.evidence, workdir / "evidence.mha")
    return out


def download(request: dict, report) -> dict:
    from landmarkloc.distribution import ReleasedModel, fetch

    released = ReleasedModel.from_dict(request["release"])
    reported = [-1]

    def progress(done: int, total: int, file_name: str) -> None:
        percent = 100 * done // max(total, 1)
        if percent != reported[0]:  # a line per percent, not per chunk
            reported[0] = percent
            report(done / max(total, 1), f"Downloading {file_name} ({done / 1e6:.0f} of {total / 1e6:.0f} MB)")

    return {"model": str(fetch(released, request["folder"], progress))}


if __name__ == "__main__":
    exit_worker(run_worker(handle))
