"""The Slicer boundary against real MRML: volume geometry (oblique, flipped, parent transforms),
point lists and ROIs in world coordinates, exports read back by MRML's own storage nodes."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_testing import (
    DIRECTIONS_LPS,
    add_linear_transform,
    add_volume,
    new_scene,
    node_matrix,
    rigid,
    rotation,
)

from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry, lps_to_ras, lps_to_ras_matrix, ras_to_lps
from landmarkloc.io.image import squeeze_single_slice
from landmarkloc.io.markups import read_boxes, read_points
from landmarkloc.points import Box, ControlPoint

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from LandmarkLocalizerLib import mrml  # noqa: E402
from LandmarkLocalizerLib.models import ModelInfo, check_model_fits  # noqa: E402

SPACING = (0.8, 1.3, 2.1)
ORIGIN_LPS = (-12.5, 40.0, 7.25)


@pytest.fixture
def scene():
    return new_scene()


def ramp(shape=(6, 7, 9)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def world_of_voxel(volume_node, ijk):
    """Where Slicer draws voxel (i, j, k): parent transform to world times IJKToRAS."""
    m = node_matrix(volume_node)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        w = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(w)
        m = np.array([[w.GetElement(r, c) for c in range(4)] for r in range(4)]) @ m
    return (m @ np.append(ijk, 1.0))[:3]


@pytest.mark.parametrize("orientation", sorted(DIRECTIONS_LPS))
def test_volume_to_image_keeps_exact_geometry(scene, orientation):
    direction = DIRECTIONS_LPS[orientation]
    node = add_volume(scene, ramp(), SPACING, ORIGIN_LPS, direction)
    image = mrml.volume_to_image(node)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-9)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ramp())
    for ijk in [(0, 0, 0), (8, 6, 5), (2.5, 3.25, 1.0)]:
        lps = image.TransformContinuousIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps_to_ras(lps), world_of_voxel(node, ijk), atol=1e-9)


def test_parent_transform_is_hardened_into_the_image_geometry(scene):
    node = add_volume(scene, ramp(), SPACING, ORIGIN_LPS, DIRECTIONS_LPS["oblique"])
    outer = add_linear_transform(scene, rigid([0.0, 1.0, 1.0], 40.0, [5.0, -7.0, 12.0]), "outer")
    inner = add_linear_transform(scene, rigid([1.0, 0.0, 0.2], -15.0, [1.0, 2.0, 3.0]), "inner")
    inner.SetAndObserveTransformNodeID(outer.GetID())
    node.SetAndObserveTransformNodeID(inner.GetID())
    image = mrml.volume_to_image(node)
    ImageGeometry.from_image(image).validate()
    for ijk in [(0, 0, 0), (8, 6, 5), (3.5, 1.0, 4.75)]:
        lps = image.TransformContinuousIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps_to_ras(lps), world_of_voxel(node, ijk), atol=1e-9)
    # the local geometry differs: the transform really was applied
    assert not np.allclose(image.GetOrigin(), ORIGIN_LPS)


def test_scaling_transform_changes_the_spacing(scene):
    node = add_volume(scene, ramp(), SPACING, ORIGIN_LPS)
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, np.diag([2.0, 2.0, 2.0, 1.0])).GetID())
    np.testing.assert_allclose(mrml.volume_to_image(node).GetSpacing(), np.multiply(SPACING, 2.0), atol=1e-9)


def test_nonlinear_parent_transform_is_refused(scene):
    node = add_volume(scene, ramp())
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        mrml.volume_to_image(node)


def test_sheared_parent_transform_is_refused(scene):
    node = add_volume(scene, ramp())
    shear = np.eye(4)
    shear[0, 1] = 0.4
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, shear).GetID())
    with pytest.raises(InputError, match="shear"):
        mrml.volume_to_image(node)


def test_volume_without_image_data_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="input volume"):
        mrml.volume_to_image(node)
    with pytest.raises(InputError, match="input volume"):
        mrml.volume_to_image(None)


def test_single_slice_volume_becomes_a_2d_image(scene):
    array = ramp((1, 30, 40))
    node = add_volume(scene, array, (0.1, 0.1, 1.0), (3.0, -2.0, 0.0))
    image = squeeze_single_slice(mrml.volume_to_image(node))
    assert image.GetDimension() == 2
    np.testing.assert_allclose(image.GetSpacing(), (0.1, 0.1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array[0])
    geometry = mrml.volume_geometry(node)
    two_d = ModelInfo(path="m.json", name="ceph", kind="fcn", ndim=2)
    three_d = ModelInfo(path="m.json", name="ct", kind="fcn", ndim=3)
    check_model_fits(two_d, geometry, "xray")
    with pytest.raises(InputError, match="3D model"):
        check_model_fits(three_d, geometry, "xray")
    volume = add_volume(scene, ramp(), name="ct")
    with pytest.raises(InputError, match="2D model"):
        check_model_fits(two_d, mrml.volume_geometry(volume), "ct")


@pytest.mark.parametrize("orientation", ["LAS", "oblique_flipped"])
def test_image_to_volume_round_trip(scene, orientation):
    image = sitk.GetImageFromArray(ramp())
    ImageGeometry(np.array(ORIGIN_LPS), np.array(SPACING), DIRECTIONS_LPS[orientation], image.GetSize()).apply_to(image)
    node = mrml.image_to_volume(scene, image, "evidence")
    back = mrml.volume_to_image(node)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), ramp())


def test_2d_image_to_volume_is_a_single_slice(scene):
    image = sitk.GetImageFromArray(ramp((12, 15))[None][0])
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((1.0, 2.0))
    node = mrml.image_to_volume(scene, image, "map")
    assert node.GetImageData().GetDimensions() == (15, 12, 1)
    np.testing.assert_allclose(world_of_voxel(node, (2, 4, 0)), lps_to_ras([1.0 + 2 * 0.5, 2.0 + 4 * 0.25, 0.0]))


# --------------------------------------------------------------------------- points


def sample_points():
    return [
        ControlPoint("Sella", [10.0, -20.0, 30.5], properties={"confidence": 0.91, "spread_mm": 1.5}),
        ControlPoint("Nasion", [-4.0, 8.25, 12.0], properties={"confidence": 0.31, "spread_mm": 6.0}),
        ControlPoint("Menton", [0.5, 0.0, -3.0], description="uncertain", selected=False,
                     properties={"confidence": 0.7}),
    ]


def test_points_node_has_world_ras_positions_labels_and_confidence(scene):
    node = mrml.add_points_node(scene, sample_points(), "ct fcn", confidence_threshold=0.5)
    assert node.GetName() == "ct fcn"
    assert node.GetNumberOfControlPoints() == 3
    for i, p in enumerate(sample_points()):
        assert node.GetNthControlPointLabel(i) == p.label
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, ras)
        np.testing.assert_allclose(ras, lps_to_ras(p.position))
        assert f"confidence={p.properties['confidence']:.6g}" in node.GetNthControlPointDescription(i)
    # confident -> selected; below the threshold or flagged by the engine -> unselected (drawn amber)
    assert [bool(node.GetNthControlPointSelected(i)) for i in range(3)] == [True, False, False]
    assert node.GetDisplayNode().GetColor() == pytest.approx(mrml.UNCERTAIN_COLOR)


def test_the_uncertain_threshold_recolours_points_in_the_views_but_never_clears_the_engines_flag(scene):
    """Slice and 3D views draw unselected points in the display node's colour (amber), selected ones in its
    selected colour (bluish green): the threshold decides by unselecting, so the views follow the slider."""
    node = mrml.add_points_node(scene, sample_points(), "ct fcn", confidence_threshold=0.5)
    display = node.GetDisplayNode()
    assert display.GetColor() != pytest.approx(display.GetSelectedColor())
    selected = lambda: [bool(node.GetNthControlPointSelected(i)) for i in range(3)]  # noqa: E731
    assert selected() == [True, False, False]
    mrml.apply_uncertain_below(node, 0.2)
    assert selected() == [True, True, False]  # Menton was flagged by the engine: it stays uncertain
    mrml.apply_uncertain_below(node, 0.95)
    assert selected() == [False, False, False]
    mrml.apply_uncertain_below(node, 0.5)
    assert selected() == [True, False, False]
    assert [r.uncertain for r in mrml.result_rows(node)] == [False, True, True]
    # a point the user placed and unselected (no confidence) keeps the user's choice
    placed = node.AddControlPoint(1.0, 2.0, 3.0, "by hand")
    node.SetNthControlPointSelected(placed, False)
    mrml.apply_uncertain_below(node, 0.0)
    assert not node.GetNthControlPointSelected(placed)


def test_points_round_trip_and_parent_transform(scene):
    node = mrml.add_points_node(scene, sample_points(), "pts")
    back = mrml.points_from_node(node)
    for a, b in zip(sample_points(), back):
        assert a.label == b.label
        np.testing.assert_allclose(b.position, a.position, atol=1e-9)
        assert b.properties["confidence"] == pytest.approx(a.properties["confidence"])
    transform = rigid([0.0, 0.0, 1.0], 90.0, [10.0, 0.0, 0.0])
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, transform).GetID())
    moved = mrml.points_from_node(node)
    expected_ras = (transform @ np.append(lps_to_ras(sample_points()[0].position), 1.0))[:3]
    np.testing.assert_allclose(lps_to_ras(moved[0].position), expected_ras, atol=1e-9)


def test_points_from_an_oblique_transformed_volume_land_on_the_right_voxel(scene):
    """An engine's LPS result for voxel (i, j, k) of the image becomes a control point exactly on that voxel."""
    node = add_volume(scene, ramp(), SPACING, ORIGIN_LPS, DIRECTIONS_LPS["oblique_flipped"])
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, rigid([1, 1, 0], 33.0, [4, 5, 6])).GetID())
    image = mrml.volume_to_image(node)
    ijk = (6.0, 2.0, 4.0)
    found = ControlPoint("A", image.TransformContinuousIndexToPhysicalPoint(ijk))
    points = mrml.add_points_node(scene, [found], "result")
    ras = [0.0, 0.0, 0.0]
    points.GetNthControlPointPositionWorld(0, ras)
    np.testing.assert_allclose(ras, world_of_voxel(node, ijk), atol=1e-9)


