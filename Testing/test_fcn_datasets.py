"""Dataset descriptions: folders of images with landmark files, CSV lists and pixel tables."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from landmarkloc.errors import InputError
from landmarkloc.io.datasets import load_dataset
from landmarkloc.io.markups import write_points
from landmarkloc.points import ControlPoint

CEPH = Path(__file__).resolve().parents[2] / "shared" / "data" / "ceph"


def _png(path, size=(40, 30)):
    arr = (np.arange(size[0] * size[1]) % 251).reshape(size[1], size[0]).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def test_pixel_table_gives_physical_positions_with_the_given_spacing(tmp_path):
    (tmp_path / "images").mkdir()
    _png(tmp_path / "images" / "001.png")
    _png(tmp_path / "images" / "002.png")
    (tmp_path / "landmarks.csv").write_text(
        "image,index,landmark,x_px,y_px\n001.png,1,sella,10,20\n001.png,2,nasion,30.5,5\n002.png,1,sella,1,2\n")
    ds = load_dataset(tmp_path / "landmarks.csv")
    assert ds.names == ["sella", "nasion"] and len(ds.cases) == 2
    image, points = ds.cases[0].load(ds.names, spacing=0.1)
    assert image.GetSize() == (40, 30)
    np.testing.assert_allclose(points, [[1.0, 2.0], [3.05, 0.5]])
    _, points2 = ds.cases[1].load(ds.names, spacing=0.1)
    assert np.all(np.isnan(points2[1]))  # nasion not annotated in 002
    with pytest.raises(InputError):  # a JPEG/PNG needs its pixel size
        ds.cases[0].load(ds.names)


def test_folder_and_list_datasets(tmp_path):
    img = sitk.Image(8, 8, 4, sitk.sitkFloat32)
    img.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "b.nii.gz"))
    write_points(tmp_path / "a.mrk.json", [ControlPoint("X", [2, 4, 6]), ControlPoint("Y", [0, 0, 3])])
    write_points(tmp_path / "b.fcsv", [ControlPoint("Y", [1, 1, 1])])
    ds = load_dataset(tmp_path)
    assert [c.name for c in ds.cases] == ["a", "b"] and ds.names == ["X", "Y"]
    _, pts = ds.cases[0].load(ds.names)
    np.testing.assert_allclose(pts, [[2, 4, 6], [0, 0, 3]])
    (tmp_path / "list.csv").write_text("image,landmarks\nb.nii.gz,b.fcsv\n")
    listed = load_dataset(tmp_path / "list.csv")
    assert listed.names == ["Y"] and listed.summary()["images"] == 1
    (tmp_path / "bad.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError):
        load_dataset(tmp_path / "bad.csv")
    with pytest.raises(InputError):
        load_dataset(tmp_path / "missing")


@pytest.mark.data
@pytest.mark.skipif(not (CEPH / "landmarks.csv").is_file(), reason="needs ../shared/data/ceph")
def test_cephalometric_table_loads():
    ds = load_dataset(CEPH / "landmarks.csv")
    assert len(ds.names) == 19 and ds.names[0] == "sella" and len(ds.cases) >= 150
    image, points = ds.cases[0].load(ds.names, spacing=0.1)
    assert image.GetSize() == (1935, 2400) and image.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(points[0], [83.2, 99.4])  # sella of 001 at pixel (832, 994)


def test_masked_copies_are_added_for_cases_with_a_mask(tmp_path):
    from landmarkloc.io.image import write_image
    from landmarkloc.training.fcn import prepare_cases

    arr = np.full((10, 12, 14), 100.0, np.float32)
    arr[3:7, 4:8, 5:9] = 500.0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((2.0, 2.0, 2.0))
    mask = sitk.GetImageFromArray((arr > 200).astype(np.uint8))
    mask.CopyInformation(image)
    write_image(image, tmp_path / "a.nii.gz")
    write_image(mask, tmp_path / "a_mask.nii.gz")
    write_points(tmp_path / "a.mrk.json", [ControlPoint("p", [12.0, 10.0, 8.0])])
    (tmp_path / "list.csv").write_text("image,landmarks,mask\na.nii.gz,a.mrk.json,a_mask.nii.gz\n")
    ds = load_dataset(tmp_path / "list.csv")
    plain = prepare_cases(ds, (2.0, 2.0, 2.0), "mr")
    both = prepare_cases(ds, (2.0, 2.0, 2.0), "mr", masked_copies=True)
    assert [c.name for c in plain] == ["a"] and [c.name for c in both] == ["a", "a#masked"]
    masked = both[1].array
    assert masked[0, 0, 0] == 0.0 and masked[5, 6, 7] > 0.9  # outside the mask is background now
    np.testing.assert_allclose(both[1].landmarks, both[0].landmarks)
