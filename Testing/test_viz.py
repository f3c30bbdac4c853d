"""Overview figures are written for 2D and 3D images, whatever the image's axes; labels never collide."""

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
                    tmp_path / "o3.png", boxes=[Box("box", centre, [5, 5, 5])], title="t",
                    reference=[ControlPoint("A", centre + 1)])
    flat = sitk.GetImageFromArray(arr[0])
    flat.SetSpacing((0.1, 0.1))
    render_overview(flat, [ControlPoint("P", [0.5, 0.4])], tmp_path / "o2.png")
    for name in ("o3.png", "o2.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_of_crowded_points_overlap_neither_each_other_nor_any_mark():
    """Found and true positions a few pixels apart (as in the demo's one-shot figure) get separate labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landmarkloc.viz import place_labels, text_box

    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.imshow(np.zeros((200, 200)), cmap="gray")
    rng = np.random.default_rng(1)
    anchors = [tuple(v) for v in 100 + rng.normal(0, 3, (8, 2))]  # eight points within ~10 px
    names = ["Putamen_R", "Putamen_L", "Pallidum_R", "Pallidum_L", "3rdVentricle", "Thalamus_R", "Thalamus_L",
             "CorpusCallosum"]
    labels = place_labels(ax, anchors, names, ["#56B4E9"] * 8)
    renderer = fig.canvas.get_renderer()
    boxes = [text_box(label, renderer) for label in labels]
    assert [label.get_text() for label in labels] == names
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            assert not boxes[a].overlaps(boxes[b]), (names[a], names[b])
    for x, y in ax.transData.transform(anchors):
        assert not any(box.contains(x, y) for box in boxes)  # no label hides a mark
    plt.close(fig)
