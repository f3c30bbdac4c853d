"""The data types every layer shares: labelled points and oriented boxes, in LPS millimetres.

They sit below ``geometry/`` and ``io/`` (both use them; neither owns them) and
depend on nothing but numpy and the error types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass
class ControlPoint:
    """A labelled point in LPS mm, with optional description and per-point values."""

    label: str
    position: np.ndarray
    description: str = ""
    selected: bool = True
    properties: dict = field(default_factory=dict)

    def __post_init__(self):
        p = np.asarray(self.position, dtype=np.float64).reshape(-1)
        if p.size == 2:
            p = np.append(p, 0.0)
        if p.size != 3:
            raise InputError(f"point {self.label!r} needs 2 or 3 coordinates, got {p.size}")
        self.position = p


@dataclass
class Box:
    """An oriented box (Slicer ROI): centre and size in mm, orientation columns = box axes in LPS."""

    name: str
    center: np.ndarray
    size: np.ndarray
    orientation: np.ndarray = field(default_factory=lambda: np.eye(3))
    description: str = ""

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64).reshape(3)
        self.size = np.asarray(self.size, dtype=np.float64).reshape(3)
        self.orientation = np.asarray(self.orientation, dtype=np.float64).reshape(3, 3)
