"""Point metrics as the ISBI 2015 challenge and Noothout et al. report them."""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS = (2.0, 2.5, 3.0, 4.0)


def radial_errors(predicted, reference) -> np.ndarray:
    """Euclidean distances (mm) between matching rows of two (N, 3) arrays."""
    p = np.asarray(predicted, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    return np.linalg.norm(p - r, axis=-1)


def sdr(errors, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Success detection rate: the fraction of errors below each threshold (mm)."""
    e = np.asarray(errors, dtype=np.float64)
    return {float(t): float(np.mean(e < t)) if e.size else float("nan") for t in thresholds}


def summarize_errors(errors, thresholds=DEFAULT_THRESHOLDS) -> dict:
    """Median (IQR), mean +- SD, max and SDRs of a set of radial errors."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return {"n": 0}
    q1, med, q3 = np.percentile(e, [25, 50, 75])
    return {
        "n": int(e.size),
        "median": float(med),
        "iqr": float(q3 - q1),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(e.mean()),
        "sd": float(e.std(ddof=1)) if e.size > 1 else 0.0,
        "max": float(e.max()),
        "sdr": {f"{t:g}": v for t, v in sdr(e, thresholds).items()},
    }
