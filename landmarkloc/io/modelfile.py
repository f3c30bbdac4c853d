"""Model files: ``NAME.safetensors`` (weights) + ``NAME.json`` (metadata), never pickle.

safetensors holds tensors only, so loading a model cannot run code. The JSON
records what the weights need to be used correctly (kind, dimensionality,
landmark names, spacing, intensity preset, architecture) and the sha256 of the
weights file, checked at load so a damaged or swapped file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..errors import ModelError
from .atomic import atomic_path, write_text_atomic

FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def models_folder() -> Path:
    """Where the shipped models are: ``$LANDMARKLOC_MODELS``; else ``models/`` next to the package (a clone,
    installed with ``pip install -e`` or not, and the built Slicer extension, which installs ``models/`` beside
    ``landmarkloc``); else ``<prefix>/share/landmarkloc/models``, where a wheel installs them (pyproject.toml).
    """
    env = os.environ.get("LANDMARKLOC_MODELS")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "models"
    installed = Path(sys.prefix) / "share" / "landmarkloc" / "models"
    return installed if not beside.is_dir() and installed.is_dir() else beside


def shipped_model_names(kinds=None) -> list:
    """Names of the shipped models (of the given kinds), sorted; a folder without models gives []."""
    names = []
    for meta_path in sorted(models_folder().glob("*.json")):
        try:
            kind = json.loads(meta_path.read_text(encoding="utf-8")).get("kind")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if kind and (kinds is None or kind in kinds) and model_paths(meta_path)[0].is_file():
            names.append(meta_path.name[: -len(".json")])
    return names


def shipped_model(name: str) -> Path:
    """The weights path of a shipped model, e.g. ``shipped_model("brain-t1-ixi16")``; ModelError if absent."""
    path = models_folder() / f"{name}.safetensors"
    if not path.is_file():
        raise ModelError(f"the model {name!r} is not in {models_folder()} (set LANDMARKLOC_MODELS or train it with "
                         f"models/recipes/)")
    return path


def find_model(path) -> Path:
    """The model to read for ``path``: the path itself when its files exist (a path always wins), else, for a
    bare name such as ``brain-t1-ixi16``, the shipped model of that name (from any working folder)."""
    path = Path(path)
    weights, meta = model_paths(path)
    if weights.exists() or meta.exists() or len(path.parts) != 1:
        return path
    shipped = models_folder() / path.name
    return shipped if model_paths(shipped)[1].is_file() else path


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_paths(path) -> tuple:
    """(weights, metadata) paths for a model given by either file or the common stem."""
    path = Path(path)
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"{name} is a pickle-based checkpoint; those can run code when loaded and are refused. "
                         "Convert it once with 'landmarkloc import-model' (weights only) if you trust it.")
    if name.endswith(".safetensors"):
        stem = path.with_name(name[: -len(".safetensors")])
    elif name.endswith(".json"):
        stem = path.with_name(name[: -len(".json")])
    else:
        stem = path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_model(path, tensors: dict, metadata: dict) -> tuple:
    """Write weights and metadata (with format version and sha256); returns both paths."""
    from safetensors.torch import save_file

    weights, meta_path = model_paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        digest = sha256_of(tmp)
    meta = dict(metadata)
    meta.update({"format_version": FORMAT_VERSION, "weights": weights.name, "sha256": digest})
    write_text_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return weights, meta_path


def as_float16(tensors: dict) -> dict:
    """The floating-point tensors in half precision (half the file; networks load them back into float32
    parameters, ``load_state_dict`` casts), integer ones (batch-norm counters) as they are."""
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def read_metadata(path) -> dict:
    """The validated metadata of a model (no weights loaded); ``path`` may name a shipped model."""
    _, meta_path = model_paths(find_model(path))
    if not meta_path.is_file():
        shipped = ", ".join(shipped_model_names()) or "none"
        raise ModelError(f"model metadata not found: {meta_path} (a model is NAME.safetensors + NAME.json, "
                         f"or the name of a shipped model: {shipped})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model metadata {meta_path.name} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"model metadata {meta_path.name} must be a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{meta_path.name}: unsupported model format version {version!r} "
                         f"(this landmarkloc reads version {FORMAT_VERSION})")
    for key in ("kind", "sha256"):
        if not isinstance(meta.get(key), str):
            raise ModelError(f"{meta_path.name}: metadata lacks '{key}'")
    return meta


def verify_model(path, kind: str = None) -> tuple:
    """(weights path, metadata) after checking kind, format version and the weights' sha256 (no torch needed)."""
    path = find_model(path)
    weights, meta_path = model_paths(path)
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise ModelError(f"{meta_path.name} is a '{meta['kind']}' model, but a '{kind}' model is needed here")
    if not weights.is_file():
        raise ModelError(f"model weights not found: {weights}")
    if sha256_of(weights) != meta["sha256"]:
        raise ModelError(f"{weights.name} does not match its metadata (sha256 differs): "
                         "the file is damaged, truncated or was replaced")
    return weights, meta


def load_model(path, kind: str = None) -> tuple:
    """Load (tensors, metadata), checking kind, format version and the weights' sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta = verify_model(path, kind)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read weights {weights.name}: {exc}") from None
    return tensors, meta
