"""Slicer's own slice view (slice logic + markups displayable manager from slicer-core, rendered offscreen) shows
the modules' point lists and Box ROIs where they are: glyphs and box outlines at the pixels the slice node's
XYToRAS says, on an oblique volume, as in Slicer (radiological axial view)."""

import sys

import numpy as np
import pytest
import SimpleITK as sitk
from mrml_testing import DIRECTIONS_LPS, REPO, add_volume

from landmarkloc.geometry.frames import lps_to_ras
from landmarkloc.io.markups import write_boxes, write_points
from landmarkloc.points import Box, ControlPoint

slicer = pytest.importorskip("slicer")
sys.path.insert(0, str(REPO / "scripts"))
import render_slicer_figure as figure  # noqa: E402
from LandmarkLocalizerLib import mrml  # noqa: E402

SIZE = (320, 280)


def slice_view(scene, request, name="Red"):
    """An offscreen Red slice view, closed after the test (an open one crashes the interpreter at exit)."""
    try:
        view = figure.SliceView(scene, SIZE, name)
        request.addfinalizer(view.close)
        return view
    except figure.OffscreenUnavailable as exc:
        pytest.skip(f"no offscreen rendering here: {exc}")


def coloured(pixels, rgb, tolerance=45.0):
    return np.linalg.norm(pixels.astype(float) - 255.0 * np.asarray(rgb), axis=-1) < tolerance


def near(mask, x, y, radius):
    """Whether ``mask`` (rows top-first) has a pixel within ``radius`` of view XY (x right, y up)."""
    row, col = SIZE[1] - 1 - y, x
    r0, r1 = int(max(0, np.floor(row - radius))), int(min(mask.shape[0], np.ceil(row + radius) + 1))
    c0, c1 = int(max(0, np.floor(col - radius))), int(min(mask.shape[1], np.ceil(col + radius) + 1))
    return bool(mask[r0:r1, c0:c1].any())


def centroid_xy(mask, x, y, radius):
    rows, cols = np.nonzero(mask)
    ys = SIZE[1] - 1 - rows
    keep = (cols - x) ** 2 + (ys - y) ** 2 <= radius ** 2
    return np.array([cols[keep].mean(), ys[keep].mean()]), int(keep.sum())


def box_outline_xy(view, box: Box) -> np.ndarray:
    """Where the slice plane cuts the box's edges, in view XY, in order around the outline."""
    corners = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    world = [lps_to_ras(box.center + box.orientation @ (c * box.size)) for c in corners]
    xyz = np.array([view.xy_of(w) for w in world])
    cuts = []
    for a in range(8):
        for b in range(a + 1, 8):
            if np.sum(np.abs(corners[a] - corners[b])) == 1.0 and xyz[a, 2] * xyz[b, 2] < 0:  # an edge crossing
                t = xyz[a, 2] / (xyz[a, 2] - xyz[b, 2])
                cuts.append(xyz[a, :2] + t * (xyz[b, :2] - xyz[a, :2]))
    cuts = np.array(cuts)
    middle = cuts.mean(axis=0)
    return cuts[np.argsort(np.arctan2(cuts[:, 1] - middle[1], cuts[:, 0] - middle[0]))]


