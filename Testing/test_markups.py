"""Markups files: our round trips, and real Slicer MRML reading what we write (and vice versa)."""

import json

import numpy as np
import pytest
from conftest import rotation

from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import lps_to_ras
from landmarkloc.io.markups import read_boxes, read_points, write_boxes, write_points
from landmarkloc.points import Box, ControlPoint

POINTS = [
    ControlPoint("Sella", [12.25, -40.5, 7.125], properties={"confidence": 0.93, "spread_mm": 1.25}),
    ControlPoint("Nasion, soft", [-3.0, 55.75, -1.5], description="moved by hand", selected=False),
]
FORMATS = ["pts.mrk.json", "pts.fcsv", "pts.csv"]


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_points_round_trip(tmp_path, name, system):
    path = tmp_path / name
    write_points(path, POINTS, coordinate_system=system)
    back = read_points(path)
    assert [p.label for p in back] == [p.label for p in POINTS]
    for a, b in zip(back, POINTS):
        np.testing.assert_allclose(a.position, b.position, atol=1e-9)
        assert a.selected == b.selected
        assert a.properties == pytest.approx(b.properties)
    assert back[1].description == "moved by hand"


def test_ras_file_stores_ras_numbers(tmp_path):
    write_points(tmp_path / "p.mrk.json", POINTS[:1], coordinate_system="RAS")
    markup = json.loads((tmp_path / "p.mrk.json").read_text())["markups"][0]
    assert markup["coordinateSystem"] == "RAS"
    np.testing.assert_allclose(markup["controlPoints"][0]["position"], [-12.25, 40.5, 7.125])


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_boxes_round_trip(tmp_path, system):
    boxes = [Box("Liver", [10, 20, 30], [50, 60, 70], rotation([1, 1, 0], 20)), Box("Kidney_L", [1, 2, 3], [4, 5, 6])]
    write_boxes(tmp_path / "b.mrk.json", boxes, coordinate_system=system)
    back = read_boxes(tmp_path / "b.mrk.json")
    for a, b in zip(back, boxes):
        assert a.name == b.name
        np.testing.assert_allclose(a.center, b.center, atol=1e-9)
        np.testing.assert_allclose(a.size, b.size, atol=1e-9)
        np.testing.assert_allclose(a.orientation, b.orientation, atol=1e-9)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"markups": 3}', '{"markups": [{"controlPoints": [{}]}]}',
                                  '{"markups": [{"controlPoints": [{"position": ["a", 1, 2]}]}]}',
                                  '{"markups": [{"coordinateSystem": "XYZ", "controlPoints": []}]}'])
def test_broken_json_is_a_clear_error(tmp_path, text):
    path = tmp_path / "bad.mrk.json"
    path.write_text(text)
    with pytest.raises(InputError):
        read_points(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_points(tmp_path / "nope.fcsv")
    (tmp_path / "x.txt").write_text("1,2,3")
    with pytest.raises(InputError, match="unknown markups format"):
        read_points(tmp_path / "x.txt")


# ---------------------------------------------------------------------------- real MRML


def _read_with_mrml(scene, path, node_class, index=0):
    import slicer

    logic = scene._landmarkloc_markups_logic
    node_id = logic.LoadMarkups(str(path)) if index == 0 else None
    if node_id:
        return scene.GetNodeByID(node_id)
    node = scene.AddNewNodeByClass(node_class)
    storage = node.CreateDefaultStorageNode()
    assert storage is not None
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert isinstance(node, getattr(slicer, node_class))
    return node


@pytest.mark.parametrize("name", ["p.mrk.json", "p.fcsv"])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_mrml_reads_our_points(tmp_path, mrml_scene, name, system):
    path = tmp_path / name
    write_points(path, POINTS, coordinate_system=system)
    node = _read_with_mrml(mrml_scene, path, "vtkMRMLMarkupsFiducialNode")
    assert node.GetNumberOfControlPoints() == 2
    for i, p in enumerate(POINTS):
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, world)
        np.testing.assert_allclose(world, lps_to_ras(p.position), atol=1e-4)
        assert node.GetNthControlPointLabel(i) == p.label
        assert bool(node.GetNthControlPointSelected(i)) == p.selected
    assert "confidence=0.93" in node.GetNthControlPointDescription(0)


def test_mrml_reads_our_oblique_roi(tmp_path, mrml_scene):
    r = rotation([0.2, 1.0, -0.4], 35)
    box = Box("Liver", [10.5, -20.25, 30.0], [50.0, 60.0, 70.0], r)
    write_boxes(tmp_path / "roi.mrk.json", [box])
    node = _read_with_mrml(mrml_scene, tmp_path / "roi.mrk.json", "vtkMRMLMarkupsROINode")
    center = [0.0, 0.0, 0.0]
    node.GetCenterWorld(center)
    np.testing.assert_allclose(center, lps_to_ras(box.center), atol=1e-4)
    np.testing.assert_allclose(node.GetSize(), box.size, atol=1e-4)
    for axis in range(3):
        v = [0.0, 0.0, 0.0]
        node.GetAxisWorld(axis, v)
        np.testing.assert_allclose(v, lps_to_ras(r[:, axis]), atol=1e-6)


