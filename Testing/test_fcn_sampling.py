"""Crops and sub-images keep landmarks exactly where the image content is."""

from dataclasses import replace

import numpy as np
import pytest

from landmarkloc.training.fcn_sampling import (
    AUGMENT_PRESETS,
    AugmentConfig,
    PreparedCase,
    global_crop,
    local_subimages,
)


def _blob_case(ndim, spacing):
    shape = (30, 36, 40)[-ndim:]  # array order
    lms = np.array([[8.3, 20.6, 11.2], [30.0, 9.0, 20.0]])[:, :ndim]
    grids = np.meshgrid(*[np.arange(n) for n in shape[::-1]], indexing="ij")  # ITK order
    arr = np.zeros(shape[::-1])
    for lm in lms:
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, lm, spacing))
        arr += np.exp(-d2 / (2 * 1.5 ** 2))
    arr = arr.transpose()  # to array order
    case = PreparedCase("blob", arr.astype(np.float32), np.asarray(spacing, float), lms)
    return case, np.random.default_rng(0)


def _peak(img):
    a = img.numpy()
    idx = np.array(np.unravel_index(np.argmax(a), a.shape))[::-1]
    return idx.astype(float)


@pytest.mark.parametrize("ndim,spacing", [(2, (1.0, 1.0)), (3, (1.0, 1.0, 1.5))])
def test_augmented_crops_move_landmarks_with_the_content(ndim, spacing):
    case, rng = _blob_case(ndim, spacing)
    aug = AugmentConfig(rotation_deg=20, scale=0.15, intensity_scale=0, intensity_shift=0, gamma=0)
    for _ in range(5):
        sub, pts = local_subimages(case, 12, aug, rng)
        for lm in range(2):
            assert np.all((pts[lm] >= 0) & (pts[lm] <= 11))
            assert np.linalg.norm(_peak(sub[lm]) - pts[lm]) < 1.0
    img, pts = global_crop(case, [48] * ndim, None, rng)  # larger than the image: all inside
    assert img.shape == (1, *[48] * ndim)
    for lm in range(2):
        p = np.round(pts[lm]).astype(int)[::-1]
        assert img[0][tuple(p)] > 0.8  # the blob is where the landmark went


@pytest.mark.parametrize("ndim,spacing", [(2, (1.0, 1.0)), (3, (1.0, 1.0, 1.5))])
def test_clinical_augmentation_keeps_landmarks_with_the_content_and_reaches_beyond_the_image(ndim, spacing):
    """Appearance changes (bias field, blur, thicker slices, noise) leave the blobs where the landmarks went;
    crops that may reach beyond the image show empty space there."""
    case, rng = _blob_case(ndim, spacing)
    aug = replace(AUGMENT_PRESETS["clinical"], rotation_deg=0.0, scale=0.0, noise_std=0.01, outside_view=1.0)
    crop = [24] * ndim
    for _ in range(12):
        img, pts = global_crop(case, crop, aug, rng)
        assert img.shape == (1, *crop)
        for lm in range(2):
            p = np.round(pts[lm]).astype(int)
            if np.all((p >= 2) & (p < np.array(crop) - 2)):  # the landmark is in this crop
                window = img[0][tuple(slice(max(0, c - 2), c + 3) for c in p[::-1])]
                assert float(window.max()) > 0.3 * float(img.max())
    ones = PreparedCase("ones", np.ones_like(case.array), case.spacing, case.landmarks)
    geometric = AugmentConfig(rotation_deg=0, scale=0, intensity_scale=0, intensity_shift=0, gamma=0)
    assert not any(bool((global_crop(ones, crop, geometric, rng)[0] == 0).any()) for _ in range(12))
    beyond = replace(geometric, outside_view=1.0)
    assert sum(bool((global_crop(ones, crop, beyond, rng)[0] == 0).any()) for _ in range(12)) >= 6