def test_points_and_box_roi_appear_where_the_slice_view_maps_them_on_an_oblique_volume(request):
    scene = figure.scene_with_slicer_logics()
    view = slice_view(scene, request)
    rng = np.random.default_rng(0)
    volume = add_volume(scene, rng.normal(100.0, 10.0, (40, 44, 48)).astype(np.float32), (1.2, 1.1, 1.3),
                        (-20.0, 10.0, -25.0), DIRECTIONS_LPS["oblique"], name="oblique")
    geometry = mrml.volume_geometry(volume)
    centre = geometry.index_to_physical([24.0, 22.0, 20.0])
    right = ControlPoint("Right", centre + np.array([-12.0, 0.0, 0.0]), properties={"confidence": 0.9})
    left = ControlPoint("Left", centre + np.array([10.0, -8.0, 0.0]), selected=False,
                        properties={"confidence": 0.2})  # uncertain: drawn unselected (amber)
    points = mrml.add_points_node(scene, [right, left], "landmarks")
    points.GetDisplayNode().SetPointLabelsVisibility(False)  # glyphs only: their centre is then measurable
    box = Box("organ", centre + np.array([0.0, 6.0, 0.0]), (18.0, 10.0, 14.0), geometry.direction)  # oblique box
    figure.style_boxes([mrml.add_roi_node(scene, box)])
    view.show(volume, lps_to_ras(centre))
    pixels = view.render()
    assert pixels.std() > 5  # the volume is drawn (grey background from the Colors logic's tables)

    confident = coloured(pixels, mrml.CONFIDENT_COLOR)
    uncertain = coloured(pixels, mrml.UNCERTAIN_COLOR)
    xy = {p.label: view.xy_of(lps_to_ras(p.position)) for p in (right, left)}
    for label, mask in (("Right", confident), ("Left", uncertain)):
        x, y, distance = xy[label]
        assert abs(distance) < 1e-6  # on the slice
        assert 0 < x < SIZE[0] and 0 < y < SIZE[1]
        found, count = centroid_xy(mask, x, y, radius=10.0)
        assert count >= 12, f"no {label} glyph at the expected pixel"
        np.testing.assert_allclose(found, (x, y), atol=1.0)
    # radiological convention: the patient's right on the viewer's left
    assert xy["Right"][0] < xy["Left"][0]

    outline = coloured(pixels, figure.BOX_COLOR)
    polygon = box_outline_xy(view, box)
    assert len(polygon) >= 3
    middle = polygon.mean(axis=0)
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        for t in np.linspace(0.05, 0.95, 8):
            x, y = a + t * (b - a)
            assert near(outline, x, y, radius=2.0), f"no box outline at XY ({x:.1f}, {y:.1f})"
            ox, oy = middle + 1.35 * (np.array([x, y]) - middle)  # well outside the box
            if 0 <= ox < SIZE[0] and 0 <= oy < SIZE[1]:
                assert not near(outline, ox, oy, radius=1.0), "box outline drawn outside the box"


def test_figure_script_renders_three_slice_views_of_a_volume_and_one_of_a_picture(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(50, 5, (20, 40, 50)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    at = image.TransformContinuousIndexToPhysicalPoint
    write_points(tmp_path / "p.mrk.json", [ControlPoint("A", at((10, 30, 5)), properties={"confidence": 0.9})],
                 coordinate_system="RAS")
    write_boxes(tmp_path / "b.mrk.json", [Box("organ", at((25, 20, 5)), (10.0, 8.0, 4.0))])
    picture = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 255, (60, 80, 3)).astype(np.uint8),
                                     isVector=True)
    sitk.WriteImage(picture, str(tmp_path / "xray.png"))
    write_points(tmp_path / "x.mrk.json", [ControlPoint("B", (4.0, 2.0, 0.0))])
    try:
        figure.SliceView(figure.scene_with_slicer_logics(), (8, 8)).close()
    except figure.OffscreenUnavailable as exc:
        pytest.skip(f"no offscreen rendering here: {exc}")
    size = ["--size", "120", "100"]
    assert figure.main(["--image", str(tmp_path / "ct.nii.gz"), "--points", str(tmp_path / "p.mrk.json"), "--boxes",
                        str(tmp_path / "b.mrk.json"), "-o", str(tmp_path / "fig.png"), *size]) == 0
    assert sitk.ReadImage(str(tmp_path / "fig.png")).GetSize() == (3 * 120 + 2 * figure.SEPARATOR_PX, 100)
    assert figure.main(["--image", str(tmp_path / "xray.png"), "--spacing", "0.1", "--points",
                        str(tmp_path / "x.mrk.json"), "-o", str(tmp_path / "xray_fig.png"), *size]) == 0
    shown = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "xray_fig.png")))
    assert shown.shape[:2] == (100, 120)
    assert coloured(shown, mrml.CONFIDENT_COLOR).sum() >= 8  # the point on the picture
