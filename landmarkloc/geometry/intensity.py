"""Intensity normalisation presets: a fixed HU window for CT, robust percentiles for MR and X-ray,
histogram equalization for X-rays of varying exposure (Noothout et al. 2020 equalize cephalograms)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class IntensityPreset:
    """How raw voxel values are mapped to roughly [0, 1] before a network sees them.

    ``window``: clip to a fixed range (CT Hounsfield units mean the same in every scan).
    ``percentile``: clip to the image's own percentiles (MR and X-ray have no absolute scale).
    ``equalize``: histogram equalization, each value becomes the share of the image's voxels at or below
    it, so over- and under-exposed radiographs look alike (contrast differences remain in the ordering only).
    """

    name: str
    mode: str  # "window" | "percentile"
    window: tuple = (-1000.0, 1000.0)
    percentiles: tuple = (0.5, 99.5)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> IntensityPreset:
        try:
            return cls(name=str(d["name"]), mode=str(d["mode"]), window=tuple(d.get("window", (-1000, 1000))),
                       percentiles=tuple(d.get("percentiles", (0.5, 99.5))))
        except (KeyError, TypeError) as exc:
            raise InputError(f"invalid intensity preset description: {exc}") from None


PRESETS = {
    "ct": IntensityPreset("ct", "window", window=(-1000.0, 1500.0)),
    "mr": IntensityPreset("mr", "percentile", percentiles=(0.5, 99.5)),
    "xray": IntensityPreset("xray", "percentile", percentiles=(0.5, 99.5)),
    "xray-equalized": IntensityPreset("xray-equalized", "equalize"),
}
EQUALIZE_BINS = 1024


def get_preset(preset) -> IntensityPreset:
    if isinstance(preset, IntensityPreset):
        return preset
    if isinstance(preset, dict):
        return IntensityPreset.from_dict(preset)
    try:
        return PRESETS[str(preset).lower()]
    except KeyError:
        raise InputError(f"unknown intensity preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


def intensity_range(array: np.ndarray, preset) -> tuple:
    """The (low, high) values that ``preset`` maps to 0 and 1 for this image."""
    preset = get_preset(preset)
    if preset.mode == "window":
        return float(preset.window[0]), float(preset.window[1])
    if preset.mode != "percentile":
        raise InputError(f"unknown intensity mode {preset.mode!r}")
    flat = _subsample(array)  # percentiles of a strided subsample are as good and much faster
    lo, hi = np.percentile(flat, preset.percentiles)
    return float(lo), float(hi)


def _subsample(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array, dtype=np.float32).ravel()
    return flat[:: flat.size // 1_000_000] if flat.size > 2_000_000 else flat


def _equalizer(array: np.ndarray):
    """Histogram equalization to [0, 1] by ``array``'s histogram: each value maps to the cumulative share of
    voxels up to its bin (linear between bin centres, clamped at both ends, as np.interp)."""
    flat = _subsample(array)
    lo, hi = float(flat.min()), float(flat.max())
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return lambda values: np.zeros(np.shape(values), dtype=np.float32)
    counts, _ = np.histogram(flat, bins=EQUALIZE_BINS, range=(lo, hi))
    cdf = (np.cumsum(counts, dtype=np.float64) / flat.size).astype(np.float32)
    step = (hi - lo) / EQUALIZE_BINS

    def apply(values):
        # on the uniform bin grid directly: several times faster than np.interp on large pictures
        position = (np.asarray(values, dtype=np.float32) - np.float32(lo + step / 2)) * np.float32(1.0 / step)
        np.clip(position, 0.0, EQUALIZE_BINS - 1, out=position)
        index = np.minimum(position.astype(np.int32), EQUALIZE_BINS - 2)
        position -= index
        low = cdf[index]
        return low + (cdf[index + 1] - low) * position
    return apply


def equalize(array: np.ndarray) -> np.ndarray:
    """Histogram equalization to [0, 1]: each value maps to the cumulative share of voxels up to its bin."""
    return _equalizer(array)(array)


def normalizer(array: np.ndarray, preset):
    """The map of intensities to [0, 1] that ``preset`` defines for this image (its statistics fixed), to apply
    to the image or to parts of it resampled on another grid; a constant image maps to all zeros."""
    if get_preset(preset).mode == "equalize":
        return _equalizer(array)
    lo, hi = intensity_range(array, preset)
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return lambda values: np.zeros(np.shape(values), dtype=np.float32)

    def apply(values):
        out = (np.asarray(values, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        return np.clip(out, 0.0, 1.0, out=out)
    return apply


def normalize(array: np.ndarray, preset) -> np.ndarray:
    """Map intensities to [0, 1] with ``preset``; a constant image maps to all zeros."""
    return normalizer(array, preset)(array)


# --------------------------------------------------------------------------- unlike the training data?

PROFILE_BINS = 16
# Voxels at or below this normalized value are background (air, noise, padding; the RPR body threshold):
# their share depends on the field of view, not on the kind of image, so the histogram describes the rest.
PROFILE_BACKGROUND = 0.1
# A histogram this far (total variation distance, 0..1) from the training mean is always suspicious, even
# when the training images were all alike; otherwise the limit is twice the typical far training image's distance
# (the 95th percentile; profiles recorded without it: the farthest image).
MIN_UNLIKE_DISTANCE = 0.25
TYPICAL_PERCENTILE = 95
# Equalization gives every image the same flat histogram, so for a model that equalizes the check compares
# what equalization takes away: the image's own percentile range.
EQUALIZED_PROFILE_VIEW = "xray"


def profile_preset(preset) -> IntensityPreset:
    """The normalization under which the out-of-distribution check compares images, for a model normalizing
    with ``preset``: the model's own, or for an equalizing preset the image's percentile range."""
    preset = get_preset(preset)
    return get_preset(EQUALIZED_PROFILE_VIEW) if preset.mode == "equalize" else preset


def intensity_histogram(normalized: np.ndarray) -> np.ndarray:
    """Fractions of the foreground voxels in ``PROFILE_BINS`` equal bins of the normalized range [0, 1]."""
    flat = np.asarray(normalized, dtype=np.float32).ravel()
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 1_000_000]
    flat = flat[flat > PROFILE_BACKGROUND]
    counts, _ = np.histogram(np.clip(flat, 0.0, 1.0), bins=PROFILE_BINS, range=(0.0, 1.0))
    return counts / max(1, counts.sum())


def histogram_distance(a, b) -> float:
    """Total variation distance of two histograms (0: identical, 1: disjoint)."""
    return 0.5 * float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).sum())


def intensity_profile(normalized_arrays, preset=None) -> dict:
    """What the training images look like under ``preset`` (:func:`profile_preset`; None: as the network sees
    them), stored in a model's metadata."""
    hists = np.array([intensity_histogram(a) for a in normalized_arrays])
    mean = hists.mean(axis=0)
    distances = [histogram_distance(h, mean) for h in hists]
    profile = {"bins": PROFILE_BINS, "mean_histogram": [round(float(v), 6) for v in mean],
               "max_distance": round(max(distances), 6),
               "typical_distance": round(float(np.percentile(distances, TYPICAL_PERCENTILE)), 6),
               "images": len(hists)}
    if preset is not None:
        profile["preset"] = get_preset(preset).name
    return profile


def unlike_profile(normalized: np.ndarray, profile) -> str | None:
    """A warning when an image's normalized intensities are unlike the training images' (None: alike or no profile).

    Catches a wrong modality (a CT given to an MR model), a wrong intensity
    preset or a damaged scan: inputs on which a network's confidence means little.
    """
    if not isinstance(profile, dict) or profile.get("bins") != PROFILE_BINS:
        return None  # older models carry no profile: nothing to compare with
    try:
        mean = np.asarray(profile["mean_histogram"], dtype=np.float64)
        limit = max(MIN_UNLIKE_DISTANCE, 2.0 * float(profile.get("typical_distance", profile["max_distance"])))
    except (KeyError, TypeError, ValueError):
        return None
    if mean.shape != (PROFILE_BINS,):
        return None
    distance = histogram_distance(intensity_histogram(normalized), mean)
    if distance <= limit:
        return None
    return (f"the image's intensities are unlike the model's training images (histogram distance "
            f"{distance:.2f} > {limit:.2f}): wrong modality or preprocessing? Its points are marked uncertain")
