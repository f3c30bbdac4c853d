"""Metrics and the evaluate command on hand-made predictions with known errors."""

import json

import numpy as np
import pytest

from landmarkloc.cli import main
from landmarkloc.io.markups import write_boxes, write_points
from landmarkloc.metrics import box_iou, box_wall_distance, sdr, summarize_errors
from landmarkloc.points import Box, ControlPoint


def test_summary_statistics():
    s = summarize_errors([1.0, 2.0, 3.0, 5.0])
    assert s["median"] == 2.5 and s["mean"] == 2.75 and s["iqr"] == pytest.approx(3.5 - 1.75)
    assert sdr([1.0, 2.0, 3.0, 5.0], (2.0, 4.0)) == {2.0: 0.25, 4.0: 0.75}


def test_box_iou_and_awd():
    a = Box("a", [0, 0, 0], [2, 2, 2])
    b = Box("b", [1, 0, 0], [2, 2, 2])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, b) == pytest.approx(4 / 12)
    assert box_wall_distance(a, b) == pytest.approx(2 / 6)
    flat = Box("f", [0, 0, 0], [2, 2, 0])
    assert box_iou(flat, Box("g", [1, 0, 0], [2, 2, 0])) == pytest.approx(2 / 6)


def test_evaluate_folders(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    rng = np.random.default_rng(1)
    for case in ("c1", "c2"):
        ref = [ControlPoint(n, rng.uniform(-50, 50, 3)) for n in ("A", "B", "C")]
        pred = [ControlPoint(p.label, p.position + [0.0, 1.0 + i, 0.0]) for i, p in enumerate(ref)]
        write_points(tmp_path / "ref" / f"{case}.mrk.json", ref)
        write_points(tmp_path / "pred" / f"{case}.fcsv", pred[:2])  # C missing in the prediction
    write_boxes(tmp_path / "ref" / "c3.mrk.json", [Box("Liver", [0, 0, 0], [2, 2, 2])])
    write_boxes(tmp_path / "pred" / "c3.mrk.json", [Box("Liver", [1, 0, 0], [2, 2, 2])])
    stem = tmp_path / "report"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(stem),
                 "--plot", "--thresholds", "1.5,2.5"]) == 0
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["points"]["per_landmark"]["A"]["median"] == pytest.approx(1.0)
    # 4 of 6 reference landmarks predicted (C missing in both cases): the misses count against the SDR
    assert summary["points"]["overall"]["sdr"] == pytest.approx({"1.5": 2 / 6, "2.5": 4 / 6})
    assert summary["points"]["per_landmark"]["C"] == {"n": 0, "missing": 2, "sdr": {"1.5": 0.0, "2.5": 0.0}}
    assert ["c1", "C"] in summary["missing"]
    assert summary["boxes"]["overall"]["iou_mean"] == pytest.approx(1 / 3)
    assert (tmp_path / "report_sdr.png").stat().st_size > 1000
    assert "c1,A,1.0000" in (tmp_path / "report.csv").read_text()
