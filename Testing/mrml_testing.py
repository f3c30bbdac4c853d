"""Helpers for tests against real MRML (``slicer-core``): a scene set up as Slicer does, volume nodes
with awkward geometry, and the module Lib folders on ``sys.path``.

A test module makes its scene fixture with ``new_scene()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DIRECTIONS, rotation

from landmarkloc.geometry.frames import lps_to_ras, lps_to_ras_matrix

REPO = Path(__file__).resolve().parents[1]
MODULE_FOLDERS = [REPO / "LandmarkLocalizer", REPO / "RPROneShot"]
for _folder in MODULE_FOLDERS:
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


# Volume axis directions in LPS (columns): as ITK reads them from files.
DIRECTIONS_LPS = DIRECTIONS


def new_scene():
    """A real MRML scene with the selection singleton and markups logic that markups storage needs."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    scene._landmarkloc_markups_logic = logic  # keep the logic alive as long as the scene
    slicer.mrmlScene = scene  # slicer.util functions look the scene up here
    return scene


def vtk_matrix(array):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r][c]))
    return m


def ijk_to_ras(spacing, origin_lps, direction_lps) -> np.ndarray:
    """The IJKToRAS matrix Slicer gives a volume whose file geometry is (origin, spacing, direction) in LPS."""
    m = np.eye(4)
    m[:3, :3] = lps_to_ras_matrix(np.asarray(direction_lps) * np.asarray(spacing, dtype=float)[None, :])
    m[:3, 3] = lps_to_ras(origin_lps)
    return m


def add_volume(scene, array_kji, spacing=(1.0, 1.0, 1.0), origin_lps=(0.0, 0.0, 0.0), direction_lps=None,
               name="volume", class_name="vtkMRMLScalarVolumeNode"):
    import slicer

    direction_lps = np.eye(3) if direction_lps is None else direction_lps
    node = scene.AddNewNodeByClass(class_name, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras(spacing, origin_lps, direction_lps)))
    return node


def add_linear_transform(scene, matrix_4x4, name="transform"):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix(matrix_4x4))
    return node


def rigid(axis, degrees, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation(axis, degrees)
    m[:3, 3] = translation
    return m


def node_matrix(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
