"""Reference points and boxes from label maps, checked against ITK and through real MRML."""

import numpy as np
import pytest
import SimpleITK as sitk

from landmarkloc.cli import main
from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry, lps_to_ras
from landmarkloc.geometry.labels import (
    box_from_points,
    group_extreme_points,
    label_boxes,
    label_centroids,
    label_extreme_points,
)
from landmarkloc.io.image import write_image
from landmarkloc.io.markups import read_boxes, read_points


def _itk_centroids(labelmap):
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(labelmap, sitk.sitkUInt8))
    return {lab: np.array(stats.GetCentroid(lab)) for lab in stats.GetLabels()}


def test_centroids_equal_itk(labelmap_3d):
    expected = _itk_centroids(labelmap_3d)
    points = label_centroids(labelmap_3d, [3, 7], ["A", "B"])
    assert [p.label for p in points] == ["A", "B"]
    np.testing.assert_allclose(points[0].position, expected[3], atol=1e-6)
    np.testing.assert_allclose(points[1].position, expected[7], atol=1e-6)


def test_extreme_points_lie_on_the_structure_at_its_extremes(labelmap_3d):
    points = label_extreme_points(labelmap_3d, [3], ["A"])
    assert [p.label for p in points] == ["A_xmin", "A_xmax", "A_ymin", "A_ymax", "A_zmin", "A_zmax"]
    geometry = ImageGeometry.from_image(labelmap_3d)
    arr = sitk.GetArrayFromImage(labelmap_3d)
    idx = np.argwhere(arr == 3)[:, ::-1]
    for axis in range(3):
        for p, value in zip(points[2 * axis: 2 * axis + 2], (idx[:, axis].min(), idx[:, axis].max())):
            voxel = np.round(geometry.physical_to_index(p.position)).astype(int)
            np.testing.assert_allclose(geometry.physical_to_index(p.position), voxel, atol=1e-6)
            assert arr[voxel[2], voxel[1], voxel[0]] == 3
            assert voxel[axis] == value
    # The lone voxel at (i=10, j=12, k=6) is the only one on the j-max face.
    np.testing.assert_allclose(geometry.physical_to_index(points[3].position), [10, 12, 6], atol=1e-6)


def test_box_from_extreme_points_equals_label_box(labelmap_3d):
    box = label_boxes(labelmap_3d, [7], ["B"])[0]
    points = label_extreme_points(labelmap_3d, [7], ["B"])
    spanned = box_from_points(group_extreme_points(points)["B"], box.orientation, "B",
                              padding=labelmap_3d.GetSpacing())
    np.testing.assert_allclose(spanned.center, box.center, atol=1e-6)
    np.testing.assert_allclose(spanned.size, box.size, atol=1e-6)
    np.testing.assert_allclose(box.size, [8 * 0.8, 6 * 1.3, 5 * 2.1], atol=1e-9)


def test_missing_label_is_reported(labelmap_3d):
    with pytest.raises(InputError, match="label.* 5 not found.*labels present: 0, 3, 7"):
        label_centroids(labelmap_3d, [3, 5])


def _mrml_points(scene, path):
    node = scene.GetNodeByID(scene._landmarkloc_markups_logic.LoadMarkups(str(path)))
    out = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out.append((node.GetNthControlPointLabel(i), np.array(p)))
    return out


@pytest.mark.parametrize("suffix", [".mrk.json", ".fcsv"])
def test_derive_cli_writes_centroids_that_mrml_reads_exactly(tmp_path, labelmap_3d, mrml_scene, suffix):
    write_image(sitk.Cast(labelmap_3d, sitk.sitkUInt8), tmp_path / "seg.nrrd")
    out = tmp_path / f"centroids{suffix}"
    assert main(["derive", str(tmp_path / "seg.nrrd"), "--labels", "3,7", "--names", "A,B", "-o", str(out)]) == 0
    expected = _itk_centroids(labelmap_3d)
    if suffix == ".fcsv":
        import slicer

        node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        storage = slicer.vtkMRMLMarkupsFiducialStorageNode()
        mrml_scene.AddNode(storage)
        storage.SetFileName(str(out))
        assert storage.ReadData(node) == 1
        got = []
        for i in range(node.GetNumberOfControlPoints()):
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, p)
            got.append((node.GetNthControlPointLabel(i), np.array(p)))
    else:
        got = _mrml_points(mrml_scene, out)
    assert [g[0] for g in got] == ["A", "B"]
    np.testing.assert_allclose(got[0][1], lps_to_ras(expected[3]), atol=1e-4)
    np.testing.assert_allclose(got[1][1], lps_to_ras(expected[7]), atol=1e-4)


def test_derive_cli_boxes_are_read_by_mrml(tmp_path, labelmap_3d, mrml_scene):
    write_image(sitk.Cast(labelmap_3d, sitk.sitkUInt8), tmp_path / "seg.nii.gz")
    out = tmp_path / "boxes.mrk.json"
    assert main(["derive", str(tmp_path / "seg.nii.gz"), "--labels", "3,7", "--kind", "box", "-o", str(out)]) == 0
    boxes = read_boxes(out)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(labelmap_3d, sitk.sitkUInt8))
    geometry = ImageGeometry.from_image(labelmap_3d)
    for box, label in zip(boxes, (3, 7)):
        bb = np.array(stats.GetBoundingBox(label), dtype=float)  # index start, size
        center = geometry.index_to_physical(bb[:3] + (bb[3:] - 1) / 2)
        np.testing.assert_allclose(box.center, center, atol=1e-6)
        node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        storage = node.CreateDefaultStorageNode()
        mrml_scene.AddNode(storage)
        storage.SetFileName(str(out))
        assert storage.ReadData(node) == 1
        if label == 3:
            c = [0.0, 0.0, 0.0]
            node.GetCenterWorld(c)
            np.testing.assert_allclose(c, lps_to_ras(center), atol=1e-4)
            np.testing.assert_allclose(node.GetSize(), bb[3:] * geometry.spacing, atol=1e-4)


def test_derive_extreme_cli(tmp_path, labelmap_3d):
    write_image(sitk.Cast(labelmap_3d, sitk.sitkUInt8), tmp_path / "seg.mha")
    out = tmp_path / "support.csv"
    assert main(["derive", str(tmp_path / "seg.mha"), "--labels", "7", "--names", "Organ", "--kind", "extreme",
                 "-o", str(out)]) == 0
    assert [p.label for p in read_points(out)] == [f"Organ_{a}{m}" for a in "xyz" for m in ("min", "max")]


def test_derive_cli_missing_label_exits_2_and_writes_nothing(tmp_path, labelmap_3d, capsys):
    write_image(sitk.Cast(labelmap_3d, sitk.sitkUInt8), tmp_path / "seg.nrrd")
    out = tmp_path / "x.mrk.json"
    assert main(["derive", str(tmp_path / "seg.nrrd"), "--labels", "3,99", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "99 not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [tmp_path / "seg.nrrd"]
