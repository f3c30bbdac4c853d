"""Every bad input of every command: exit code 2, one line that says why, no traceback, no file left behind.

Each table row is (description, how to make the input -> argv, a fragment of the expected message). The
whole folder of the test (inputs and outputs) is listed before and after the command: nothing may appear,
not even a temporary file or an empty output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from mrml_testing import REPO  # noqa: F401  (puts the module Lib folders on sys.path)
from reliability_inputs import (
    NAMES,
    SERIES_UID,
    body_volume,
    dicom_series,
    image,
    metaimage_header,
    nifti_with_forms,
    stack_origins,
    tiny_fcn,
    write,
)
from RPROneShotLib.selftest import make_tiny_rpr_models

from landmarkloc.cli import main
from landmarkloc.io.markups import write_points
from landmarkloc.io.modelfile import model_paths
from landmarkloc.points import ControlPoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    coarse, fine = make_tiny_rpr_models(folder)
    return {"fcn": tiny_fcn(folder / "fcn3"), "fcn2": tiny_fcn(folder / "fcn2", ndim=2, spacing=0.5),
            "coarse": Path(coarse), "fine": Path(fine), "folder": folder}


def listing(folder: Path) -> list:
    """Every file and folder under ``folder`` with its content's digest: an input rewritten in place shows."""
    return sorted((str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/")
                  for p in folder.rglob("*"))


def run_refused(argv, folder: Path, capsys) -> str:
    """Run the CLI, assert the refusal contract, return the error line."""
    capsys.readouterr()
    before = listing(folder)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err
    assert listing(folder) == before, "a refused command must not leave files behind"
    return lines[0]


# --------------------------------------------------------------------------- image files


def good(tmp):
    return write(image(body_volume()), tmp / "good.nrrd")


def _truncated(name, compress=False, keep=0.5, data_file=None):
    """``name`` written whole, then cut to ``keep`` of its bytes (or of its detached ``data_file``)."""
    def make(tmp):
        path = tmp / name
        sitk.WriteImage(image(body_volume()), str(path), compress)
        cut = tmp / data_file if data_file else path
        data = cut.read_bytes()
        cut.write_bytes(data[: int(len(data) * keep)])
        return path
    return make


def _bytes(name, content):
    def make(tmp):
        (tmp / name).write_bytes(content)
        return tmp / name
    return make


def _array(name, array, spacing=(2.0, 2.0, 2.0)):
    return lambda tmp: write(image(array, spacing), tmp / name)


def _with_value(value):
    a = body_volume()
    a[5, 6, 7] = value
    return a


def _four_d(tmp):
    vol = image(body_volume())
    return write(sitk.JoinSeries([vol, vol, vol]), tmp / "series4d.nrrd")


def _vector(tmp):
    vec = sitk.Compose([image(body_volume())] * 3)
    return write(vec, tmp / "vector.nrrd")


def _header(name, **kw):
    return lambda tmp: metaimage_header(tmp / name, **kw)


OTHER_UID = "1.2.826.0.1.3680043.2.1125.7002"


def _two_series(tmp):
    """A clinic's folder: the volume and a 3-slice localizer (scout) series."""
    dicom_series(tmp / "dicom", stack_origins(count=16), description="T1 axial")
    return dicom_series(tmp / "dicom", stack_origins(count=3, step=10.0), uid=OTHER_UID, description="localizer")


def _shared_positions(tmp):
    origins = stack_origins(count=8)
    return dicom_series(tmp / "echoes", np.r_[origins, origins])


def _labelmap_where_image(tmp):
    labels = np.zeros((20, 22, 24), np.uint8)
    labels[5:9, 6:10, 7:12] = 1
    return write(image(labels), tmp / "seg.nrrd")


SHEARED_SFORM = [[-2.0, 0.6, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]  # RAS; 0.6 mm x per j

IMAGE_ROWS = [
    ("missing file", lambda tmp: tmp / "nope.nii.gz", "image not found"),
    ("empty file", _bytes("empty.nii.gz", b""), "is empty"),
    ("truncated .nii.gz (ITK alone reads zeros)", _truncated("cut.nii.gz", True), "cut.nii.gz is truncated"),
    ("truncated .nii.gz, last 1 %", _truncated("cut.nii.gz", True, keep=0.99), "cut.nii.gz is truncated"),
    ("truncated .nii (ITK alone reads zeros)", _truncated("cut.nii"), "cut.nii is truncated"),
    ("truncated gzip .nrrd", _truncated("cut.nrrd", True), "cut.nrrd is truncated"),
    ("truncated raw .nrrd", _truncated("cut.nrrd"), "cut.nrrd is truncated"),
    ("truncated data of a .nhdr", _truncated("cut.nhdr", True, data_file="cut.raw.gz"), "(data file cut.raw.gz) is"),
    ("truncated zlib .mha", _truncated("cut.mha", True), "cut.mha is truncated"),
    ("truncated raw .mha", _truncated("cut.mha", keep=0.9), "cut.mha is truncated"),
    ("not an image", _bytes("notes.nii.gz", b"this is a text file"), "cannot read notes.nii.gz as an image"),
    ("unsupported format", _bytes("scan.xyz", b"\x00\x01binary"), "cannot read scan.xyz as an image"),
    ("folder without DICOM", lambda tmp: (tmp / "emptydir").mkdir() or tmp / "emptydir", "without a DICOM series"),
    ("DICOM folder with several series: listed", _two_series,
     f"holds 2 DICOM series; choose one with --series UID: {SERIES_UID} (16 slices, T1 axial); "
     f"{OTHER_UID} (3 slices, localizer)"),
    ("DICOM slices sharing positions", _shared_positions, "8 slice(s) at the position of another"),
    ("4D series", _four_d, "4D image (3 volumes"),
    ("vector image", _vector, "3 components per voxel"),
    ("zero-size image", _header("zero.mha", size=(0, 0, 0)), "too small"),
    ("one-voxel image", _array("one.nrrd", np.ones((1, 1, 1), np.float32)), "too small"),
    ("NaN voxels", _array("nan.nrrd", _with_value(np.nan)), "NaN or infinite"),
    ("Inf voxels", _array("inf.nrrd", _with_value(np.inf)), "NaN or infinite"),
    ("NaN voxels in .nii.gz (ITK alone reads 0)", lambda tmp: nifti_with_forms(tmp / "nan.nii.gz", _with_value(np.nan)),
     "nan.nii.gz contains NaN or infinite voxel values"),
    ("Inf voxels in .nii (ITK alone reads 0)", lambda tmp: nifti_with_forms(tmp / "inf.nii", _with_value(-np.inf)),
     "inf.nii contains NaN or infinite voxel values"),
    ("sheared NIfTI sform (ITK alone takes the qform)", lambda tmp: nifti_with_forms(
        tmp / "shear.nii.gz", body_volume(), sform=SHEARED_SFORM),
     "shear.nii.gz has a sheared NIfTI sform (its axes are not perpendicular), which an image grid of origin, "
     "spacing and direction cannot hold; its qform, which ITK would use instead, is up to 12.6 mm away"),
    ("constant image", _array("const.nrrd", np.full((20, 22, 24), 7.0, np.float32)), "constant"),
    ("zero spacing", _header("zero_spacing.mha", spacing="0 2 2"), "invalid voxel spacing"),
    ("negative spacing", _header("neg_spacing.mha", spacing="-2 2 2"), "invalid voxel spacing"),
    ("absurd spacing 1e6", _array("huge_spacing.nrrd", body_volume(), (1e6, 1e6, 1e6)), "implausible voxel spacing"),
    ("non-orthogonal direction", _header("shear.mha", direction="1 0 0 0.5 1 0 0 0 1"), "not orthonormal"),
    ("far larger than memory", _header("huge.mha", size=(100000, 100000, 10000), with_data=False),
     "GB of memory"),
]


@pytest.mark.parametrize("what, make, message", IMAGE_ROWS, ids=[r[0] for r in IMAGE_ROWS])
def test_localize_refuses_bad_images(models, tmp_path, capsys, what, make, message):
    path = make(tmp_path)
    out = tmp_path / "out" / "r.mrk.json"
    line = run_refused(["localize", str(path), "--model", str(models["fcn"]), "-o", str(out),
                        "-q", "--device", "cpu"], tmp_path, capsys)
    assert message in line


# --------------------------------------------------------------------------- localize: models and outputs


def _tampered(models, tmp):
    weights, meta = model_paths(tmp / "tampered")
    weights.write_bytes(bytearray(b ^ 0xFF if n == 200 else b for n, b in enumerate(models["fcn"].read_bytes())))
    meta.write_text(model_paths(models["fcn"])[1].read_text())
    return weights


def _truncated_model(models, tmp):
    weights, meta = model_paths(tmp / "cut")
    weights.write_bytes(models["fcn"].read_bytes()[:100])
    meta.write_text(model_paths(models["fcn"])[1].read_text())
    return weights


def _mismatched_model(models, tmp):
    """Valid files, but the metadata describes another architecture (e.g. copied from another model)."""
    from safetensors.torch import load_file

    from landmarkloc.io.modelfile import save_model

    meta = json.loads(model_paths(models["fcn"])[1].read_text())
    meta["global_architecture"]["head_channels"] = 99
    weights, _ = save_model(tmp / "mismatch", load_file(str(models["fcn"])),
                            {k: v for k, v in meta.items() if k not in ("sha256", "weights", "format_version")})
    return weights


def _pickle(models, tmp):
    torch.save({"w": torch.ones(1)}, tmp / "model.pth")
    return tmp / "model.pth"


def _no_metadata(models, tmp):
    (tmp / "lonely.safetensors").write_bytes(models["fcn"].read_bytes())
    return tmp / "lonely.safetensors"


def _future_version(models, tmp):
    weights, meta = model_paths(tmp / "future")
    weights.write_bytes(models["fcn"].read_bytes())
    data = json.loads(model_paths(models["fcn"])[1].read_text())
    data["format_version"] = 99
    meta.write_text(json.dumps(data))
    return weights


MODEL_ROWS = [
    ("tampered weights", _tampered, "sha256 differs"),
    ("truncated weights", _truncated_model, "sha256 differs"),
    ("weights do not fit the metadata", _mismatched_model, "do not fit the architecture"),
    ("pickle checkpoint", _pickle, "import-model"),
    ("weights without metadata", _no_metadata, "metadata not found"),
    ("unknown format version", _future_version, "format version 99"),
    ("one-shot model given to localize", lambda models, tmp: models["coarse"], "'fcn' model is needed"),
]


@pytest.mark.parametrize("what, make, message", MODEL_ROWS, ids=[r[0] for r in MODEL_ROWS])
def test_localize_refuses_bad_models(models, tmp_path, capsys, what, make, message):
    model = make(models, tmp_path)
    path = good(tmp_path)
    line = run_refused(["localize", str(path), "--model", str(model), "-o", str(tmp_path / "r.mrk.json"), "-q",
                        "--device", "cpu"], tmp_path, capsys)
    assert message in line


def _png(tmp, rgb=True):
    arr = (body_volume((1, 30, 40))[0] / 4).astype(np.uint8)
    if rgb:
        arr = np.stack([arr, arr // 2, arr], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=rgb), str(tmp / "xray.png"))
    return tmp / "xray.png"


def _file_in_the_way(tmp):
    (tmp / "blocker").write_text("a file where a folder is needed")
    return tmp / "blocker" / "r.mrk.json"


OTHER_LOCALIZE_ROWS = [
    ("2D image on a 3D model", lambda m, t: [str(_png(t)), "--spacing", "0.5", "--model", str(m["fcn"]),
                                             "-o", str(t / "r.mrk.json")], "3D images, got a 2D image"),
    ("3D volume on a 2D model", lambda m, t: [str(good(t)), "--model", str(m["fcn2"]), "-o", str(t / "r.mrk.json")],
     "2D model needs a 2D image"),
    ("2D picture without pixel size", lambda m, t: [str(_png(t)), "--model", str(m["fcn2"]),
                                                    "-o", str(t / "r.mrk.json")], "--spacing"),
    ("output under a file", lambda m, t: [str(good(t)), "--model", str(m["fcn"]), "-o", str(_file_in_the_way(t))],
     "is a file, not a folder"),
    ("output is a folder", lambda m, t: [str(good(t)), "--model", str(m["fcn"]), "--format", "csv",
                                         "-o", str((t / "outdir").mkdir() or t / "outdir" / "x.mrk.json")],
     "does not end with .csv"),
    ("--series not in the DICOM folder", lambda m, t: [str(_two_series(t)), "--series", "1.2.3", "--model",
                                                       str(m["fcn"]), "-o", str(t / "r.mrk.json")],
     f"holds no DICOM series 1.2.3; it holds: {SERIES_UID} (16 slices"),
    ("second input bad: nothing written for the first", lambda m, t: [
        str(good(t)), str(t / "missing.nrrd"), "--model", str(m["fcn"]), "-o", str(t / "out")], "image not found"),
]


@pytest.mark.parametrize("what, make, message", OTHER_LOCALIZE_ROWS, ids=[r[0] for r in OTHER_LOCALIZE_ROWS])
def test_localize_refuses_mismatched_inputs_and_outputs(models, tmp_path, capsys, what, make, message):
    argv = ["localize"] + make(models, tmp_path) + ["-q", "--device", "cpu"]
    assert message in run_refused(argv, tmp_path, capsys)


def test_rgb_2d_picture_is_converted_not_refused(models, tmp_path, capsys):
    png = _png(tmp_path, rgb=True)
    assert main(["localize", str(png), "--spacing", "0.5", "--model", str(models["fcn2"]),
                 "-o", str(tmp_path / "r.mrk.json"), "-q", "--device", "cpu"]) == 0
    assert (tmp_path / "r.mrk.json").is_file()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_localize_refuses_a_read_only_output_folder(models, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    path = good(tmp_path)
    locked.chmod(0o500)
    try:
        line = run_refused(["localize", str(path), "--model", str(models["fcn"]), "-o", str(locked / "r.mrk.json"),
                            "-q", "--device", "cpu"], tmp_path, capsys)
    finally:
        locked.chmod(0o700)
    assert "no permission" in line


# --------------------------------------------------------------------------- oneshot


def _support(tmp, points=None, shape=(20, 22, 24)):
    sup = image(body_volume(shape, seed=1), origin=(-20.0, -20.0, -20.0))
    write(sup, tmp / "support.nrrd")
    points = points or [ControlPoint("a", sup.TransformIndexToPhysicalPoint((10, 10, 8))),
                        ControlPoint("b", sup.TransformIndexToPhysicalPoint((14, 8, 12)))]
    write_points(tmp / "support.mrk.json", points)
    labels = np.zeros(shape, np.uint8)
    labels[6:12, 8:14, 8:16] = 1
    lab = image(labels, origin=(-20.0, -20.0, -20.0))
    write(lab, tmp / "support_seg.nrrd")
    return tmp / "support.nrrd"


def _oneshot(m, t, query=None, support_args=None, method="rpr", extra=()):
    _support(t)
    query = query if query is not None else good(t)
    argv = ["oneshot", "--query", str(query), "--support", str(t / "support.nrrd")]
    argv += support_args if support_args is not None else ["--support-markups", str(t / "support.mrk.json")]
    if method == "rpr":
        argv += ["--model", str(m["coarse"]), "--fine-model", str(m["fine"]), "--runs", "3"]
    else:
        argv += ["--method", method]
    return argv + ["-o", str(t / "q.mrk.json")] + list(extra)


def _outside_points(m, t):
    argv = _oneshot(m, t)
    write_points(t / "support.mrk.json", [ControlPoint("far", [500.0, 0.0, 0.0])])
    return argv


def _other_template(m, t):
    """A template saved with other models: the models' sha256 differs."""
    from landmarkloc.inference.oneshot import Template

    Template(names=["a"], ndim=3, coarse_latents=np.zeros((1, 3), np.float32), coarse_sha256="0" * 64).save(
        t / "tpl")
    return ["oneshot", "--query", str(good(t)), "--template", str(t / "tpl.safetensors"), "--model", str(m["coarse"]),
            "-o", str(t / "q.mrk.json")]


def _shifted_labels(m, t):
    argv = _oneshot(m, t, support_args=["--support-labels", str(t / "support_seg.nrrd"), "--labels", "1"])
    lab = sitk.ReadImage(str(t / "support_seg.nrrd"))
    lab.SetOrigin((0.0, 0.0, 0.0))
    write(lab, t / "support_seg.nrrd")
    return argv


def _corrupt_markups(m, t):
    argv = _oneshot(m, t)
    (t / "support.mrk.json").write_text('{"markups": [{"controlPoints": [{"position": "oops"')
    return argv


ONESHOT_ROWS = [
    ("query missing", lambda m, t: _oneshot(m, t, query=t / "nope.nrrd"), "image not found"),
    ("query 4D", lambda m, t: _oneshot(m, t, query=_four_d(t)), "4D image"),
    ("query constant", lambda m, t: _oneshot(m, t, query=_array("c.nrrd", np.full((20, 22, 24), 3.0, np.float32))(t)),
     "constant"),
    ("query NaN (ncc)", lambda m, t: _oneshot(m, t, query=_array("n.nrrd", _with_value(np.nan))(t), method="ncc"),
     "NaN"),
    ("2D query on 3D models", lambda m, t: _oneshot(m, t, query=_png(t), extra=["--spacing", "0.5"]),
     "the RPR models are 3D"),
    ("support points outside the support", _outside_points, "outside the support image: far"),
    ("support points outside the support (ncc)", lambda m, t: _outside_points(m, t)[:-4] + [
        "--method", "ncc", "-o", str(t / "q.mrk.json")], "outside the support image: far"),
    ("labels missing in the label map", lambda m, t: _oneshot(m, t, support_args=[
        "--support-labels", str(t / "support_seg.nrrd"), "--labels", "1,9"]), "label(s) 9 not found"),
    ("label map on another grid", _shifted_labels, "differ in size or geometry"),
    ("unreadable support markups", _corrupt_markups, "support.mrk.json"),
    ("template from other models", _other_template, "different coarse model"),
    ("--rois without organs", lambda m, t: _oneshot(m, t, extra=["--rois", str(t / "rois.mrk.json")]),
     "--rois needs organ boxes"),
    ("output under a file", lambda m, t: _oneshot(m, t)[:-1] + [str(_file_in_the_way(t))], "is a file"),
]


@pytest.mark.parametrize("what, make, message", ONESHOT_ROWS, ids=[r[0] for r in ONESHOT_ROWS])
def test_oneshot_refuses_bad_inputs(models, tmp_path, capsys, what, make, message):
    argv = make(models, tmp_path) + ["-q", "--device", "cpu"]
    assert message in run_refused(argv, tmp_path, capsys)


# --------------------------------------------------------------------------- derive, evaluate


DERIVE_ROWS = [
    ("labels missing", lambda t: [str(_labelmap_where_image(t)), "--labels", "1,5"], "label(s) 5 not found"),
    ("names do not match labels", lambda t: [str(_labelmap_where_image(t)), "--labels", "1", "--names", "a,b"],
     "2 names given for 1 labels"),
    ("label map missing", lambda t: [str(t / "none.nrrd"), "--labels", "1"], "image not found"),
    ("label map 4D", lambda t: [str(_four_d(t)), "--labels", "1"], "4D image"),
    ("labels not integers", lambda t: [str(_labelmap_where_image(t)), "--labels", "liver"], "integers"),
]


@pytest.mark.parametrize("what, make, message", DERIVE_ROWS, ids=[r[0] for r in DERIVE_ROWS])
def test_derive_refuses_bad_inputs(tmp_path, capsys, what, make, message):
    argv = ["derive"] + make(tmp_path) + ["-o", str(tmp_path / "out" / "p.mrk.json")]
    assert message in run_refused(argv, tmp_path, capsys)


def test_derive_refuses_an_unwritable_output(tmp_path, capsys):
    argv = ["derive", str(_labelmap_where_image(tmp_path)), "--labels", "1", "-o", str(_file_in_the_way(tmp_path))]
    assert "is a file" in run_refused(argv, tmp_path, capsys)


def _points(t, name, labels):
    write_points(t / name, [ControlPoint(n, [float(i), 0.0, 0.0]) for i, n in enumerate(labels)])
    return t / name


EVALUATE_ROWS = [
    ("prediction missing", lambda t: [str(t / "none.mrk.json"), str(_points(t, "r.mrk.json", NAMES))], "not found"),
    ("landmark names do not match", lambda t: [str(_points(t, "p.mrk.json", ["x", "y"])),
                                              str(_points(t, "r.mrk.json", NAMES))], "no landmark names in common"),
    ("corrupt reference", lambda t: [str(_points(t, "p.mrk.json", NAMES)),
                                     str(_bytes("r.mrk.json", b"{not json")(t))], "r.mrk.json"),
    ("file and folder mixed", lambda t: [str(_points(t, "p.mrk.json", NAMES)), str(t)], "both be files"),
]


@pytest.mark.parametrize("what, make, message", EVALUATE_ROWS, ids=[r[0] for r in EVALUATE_ROWS])
def test_evaluate_refuses_bad_inputs(tmp_path, capsys, what, make, message):
    pred, ref = make(tmp_path)
    argv = ["evaluate", "--pred", pred, "--ref", ref, "-o", str(tmp_path / "report")]
    assert message in run_refused(argv, tmp_path, capsys)


def test_evaluate_refuses_bad_thresholds_and_unwritable_reports(tmp_path, capsys):
    pred, ref = _points(tmp_path, "p.mrk.json", NAMES), _points(tmp_path, "r.mrk.json", NAMES)
    assert "positive" in run_refused(["evaluate", "--pred", str(pred), "--ref", str(ref), "--thresholds", "0,-1",
                                      "-o", str(tmp_path / "rep")], tmp_path, capsys)
    assert "is a file" in run_refused(["evaluate", "--pred", str(pred), "--ref", str(ref),
                                       "-o", str(_file_in_the_way(tmp_path))], tmp_path, capsys)


# --------------------------------------------------------------------------- training commands


def _dataset(t, name="data", labels=NAMES, bad=None):
    folder = t / name
    folder.mkdir()
    for n in range(2):
        arr = body_volume(seed=n) if bad is None or n == 0 else bad
        write(image(arr), folder / f"case{n}.nrrd")
        _points(folder, f"case{n}.mrk.json", labels)
    return folder


TRAIN_FCN_ROWS = [
    ("dataset missing", lambda t: [str(t / "nothing")], "dataset not found"),
    ("image with NaN voxels", lambda t: [str(_dataset(t, bad=_with_value(np.nan)))], "NaN"),
    ("validation landmarks differ", lambda t: [str(_dataset(t)), "--val", str(_dataset(t, "val", ["x", "y"]))],
     "same landmark names"),
    ("output under a file", lambda t: [str(_dataset(t)), "-o", str(_file_in_the_way(t))], "is a file"),
    ("--spacing for volumes with their own", lambda t: [str(_dataset(t)), "--spacing", "0.5"],
     "case0.nrrd stores its own voxel spacing; --spacing is only for 2D pictures"),
    ("one stage without a model to start from", lambda t: [str(_dataset(t)), "--train-stage", "local"],
     "needs a model to start from"),
    ("fine stage without its grid", lambda t: [str(_dataset(t)), "--train-stage", "fine", "--init-from",
                                               "brain-t1-ixi16"], "needs its grid"),
    ("start model with other landmarks", lambda t: [str(_dataset(t)), "--train-stage", "local", "--init-from",
                                                    "brain-t1-ixi16"], "landmarks or dimension differ"),
]


@pytest.mark.parametrize("what, make, message", TRAIN_FCN_ROWS, ids=[r[0] for r in TRAIN_FCN_ROWS])
def test_train_fcn_refuses_bad_inputs(tmp_path, capsys, what, make, message):
    args = make(tmp_path)
    out = [] if "-o" in args else ["-o", str(tmp_path / "model")]
    argv = ["train-fcn"] + args + out + ["--iterations", "1", "--intensity", "mr", "-q", "--device", "cpu"]
    assert message in run_refused(argv, tmp_path, capsys)


def _images(t, *arrays):
    folder = t / "imgs"
    folder.mkdir()
    for n, arr in enumerate(arrays):
        write(image(arr), folder / f"img{n}.nrrd")
    return folder


TRAIN_RPR_ROWS = [
    ("images missing", lambda t: ["--images", str(t / "none")], "not found"),
    ("folder without images", lambda t: ["--images", str((t / "e").mkdir() or t / "e")], "no image files"),
    ("constant image", lambda t: ["--images", str(_images(t, body_volume(), np.full((20, 22, 24), 5.0, np.float32)))],
     "constant"),
    ("4D image", lambda t: ["--images", str(_four_d(t))], "4D image"),
    ("output under a file", lambda t: ["--images", str(_images(t, body_volume())), "-o", str(_file_in_the_way(t))],
     "is a file"),
    ("label folder missing", lambda t: ["--images", str(_images(t, body_volume())), "--labels", str(t / "none")],
     "--labels must be a folder"),
    ("image without a label map", lambda t: ["--images", str(_images(t, body_volume(), body_volume())),
                                             "--labels", str((t / "seg").mkdir() or t / "seg")], "no label map"),
]


@pytest.mark.parametrize("what, make, message", TRAIN_RPR_ROWS, ids=[r[0] for r in TRAIN_RPR_ROWS])
def test_train_rpr_refuses_bad_inputs(tmp_path, capsys, what, make, message):
    args = make(tmp_path)
    out = [] if "-o" in args else ["-o", str(tmp_path / "rpr")]
    argv = ["train-rpr"] + args + out + ["--stage", "coarse", "--epochs", "1", "--iterations", "1",
                                         "--patch-size", "16", "--base-channels", "2", "-q", "--device", "cpu"]
    assert message in run_refused(argv, tmp_path, capsys)


# --------------------------------------------------------------------------- shipped models by name


def _shipped(models, monkeypatch):
    """The tiny models stand in for the shipped folder; the command runs from an unrelated folder."""
    monkeypatch.setenv("LANDMARKLOC_MODELS", str(models["folder"]))


MODEL_NAME_ROWS = [
    # (description, --model value, what is made in the working folder, expected exit code, message fragment)
    ("shipped name from another folder", "fcn3", None, 0, "landmarks in"),
    ("a path that exists wins over a shipped name", "fcn3", "local 2D model", 2, "2D model needs a 2D image"),
    ("unknown name lists the shipped models", "no-such-model", None, 2, "or the name of a shipped model: fcn2, fcn3"),
]


@pytest.mark.parametrize("what, name, local, code, message", MODEL_NAME_ROWS, ids=[r[0] for r in MODEL_NAME_ROWS])
def test_models_by_name_from_any_folder(models, tmp_path, capsys, monkeypatch, what, name, local, code, message):
    _shipped(models, monkeypatch)
    image_path = good(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    if local:
        tiny_fcn(work / name, ndim=2, spacing=0.5)
    argv = ["localize", str(image_path), "--model", name, "-o", str(tmp_path / "r.mrk.json"), "-q", "--device", "cpu"]
    if code == 2:
        assert message in run_refused(argv, tmp_path, capsys)
        return
    assert main(argv) == 0
    assert message in capsys.readouterr().out
    assert (tmp_path / "r.mrk.json").is_file()


def test_real_shipped_models_resolve_by_name_from_any_folder_and_help_lists_them(tmp_path, capsys, monkeypatch):
    from landmarkloc.cli import build_parser
    from landmarkloc.io.modelfile import read_metadata

    monkeypatch.delenv("LANDMARKLOC_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert read_metadata("brain-t1-ixi16")["kind"] == "fcn"
    assert read_metadata("brain-t1-rpr-coarse")["kind"] == "rpr"
    for command, names in (("localize", ("brain-t1-ixi16", "ceph-isbi19")),
                           ("oneshot", ("brain-t1-rpr-coarse", "brain-t1-rpr-fine", "brain-t1-rpr-mni152-support"))):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(n in text for n in names), text


# --------------------------------------------------------------------------- DICOM series read with a warning

DICOM_ROWS = [
    # (description, how the series differs from the intact one, extra arguments, warning fragment)
    ("missing slice", {"skip": {13}}, [], "1 missing slice (a gap of 5 mm where slices are 2.5 mm apart); resampled"),
    ("gantry tilt", {"shift": (0.0, np.tan(np.radians(12.0)), 0.0)}, [], "a gantry tilt of 12 degrees; resampled"),
    ("uneven spacing", {"steps": [3.0] * 6 + [2.5] * 11 + [2.0] * 6}, [], "uneven slice spacing (2 to 3 mm); "),
    ("--series picks one of several", {"other_series": True}, ["--series", SERIES_UID], None),
]


def _derived_points(argv, capsys):
    from landmarkloc.io.markups import read_points

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    return {p.label: p.position for p in read_points(argv[argv.index("-o") + 1])}, err


@pytest.mark.parametrize("what, change, extra, warning", DICOM_ROWS, ids=[r[0] for r in DICOM_ROWS])
def test_irregular_dicom_series_warn_and_keep_geometry(tmp_path, capsys, what, change, extra, warning):
    """Exit 0, exactly one warning line (or none), and the structures where the intact series puts them (a label
    map scanned as a series; `derive` gives their LPS centroids). Voxel-level checks: test_image_io.py."""
    from reliability_inputs import labels_at

    derive = ["derive", "--labels", "1,2"]
    intact = dicom_series(tmp_path / "intact", stack_origins(count=24), values=labels_at)
    reference, _ = _derived_points(derive + [str(intact), "-o", str(tmp_path / "intact.mrk.json")], capsys)
    origins = stack_origins(count=24, shift=change.get("shift", (0.0, 0.0, 0.0)), steps=change.get("steps"))
    folder = dicom_series(tmp_path / "series", origins, skip=change.get("skip", ()), values=labels_at)
    if change.get("other_series"):
        dicom_series(folder, stack_origins(count=3, step=10.0), uid=OTHER_UID, description="localizer")
    points, err = _derived_points(derive + [str(folder), "-o", str(tmp_path / "r.mrk.json")] + extra, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].startswith("landmarkloc derive: warning: ") and warning in lines[0], err
    assert points.keys() == reference.keys() == {"1", "2"}
    for name, position in points.items():
        assert np.linalg.norm(position - reference[name]) < 0.5, (name, position, reference[name])


# --------------------------------------------------------------------------- a label map given as the image


def _integer_ct(tmp):
    from reliability_inputs import ct_like_volume

    return write(image(np.round(ct_like_volume()).astype(np.int16)), tmp / "ct.nrrd")


LABEL_MAP_ROWS = [
    # (description, command line from (models, folder), expected warning fragment or None)
    ("localize: label map", lambda m, t: ["localize", str(_labelmap_where_image(t)), "--model", str(m["fcn"]),
                                          "-o", str(t / "r.mrk.json")],
     "seg.nrrd: the image looks like a label map (2 distinct integer values), not a scan"),
    ("oneshot rpr: label map query", lambda m, t: _oneshot(m, t, query=_labelmap_where_image(t)),
     "seg.nrrd: the query image looks like a label map (2 distinct integer values)"),
    ("oneshot ncc: label map query", lambda m, t: _oneshot(m, t, query=_labelmap_where_image(t), method="ncc"),
     "the query image looks like a label map"),
    ("localize: integer CT (HU) is a scan", lambda m, t: ["localize", str(_integer_ct(t)), "--model", str(m["fcn"]),
                                                          "-o", str(t / "r.mrk.json")], None),
    ("localize: float MR is a scan", lambda m, t: ["localize", str(good(t)), "--model", str(m["fcn"]),
                                                   "-o", str(t / "r.mrk.json")], None),
]


@pytest.mark.parametrize("what, make, warning", LABEL_MAP_ROWS, ids=[r[0] for r in LABEL_MAP_ROWS])
def test_label_map_given_as_the_image_warns(models, tmp_path, capsys, what, make, warning):
    argv = make(models, tmp_path) + ["-q", "--device", "cpu"]
    capsys.readouterr()
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "label map" in ln]
    if warning is None:
        assert lines == []
    else:
        command = argv[0]
        assert len(lines) == 1 and lines[0].startswith(f"landmarkloc {command}: warning: ") and warning in lines[0]
    assert (tmp_path / ("q.mrk.json" if argv[0] == "oneshot" else "r.mrk.json")).is_file()


# --------------------------------------------------------------------------- one -o rule for every command


def _out(t):
    (t / "out").mkdir(exist_ok=True)
    return str(t / "out")


def _checkpoint(t):
    torch.save({"state_dict": {"w": torch.ones(2, 2)}}, t / "model.pth")
    (t / "meta.json").write_text(json.dumps({"kind": "fcn"}))
    return [str(t / "model.pth"), "--metadata", str(t / "meta.json")]


def _two_named(t, name="x.nrrd"):
    for sub in ("a", "b"):
        (t / sub).mkdir()
        write(image(body_volume()), t / sub / name)
    return [str(t / "a" / name), str(t / "b" / name)]


_NCC = ["--method", "ncc"]
OUTPUT_ROWS = [
    # (description, command line from (models, folder) with -o an existing folder, files expected in out/)
    ("localize", lambda m, t: ["localize", str(good(t)), "--model", str(m["fcn"]), "-o", _out(t)],
     ["good.mrk.json"]),
    ("localize --format csv", lambda m, t: ["localize", str(good(t)), "--model", str(m["fcn"]), "--format", "csv",
                                            "-o", _out(t)], ["good.csv"]),
    ("localize, several inputs", lambda m, t: ["localize", *_two_named(t, "a.nrrd")[:1], str(good(t)), "--model",
                                               str(m["fcn"]), "-o", _out(t)], ["a.mrk.json", "good.mrk.json"]),
    ("oneshot points", lambda m, t: _oneshot(m, t, method="ncc")[:-1] + [_out(t)], ["good.mrk.json"]),
    ("oneshot points and rois", lambda m, t: _oneshot(m, t, method="ncc", support_args=[
        "--support-labels", str(t / "support_seg.nrrd"), "--labels", "1"])[:-1] + [_out(t), "--rois", _out(t)],
     ["good.mrk.json", "good_rois.mrk.json"]),
    ("derive points", lambda m, t: ["derive", str(_labelmap_where_image(t)), "--labels", "1", "-o", _out(t)],
     ["seg.mrk.json"]),
    ("derive boxes", lambda m, t: ["derive", str(_labelmap_where_image(t)), "--labels", "1", "--kind", "box",
                                   "-o", _out(t)], ["seg_rois.mrk.json"]),
    ("evaluate", lambda m, t: ["evaluate", "--pred", str(_points(t, "p.mrk.json", NAMES)),
                               "--ref", str(_points(t, "r.mrk.json", NAMES)), "-o", _out(t)],
     ["p_evaluation.csv", "p_evaluation.json"]),
    ("import-model", lambda m, t: ["import-model", *_checkpoint(t), "-o", _out(t)],
     ["model.json", "model.safetensors"]),
]


@pytest.mark.parametrize("what, make, expected", OUTPUT_ROWS, ids=[r[0] for r in OUTPUT_ROWS])
def test_an_existing_folder_as_output_names_the_files_after_the_inputs(models, tmp_path, capsys, what, make,
                                                                       expected):
    argv = make(models, tmp_path)
    if argv[0] in ("localize", "oneshot"):
        argv += ["-q", "--device", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == expected


def test_training_commands_take_a_folder_as_output(tmp_path, capsys):
    _out(tmp_path)
    assert main(["train-fcn", str(_dataset(tmp_path)), "-o", str(tmp_path / "out"), "--iterations", "1",
                 "--intensity", "mr", "-q", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert {"data.safetensors", "data.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert main(["train-rpr", "--images", str(_images(tmp_path, body_volume(), body_volume(seed=1))), "-o",
                 str(tmp_path / "out"), "--stage", "coarse", "--epochs", "1", "--iterations", "1", "--patch-size",
                 "16", "--base-channels", "2", "-q", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert {"imgs_coarse.safetensors", "imgs_coarse.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_an_equalizing_model_records_its_training_images_percentile_range(tmp_path, capsys):
    """train-fcn with histogram equalization keeps, for the out-of-distribution check, what equalization takes
    away: the profile of the images under their percentile range, not the flat equalized histograms."""
    assert main(["train-fcn", str(_dataset(tmp_path)), "-o", str(tmp_path / "eq"), "--iterations", "1",
                 "--intensity", "xray-equalized", "-q", "--device", "cpu"]) == 0, capsys.readouterr().err
    profile = json.loads((tmp_path / "eq.json").read_text())["intensity_profile"]
    assert profile["preset"] == "xray" and profile["images"] >= 1
    flat = np.full(16, 1 / 15)
    flat[0] = 0.0  # an equalized histogram: the foreground spread evenly
    assert 0.5 * np.abs(np.asarray(profile["mean_histogram"]) - flat).sum() > 0.1


OUTPUT_REFUSAL_ROWS = [
    ("localize: several inputs, a file name", lambda m, t: ["localize", str(good(t)), *_two_named(t)[:1],
                                                            "--model", str(m["fcn"]), "-o", str(t / "r.mrk.json")],
     "2 inputs need a folder"),
    ("localize: two inputs of one name", lambda m, t: ["localize", *_two_named(t), "--model", str(m["fcn"]),
                                                       "-o", str(t / "out")], "same name"),
    ("oneshot: several queries, a file name", lambda m, t: _oneshot(m, t, method="ncc")[:2] + [
        str(good(t)), *_two_named(t)[:1]] + _oneshot(m, t, method="ncc")[3:], "2 inputs need a folder"),
    ("oneshot: --rois not .mrk.json", lambda m, t: _oneshot(m, t, method="ncc", extra=["--rois", str(t / "b.csv")]),
     "--rois b.csv does not end with .mrk.json"),
    ("derive: boxes to a .csv", lambda m, t: ["derive", str(_labelmap_where_image(t)), "--labels", "1", "--kind",
                                              "box", "-o", str(t / "b.csv")], "b.csv does not end with .mrk.json"),
    ("derive: unknown suffix", lambda m, t: ["derive", str(_labelmap_where_image(t)), "--labels", "1",
                                             "-o", str(t / "p.txt")], "p.txt does not end with .mrk.json or .fcsv"),
]


@pytest.mark.parametrize("what, make, message", OUTPUT_REFUSAL_ROWS, ids=[r[0] for r in OUTPUT_REFUSAL_ROWS])
def test_outputs_that_break_the_rule_are_refused(models, tmp_path, capsys, what, make, message):
    argv = make(models, tmp_path)
    if argv[0] in ("localize", "oneshot"):
        argv += ["-q", "--device", "cpu"]
    assert message in run_refused(argv, tmp_path, capsys)


# --------------------------------------------------------------------------- no output may be an input (issue 22)


def _model_here(m, t, key="coarse", stem=None):
    """A copy of a tiny model in the test folder (as ``stem``), so that the listing shows whether it was overwritten."""
    weights, meta = model_paths(t / (stem or m[key].name))
    source_weights, source_meta = model_paths(m[key])
    weights.write_bytes(source_weights.read_bytes())
    meta.write_text(source_meta.read_text())
    return weights


def _oneshot_local_model(m, t, extra):
    argv = _oneshot(m, t, extra=extra(t))
    argv[argv.index("--model") + 1] = str(_model_here(m, t))
    return argv


def _with_labels(t):
    return ["--support-labels", str(t / "support_seg.nrrd"), "--labels", "1"]


def _case_folders(t, preds, refs):
    for folder, cases in (("pred", preds), ("ref", refs)):
        (t / folder).mkdir()
        for case in cases:
            _points(t / folder, f"{case}.mrk.json", NAMES)
    return ["evaluate", "--pred", str(t / "pred"), "--ref", str(t / "ref"), "-o", str(t / "report")]


OUTPUT_IS_INPUT_ROWS = [
    ("oneshot -o the support markups", lambda m, t: _oneshot(m, t, method="ncc")[:-1] + [str(t / "support.mrk.json")],
     "support.mrk.json is also the input --support-markups"),
    ("oneshot --save-template over the coarse model", lambda m, t: _oneshot_local_model(
        m, t, lambda t: ["--save-template", str(t / m["coarse"].name)]), "is also the input --model"),
    ("oneshot --save-template a shipped model's name", lambda m, t: _oneshot(
        m, t, extra=["--save-template", "brain-t1-rpr-coarse"]), "is the name of a shipped model"),
    ("oneshot --save-template a shipped model's file name", lambda m, t: _oneshot(
        m, t, extra=["--save-template", "brain-t1-rpr-fine.safetensors"]), "is the name of a shipped model"),
    ("oneshot -o and --rois one file", lambda m, t: _oneshot(m, t, method="ncc", support_args=_with_labels(t),
                                                             extra=["--rois", str(t / "q.mrk.json")]),
     "-o and --rois are the same file"),
    ("evaluate -o the prediction", lambda m, t: ["evaluate", "--pred", str(_points(t, "p.csv", NAMES)), "--ref",
                                                 str(_points(t, "r.mrk.json", NAMES)), "-o", str(t / "p.csv")],
     "p.csv is also the input --pred"),
    ("localize -o the model's metadata", lambda m, t: [
        "localize", str(good(t)), "--model", str(_model_here(m, t, "fcn", "fcn.mrk")), "-o", str(t / "fcn.mrk.json")],
     "fcn.mrk.json is also the input --model"),
    ("train-fcn -o the model it starts from", lambda m, t: [
        "train-fcn", str(_dataset(t)), "--init-from", str(_model_here(m, t, "fcn", "start")), "--train-stage",
        "local", "-o", str(t / "start"), "--iterations", "1", "--intensity", "mr", "-q", "--device", "cpu"],
     "-o " + "{t}/start.safetensors is also the input --init-from"),
    ("import-model -o over its metadata", lambda m, t: ["import-model", *_checkpoint(t), "-o", str(t / "meta")],
     "meta.json is also the input --metadata"),
    ("derive: a folder output next to its input", lambda m, t: [
        "derive", str(_labelmap_where_image(t)), "--labels", "1", "-o", str(t / "seg.nrrd")],
     "does not end with .mrk.json"),
]


@pytest.mark.parametrize("what, make, message", OUTPUT_IS_INPUT_ROWS, ids=[r[0] for r in OUTPUT_IS_INPUT_ROWS])
def test_no_output_may_be_an_input_of_the_same_run(models, tmp_path, capsys, monkeypatch, what, make, message):
    monkeypatch.delenv("LANDMARKLOC_MODELS", raising=False)
    argv = make(models, tmp_path)
    if argv[0] in ("localize", "oneshot"):
        argv += ["-q", "--device", "cpu"]
    assert message.format(t=tmp_path) in run_refused(argv, tmp_path, capsys)


# --------------------------------------------------------------------------- options that were misread (issue 22)


MISREAD_OPTION_ROWS = [
    ("localize --spacing for a volume with its own", lambda m, t: [
        "localize", str(good(t)), "--spacing", "0.5", "--model", str(m["fcn"]), "-o", str(t / "r.mrk.json")],
     "good.nrrd stores its own voxel spacing; --spacing is only for 2D pictures"),
    ("derive --spacing for a label map with its own", lambda m, t: [
        "derive", str(_labelmap_where_image(t)), "--labels", "1", "--spacing", "3", "-o", str(t / "p.mrk.json")],
     "seg.nrrd stores its own voxel spacing"),
    ("oneshot --spacing for volumes", lambda m, t: _oneshot(m, t, method="ncc", extra=["--spacing", "1"]),
     "stores its own voxel spacing"),
    ("oneshot --template with --support-markups", lambda m, t: _oneshot(
        m, t, extra=["--template", str(t / "tpl.safetensors")]), "give either --template or a support"),
    ("calibrate --spacing for volumes with their own", lambda m, t: [
        "calibrate", str(_model_here(m, t, "fcn")), "--val", str(_dataset(t)), "--spacing", "0.5", "--radius", "3"],
     "case0.nrrd stores its own voxel spacing"),
    ("evaluate folders with unmatched cases", lambda m, t: _case_folders(t, ["c1"], ["c1", "c2", "c3"]),
     "cases do not match (in {t}/ref without a prediction: c2, c3)"),
    ("evaluate folders, extra predictions", lambda m, t: _case_folders(t, ["c1", "c9"], ["c1"]),
     "without a reference: c9"),
]


@pytest.mark.parametrize("what, make, message", MISREAD_OPTION_ROWS, ids=[r[0] for r in MISREAD_OPTION_ROWS])
def test_misread_options_are_refused(models, tmp_path, capsys, what, make, message):
    argv = make(models, tmp_path)
    if argv[0] in ("localize", "oneshot"):
        argv += ["-q", "--device", "cpu"]
    assert message.format(t=tmp_path) in run_refused(argv, tmp_path, capsys)


TRAILING_SLASH_ROWS = [
    # (description, command line with -o a folder that does not exist yet, named with a trailing slash)
    ("localize", lambda m, t: ["localize", str(good(t)), "--model", str(m["fcn"]), "-o", f"{t}/new/", "-q",
                               "--device", "cpu"], ["good.mrk.json"]),
    ("oneshot", lambda m, t: _oneshot(m, t, method="ncc")[:-1] + [f"{t}/new/", "-q"], ["good.mrk.json"]),
    ("derive", lambda m, t: ["derive", str(_labelmap_where_image(t)), "--labels", "1", "-o", f"{t}/new/"],
     ["seg.mrk.json"]),
]


@pytest.mark.parametrize("what, make, expected", TRAILING_SLASH_ROWS, ids=[r[0] for r in TRAILING_SLASH_ROWS])
def test_a_name_ending_with_a_slash_is_a_folder_for_one_input(models, tmp_path, capsys, what, make, expected):
    assert main(make(models, tmp_path)) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == expected


def test_deprecated_pixel_spacing_still_works_with_a_warning(tmp_path, capsys):
    """oneshot --pixel-spacing is the old name of --spacing (one name for a 2D picture's pixel size)."""
    from landmarkloc.io.markups import read_points

    png = _png(tmp_path, rgb=False)
    write_points(tmp_path / "s.mrk.json", [ControlPoint("a", [8.0, 6.0, 0.0])])
    results = {}
    for option in ("--spacing", "--pixel-spacing"):
        out = tmp_path / f"{option.strip('-')}.mrk.json"
        capsys.readouterr()
        assert main(["oneshot", "--method", "ncc", "--query", str(png), "--support", str(png), "--support-markups",
                     str(tmp_path / "s.mrk.json"), option, "0.5", "-o", str(out), "-q"]) == 0
        results[option] = read_points(out)[0].position
        about_spacing = [ln for ln in capsys.readouterr().err.splitlines() if "--pixel-spacing" in ln]
        expected = ["landmarkloc oneshot: warning: --pixel-spacing is deprecated; use --spacing"]
        assert about_spacing == (expected if option == "--pixel-spacing" else [])
    np.testing.assert_allclose(results["--spacing"], [8.0, 6.0, 0.0], atol=1.5)  # found in the picture itself
    np.testing.assert_allclose(results["--pixel-spacing"], results["--spacing"])


def test_evaluate_counts_missing_landmarks_as_misses_and_lists_them(tmp_path, capsys):
    """16 reference landmarks, 6 predicted exactly, 10 missing (some only differ in case): SDR 6/16, not 100 %."""
    names = [f"L{n}" for n in range(16)]
    _points(tmp_path, "ref.mrk.json", names)
    write_points(tmp_path / "pred.mrk.json", [ControlPoint(n.lower() if n in ("L6", "L7") else n, [float(i), 0, 0])
                                              for i, n in enumerate(names[:8])])
    assert main(["evaluate", "--pred", str(tmp_path / "pred.mrk.json"), "--ref", str(tmp_path / "ref.mrk.json"),
                 "-o", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["points"]["overall"]["sdr"]["2"] == pytest.approx(6 / 16)
    assert summary["points"]["overall"]["missing"] == 10
    assert "missing predictions: 10, counted as misses in the SDR: ref: L6, ref: L7" in out
    assert "names are matched exactly; these differ only in case: L6 (predicted l6), L7 (predicted l7)" in out


# --------------------------------------------------------------------------- large and interrupted outputs (issue 22)


def test_evidence_above_its_limit_is_refused_before_any_work(models, tmp_path, capsys):
    """2 landmarks x 24 x 22 x 20 float32 posteriors = 84 kB: above a 50 kB limit, nothing is written."""
    argv = ["localize", str(good(tmp_path)), "--model", str(models["fcn"]), "-o", f"{tmp_path}/out/",
            "--evidence", "--evidence-limit-gb", "0.00005", "-q", "--device", "cpu"]
    line = run_refused(argv, tmp_path, capsys)
    assert "--evidence would write about 0.1 MB (2 posterior images per input, uncompressed), more than " \
           "--evidence-limit-gb 5e-05; raise it" in line


def test_evidence_size_is_announced_before_the_work(models, tmp_path, capsys):
    assert main(["localize", str(good(tmp_path)), "--model", str(models["fcn"]), "-o", f"{tmp_path}/out/",
                 "--evidence", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    announced = [n for n, line in enumerate(out) if line.startswith("--evidence: 2 posterior images per input, up "
                                                                    "to 0.1 MB in all")]
    assert announced and announced[0] < next(n for n, line in enumerate(out) if "landmarks in" in line)
    assert len(list((tmp_path / "out").glob("*_posterior.nrrd"))) == 2


def test_sigterm_while_writing_evidence_leaves_no_temporary_file(models, tmp_path, capsys, monkeypatch):
    """SIGTERM (a scheduler's time limit) in the middle of writing a posterior: the command ends with 143 and its
    temporary file is removed, as on Ctrl-C. The points file is written last, so none exists for the unfinished
    image and a rerun with --skip-existing does it again."""
    import signal

    import landmarkloc.io.image as image_io

    def write_then_get_killed(img, path, compress=False):
        Path(path).write_bytes(b"\0" * 4096)  # half a file in the temporary path
        os.kill(os.getpid(), signal.SIGTERM)

    path = good(tmp_path)
    monkeypatch.setattr(image_io.sitk, "WriteImage", write_then_get_killed)
    capsys.readouterr()
    argv = ["localize", str(path), "--model", str(models["fcn"]), "-o", f"{tmp_path}/out/", "--evidence", "-q",
            "--device", "cpu"]
    assert main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == "landmarkloc localize: terminated"
    assert list((tmp_path / "out").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only
    monkeypatch.undo()
    assert main(argv + ["--skip-existing"]) == 0
    assert "skipped" not in capsys.readouterr().out
    assert len(list((tmp_path / "out").iterdir())) == 1 + 2 * 2  # points, and a posterior and votes per landmark


# ------------------------------------------------------------------------- support markups misread (issue 22)


def _support_markups(t, markups):
    """The oneshot ncc command line with its support points replaced by ``markups`` (a .mrk.json's list)."""
    argv = _oneshot(None, t, method="ncc")
    (t / "support.mrk.json").write_text(json.dumps({"markups": markups}))
    return argv


def _fiducials(*points):
    return {"type": "Fiducial", "coordinateSystem": "LPS",
            "controlPoints": [{"label": label, "position": position} for label, position in points]}


def _line_break_label(t):
    argv = _oneshot(None, t, method="ncc")
    sup = sitk.ReadImage(str(t / "support.nrrd"))
    write_points(t / "support.mrk.json", [ControlPoint("upper\nlower", sup.TransformIndexToPhysicalPoint((10, 10, 8)))])
    return argv[:-1] + [str(t / "q.fcsv")]


SUPPORT_MARKUPS_ROWS = [
    ("a point with 2 coordinates", lambda t: _support_markups(t, [_fiducials(("a", [-2.0, 0.0]))]),
     "position must be 3 finite numbers (x, y, z), got 2"),
    ("a curve only", lambda t: _support_markups(t, [{**_fiducials(("a", [-2.0, 0.0, -4.0])), "type": "Curve"}]),
     "support.mrk.json holds no point list, only Curve markups"),
    ("a label with a line break into .fcsv", _line_break_label, "holds a line break, which .fcsv cannot store"),
]


@pytest.mark.parametrize("what, make, message", SUPPORT_MARKUPS_ROWS, ids=[r[0] for r in SUPPORT_MARKUPS_ROWS])
def test_support_markups_that_cannot_be_read_right_are_refused(tmp_path, capsys, what, make, message):
    assert message in run_refused(make(tmp_path) + ["-q"], tmp_path, capsys)


def test_a_curve_beside_the_point_list_gives_no_support_points(tmp_path, capsys):
    from landmarkloc.io.markups import read_points

    argv = _oneshot(None, tmp_path, method="ncc")
    points = json.loads((tmp_path / "support.mrk.json").read_text())["markups"]
    curve = {**_fiducials(("c0", [-2.0, 0.0, -4.0]), ("c1", [0.0, -2.0, -4.0])), "type": "Curve"}
    (tmp_path / "support.mrk.json").write_text(json.dumps({"markups": points + [curve]}))
    assert main(argv + ["-q"]) == 0, capsys.readouterr().err
    assert [p.label for p in read_points(tmp_path / "q.mrk.json")] == ["a", "b"]


def test_a_legacy_fcsv_support_is_ras_and_found_where_it_is(tmp_path, capsys):
    """Slicer 4.4 wrote RAS without a CoordinateSystem line: read as LPS the support would be mirrored (here out of
    the image). The query is the support itself, so the points must come back where they are."""
    from landmarkloc.geometry.frames import lps_to_ras
    from landmarkloc.io.markups import read_points

    argv = _oneshot(None, tmp_path, method="ncc")
    truth = read_points(tmp_path / "support.mrk.json")
    rows = "".join(f"vtkMRMLMarkupsFiducialNode_{n},{','.join(repr(float(v)) for v in lps_to_ras(p.position))},"
                   f"0,0,0,1,1,1,0,{p.label},,\n" for n, p in enumerate(truth))
    (tmp_path / "support.fcsv").write_text("# Markups fiducial file version = 4.4\n# columns = id,x,y,z,ow,ox,oy,oz,"
                                           "vis,sel,lock,label,desc,associatedNodeID\n" + rows)
    argv[argv.index("--support-markups") + 1] = str(tmp_path / "support.fcsv")
    argv[argv.index("--query") + 1] = str(tmp_path / "support.nrrd")
    capsys.readouterr()
    assert main(argv + ["-q"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ["landmarkloc oneshot: warning: support.fcsv has no CoordinateSystem line; read as RAS (written "
                     "by Slicer 4.4)"]
    found = read_points(tmp_path / "q.mrk.json")
    for point, expected in zip(found, truth):
        assert np.linalg.norm(point.position - expected.position) < 2.0, (point.label, point.position)


# ------------------------------------------------------------------ NIfTI geometry, ITK output (issue 22)


def _labels_nifti(t, name="seg.nii", **forms):
    labels = np.zeros((20, 22, 24), np.uint8)
    labels[5:9, 6:10, 7:12] = 1
    return nifti_with_forms(t / name, labels, **forms)


DISAGREEING_SFORM = [[-2.0, 0.0, 0.0, 44.0], [0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]  # the qform's RAS + 44 mm x


def test_qform_and_sform_that_disagree_warn_and_the_sform_is_used(tmp_path, capfd):
    """The label's centroid comes back where the sform puts it (LPS x 44 mm lower than the qform's), with one
    warning line of our own and nothing from ITK."""
    from landmarkloc.io.markups import read_points

    agreeing = _labels_nifti(tmp_path, "same.nii")
    disagreeing = _labels_nifti(tmp_path, "seg.nii", sform=DISAGREEING_SFORM)
    centroids = {}
    for path in (agreeing, disagreeing):
        capfd.readouterr()
        assert main(["derive", str(path), "--labels", "1", "-o", str(tmp_path / f"{path.stem}.mrk.json")]) == 0
        centroids[path.name] = read_points(tmp_path / f"{path.stem}.mrk.json")[0].position
        err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
        assert err == ([] if path == agreeing else [
            "landmarkloc derive: warning: seg.nii: its NIfTI qform and sform disagree by up to 44.0 mm; the sform is "
            "used"])
    np.testing.assert_allclose(centroids["seg.nii"] - centroids["same.nii"], [-44.0, 0.0, 0.0], atol=1e-4)


NO_RAW_ITK_OUTPUT_ROWS = [
    # (description, command line from the test folder); what ITK would print on its own is in the comment
    ("folder without DICOM", lambda t: ["derive", str((t / "notes").mkdir() or t / "notes"), "--labels", "1",
                                        "-o", str(t / "p.mrk.json")]),  # GDCMSeriesFileNames: No Series were found
    ("sheared sform", lambda t: ["derive", str(_labels_nifti(t, sform=SHEARED_SFORM)), "--labels", "1",
                                 "-o", str(t / "p.mrk.json")]),  # NiftiImageIO: unexpected scales in sform (x4)
]


@pytest.mark.parametrize("what, make", NO_RAW_ITK_OUTPUT_ROWS, ids=[r[0] for r in NO_RAW_ITK_OUTPUT_ROWS])
def test_no_raw_itk_output_reaches_the_user(tmp_path, capfd, what, make):
    """Read at the file descriptor: ITK writes its warnings from C++, past Python's sys.stderr."""
    argv = make(tmp_path)
    capfd.readouterr()
    assert main(argv) == 2
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("landmarkloc derive: error: "), lines


# ------------------------------------------------------------------- calibrate, few large errors (issue 22)


def _records(t, images, large):
    """calibrate --records: ``images`` x 2 landmarks; the first ``large`` points err by 5 mm, the others by 1 mm."""
    rng = np.random.default_rng(0)
    records = []
    for n in range(images * 2):
        error = 5.0 if n < large else 1.0
        signals = {"local_spread_mm": error * float(rng.uniform(0.5, 1.5)), "local_confidence": float(rng.uniform()),
                   "global_confidence": 1.0, "confidence": 0.5, "global_spread_mm": 2.0,
                   "global_local_mm": float(rng.uniform(0, 3)), "global_peak": 0.9}
        records.append({"image": f"s{n // 2}", "subject": f"s{n // 2}", "landmark": NAMES[n % 2], "found": True,
                        "error_mm": error, "signals": signals})
    (t / "records.json").write_text(json.dumps({"records": records}))
    return t / "records.json"


CALIBRATE_ROWS = [
    # (description, images, points with a large error, expected warning or None)
    ("6 images, 3 large errors", 6, 3, "the calibration rests on only 3 validation points with an error above 3 mm "
     "(of 12 found): its catch rate is uncertain by about +-26% (one standard error at the 70% target)"),
    ("30 images, 12 large errors", 30, 12, None),
]


@pytest.mark.parametrize("what, images, large, warning", CALIBRATE_ROWS, ids=[r[0] for r in CALIBRATE_ROWS])
def test_calibrate_says_when_it_rests_on_too_few_large_errors(models, tmp_path, capsys, what, images, large,
                                                              warning):
    model = _model_here(models, tmp_path, "fcn")
    capsys.readouterr()
    assert main(["calibrate", str(model), "--val", "unused.csv", "--records", str(_records(tmp_path, images, large)),
                 "--radius", "3", "--max-flagged", "0.6", "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == ([f"landmarkloc calibrate: warning: {warning}; use more validation images or a smaller --radius "
                      "(10 or more such errors advised)"] if warning else [])
