"""The Device choice in both workers: what each choice asks the engine for, the device actually used in every
result, the CPU fallback when CUDA runs out of memory, and the engine's stages reported as they start."""

import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_testing import REPO  # noqa: F401  (puts the module Lib folders on sys.path)

from landmarkloc.points import ControlPoint

torch = pytest.importorskip("torch")

from LandmarkLocalizerLib import engine, worker  # noqa: E402
from LandmarkLocalizerLib.devices import CUDA_OUT_OF_MEMORY_WARNING, DEVICE_CHOICES, torch_device_name  # noqa: E402
from RPROneShotLib import engine as rpr_engine  # noqa: E402
from RPROneShotLib import worker as rpr_worker  # noqa: E402


class FakeModel:
    def __init__(self, device):
        self.device = torch.device("cuda" if device == "auto" else device)


def fake_engine(monkeypatch, localize_on_cuda):
    """engine.load records the device asked for; engine.localize runs ``localize_on_cuda`` on a CUDA model."""
    loaded = []

    def load(path, device):
        loaded.append(device)
        return FakeModel(device)

    def localize(model, image, with_evidence, report):
        if model.device.type == "cuda":
            localize_on_cuda()
        return engine.Localization(points=[ControlPoint("Apex", [1.0, 2.0, 3.0])], not_found=[])

    monkeypatch.setattr(engine, "load", load)
    monkeypatch.setattr(engine, "localize", localize)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    return loaded


def localize_request(tmp_path, device):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(image, str(tmp_path / "input.mha"))
    return {"task": "localize", "model": "unused.json", "device": device, "image": str(tmp_path / "input.mha")}


def out_of_memory():
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_out_of_memory_runs_again_on_the_cpu_and_says_so(monkeypatch, tmp_path):
    loaded = fake_engine(monkeypatch, out_of_memory)
    stages = []
    out = worker.handle(localize_request(tmp_path, "CUDA"), tmp_path, lambda fraction, stage: stages.append(stage))
    assert loaded == ["cuda", "cpu"]
    assert out["device"] == "cpu"
    assert out["warnings"][0] == CUDA_OUT_OF_MEMORY_WARNING
    assert "The GPU ran out of memory: running on the CPU" in stages
    assert [p["label"] for p in out["points"]] == ["Apex"]


def test_other_gpu_errors_are_not_hidden_by_a_cpu_run(monkeypatch, tmp_path):
    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    loaded = fake_engine(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        worker.handle(localize_request(tmp_path, "Auto"), tmp_path, lambda fraction, stage: None)
    assert loaded == ["auto"]


@pytest.mark.parametrize("choice, asked", [("Auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"), ("MPS", "mps"),
                                           ("GPU", "cuda")])
def test_each_device_choice_asks_the_engine_for_its_device_and_the_result_names_the_one_used(
        monkeypatch, tmp_path, choice, asked):
    loaded = fake_engine(monkeypatch, lambda: None)
    out = worker.handle(localize_request(tmp_path, choice), tmp_path, lambda fraction, stage: None)
    assert loaded == [asked] and torch_device_name(choice) == asked
    assert out["device"] == str(FakeModel(asked).device) and out["warnings"] == []


def test_the_modules_offer_auto_cpu_cuda_and_mps():
    assert DEVICE_CHOICES == ("Auto", "CPU", "CUDA", "MPS")


def test_one_shot_falls_back_to_the_cpu_too(monkeypatch, tmp_path):
    loaded = []

    class Locator:
        def __init__(self, device):
            self.device = torch.device(device)

    def load_locator(coarse, fine, device, steps):
        loaded.append(device)
        return Locator(device)

    def locate_rpr(locator, template, query, runs, seed, refine, report):
        if locator.device.type == "cuda":
            out_of_memory()
        return [ControlPoint("P0", [0.0, 1.0, 2.0])], [], []

    monkeypatch.setattr(rpr_engine, "load_locator", load_locator)
    monkeypatch.setattr(rpr_engine, "load_template", lambda path: object())
    monkeypatch.setattr(rpr_engine, "locate_rpr", locate_rpr)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    query = tmp_path / "query.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(query))
    out = rpr_worker.handle({"task": "locate", "method": "rpr", "model": "c.json", "template": "t.json",
                             "query": str(query), "device": "CUDA"}, tmp_path, lambda fraction, stage: None)
    assert loaded == ["cuda", "cpu"]
    assert out["device"] == "cpu" and out["warnings"] == [CUDA_OUT_OF_MEMORY_WARNING]


def test_the_worker_reports_the_engines_stages_in_order(tmp_path):
    """Progress moves through the engine's own stages (read, global, local, write), not one long 30 %."""
    from LandmarkLocalizerLib import logic
    from LandmarkLocalizerLib.models import inspect_model
    from LandmarkLocalizerLib.selftest import blob_volume, make_tiny_fcn_model
    from mrml_testing import add_volume, new_scene

    pytest.importorskip("slicer")
    scene = new_scene()
    volume = add_volume(scene, blob_volume(), (1.6, 1.5, 1.8), name="ct")
    model = inspect_model(make_tiny_fcn_model(tmp_path / "tiny"), "fcn")
    job = logic.start_localize(volume, model, "CPU", python=sys.executable)
    events = []
    deadline = time.time() + 120
    while job.running and time.time() < deadline:
        events += job.poll()
        time.sleep(0.02)
    job.cleanup()
    progress = [e for e in events if e.kind == "progress"]
    assert [e.stage for e in progress] == ["Reading image", "Loading model", "Global stage", "Local stage",
                                           "Writing results"]
    assert [e.fraction for e in progress] == sorted(e.fraction for e in progress)
    assert events[-1].kind == "done" and events[-1].result["device"] == "cpu"


def test_a_scene_saved_with_the_old_gpu_choice_opens_with_cuda(monkeypatch):
    """The wrapper's combo box refuses a value that is not a choice: "GPU" is mapped before the GUI connects."""
    import slicer_gui_stand_ins as gui
    from LandmarkLocalizerLib.devices import device_choice
    from LandmarkLocalizerLib.models import shipped_models

    pytest.importorskip("slicer")
    assert [device_choice(v) for v in ("GPU", "MPS", "CPU", "Auto", "TPU")] == ["CUDA", "MPS", "CPU", "Auto", "Auto"]
    _, widget = gui.one_shot_widget(monkeypatch, {"device": "GPU"}, shipped_models("rpr"))
    widget.initializeParameterNode()
    assert widget._parameterNode.device == "CUDA"
