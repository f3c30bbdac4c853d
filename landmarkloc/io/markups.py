"""Slicer markups files: point lists and ROI boxes in .mrk.json, legacy .fcsv, and plain CSV.

Positions are LPS millimetres in memory. Files say which system they use
(``coordinateSystem``); we write LPS by default (Slicer's default for files)
and RAS on request, and read both. Per-point values such as a confidence are
kept in ``ControlPoint.properties``: in .mrk.json/.fcsv they travel in the
point description as ``key=value`` pairs, in CSV as extra columns.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, InputWarning
from ..geometry.frames import lps_to_ras, lps_to_ras_matrix, ras_to_lps
from ..points import Box, ControlPoint
from .atomic import write_text_atomic

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
    "Schema/markups-schema-v1.0.3.json#"
)
COORDINATE_SYSTEMS = ("LPS", "RAS")
POINT_LIST_TYPES = ("Fiducial", "PointList")  # markups types whose control points are landmarks
_PROPERTY_SEPARATOR = "; "
_CSV_COLUMNS = ("label", "x", "y", "z", "coordinate_system", "selected", "description")


def _check_system(coordinate_system: str) -> str:
    cs = str(coordinate_system).upper()
    if cs not in COORDINATE_SYSTEMS:
        raise InputError(f"unknown coordinate system {coordinate_system!r}; use LPS or RAS")
    return cs


def _format_number(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def describe(point: ControlPoint) -> str:
    """The description written to files: the free text, then ``key=value`` properties."""
    parts = [point.description] if point.description else []
    parts += [f"{k}={_format_number(v)}" for k, v in point.properties.items()]
    return _PROPERTY_SEPARATOR.join(parts)


def _parse_value(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def split_description(text: str) -> tuple:
    """Inverse of :func:`describe`: separate ``key=value`` properties from free text."""
    free, props = [], {}
    for part in (text or "").split(";"):
        part = part.strip()
        key, sep, value = part.partition("=")
        if sep and key and " " not in key.strip():
            props[key.strip()] = _parse_value(value.strip())
        elif part:
            free.append(part)
    return _PROPERTY_SEPARATOR.join(free), props


def _file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "json"
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".csv"):
        return "csv"
    raise InputError(f"unknown markups format for {path.name}; use .mrk.json, .fcsv or .csv")


def _finite_position(values, where: str) -> np.ndarray:
    """Three finite numbers: markups are 3D (points of 2D images have z = 0), so 2 numbers are a damaged point,
    not a point at z = 0."""
    try:
        p = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: position is not a list of numbers") from None
    if p.size != 3 or not np.all(np.isfinite(p)):
        raise InputError(f"{where}: position must be 3 finite numbers (x, y, z), got {p.size}")
    return p


# --------------------------------------------------------------------------- writing


def _to_system(p: np.ndarray, cs: str) -> list:
    return [float(v) for v in (lps_to_ras(p) if cs == "RAS" else p)]


def _identity_orientation(cs: str) -> list:
    # Slicer stores each control point's orientation in the file's coordinate system.
    return [float(v) for v in lps_to_ras_matrix(np.eye(3)).ravel()] if cs == "LPS" else np.eye(3).ravel().tolist()


def _control_point_json(index: int, label: str, position: np.ndarray, description: str, selected: bool,
                        cs: str) -> dict:
    return {
        "id": str(index + 1), "label": label, "description": description, "associatedNodeID": "",
        "position": _to_system(position, cs), "orientation": _identity_orientation(cs),
        "selected": bool(selected), "locked": False, "visibility": True, "positionStatus": "defined",
    }


def points_to_json(points, coordinate_system: str = "LPS", name: str = "") -> str:
    cs = _check_system(coordinate_system)
    markup = {
        "type": "Fiducial", "coordinateSystem": cs, "coordinateUnits": "mm", "locked": False,
        "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(points),
        "controlPoints": [_control_point_json(i, p.label, p.position, describe(p), p.selected, cs)
                          for i, p in enumerate(points)],
        "measurements": [],
    }
    if name:
        markup["name"] = name
    return json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [markup]}, indent=4)


def boxes_to_json(boxes, coordinate_system: str = "LPS") -> str:
    cs = _check_system(coordinate_system)
    markups = []
    for box in boxes:
        orientation = lps_to_ras_matrix(box.orientation) if cs == "RAS" else box.orientation
        markups.append({
            "type": "ROI", "name": box.name, "coordinateSystem": cs, "coordinateUnits": "mm", "locked": False,
            "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": 1,
            "roiType": "Box", "center": _to_system(box.center, cs),
            "orientation": [float(v) for v in orientation.ravel()],
            "size": [float(v) for v in box.size], "insideOut": False,
            # MRML reads the size as 0 unless the centre control point is present, as in its own files.
            "controlPoints": [_control_point_json(0, box.name, box.center, box.description, True, cs)],
            "measurements": [],
        })
    return json.dumps({"@schema": MARKUPS_SCHEMA, "markups": markups}, indent=4)


def _check_one_line(points) -> None:
    """.fcsv is read line by line (by Slicer too): a label or description with a line break cannot come back."""
    for p in points:
        for what, text in (("label", p.label), ("description", describe(p))):
            if "\n" in text or "\r" in text:
                raise InputError(f"point {what} {text!r} holds a line break, which .fcsv cannot store; write "
                                 ".mrk.json or .csv")


def points_to_fcsv(points, coordinate_system: str = "LPS") -> str:
    cs = _check_system(coordinate_system)
    _check_one_line(points)
    out = io.StringIO()
    out.write("# Markups fiducial file version = 4.11\n")
    out.write(f"# CoordinateSystem = {cs}\n")
    out.write("# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
    writer = csv.writer(out, lineterminator="\n")
    for i, p in enumerate(points):
        x, y, z = _to_system(p.position, cs)
        writer.writerow([f"vtkMRMLMarkupsFiducialNode_{i}", repr(x), repr(y), repr(z), 0, 0, 0, 1, 1,
                         int(p.selected), 0, p.label, describe(p), ""])
    return out.getvalue()


def points_to_csv(points, coordinate_system: str = "LPS") -> str:
    cs = _check_system(coordinate_system)
    keys = []
    for p in points:
        keys += [k for k in p.properties if k not in keys]
    clash = set(keys) & set(_CSV_COLUMNS)
    if clash:
        raise ValueError(f"point properties {sorted(clash)} clash with the CSV's own columns")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_CSV_COLUMNS, *keys])
    for p in points:
        x, y, z = _to_system(p.position, cs)
        writer.writerow([p.label, repr(x), repr(y), repr(z), cs, int(p.selected), p.description,
                         *[_format_number(p.properties[k]) if k in p.properties else "" for k in keys]])
    return out.getvalue()


def write_points(path, points, coordinate_system: str = "LPS", name: str = "") -> None:
    """Write a point list; the format follows the suffix (.mrk.json, .fcsv, .csv)."""
    path = Path(path)
    fmt = _file_format(path)
    text = {"json": lambda: points_to_json(points, coordinate_system, name or _stem(path)),
            "fcsv": lambda: points_to_fcsv(points, coordinate_system),
            "csv": lambda: points_to_csv(points, coordinate_system)}[fmt]()
    write_text_atomic(path, text)


def write_boxes(path, boxes, coordinate_system: str = "LPS") -> None:
    """Write ROI boxes to a .mrk.json file (one ROI markup per box)."""
    path = Path(path)
    if _file_format(path) != "json":
        raise InputError(f"ROI boxes are written as .mrk.json, not {path.name}")
    write_text_atomic(path, boxes_to_json(boxes, coordinate_system))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".mrk.json", ".json", ".fcsv", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --------------------------------------------------------------------------- reading


def _load_json(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name} is not valid markups JSON: {exc}") from None
    markups = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(markups, list) or not all(isinstance(m, dict) for m in markups):
        raise InputError(f"{path.name} has no 'markups' list; is it a Slicer markups file?")
    return markups


def _markup_system(markup: dict, where: str) -> str:
    cs = str(markup.get("coordinateSystem", "LPS")).upper()
    if cs not in COORDINATE_SYSTEMS:
        raise InputError(f"{where}: unsupported coordinateSystem {cs!r}")
    return cs


def _from_system(values, cs: str, where: str) -> np.ndarray:
    p = _finite_position(values, where)
    return ras_to_lps(p) if cs == "RAS" else p


def _point_from_json(cp, cs: str, where: str) -> ControlPoint:
    if not isinstance(cp, dict) or "position" not in cp:
        raise InputError(f"{where}: control point without a position")
    text, props = split_description(str(cp.get("description", "")))
    return ControlPoint(label=str(cp.get("label", "")), position=_from_system(cp["position"], cs, where),
                        description=text, selected=bool(cp.get("selected", True)), properties=props)


def _read_json_points(path: Path) -> list:
    """The control points of the file's point lists; curves, lines, angles, planes and ROIs are not landmarks."""
    points, others, markups = [], [], _load_json(path)
    for m, markup in enumerate(markups):
        where = f"{path.name} markup {m}"
        if str(markup.get("type", "Fiducial")) not in POINT_LIST_TYPES:
            others.append(str(markup.get("type")))
            continue
        cs = _markup_system(markup, where)
        cps = markup.get("controlPoints", [])
        if not isinstance(cps, list):
            raise InputError(f"{where}: controlPoints is not a list")
        for cp in cps:
            if isinstance(cp, dict) and cp.get("positionStatus", "defined") != "defined":
                continue  # placeholders Slicer keeps for points not placed yet
            points.append(_point_from_json(cp, cs, where))
    if others and len(others) == len(markups):
        raise InputError(f"{path.name} holds no point list, only {', '.join(dict.fromkeys(others))} markups; "
                         "landmarks are read from point lists (Slicer's Point List, type Fiducial)")
    return points


