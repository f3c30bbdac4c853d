"""Index <-> physical mapping, LPS/RAS, resampling and cropping keep positions exact."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DIRECTIONS, make_image, rotation
from hypothesis import given, settings
from hypothesis import strategies as st

from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry, from_point3, lps_to_ras, ras_to_lps, to_point3
from landmarkloc.geometry.resample import (
    canonical_direction,
    canonical_orientation,
    crop_or_pad,
    resample_to_spacing,
)


def test_index_to_physical_matches_itk_for_every_direction(direction):
    image = make_image(np.zeros((5, 6, 7), np.float32), (0.7, 1.1, 2.5), (3.0, -4.0, 5.5), direction)
    geometry = ImageGeometry.from_image(image)
    rng = np.random.default_rng(0)
    for idx in rng.uniform(-2, 8, size=(20, 3)):
        expected = image.TransformContinuousIndexToPhysicalPoint(idx.tolist())
        np.testing.assert_allclose(geometry.index_to_physical(idx), expected, atol=1e-9)
        np.testing.assert_allclose(geometry.physical_to_index(expected), idx, atol=1e-9)


def test_2d_geometry_matches_itk():
    image = sitk.Image(40, 30, sitk.sitkFloat32)
    image.SetSpacing((0.1, 0.1))
    image.SetOrigin((2.0, -1.0))
    image.SetDirection((0.0, -1.0, 1.0, 0.0))
    geometry = ImageGeometry.from_image(image)
    assert geometry.ndim == 2
    np.testing.assert_allclose(geometry.index_to_physical([12.5, 3.0]),
                               image.TransformContinuousIndexToPhysicalPoint((12.5, 3.0)), atol=1e-12)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (1e6, 1.0, 1.0)])
def test_absurd_spacing_is_refused(spacing):
    with pytest.raises(InputError, match="spacing"):
        ImageGeometry(origin=np.zeros(3), spacing=spacing, direction=np.eye(3), size=(4, 4, 4))


def test_sheared_direction_is_refused():
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputError, match="orthonormal"):
        ImageGeometry(origin=np.zeros(3), spacing=np.ones(3), direction=sheared, size=(4, 4, 4))


def test_lps_ras_flip_and_2d_padding():
    np.testing.assert_allclose(lps_to_ras([1.0, 2.0, 3.0]), [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(ras_to_lps(lps_to_ras([[1, 2, 3], [4, 5, 6]])), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(to_point3([1.5, -2.0]), [1.5, -2.0, 0.0])
    np.testing.assert_allclose(from_point3([1.5, -2.0, 0.0], 2), [1.5, -2.0])


def _blob_centroid(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    idx = np.argwhere(arr > 0)[:, ::-1]
    w = arr[arr > 0]
    geometry = ImageGeometry.from_image(image)
    return (geometry.index_to_physical(idx) * w[:, None]).sum(0) / w.sum()


def test_resampling_keeps_physical_positions(direction):
    arr = np.zeros((30, 34, 40), np.float32)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    arr[:] = np.exp(-((ii - 21.3) ** 2 / 18 + (jj - 15.2) ** 2 / 10 + (kk - 12.7) ** 2 / 14))
    image = make_image(arr, (0.9, 1.2, 1.7), (10.0, -20.0, 30.0), direction)
    before = _blob_centroid(image)
    resampled = resample_to_spacing(image, 2.0)
    assert resampled.GetSpacing() == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(resampled.GetDirection(), image.GetDirection())
    np.testing.assert_allclose(_blob_centroid(resampled), before, atol=0.25)  # well under a voxel


def test_crop_or_pad_keeps_every_voxel_where_it_was(direction):
    arr = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    image = make_image(arr, (0.5, 1.0, 3.0), (1.0, 2.0, 3.0), direction)
    out = crop_or_pad(image, start=(-2, 3, 1), size=(5, 6, 7), pad_value=-1.0)
    out_arr = sitk.GetArrayFromImage(out)
    assert out_arr.shape == (7, 6, 5)
    assert out_arr[0, 0, 0] == -1.0  # index -2 is outside: padded
    # Voxel (i=1, j=4, k=2) of the input is (3, 1, 1) of the output, at the same physical point.
    assert out_arr[1, 1, 3] == arr[2, 4, 1]
    np.testing.assert_allclose(out.TransformIndexToPhysicalPoint((3, 1, 1)),
                               image.TransformIndexToPhysicalPoint((1, 4, 2)), atol=1e-9)


unit = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(origin=st.tuples(*[st.floats(-500, 500)] * 3), spacing=st.tuples(*[st.floats(0.05, 10.0)] * 3),
       axis=st.tuples(unit, unit, unit).filter(lambda a: np.linalg.norm(a) > 1e-3), angle=st.floats(-180, 180),
       flip=st.sampled_from([1.0, -1.0]), index=st.tuples(*[st.floats(-50, 300)] * 3))
def test_index_physical_ras_round_trip(origin, spacing, axis, angle, flip, index):
    direction = rotation(axis, angle) @ np.diag([1.0, 1.0, flip])
    geometry = ImageGeometry(origin=origin, spacing=spacing, direction=direction, size=(10, 10, 10))
    p = geometry.index_to_physical(index)
    back = geometry.physical_to_index(ras_to_lps(lps_to_ras(p)))
    np.testing.assert_allclose(back, index, atol=1e-6)


def test_directions_fixture_is_orthonormal():
    for d in DIRECTIONS.values():
        np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-12)


def test_model_grid_shows_the_same_anatomy_for_any_axis_order(direction):
    from landmarkloc.geometry.resample import to_model_grid

    arr = np.zeros((30, 34, 40), np.float32)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in arr.shape], indexing="ij")
    arr[:] = np.exp(-((ii - 21.3) ** 2 / 18 + (jj - 15.2) ** 2 / 10 + (kk - 12.7) ** 2 / 14))
    image = make_image(arr, (0.9, 1.2, 1.7), (10.0, -20.0, 30.0), direction)
    grid = to_model_grid(image, 1.5)
    assert np.all(np.diag(np.array(grid.GetDirection()).reshape(3, 3)) > 0.5)  # axes run along +L, +P, +S
    np.testing.assert_allclose(_blob_centroid(grid), _blob_centroid(image), atol=0.3)
    # The RAS-stored image is the LPS one mirrored in memory: on the model grid they coincide.
    lps = to_model_grid(make_image(arr, (1, 1, 1), (0, 0, 0), DIRECTIONS["LPS"]), 1.0)
    ras = to_model_grid(make_image(arr[:, ::-1, ::-1].copy(), (1, 1, 1), (39, 33, 0), DIRECTIONS["RAS"]), 1.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(ras), sitk.GetArrayFromImage(lps), atol=1e-5)
    np.testing.assert_allclose(ras.GetOrigin(), lps.GetOrigin(), atol=1e-9)


def test_geometry_does_not_import_io():
    """geometry/ sits below io/ (docs/architecture.md): the shared point types live in landmarkloc.points."""
    import ast
    from pathlib import Path

    import landmarkloc.geometry as geometry_package

    offenders = []
    for source in Path(geometry_package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if module.startswith("..io") or module.startswith("landmarkloc.io"):
                    offenders.append(f"{source.name}: {module}")
    assert not offenders


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_canonical_direction_is_the_direction_canonical_orientation_gives(direction, order):
    """The calibration's pose frame (computed without moving voxels) is the grid the networks see."""
    d = np.asarray(direction)[:, list(order)]
    image = sitk.Image([4, 5, 6], sitk.sitkFloat32)
    image.SetDirection(tuple(d.ravel()))
    got = np.array(canonical_orientation(image).GetDirection()).reshape(3, 3)
    assert np.allclose(got, canonical_direction(d))


def test_random_rotation_is_a_bounded_seeded_rotation():
    """The training augmentations' rotation (geometry/rotations.py): orthonormal, det 1, angles <= max, seeded."""
    import torch

    from landmarkloc.geometry.rotations import random_rotation, rotation_matrix

    for ndim in (2, 3):
        r = random_rotation(ndim, 20.0, torch.Generator().manual_seed(3))
        assert r.dtype == torch.float64 and r.shape == (ndim, ndim)
        assert torch.allclose(r @ r.T, torch.eye(ndim, dtype=torch.float64), atol=1e-12)
        assert abs(float(torch.det(r)) - 1.0) < 1e-12
        assert torch.equal(r, random_rotation(ndim, 20.0, torch.Generator().manual_seed(3)))
        cos = float(r[0, 0]) if ndim == 2 else (float(torch.trace(r)) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) <= 20.0 * (3 if ndim == 3 else 1) + 1e-9
    assert np.allclose(random_rotation(3, 0.0, torch.Generator()).numpy(), np.eye(3))
    assert np.allclose(rotation_matrix(2, 90.0), [[0, -1], [1, 0]])
