"""Localization metrics: radial errors, success detection rates, box IoU and wall distances."""

from .boxes import box_iou, box_wall_distance
from .landmarks import DEFAULT_THRESHOLDS, radial_errors, sdr, summarize_errors

__all__ = ["DEFAULT_THRESHOLDS", "radial_errors", "sdr", "summarize_errors", "box_iou", "box_wall_distance"]
