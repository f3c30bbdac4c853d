"""Try it in one click: the MNI152 T1 sample (from the nilearn wheel, no download) loads as a volume node, points
both modules at it with the shipped models and support template, and both then run on it through their widgets."""

import importlib
import time
from types import SimpleNamespace

import numpy as np
import pytest
import slicer_gui_stand_ins as gui
from mrml_testing import new_scene

from landmarkloc.geometry.frames import lps_to_ras

torch = pytest.importorskip("torch")
slicer = pytest.importorskip("slicer")
pytest.importorskip("nilearn")

from LandmarkLocalizerLib import mrml, sampledata  # noqa: E402
from LandmarkLocalizerLib.models import inspect_model, shipped_models  # noqa: E402
from RPROneShotLib.logic import inspect_template  # noqa: E402

from landmarkloc.io.image import read_image  # noqa: E402


def run_until_idle(widget, timeout=300.0):
    deadline = time.time() + timeout
    while widget._job is not None and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.05)
    assert widget._job is None


def test_sample_volume_has_the_template_files_geometry():
    scene = new_scene()
    node = sampledata.load_mni152(scene)
    assert node.GetName() == sampledata.NODE_NAME and node.GetDisplayNode() is not None
    image = read_image(sampledata.mni152_file())
    geometry = mrml.volume_geometry(node)
    np.testing.assert_allclose(geometry.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(geometry.spacing, image.GetSpacing(), atol=1e-6)
    assert tuple(geometry.size) == image.GetSize()


def test_sample_models_fit_together():
    models = sampledata.sample_models()
    fcn = inspect_model(models.fcn, "fcn")
    coarse, fine = inspect_model(models.coarse, "rpr"), inspect_model(models.fine, "rpr")
    assert (coarse.stage, fine.stage) == ("coarse", "fine")
    template = inspect_template(models.template)
    assert sorted(template["names"]) == sorted(fcn.landmarks)  # the same 16 brain points in both modules


def test_loading_the_sample_sets_up_both_modules_and_both_run_on_it(monkeypatch, tmp_path):
    scene = new_scene()
    shown = gui.dialogs(monkeypatch)
    one_shot_module, one_shot = gui.one_shot_widget(monkeypatch, {}, shipped_models("rpr"))
    localizer_module, localizer = gui.localizer_widget(monkeypatch, {})
    assert importlib.import_module("RPROneShot") is one_shot_module  # what the sample loader imports
    monkeypatch.setattr(localizer_module.LandmarkLocalizerLogic, "getParameterNode",
                        lambda self: localizer._parameterNode)
    monkeypatch.setattr(one_shot_module.RPROneShotLogic, "getParameterNode", lambda self: one_shot._parameterNode)
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(rproneshot=object()), raising=False)

    [node] = localizer_module.loadMNI152Sample()
    assert shown == []
    assert scene.GetNodeByID(node.GetID()) is node
    assert localizer._parameterNode.inputVolume is node
    assert one_shot._parameterNode.queryVolume is node

    localizer.populateModels()
    localizer.selectModelPath(localizer._parameterNode.modelPath)
    localizer.onLocalizeButton()
    run_until_idle(localizer)
    points = localizer._parameterNode.outputPoints
    assert shown == [] and points.GetNumberOfControlPoints() == 16

    one_shot.initializeParameterNode()
    one_shot._parameterNode.runs = 3
    one_shot.updateButtons()
    assert one_shot.ui.findButton.enabled  # no support needed: the template replaces it
    one_shot.onFindButton()
    run_until_idle(one_shot)
    # the template as its own query; any flagged point comes with a warning in the status that names it, no popup
    assert shown == []
    assert all("uncertain (unselected)" in line for line in one_shot.ui.statusLabel.text.splitlines()[1:])
    found = one_shot._parameterNode.outputPoints
    assert found.GetNumberOfControlPoints() == 16
    # the same points as the core finds in the template file itself (same runs and seed): the Slicer path adds
    # nothing and loses nothing. (How near they are to the support points is the models' business: docs/oneshot.md.)
    from landmarkloc.inference.oneshot import OneShotLocator, Template

    models = sampledata.sample_models()
    locator = OneShotLocator.from_files(models.coarse, models.fine, device="cpu")
    expected = locator.locate(read_image(sampledata.mni152_file()), Template.load(models.template), runs=3, seed=0)
    got = {row.label: np.array(row.position_ras) for row in mrml.result_rows(found)}
    for point in expected.points:
        np.testing.assert_allclose(got[point.label], lps_to_ras(point.position), atol=1e-3)


def test_sample_is_registered_in_sample_data_with_its_loader_and_thumbnail(monkeypatch):
    import sys
    import types
    from pathlib import Path

    gui.install(monkeypatch)
    registered = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    module = importlib.import_module("LandmarkLocalizer")
    module.registerSampleData()
    [source] = registered
    assert source["category"] == "Landmark Localization" and source["sampleName"] == "MNI152 T1"
    # SampleData needs one URI, file name and node name per data set (or lists of equal length)
    assert all(isinstance(source[key], str) for key in ("uris", "fileNames", "nodeNames"))
    assert source["customDownloader"] is module.loadMNI152Sample
    assert Path(source["thumbnailFileName"]).read_bytes()[:4] == b"\x89PNG"


def test_loading_the_sample_in_a_slicer_without_pytorch_asks_for_nothing_but_nilearn(monkeypatch):
    """Seeing the sample image needs no network: a Python without torch, safetensors or tqdm loads it at once."""
    import importlib.util

    from LandmarkLocalizerLib import dependencies

    real_find_spec = importlib.util.find_spec
    absent = {"torch", "safetensors", "tqdm"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent
                        else real_find_spec(name, *a))
    new_scene()
    shown = gui.dialogs(monkeypatch)
    asked = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: asked.append(text) or True)
    localizer_module, localizer = gui.localizer_widget(monkeypatch, {})
    monkeypatch.setattr(localizer_module.LandmarkLocalizerLogic, "getParameterNode",
                        lambda self: localizer._parameterNode)
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(), raising=False)
    [node] = localizer_module.loadMNI152Sample()
    assert asked == [] and shown == []
    assert localizer._parameterNode.inputVolume is node
    # with nilearn missing too, only nilearn is asked for and installed
    absent.add("nilearn")
    installed = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda requirements, **k: installed.append(requirements))
    with pytest.raises(dependencies.InputError, match="did not make them importable"):
        dependencies.ensure_installed(lambda text: asked.append(text) or True, extra=("nilearn",), engines=False)
    assert installed == ["nilearn"]
    assert len(asked) == 1 and "nilearn." in asked[0] and "torch" not in asked[0]
