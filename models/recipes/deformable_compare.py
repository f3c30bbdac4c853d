"""Which deformable registration to ship as ``landmarkloc oneshot --method deformable`` (issue 20, part 1).

Support IXI012 (the first line of runs/ixi/train_images.txt, as in evaluate.py's one-shot section), queries the
first N validation images. Each method registers the support to the query once after an affine stage and carries
the support's points into the query: the six extreme points of each IXI-8 structure (boxes, mean IoU) and the
IXI-16 centroids (median error). Methods:

- ``affine``: SimpleITK rigid + affine (``--method registration``), for reference;
- ``bspline``: SimpleITK B-spline after affine (``--method registration --bspline``; fixed = query, points through
  the inverse by fixed-point steps);
- ``syn``: ANTs SyN (antspyx, ``type_of_transform="SyN"``; fixed = query, points through ``invtransforms``);
- ``elastix``: itk-elastix with its default ``affine`` then ``bspline`` parameter maps (centre-of-gravity
  initialisation, random seed 0). Fixed = support, moving = query, so the result transform takes a support point
  to its query point directly (elastix's own convention for carrying points: no inverse needed).

    python models/recipes/deformable_compare.py --methods syn elastix bspline [--n 10] [--split val]

Writes runs/eval/deformable_<split>_<method>.json per method and prints the table for docs/oneshot.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import SimpleITK as sitk
from eval_common import DATA, EVAL, IXI8, IXI16_LABELS, RUNS, _errors_by_name, _lines, _positions, _subject

from landmarkloc.geometry.labels import label_centroids, label_extreme_points
from landmarkloc.inference.baselines import RegistrationConfig, map_support_points, register_images
from landmarkloc.inference.oneshot import result_from_positions
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import read_boxes
from landmarkloc.metrics import box_iou


def _sitk(bspline: bool):
    def run(query, support, points):
        linear, deformation = register_images(query, support, RegistrationConfig(bspline=bspline))
        return map_support_points(points, linear, deformation)
    return run


def _syn(query, support, points):
    from landmarkloc.inference.deformable import DeformableConfig
    from landmarkloc.inference.deformable import map_support_points as ants_map

    return ants_map(points, query, support, DeformableConfig())


def _to_itk(image: sitk.Image):
    import itk

    out = itk.image_from_array(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
    return out


def _elastix(query, support, points):
    import itk

    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        m = parameters.GetDefaultParameterMap(name)
        m["WriteResultImage"] = ["false"]
        m["RandomSeed"] = ["0"]
        if name == "affine":
            m["AutomaticTransformInitialization"] = ["true"]
            m["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
        parameters.AddParameterMap(m)
    method = itk.ElastixRegistrationMethod.New(_to_itk(support), _to_itk(query))  # fixed support, moving query
    method.SetParameterObject(parameters)
    method.SetLogToConsole(False)
    method.Update()
    transform = method.GetCombinationTransform()  # support (fixed) point -> query (moving) point
    return np.array([list(transform.TransformPoint([float(v) for v in p])) for p in points])


METHODS = {"affine": _sitk(False), "bspline": _sitk(True), "syn": _syn, "elastix": _elastix}


def measure(method: str, split: str, n: int) -> dict:
    train = _lines(RUNS / "ixi" / "train_images.txt")
    queries = _lines(RUNS / "ixi" / f"{split}_images.txt")[:n]
    support_path = train[0]
    support = read_image(support_path)
    seg = sitk.Cast(sitk.ReadImage(str(DATA / "ixi" / "seg" / support_path.name)), sitk.sitkUInt16)
    extreme = label_extreme_points(seg, list(IXI8.values()), list(IXI8))
    centroids = label_centroids(seg, list(IXI16_LABELS.values()), list(IXI16_LABELS))
    points = extreme + centroids
    names = [p.label for p in points]
    positions = np.stack([np.asarray(p.position, dtype=np.float64) for p in points])
    out = {"method": method, "support": _subject(support_path), "split": split, "queries": {}}
    for q in queries:
        subject = _subject(q)
        query = read_image(q)
        start = time.perf_counter()
        mapped = METHODS[method](query, support, positions)
        seconds = time.perf_counter() - start
        result = result_from_positions(names[:len(extreme)], mapped[:len(extreme)], query, method, seconds)
        ref_boxes = {b.name: b for b in read_boxes(RUNS / "ixi" / "boxes" / f"{subject}.mrk.json")}
        ious = {b.name: box_iou(b, ref_boxes[b.name]) for b in result.boxes if b.name in ref_boxes}
        errors = _errors_by_name(dict(zip(names[len(extreme):], mapped[len(extreme):])),
                                 _positions(RUNS / "ixi" / "landmarks" / f"{subject}.mrk.json"))
        out["queries"][subject] = {"seconds": seconds, "iou": ious, "centroid_errors": errors}
        print(f"{method} {subject}: IoU {np.mean(list(ious.values())):.3f}, centroid median "
              f"{np.median(list(errors.values())):.2f} mm, {seconds:.1f} s", flush=True)
    EVAL.mkdir(parents=True, exist_ok=True)
    (EVAL / f"deformable_{split}_{method}.json").write_text(json.dumps(out, indent=1))
    return out


def summary(out: dict) -> tuple:
    q = out["queries"].values()
    iou = float(np.mean([v for c in q for v in c["iou"].values()]))
    median = float(np.median([v for c in q for v in c["centroid_errors"].values()]))
    return iou, median, statistics.median(c["seconds"] for c in q), len(out["queries"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=["syn", "elastix", "bspline"])
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--table-only", action="store_true", help="print the table of the cached runs")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        path = EVAL / f"deformable_{args.split}_{method}.json"
        out = json.loads(path.read_text()) if args.table_only else measure(method, args.split, args.n)
        rows.append((method, *summary(out)))
    print("| method | IXI-8 boxes, mean IoU | IXI-16 centroids, median error | time per query (median) | n |")
    print("|---|---|---|---|---|")
    for method, iou, median, seconds, n in rows:
        print(f"| {method} | {iou:.3f} | {median:.2f} mm | {seconds:.1f} s | {n} |")


if __name__ == "__main__":
    main()
