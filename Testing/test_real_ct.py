"""A real CT (../shared/data/ct, skipped when absent): read right as NIfTI and as DICOM, refused or flagged by the
brain and ceph models, and a one-shot support for a moved copy of itself (ncc and registration)."""

from __future__ import annotations

import glob
import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA

from landmarkloc.cli import main
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import read_points, write_points
from landmarkloc.points import ControlPoint

CT = SHARED_DATA / "ct"
NIFTI = CT / "example_ct.nii.gz"
DICOM = CT / "example_ct_dicom"

pytestmark = [pytest.mark.data, pytest.mark.skipif(not NIFTI.is_file() or not DICOM.is_dir(),
                                                   reason="needs ../shared/data/ct")]


def _nifti_by_hand():
    """(LPS origin, spacing, HU array [k, j, i]) from the file's bytes, without ITK: what reading must give."""
    data = gzip.open(NIFTI).read()
    dims = struct.unpack("<8h", data[40:56])
    dtype = {4: "<i2", 8: "<i4", 16: "<f4", 512: "<u2"}[struct.unpack("<h", data[70:72])[0]]
    pixdim = struct.unpack("<8f", data[76:108])
    offset, slope, intercept = int(struct.unpack("<f", data[108:112])[0]), *struct.unpack("<2f", data[112:120])
    srow = np.reshape(struct.unpack("<12f", data[280:328]), (3, 4))
    assert np.allclose(np.abs(srow[:, :3]), np.diag(pixdim[1:4]))  # axis-aligned: the origin is the offset
    voxels = np.frombuffer(data[offset:], dtype, count=int(np.prod(dims[1:4]))).reshape(dims[3:0:-1])
    hu = voxels * (slope or 1.0) + intercept
    return np.array([-srow[0, 3], -srow[1, 3], srow[2, 3]]), np.array(pixdim[1:4]), hu, np.sign(np.diag(srow))


def test_the_nifti_ct_reads_with_its_geometry_and_hounsfield_units():
    origin, spacing, hu, signs = _nifti_by_hand()
    ct = read_image(NIFTI)
    assert ct.GetSize() == (122, 101, 112)
    np.testing.assert_allclose(ct.GetOrigin(), origin, atol=1e-4)
    np.testing.assert_allclose(ct.GetSpacing(), spacing)
    np.testing.assert_allclose(np.reshape(ct.GetDirection(), (3, 3)), np.diag(signs * [-1, -1, 1]))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), hu)
    assert (hu.min(), hu.max()) == (-1207, 3382)


def test_the_dicom_ct_reads_with_its_slice_positions_and_rescaled_hounsfield_units():
    headers = []
    for name in sorted(glob.glob(str(DICOM / "*"))):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        headers.append(reader)
    positions = np.array(sorted(([float(v) for v in h.GetMetaData("0020|0032").split("\\")] for h in headers),
                                key=lambda p: p[2]))
    pixel = [float(v) for v in headers[0].GetMetaData("0028|0030").split("\\")]
    intercept = float(headers[0].GetMetaData("0028|1052"))
    ct = read_image(DICOM)
    assert ct.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(ct.GetOrigin(), positions[0], atol=1e-4)  # the lowest slice's corner
    np.testing.assert_allclose(ct.GetSpacing(), [*pixel, np.median(np.diff(positions[:, 2]))])
    np.testing.assert_allclose(ct.GetDirection(), np.eye(3).ravel())
    hu = sitk.GetArrayViewFromImage(ct)
    assert intercept == -1024 and hu.min() == -1024  # stored 0 (outside the scan circle) rescaled to air
    body = hu[:, 192:320, 192:320]  # the middle of the abdomen: soft tissue around 0..100 HU, bone well above
    assert -150 < np.median(body) < 150 and hu.max() > 700


def _localize(model, image, tmp_path, capsys):
    capsys.readouterr()
    code = main(["localize", str(image), "--model", model, "-o", str(tmp_path / "ct.mrk.json"), "-q",
                 "--device", "cpu"])
    return code, capsys.readouterr().err


