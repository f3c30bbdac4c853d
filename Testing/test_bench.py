"""`landmarkloc bench`: the command runs on tiny sizes and reports every scenario (structure, not timings)."""

from __future__ import annotations

import json

import pytest

from landmarkloc.bench import (
    BRAIN_MODEL,
    PRESETS,
    _save_untrained_fcn,
    organ_extreme_points,
    phantom,
    resolve_models,
)
from landmarkloc.cli import main
from landmarkloc.geometry.labels import group_extreme_points

SCENARIOS = {"fcn_brain", "fcn_ct", "fcn_ceph", "rpr_boxes", "ncc_fft", "ncc_stride2", "registration",
             "deformable"}


def _have_ants() -> bool:
    import importlib.util

    return importlib.util.find_spec("ants") is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--quick", "--repeat", "1", "--threads", "1", "--models", str(out / "no-models"),
                     "-o", str(out / "res"), "--device", "cpu", "-q"])
    return code, out / "res", stdout.getvalue()


def test_quick_bench_writes_json_markdown_and_plot(quick_run):
    code, res, stdout = quick_run
    assert code == 0
    report = json.loads((res / "bench.json").read_text())
    assert set(report["scenarios"]) == SCENARIOS
    if not _have_ants():  # the deformable row says what is missing; the rest of the bench runs
        assert "needs antspyx" in report["scenarios"].pop("deformable")["error"]
        assert report["ratios"].pop("rpr_vs_deformable") is None
        report["targets"] = [t for t in report["targets"] if "deformable" not in t["what"]]
    for name, result in report["scenarios"].items():
        assert "error" not in result, (name, result)
        assert result["median_s"] > 0 and result["peak_rss_mb"] > 50, name
    assert report["scenarios"]["rpr_boxes"]["points"] == 48 and report["scenarios"]["rpr_boxes"]["boxes"] == 8
    assert report["scenarios"]["fcn_brain"]["landmarks"] == 16 and report["scenarios"]["fcn_ceph"]["landmarks"] == 19
    # the CT-sized input is resampled to the model spacing before the network sees it
    ct = report["scenarios"]["fcn_ct"]
    assert ct["model_grid_voxels"] < ct["input_voxels"]
    assert all(m["source"].startswith("untrained stand-in") for m in report["models"].values())
    assert all(isinstance(v, float) and v > 0 for v in report["ratios"].values())
    assert [t["met"] in (True, False) for t in report["targets"]] == [True] * (7 if _have_ants() else 6)
    for kind in ("fcn", "rpr"):
        rows = report["scaling"][kind]
        assert len(rows) == len(PRESETS["quick"].scaling) and all("error" not in r for r in rows)
        assert rows[-1]["model_grid_voxels"] > rows[0]["model_grid_voxels"]
    assert report["startup"]["median_s"] > report["startup"]["import_torch_s"] > 0
    assert report["environment"]["torch_threads"] >= 1 and report["environment"]["device"] == "cpu"
    markdown = (res / "bench.md").read_text()
    assert "| Scenario | Input | Time (median) |" in markdown and "Ratios on the same query" in markdown
    assert "Deformable registration (ANTs SyN" in markdown
    assert markdown.strip() in stdout
    assert (res / "bench_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_bad_repeat(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeat", "0", "-o", str(tmp_path / "r")]) == 2
    assert "--repeat" in capsys.readouterr().err


def test_shipped_models_are_used_when_present(tmp_path):
    shipped = tmp_path / "models"
    shipped.mkdir()
    _save_untrained_fcn(shipped / f"{BRAIN_MODEL}.json", 3, [f"P{n}" for n in range(16)], 1.5, "mr")
    models = resolve_models(shipped, tmp_path)
    assert models["brain"].source == "shipped" and models["brain"].spacing == [1.5, 1.5, 1.5]
    assert models["ceph"].source.startswith("untrained stand-in") and len(models["ceph"].spacing) == 2
    assert models["rpr_fine"].source.startswith("untrained stand-in")


@pytest.mark.parametrize("size", [(40, 36, 30), (60, 50)])
def test_phantom_organs_give_extreme_points_inside_the_image(size):
    image, organs = phantom(size, 1.5, shift=0.05)
    assert image.GetSize() == size and image.GetSpacing() == (1.5,) * len(size)
    points = organ_extreme_points(image, organs)
    assert len(points) == len(organs) * 2 * len(size)
    assert len(group_extreme_points(points)) == len(organs)
    for name, centre, _, value in organs:
        index = tuple(int(round(c)) for c in centre)
        assert abs(image[index] - value) < 30.0, name
        for p in points:
            if p.label.startswith(f"{name}_"):
                idx = image.TransformPhysicalPointToContinuousIndex(tuple(p.position[: len(size)]))
                assert all(0 <= i <= n - 1 for i, n in zip(idx, size))
