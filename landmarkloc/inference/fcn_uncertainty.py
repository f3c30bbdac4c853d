"""Per-landmark uncertainty signals of the global-to-local FCN and their calibration.

A user reads "uncertain" as "this point is probably off". So the flag is defined
by the error: a point is uncertain when its calibrated probability of an error
above the model's radius (3 mm for the brain, 4 mm for cephalograms) reaches a
threshold. The probability comes from a logistic regression on a few signals
that every localization yields anyway (or nearly: the test-time-augmented
local passes cost one batched run of the small local networks):

* ``global_confidence`` / ``local_confidence``: posterior mass near the
  estimate in the global / local stage (see :mod:`.fcn_votes`);
* ``global_spread_mm`` / ``local_spread_mm``: weighted RMS spread of the votes;
* ``global_local_mm``: how far the local stage moved the global estimate;
* ``local_shift_mm``: RMS distance of the local estimates from sub-images
  shifted by a few voxels along every axis (test-time augmentation) from the
  local estimate;
* ``local_recentre_mm``: how far a second local pass, centred at the local
  estimate, moves it again;
* ``local_contrast_mm``: how far the local estimate moves when the sub-image's
  contrast is changed;
* ``local_mirror_mm``: how far the local network of the left/right partner
  landmark, given the mirrored sub-image, places the landmark from the local
  estimate (a second opinion from a second network, for models with ``_L``/``_R`` pairs);
* ``local_members_mm``: how far the estimates of a local ensemble's members
  (independently trained local networks, same sub-image) lie from their mean
  (RMS; models trained with ``--local-members`` > 1);
* ``local_fine_mm``: how far the fine stage (models with one) moved the local
  stage's estimate;
* ``global_peak`` / ``local_peak``, ``local_mass``, ``global_mode_mm`` /
  ``local_mode_mm``: the largest posterior, the posterior sum, and the distance
  from the estimate to the vote of the most confident cell;
* ``landmark_rate``: how often this landmark's error exceeded the radius on the
  validation images (a per-landmark prior, stored with the calibration);
* ``shape_residual_mm``: how far the point lies from where the other landmarks
  put it (a robust similarity fit of the mean shape, :mod:`.fcn_shape`).

Two more parts make the flag hold on images unlike the validation ones:
``guards``, limits on single signals beyond which a point is never written as
reliable whatever the logistic model says (near-zero confidence, votes that
disagree), and ``error_radius``, a radius per point that holds its true
position at a stated rate (split-conformal, per landmark for the points not
flagged and one for the flagged ones); a point whose radius exceeds the
model's tolerance (``radius_mm``) is uncertain.

The mapping (signals, their transform and standardization, coefficients,
threshold, radius, and a summary of the validation data it was fitted on) is
stored in the model's JSON metadata under ``calibration``; ``landmarkloc
calibrate`` fits it. The weights (and their sha256) are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError

# name -> (what it measures, transform used in the logistic model)
SIGNALS = {
    "confidence": ("min of global and local posterior mass near the estimate", "logit"),
    "global_confidence": ("global posterior mass near the estimate", "logit"),
    "local_confidence": ("local posterior mass near the estimate", "logit"),
    "global_spread_mm": ("weighted RMS spread of the global votes (mm)", "log"),
    "local_spread_mm": ("weighted RMS spread of the local votes (mm)", "log"),
    "global_local_mm": ("distance between the global and the local estimate (mm)", "log"),
    "global_peak": ("largest global posterior of one cell", "logit"),
    "global_mode_mm": ("distance from the estimate to the vote of the global cell with the largest posterior (mm)",
                       "log"),
    "local_peak": ("largest local posterior of one cell", "logit"),
    "local_mass": ("sum of the local posteriors (about the expected number of cells holding the landmark)", "log"),
    "local_mode_mm": ("distance from the estimate to the vote of the local cell with the largest posterior (mm)",
                      "log"),
    "landmark_rate": ("share of this landmark's validation points with an error above the radius (smoothed)",
                      "logit"),
    "local_shift_mm": ("RMS distance of local estimates from shifted sub-images (test-time augmentation, mm)",
                       "log"),
    "local_recentre_mm": ("distance a second local pass centred at the local estimate moves it (mm)", "log"),
    "local_contrast_mm": ("distance the local estimate moves under a contrast change of the sub-image (mm)",
                          "log"),
    "local_mirror_mm": ("distance between the local estimate and the left/right partner's local network's "
                        "estimate on the mirrored sub-image (mm; 3D models with _L/_R landmark pairs)", "log"),
    "local_members_mm": ("RMS distance of the local ensemble members' estimates from their mean (mm; models "
                         "with several local networks per landmark)", "log"),
    "local_fine_mm": ("distance the fine stage moved the local stage's estimate (mm; models with a fine stage)",
                      "log"),
    "shape_residual_mm": ("distance from where the other landmarks put the point (robust similarity fit of the "
                          "mean landmark configuration, mm; models with a shape model)", "log"),
}
# Which signals need which extra (batched) local passes.
TTA_SIGNALS = {"local_shift_mm": "shift", "local_recentre_mm": "recentre", "local_contrast_mm": "contrast",
               "local_mirror_mm": "mirror"}
TTA_KINDS = ("shift", "recentre", "contrast", "mirror")
LOCAL_ONLY = ("local_confidence", "local_spread_mm", "local_shift_mm", "local_recentre_mm", "local_contrast_mm",
              "local_mirror_mm", "local_members_mm", "local_fine_mm", "local_peak", "local_mass", "local_mode_mm",
              "landmark_rate")
CONTRAST_GAMMA = 1.25  # contrast change of the test-time augmentation (multiplies the normalized intensities)


def transform(name: str, values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    kind = SIGNALS[name][1]
    if kind == "logit":
        p = np.clip(values, 1e-4, 1 - 1e-4)
        return np.log(p / (1 - p))
    return np.log(np.maximum(values, 0.0) + 0.1)


def shift_offsets(ndim: int, step: int) -> np.ndarray:
    """The test-time shifts of the local sub-images: +-step voxels along every axis, (2D, D)."""
    offsets = []
    for axis in range(ndim):
        for sign in (-1, 1):
            o = np.zeros(ndim)
            o[axis] = sign * step
            offsets.append(o)
    return np.array(offsets)


@dataclass
class Calibration:
    """P(error > radius_mm) = sigmoid(intercept + sum coef * (transform(signal) - mean) / scale)."""

    radius_mm: float
    signals: list
    mean: list
    scale: list
    coefficients: list
    intercept: float
    threshold: float
    refine: dict | None = None  # the same for refine (local-only signals): keys signals/mean/scale/...
    fit: dict = field(default_factory=dict)  # summary of the data it was fitted on
    landmark_rates: dict = field(default_factory=dict)  # landmark -> smoothed validation rate of large errors
    guards: dict = field(default_factory=dict)  # signal -> {"below": v} or {"above": v}: never reliable beyond
    error_radius: dict = field(default_factory=dict)  # {"coverage", "flagged_mm", "landmarks_mm": {name: mm}}

    @classmethod
    def from_metadata(cls, meta: dict | None):
        """The calibration stored in a model's metadata, None if it has none; ModelError if malformed."""
        data = (meta or {}).get("calibration")
        if data is None:
            return None
        try:
            cal = cls(radius_mm=float(data["radius_mm"]), signals=list(data["signals"]), mean=list(data["mean"]),
                      scale=list(data["scale"]), coefficients=list(data["coefficients"]),
                      intercept=float(data["intercept"]), threshold=float(data["threshold"]),
                      refine=data.get("refine"), fit=dict(data.get("fit", {})),
                      landmark_rates={str(k): float(v) for k, v in (data.get("landmark_rates") or {}).items()},
                      guards={str(k): {str(side): float(v) for side, v in g.items()}
                              for k, g in (data.get("guards") or {}).items()},
                      error_radius=dict(data.get("error_radius") or {}))
            if any(k not in SIGNALS or set(g) - {"below", "above"} for k, g in cal.guards.items()):
                raise ValueError("unknown guard signal or side")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model metadata: malformed calibration ({exc})") from None
        for part in [data] + ([cal.refine] if cal.refine else []):
            names = part.get("signals", [])
            if any(n not in SIGNALS for n in names) or not (
                    len(names) == len(part.get("mean", [])) == len(part.get("scale", []))
                    == len(part.get("coefficients", []))):
                raise ModelError("model metadata: calibration signals unknown or of unequal lengths")
        return cal

    def to_metadata(self) -> dict:
        return {"radius_mm": self.radius_mm, "signals": self.signals, "mean": self.mean, "scale": self.scale,
                "coefficients": self.coefficients, "intercept": self.intercept, "threshold": self.threshold,
                "refine": self.refine, "fit": self.fit, "landmark_rates": self.landmark_rates,
                "guards": self.guards, "error_radius": self.error_radius,
                "definitions": {n: SIGNALS[n][0] for n in self.signals + (self.refine or {}).get("signals", [])}}

    def tta_kinds(self, refine: bool = False) -> tuple:
        """The test-time-augmented local passes its signals need (none: no extra cost)."""
        names = (self.refine or {}).get("signals", []) if refine else self.signals
        return tuple(sorted({TTA_SIGNALS[n] for n in names if n in TTA_SIGNALS}))

    def probability(self, signals: dict, refine: bool = False) -> np.ndarray:
        part = self.refine if refine else self.to_metadata()
        return logistic_probability(part, signals)

    def threshold_for(self, refine: bool = False) -> float:
        return float(self.refine["threshold"]) if refine else self.threshold

    def guard_reasons(self, signals: dict) -> list:
        return guard_reasons(self.guards, signals)

    def radius_of(self, names, flagged: np.ndarray) -> np.ndarray | None:
        """The conformal error radius of each point (None without one): the flagged points' radius for
        flagged points, else their landmark's (the largest landmark radius for a landmark not calibrated)."""
        r = self.error_radius
        if not r:
            return None
        per = r.get("landmarks_mm") or {}
        default = max(per.values()) if per else float(r["flagged_mm"])
        return np.array([float(r["flagged_mm"]) if f else float(per.get(n, default)) for n, f in zip(names, flagged)])


