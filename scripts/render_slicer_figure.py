"""Render a Slicer-style figure (a slice with the localized landmarks and organ boxes) from landmarkloc output.

Points and boxes are read from .mrk.json/.fcsv/.csv files (any coordinate
system), mapped into the image's voxel grid through its full geometry, and
drawn on the slice that holds most of them: confident points in Slicer's
selected colour, uncertain (unselected) points in amber, with their labels and
confidences. Example::

    landmarkloc localize --model models/ceph.safetensors --image ceph.png --spacing 0.1 -o ceph.mrk.json
    python scripts/render_slicer_figure.py --image ceph.png --spacing 0.1 --points ceph.mrk.json \
        -o docs/figures/slicer_localization.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from landmarkloc.geometry.frames import ImageGeometry, from_point3  # noqa: E402
from landmarkloc.geometry.resample import canonical_orientation  # noqa: E402
from landmarkloc.io.image import read_image  # noqa: E402
from landmarkloc.io.markups import read_boxes, read_points  # noqa: E402

SELECTED = "#ff7f7f"  # Slicer's selected control point colour
UNSELECTED = "#ffd900"  # amber, as the modules show uncertain points
BOX = "#4fc3f7"


def slice_to_show(index_points: np.ndarray, size) -> int:
    """The k index holding most points (median), clipped to the image."""
    if index_points.shape[1] < 3 or len(index_points) == 0:
        return 0
    return int(np.clip(np.round(np.median(index_points[:, 2])), 0, size[2] - 1))


def render(image: sitk.Image, points, boxes, output: Path, title: str = "", near_slices: float = 3.0) -> None:
    geometry = ImageGeometry.from_image(image)
    array = sitk.GetArrayViewFromImage(image)
    ndim = geometry.ndim
    idx = geometry.physical_to_index(np.array([from_point3(p.position, ndim) for p in points])) if points \
        else np.zeros((0, ndim))
    k = slice_to_show(idx, geometry.size)
    plane = array if ndim == 2 else array[k]
    low, high = np.percentile(plane, [1, 99.5])
    aspect = geometry.spacing[1] / geometry.spacing[0]
    fig, ax = plt.subplots(figsize=(7, 7 * plane.shape[0] * aspect / plane.shape[1]), dpi=120)
    ax.imshow(plane, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="bilinear")
    for point, ijk in zip(points, idx):
        if ndim == 3 and abs(ijk[2] - k) > near_slices:
            continue
        colour = SELECTED if point.selected else UNSELECTED
        ax.plot(ijk[0], ijk[1], "o", ms=7, mfc=colour, mec="white", mew=1.2)
        confidence = point.properties.get("confidence")
        text = point.label + (f" {confidence:.2f}" if isinstance(confidence, (int, float)) else "")
        ax.annotate(text, (ijk[0], ijk[1]), xytext=(6, -6), textcoords="offset points", color=colour, fontsize=8)
    for box in boxes:
        corners = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
        world = box.center + (corners * box.size) @ box.orientation.T
        cidx = geometry.physical_to_index(from_point3(world, ndim))
        lo, hi = cidx.min(axis=0), cidx.max(axis=0)
        if ndim == 3 and not lo[2] - near_slices <= k <= hi[2] + near_slices:
            continue
        ax.add_patch(plt.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, ec=BOX, lw=1.5))
        ax.annotate(box.name, (lo[0], lo[1]), xytext=(2, 4), textcoords="offset points", color=BOX, fontsize=8)
    ax.set_title(title or (f"slice k={k}" if ndim == 3 else ""), fontsize=9)
    ax.axis("off")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the localized image (volume file, DICOM folder or 2D picture)")
    parser.add_argument("--spacing", type=float, help="pixel size in mm for 2D pictures (PNG, JPEG, ...)")
    parser.add_argument("--points", required=True, help="localization result (.mrk.json, .fcsv or .csv)")
    parser.add_argument("--boxes", help="organ boxes (.mrk.json with ROIs)")
    parser.add_argument("--title", default="")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    # Canonical axis order (i -> patient left, j -> posterior): the axial view is shown as Slicer shows it,
    # anterior up and the patient's right on the viewer's left.
    image = canonical_orientation(read_image(args.image, spacing=args.spacing))
    render(image, read_points(args.points), read_boxes(args.boxes) if args.boxes else [], Path(args.output),
           args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
