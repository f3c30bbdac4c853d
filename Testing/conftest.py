"""Shared fixtures: generated images with awkward geometry, a real MRML scene, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


# Directions a user meets: LPS (ITK default), RAS and LAS (flipped axes), and an oblique scan.
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([1.0, -1.0, 1.0]),
    "oblique": rotation([1.0, 2.0, 0.5], 27.0),
    "oblique_flipped": rotation([0.3, -1.0, 2.0], 63.0) @ np.diag([1.0, 1.0, -1.0]),
}


def make_image(array_kji: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return image


@pytest.fixture(params=sorted(DIRECTIONS))
def direction(request):
    return DIRECTIONS[request.param]


@pytest.fixture
def labelmap_3d(direction):
    """An anisotropic 3D label map with two irregular structures (labels 3 and 7)."""
    arr = np.zeros((20, 24, 30), dtype=np.uint8)  # [k, j, i]
    arr[4:9, 5:12, 6:15] = 3
    arr[6, 12, 10] = 3  # a single voxel sticking out: the extreme points must find it
    arr[12:17, 14:20, 18:26] = 7
    arr[12:14, 14:16, 18:20] = 0
    return make_image(arr, spacing=(0.8, 1.3, 2.1), origin=(-12.5, 40.0, 7.25), direction=direction)


@pytest.fixture(scope="session")
def mrml_scene():
    """A real MRML scene (slicer-core) with the markups logic registered, as Slicer sets it up."""
    from mrml_testing import new_scene  # imported here: mrml_testing itself imports this module

    return new_scene()


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
