"""Both modules' workflows end to end against real MRML and the real engines (tiny untrained models):
volume node -> worker process -> point lists, ROIs and evidence in world coordinates; bad input changes nothing."""

import sys

import numpy as np
import pytest
from mrml_testing import DIRECTIONS_LPS, add_linear_transform, add_volume, new_scene, rigid

from landmarkloc.errors import InputError, ModelError
from landmarkloc.geometry.frames import ras_to_lps
from landmarkloc.io.modelfile import model_paths
from landmarkloc.points import ControlPoint

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")

from LandmarkLocalizerLib import logic as fcn_logic  # noqa: E402
from LandmarkLocalizerLib import mrml  # noqa: E402
from LandmarkLocalizerLib.models import inspect_model  # noqa: E402
from LandmarkLocalizerLib.selftest import TINY_LANDMARKS, blob_volume, make_tiny_fcn_model  # noqa: E402
from RPROneShotLib import logic as rpr_logic  # noqa: E402
from RPROneShotLib.selftest import make_tiny_rpr_models  # noqa: E402

SPACING = (1.6, 1.5, 1.8)
ORIGIN = (-20.0, 15.0, -30.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    fcn = inspect_model(make_tiny_fcn_model(folder / "tiny-fcn"), "fcn")
    fcn_2d = inspect_model(make_tiny_fcn_model(folder / "tiny-fcn-2d", ndim=2, spacing=0.5), "fcn")
    coarse, fine = make_tiny_rpr_models(folder)
    return {"fcn": fcn, "fcn_2d": fcn_2d, "coarse": inspect_model(coarse, "rpr"), "fine": inspect_model(fine, "rpr")}


FINISHED_JOBS = []


@pytest.fixture(autouse=True)
def remove_job_folders():
    yield
    while FINISHED_JOBS:
        FINISHED_JOBS.pop().cleanup()


def finish(job):
    """Wait for the worker (a GUI polls instead); its folder stays until the result is in the scene."""
    event = job.wait(timeout=120)
    FINISHED_JOBS.append(job)
    assert event.kind == "done", event.error
    return event.result


def node_names(scene):
    return sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))


def oblique_transformed_volume(scene, name="patient"):
    node = add_volume(scene, blob_volume(), SPACING, ORIGIN, DIRECTIONS_LPS["oblique_flipped"], name=name)
    node.SetAndObserveTransformNodeID(add_linear_transform(scene, rigid([0, 1, 1], 25.0, [3, -4, 8])).GetID())
    return node


def test_localize_creates_named_points_inside_the_volume_with_evidence(models):
    scene = new_scene()
    volume = oblique_transformed_volume(scene)
    job = fcn_logic.start_localize(volume, models["fcn"], "CPU", evidence=True, python=sys.executable)
    outcome = fcn_logic.apply_localization(scene, finish(job), volume, models["fcn"])
    node = outcome.points_node
    assert node.GetName() == "patient tiny-test"
    assert [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())] == list(TINY_LANDMARKS)
    geometry = mrml.volume_geometry(volume)
    for row in mrml.result_rows(node):
        assert geometry.contains(ras_to_lps(row.position_ras), margin=8.0)
        assert 0.0 <= row.confidence <= 1.0
    evidence = outcome.evidence_node
    assert evidence.GetName() == "patient tiny-test evidence"
    assert evidence.GetDisplayNode().GetColorNode().GetName() == mrml.EVIDENCE_COLOR_NAME
    np.testing.assert_allclose(mrml.volume_geometry(evidence).direction, geometry.direction, atol=1e-6)
    np.testing.assert_allclose(mrml.volume_geometry(evidence).origin, geometry.origin, atol=1e-6)

    # the user drags a point away, then asks the local stage to refine it from there
    moved = ras_to_lps(mrml.result_rows(node)[1].position_ras) + np.array([6.0, -4.0, 3.0])
    node.SetNthControlPointPositionWorld(1, *(-moved[0], -moved[1], moved[2]))
    job = fcn_logic.start_refine(volume, models["fcn"], node, 1, "CPU", python=sys.executable)
    result = finish(job)
    fcn_logic.apply_refinement(node, node.GetNthControlPointID(1), result, volume)
    refined = mrml.points_from_node(node)[1]
    np.testing.assert_allclose(refined.position, result["points"][0]["position"], atol=1e-6)
    assert "local_confidence" in refined.properties
    assert node.GetNumberOfControlPoints() == 3


