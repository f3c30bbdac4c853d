"""Template matching and registration baselines, and the oneshot / train-rpr command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from rpr_phantoms import phantom

from landmarkloc.cli import main
from landmarkloc.geometry.labels import box_from_points, group_extreme_points, label_extreme_points
from landmarkloc.inference.baselines import NccConfig, RegistrationConfig, ncc_locate, ncc_scores, registration_locate
from landmarkloc.inference.patches import extract_patches, prepare_volume
from landmarkloc.io.image import write_image
from landmarkloc.io.markups import read_boxes, read_points

ROOT = Path(__file__).resolve().parents[1]


def _truth(points):
    return np.stack([p.position for p in points])


@pytest.mark.parametrize("ndim", [2, 3])
def test_fft_and_sliding_window_ncc_agree_and_peak_at_the_template(ndim):
    rng = np.random.default_rng(0)
    shape = (18, 22, 20)[-ndim:]
    img = sitk.GetImageFromArray(rng.uniform(0.1, 1.0, shape).astype(np.float32))
    volume = prepare_volume(img, (1.0,) * ndim, "mr", 0.0)
    centres = np.array([[5, 9, 12][:ndim], [15, 3, 7][:ndim]])
    templates = extract_patches(volume, centres, (8,) * ndim)[:, 0]
    fft, _ = ncc_scores(volume, templates, NccConfig(patch_size=8, use_fft=True))
    slide, stride = ncc_scores(volume, templates, NccConfig(patch_size=8, use_fft=False, stride=1))
    assert stride == 1 and torch.allclose(fft, slide, atol=1e-6)
    for n, c in enumerate(centres):
        assert np.isclose(float(fft[n][tuple(c[::-1])]), 1.0)
        assert int(fft[n].flatten().argmax()) == np.ravel_multi_index(tuple(c[::-1]), shape)
    strided, stride = ncc_scores(volume, templates, NccConfig(patch_size=8, use_fft=False, stride=2))
    assert stride == 2 and torch.allclose(strided, fft[(slice(None),) + (slice(None, None, 2),) * ndim], atol=1e-6)


def test_ncc_finds_points_in_a_shifted_copy():
    image, points, _ = phantom(3)
    points = [type(p)(p.label, np.asarray(image.TransformIndexToPhysicalPoint(  # on voxel centres
        image.TransformPhysicalPointToIndex(tuple(p.position))))) for p in points]
    shifted = sitk.Image(image)
    shifted.SetOrigin(tuple(np.asarray(image.GetOrigin()) + [10.0, -5.0, 5.0]))  # move by 4, 2, 2 voxels of 2.5 mm
    result = ncc_locate(shifted, image, points, NccConfig(spacing=2.5, patch_size=16))
    expected = _truth(points) + [10.0, -5.0, 5.0]
    assert np.allclose(_truth(result.points), expected, atol=1e-6)
    assert all(p.properties["ncc"] > 0.99 for p in result.points)


def test_registration_recovers_a_rigid_motion():
    image, points, _ = phantom(4)
    angle = np.radians(8.0)
    motion = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, angle, (6.0, -4.0, 3.0))
    query = sitk.Resample(image, image, motion.GetInverse(), sitk.sitkLinear, 0.0)  # query(x) = image(T^-1 x)
    # The small phantom needs denser metric sampling than the 5% default for a stable optimum.
    result = registration_locate(query, image, points, RegistrationConfig(sampling_fraction=0.25))
    expected = np.array([motion.TransformPoint(tuple(p)) for p in _truth(points)])
    assert np.linalg.norm(_truth(result.points) - expected, axis=1).max() < 2.0
    assert result.method == "registration"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    for i in range(4):
        image, _, labels = phantom(i)
        write_image(image, folder / f"img{i}.nii.gz")
        write_image(sitk.Cast(labels, sitk.sitkFloat32), folder / f"seg{i}.nii.gz")
    return folder


def _train_args(folder, out, *extra):
    return ["train-rpr", "--images", str(folder / "img0.nii.gz"), str(folder / "img1.nii.gz"),
            str(folder / "img2.nii.gz"), "--stage", "coarse", "--patch-size", "16", "--spacing", "4",
            "--base-channels", "2", "--iterations", "4", "--batch-size", "2", "--radius", "100",
            "-o", str(out), "--quiet", "--device", "cpu", *extra]


def test_train_rpr_under_torchrun_with_two_cpu_processes_then_resume(files, tmp_path):
    out = tmp_path / "coarse"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with socket.socket() as free:  # a free port for the rendezvous, so parallel runs do not collide
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "landmarkloc", *_train_args(files, out, "--epochs", "1")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "coarse.json").read_text())
    assert meta["kind"] == "rpr" and meta["training"]["world_size"] == 2 and meta["training"]["epochs_done"] == 1
    assert main(_train_args(files, out, "--epochs", "2", "--resume")) == 0
    last = json.loads((tmp_path / "coarse.last.json").read_text())
    assert last["epochs_done"] == 2 and [h["epoch"] for h in last["history"]] == [1, 2]
    assert main(_train_args(files, tmp_path / "other", "--epochs", "1", "--resume")) == 2  # nothing to resume


def test_oneshot_cli_runs_all_three_methods_with_the_same_outputs(files, tmp_path, capsys):
    assert main(_train_args(files, tmp_path / "coarse", "--epochs", "1")) == 0
    support = ["--support", str(files / "img0.nii.gz"), "--support-labels", str(files / "seg0.nii.gz"),
               "--labels", "1,2", "--names", "A,B"]
    query = ["--query", str(files / "img3.nii.gz")]
    reference = label_extreme_points(sitk.ReadImage(str(files / "seg0.nii.gz")), [1, 2], ["A", "B"])
    for method in ("rpr", "ncc", "registration"):
        extra = ["--model", str(tmp_path / "coarse.safetensors"), "--save-template", str(tmp_path / "tpl")] \
            if method == "rpr" else []
        out, rois = tmp_path / f"{method}.mrk.json", tmp_path / f"{method}_rois.mrk.json"
        code = main(["oneshot", "--method", method, *query, *support, *extra, "-o", str(out), "--rois", str(rois),
                     "--runs", "3", "--quiet", "--device", "cpu"])
        assert code == 0
        points, boxes = read_points(out), read_boxes(rois)
        assert [p.label for p in points] == [p.label for p in reference]
        assert [b.name for b in boxes] == ["A", "B"]
        # the boxes are the ones the written extreme points span (plus one query voxel)
        for box, (name, positions) in zip(boxes, group_extreme_points(points).items()):
            again = box_from_points(np.asarray(positions), box.orientation, name, padding=(2.5, 2.5, 2.5))
            assert np.allclose(again.center, box.center, atol=1e-3) and np.allclose(again.size, box.size, atol=1e-3)
    # a saved template replaces the support image
    code = main(["oneshot", *query, "--template", str(tmp_path / "tpl.safetensors"), "--model",
                 str(tmp_path / "coarse.safetensors"), "-o", str(tmp_path / "t.mrk.json"), "--runs", "3", "--quiet"])
    assert code == 0
    assert np.allclose(_truth(read_points(tmp_path / "t.mrk.json")), _truth(read_points(tmp_path / "rpr.mrk.json")))
    # few-shot: two supports give one consensus set of points and boxes
    model = ["--model", str(tmp_path / "coarse.safetensors")]
    two = [*support, "--support", str(files / "img1.nii.gz"), "--support-labels", str(files / "seg1.nii.gz")]
    few = tmp_path / "few.mrk.json"
    code = main(["oneshot", *query, *two, *model, "-o", str(few), "--rois", str(tmp_path / "few_rois.mrk.json"),
                 "--runs", "3", "--quiet", "--device", "cpu"])
    assert code == 0
    assert [p.label for p in read_points(few)] == [p.label for p in reference]
    assert [b.name for b in read_boxes(tmp_path / "few_rois.mrk.json")] == ["A", "B"]
    # bad input: one-line error, exit code 2, nothing written
    capsys.readouterr()
    assert main(["oneshot", *query, *model, "-o", "x.mrk.json"]) == 2
    assert "error" in capsys.readouterr().err
    unpaired = [*support, "--support", str(files / "img1.nii.gz")]  # two images, one label map
    for bad in ([*query, *unpaired, *model], [*query, *two, "--method", "ncc"],
                [*query, *two, *model, "--save-template", str(tmp_path / "two")]):
        assert main(["oneshot", *bad, "-o", str(tmp_path / "bad.mrk.json"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "error:" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "bad.mrk.json").exists() and not (tmp_path / "two.safetensors").exists()