# Guards: a point whose confidence is below, or whose global votes spread more, or whose local estimate lies
# further from the global one, than all but GUARD_SHARE of the points of the unshifted validation images is never
# written as reliable (issue 24: a point with near-zero confidence, or with votes that disagree), whatever the
# logistic model makes of it. (The global-local guard: brain validation, a tilted head's Pallidum_R 5.6 mm off at
# P = 0.02, its local estimate 15 mm from the global one, beyond 99.5 % of the unshifted points.)
GUARD_SIGNALS = {"confidence": "below", "global_spread_mm": "above", "global_local_mm": "above"}
GUARD_SHARE = 0.005


def choose_guards(table: dict, counted: np.ndarray) -> dict:
    """The guard limits from the signal columns of the unshifted points (``counted``)."""
    guards = {}
    for name, side in GUARD_SIGNALS.items():
        if name in table and np.any(counted):
            values = np.asarray(table[name], dtype=np.float64)[np.asarray(counted, dtype=bool)]
            q = GUARD_SHARE if side == "below" else 1.0 - GUARD_SHARE
            guards[name] = {side: float(f"{float(np.quantile(values, q)):.6g}")}
    return guards


def _beyond(limits: dict, values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=bool)
    if "below" in limits:
        out |= ~(values >= limits["below"])
    if "above" in limits:
        out |= ~(values <= limits["above"])
    return out


