"""Paths, IXI label tables and the runs/eval caches, shared by evaluate.py's runs and the modules of its
report, so that none of them has to import another for these."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from landmarkloc.io.markups import read_points

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
RUNS = REPO / "runs"
MODELS = REPO / "models"
EVAL = RUNS / "eval"
IXI8 = {"BrainStem": 35, "Hippocampus_R": 47, "Hippocampus_L": 48, "LateralVentricle_R": 51,
        "LateralVentricle_L": 52, "ThalamusProper_R": 59, "ThalamusProper_L": 60, "CerebellumExterior_R": 38}
IXI16_LABELS = {"3rdVentricle": 4, "4thVentricle": 11, "BrainStem": 35, "Amygdala_R": 31, "Amygdala_L": 32,
                "Caudate_R": 36, "Caudate_L": 37, "Hippocampus_R": 47, "Hippocampus_L": 48, "Pallidum_R": 55,
                "Pallidum_L": 56, "Putamen_R": 57, "Putamen_L": 58, "ThalamusProper_R": 59,
                "ThalamusProper_L": 60, "CorpusCallosum": 95}
# The shipped one-shot configuration (chosen on validation): its label in the caches and the report.
ONESHOT_DEFAULT = "coarse + anchor affine + NCC search + local affine (default)"
# The deformable registration baseline (`oneshot --method deformable`): its label in the caches and the report.
DEFORMABLE = "registration (deformable, SyN)"


def _lines(path: Path) -> list:
    return [Path(line) for line in path.read_text().split() if line]


def _subject(path: Path) -> str:
    return path.name.split(".")[0]


def _positions(path: Path) -> dict:
    return {p.label: p.position for p in read_points(path)}


def _errors_by_name(pred: dict, ref: dict) -> dict:
    return {n: float(np.linalg.norm(pred[n] - ref[n])) for n in ref if n in pred}


def _save(name: str, data) -> None:
    EVAL.mkdir(parents=True, exist_ok=True)
    (EVAL / f"{name}.json").write_text(json.dumps(data, indent=1))


def _load(name: str):
    path = EVAL / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
