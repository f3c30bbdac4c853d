"""Reliability beyond refusals: inputs unlike the training data, determinism, memory, size limits, Slicer logic,
and geometry round trips through markups files."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import rotation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mrml_testing import REPO  # noqa: F401  (puts the module Lib folders on sys.path)
from reliability_inputs import body_volume, ct_like_volume, image, tiny_fcn, write
from RPROneShotLib.selftest import make_tiny_rpr_models

from landmarkloc.cli import main
from landmarkloc.errors import InputError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.geometry.intensity import get_preset, intensity_profile, normalize, profile_preset, unlike_profile
from landmarkloc.geometry.resample import to_model_grid
from landmarkloc.inference.fcn import Localizer
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.io.markups import read_points, write_points
from landmarkloc.points import ControlPoint


def mr_profile(n: int = 4) -> dict:
    """The profile training would store for MR-like images (as the network sees them)."""
    arrays = [normalize(sitk.GetArrayFromImage(to_model_grid(image(body_volume(seed=s)), (2.0,) * 3)),
                        get_preset("mr")) for s in range(n)]
    return intensity_profile(arrays)


@pytest.fixture(scope="module")
def mr_model(tmp_path_factory):
    return tiny_fcn(tmp_path_factory.mktemp("mr") / "mr_model", intensity="mr", profile=mr_profile())


# --------------------------------------------------------------------------- unlike the training data


def test_ct_given_to_an_mr_model_is_flagged_uncertain_with_a_warning(mr_model):
    localizer = Localizer.from_file(mr_model, device="cpu")
    alike = localizer.localize(image(body_volume(seed=11)))
    assert alike.warnings == [] and not any(lm.unlike_training for lm in alike.landmarks)
    ct = localizer.localize(image(ct_like_volume()))
    assert len(ct.warnings) == 1 and "unlike the model's training images" in ct.warnings[0]
    assert all(lm.uncertain and lm.unlike_training for lm in ct.landmarks)
    assert all(not p.selected and "unlike the training data" in p.description for p in ct.points)


def test_cli_prints_the_warning_on_stderr_and_still_writes_the_points(mr_model, tmp_path, capsys):
    path = write(image(ct_like_volume()), tmp_path / "ct.nrrd")
    assert main(["localize", str(path), "--model", str(mr_model), "-o", str(tmp_path / "ct.mrk.json"), "-q",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "unlike" in err and "error" not in err
    points = read_points(tmp_path / "ct.mrk.json")
    assert points and not any(p.selected for p in points)


def picture(volume: np.ndarray, exposure: float = 1.0) -> sitk.Image:
    """The middle slice of ``volume`` as a 2D picture of 0.5 mm pixels, its grey values raised to ``exposure``."""
    values = np.clip(volume[volume.shape[0] // 2], 0.0, None) ** exposure if exposure != 1.0 \
        else volume[volume.shape[0] // 2]
    return image(np.ascontiguousarray(values, dtype=np.float32), spacing=(0.5, 0.5))


def test_an_equalizing_model_tells_a_ct_slice_by_the_pictures_own_percentile_range(tmp_path):
    """Equalization gives every picture the same flat histogram, so the profile is recorded, and compared,
    under the percentile range: a differently exposed radiograph passes, a CT slice is warned about."""
    view = profile_preset("xray-equalized")
    assert view.mode == "percentile" and profile_preset("mr") == get_preset("mr")
    shape = (3, 44, 48)
    arrays = [normalize(sitk.GetArrayFromImage(to_model_grid(picture(body_volume(shape, seed=s)), (0.5, 0.5))),
                        view) for s in range(4)]
    profile = intensity_profile(arrays, view)
    assert profile["preset"] == "xray" and profile["typical_distance"] <= profile["max_distance"]
    model = tiny_fcn(tmp_path / "equalizing", ndim=2, intensity="xray-equalized", spacing=0.5, profile=profile)
    localizer = Localizer.from_file(model, device="cpu")
    assert localizer.localize(picture(body_volume(shape, seed=9), exposure=0.8)).warnings == []
    ct = localizer.localize(picture(ct_like_volume(shape)))
    assert len(ct.warnings) == 1 and "unlike the model's training images" in ct.warnings[0]
    assert all(lm.uncertain and lm.unlike_training for lm in ct.landmarks)


def test_models_without_a_profile_still_load_and_do_not_warn(tmp_path):
    localizer = Localizer.from_file(tiny_fcn(tmp_path / "old"), device="cpu")
    assert localizer.localize(image(ct_like_volume())).warnings == []


def test_unlike_profile_tolerates_malformed_profiles():
    data = np.random.default_rng(0).random((8, 8, 8))
    for profile in (None, {}, {"bins": 16}, {"bins": 16, "mean_histogram": [1, 2], "max_distance": 0.1},
                    {"bins": 16, "mean_histogram": "x", "max_distance": None}):
        assert unlike_profile(data, profile) is None


# --------------------------------------------------------------------------- determinism and load


def test_fcn_localization_is_deterministic(mr_model):
    img = image(body_volume(seed=3))
    first = Localizer.from_file(mr_model, device="cpu").localize(img)
    again = Localizer.from_file(mr_model, device="cpu").localize(img)
    for a, b in zip(first.landmarks, again.landmarks):
        assert np.array_equal(a.position, b.position) and a.confidence == b.confidence


@pytest.fixture(scope="module")
def rpr(tmp_path_factory):
    coarse, fine = make_tiny_rpr_models(tmp_path_factory.mktemp("rpr"))
    locator = OneShotLocator.from_files(coarse, fine, device="cpu")
    support = image(body_volume(seed=1))
    points = [ControlPoint("a", support.TransformIndexToPhysicalPoint((10, 10, 8))),
              ControlPoint("b", support.TransformIndexToPhysicalPoint((14, 8, 12)))]
    return locator, locator.make_template(support, points), support, points


def test_oneshot_is_deterministic_for_a_seed(rpr):
    locator, template, _, _ = rpr
    query = image(body_volume(seed=2))
    a = locator.locate(query, template, runs=5, seed=7)
    b = locator.locate(query, template, runs=5, seed=7)
    c = locator.locate(query, template, runs=5, seed=8)
    assert all(np.array_equal(p.position, q.position) for p, q in zip(a.points, b.points))
    assert np.array_equal(a.run_positions, b.run_positions)
    assert not np.array_equal(a.run_positions, c.run_positions)  # other random starts


def test_few_shot_supports_with_other_point_names_are_refused(rpr):
    locator, _, support, points = rpr
    renamed = [ControlPoint("z" + p.label, p.position) for p in points]
    with pytest.raises(InputError, match="support 2: no point named a, b"):
        locator.make_template([support, support], [points, renamed])


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_fifty_localizations_do_not_grow_memory(mr_model):
    localizer = Localizer.from_file(mr_model, device="cpu")
    img = image(body_volume((12, 12, 12), seed=5))
    for _ in range(5):  # warm-up: allocator pools, lazy imports
        localizer.localize(img, evidence=["Apex"])
    gc.collect()
    before = _rss_bytes()
    for _ in range(50):
        result = localizer.localize(img, evidence=["Apex"])
    del result
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < 4 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 50 localizations"


# --------------------------------------------------------------------------- size limits


def test_a_model_grid_too_large_for_memory_is_refused_with_its_size(mr_model, monkeypatch):
    localizer = Localizer.from_file(mr_model, device="cpu")
    monkeypatch.setenv("LANDMARKLOC_MAX_MEMORY_GB", "0.0001")  # 100 kB: the 12^3 grid (55 kB) fits, more not
    localizer.localize(image(body_volume((12, 12, 12))))
    with pytest.raises(InputError, match=r"model grid \(24 x 22 x 20 voxels of 2, 2, 2 mm\) needs about"):
        localizer.localize(image(body_volume()))


# --------------------------------------------------------------------------- Slicer logic


def test_slicer_logic_refuses_bad_voxels_before_starting_and_changes_nothing(tmp_path):
    pytest.importorskip("slicer")
    from LandmarkLocalizerLib import logic as fcn_logic
    from LandmarkLocalizerLib.models import inspect_model
    from LandmarkLocalizerLib.selftest import make_tiny_fcn_model
    from mrml_testing import add_volume, new_scene
    from RPROneShotLib import logic as rpr_logic

    model = inspect_model(make_tiny_fcn_model(tmp_path / "fcn"), "fcn")
    coarse = inspect_model(make_tiny_rpr_models(tmp_path)[0], "rpr")
    scene = new_scene()
    nan = body_volume()
    nan[2, 3, 4] = np.nan
    bad = add_volume(scene, nan, name="nan")
    flat = add_volume(scene, np.full((20, 22, 24), 5.0, np.float32), name="flat")
    fine = add_volume(scene, body_volume(), name="fine")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "placed")
    points.AddControlPoint(0.0, 0.0, 0.0)
    before = sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))
    workdirs = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    with pytest.raises(InputError, match="nan contains NaN"):
        fcn_logic.start_localize(bad, model, python=sys.executable)
    with pytest.raises(InputError, match="flat is constant"):
        fcn_logic.start_localize(flat, model, python=sys.executable)
    with pytest.raises(InputError, match="flat is constant"):
        rpr_logic.start_find(flat, rpr_logic.Support(fine, points), "rpr", coarse, python=sys.executable)
    with pytest.raises(InputError, match="nan contains NaN"):
        rpr_logic.start_find(fine, rpr_logic.Support(bad, points), "rpr", coarse, python=sys.executable)
    after = sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))
    assert after == before
    leftover = {d for d in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - workdirs
                if d.startswith("landmarkloc-")}
    assert not leftover, "a refused start must remove its work folder"


# --------------------------------------------------------------------------- geometry through markups files

_unit = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(origin=st.tuples(*[st.floats(-500, 500)] * 3), spacing=st.tuples(*[st.floats(0.05, 10.0)] * 3),
       axis=st.tuples(_unit, _unit, _unit).filter(lambda a: np.linalg.norm(a) > 1e-3), angle=st.floats(-180, 180),
       flip=st.sampled_from([1.0, -1.0]), index=st.tuples(*[st.floats(-5, 300)] * 3),
       suffix=st.sampled_from([".mrk.json", ".fcsv", ".csv"]), system=st.sampled_from(["LPS", "RAS"]))
def test_index_to_markups_file_and_back(tmp_path, origin, spacing, axis, angle, flip, index, suffix, system):
    """index -> physical LPS -> markups file (LPS or RAS) -> read back -> index, with random geometry."""
    direction = rotation(axis, angle) @ np.diag([1.0, 1.0, flip])
    geometry = ImageGeometry(origin=origin, spacing=spacing, direction=direction, size=(10, 10, 10))
    position = geometry.index_to_physical(index)
    path = tmp_path / f"p{suffix}"
    write_points(path, [ControlPoint("p", position)], coordinate_system=system)
    (back,) = read_points(path)
    # files keep a finite number of decimals: compare in mm, then in voxels
    np.testing.assert_allclose(back.position, position, atol=1e-3)
    np.testing.assert_allclose(geometry.physical_to_index(back.position), index, atol=1e-3 / min(spacing) + 1e-9)


def test_training_metadata_carries_the_intensity_profile():
    from landmarkloc.training.fcn import model_metadata, network_configs, train_config

    cfg = train_config("compact", 3, spacing=(2.0, 2.0, 2.0))
    global_cfg, local_cfg, _ = network_configs(cfg, 2)
    profile = mr_profile(2)
    meta = model_metadata(cfg, ["a", "b"], global_cfg, local_cfg, cfg.spacing,
                          {"images": 2, "intensity_profile": profile}, {}, {})
    assert meta["intensity_profile"] == profile and "intensity_profile" not in meta["training_data"]