def test_set_point_and_result_rows(scene):
    node = mrml.add_points_node(scene, sample_points(), "pts", confidence_threshold=0.5)
    refined = ControlPoint("Nasion", [1.0, 2.0, 3.0], properties={"confidence": 0.95})
    mrml.set_point(node, mrml.control_point_index(node, "Nasion"), refined)
    rows = mrml.result_rows(node)
    assert [r.label for r in rows] == ["Sella", "Nasion", "Menton"]
    assert rows[1].position_ras == pytest.approx(tuple(lps_to_ras([1.0, 2.0, 3.0])))
    assert rows[1].confidence == pytest.approx(0.95)
    assert rows[0].confidence_text == "0.91"
    assert [r.uncertain for r in rows] == [False, True, True]  # Nasion is still unselected until re-selected
    with pytest.raises(InputError, match="no control point"):
        mrml.control_point_index(node, "Gonion")


def test_points_outside_the_support_image_are_refused(scene):
    node = add_volume(scene, ramp(), SPACING, ORIGIN_LPS, DIRECTIONS_LPS["oblique"])
    geometry = mrml.volume_geometry(node)
    inside = ControlPoint("in", geometry.index_to_physical([3.0, 3.0, 2.0]))
    outside = ControlPoint("out", geometry.index_to_physical([30.0, 3.0, 2.0]))
    mrml.check_points_inside([inside], geometry)
    with pytest.raises(InputError, match="out lie outside"):
        mrml.check_points_inside([inside, outside], geometry)
    with pytest.raises(InputError, match="no points"):
        mrml.check_points_inside([], geometry)


