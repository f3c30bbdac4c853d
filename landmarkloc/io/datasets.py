"""Dataset descriptions for training: which images, which landmarks, where.

Three ways to describe a dataset (``load_dataset`` picks by what it is given):

* **A folder** of images, each with a landmark file of the same stem
  (``IMG.mrk.json``, ``IMG.fcsv`` or ``IMG.csv``) in the same folder or in the
  folder given as ``landmarks_dir``.
* **A CSV list** with columns ``image,landmarks`` (paths relative to the CSV) and an
  optional ``mask`` column (a foreground mask, used for skull-stripped training copies).
* **A pixel table** with columns ``image,landmark,x_px,y_px`` (``index``
  optional), e.g. the ISBI 2015 cephalometric ``landmarks.csv``: pixel
  coordinates (x = column, y = row, pixel centres at integers) of images found
  next to the table or in its ``images/`` folder. Picture formats store no
  pixel size, so ``spacing`` is required for them.

Landmark names come from the files; a landmark missing in some image is
marked as not annotated there (NaN) rather than dropping the image.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..geometry.frames import ImageGeometry, from_point3
from .image import PLAIN_2D_SUFFIXES, VOLUME_SUFFIXES, read_image
from .markups import read_points

MARKUP_SUFFIXES = (".mrk.json", ".fcsv", ".csv", ".json")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + PLAIN_2D_SUFFIXES


@dataclass
class DatasetCase:
    """One image and its landmarks (LPS mm, or pixel indices for pixel tables)."""

    name: str
    image_path: Path
    points_lps: dict = field(default_factory=dict)  # label -> (3,) LPS mm
    points_index: dict = field(default_factory=dict)  # label -> (D,) continuous ITK index
    mask_path: Path | None = None  # optional foreground mask (e.g. brain) for skull-stripped copies

    def load(self, names, spacing=None) -> tuple:
        """(image, landmarks (L, D) in LPS mm with NaN rows for missing names)."""
        image = read_image(self.image_path, spacing=spacing)
        geometry = ImageGeometry.from_image(image)
        out = np.full((len(names), geometry.ndim), np.nan)
        for row, name in enumerate(names):
            if name in self.points_lps:
                out[row] = from_point3(self.points_lps[name], geometry.ndim)
            elif name in self.points_index:
                out[row] = geometry.index_to_physical(self.points_index[name])
        return image, out


@dataclass
class LandmarkDataset:
    cases: list
    names: list  # landmark names in first-seen order

    def summary(self) -> dict:
        counts = {n: sum(n in c.points_lps or n in c.points_index for c in self.cases) for n in self.names}
        return {"images": len(self.cases), "landmarks": list(self.names), "annotations_per_landmark": counts}

    def subset(self, indices) -> LandmarkDataset:
        return LandmarkDataset([self.cases[i] for i in indices], list(self.names))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES + MARKUP_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES) and not name.startswith(".")


def _names_in_order(cases) -> list:
    names = []
    for c in cases:
        for n in list(c.points_lps) + list(c.points_index):
            if n not in names:
                names.append(n)
    return names


def _points_from_file(path: Path) -> dict:
    points = read_points(path)
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise InputError(f"{path.name}: landmark labels must be unique within a file")
    return {p.label: p.position for p in points}


def _landmark_file(stem: str, folders) -> Path | None:
    for folder in folders:
        for suffix in (".mrk.json", ".fcsv", ".csv"):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _from_folder(folder: Path, landmarks_dir: Path | None) -> list:
    folders = [landmarks_dir] if landmarks_dir else [folder]
    cases = []
    for path in sorted(p for p in folder.iterdir() if _is_image(p)):
        stem = _stem(path)
        lm_file = _landmark_file(stem, folders)
        if lm_file is None:
            continue
        cases.append(DatasetCase(stem, path, points_lps=_points_from_file(lm_file)))
    if not cases:
        raise InputError(f"no images with landmark files (IMG.mrk.json/.fcsv/.csv) found in {folder}")
    return cases


def _read_table(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not a text file") from None
    return list(csv.DictReader(io.StringIO(text)))


def _resolve(base: Path, name: str, extra=()) -> Path:
    for folder in (base, *extra):
        candidate = folder / name
        if candidate.exists():
            return candidate
    raise InputError(f"image {name!r} listed in the dataset was not found next to it")


def _from_list(path: Path, rows: list) -> list:
    base = path.parent
    cases = []
    for n, row in enumerate(rows, start=2):
        if not row.get("image") or not row.get("landmarks"):
            raise InputError(f"{path.name} line {n}: needs 'image' and 'landmarks'")
        image = _resolve(base, row["image"])
        mask = _resolve(base, row["mask"]) if row.get("mask") else None
        cases.append(DatasetCase(_stem(image), image, points_lps=_points_from_file(_resolve(base, row["landmarks"])),
                                 mask_path=mask))
    return cases


def _from_pixel_table(path: Path, rows: list) -> list:
    base = path.parent
    by_image: dict = {}
    for n, row in enumerate(rows, start=2):
        try:
            xy = np.array([float(row["x_px"]), float(row["y_px"])])
        except (TypeError, ValueError):
            raise InputError(f"{path.name} line {n}: x_px and y_px must be numbers") from None
        if not np.all(np.isfinite(xy)):
            raise InputError(f"{path.name} line {n}: x_px and y_px must be finite")
        label = str(row["landmark"]).strip()
        points = by_image.setdefault(row["image"].strip(), {})
        if label in points:
            raise InputError(f"{path.name} line {n}: landmark {label!r} given twice for {row['image']}")
        points[label] = xy
    cases = []
    for image_name, points in by_image.items():
        image = _resolve(base, image_name, extra=(base / "images",))
        cases.append(DatasetCase(_stem(image), image, points_index=points))
    return cases


def load_dataset(source, landmarks_dir=None) -> LandmarkDataset:
    """Read a dataset description (folder, CSV list or pixel table); images are read later."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"dataset not found: {source}")
    if source.is_dir():
        cases = _from_folder(source, Path(landmarks_dir) if landmarks_dir else None)
    else:
        rows = _read_table(source)
        columns = set(rows[0]) if rows else set()
        if {"image", "landmark", "x_px", "y_px"} <= columns:
            cases = _from_pixel_table(source, rows)
        elif {"image", "landmarks"} <= columns:
            cases = _from_list(source, rows)
        else:
            raise InputError(f"{source.name}: a dataset table needs the columns image,landmarks "
                             "or image,landmark,x_px,y_px")
    if not cases:
        raise InputError(f"dataset {source} lists no images")
    names = _names_in_order(cases)
    if not names:
        raise InputError(f"dataset {source} has no landmarks")
    return LandmarkDataset(cases, names)

