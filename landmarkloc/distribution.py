"""Models too large for the repository: released as assets, listed with their sha256, fetched on demand.

The Extensions Index refuses repositories over 100 MB (history included), so
a model that will not fit is uploaded as release assets (its ``.json`` and
``.safetensors``) and listed in ``released_models.json`` beside this file with
each file's URL, size and sha256 (``python -m landmarkloc.distribution list-entry``
writes an entry from the local files). ``fetch`` downloads a listed model into
the cache folder with progress, checks every file's size and sha256, and only
then moves the files into place: a corrupt or interrupted download leaves
nothing behind, and a model already in the cache is not downloaded again.

Command line::

    python -m landmarkloc.distribution available
    python -m landmarkloc.distribution fetch NAME [NAME ...] [--cache FOLDER]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, ModelError

MODEL_LIST = Path(__file__).with_name("released_models.json")
LIST_SCHEMA_VERSION = 1
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # file name in the cache folder, e.g. big-model.safetensors
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ReleasedModel:
    name: str
    kind: str  # as in the model's metadata: "fcn" or "rpr" (which module offers it)
    files: tuple  # ReleasedFile: the metadata .json and the weights .safetensors
    stage: str = ""  # one-shot models: "coarse" or "fine" (which of RPR One-Shot's model lists offers it)

    @property
    def metadata_file(self) -> str:
        return next(f.name for f in self.files if f.name.endswith(".json"))

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "files": [vars(f) for f in self.files]}

    @classmethod
    def from_dict(cls, entry: dict) -> ReleasedModel:
        """An entry of the model list; ModelError for a file name outside the folder or a non-http(s) URL."""
        files = tuple(ReleasedFile(str(f["name"]), str(f["url"]), str(f["sha256"]).lower(), int(f["size"]))
                      for f in entry["files"])
        model = cls(str(entry["name"]), str(entry["kind"]), files, str(entry.get("stage", "")))
        for f in files:
            if Path(f.name).name != f.name or urllib.parse.urlsplit(f.url).scheme not in ("https", "http"):
                raise ModelError(f"{model.name}: file {f.name!r} must be a plain name with an http(s) URL")
        if not any(f.name.endswith(".json") for f in files):
            raise ModelError(f"{model.name}: the model list names no .json metadata file")
        return model


def read_model_list(path=None) -> list:
    """The released models of a model list file (default: the shipped list); ModelError when it is malformed."""
    path = MODEL_LIST if path is None else path
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("schema_version") != LIST_SCHEMA_VERSION:
            raise ModelError(f"{Path(path).name}: schema_version {data.get('schema_version')!r} is not "
                             f"{LIST_SCHEMA_VERSION}")
        return [ReleasedModel.from_dict(entry) for entry in data["models"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"cannot read the model list {path}: {type(exc).__name__}: {exc}") from None


def cache_folder() -> Path:
    """``$LANDMARKLOC_MODEL_CACHE``, else the user's cache folder (per platform) ``/landmarkloc/models``."""
    env = os.environ.get("LANDMARKLOC_MODEL_CACHE")
    if env:
        return Path(env)
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "landmarkloc" / "models"


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(model: ReleasedModel, folder) -> bool:
    """Whether every file of ``model`` is in ``folder`` with its listed size and sha256."""
    folder = Path(folder)
    return all((folder / f.name).is_file() and (folder / f.name).stat().st_size == f.size
               and sha256_of_file(folder / f.name) == f.sha256 for f in model.files)


def _download(released: ReleasedFile, target: Path, progress, done_before: int, total: int) -> None:
    """Stream one file to ``target`` (a temporary name), checking its size and sha256 on the way."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(released.url, timeout=60) as response, open(target, "wb") as out:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                received += len(chunk)
                if received > released.size:
                    break
                digest.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(done_before + received, total, released.name)
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise ModelError(f"downloading {released.name} from {released.url} failed: {exc}") from None
    if received != released.size or digest.hexdigest() != released.sha256:
        raise ModelError(f"the download of {released.name} is corrupt ({received} bytes, sha256 "
                         f"{digest.hexdigest()[:12]}..., expected {released.size} bytes, sha256 "
                         f"{released.sha256[:12]}...); nothing was kept, try again")


def fetch(model: ReleasedModel, folder=None, progress=None) -> Path:
    """Download ``model`` into ``folder`` (default: the cache) unless it is there already; its metadata path.

    ``progress(bytes_done, bytes_total, file_name)`` is called as data arrives. All files are downloaded and
    checked before any is moved into place, so a failure leaves the folder as it was.
    """
    folder = Path(folder) if folder is not None else cache_folder()
    if is_cached(model, folder):
        return folder / model.metadata_file
    folder.mkdir(parents=True, exist_ok=True)
    total = model.size
    parts, done = [], 0
    try:
        for released in model.files:
            part = folder / f".{released.name}.part"
            parts.append(part)
            _download(released, part, progress, done, total)
            done += released.size
        for released, part in zip(model.files, parts):
            os.replace(part, folder / released.name)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return folder / model.metadata_file


def released_model(name: str, models=None) -> ReleasedModel:
    models = read_model_list() if models is None else models
    for model in models:
        if model.name == name:
            return model
    known = ", ".join(m.name for m in models) or "none yet"
    raise InputError(f"no released model {name!r} (released: {known})")


def list_entry(metadata_path, url_base: str) -> dict:
    """The model list entry for a local model (its .json and .safetensors), as uploaded under ``url_base``."""
    from .io.modelfile import model_paths

    weights, meta = model_paths(metadata_path)
    files = []
    for path in (meta, weights):
        files.append({"name": path.name, "url": f"{url_base.rstrip('/')}/{path.name}",
                      "sha256": sha256_of_file(path), "size": path.stat().st_size})
    metadata = json.loads(meta.read_text(encoding="utf-8"))
    return {"name": meta.name[: -len(".json")], "kind": metadata.get("kind", ""), "stage": metadata.get("stage", ""),
            "files": files}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landmarkloc.distribution", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("available", help="list the released models and whether they are in the cache")
    fetch_parser = commands.add_parser("fetch", help="download released models into the cache")
    fetch_parser.add_argument("names", nargs="+")
    fetch_parser.add_argument("--cache", type=Path, default=None, help="folder to download into")
    entry_parser = commands.add_parser("list-entry", help="print the model list entry of a local model")
    entry_parser.add_argument("model", type=Path, help="the model's .json (its .safetensors beside it)")
    entry_parser.add_argument("--url-base", required=True, help="where the release assets are uploaded")
    args = parser.parse_args(argv)
    try:
        if args.command == "list-entry":
            print(json.dumps(list_entry(args.model, args.url_base), indent=2))
            return 0
        models = read_model_list()
        if args.command == "available":
            if not models:
                print("no released models: every model ships in models/")
            for model in models:
                state = "cached" if is_cached(model, cache_folder()) else "not downloaded"
                print(f"{model.name}\t{model.kind}\t{model.size / 1e6:.1f} MB\t{state}")
            return 0
        for name in args.names:
            model = released_model(name, models)

            def show(done, total, file_name, name=name):
                print(f"\r{name}: {file_name} {100 * done / max(total, 1):5.1f} %", end="", file=sys.stderr)

            path = fetch(model, args.cache, show)
            print(file=sys.stderr)
            print(path)
        return 0
    except (InputError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
