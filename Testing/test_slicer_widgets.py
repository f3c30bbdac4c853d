"""The module widgets' own code (LandmarkLocalizer.py, RPROneShot.py and the shared job mixin) driven with fake Qt
widgets over real MRML and real worker processes: results go to the nodes chosen when a job started, dialogs
that run their own event loop do not break polling, failed installs give a message, saved models come back."""

import re
import subprocess
import sys
import time

import numpy as np
import pytest
import slicer_gui_stand_ins as gui
from mrml_testing import DIRECTIONS_LPS, add_volume, new_scene

from landmarkloc.errors import InputError
from landmarkloc.points import ControlPoint

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")

from LandmarkLocalizerLib import dependencies, mrml  # noqa: E402
from LandmarkLocalizerLib import logic as fcn_logic  # noqa: E402
from LandmarkLocalizerLib.jobs import Job, new_workdir, package_paths  # noqa: E402
from LandmarkLocalizerLib.models import inspect_model, restore_saved_model, shipped_models  # noqa: E402
from LandmarkLocalizerLib.selftest import blob_volume, make_tiny_fcn_model  # noqa: E402
from RPROneShotLib.selftest import make_tiny_rpr_models  # noqa: E402

SPACING = (1.6, 1.5, 1.8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    coarse, fine = make_tiny_rpr_models(folder)
    return {"fcn": inspect_model(make_tiny_fcn_model(folder / "tiny-fcn"), "fcn"),
            "coarse": inspect_model(coarse, "rpr"), "fine": inspect_model(fine, "rpr")}


def run_until_idle(widget, timeout=120.0):
    """What the QTimer does: poll while a job runs."""
    deadline = time.time() + timeout
    while widget._job is not None and time.time() < deadline:
        assert widget.timer.active
        widget.onPoll()
        time.sleep(0.02)
    assert widget._job is None, "the job did not end"


def positions(node):
    return [tuple(round(v, 6) for v in row.position_ras) for row in mrml.result_rows(node)]


# --------------------------------------------------------------------------- 5: outputs bound at job start


def test_refine_moves_the_point_list_chosen_at_start_even_if_the_selector_changes(monkeypatch, tiny):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, (-20.0, 15.0, -30.0), DIRECTIONS_LPS["oblique"], name="ct")
    other_volume = add_volume(scene, blob_volume(seed=3), (1.0, 1.0, 1.0), name="other")
    geometry = mrml.volume_geometry(volume)
    start = [ControlPoint(name, geometry.index_to_physical(ijk)) for name, ijk in
             zip(("Apex", "Base", "Notch"), [(8.0, 10.0, 9.0), (20.0, 14.0, 12.0), (15.0, 20.0, 16.0)])]
    chosen = mrml.add_points_node(scene, start, "chosen")
    other = mrml.add_points_node(scene, start, "other")
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "outputPoints": chosen,
                                                   "modelPath": tiny["fcn"].path})
    widget._models = [tiny["fcn"]]
    widget.ui.resultsTable.row = 1
    before_chosen, before_other = positions(chosen), positions(other)

    widget.onRefineButton()
    assert widget._job is not None and widget.timer.active
    # the user picks another point list, another row and another volume while the worker runs
    widget._parameterNode.outputPoints = other
    widget._parameterNode.inputVolume = other_volume
    widget.ui.resultsTable.row = 0
    run_until_idle(widget)

    assert shown == []
    assert positions(other) == before_other
    after = positions(chosen)
    assert after[0] == before_chosen[0] and after[2] == before_chosen[2]
    assert after[1] != before_chosen[1]  # the row chosen at start moved, in the list chosen at start
    assert "local_confidence" in mrml.points_from_node(chosen)[1].properties
    assert widget.ui.statusLabel.text.startswith("Refined Base. (") and widget.ui.statusLabel.text.endswith(" on cpu)")


def three_points_localized_in(scene, volume, name="found"):
    geometry = mrml.volume_geometry(volume)
    start = [ControlPoint(label, geometry.index_to_physical(ijk)) for label, ijk in
             zip(("Apex", "Base", "Notch"), [(8.0, 10.0, 9.0), (20.0, 14.0, 12.0), (15.0, 20.0, 16.0)])]
    node = mrml.add_points_node(scene, start, name)
    mrml.set_source_volume(node, volume)
    return node


def positions_by_label(node):
    return {row.label: tuple(round(v, 6) for v in row.position_ras) for row in mrml.result_rows(node)}