def test_localize_2d_image_puts_points_on_the_slice(models):
    scene = new_scene()
    image = blob_volume((1, 60, 70))
    volume = add_volume(scene, image, (0.5, 0.5, 1.0), (10.0, 20.0, 7.5), name="xray")
    job = fcn_logic.start_localize(volume, models["fcn_2d"], "CPU", python=sys.executable)
    node = fcn_logic.apply_localization(scene, finish(job), volume, models["fcn_2d"]).points_node
    assert node.GetNumberOfControlPoints() == 3
    for point in mrml.points_from_node(node):
        assert point.position[2] == pytest.approx(7.5)


def test_bad_input_gives_a_message_and_changes_nothing(models, tmp_path):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, ORIGIN, name="ct")
    before = node_names(scene)
    with pytest.raises(InputError, match="select an input volume"):
        fcn_logic.start_localize(None, models["fcn"])
    with pytest.raises(InputError, match="2D model"):
        fcn_logic.start_localize(volume, models["fcn_2d"])
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="image data"):
        fcn_logic.start_localize(empty, models["fcn"])
    scene.RemoveNode(empty)
    warped = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    volume.SetAndObserveTransformNodeID(warped.GetID())
    with pytest.raises(InputError, match="non-linear"):
        fcn_logic.start_localize(volume, models["fcn"])
    volume.SetAndObserveTransformNodeID(None)
    scene.RemoveNode(warped)
    assert node_names(scene) == before
    corrupt = tmp_path / "corrupt"
    weights, meta = model_paths(corrupt)
    meta.write_text('{"kind": "fcn", "format_version": 1, "sha256": "00"}')
    weights.write_bytes(b"garbage")
    with pytest.raises(ModelError, match="sha256"):
        inspect_model(meta, "fcn")


