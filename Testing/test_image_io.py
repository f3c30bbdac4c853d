"""Image reading keeps geometry; 2D pictures need a pixel size; bad files give clear errors."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DIRECTIONS, make_image

from landmarkloc.errors import InputError
from landmarkloc.io.image import read_image, squeeze_single_slice, write_image


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