def test_refine_moves_its_point_when_another_is_removed_meanwhile_on_the_volume_the_points_came_from(
        monkeypatch, tiny):
    import SimpleITK as sitk

    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, (-20.0, 15.0, -30.0), DIRECTIONS_LPS["oblique"], name="ct")
    other_volume = add_volume(scene, blob_volume(seed=3), (1.0, 1.0, 1.0), name="other")
    points = three_points_localized_in(scene, volume)
    shown = gui.dialogs(monkeypatch)
    # the Input selector shows another volume now: the points still belong to ct
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": other_volume, "outputPoints": points,
                                                   "modelPath": tiny["fcn"].path})
    widget._models = [tiny["fcn"]]
    widget.ui.resultsTable.row = 1
    before = positions_by_label(points)
    widget.onRefineButton()
    sent = sitk.ReadImage(widget._job.request["image"])
    np.testing.assert_allclose(sent.GetSpacing(), SPACING)
    points.RemoveNthControlPoint(0)  # the user deletes Apex while Base is refined
    run_until_idle(widget)
    assert shown == []
    after = positions_by_label(points)
    assert list(after) == ["Base", "Notch"]
    assert after["Notch"] == before["Notch"]
    assert after["Base"] != before["Base"]
    assert "local_confidence" in mrml.points_from_node(points)[0].properties
    assert widget.ui.statusLabel.text.startswith("Refined Base. (") and widget.ui.statusLabel.text.endswith(" on cpu)")


def test_refining_a_point_that_is_removed_during_the_run_changes_nothing(monkeypatch, tiny):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, name="ct")
    points = three_points_localized_in(scene, volume)
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "outputPoints": points,
                                                   "modelPath": tiny["fcn"].path})
    widget._models = [tiny["fcn"]]
    widget.ui.resultsTable.row = 1
    widget.onRefineButton()
    points.RemoveNthControlPoint(1)  # Base itself
    before = positions_by_label(points)
    run_until_idle(widget)
    assert positions_by_label(points) == before
    [(kind, text)] = shown
    assert kind == "error" and "removed during the run" in text


def test_results_table_follows_points_removed_and_added(monkeypatch):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, name="ct")
    points = three_points_localized_in(scene, volume)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "outputPoints": points})
    widget.onOutputPointsChanged(points)
    table = widget.ui.resultsTable
    assert table.rows == 3
    points.RemoveNthControlPoint(0)
    assert table.rows == 2 and table.cells[(0, 0)].text == "Base"
    points.AddControlPoint(1.0, 2.0, 3.0, "Extra")
    assert table.rows == 3 and table.cells[(2, 0)].text == "Extra"


def test_the_uncertain_slider_recolours_the_points_and_the_table(monkeypatch):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, name="ct")
    geometry = mrml.volume_geometry(volume)
    points = mrml.add_points_node(scene, [
        ControlPoint("Apex", geometry.index_to_physical((8.0, 10.0, 9.0)), properties={"confidence": 0.9}),
        ControlPoint("Base", geometry.index_to_physical((20.0, 14.0, 12.0)), properties={"confidence": 0.4})],
        "found", confidence_threshold=0.5)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "outputPoints": points})
    widget.onUncertainBelowChanged(0.3)
    assert [bool(points.GetNthControlPointSelected(i)) for i in range(2)] == [True, True]
    assert not hasattr(widget.ui.resultsTable.cells[(1, 0)], "background")
    widget.onUncertainBelowChanged(0.95)
    assert [bool(points.GetNthControlPointSelected(i)) for i in range(2)] == [False, False]
    assert all(hasattr(widget.ui.resultsTable.cells[(r, 0)], "background") for r in range(2))


def test_localize_names_and_places_the_result_after_the_volume_chosen_at_start(monkeypatch, tiny):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, (-20.0, 15.0, -30.0), DIRECTIONS_LPS["oblique"], name="ct")
    other_volume = add_volume(scene, blob_volume(seed=3), (1.0, 1.0, 1.0), name="other")
    gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "modelPath": tiny["fcn"].path})
    widget._models = [tiny["fcn"]]
    widget.onLocalizeButton()
    widget._parameterNode.inputVolume = other_volume
    run_until_idle(widget)
    node = widget._parameterNode.outputPoints
    assert node.GetName() == "ct tiny-test"
    geometry = mrml.volume_geometry(volume)
    for point in mrml.points_from_node(node):
        assert geometry.contains(point.position[None], margin=8.0)[0]


