"""How the Slicer side and the worker process hand over images, points and boxes (files in the job folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from landmarkloc.errors import InputError
from landmarkloc.points import Box, ControlPoint


def write_temporary_image(image: sitk.Image, path) -> str:
    """Uncompressed .mha: fast to write on Slicer's main thread and exact (float32, full geometry)."""
    sitk.WriteImage(image, str(path), False)
    return str(path)


def read_temporary_image(path) -> sitk.Image:
    if not Path(path).is_file():
        raise InputError(f"image {path} is missing from the job folder")
    return sitk.ReadImage(str(path))


def point_to_dict(point: ControlPoint) -> dict:
    return {"label": point.label, "position": [float(v) for v in point.position], "description": point.description,
            "selected": bool(point.selected), "properties": dict(point.properties)}


def point_from_dict(data: dict) -> ControlPoint:
    return ControlPoint(label=str(data["label"]), position=np.asarray(data["position"], dtype=np.float64),
                        description=str(data.get("description", "")), selected=bool(data.get("selected", True)),
                        properties=dict(data.get("properties", {})))


def box_to_dict(box: Box) -> dict:
    return {"name": box.name, "center": box.center.tolist(), "size": box.size.tolist(),
            "orientation": box.orientation.tolist(), "description": box.description}


def box_from_dict(data: dict) -> Box:
    return Box(name=str(data["name"]), center=data["center"], size=data["size"], orientation=data["orientation"],
               description=str(data.get("description", "")))
