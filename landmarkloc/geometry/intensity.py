"""Intensity normalisation presets: a fixed HU window for CT, robust percentiles for MR and X-ray."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class IntensityPreset:
    """How raw voxel values are mapped to roughly [0, 1] before a network sees them.

    ``window``: clip to a fixed range (CT Hounsfield units mean the same in every scan).
    ``percentile``: clip to the image's own percentiles (MR and X-ray have no absolute scale).
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
}


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
    flat = np.asarray(array, dtype=np.float32).ravel()
    if flat.size > 2_000_000:  # percentiles of a strided subsample are as good and much faster
        flat = flat[:: flat.size // 1_000_000]
    lo, hi = np.percentile(flat, preset.percentiles)
    return float(lo), float(hi)


def normalize(array: np.ndarray, preset) -> np.ndarray:
    """Map intensities to [0, 1] with ``preset``; a constant image maps to all zeros."""
    lo, hi = intensity_range(array, preset)
    out = np.asarray(array, dtype=np.float32)
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        return np.zeros_like(out)
    out = (out - lo) * (1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)