def organ_support(scene, name="support"):
    """A support volume with a segmentation of two organs (as a user would draw them)."""
    array = blob_volume()
    volume = add_volume(scene, array, SPACING, ORIGIN, DIRECTIONS_LPS["LAS"], name=name)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[6:12, 8:16, 10:20] = 1
    labels[13:19, 12:20, 6:14] = 2
    labelmap = add_volume(scene, labels, SPACING, ORIGIN, DIRECTIONS_LPS["LAS"], name="labels",
                          class_name="vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("liver")
    segmentation.GetSegmentation().GetNthSegment(1).SetName("spleen")
    scene.RemoveNode(labelmap)
    return volume, segmentation


def test_one_shot_from_a_segmentation_gives_one_roi_per_organ_and_a_template(models, tmp_path):
    scene = new_scene()
    support_volume, segmentation = organ_support(scene)
    query = oblique_transformed_volume(scene, name="query")
    support = rpr_logic.Support(volume=support_volume, labels_node=segmentation)
    job = rpr_logic.start_find(query, support, "rpr", models["coarse"], models["fine"], runs=5, steps=1,
                               device="CPU", python=sys.executable)
    outcome = rpr_logic.apply_find(scene, finish(job), query)
    assert outcome.points_node.GetName() == "query one-shot"
    assert outcome.points_node.GetNumberOfControlPoints() == 12
    assert [n.GetName() for n in outcome.roi_nodes] == ["liver", "spleen"]
    for roi in outcome.roi_nodes:
        assert roi.GetROIType() == roi.ROITypeBox
        assert mrml.roi_description(roi).startswith("spread_mm=")
        box = mrml.box_from_roi_node(roi)
        # boxes follow the query's (hardened) axes
        np.testing.assert_allclose(np.abs(box.orientation.T @ mrml.volume_geometry(query).direction),
                                   np.eye(3), atol=1e-6)
    assert all("spread_mm=" in outcome.points_node.GetNthControlPointDescription(i) for i in range(12))
    # points the refinement cannot trust come unselected, say why, and the module is told to warn
    unselected = [i for i in range(12) if not outcome.points_node.GetNthControlPointSelected(i)]
    assert all(outcome.points_node.GetNthControlPointDescription(i).startswith("uncertain:") for i in unselected)
    assert bool(outcome.warnings) == bool(unselected)

    # save the support as a template, then find again without the support
    path = tmp_path / "organs.safetensors"
    finish(rpr_logic.start_save_template(support, path, models["coarse"], models["fine"], "CPU",
                                         python=sys.executable))
    assert rpr_logic.inspect_template(path)["names"][0] == "liver_xmin"
    job = rpr_logic.start_find(query, rpr_logic.Support(), "rpr", models["coarse"], models["fine"],
                               template_path=str(path), runs=5, device="CPU", python=sys.executable)
    again = rpr_logic.apply_find(scene, finish(job), query, name="from template")
    assert again.points_node.GetNumberOfControlPoints() == 12
    assert len(again.roi_nodes) == 2


def test_one_shot_ncc_with_placed_points(models):
    scene = new_scene()
    support_volume, _ = organ_support(scene)
    geometry = mrml.volume_geometry(support_volume)
    placed = [ControlPoint(f"P{i}", geometry.index_to_physical(ijk)) for i, ijk in
              enumerate([(15.0, 12.0, 9.0), (10.0, 16.0, 15.0)])]
    points_node = mrml.add_points_node(scene, placed, "placed")
    query = add_volume(scene, blob_volume(seed=1), SPACING, ORIGIN, DIRECTIONS_LPS["oblique"], name="q")
    job = rpr_logic.start_find(query, rpr_logic.Support(support_volume, points_node), "ncc", python=sys.executable)
    outcome = rpr_logic.apply_find(scene, finish(job), query)
    assert [outcome.points_node.GetNthControlPointLabel(i) for i in range(2)] == ["P0", "P1"]
    assert outcome.roi_nodes == []


def test_one_shot_refuses_support_points_outside_the_support_without_changing_the_scene(models):
    scene = new_scene()
    support_volume, _ = organ_support(scene)
    geometry = mrml.volume_geometry(support_volume)
    points_node = mrml.add_points_node(scene, [ControlPoint("far", geometry.index_to_physical([200.0, 5.0, 5.0]))],
                                       "placed")
    query = add_volume(scene, blob_volume(), name="q")
    before = node_names(scene)
    with pytest.raises(InputError, match="far lie outside the support volume"):
        rpr_logic.start_find(query, rpr_logic.Support(support_volume, points_node), "rpr", models["coarse"])
    with pytest.raises(InputError, match="point list"):
        rpr_logic.start_find(query, rpr_logic.Support(support_volume), "rpr", models["coarse"])
    with pytest.raises(InputError, match="RPR model"):
        rpr_logic.start_find(query, rpr_logic.Support(support_volume, points_node), "rpr", None)
    with pytest.raises(InputError, match="query volume"):
        rpr_logic.start_find(None, rpr_logic.Support(support_volume, points_node), "ncc")
    assert node_names(scene) == before


def _label_map(shape=(20, 22, 24)):
    labels = np.zeros(shape, np.int16)
    labels[5:12, 6:14, 7:16] = 1
    labels[12:16, 8:12, 9:13] = 2
    return labels


def test_a_label_map_given_as_the_image_warns_in_both_modules(models):
    """The core's label-map check reaches the user through the result's warnings, word for word as on the CLI."""
    scene = new_scene()
    labels = add_volume(scene, _label_map(), SPACING, ORIGIN, DIRECTIONS_LPS["oblique"], name="seg",
                        class_name="vtkMRMLLabelMapVolumeNode")
    job = fcn_logic.start_localize(labels, models["fcn"], "CPU", python=sys.executable)
    outcome = fcn_logic.apply_localization(scene, finish(job), labels, models["fcn"])
    assert any("looks like a label map (3 distinct integer values)" in w for w in outcome.warnings), outcome.warnings
    support_volume, _ = organ_support(scene)
    geometry = mrml.volume_geometry(support_volume)
    points_node = mrml.add_points_node(scene, [ControlPoint("P0", geometry.index_to_physical((15.0, 12.0, 9.0)))],
                                       "placed")
    job = rpr_logic.start_find(labels, rpr_logic.Support(support_volume, points_node), "ncc", python=sys.executable)
    found = rpr_logic.apply_find(scene, finish(job), labels)
    assert any("the query image looks like a label map (3 distinct integer values)" in w for w in found.warnings)
    scan = oblique_transformed_volume(scene, "scan")  # a scan: no such warning
    job = fcn_logic.start_localize(scan, models["fcn"], "CPU", python=sys.executable)
    assert not any("label map" in w for w in fcn_logic.apply_localization(scene, finish(job), scan,
                                                                           models["fcn"]).warnings)