def _fcsv_header(lines, name: str) -> tuple:
    """(coordinate system, columns) from the ``#`` lines. Without a CoordinateSystem line the numbers are RAS
    when the file says it was written before Slicer 4.11 (which wrote only RAS) or says no version, else LPS (as
    Slicer 5 reads such files); either way a warning says which."""
    cs, columns, version = None, None, None
    for line in lines:
        if not line.startswith("#"):
            continue
        key, _, value = line[1:].partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "coordinatesystem":
            cs = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}.get(value.upper())
            if cs is None:
                raise InputError(f"{name}: unsupported coordinate system {value!r}")
        elif key == "columns":
            columns = [c.strip() for c in value.split(",")]
        elif key == "markups fiducial file version":
            version = value
    if cs is None:
        cs = "RAS" if _before_4_11(version) else "LPS"
        written = f"written by Slicer {version}" if version else "without a version"
        warnings.warn(f"{name} has no CoordinateSystem line; read as {cs} ({written})", InputWarning, stacklevel=3)
    return cs, columns


def _before_4_11(version) -> bool:
    try:
        return tuple(int(v) for v in str(version).split(".")[:2]) < (4, 11)
    except ValueError:
        return True  # no readable version: a file from before the versioned format, RAS


def _read_fcsv(path: Path) -> list:
    lines = _read_text(path).splitlines()
    cs, columns = _fcsv_header(lines, path.name)
    points = []
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("#") or not line.strip():
            continue
        row = next(csv.reader([line]))
        cols = columns or ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc"]
        rec = dict(zip(cols, row))
        where = f"{path.name} line {lineno}"
        if not {"x", "y", "z"} <= rec.keys():
            raise InputError(f"{where}: expected x, y, z columns")
        desc, props = split_description(rec.get("desc", ""))
        points.append(ControlPoint(label=rec.get("label", ""),
                                   position=_from_system([rec["x"], rec["y"], rec["z"]], cs, where),
                                   description=desc, selected=rec.get("sel", "1").strip() != "0",
                                   properties=props))
    return points


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not a text file") from None