def test_localize_shows_stage_and_seconds_while_running_then_time_device_and_warnings_without_a_popup(
        monkeypatch, tiny):
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, name="ct")
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "modelPath": tiny["fcn"].path})
    widget._models = [tiny["fcn"]]
    widget.onLocalizeButton()
    statuses, bars = [], []
    while widget._job is not None:
        widget.onPoll()
        statuses.append(widget.ui.statusLabel.text)
        bars.append(widget.ui.progressBar.value)
        time.sleep(0.02)
    running = [text for text in statuses[:-1] if text]
    assert running and all(re.fullmatch(r"[A-Z][\w ()-]+\.\.\. \d+ s", text) for text in running), running
    assert bars == sorted(bars) and bars[-1] == 100
    summary, *warnings = widget.ui.statusLabel.text.splitlines()
    assert re.fullmatch(r"Found 3 landmarks\. \(\d+ s on cpu\)", summary)
    # the tiny model has no calibration: said in the status area, not in a dialog
    assert shown == [] and warnings and all(w.startswith("Warning: ") for w in warnings)
    assert any("no calibrated uncertainty" in w for w in warnings)
    log = widget.ui.logTextEdit.lines
    assert [line for line in log if line in ("Global stage", "Local stage", "Writing results")] == [
        "Global stage", "Local stage", "Writing results"]
    assert widget.ui.resultsCollapsibleButton.text == "Results (found on cpu)"


def test_a_second_click_while_packages_install_starts_nothing_and_the_buttons_are_disabled(monkeypatch):
    """The installer processes events (slicer.util.pip_install, logProcessOutput), so a click can arrive."""
    import slicer

    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, name="ct")
    gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {"inputVolume": volume, "modelPath": "model.json"})
    installs, during = [], []

    def pip_install(requirements, **kwargs):
        installs.append(requirements)
        during.append((widget.ui.localizeButton.enabled, widget.ui.refineButton.enabled))
        widget.onLocalizeButton()  # the user clicks again while pip runs

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(dependencies, "PIP_PACKAGES", ("safetensors", "landmarkloc_not_installed_package"))
    monkeypatch.setattr(dependencies, "missing_packages",
                        lambda extra=(), engines=True: [] if installs else ["landmarkloc_not_installed_package"])
    started = []
    widget.startJob("localize", lambda: started.append(1) or None, lambda result: None)
    assert installs == ["landmarkloc_not_installed_package"]
    assert during == [(False, False)]
    assert started == [1]


# --------------------------------------------------------------------------- 2: re-entrant polling


def failing_or_done_job(tmp_path, fail: bool) -> Job:
    (tmp_path / "quickworker.py").write_text(
        "import sys\nfrom landmarkloc.errors import InputError\nfrom LandmarkLocalizerLib.jobs import run_worker\n"
        "def handle(request, workdir, report):\n"
        + ("    raise InputError('the model does not fit this image')\n" if fail else "    return {'ok': 1}\n")
        + "sys.exit(run_worker(handle))\n")
    return Job("quickworker", {}, new_workdir(), [str(tmp_path)] + package_paths("landmarkloc", "LandmarkLocalizerLib"),
               python=sys.executable)


@pytest.mark.parametrize("fail", [True, False], ids=["failed-job-error-dialog", "result-with-warning-dialog"])
def test_poll_inside_a_modal_dialog_does_not_break_the_job_end(monkeypatch, tmp_path, fail):
    """errorDisplay/warningDisplay run an event loop in which the 100 ms timer fires: onPoll runs inside them."""
    widget = None
    inner_polls = []

    def timer_fires_inside_the_dialog():
        inner_polls.append(widget.timer.active)
        widget.onPoll()

    shown = gui.dialogs(monkeypatch, on_dialog=timer_fires_inside_the_dialog)
    _, widget = gui.localizer_widget(monkeypatch, {})
    applied = []

    def finish(result):
        applied.append(result)
        slicer.util.warningDisplay("the image is unlike the training images")

    job = failing_or_done_job(tmp_path, fail)
    widget.startJob("localize", lambda: job.start() or job, finish)
    run_until_idle(widget)
    if fail:
        assert shown == [("error", "the model does not fit this image")]
        assert applied == []
    else:
        assert applied == [{"ok": 1}]
        assert shown == [("warning", "the image is unlike the training images")]
    assert inner_polls == [False]  # the timer was stopped before the dialog opened
    assert not job.workdir.exists()
    assert widget._job is None and widget.ui.localizeButton.text == "Localize"


