"""The demo runs end to end on the MNI152 template (tiny untrained models stand in for the shipped ones)."""

import runpy
from pathlib import Path

import pytest

from landmarkloc.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_demo_writes_markups_and_figures(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nilearn")
    from LandmarkLocalizerLib.selftest import make_tiny_fcn_model
    from RPROneShotLib.selftest import make_tiny_rpr_models

    models = tmp_path / "models"
    models.mkdir()
    make_tiny_fcn_model(models / "brain-t1-ixi16", names=("A", "B", "C"))
    for meta in make_tiny_rpr_models(models):
        stage = "coarse" if "coarse" in meta else "fine"
        for suffix in (".safetensors", ".json"):
            Path(meta).with_suffix(suffix).rename(models / f"brain-t1-rpr-{stage}{suffix}")
    monkeypatch.setenv("LANDMARKLOC_MODELS", str(models))
    runpy.run_path(str(REPO / "models" / "recipes" / "mni152_support_template.py"), run_name="__main__")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "1. Global-to-local FCN" in printed and "2. One-shot RPR" in printed and "time per step" in printed
    for name in ("mni152_landmarks.mrk.json", "moved_query_oneshot.mrk.json", "mni152_landmarks.png",
                 "moved_query_oneshot.png"):
        assert (out / name).stat().st_size > 500


def test_demo_without_models_is_a_clear_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nilearn")
    monkeypatch.setenv("LANDMARKLOC_MODELS", str(tmp_path))
    assert main(["demo", "-o", str(tmp_path / "out")]) == 2
    assert "brain-t1-ixi16" in capsys.readouterr().err
