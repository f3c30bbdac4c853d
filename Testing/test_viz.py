"""Overview figures are written for 2D and 3D images, whatever the image's axes."""

import numpy as np
import SimpleITK as sitk
from conftest import DIRECTIONS, make_image

from landmarkloc.points import Box, ControlPoint
from landmarkloc.viz import render_overview


def test_overview_3d_and_2d(tmp_path):
    arr = np.random.default_rng(0).random((12, 14, 16)).astype(np.float32)
    image = make_image(arr, (1.0, 1.5, 2.0), (0, 0, 0), DIRECTIONS["oblique"])
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((8.0, 7.0, 6.0)))
    render_overview(image, [ControlPoint("A", centre), ControlPoint("B", centre + 3, selected=False)],
                    tmp_path / "o3.png", boxes=[Box("box", centre, [5, 5, 5])], title="t")
    flat = sitk.GetImageFromArray(arr[0])
    flat.SetSpacing((0.1, 0.1))
    render_overview(flat, [ControlPoint("P", [0.5, 0.4])], tmp_path / "o2.png")
    for name in ("o3.png", "o2.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