# --------------------------------------------------------------------------- ROI boxes


def oblique_box():
    return Box("liver", center=[10.0, -30.0, 55.0], size=[80.0, 60.0, 40.0],
               orientation=rotation([1.0, 2.0, 0.5], 27.0), description="spread_mm=3.5")


def test_roi_node_is_an_oriented_box_in_world_ras(scene):
    box = oblique_box()
    node = mrml.add_roi_node(scene, box)
    assert node.GetName() == "liver"
    assert node.GetROIType() == node.ROITypeBox
    center = [0.0, 0.0, 0.0]
    node.GetCenterWorld(center)
    np.testing.assert_allclose(center, lps_to_ras(box.center), atol=1e-9)
    np.testing.assert_allclose(node.GetSize(), box.size, atol=1e-9)
    axes_ras = lps_to_ras_matrix(box.orientation)
    for c, getter in enumerate((node.GetXAxisWorld, node.GetYAxisWorld, node.GetZAxisWorld)):
        axis = [0.0, 0.0, 0.0]
        getter(axis)
        np.testing.assert_allclose(axis, axes_ras[:, c], atol=1e-9)
    back = mrml.box_from_roi_node(node)
    mrml.add_roi_node(scene, Box("another", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]))
    assert mrml.box_from_roi_node(node).description == "spread_mm=3.5"
    np.testing.assert_allclose(back.center, box.center, atol=1e-9)
    np.testing.assert_allclose(back.orientation, box.orientation, atol=1e-9)
    np.testing.assert_allclose(back.size, box.size, atol=1e-9)


