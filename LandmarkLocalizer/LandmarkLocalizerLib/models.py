"""The models a module offers: the shipped ``models/*.json`` of a kind, the released models already downloaded
into the cache folder (:mod:`landmarkloc.distribution`), plus files the user adds; and the released models that
can still be downloaded.

A model is checked when it is offered or added (metadata readable, right
kind, weights present and matching their sha256), without torch, so a
corrupt or wrong file is refused with a clear message before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from landmarkloc.errors import InputError, ModelError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.io.modelfile import model_paths, models_folder, verify_model


@dataclass
class ModelInfo:
    """What the GUI shows about a model and what the logic checks before running it."""

    path: str  # the .json metadata file
    name: str
    kind: str
    ndim: int
    landmarks: list = field(default_factory=list)
    description: str = ""
    stage: str = ""  # one-shot models: "coarse" or "fine"

    @property
    def label(self) -> str:
        what = f"{len(self.landmarks)} landmarks, " if self.landmarks else ""
        return f"{self.name} ({what}{self.ndim}D)"


def inspect_model(path, kind: str) -> ModelInfo:
    """Validate a model file (either of its two files) and describe it; raises ModelError."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    _, meta = verify_model(path, kind)
    meta_path = model_paths(path)[1]
    ndim = meta.get("ndim", 3)
    if ndim not in (2, 3):
        raise ModelError(f"{meta_path.name}: ndim must be 2 or 3, got {ndim!r}")
    landmarks = meta.get("landmark_names") or []
    name = str(meta.get("name") or meta_path.name[: -len(".json")])
    return ModelInfo(path=str(meta_path), name=name, kind=kind, ndim=int(ndim), landmarks=list(landmarks),
                     description=str(meta.get("description", "")), stage=str(meta.get("stage", "")))


def shipped_models(kind: str, folder=None) -> list:
    """Valid models of ``kind`` in the shipped folder, sorted by name (broken files are left out)."""
    folder = Path(folder) if folder is not None else models_folder()
    found = []
    for meta_path in sorted(folder.glob("*.json")):
        try:
            found.append(inspect_model(meta_path, kind))
        except ModelError:
            continue
    return sorted(found, key=lambda m: m.name.lower())


def check_model_fits(model: ModelInfo, geometry: ImageGeometry, volume_name: str) -> None:
    """Refuse a 2D model on a 3D volume (and vice versa) before any work starts."""
    single_slice = geometry.ndim == 2 or geometry.size[2] == 1
    if model.ndim == 2 and not single_slice:
        raise InputError(f"{model.name} is a 2D model, but {volume_name} is a 3D volume "
                         f"({geometry.size[2]} slices); load a 2D image or choose a 3D model")
    if model.ndim == 3 and single_slice:
        raise InputError(f"{model.name} is a 3D model, but {volume_name} is a single 2D slice; choose a 2D model")


def restore_saved_model(models: list, path: str, kind: str, stage: str = "") -> str:
    """The model path to select for ``path`` saved with a scene; a valid file not in ``models`` is added to it.

    A model the user added in an earlier session is not shipped, so it is not
    listed yet: it is checked and appended (for one-shot models only of the
    wanted ``stage``). Returns "" when the file is gone, broken or of the wrong
    kind or stage, so the module falls back to a listed model.
    """
    if not path:
        return ""
    if any(m.path == path for m in models):
        return path
    try:
        model = inspect_model(path, kind)
    except ModelError:
        return ""
    if stage and (model.stage == "fine") != (stage == "fine"):
        return ""
    if all(m.path != model.path for m in models):
        models.append(model)
    return model.path


def offered_models(kind: str) -> list:
    """The shipped models of ``kind`` and those downloaded into the cache folder."""
    from landmarkloc.distribution import cache_folder

    shipped = shipped_models(kind)
    cached = shipped_models(kind, cache_folder()) if cache_folder().is_dir() else []
    return shipped + [m for m in cached if all(m.name != s.name for s in shipped)]


def downloadable_models(kind: str, offered: list) -> list:
    """Released models of ``kind`` (ReleasedModel) not among ``offered``; none when the model list is unreadable."""
    from landmarkloc.distribution import read_model_list

    try:
        released = read_model_list()
    except ModelError:
        return []
    names = {m.name for m in offered}
    return [r for r in released if r.kind == kind and r.name not in names]
