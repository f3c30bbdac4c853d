"""Physical geometry: index <-> LPS millimetres, resampling, intensity, label-derived references."""

from .frames import ImageGeometry, from_point3, lps_to_ras, ras_to_lps, to_point3

__all__ = ["ImageGeometry", "lps_to_ras", "ras_to_lps", "to_point3", "from_point3"]