def _read_csv(path: Path) -> list:
    rows = list(csv.DictReader(io.StringIO(_read_text(path))))
    points = []
    for n, row in enumerate(rows, start=2):
        where = f"{path.name} line {n}"
        if not {"label", "x", "y", "z"} <= set(row):
            raise InputError(f"{path.name}: needs the columns label, x, y, z")
        cs = str(row.get("coordinate_system") or "LPS").upper()
        if cs not in COORDINATE_SYSTEMS:
            raise InputError(f"{where}: unsupported coordinate system {cs!r}")
        props = {k: _parse_value(v) for k, v in row.items()
                 if k not in _CSV_COLUMNS and k is not None and v not in ("", None)}
        points.append(ControlPoint(label=row["label"], position=_from_system([row["x"], row["y"], row["z"]], cs, where),
                                   description=row.get("description") or "",
                                   selected=str(row.get("selected", "1")).strip() not in ("0", "false", "False"),
                                   properties=props))
    return points


def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"markups file not found: {path}")
    return path


def read_points(path) -> list:
    """Read a point list (.mrk.json, .fcsv or .csv) as ControlPoints in LPS."""
    path = _existing(path)
    fmt = _file_format(path)
    return {"json": _read_json_points, "fcsv": _read_fcsv, "csv": _read_csv}[fmt](path)


def read_boxes(path) -> list:
    """Read every ROI markup of a .mrk.json file as a Box in LPS."""
    path = _existing(path)
    if _file_format(path) != "json":
        raise InputError(f"ROI boxes are read from .mrk.json files, not {path.name}")
    boxes = []
    for m, markup in enumerate(_load_json(path)):
        if markup.get("type") != "ROI":
            continue
        where = f"{path.name} markup {m}"
        cs = _markup_system(markup, where)
        cps = markup.get("controlPoints") or []
        center = markup.get("center")
        if center is None and cps and isinstance(cps[0], dict):
            center = cps[0].get("position")
        if center is None or "size" not in markup:
            raise InputError(f"{where}: ROI without centre or size")
        size = _finite_position(markup["size"], where)
        orientation = np.asarray(markup.get("orientation", np.eye(3).ravel()), dtype=np.float64)
        if orientation.size != 9 or not np.all(np.isfinite(orientation)):
            raise InputError(f"{where}: ROI orientation must be 9 numbers")
        orientation = orientation.reshape(3, 3)
        if cs == "RAS":
            orientation = lps_to_ras_matrix(orientation)
        name = markup.get("name") or (cps[0].get("label") if cps and isinstance(cps[0], dict) else "") or f"ROI{m}"
        desc = cps[0].get("description", "") if cps and isinstance(cps[0], dict) else ""
        boxes.append(Box(name=str(name), center=_from_system(center, cs, where), size=np.abs(size),
                         orientation=orientation, description=str(desc)))
    if not boxes:
        raise InputError(f"{path.name} contains no ROI boxes")
    return boxes


def points_by_label(points) -> dict:
    """Index points by label; duplicates are an error since matching would be ambiguous."""
    out = {}
    for p in points:
        if p.label in out:
            raise InputError(f"label {p.label!r} appears more than once")
        out[p.label] = p
    return out
