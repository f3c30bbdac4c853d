"""The ``xray-equalized`` intensity preset: histogram equalization makes differently exposed radiographs alike."""

import numpy as np

from landmarkloc.geometry.intensity import get_preset, normalize


def _radiograph(rng):
    """A smooth 2D 'X-ray' with structure at all grey levels (uint8 like the challenge JPEGs)."""
    y, x = np.mgrid[0:200, 0:160]
    img = 120 + 80 * np.sin(x / 17.0) * np.cos(y / 23.0) + 30 * np.exp(-((x - 80) ** 2 + (y - 90) ** 2) / 300.0)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255)


def test_equalization_undoes_a_different_exposure():
    rng = np.random.default_rng(0)
    base = _radiograph(rng)
    # the same anatomy, darker and with a different contrast curve (a monotone change of the grey values)
    exposed = np.round(255 * (base / 255.0) ** 1.8 * 0.7).astype(np.uint8)
    base = np.round(base).astype(np.uint8)
    eq_a, eq_b = normalize(base, "xray-equalized"), normalize(exposed, "xray-equalized")
    pc_a, pc_b = normalize(base, "xray"), normalize(exposed, "xray")
    assert eq_a.min() >= 0 and eq_a.max() <= 1 and eq_a.dtype == np.float32
    # equalized: the two exposures look alike (only grey levels merged by the rounding differ) ...
    assert np.mean(np.abs(eq_a - eq_b)) < 0.02
    # ... while the percentile preset keeps the contrast curve's difference
    assert np.mean(np.abs(pc_a - pc_b)) > 5 * np.mean(np.abs(eq_a - eq_b))
    # equalized values are spread evenly over [0, 1]
    hist, _ = np.histogram(eq_a, bins=4, range=(0, 1))
    assert hist.min() > 0.15 * eq_a.size


def test_equalized_preset_survives_the_model_metadata_and_constant_images_map_to_zero():
    preset = get_preset("xray-equalized")
    assert get_preset(preset.to_dict()) == preset  # as stored in a model's JSON and read back by localize
    assert not normalize(np.full((8, 8), 7.0), preset).any()