# --------------------------------------------------------------------------- 3: failed installs


def test_failed_pip_install_gives_a_message_and_starts_nothing(monkeypatch):
    import slicer

    calls = []

    def pip_install(requirements, **kwargs):
        calls.append(requirements)
        raise subprocess.CalledProcessError(1, ["python", "-m", "pip", "install", requirements])

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setattr(dependencies, "PIP_PACKAGES", ("safetensors", "landmarkloc_not_installed_package"))
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {})
    started = []
    widget.startJob("localize", lambda: started.append(1), lambda result: None)
    assert calls == ["landmarkloc_not_installed_package"]
    assert started == [] and widget._job is None and not widget.timer.active
    [(kind, text)] = shown
    assert kind == "error"
    assert "installing landmarkloc_not_installed_package failed (CalledProcessError" in text
    assert "slicer.util.pip_install('landmarkloc_not_installed_package')" in text


def test_failed_pytorch_extension_install_is_explained(monkeypatch):
    import types

    broken = types.ModuleType("PyTorchUtils")

    class Logic:
        def installTorch(self, askConfirmation=False):
            raise subprocess.CalledProcessError(1, "pip")

    broken.PyTorchUtilsLogic = Logic
    monkeypatch.setitem(sys.modules, "PyTorchUtils", broken)
    monkeypatch.setattr(dependencies, "missing_packages", lambda extra=(), engines=True: ["torch"])
    with pytest.raises(InputError, match="(?s)installing torch failed .*PyTorch extension"):
        dependencies.ensure_installed(lambda text: True)


def test_a_package_installed_just_now_is_found(monkeypatch, tmp_path):
    import slicer

    monkeypatch.syspath_prepend(str(tmp_path))
    name = "landmarkloc_fresh_package"
    assert dependencies.missing_packages((name,)) == [name]

    def pip_install(requirements, **kwargs):
        (tmp_path / f"{name}.py").write_text("")

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    dependencies.ensure_installed(lambda text: True, extra=(name,))
    assert dependencies.missing_packages((name,)) == []


# --------------------------------------------------------------------------- 8: saved model paths


def test_one_shot_restores_saved_models_that_are_not_shipped(monkeypatch, tiny):
    gui.dialogs(monkeypatch)
    shipped = shipped_models("rpr")
    _, widget = gui.one_shot_widget(monkeypatch, {"modelPath": tiny["coarse"].path,
                                                  "fineModelPath": tiny["fine"].path}, shipped)
    widget.initializeParameterNode()
    p = widget._parameterNode
    assert p.modelPath == tiny["coarse"].path and p.fineModelPath == tiny["fine"].path
    assert widget.ui.modelComboBox.itemData(widget.ui.modelComboBox.current) == tiny["coarse"].path
    assert widget.ui.fineModelComboBox.itemData(widget.ui.fineModelComboBox.current) == tiny["fine"].path


def test_landmark_localizer_restores_a_saved_model_that_is_not_shipped(monkeypatch, tiny):
    gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {})
    widget.populateModels()  # the shipped models and "Add model file..."
    assert all(m.path != tiny["fcn"].path for m in widget._models)
    widget.selectModelPath(tiny["fcn"].path)
    combo = widget.ui.modelComboBox
    assert widget._parameterNode.modelPath == tiny["fcn"].path
    assert combo.itemData(combo.current) == tiny["fcn"].path


def test_restore_saved_model_refuses_missing_and_wrong_stage_files(tiny, tmp_path):
    models = []
    assert restore_saved_model(models, str(tmp_path / "gone.json"), "rpr") == ""
    assert restore_saved_model(models, tiny["fine"].path, "rpr", "coarse") == ""
    assert restore_saved_model(models, tiny["fcn"].path, "rpr") == ""
    assert models == []
    assert restore_saved_model(models, tiny["coarse"].path, "rpr", "coarse") == tiny["coarse"].path
    assert restore_saved_model(models, tiny["coarse"].path, "rpr", "coarse") == tiny["coarse"].path
    assert [m.path for m in models] == [tiny["coarse"].path]


# --------------------------------------------------------------------------- 6, 7: pictures and the default volume