def beyond_guards(guards: dict, signals: dict) -> np.ndarray:
    """Points beyond a guard; a signal a guard needs but the point lacks counts as beyond."""
    n = len(next(iter(signals.values())))
    out = np.zeros(n, dtype=bool)
    for name, limits in guards.items():
        out |= _beyond(limits, np.asarray(signals.get(name, np.full(n, np.nan)), dtype=np.float64))
    return out


# What a crossed guard tells the user, in the point's description.
GUARD_WORDS = {"confidence": "confidence {:.2f}", "global_spread_mm": "global votes spread {:.0f} mm",
               "global_local_mm": "local and global estimates {:.0f} mm apart"}


def guard_reasons(guards: dict, signals: dict) -> list:
    """Per point, the guards it crossed in words (empty list: none), for its description."""
    n = len(next(iter(signals.values())))
    reasons = [[] for _ in range(n)]
    for name, limits in guards.items():
        values = np.asarray(signals.get(name, np.full(n, np.nan)), dtype=np.float64)
        for i in np.flatnonzero(_beyond(limits, values)):
            words = GUARD_WORDS.get(name, name + " {:.3g}")
            reasons[i].append(words.format(values[i]) if np.isfinite(values[i]) else f"no {name}")
    return reasons


def conformal_quantile(errors, coverage: float) -> float:
    """The split-conformal radius of ``errors``: their ceil((n + 1) coverage)-th smallest (inf if n is too small),
    which a new point exchangeable with them falls within at least ``coverage`` of the time."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    k = int(math.ceil((len(errors) + 1) * coverage))
    return float(errors[k - 1]) if 0 < k <= len(errors) else float("inf")


def landmark_rates(landmarks, large, smoothing: float = 5.0) -> dict:
    """Per-landmark share of large errors, shrunk towards the overall share by ``smoothing`` pseudo-points."""
    landmarks, large = np.asarray(landmarks), np.asarray(large, dtype=np.float64)
    overall = large.mean() if len(large) else 0.0
    return {str(n): float((large[landmarks == n].sum() + smoothing * overall) / ((landmarks == n).sum() + smoothing))
            for n in np.unique(landmarks)}


def logistic_probability(part: dict, signals: dict) -> np.ndarray:
    z = np.full(np.shape(signals[part["signals"][0]]), float(part["intercept"]))
    for name, mean, scale, coef in zip(part["signals"], part["mean"], part["scale"], part["coefficients"]):
        z = z + coef * (transform(name, signals[name]) - mean) / scale
    return _sigmoid(z)


def _sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def fit_logistic(features: np.ndarray, labels: np.ndarray, l2: float = 1.0, iterations: int = 100) -> tuple:
    """(coefficients, intercept) of an L2-regularized logistic regression by Newton's method (numpy only).

    ``features`` (N, K) standardized; the intercept is not regularized. Each
    Newton step is halved until the penalized loss decreases: with nearly
    separable data (a landmark without any large error, a signal that only
    takes a few values) plain Newton steps overshoot and diverge.
    """
    x = np.hstack([np.ones((len(features), 1)), features])
    y = labels.astype(np.float64)
    w = np.zeros(x.shape[1])
    w[0] = math.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3))
    reg = np.full(x.shape[1], l2)
    reg[0] = 0.0

    def loss(v):
        z = x @ v
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(reg * v * v))

    current = loss(w)
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t, trial = 1.0, loss(w - step)
        while trial > current - 1e-4 * t * float(grad @ step) and t > 1e-8:
            t /= 2.0
            trial = loss(w - t * step)
        w, current = w - t * step, trial
        if np.max(np.abs(t * step)) < 1e-8:
            break
    return w[1:], float(w[0])


def fit_part(table: dict, labels: np.ndarray, names: list, l2: float = 1.0) -> dict:
    """Standardize the chosen signals and fit the logistic model; a metadata part without threshold."""
    feats = np.stack([transform(n, table[n]) for n in names], axis=1)
    mean, scale = feats.mean(axis=0), np.maximum(feats.std(axis=0), 1e-6)  # a constant signal: no effect

    def short(values):
        return [float(f"{float(v):.6g}") for v in values]

    mean, scale = np.array(short(mean)), np.array(short(scale))
    coef, intercept = fit_logistic((feats - mean) / scale, labels, l2=l2)
    return {"signals": list(names), "mean": short(mean), "scale": short(scale), "coefficients": short(coef),
            "intercept": short([intercept])[0]}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (probability that a positive scores above a negative; ties count half)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    allv = np.concatenate([pos, neg])
    # average ranks of ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def spearman(a, b) -> float:
    def rank(v):
        v = np.asarray(v, dtype=np.float64)
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        sums = np.zeros(len(counts))
        np.add.at(sums, inv, r)
        return (sums / counts)[inv]
    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def operating_point(prob: np.ndarray, large: np.ndarray, threshold: float, counted=None) -> dict:
    """Share of points flagged (of the ``counted`` ones: default all) and of large errors caught at ``threshold``."""
    flagged = prob >= threshold
    share = flagged if counted is None else flagged[np.asarray(counted, dtype=bool)]
    return {"threshold": float(threshold), "flagged": float(share.mean()) if len(share) else float("nan"),
            "caught": float(flagged[large].mean()) if large.any() else float("nan"),
            "flagged_within_radius": float((flagged & ~large).sum() / max(1, flagged.sum()))}


def choose_threshold(prob: np.ndarray, large: np.ndarray, catch: float, max_flagged: float, counted=None) -> dict:
    """The flag threshold: in the middle of the range that meets both targets, else at the flag budget.

    The thresholds that catch at least ``catch`` of the large errors while
    flagging at most ``max_flagged`` of the points form a range; the one whose
    flagged share is halfway between the range's smallest and the budget is
    taken, which leaves a margin on both targets for new images. When no
    threshold meets both, the one at the flag budget is taken (``met`` False). ``counted``: the points
    whose flagged share the budget limits (the unshifted images'; default all).
    """
    candidates = np.unique(prob)[::-1]  # decreasing: more and more points flagged
    ops = [operating_point(prob, large, t, counted) for t in candidates]
    feasible = [op for op in ops if op["caught"] >= catch and op["flagged"] <= max_flagged]
    if feasible:
        target = (min(op["flagged"] for op in feasible) + max_flagged) / 2.0
        best = min(feasible, key=lambda op: (abs(op["flagged"] - target), -op["threshold"]))
        return {**best, "met": True}
    within = [op for op in ops if op["flagged"] <= max_flagged]
    best = max(within, key=lambda op: op["flagged"]) if within else ops[0]
    return {**best, "met": False}
