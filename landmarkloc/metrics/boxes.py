"""Box metrics of the RPR paper: intersection over union and average wall distance (AWD)."""

from __future__ import annotations

import numpy as np


def _bounds_in(box, frame: np.ndarray) -> tuple:
    """Axis-aligned bounds of ``box`` in the axes of ``frame`` (exact when the axes agree)."""
    corners = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    pts = box.center + (corners * box.size) @ box.orientation.T
    local = pts @ frame
    return local.min(axis=0), local.max(axis=0)


def box_iou(predicted, reference) -> float:
    """Volume IoU of two boxes (in 2D, the area IoU when both have zero thickness).

    Boxes with the same axes (the case here: both along the image axes) are
    compared exactly; otherwise the predicted box is replaced by its bounding box
    in the reference's axes.
    """
    frame = reference.orientation
    plo, phi = _bounds_in(predicted, frame)
    rlo, rhi = _bounds_in(reference, frame)
    keep = ~((phi - plo < 1e-9) & (rhi - rlo < 1e-9))  # drop a flat axis shared by 2D boxes
    inter = np.prod(np.clip(np.minimum(phi, rhi) - np.maximum(plo, rlo), 0, None)[keep])
    union = np.prod((phi - plo)[keep]) + np.prod((rhi - rlo)[keep]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_wall_distance(predicted, reference) -> float:
    """AWD: mean absolute distance (mm) between the six corresponding walls of two boxes."""
    frame = reference.orientation
    plo, phi = _bounds_in(predicted, frame)
    rlo, rhi = _bounds_in(reference, frame)
    keep = ~((phi - plo < 1e-9) & (rhi - rlo < 1e-9))
    walls = np.concatenate([np.abs(plo - rlo)[keep], np.abs(phi - rhi)[keep]])
    return float(walls.mean())
