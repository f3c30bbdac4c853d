"""``landmarkloc derive``: reference points or boxes from a label map."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..geometry.labels import label_boxes, label_centroids, label_extreme_points
from ..io.atomic import check_writable
from ..io.image import check_image_file, check_spacing_applies, read_image
from ..io.markups import write_boxes, write_points
from . import add_series_argument, add_spacing_argument, parse_spacing
from .outputs import check_outputs_are_not_inputs, output_paths

EXAMPLE = """example:
  landmarkloc derive seg/IXI002.nii.gz --labels 35,47,48 --names BrainStem,Hippocampus_R,Hippocampus_L \\
      --kind extreme -o support.mrk.json
"""


def register(sub) -> None:
    p = sub.add_parser("derive", help="points (centroids, six extreme points) or boxes from a label map",
                       description="Turn a label map into reference landmarks (structure centroids), the six "
                       "extreme points of each structure (a one-shot support annotation) or bounding boxes "
                       "(ROIs). Positions are physical, in the label map's space.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labelmap", help="label map image (NIfTI, NRRD, MHA, DICOM folder)")
    p.add_argument("--labels", required=True, help="comma-separated label values, e.g. 35,47,48")
    p.add_argument("--names", help="comma-separated names, one per label (default: the label values)")
    p.add_argument("--kind", choices=("centroid", "extreme", "box"), default="centroid",
                   help="centroid: one point per label; extreme: six points per label along the image axes; "
                   "box: one ROI per label (default: centroid)")
    p.add_argument("--coordinate-system", choices=("LPS", "RAS"), default="LPS",
                   help="coordinate system written to the file (default: LPS, Slicer's default)")
    add_spacing_argument(p)
    p.add_argument("-o", "--output", required=True, help="output .mrk.json, .fcsv or .csv (boxes: .mrk.json), or a "
                   "folder: LABELMAP.mrk.json (boxes: LABELMAP_rois.mrk.json)")
    add_series_argument(p)
    p.set_defaults(func=run)


def parse_labels(text: str) -> list:
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--labels must be comma-separated integers, got {text!r}") from None
    if not labels:
        raise InputError("--labels is empty")
    return labels


def run(args) -> int:
    labels = parse_labels(args.labels)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    check_image_file(args.labelmap, args.series)
    spacing = parse_spacing(args.spacing)
    check_spacing_applies([args.labelmap], spacing)
    boxes = args.kind == "box"
    output = output_paths([args.labelmap], args.output, "_rois.mrk.json" if boxes else ".mrk.json",
                          (".mrk.json",) if boxes else (".mrk.json", ".fcsv", ".csv"))[0]
    check_outputs_are_not_inputs([("label map", args.labelmap)], [("-o", output)])
    check_writable(output)
    labelmap = read_image(args.labelmap, spacing=spacing, series=args.series)
    if boxes:
        boxes = label_boxes(labelmap, labels, names)
        write_boxes(output, boxes, args.coordinate_system)
        print(f"wrote {len(boxes)} boxes to {output}")
        return 0
    derive = label_centroids if args.kind == "centroid" else label_extreme_points
    points = derive(labelmap, labels, names)
    write_points(output, points, args.coordinate_system)
    print(f"wrote {len(points)} points to {output}")
    return 0
