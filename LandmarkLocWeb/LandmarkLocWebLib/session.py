"""One browser session's work on an MRML scene, without trame: open a volume, Localize, Refine, one-shot Find,
export. It is the Slicer modules' logic (``LandmarkLocalizerLib``, ``RPROneShotLib``), called as their widgets
call it: every check runs before the scene changes, the work runs in a worker process (:mod:`jobs`), and MRML
changes only in :meth:`WebSession.poll`, on the thread that serves the page.

Messages for the page are LandmarkLocError texts (one line each); nothing here shows a traceback.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from LandmarkLocalizerLib import logic as fcn_logic
from LandmarkLocalizerLib import mrml, sampledata
from LandmarkLocalizerLib.models import ModelInfo, offered_models
from RPROneShotLib import logic as rpr_logic

from landmarkloc.cli.outputs import input_name
from landmarkloc.errors import InputError, LandmarkLocError, ModelError
from landmarkloc.io.image import read_image
from landmarkloc.io.modelfile import models_folder

from .guard import WebConfig, allowed_path, check_upload_size, upload_file_name

UNCERTAIN_BELOW = 0.5  # the Landmark Localizer module's default 'uncertain below' (uncalibrated models only)
EXPORT_FORMATS = {"mrk.json": "application/json", "fcsv": "text/plain", "csv": "text/csv"}
BOX_COLOR = (0.34, 0.71, 0.91)  # Okabe-Ito sky blue, apart from the points' green and amber
log = logging.getLogger("landmarkloc.web")


@dataclass
class Template:
    """A saved one-shot template the page offers (``NAME.json`` + ``NAME.safetensors``)."""

    path: str
    name: str


@dataclass
class Status:
    """What the page shows about the running or last job."""

    busy: bool = False
    fraction: float = 0.0
    stage: str = ""
    message: str = ""  # the outcome, or what went wrong (one line)
    error: bool = False
    warnings: list = field(default_factory=list)


def find_templates(*folders) -> list:
    """Valid one-shot templates in ``folders`` (not recursive), by name; broken files are left out."""
    found = {}
    for folder in folders:
        for meta in sorted(Path(folder).glob("*.json")):
            try:
                rpr_logic.inspect_template(meta)
            except (LandmarkLocError, OSError, ValueError, KeyError):
                continue
            found.setdefault(meta.name[: -len(".json")], str(meta))
    return [Template(path, name) for name, path in sorted(found.items())]


class WebSession:
    """The scene's volume and results, and at most one running job (as in a module widget)."""

    def __init__(self, scene, config: WebConfig, python: str = None):
        self.scene = scene
        self.config = config
        self.python = python  # the worker's interpreter (default: this one)
        self.uploads = Path(tempfile.mkdtemp(prefix="landmarkloc-web-"))
        self.volume = None
        self.source_name = ""  # what the command line names outputs of this image after
        self.points = None
        self.rois = []
        self.status = Status()
        self._job = None
        self._finish = None
        self.fcn_models = offered_models("fcn")
        rpr = offered_models("rpr")
        self.coarse_models = [m for m in rpr if m.stage != "fine"]
        self.fine_models = [m for m in rpr if m.stage == "fine"]
        self.templates = find_templates(models_folder(), config.data_folder)

    # ------------------------------------------------------------------ volumes

    def open_path(self, relative: str):
        """An image inside the allowed folder (a file or a DICOM folder), read as the command line reads it."""
        path = allowed_path(self.config.data_folder, relative)
        return self._show_image(read_image(path), input_name(path))

    def open_upload(self, name: str, content: bytes):
        """An uploaded file (size-limited), read as the command line reads it, then removed from the disk."""
        name = upload_file_name(name)
        check_upload_size(name, len(content or b""), self.config.max_upload_bytes)
        if not content:
            raise InputError(f"{name} is empty")
        path = self.uploads / name
        path.write_bytes(content)
        try:
            image = read_image(path)
        finally:
            path.unlink(missing_ok=True)
        return self._show_image(image, input_name(name))

    def open_sample(self):
        """The MNI152 T1 template (from the nilearn package), as Slicer's sample data loads it."""
        self._clear()
        self.volume = sampledata.load_mni152(self.scene)
        self.source_name = input_name(sampledata.FILE_NAME)
        self.status = Status(message=f"Opened the sample {sampledata.SAMPLE_NAME}.")
        return self.volume

    def _show_image(self, image, name: str):
        self._clear()
        self.volume = mrml.image_to_volume(self.scene, image, name)
        self.volume.CreateDefaultDisplayNodes()
        self.source_name = name
        self.status = Status(message=f"Opened {name}.")
        return self.volume

    def _clear(self) -> None:
        """A new volume: the running job ends and the old volume and results leave the scene."""
        self.cancel()
        for node in [self.points, *self.rois, self.volume]:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.volume, self.points, self.rois, self.source_name = None, None, [], ""

    # ------------------------------------------------------------------ jobs

    @property
    def busy(self) -> bool:
        return self._job is not None

    def model(self, path: str, models: list) -> ModelInfo:
        for model in models:
            if model.path == path:
                return model
        raise ModelError("choose a model from the list")

    def localize(self, model_path: str) -> None:
        """Start Localize on the open volume; the points replace any earlier result."""
        model, volume = self.model(model_path, self.fcn_models), self.volume
        self._start("Localize", lambda: fcn_logic.start_localize(volume, model, self.config.device,
                                                                 python=self.python),
                    lambda result: self._localized(result, volume, model))

    def refine(self, index: int, model_path: str) -> None:
        """Start Refine of point ``index`` from where it is now (after the user moved it)."""
        model, points = self.model(model_path, self.fcn_models), self.points
        volume = fcn_logic.refine_volume(points, self.volume)
        point_id = points.GetNthControlPointID(index) if points is not None and \
            0 <= index < points.GetNumberOfControlPoints() else ""
        self._start("Refine", lambda: fcn_logic.start_refine(volume, model, points, index, self.config.device,
                                                             python=self.python),
                    lambda result: self._refined(result, points, point_id, volume))

    def find(self, template_path: str, coarse_path: str, fine_path: str = "") -> None:
        """Start one-shot Find of a saved template's points (and organ boxes) in the open volume."""
        if not template_path:
            raise InputError("choose a saved template")
        coarse = self.model(coarse_path, self.coarse_models)
        fine = self.model(fine_path, self.fine_models) if fine_path else None
        volume = self.volume
        self._start("Find", lambda: rpr_logic.start_find(volume, rpr_logic.Support(), "rpr", coarse, fine,
                                                         template_path, device=self.config.device,
                                                         python=self.python),
                    lambda result: self._found(result, volume))

    def _start(self, what: str, start, finish) -> None:
        """``start()`` checks the inputs and starts the worker (as the module widgets do); one job at a time."""
        if self._job is not None:
            raise InputError("a job is running: wait for it or cancel it")
        self._job, self._finish = start(), finish
        self.status = Status(busy=True, stage=f"{what}: starting")

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cleanup()
            self._job, self._finish = None, None
            self.status = Status(message="Cancelled.")

    def poll(self) -> bool:
        """Take the running job's events; apply its result once it is done. True while a job runs."""
        if self._job is None:
            return False
        for event in self._job.poll():
            if event.kind == "progress":
                self.status.fraction, self.status.stage = event.fraction, event.stage
            elif event.kind in ("done", "failed", "cancelled"):
                job, finish = self._job, self._finish
                self._job, self._finish = None, None
                try:
                    if event.kind == "done":
                        self.status = Status(message=finish(event.result),
                                             warnings=list(event.result.get("warnings", [])))
                    elif event.kind == "failed":  # the page shows the message; the server's output keeps the rest
                        log.warning("landmarkloc web: the job failed: %s", event.error)
                        self.status = Status(message=event.error.splitlines()[0], error=True)
                    else:
                        self.status = Status(message="Cancelled.")
                except LandmarkLocError as exc:
                    self.status = Status(message=str(exc), error=True)
                finally:
                    job.cleanup()
                return False
        return True

    def _localized(self, result: dict, volume, model: ModelInfo) -> str:
        self._remove_results()
        outcome = fcn_logic.apply_localization(self.scene, result, volume, model, UNCERTAIN_BELOW)
        self.points = outcome.points_node
        missing = ", ".join(outcome.not_found)
        return f"Found {self.points.GetNumberOfControlPoints()} landmarks." + \
            (f" Not found: {missing}." if missing else "")

    def _refined(self, result: dict, points, point_id: str, volume) -> str:
        fcn_logic.apply_refinement(points, point_id, result, volume, UNCERTAIN_BELOW)
        return f"Refined {points.GetNthControlPointLabel(points.GetNthControlPointIndexByID(point_id))}."

    def _found(self, result: dict, volume) -> str:
        self._remove_results()
        outcome = rpr_logic.apply_find(self.scene, result, volume)
        self.points, self.rois = outcome.points_node, outcome.roi_nodes
        for roi in self.rois:
            if roi.GetDisplayNode() is None:
                roi.CreateDefaultDisplayNodes()
            display = roi.GetDisplayNode()
            display.SetFillVisibility(False)  # a translucent fill hides the 3D view's volume behind it
            display.SetSelectedColor(*BOX_COLOR)
            display.SetColor(*BOX_COLOR)
            display.SetHandlesInteractive(False)
        boxes = f" and {len(self.rois)} boxes" if self.rois else ""
        return f"Found {self.points.GetNumberOfControlPoints()} points{boxes}."

    def _remove_results(self) -> None:
        for node in [self.points, *self.rois]:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.points, self.rois = None, []

    # ------------------------------------------------------------------ results

    def rows(self) -> list:
        """The results table: one dict per point (RAS world position, as Slicer shows coordinates)."""
        if self.points is None:
            return []
        return [{"index": row.index, "label": row.label, "position": row.position_text,
                 "confidence": row.confidence_text, "radius": row.radius_text,
                 "status": "uncertain" if row.uncertain else "ok"} for row in mrml.result_rows(self.points)]

    def point_ras(self, index: int) -> list:
        ras = [0.0, 0.0, 0.0]
        self.points.GetNthControlPointPositionWorld(index, ras)
        return ras

    def export(self, fmt: str) -> tuple:
        """(file name, text) of the points in ``fmt``, exactly as ``landmarkloc localize -o FOLDER/`` writes them
        for the same image (LPS, named after the input)."""
        if fmt not in EXPORT_FORMATS:
            raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if self.points is None:
            raise InputError("there are no points to export: Localize or Find first")
        name = f"{self.source_name or self.points.GetName()}.{fmt}"
        folder = Path(tempfile.mkdtemp(prefix="landmarkloc-export-"))
        try:
            mrml.export_points(self.points, folder / name, name="")
            return name, (folder / name).read_text(encoding="utf-8")
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.cancel()
        shutil.rmtree(self.uploads, ignore_errors=True)