SELECTOR_OFFERS = [  # (module, selector, what it must offer of the scene below)
    ("LandmarkLocalizer", "inputVolumeSelector", ["photo", "ct"]),
    ("LandmarkLocalizer", "outputPointsSelector", ["points"]),
    ("RPROneShot", "supportVolumeSelector", ["photo", "ct"]),
    ("RPROneShot", "queryVolumeSelector", ["photo", "ct"]),
    ("RPROneShot", "supportPointsSelector", ["points"]),
    ("RPROneShot", "supportLabelsSelector", ["labels"]),
]


@pytest.mark.parametrize("module_name, selector, offered", SELECTOR_OFFERS,
                         ids=[f"{m}-{s}" for m, s, _ in SELECTOR_OFFERS])
def test_selectors_offer_pictures_and_grey_volumes_once_bound_to_the_parameter_node(monkeypatch, module_name,
                                                                                       selector, offered):
    """connectGui replaces a selector's .ui node types with its field's type hint; the selector then hides
    subclasses, so a picture (a vector volume) is offered only if the hint names vtkMRMLVectorVolumeNode."""
    import importlib

    from mrml_testing import REPO

    scene = new_scene()
    add_volume(scene, np.ones((1, 3, 4, 3), np.uint8), name="photo", class_name="vtkMRMLVectorVolumeNode")
    add_volume(scene, np.ones((2, 3, 4), np.float32), name="ct")
    add_volume(scene, np.ones((2, 3, 4), np.uint8), name="labels", class_name="vtkMRMLLabelMapVolumeNode")
    mrml.add_points_node(scene, [], "points")
    gui.install(monkeypatch)
    module = importlib.import_module(module_name)
    selectors = gui.node_selectors(REPO / module_name / "Resources" / "UI" / f"{module_name}.ui")
    gui.connect_node_selectors(getattr(module, f"{module_name}ParameterNode"), selectors)
    assert [node.GetName() for node in selectors[selector].offered(scene)] == offered


def test_default_input_is_the_first_grey_volume_or_picture_never_a_label_map():
    scene = new_scene()
    assert mrml.first_input_volume(scene) is None
    add_volume(scene, np.ones((2, 3, 4), np.uint8), name="labels", class_name="vtkMRMLLabelMapVolumeNode")
    assert mrml.first_input_volume(scene) is None
    picture = add_volume(scene, np.ones((1, 3, 4, 3), np.uint8), name="photo", class_name="vtkMRMLVectorVolumeNode")
    add_volume(scene, np.ones((2, 3, 4), np.float32), name="ct")
    assert mrml.first_input_volume(scene) is picture
    scene.RemoveNode(picture)
    assert mrml.first_input_volume(scene).GetName() == "ct"


def test_a_picture_loaded_as_a_vector_volume_is_localized_as_grey(tiny, tmp_path):
    """Slicer loads PNG/JPEG as RGB vector volumes; the modules use their luminance, as the CLI does."""
    import SimpleITK as sitk

    from landmarkloc.io.image import read_image

    scene = new_scene()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (1, 30, 40, 3)).astype(np.uint8)
    node = add_volume(scene, rgb, (0.5, 0.5, 1.0), (3.0, -2.0, 0.0), name="photo",
                      class_name="vtkMRMLVectorVolumeNode")
    assert node.GetImageData().GetNumberOfScalarComponents() == 3
    image = mrml.volume_to_image(node)
    luminance = rgb[0].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(image)[0], luminance, rtol=1e-5)
    # the same picture read by the CLI gives the same grey values
    sitk.WriteImage(sitk.GetImageFromArray(rgb[0], isVector=True), str(tmp_path / "photo.png"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(read_image(tmp_path / "photo.png", spacing=0.5)),
                               sitk.GetArrayViewFromImage(image)[0], rtol=1e-5)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5, 1.0))
    model_2d = inspect_model(make_tiny_fcn_model(tmp_path / "tiny-2d", ndim=2, spacing=0.5), "fcn")
    job = fcn_logic.start_localize(node, model_2d, "CPU", python=sys.executable)
    event = job.wait(timeout=120)
    assert event.kind == "done", event.error
    points = fcn_logic.apply_localization(scene, event.result, node, model_2d).points_node
    job.cleanup()
    assert points.GetNumberOfControlPoints() == 3
    tensor = add_volume(scene, np.ones((1, 3, 4, 2), np.float32), name="field", class_name="vtkMRMLVectorVolumeNode")
    with pytest.raises(InputError, match="2 components per voxel"):
        mrml.volume_to_image(tensor)


# --------------------------------------------------------------------------- the self-tests' click-throughs