def test_the_brain_model_warns_and_flags_every_point_of_a_ct(tmp_path, capsys):
    code, err = _localize("brain-t1-ixi16", NIFTI, tmp_path, capsys)
    assert code == 0
    assert "the image's intensities are unlike the model's training images" in err
    points = read_points(tmp_path / "ct.mrk.json")
    assert points and not any(p.selected for p in points)  # every point found is flagged (written unselected)
    assert all(p.properties.get("unlike_training") == 1 for p in points)


def test_the_ceph_model_refuses_the_ct_volume(tmp_path, capsys):
    code, err = _localize("ceph-isbi19", NIFTI, tmp_path, capsys)
    assert code == 2 and "2D model needs a 2D image" in err
    assert not (tmp_path / "ct.mrk.json").exists()


def _ct_slice(tmp_path):
    """A coronal slice of the CT, as a 2D image with its own geometry (written to the test folder only)."""
    ct = read_image(NIFTI)
    sitk.WriteImage(ct[:, 50, :], str(tmp_path / "slice.nrrd"))
    return tmp_path / "slice.nrrd"


def test_the_ceph_model_flags_every_point_of_a_ct_slice(tmp_path, capsys):
    code, err = _localize("ceph-isbi19", _ct_slice(tmp_path), tmp_path, capsys)
    assert code == 0, err
    points = read_points(tmp_path / "ct.mrk.json")
    assert points and not any(p.selected for p in points)


def test_the_ceph_model_warns_that_a_ct_slice_is_unlike_its_training_images(tmp_path, capsys):
    code, err = _localize("ceph-isbi19", _ct_slice(tmp_path), tmp_path, capsys)
    assert code == 0 and "unlike the model's training images" in err


SUPPORT_INDICES = [(59, 44, 57), (74, 49, 37), (39, 36, 72), (64, 62, 87)]  # inside the body, [i, j, k]


@pytest.fixture(scope="module")
def moved_ct(tmp_path_factory):
    """The CT as support (4 points inside the body) and a moved copy of it as the query (4 degrees about the
    vertical axis, 12, -9, 6 mm): where the points are in the query is known exactly."""
    folder = tmp_path_factory.mktemp("moved_ct")
    ct = read_image(NIFTI)
    points = [ControlPoint(f"P{n}", ct.TransformIndexToPhysicalPoint(index)) for n, index in enumerate(SUPPORT_INDICES)]
    write_points(folder / "support.mrk.json", points)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(ct.TransformIndexToPhysicalPoint(SUPPORT_INDICES[0]))
    motion.SetRotation(0.0, 0.0, np.radians(4.0))
    motion.SetTranslation((12.0, -9.0, 6.0))
    sitk.WriteImage(sitk.Resample(ct, ct, motion, sitk.sitkLinear, -1024.0), str(folder / "query.nii.gz"))
    inverse = motion.GetInverse()  # Resample maps query points to support points
    truth = {p.label: np.array(inverse.TransformPoint(tuple(p.position))) for p in points}
    return folder, truth


@pytest.mark.parametrize("method, tolerance_mm", [("ncc", 3.0), ("registration", 1.0)])
def test_oneshot_finds_the_support_points_in_a_moved_ct(moved_ct, capsys, method, tolerance_mm):
    """ncc within a voxel (3 mm; it does not model the rotation), registration within 1 mm."""
    folder, truth = moved_ct
    out = folder / f"{method}.mrk.json"
    assert main(["oneshot", "--method", method, "--query", str(folder / "query.nii.gz"), "--support", str(NIFTI),
                 "--support-markups", str(folder / "support.mrk.json"), "-o", str(out), "-q"]) == 0
    found = {p.label: p for p in read_points(out)}
    assert found.keys() == truth.keys()
    for label, position in truth.items():
        assert np.linalg.norm(found[label].position - position) < tolerance_mm, (label, found[label].position)