def test_roi_under_a_parent_transform_is_read_in_world(scene):
    node = mrml.add_roi_node(scene, oblique_box())
    transform = rigid([0.0, 1.0, 0.0], 30.0, [0.0, 5.0, -5.0])
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, transform).GetID())
    box = mrml.box_from_roi_node(node)
    center = [0.0, 0.0, 0.0]
    node.GetCenterWorld(center)
    np.testing.assert_allclose(lps_to_ras(box.center), center, atol=1e-9)
    np.testing.assert_allclose(lps_to_ras_matrix(box.orientation),
                               transform[:3, :3] @ lps_to_ras_matrix(oblique_box().orientation), atol=1e-9)


# --------------------------------------------------------------------------- export read back by MRML


def read_with_storage(scene, path, node_class, storage_class):
    node = scene.AddNewNodeByClass(node_class, "read back")
    storage = getattr(slicer, storage_class)()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1, f"MRML could not read {path}"
    return node


@pytest.mark.parametrize("suffix,storage_class", [(".mrk.json", "vtkMRMLMarkupsJsonStorageNode"),
                                                   (".fcsv", "vtkMRMLMarkupsFiducialStorageNode")])
def test_exported_points_are_read_back_by_mrml(scene, tmp_path, suffix, storage_class):
    node = mrml.add_points_node(scene, sample_points(), "pts", confidence_threshold=0.5)
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, rigid([1, 0, 0], 20.0, [1, 2, 3])).GetID())
    path = tmp_path / f"points{suffix}"
    mrml.export_points(node, path)
    if suffix == ".mrk.json":
        assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    back = read_with_storage(scene, path, "vtkMRMLMarkupsFiducialNode", storage_class)
    assert back.GetNumberOfControlPoints() == 3
    for i in range(3):
        expected, got = [0.0] * 3, [0.0] * 3
        node.GetNthControlPointPositionWorld(i, expected)
        back.GetNthControlPointPositionWorld(i, got)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert back.GetNthControlPointLabel(i) == node.GetNthControlPointLabel(i)
        assert back.GetNthControlPointSelected(i) == node.GetNthControlPointSelected(i)
        assert "confidence=" in back.GetNthControlPointDescription(i)


def test_exported_csv_has_lps_positions_and_confidence(scene, tmp_path):
    node = mrml.add_points_node(scene, sample_points(), "pts")
    path = tmp_path / "points.csv"
    mrml.export_points(node, path)
    back = read_points(path)
    assert [p.label for p in back] == ["Sella", "Nasion", "Menton"]
    np.testing.assert_allclose(back[0].position, sample_points()[0].position, atol=1e-9)
    assert back[1].properties["confidence"] == pytest.approx(0.31)
    assert "coordinate_system" in path.read_text().splitlines()[0]


