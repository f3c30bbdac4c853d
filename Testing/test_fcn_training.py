"""A tiny 2D FCN trained here localizes generated landmarks within one voxel (oblique, flipped image)."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fcn_helpers import BLOBS, TINY_GLOBAL, TINY_LOCAL, blob_image, write_blob_dataset

from landmarkloc.cli import main
from landmarkloc.errors import InputError, ModelError
from landmarkloc.geometry.frames import ImageGeometry
from landmarkloc.geometry.resample import crop_or_pad
from landmarkloc.inference.fcn import Localizer, refine
from landmarkloc.io.datasets import load_dataset
from landmarkloc.io.markups import read_points
from landmarkloc.training.fcn import network_configs, train_config, train_fcn
from landmarkloc.training.fcn_sampling import AUGMENT_PRESETS, AugmentConfig

SPACING = 1.5
SIZE = (48, 48)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fcn2d")
    write_blob_dataset(root / "train", 24, SIZE, SPACING, seed=2)
    cfg = train_config("compact", 2, iterations=2500, validate_every=500, crop_size=32, intensity="ct",
                       spacing=(SPACING, SPACING), global_overrides=TINY_GLOBAL, local_overrides=TINY_LOCAL,
                       augment=AugmentConfig(rotation_deg=5, scale=0.05))
    meta = train_fcn(load_dataset(root / "train"), root / "model", cfg, quiet=True)
    rng = np.random.default_rng(99)
    held_out = [blob_image(SIZE, SPACING, rng) for _ in range(4)]
    return root, meta, Localizer.from_file(root / "model.safetensors", "cpu"), held_out


def test_localizes_held_out_images_within_one_voxel(trained):
    _, meta, loc, held_out = trained
    assert meta["landmark_names"] == [b[0] for b in BLOBS]
    assert meta["training_data"]["validation_held_out"] is True  # no --val: held out of the training images
    for image, truth in held_out:
        result = loc.localize(image)
        for lm in result.landmarks:
            assert lm.found
            assert np.linalg.norm(lm.position[:2] - truth[lm.name]) < SPACING
            assert lm.position[2] == 0.0
        assert {p.label for p in result.points} == set(truth)


def test_landmark_outside_the_field_of_view_is_not_found(trained):
    _, _, loc, held_out = trained
    image, truth = held_out[0]
    geometry = ImageGeometry.from_image(image)
    # a 24 x 24 window around the bright blob; the dark one lies outside it in these images
    start = np.round(geometry.physical_to_index(truth["Bright"]) - 12).astype(int)
    cropped = crop_or_pad(image, start, (24, 24))
    assert not ImageGeometry.from_image(cropped).contains(truth["Dark"], margin=4).item()
    result = loc.localize(cropped)
    by_name = {lm.name: lm for lm in result.landmarks}
    assert not by_name["Dark"].found and by_name["Dark"].confidence < 0.05
    assert "Dark" in result.not_found and "Dark" not in {p.label for p in result.points}
    assert by_name["Bright"].found
    assert np.linalg.norm(by_name["Bright"].position[:2] - truth["Bright"]) < SPACING


def test_evidence_posterior_is_on_the_input_grid_and_peaks_at_the_landmark(trained):
    _, _, loc, held_out = trained
    image, truth = held_out[1]
    result = loc.localize(image, evidence=["Bright"])
    posterior = result.evidence["Bright"]
    assert posterior.GetSize() == image.GetSize() and posterior.GetDirection() == image.GetDirection()
    arr = sitk.GetArrayFromImage(posterior)
    peak = np.array(np.unravel_index(np.argmax(arr), arr.shape))[::-1]
    peak_mm = ImageGeometry.from_image(image).index_to_physical(peak)
    assert np.linalg.norm(peak_mm - truth["Bright"]) < 8 * SPACING  # within the patch size
    positions, weights = result.votes["Bright"]
    assert positions.shape[1] == 3 and weights.shape == (len(positions),)


def test_refine_from_a_moved_point(trained):
    _, _, loc, held_out = trained
    image, truth = held_out[2]
    moved = np.append(truth["Dark"] + np.array([4.0, -3.0]), 0.0)
    point = refine(loc, image, "Dark", moved)
    assert point.label == "Dark" and point.properties["found"] == 1
    assert np.linalg.norm(point.position[:2] - truth["Dark"]) < SPACING
    with pytest.raises(InputError):
        refine(loc, image, "Nasion", moved)


def test_model_file_is_checked_against_its_weights(trained, tmp_path):
    root, meta, _, _ = trained
    for key in ("format_version", "sha256", "ndim", "landmark_names", "spacing", "intensity", "patch_size",
                "sub_image_size", "global_architecture", "local_architecture", "training_data", "validation"):
        assert key in meta
    shutil.copy(root / "model.safetensors", tmp_path / "m.safetensors")
    bad = dict(meta)
    bad["global_architecture"] = {**meta["global_architecture"], "head_channels": 32}
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError):
        Localizer.from_file(tmp_path / "m.json", "cpu")
    with pytest.raises(InputError):  # a 3D image for a 2D model
        Localizer.from_file(root / "model.json", "cpu").localize(sitk.Image(8, 8, 8, sitk.sitkFloat32))


def test_localize_cli_writes_one_file_per_input_with_confidence(trained, tmp_path, capsys):
    root, _, _, held_out = trained
    paths = []
    for i, (image, _) in enumerate(held_out[:2]):
        paths.append(tmp_path / f"img{i}.nii.gz")
        sitk.WriteImage(image, str(paths[-1]))
    out = tmp_path / "out"
    code = main(["localize", *map(str, paths), "--model", str(root / "model.safetensors"), "-o", str(out),
                 "--format", "csv", "--evidence", "--device", "cpu", "-q"])
    assert code == 0
    for i, (_, truth) in enumerate(held_out[:2]):
        points = {p.label: p for p in read_points(out / f"img{i}.csv")}
        assert set(points) == set(truth)
        assert 0.25 <= points["Bright"].properties["confidence"] <= 1.0
        assert np.linalg.norm(points["Bright"].position[:2] - truth["Bright"]) < SPACING
        assert (out / f"img{i}_Bright_posterior.nrrd").is_file() and (out / f"img{i}_Dark_votes.csv").is_file()
    assert "time per image" in capsys.readouterr().out
    assert main(["localize", str(paths[0]), "--model", str(tmp_path / "none.json"), "-o", str(tmp_path / "x.fcsv"),
                 "-q"]) == 2


def test_a_fine_stage_trained_on_a_finer_grid_keeps_the_earlier_stages_and_finds_the_landmarks(trained):
    root, meta, _, held_out = trained
    cfg = train_config("compact", 2, iterations=600, validate_every=300, intensity="ct", local_overrides=TINY_LOCAL,
                       fine_overrides=TINY_LOCAL, init_from=str(root / "model"), train_stage="fine",
                       fine_spacing=(SPACING / 2,), fine_sub_image_size=16,
                       augment=AugmentConfig(rotation_deg=5, scale=0.05))
    fine_meta = train_fcn(load_dataset(root / "train"), root / "fine", cfg, quiet=True)
    assert fine_meta["fine_stage"]["spacing"] == [SPACING / 2] * 2
    assert fine_meta["training"]["init_from"]["sha256"] == meta["sha256"]
    base = Localizer.from_file(root / "model.safetensors", "cpu")
    loc = Localizer.from_file(root / "fine.safetensors", "cpu")
    for part in ("global_net", "local_net"):  # the earlier stages are frozen
        for (key, before), after in zip(getattr(base.network, part).state_dict().items(),
                                        getattr(loc.network, part).state_dict().values()):
            assert torch.equal(before, after), key
    assert [float(s.spacing[0]) for s in loc.stages] == [SPACING, SPACING / 2]
    for image, truth in held_out:  # oblique and flipped images
        result = loc.localize(image)
        for lm in result.landmarks:
            assert lm.found and np.linalg.norm(lm.position[:2] - truth[lm.name]) < SPACING
            assert "local_fine_mm" in lm.signals
    image, truth = held_out[2]
    point = refine(loc, image, "Dark", np.append(truth["Dark"] + np.array([3.0, -2.0]), 0.0))
    assert np.linalg.norm(point.position[:2] - truth["Dark"]) < SPACING


def test_a_local_ensemble_stacked_from_separately_trained_members_averages_them(trained, tmp_path):
    import importlib.util
    from pathlib import Path

    root, _, base, held_out = trained
    cfg = train_config("compact", 2, iterations=600, validate_every=300, intensity="ct", local_overrides=TINY_LOCAL,
                       init_from=str(root / "model"), train_stage="local", seed=1,
                       augment=AugmentConfig(rotation_deg=5, scale=0.05))
    train_fcn(load_dataset(root / "train"), tmp_path / "member", cfg, quiet=True)
    recipe = Path(__file__).resolve().parents[1] / "models" / "recipes" / "local_ensemble.py"
    spec = importlib.util.spec_from_file_location("local_ensemble", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(str(tmp_path / "ensemble"), str(root / "model"), [str(tmp_path / "member")])
    member = Localizer.from_file(tmp_path / "member.safetensors", "cpu")
    ensemble = Localizer.from_file(tmp_path / "ensemble.safetensors", "cpu")
    assert ensemble.network.local_members == 2
    image, truth = held_out[0]
    one, two, both = (m.localize(image, tta=False) for m in (base, member, ensemble))
    for a, b, c in zip(one.landmarks, two.landmarks, both.landmarks):
        assert np.allclose(c.position, (a.position + b.position) / 2, atol=1e-3)  # same global estimate
        expected = np.linalg.norm(a.position - b.position) / 2  # RMS distance of two members from their mean
        assert c.signals["local_members_mm"] == pytest.approx(expected, abs=1e-3)
        assert np.linalg.norm(c.position[:2] - truth[c.name]) < SPACING


def _parameters(net) -> torch.Tensor:
    return torch.cat([p.flatten() for p in net.parameters()])


def _trained_further(root, stage: str, augment: str, name: str) -> tuple:
    """The trained model at ``root / "model"`` trained further (``train_stage`` ``stage``, 300 iterations, an
    augmentation preset with small geometry), written to ``root / name``: (its metadata, its Localizer)."""
    cfg = train_config("compact", 2, iterations=300, validate_every=150, crop_size=32, intensity="ct",
                       learning_rate=3e-4, init_from=str(root / "model"), train_stage=stage,
                       augment=replace(AUGMENT_PRESETS[augment], rotation_deg=5.0, scale=0.05))
    meta = train_fcn(load_dataset(root / "train"), root / name, cfg, quiet=True)
    return meta, Localizer.from_file(root / f"{name}.safetensors", "cpu")


def _assert_finds_held_out(loc, held_out, tolerance_mm):
    for image, truth in held_out:
        for lm in loc.localize(image).landmarks:
            assert lm.found and np.linalg.norm(lm.position[:2] - truth[lm.name]) < tolerance_mm


def test_finetune_continues_both_networks_with_clinical_augmentation(trained):
    """--train-stage finetune: the global and the local networks start as the model's (both trained on from
    there, none frozen), with the appearance augmentation; the result still finds held-out landmarks."""
    root, meta, base, held_out = trained
    tuned_meta, tuned = _trained_further(root, "finetune", "appearance", "tuned")
    assert tuned_meta["training"]["init_from"]["sha256"] == meta["sha256"]
    assert tuned_meta["train_config"]["augment"]["bias_field"] == AUGMENT_PRESETS["appearance"].bias_field
    for part in ("global_net", "local_net"):  # trained on: changed, yet close to where they started
        before, after = _parameters(getattr(base.network, part)), _parameters(getattr(tuned.network, part))
        assert not torch.equal(before, after), part
        assert torch.norm(after - before) < 0.5 * torch.norm(before), part
    _assert_finds_held_out(tuned, held_out, 2 * SPACING)


def test_finetune_refuses_a_model_with_a_fine_stage(trained):
    _, meta, _, _ = trained
    cfg = train_config("compact", 2, iterations=10, intensity="ct", init_from="unused", train_stage="finetune")
    network_configs(cfg, 2, meta)  # global and local only: fine
    with_fine = {**meta, "fine_stage": {"spacing": [0.75, 0.75], "sub_image_size": 16}}
    with pytest.raises(InputError, match="no fine stage"):
        network_configs(cfg, 2, with_fine)


def test_global_stage_alone_trains_the_global_network_and_keeps_the_later_stages(trained):
    """--train-stage global: only the global network trains on (here with the strong appearance
    augmentation); the local stage stays exactly as trained, so its precision cannot suffer."""
    root, meta, base, held_out = trained
    tuned_meta, tuned = _trained_further(root, "global", "appearance-strong", "global")
    assert tuned_meta["training"]["init_from"]["sha256"] == meta["sha256"]
    assert tuned_meta["local_architecture"] == meta["local_architecture"]
    for (key, before), after in zip(base.network.local_net.state_dict().items(),
                                    tuned.network.local_net.state_dict().values()):
        assert torch.equal(before, after), key
    assert not torch.equal(_parameters(base.network.global_net), _parameters(tuned.network.global_net))
    for (key, stat), tuned_stat in zip(base.network.global_net.state_dict().items(),
                                       tuned.network.global_net.state_dict().values()):
        if "running_" in key:  # batch-norm statistics as first trained
            assert torch.equal(stat, tuned_stat), key
    _assert_finds_held_out(tuned, held_out, 2 * SPACING)


def test_global_stage_alone_keeps_a_fine_stage_and_needs_a_local_one(trained):
    _, meta, _, _ = trained
    cfg = train_config("compact", 2, iterations=10, intensity="ct", init_from="unused", train_stage="global")
    fine_arch = network_configs(cfg, 2, meta)[1].to_dict()
    with_fine = {**meta, "fine_stage": {"spacing": [0.75, 0.75], "sub_image_size": 16, "architecture": fine_arch}}
    _, local, fine = network_configs(cfg, 2, with_fine)
    assert local.to_dict() == meta["local_architecture"] and fine.to_dict() == fine_arch
    with pytest.raises(InputError, match="has none"):
        network_configs(cfg, 2, {**meta, "local_architecture": None})


def test_networks_trained_further_keep_their_batch_norm_statistics_unless_told(trained):
    """train-fcn --update-batch-norm (the behaviour before batch-norm statistics were kept) trains them on."""
    from landmarkloc.training.fcn import train_mode

    _, _, base, _ = trained
    model = base.network
    for stage, keep, updated in (("global", True, False), ("finetune", True, False), ("global", False, True),
                                 ("all", True, True)):
        cfg = train_config("compact", 2, iterations=10, intensity="ct", init_from="unused", train_stage=stage,
                           keep_batch_norm=keep)
        train_mode(model, cfg)
        norms = [m for m in model.global_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and all(m.training == updated for m in norms), (stage, keep)
    model.eval()
