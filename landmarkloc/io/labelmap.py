"""Is an image a label map? A few distinct integer values, where a scan has hundreds or thousands.

Used to warn when a label map is given where a scan is expected (its points
would be found in a picture of labels), and to resample label maps with
nearest-neighbour interpolation (a linear mix of labels 2 and 0 is label 1).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

MAX_LABELS = 64  # more distinct values than this: a scan (an 8-bit X-ray already has ~256)
SAMPLE_VOXELS = 1_000_000  # a strided sample is enough to tell, and keeps the check cheap on large volumes


def distinct_labels(array) -> int:
    """How many distinct values ``array`` holds if they are all integers and at most MAX_LABELS; else 0."""
    flat = np.asarray(array).reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE_VOXELS)]
    if sample.dtype.kind == "f" and not np.array_equal(sample, np.round(sample)):
        return 0
    count = _distinct_integers(sample)
    return count if 2 <= count <= MAX_LABELS else 0


def _distinct_integers(values: np.ndarray) -> int:
    """How many distinct values integer-valued ``values`` hold: counted in one pass over their range when it is
    small (every label map, and 8- or 16-bit scans), which is many times faster than sorting a million values."""
    if values.size == 0:
        return 0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1 << 20:
        return int(np.count_nonzero(np.bincount(values.astype(np.intp) - int(lo))))
    return len(np.unique(values))


def label_map_warning(image: sitk.Image, name: str = "the image") -> str | None:
    """A one-line warning when ``image`` looks like a label map rather than a scan; None otherwise."""
    count = distinct_labels(sitk.GetArrayViewFromImage(image))
    if not count:
        return None
    return (f"{name} looks like a label map ({count} distinct integer values), not a scan: points found in it "
            "mean little; give the scan (label maps are for derive or the one-shot support labels)")