def test_localizer_click_through_localize_refine_export(monkeypatch, tiny, tmp_path):
    """The same procedure LandmarkLocalizerTest runs in Slicer, on the widget's own code."""
    from LandmarkLocalizerLib.selftest import click_through_localizer

    scene = new_scene()
    volume = add_volume(scene, blob_volume(), SPACING, (-20.0, 15.0, -30.0), DIRECTIONS_LPS["oblique_flipped"],
                        name="patient")
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {})
    widget.populateModels()
    points = click_through_localizer(widget, volume, tiny["fcn"].path, tmp_path / "export", run_until_idle)
    assert shown == []  # the tiny model's warnings go to the status area (test above), not to a popup
    assert points.GetName() == "patient tiny-test"
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["landmarks.csv", "landmarks.fcsv",
                                                                        "landmarks.mrk.json"]


@pytest.mark.parametrize("support", ["point list", "segmentation"])
def test_one_shot_click_through_find_and_export(monkeypatch, tiny, tmp_path, support):
    """The same procedure RPROneShotTest runs in Slicer, with a point list and with a segmentation as support."""
    from RPROneShotLib.selftest import click_through_one_shot
    from test_slicer_workflow import organ_support

    scene = new_scene()
    support_volume, segmentation = organ_support(scene)
    query = add_volume(scene, blob_volume(seed=1), SPACING, (5.0, -3.0, 2.0), DIRECTIONS_LPS["oblique"], name="q")
    geometry = mrml.volume_geometry(support_volume)
    placed = mrml.add_points_node(scene, [ControlPoint(f"P{i}", geometry.index_to_physical(ijk)) for i, ijk in
                                          enumerate([(15.0, 12.0, 9.0), (10.0, 16.0, 15.0)])], "placed")
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.one_shot_widget(monkeypatch, {}, shipped_models("rpr"))
    kwargs = {"points_node": placed} if support == "point list" else {"labels_node": segmentation}
    found, rois, written = click_through_one_shot(widget, support_volume, query, tiny["coarse"].path,
                                                  tiny["fine"].path, str(tmp_path), run_until_idle, **kwargs)
    # untrained tiny models: points may be flagged (a warning in the status saying which), never a popup
    assert shown == []
    warnings = "\n".join(line for line in widget.ui.logTextEdit.lines if line.startswith("Warning: "))
    stages = [line for line in widget.ui.logTextEdit.lines if line in ("Anchor map", "Local image match")]
    assert stages == ["Anchor map", "Local image match"]  # progress moves on after the coarse runs
    flagged = [row.label for row in mrml.result_rows(found) if row.uncertain]
    assert ("uncertain (unselected)" in warnings) == bool(flagged)  # flagged points are reported, and only then
    if support == "point list":
        assert [found.GetNthControlPointLabel(i) for i in range(found.GetNumberOfControlPoints())] == ["P0", "P1"]
        assert rois == [] and len(written) == 1
    else:
        assert found.GetNumberOfControlPoints() == 12
        assert [r.GetName() for r in rois] == ["liver", "spleen"]
        assert written[1].endswith("found_boxes.mrk.json")


# --------------------------------------------------------------------------- self-tests on a build machine


@pytest.mark.parametrize("module_name", ["LandmarkLocalizer", "RPROneShot"])
def test_self_tests_under_the_test_runner_skip_with_a_message_instead_of_installing_pytorch(monkeypatch,
                                                                                            module_name):
    """In testing mode confirmOkCancelDisplay answers OK by itself: asking would install torch on a build machine."""
    import importlib
    from types import SimpleNamespace

    from LandmarkLocalizerLib.selftest import skip_message

    gui.install(monkeypatch)
    module = importlib.import_module(module_name)
    asked, installs = [], []
    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: True), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: asked.append(text) or True)
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **k: installs.append(requirements))
    monkeypatch.setattr(dependencies, "missing_packages", lambda extra=(), engines=True: ["torch"])
    test = getattr(module, f"{module_name}Test")()
    test.runTest()
    assert asked == [] and installs == []
    assert test.displayed == [skip_message(["torch"])]
    # run by hand (Reload and Test), the user is asked; declining installs nothing and fails with the reason
    monkeypatch.setattr(slicer, "app", SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: asked.append(text) and False)
    with pytest.raises(InputError, match="torch are needed"):
        getattr(module, f"{module_name}Test")().runTest()
    assert len(asked) == 1 and installs == []
