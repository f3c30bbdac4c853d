"""The README figure script draws points where they are in the image (voxel grid through the full geometry)."""

import sys

import matplotlib.image as mpimg
import numpy as np
import SimpleITK as sitk
from mrml_testing import REPO

from landmarkloc.io.markups import write_boxes, write_points
from landmarkloc.points import Box, ControlPoint

sys.path.insert(0, str(REPO / "scripts"))
import render_slicer_figure  # noqa: E402


def test_figure_is_rendered_from_result_files(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((10, 40, 50), np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS-oriented file: the flip must not move points
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    at = image.TransformContinuousIndexToPhysicalPoint
    write_points(tmp_path / "p.mrk.json", [ControlPoint("A", at((10, 30, 5)), properties={"confidence": 0.9})],
                 coordinate_system="RAS")
    write_boxes(tmp_path / "b.mrk.json", [Box("organ", at((25, 20, 5)), (10.0, 8.0, 4.0))])
    out = tmp_path / "fig.png"
    assert render_slicer_figure.main(["--image", str(tmp_path / "ct.nii.gz"), "--points", str(tmp_path / "p.mrk.json"),
                                      "--boxes", str(tmp_path / "b.mrk.json"), "--title", "t", "-o", str(out)]) == 0
    pixels = mpimg.imread(out)
    reddish = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.6) & (pixels[..., 2] < 0.6)
    ys, xs = np.nonzero(reddish)
    assert len(xs) > 10
    # The file is RAS-stored: i = 10 of 50 lies near the patient's left side and j = 30 of 40 towards anterior.
    # Slicer's axial view puts the patient's left on the viewer's right and anterior at the top.
    width, height = pixels.shape[1], pixels.shape[0]
    assert xs.mean() / width > 0.65 and ys.mean() / height < 0.4
