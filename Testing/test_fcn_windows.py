"""A fine stage's sub-images resampled on demand are those of the whole resampled grid (oblique, flipped images)."""

import numpy as np
import pytest
from fcn_helpers import blob_image

from landmarkloc.geometry.intensity import normalizer
from landmarkloc.inference.fcn import ResampledWindows, extract_subimages, preprocess


@pytest.mark.parametrize("size,spacing", [((60, 50), 1.0), ((40, 36, 32), 1.5)])
def test_windows_resampled_on_demand_match_the_whole_grid(size, spacing):
    image, _ = blob_image(size, spacing, np.random.default_rng(3))
    fine = spacing / 2 if len(size) == 2 else spacing / 1.5
    raw, geometry, normalize = preprocess(image, (spacing,) * len(size), "ct", with_normalizer=True)
    grid_array, grid_geometry = preprocess(image, (fine,) * len(size), "ct")
    windows = ResampledWindows(image, (fine,) * len(size), normalize)
    assert windows.shape == grid_array.shape
    assert np.allclose(windows.geometry.origin, grid_geometry.origin)
    assert np.allclose(windows.geometry.direction, grid_geometry.direction)
    rng = np.random.default_rng(0)
    inside = rng.uniform(8, np.array(grid_array.shape[::-1]) - 9, size=(5, len(size)))
    edge = np.array([[-3.0] * len(size), np.array(grid_array.shape[::-1], dtype=float) - 2])  # partly outside
    centres = np.vstack([inside, edge])
    got, got_starts = windows.windows(centres, 12)
    want, want_starts = extract_subimages(grid_array, centres, 12)
    assert np.array_equal(got_starts, want_starts)
    assert np.allclose(got[:5], want[:5], atol=1e-4)  # the same pixels, the same intensity map ("ct" is fixed)
    # partly outside the image: zero there; inside, the same pixels except within a voxel of the image's edge
    # (the whole grid interpolates up to its last voxel, a window reads nothing beyond the image)
    assert np.all(got[5:][want[5:] == 0] == 0)
    assert np.mean(np.isclose(got[5:], want[5:], atol=1e-4)) > 0.9


def test_the_intensity_map_of_one_grid_applies_to_another():
    raw_map = normalizer(np.arange(100, dtype=np.float32), "xray-equalized")
    values = np.array([0.0, 49.5, 99.0, 150.0], dtype=np.float32)
    out = raw_map(values)
    assert out[0] == pytest.approx(0.0, abs=0.02) and out[-1] == pytest.approx(1.0)
    assert np.all(np.diff(out) >= 0)