def test_exported_boxes_are_read_back_by_mrml(scene, tmp_path):
    boxes = [oblique_box(), Box("kidney", [0.0, 10.0, -20.0], [30.0, 35.0, 50.0])]
    nodes = [mrml.add_roi_node(scene, b) for b in boxes]
    path = tmp_path / "boxes.mrk.json"
    mrml.export_boxes(nodes, path)
    assert [b.name for b in read_boxes(path)] == ["liver", "kidney"]
    data = json.loads(path.read_text())
    assert len(data["markups"]) == 2
    # MRML's ROI reader takes one ROI per file: split to check each with MRML itself
    for n, box in enumerate(boxes):
        single = tmp_path / f"box{n}.mrk.json"
        single.write_text(json.dumps({"@schema": data["@schema"], "markups": [data["markups"][n]]}))
        back = read_with_storage(scene, single, "vtkMRMLMarkupsROINode", "vtkMRMLMarkupsROIJsonStorageNode")
        center = [0.0, 0.0, 0.0]
        back.GetCenterWorld(center)
        np.testing.assert_allclose(center, lps_to_ras(box.center), atol=1e-6)
        np.testing.assert_allclose(back.GetSize(), box.size, atol=1e-6)
        axis = [0.0, 0.0, 0.0]
        back.GetXAxisWorld(axis)
        np.testing.assert_allclose(axis, lps_to_ras_matrix(box.orientation)[:, 0], atol=1e-6)


def test_export_of_nothing_is_refused(tmp_path):
    with pytest.raises(InputError, match="no boxes"):
        mrml.export_boxes([], tmp_path / "x.mrk.json")


# --------------------------------------------------------------------------- label maps, segmentations, evidence


def two_organs():
    array = np.zeros((8, 10, 12), dtype=np.uint8)
    array[1:4, 2:6, 3:8] = 1
    array[5:7, 6:9, 2:5] = 2
    return array


def test_segmentation_becomes_a_labelmap_on_the_reference_grid_without_changing_the_scene(scene):
    reference = add_volume(scene, np.zeros((8, 10, 12), np.float32), SPACING, ORIGIN_LPS, DIRECTIONS_LPS["LAS"])
    labels = add_volume(scene, two_organs(), SPACING, ORIGIN_LPS, DIRECTIONS_LPS["LAS"], name="organs",
                        class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    seg = segmentation.GetSegmentation()
    seg.GetNthSegment(0).SetName("liver")
    seg.GetNthSegment(1).SetName("spleen")
    before = scene.GetNumberOfNodes()
    image, values, names = mrml.labelmap_from_segmentation(segmentation, reference)
    assert scene.GetNumberOfNodes() == before
    assert names == ["liver", "spleen"] and values == [1, 2]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), two_organs())
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), DIRECTIONS_LPS["LAS"], atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-9)


def test_labelmap_volume_gives_its_labels(scene):
    node = add_volume(scene, two_organs(), SPACING, ORIGIN_LPS, name="organs", class_name="vtkMRMLLabelMapVolumeNode")
    image, values, names = mrml.labelmap_from_volume(node)
    assert values == [1, 2]
    assert len(names) == 2
    empty = add_volume(scene, np.zeros((3, 4, 5), np.uint8), name="none", class_name="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputError, match="no labels"):
        mrml.labelmap_from_volume(empty)


def test_empty_segmentation_is_refused(scene):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    reference = add_volume(scene, ramp())
    with pytest.raises(InputError, match="no segments"):
        mrml.labelmap_from_segmentation(segmentation, reference)


def test_evidence_volume_has_the_colour_table_and_geometry(scene):
    image = sitk.GetImageFromArray(np.linspace(0, 1, 6 * 7 * 9, dtype=np.float32).reshape(6, 7, 9))
    image.SetDirection(tuple(DIRECTIONS_LPS["oblique"].ravel()))
    node = mrml.show_evidence(scene, image, "ct fcn evidence")
    color = node.GetDisplayNode().GetColorNode()
    assert color.GetName() == mrml.EVIDENCE_COLOR_NAME
    assert color.GetNumberOfColors() == 256
    assert node.GetDisplayNode().GetWindowLevelMin() == pytest.approx(0.0)
    assert node.GetDisplayNode().GetWindowLevelMax() == pytest.approx(1.0)
    mrml.show_evidence(scene, image, "again")
    assert len([n for n in scene.GetNodesByClass("vtkMRMLColorTableNode")
                if n.GetName() == mrml.EVIDENCE_COLOR_NAME]) == 1
    np.testing.assert_allclose(mrml.volume_to_image(node).GetDirection(), image.GetDirection(), atol=1e-9)
    assert ras_to_lps(lps_to_ras([1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]
