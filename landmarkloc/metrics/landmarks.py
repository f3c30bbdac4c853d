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


def summarize_errors(errors, thresholds=DEFAULT_THRESHOLDS, missing: int = 0) -> dict:
    """Median (IQR), mean +- SD, max of a set of radial errors, and SDRs in which ``missing`` landmarks (in the
    reference, not predicted) count as misses: leaving a landmark out must not raise the success rate."""
    e = np.asarray(errors, dtype=np.float64)
    rates = {f"{t:g}": float(np.sum(e < t) / (e.size + missing)) if e.size + missing else float("nan")
             for t in thresholds}
    if e.size == 0:
        return {"n": 0, "missing": int(missing), "sdr": rates} if missing else {"n": 0}
    q1, med, q3 = np.percentile(e, [25, 50, 75])
    return {
        "n": int(e.size),
        "missing": int(missing),
        "median": float(med),
        "iqr": float(q3 - q1),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(e.mean()),
        "sd": float(e.std(ddof=1)) if e.size > 1 else 0.0,
        "max": float(e.max()),
        "sdr": rates,
    }
