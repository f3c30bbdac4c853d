"""``landmarkloc oneshot --method deformable``: ANTs SyN carries support points through a smooth deformation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DIRECTIONS
from rpr_phantoms import phantom

from landmarkloc.cli import main
from landmarkloc.errors import InputError
from landmarkloc.io.image import write_image
from landmarkloc.io.markups import read_boxes, read_points, write_points

SHIFT = np.array([5.0, -3.0, 2.0])  # mm
AMPLITUDE = 4.0  # mm, of the smooth non-affine part
WAVELENGTH = 80.0  # mm (the phantom is ~75 mm wide: the best affine map over its body is up to 7 mm off)


def _displacement(x: np.ndarray) -> np.ndarray:
    """d(x) of the query -> support map T(x) = x + d(x): a shift plus a smooth sinusoidal warp (LPS mm)."""
    k = 2 * np.pi / WAVELENGTH
    warp = AMPLITUDE * np.stack([np.sin(k * x[..., 1]), np.sin(k * x[..., 2]), np.sin(k * x[..., 0])], axis=-1)
    return SHIFT + warp


def _deformed(support: sitk.Image) -> sitk.Image:
    """query(x) = support(x + d(x)) on the support's grid."""
    size, ndim = support.GetSize(), support.GetDimension()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(size)], indexing="ij"), axis=-1)[..., ::-1]
    origin, spacing = np.array(support.GetOrigin()), np.array(support.GetSpacing())
    direction = np.array(support.GetDirection()).reshape(ndim, ndim)
    physical = origin + (index * spacing) @ direction.T
    field = sitk.GetImageFromArray(_displacement(physical).astype(np.float64), isVector=True)
    field.CopyInformation(support)
    transform = sitk.DisplacementFieldTransform(field)
    return sitk.Resample(support, support, transform, sitk.sitkLinear, 0.0)


def _where_in_query(points: np.ndarray) -> np.ndarray:
    """The query position y of each support point p: y + d(y) = p (fixed-point steps; d is smooth and small)."""
    y = points - SHIFT
    for _ in range(100):
        y = points - _displacement(y)
    return y


@pytest.fixture(scope="module")
def deformed_pair():
    support, points, labels = phantom(5, direction=DIRECTIONS["oblique"])
    return support, points, labels, _deformed(support)


def _best_affine(points: np.ndarray) -> np.ndarray:
    """Where the best affine approximation of the deformation over the phantom's body puts ``points``."""
    grid = np.stack(np.meshgrid(*[np.arange(-36.0, 37.0, 4.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    body = grid[((grid / [38.0, 34.0, 30.0]) ** 2).sum(1) <= 1] @ DIRECTIONS["oblique"].T
    design = np.c_[body, np.ones(len(body))]
    fit, *_ = np.linalg.lstsq(design, _where_in_query(body), rcond=None)
    residual = np.linalg.norm(design @ fit - _where_in_query(body), axis=1)
    assert residual.max() > 5.0  # the deformation is far from affine: up to 7 mm from the best affine map
    return np.c_[points, np.ones(len(points))] @ fit


def test_deformable_puts_points_through_a_smooth_deformation(deformed_pair):
    pytest.importorskip("ants")
    from landmarkloc.inference.deformable import DeformableConfig, deformable_locate

    support, points, _, query = deformed_pair
    # three SyN levels (the default skips the full resolution, too coarse for a 2.5 mm phantom)
    result = deformable_locate(query, support, points, DeformableConfig(reg_iterations=(40, 20, 10)))
    got = np.stack([p.position for p in result.points])
    p = np.stack([pt.position for pt in points])
    truth = _where_in_query(p)
    assert np.allclose(truth + _displacement(truth), p, atol=1e-6)
    assert np.linalg.norm(truth - p, axis=1).min() > 3.0  # every point really moved
    errors = np.linalg.norm(got - truth, axis=1)
    assert errors.max() < 1.0, errors  # within 1 mm (0.4 voxel) of where the deformation took it (~0.3 mm seen)
    # better than any affine map could do at these points (1.0-2.4 mm off)
    assert errors.mean() < 0.6 * np.linalg.norm(_best_affine(p) - truth, axis=1).mean()
    assert result.method == "deformable" and [p.label for p in result.points] == [p.label for p in points]


def test_deformable_cli_writes_points_and_boxes(deformed_pair, tmp_path):
    pytest.importorskip("ants")
    support, points, labels, query = deformed_pair
    write_image(support, tmp_path / "s.nii.gz")
    write_image(labels, tmp_path / "s_seg.nii.gz")
    write_image(query, tmp_path / "q.nii.gz")
    out, rois = tmp_path / "q.mrk.json", tmp_path / "q_rois.mrk.json"
    code = main(["oneshot", "--method", "deformable", "--query", str(tmp_path / "q.nii.gz"), "--support",
                 str(tmp_path / "s.nii.gz"), "--support-labels", str(tmp_path / "s_seg.nii.gz"), "--labels", "1,3",
                 "--names", "A,C", "-o", str(out), "--rois", str(rois), "--quiet"])
    assert code == 0
    assert [b.name for b in read_boxes(rois)] == ["A", "C"]
    assert len(read_points(out)) == 12 and all(p.properties.get("method") == "deformable" for p in read_points(out))
    flat = sitk.Image(support.GetSize(), sitk.sitkFloat32)
    flat.CopyInformation(support)
    write_image(flat, tmp_path / "flat.nii.gz")
    bad = tmp_path / "bad.mrk.json"
    code = main(["oneshot", "--method", "deformable", "--query", str(tmp_path / "flat.nii.gz"), "--support",
                 str(tmp_path / "s.nii.gz"), "--support-labels", str(tmp_path / "s_seg.nii.gz"), "--labels", "1",
                 "-o", str(bad)])
    assert code == 2 and not bad.exists()  # a constant query: a one-line error, nothing written


def test_missing_antspyx_is_one_clear_line_and_exit_2(deformed_pair, tmp_path, monkeypatch, capsys):
    from landmarkloc.inference.deformable import deformable_locate, require_ants

    monkeypatch.setitem(sys.modules, "ants", None)  # import ants -> ImportError, as when it is not installed
    with pytest.raises(InputError, match=r"needs antspyx: pip install 'landmarkloc\[deformable\]'"):
        require_ants()
    support, points, _, query = deformed_pair
    with pytest.raises(InputError, match="antspyx"):
        deformable_locate(query, support, points)
    write_image(support, tmp_path / "s.nii.gz")
    write_points(tmp_path / "s.mrk.json", points)
    out = tmp_path / "out.mrk.json"
    code = main(["oneshot", "--method", "deformable", "--query", str(tmp_path / "s.nii.gz"), "--support",
                 str(tmp_path / "s.nii.gz"), "--support-markups", str(tmp_path / "s.mrk.json"), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1 and "--method deformable needs antspyx: pip install 'landmarkloc[deformable]'" in err[0]


def test_deformable_bad_input_exits_2_with_nothing_written(deformed_pair, tmp_path, capsys):
    support, points, _, _ = deformed_pair
    write_image(support, tmp_path / "s.nii.gz")
    write_points(tmp_path / "s.mrk.json", points)
    out = tmp_path / "out.mrk.json"
    base = ["oneshot", "--method", "deformable", "--query", str(tmp_path / "s.nii.gz"), "-o", str(out)]
    assert main(base) == 2  # no support
    assert main(base + ["--support", str(tmp_path / "missing.nii.gz"), "--support-markups",
                        str(tmp_path / "s.mrk.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("landmarkloc") and "error" in line for line in err)
    assert not out.exists()