def test_we_read_what_mrml_writes(tmp_path, mrml_scene):
    import slicer

    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    ras = [[1.5, -2.25, 3.0], [-40.0, 12.0, 99.5]]
    for i, p in enumerate(ras):
        node.AddControlPointWorld(p, f"L{i}")
    storage = node.CreateDefaultStorageNode()
    mrml_scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "mrml.mrk.json"))
    assert storage.WriteData(node) == 1
    points = read_points(tmp_path / "mrml.mrk.json")
    np.testing.assert_allclose([p.position for p in points], lps_to_ras(np.array(ras)), atol=1e-4)
    assert [p.label for p in points] == ["L0", "L1"]

    fcsv_storage = slicer.vtkMRMLMarkupsFiducialStorageNode()
    mrml_scene.AddNode(fcsv_storage)
    fcsv_storage.SetFileName(str(tmp_path / "mrml.fcsv"))
    assert fcsv_storage.WriteData(node) == 1
    np.testing.assert_allclose([p.position for p in read_points(tmp_path / "mrml.fcsv")],
                               lps_to_ras(np.array(ras)), atol=1e-4)

    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld([5.0, 6.0, 7.0])
    roi.SetSize(10.0, 20.0, 30.0)
    roi_storage = roi.CreateDefaultStorageNode()
    mrml_scene.AddNode(roi_storage)
    roi_storage.SetFileName(str(tmp_path / "roi.mrk.json"))
    assert roi_storage.WriteData(roi) == 1
    box = read_boxes(tmp_path / "roi.mrk.json")[0]
    np.testing.assert_allclose(box.center, [-5.0, -6.0, 7.0], atol=1e-4)
    np.testing.assert_allclose(box.size, [10.0, 20.0, 30.0], atol=1e-4)


def _legacy_fcsv(path, version_line):
    path.write_text(version_line + "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                    "vtkMRMLMarkupsFiducialNode_0,10.5,-20,30,0,0,0,1,1,1,0,F-1,,\n"
                    "vtkMRMLMarkupsFiducialNode_1,-4,7.25,-1,0,0,0,1,1,1,0,F-2,,\n")
    return path


NUMBERS = np.array([[10.5, -20.0, 30.0], [-4.0, 7.25, -1.0]])


@pytest.mark.parametrize("version_line, system", [("# Markups fiducial file version = 4.4\n", "RAS"),
                                                  ("", "RAS"),
                                                  ("# Markups fiducial file version = 5.6\n", "LPS")])
def test_fcsv_without_a_coordinate_system_is_read_as_its_writer_meant(tmp_path, version_line, system):
    """Slicer before 4.11 wrote RAS numbers only (and some tools no CoordinateSystem line): a 4.4 file read as LPS
    is mirrored, 50 mm off. A newer file without the line is LPS, as Slicer 5 reads it. Either way: one warning."""
    path = _legacy_fcsv(tmp_path / "legacy.fcsv", version_line)
    with pytest.warns(UserWarning, match=f"legacy.fcsv has no CoordinateSystem line; read as {system}"):
        points = read_points(path)
    expected = lps_to_ras(NUMBERS) if system == "RAS" else NUMBERS
    np.testing.assert_allclose([p.position for p in points], expected, atol=1e-9)


def test_slicer_5_reads_a_versioned_fcsv_without_coordinate_system_as_lps_like_us(tmp_path, mrml_scene):
    import slicer

    path = _legacy_fcsv(tmp_path / "new.fcsv", "# Markups fiducial file version = 5.6\n")
    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsFiducialStorageNode()
    mrml_scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    ras = np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())])
    with pytest.warns(UserWarning):
        np.testing.assert_allclose([p.position for p in read_points(path)], lps_to_ras(ras), atol=1e-9)


def _json(tmp_path, markups):
    path = tmp_path / "m.mrk.json"
    path.write_text(json.dumps({"markups": markups}))
    return path


def test_only_point_lists_give_landmarks(tmp_path):
    curve = {"type": "Curve", "coordinateSystem": "LPS", "controlPoints": [{"label": "c", "position": [1, 2, 3]}]}
    points = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"label": "p", "position": [4, 5, 6]}]}
    assert [p.label for p in read_points(_json(tmp_path, [curve, points]))] == ["p"]
    with pytest.raises(InputError, match="holds no point list, only Curve markups"):
        read_points(_json(tmp_path, [curve]))


def test_a_point_with_two_coordinates_is_refused_not_put_at_z_0(tmp_path):
    two = {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"label": "p", "position": [4, 5]}]}
    with pytest.raises(InputError, match=r"position must be 3 finite numbers \(x, y, z\), got 2"):
        read_points(_json(tmp_path, [two]))


@pytest.mark.parametrize("name", ["p.mrk.json", "p.csv"])
def test_a_label_with_a_line_break_round_trips_where_the_format_can_hold_it(tmp_path, name):
    write_points(tmp_path / name, [ControlPoint("upper\nlower", [1.0, 2.0, 3.0], description="two\nlines")])
    back = read_points(tmp_path / name)[0]
    assert (back.label, back.description) == ("upper\nlower", "two\nlines")


def test_a_label_with_a_line_break_is_refused_for_fcsv_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match="holds a line break, which .fcsv cannot store; write .mrk.json or .csv"):
        write_points(tmp_path / "p.fcsv", [ControlPoint("upper\nlower", [1.0, 2.0, 3.0])])
    assert list(tmp_path.iterdir()) == []


def test_slicer_export_refuses_a_line_break_for_fcsv_with_the_same_message(tmp_path, mrml_scene):
    """The Slicer modules export through the same writer: the same refusal, nothing written."""
    from LandmarkLocalizerLib.mrml import export_points

    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    node.AddControlPointWorld([1.0, 2.0, 3.0], "upper\nlower")
    with pytest.raises(InputError, match="holds a line break, which .fcsv cannot store; write .mrk.json or .csv"):
        export_points(node, tmp_path / "p.fcsv")
    assert list(tmp_path.iterdir()) == []
    export_points(node, tmp_path / "p.mrk.json")
    assert read_points(tmp_path / "p.mrk.json")[0].label == "upper\nlower"
