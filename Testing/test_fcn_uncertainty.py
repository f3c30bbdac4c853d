"""Calibrated uncertainty of the FCN and the "not found" rule.

* a calibration in the model metadata sets each point's P(error > radius), its flag
  (uncertain = unselected) and what the markups files say; a model without one
  still loads and says so;
* ``landmarkloc calibrate`` writes a calibration the localizer then uses, weights untouched;
* "not found" means outside the image: crops of the MNI152 template that cut
  landmarks off (not found) and that keep them (found), with the shipped brain model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from reliability_inputs import body_volume, image, tiny_fcn

from landmarkloc.cli import main
from landmarkloc.errors import ModelError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.geometry.resample import crop_or_pad
from landmarkloc.inference.fcn import Localizer, mirror_partners
from landmarkloc.inference.fcn_uncertainty import Calibration, auc, choose_threshold, fit_logistic
from landmarkloc.io.markups import read_points, write_points
from landmarkloc.io.modelfile import model_paths, sha256_of
from landmarkloc.points import ControlPoint


def calibration(intercept: float, coefficient: float = 0.0, threshold: float = 0.5, radius: float = 3.0) -> dict:
    part = {"signals": ["local_spread_mm"], "mean": [0.0], "scale": [1.0], "coefficients": [coefficient],
            "intercept": intercept, "threshold": threshold}
    return {"radius_mm": radius, **part, "refine": dict(part), "fit": {"points": 10}}


def with_calibration(path, cal) -> None:
    _, meta_path = model_paths(path)
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = cal
    meta_path.write_text(json.dumps(meta))


@pytest.fixture()
def model(tmp_path):
    torch.set_num_threads(1)
    return tiny_fcn(tmp_path / "m", intensity="mr")


def test_calibration_sets_probability_flag_and_what_files_say(model, tmp_path):
    volume = image(body_volume())
    with_calibration(model, calibration(intercept=4.0))  # P ~ 0.98 for every point
    loc = Localizer.from_file(model, "cpu")
    assert loc.calibration is not None and loc.calibration_notice is None
    result = loc.localize(volume)
    assert all(lm.uncertain and lm.p_large_error > 0.95 for lm in result.landmarks)
    write_points(tmp_path / "high.mrk.json", result.points)
    write_points(tmp_path / "high.csv", result.points)
    for path in (tmp_path / "high.mrk.json", tmp_path / "high.csv"):
        for point in read_points(path):
            assert point.selected is False
            assert point.properties["p_large_error"] > 0.95 and point.properties["radius_mm"] == 3
            assert "uncertain" in point.description and "chance of an error > 3 mm" in point.description

    with_calibration(model, calibration(intercept=-4.0))  # P ~ 0.02: nothing flagged, all selected
    result = Localizer.from_file(model, "cpu").localize(volume)
    assert not any(lm.uncertain for lm in result.landmarks)
    assert all(p.selected and p.properties["p_large_error"] < 0.05 for p in result.points)

    # a coefficient on the vote spread: a wider spread gives a higher probability, as the mapping says
    with_calibration(model, calibration(intercept=0.0, coefficient=2.0))
    lms = Localizer.from_file(model, "cpu").localize(volume).landmarks
    order = np.argsort([lm.signals["local_spread_mm"] for lm in lms])
    assert lms[order[0]].p_large_error <= lms[order[-1]].p_large_error
    for lm in lms:
        z = 2.0 * np.log(lm.signals["local_spread_mm"] + 0.1)
        assert lm.p_large_error == pytest.approx(1 / (1 + np.exp(-z)), rel=1e-6)


def test_refine_uses_the_refine_calibration(model):
    with_calibration(model, calibration(intercept=4.0))
    loc = Localizer.from_file(model, "cpu")
    point = loc.refine(image(body_volume()), "Apex", [10.0, 12.0, 14.0])
    assert point.properties["p_large_error"] > 0.95 and point.selected is False


def test_model_without_calibration_loads_and_says_so_once(model, tmp_path, capsys):
    loc = Localizer.from_file(model, "cpu")
    assert loc.calibration is None and "no calibrated uncertainty" in loc.calibration_notice
    result = loc.localize(image(body_volume()))
    assert all(lm.p_large_error is None for lm in result.landmarks)
    assert all("p_large_error" not in p.properties for p in result.points)
    # the old rule: uncertain = confidence below 0.5
    assert all(lm.uncertain == (lm.confidence < 0.5) for lm in result.landmarks)
    paths = [tmp_path / "v1.nii.gz", tmp_path / "v2.nii.gz"]
    for seed, path in enumerate(paths):
        sitk.WriteImage(image(body_volume(seed=seed)), str(path))
    assert main(["localize", *map(str, paths), "--model", str(model), "-o", str(tmp_path / "out"),
                 "--device", "cpu", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("no calibrated uncertainty") == 1


def test_malformed_calibration_is_refused(model):
    bad = calibration(0.0)
    bad["signals"] = ["no_such_signal"]
    with_calibration(model, bad)
    with pytest.raises(ModelError):
        Localizer.from_file(model, "cpu")


def test_calibrate_command_writes_a_calibration_and_keeps_the_weights(model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    records = []
    for s in range(30):
        for name in ("Apex", "Base"):
            spread = float(rng.uniform(0.2, 6.0))
            error = spread * float(rng.uniform(0.3, 1.2))  # larger spread, larger error
            signals = {"local_spread_mm": spread, "local_confidence": float(rng.uniform(0, 1)),
                       "global_confidence": 1.0, "confidence": 0.5, "global_spread_mm": 2.0,
                       "global_local_mm": float(rng.uniform(0, 3)), "global_peak": 0.9}
            records.append({"image": f"s{s}", "subject": f"s{s}", "landmark": name, "found": True,
                            "error_mm": error, "signals": signals})
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"records": records}))
    weights, _ = model_paths(model)
    digest = sha256_of(weights)
    assert main(["calibrate", str(model), "--val", "unused.csv", "--records", str(path), "--radius", "3",
                 "--max-flagged", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "local_spread_mm" in out and "chosen:" in out
    cal = Calibration.from_metadata(json.loads(model_paths(model)[1].read_text()))
    assert cal.radius_mm == 3.0 and "local_spread_mm" in cal.signals and cal.fit["points"] == 60
    assert cal.coefficients[cal.signals.index("local_spread_mm")] > 0
    assert sha256_of(weights) == digest
    assert Localizer.from_file(model, "cpu").localize(image(body_volume())).landmarks[0].p_large_error is not None


def test_logistic_fit_auc_and_threshold():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(-1.0 + 2.0 * x[:, 0] - 0.5 * x[:, 1])))
    y = rng.uniform(size=4000) < p
    coef, intercept = fit_logistic(x, y, l2=0.0)
    assert coef == pytest.approx([2.0, -0.5], abs=0.2) and intercept == pytest.approx(-1.0, abs=0.15)
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    op = choose_threshold(p, y, catch=0.7, max_flagged=0.9)
    assert op["met"] and op["caught"] >= 0.7 and op["flagged"] <= 0.9


def test_logistic_fit_converges_when_a_landmark_never_errs():
    # as on brain validation points: landmark_rate takes three values and the commonest (landmarks without
    # any large error) holds only small errors, which made plain Newton steps diverge (intercept -3e11)
    rng = np.random.default_rng(0)
    rate = np.r_[np.full(520, -5.5), np.full(80, -2.8), np.full(40, -0.4)]
    y = np.r_[np.zeros(520), np.ones(3), np.zeros(77), np.ones(14), np.zeros(26)].astype(bool)
    spread = rng.normal(size=640) + y
    x = np.stack([rate, spread], axis=1)
    x = (x - x.mean(0)) / x.std(0)
    coef, intercept = fit_logistic(x, y, l2=1.0)
    w = np.r_[intercept, coef]
    design = np.hstack([np.ones((640, 1)), x])
    p = 1 / (1 + np.exp(-design @ w))
    gradient = design.T @ (p - y) + np.r_[0.0, coef]  # of the penalized loss: zero at its minimum
    assert np.all(np.isfinite(w)) and np.abs(gradient).max() < 1e-6
    assert auc(p, y) > 0.9 and 0.0 < p.min() and p.max() < 1.0


def test_mirror_partners_pair_left_and_right_names():
    names = ["3rdVentricle", "Amygdala_R", "Amygdala_L", "Putamen_L", "Putamen_R"]
    assert mirror_partners(names) == [0, 2, 1, 4, 3]
    assert mirror_partners(["sella", "nasion"]) is None


# --------------------------------------------------------------------------- not found = outside the image


@pytest.fixture(scope="module")
def brain():
    pytest.importorskip("nilearn")
    from landmarkloc.demo import mni_template_path
    from landmarkloc.io.image import read_image
    from landmarkloc.io.modelfile import shipped_model

    torch.set_num_threads(1)
    loc = Localizer.from_file(shipped_model("brain-t1-ixi16"), "cpu")
    template = read_image(mni_template_path())
    full = {lm.name: lm.position for lm in loc.localize(template).landmarks}
    return loc, template, full


def _inside_by(geometry: ImageGeometry, point) -> float:
    """mm from ``point`` to the nearest face of the image box (negative: outside)."""
    index = geometry.physical_to_index(point)
    lo = index + 0.5
    hi = np.array(geometry.size) - 0.5 - index
    return float(np.min(np.minimum(lo, hi) * geometry.spacing))


@pytest.mark.parametrize("start,size", [((0, 0, 0), (100, 233, 189)),  # right hemisphere cut off
                                        ((0, 0, 50), (197, 233, 139))])  # brainstem and 4th ventricle cut off
def test_landmarks_cut_off_by_a_crop_are_not_found_and_the_others_are(brain, start, size):
    loc, template, full = brain
    cropped = crop_or_pad(template, start, size)
    geometry = ImageGeometry.from_image(cropped)
    result = loc.localize(cropped)
    by_name = {lm.name: lm for lm in result.landmarks}
    outside = [n for n, p in full.items() if _inside_by(geometry, p) < -5]
    inside = [n for n, p in full.items() if _inside_by(geometry, p) > 10]
    assert len(outside) >= 2 and len(inside) >= 4
    for name in outside:
        assert not by_name[name].found, name
        assert name in result.not_found and name not in {p.label for p in result.points}
    for name in inside:
        assert by_name[name].found, name


def test_a_crop_that_keeps_every_landmark_finds_them_all(brain):
    loc, template, full = brain
    cropped = crop_or_pad(template, (40, 60, 15), (120, 130, 115))
    geometry = ImageGeometry.from_image(cropped)
    assert all(_inside_by(geometry, p) > 15 for p in full.values())
    result = loc.localize(cropped)
    assert result.not_found == []
    errors = [np.linalg.norm(lm.position - full[lm.name]) for lm in result.landmarks]
    assert np.median(errors) < 2.0


# --------------------------------------------------------------------------- Slicer logic


def test_slicer_points_keep_the_calibrated_flag_whatever_the_confidence_slider(tmp_path):
    pytest.importorskip("slicer")
    from LandmarkLocalizerLib import mrml
    from mrml_testing import new_scene

    scene = new_scene()
    points = [
        # calibrated, low raw confidence but a small chance of a large error: stays selected
        ControlPoint("A", [1.0, 2.0, 3.0], "", True, {"confidence": 0.2, "p_large_error": 0.03, "radius_mm": 3}),
        # calibrated and likely wrong: unselected (the core already says so)
        ControlPoint("B", [2.0, 2.0, 3.0], "uncertain", False,
                     {"confidence": 0.9, "p_large_error": 0.7, "radius_mm": 3}),
        # an uncalibrated model's point: the slider on the raw confidence applies
        ControlPoint("C", [3.0, 2.0, 3.0], "", True, {"confidence": 0.2}),
    ]
    node = mrml.add_points_node(scene, points, "pts", confidence_threshold=0.5)
    assert [bool(node.GetNthControlPointSelected(i)) for i in range(3)] == [True, False, False]
    rows = mrml.result_rows(node)
    assert [r.uncertain for r in rows] == [False, True, True]
    assert "p_large_error=0.7" in node.GetNthControlPointDescription(1)


def test_calibrate_held_out_refuses_a_model_validated_on_images_given_apart(model, capsys):
    """--held-out recomputes train-fcn's split from the seed; for a model trained with --val those would be
    other images, some of them trained on: refused before any image is read, the model file untouched."""
    _, meta_path = model_paths(model)
    meta = json.loads(meta_path.read_text())
    meta.setdefault("training_data", {})["validation_held_out"] = False
    meta["train_config"] = {"seed": 0, "val_fraction": 0.1}
    meta_path.write_text(json.dumps(meta))
    before = meta_path.read_text()
    assert main(["calibrate", str(model), "--val", "missing.csv", "--held-out", "--radius", "3"]) == 2
    assert "given apart at training" in capsys.readouterr().err
    assert meta_path.read_text() == before
