"""Image reading keeps geometry; 2D pictures need a pixel size; bad files give clear errors."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DIRECTIONS, make_image, rotation
from hypothesis import given, settings
from hypothesis import strategies as st

from landmarkloc.errors import InputError
from landmarkloc.io.image import read_image, squeeze_single_slice, write_image
from landmarkloc.io.labelmap import MAX_LABELS, distinct_labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_volume_formats_keep_geometry(tmp_path, suffix):
    # NIfTI stores directions as a quaternion in float32: compare with its precision.
    image = make_image(np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), (0.7, 1.1, 2.5),
                       (3.0, -4.0, 5.5), DIRECTIONS["oblique"])
    write_image(image, tmp_path / f"img{suffix}")
    back = read_image(tmp_path / f"img{suffix}")
    assert back.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def _rgb_png(path, grey_equal=True):
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[5:10, 20:25] = (200, 200, 200) if grey_equal else (255, 0, 0)
    image = sitk.GetImageFromArray(arr, isVector=True)
    sitk.WriteImage(image, str(path))


def test_png_needs_a_pixel_size(tmp_path):
    _rgb_png(tmp_path / "x.png")
    with pytest.raises(InputError, match="--spacing 0.1"):
        read_image(tmp_path / "x.png")


def test_rgb_png_becomes_grey_with_given_spacing(tmp_path):
    _rgb_png(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png", spacing=0.1)
    assert image.GetDimension() == 2 and image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetSpacing() == (0.1, 0.1)
    arr = sitk.GetArrayFromImage(image)
    assert arr.shape == (30, 40) and arr[7, 22] == 200 and arr[0, 0] == 0


def test_colour_png_uses_luminance(tmp_path):
    _rgb_png(tmp_path / "c.png", grey_equal=False)
    arr = sitk.GetArrayFromImage(read_image(tmp_path / "c.png", spacing=(0.1, 0.2)))
    assert arr[7, 22] == pytest.approx(0.299 * 255, rel=1e-5)


def test_dicom_series_folder(tmp_path):
    volume = make_image((np.arange(4 * 8 * 9).reshape(4, 8, 9) % 50).astype(np.int16), (0.5, 0.5, 2.0),
                        (10.0, 20.0, 30.0), np.eye(3))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetSize()[2]):
        s = volume[:, :, k]
        s.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0028|0030", "0.5\\0.5")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)
    image = read_image(folder)
    assert image.GetSize() == (9, 8, 4)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 2.0), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (10.0, 20.0, 30.0), atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError):
        read_image(path)


def test_nan_voxels_and_4d_are_refused(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    write_image(make_image(arr, (1, 1, 1), (0, 0, 0), np.eye(3)), tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "nan.nrrd")
    four = sitk.Image([4, 4, 4, 3], sitk.sitkFloat32)
    sitk.WriteImage(four, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "4d.nii.gz")


def test_single_slice_volume_becomes_2d_with_same_physical_points():
    image = make_image(np.zeros((1, 6, 7), np.float32), (0.3, 0.4, 1.0), (5.0, 6.0, 0.0),
                       np.diag([-1.0, -1.0, 1.0]))
    flat = squeeze_single_slice(image)
    assert flat.GetDimension() == 2
    np.testing.assert_allclose(flat.TransformContinuousIndexToPhysicalPoint((2.5, 3.0)),
                               image.TransformContinuousIndexToPhysicalPoint((2.5, 3.0, 0.0))[:2])


def test_complete_gzip_files_are_read_whatever_their_trailer_says(tmp_path):
    """Two gzip members (valid gzip; the last trailer holds only the second member's size): the cheap trailer
    check differs, the stream is then decompressed to its end and found complete."""
    import gzip

    from landmarkloc.io.image import check_image_file

    whole = tmp_path / "whole.nii"
    volume = np.random.default_rng(0).normal(size=(8, 10, 12)).astype(np.float32)
    sitk.WriteImage(make_image(volume, (1, 1, 2), (0, 0, 0), np.eye(3)), str(whole))
    data = whole.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    check_image_file(two)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(two)), sitk.GetArrayFromImage(read_image(whole)))
    two.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:])[:-40])
    with pytest.raises(InputError, match="two.nii.gz is truncated"):
        check_image_file(two)


# --------------------------------------------------------------------------- DICOM series with irregular slices

ROTATION = rotation([1.0, 2.0, 3.0], 25.0)  # an oblique acquisition: row, column and normal not along LPS axes
FIRST = -30 * ROTATION[:, 0] - 27 * ROTATION[:, 1] - 30 * ROTATION[:, 2]
TILT = np.tan(np.radians(20.0)) * ROTATION[:, 1]  # 20 degree gantry tilt: origins move along the column axis
UNEVEN = [2.5, 1.6, 3.4, 2.4, 2.6, 1.5, 3.5] * 3 + [2.5, 2.5]

IRREGULAR_SERIES = [
    # (description, stack_origins arguments, slices left out, warning fragment)
    ("two missing slices", {}, {2, 11}, "2 missing slices (a gap of 5 mm where slices are 2.5 mm apart)"),
    ("uneven spacing", {"steps": UNEVEN}, (), "uneven slice spacing (1.5 to 3.5 mm)"),
    ("gantry tilt", {"shift": TILT}, (), "a gantry tilt of 20 degrees"),
    ("gantry tilt and a missing slice", {"shift": TILT}, {5}, "1 missing slice (a gap of 5 mm where slices are 2.5 mm "
                                                              "apart) and a gantry tilt of 20 degrees"),
]


def _acquired(origins_kw):
    """Which LPS points lie inside the scanned (possibly sheared) stack."""
    shift = np.asarray(origins_kw.get("shift", np.zeros(3)))
    depth = sum(origins_kw.get("steps", [2.5] * 23))

    def inside(points):
        local = (points - FIRST) @ ROTATION
        local[:, :2] -= local[:, 2:3] * (shift @ ROTATION)[:2]
        return np.all((local >= -1e-6) & (local <= np.array([39 * 1.5, 35 * 1.5, depth]) + 1e-6), axis=1)
    return inside


@pytest.mark.parametrize("what, origins_kw, skip, warning", IRREGULAR_SERIES, ids=[r[0] for r in IRREGULAR_SERIES])
def test_irregular_dicom_series_is_resampled_to_the_scanned_positions(tmp_path, what, origins_kw, skip, warning):
    from reliability_inputs import BLOB_CENTRES, blob_centre, dicom_series, error_against_truth, stack_origins

    from landmarkloc.errors import InputWarning
    from landmarkloc.io.dicom import series_files

    origins = stack_origins(first=FIRST, normal=ROTATION[:, 2], **origins_kw)
    folder = dicom_series(tmp_path / "series", origins, row=ROTATION[:, 0], col=ROTATION[:, 1], skip=skip)
    with pytest.warns(InputWarning) as caught:
        image = read_image(folder)
    assert len(caught) == 1 and warning in str(caught[0].message)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), ROTATION, atol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), (1.5, 1.5, 2.5), atol=1e-4)
    # Every voxel where the scanner put it: the phantom is defined in LPS, so compare with it voxel by voxel
    # (linear interpolation between slices 2.5 mm apart of 7 mm wide blobs: well below 3 % of their height).
    acquired = _acquired(origins_kw)
    assert error_against_truth(image, acquired) < 20.0
    for centre in BLOB_CENTRES:
        assert np.linalg.norm(blob_centre(image, centre) - centre) < 0.5
    # ITK alone stacks the same slices at one spacing along the normal: far off, so the test can tell.
    naive = sitk.ReadImage(series_files(folder))
    assert error_against_truth(naive, acquired) > 50.0


def test_series_with_a_gap_matches_the_intact_series(tmp_path):
    from reliability_inputs import dicom_series, stack_origins

    origins = stack_origins(first=FIRST, normal=ROTATION[:, 2])
    intact = read_image(dicom_series(tmp_path / "intact", origins, row=ROTATION[:, 0], col=ROTATION[:, 1]))
    with pytest.warns(UserWarning, match="1 missing slice"):
        gap = read_image(dicom_series(tmp_path / "gap", origins, row=ROTATION[:, 0], col=ROTATION[:, 1], skip={9}))
    assert gap.GetSize() == intact.GetSize()
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(gap, getter)(), getattr(intact, getter)(), atol=1e-4)
    a, b = sitk.GetArrayFromImage(intact), sitk.GetArrayFromImage(gap)
    kept = [k for k in range(a.shape[0]) if k != 9]
    np.testing.assert_array_equal(a[kept], b[kept])  # scanned slices untouched
    np.testing.assert_allclose(b[9], (a[8] + a[10]) / 2, atol=1e-3)  # the missing one: between its neighbours


def test_dicom_series_that_are_not_one_volume_are_refused(tmp_path):
    from reliability_inputs import dicom_series, stack_origins

    from landmarkloc.io.image import check_image_file

    origins = stack_origins(count=8)
    twice = dicom_series(tmp_path / "twice", np.r_[origins, origins])  # e.g. two echoes in one series
    with pytest.raises(InputError, match="8 slice.s. at the position of another"):
        check_image_file(twice)
    bent = origins.copy()
    bent[4:, 0] += 3.0  # positions off a line
    with pytest.raises(InputError, match="do not lie on a line"):
        check_image_file(dicom_series(tmp_path / "bent", bent))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([np.uint8, np.int16, np.int32, np.float32]), st.integers(1, 80), st.integers(-40000, 40000),
       st.integers(0, 3000), st.integers(0, 2**31 - 1))
def test_a_label_map_is_told_from_a_scan_by_its_number_of_distinct_values(dtype, labels, offset, size, seed):
    """The label-map check counts distinct values as sorting them would (the warning's count, a scan's 0)."""
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo = max(offset, info.min) if info else offset
    hi = min(lo + labels, info.max + 1) if info else lo + labels
    values = np.random.default_rng(seed).integers(lo, max(hi, lo + 1), size=size).astype(dtype)
    expected = len(np.unique(values))
    assert distinct_labels(values) == (expected if 2 <= expected <= MAX_LABELS else 0)
    assert distinct_labels(values.astype(np.float32) + 0.5) == 0  # not integers: a scan
