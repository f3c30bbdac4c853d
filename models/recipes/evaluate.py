"""Evaluate the shipped models on the held-out real data and write docs/results.md (+ figures).

Reads ../shared/data through the files made by prepare_ixi.py and prepare_ceph.py
(runs/ixi, runs/ceph); writes numbers to runs/eval/*.json and the report to
docs/results.md with plots in docs/figures/. Sections can be run alone:

    python models/recipes/evaluate.py [--only brain brain-shift oneshot oneshot-val oneshot-robust ceph ceph-shift
        ceph-analysis]
        [--report-only] [--reuse-registration]

``ceph-analysis`` is the error analysis of the ceph model on the training images held out for
validation (ceph_analysis.py); it never touches Test1.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from eval_common import (
    DATA,
    DEFORMABLE,
    IXI8,
    IXI16_LABELS,
    MODELS,
    ONESHOT_DEFAULT,
    RUNS,
    _errors_by_name,
    _lines,
    _positions,
    _save,
    _subject,
)
from eval_report import report
from eval_robustness import oneshot_robust
from eval_shift import SETS, records_for

from landmarkloc.geometry.labels import label_centroids, label_extreme_points
from landmarkloc.inference.baselines import NccConfig, ncc_locate, registration_locate
from landmarkloc.inference.deformable import deformable_locate, require_ants
from landmarkloc.inference.fcn import Localizer
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import read_boxes
from landmarkloc.metrics import box_iou, box_wall_distance
from landmarkloc.runtime import progress


def evaluate_fcn(model: Path, images: list, references: dict, spacing=None, use_local=True, mask_dir=None,
                 desc="") -> dict:
    """Localize every image; return per-case errors, confidences and times."""
    loc = Localizer.from_file(model, device="cpu")
    cases = {}
    for path in progress(images, desc=desc):
        image = read_image(path, spacing=spacing)
        if mask_dir is not None:
            mask = sitk.ReadImage(str(mask_dir / f"{_subject(path)}.nii.gz"))
            image = sitk.Mask(image, sitk.Cast(mask > 0, sitk.sitkUInt8))
        start = time.perf_counter()
        result = loc.localize(image, use_local=use_local)
        seconds = time.perf_counter() - start
        pred = {lm.name: lm.position for lm in result.landmarks}
        ref = references[_subject(path)]
        cases[_subject(path)] = {"errors": _errors_by_name(pred, ref), "seconds": seconds,
                                 "not_found": [lm.name for lm in result.landmarks if not lm.found],
                                 "confidence": {lm.name: float(lm.confidence) for lm in result.landmarks},
                                 "uncertain": {lm.name: bool(lm.uncertain) for lm in result.landmarks},
                                 "p_large_error": {lm.name: lm.p_large_error for lm in result.landmarks
                                                   if lm.p_large_error is not None}}
    return cases


def brain() -> None:
    images = _lines(RUNS / "ixi" / "test_images.txt")
    refs = {_subject(p): _positions(RUNS / "ixi" / "landmarks" / f"{_subject(p)}.mrk.json") for p in images}
    model = MODELS / "brain-t1-ixi16.safetensors"
    _save("brain_g2l", evaluate_fcn(model, images, refs, desc="brain global-to-local"))
    _save("brain_global", evaluate_fcn(model, images, refs, use_local=False, desc="brain global only"))
    _save("brain_stripped", evaluate_fcn(model, images, refs, mask_dir=RUNS / "ixi" / "masks",
                                         desc="brain skull-stripped"))


# One-shot ablation: (label, use the fine model, refinement). The default (CLI, Slicer, demo) is "rpr + anchor map
# + NCC search + local affine", chosen on the validation split (section oneshot-val).
ONESHOT_VARIANTS = (
    ("coarse only", False, "none"),
    ("coarse+fine (paper)", True, "none"),
    ("coarse + anchor affine", False, "affine"),
    ("coarse + anchor affine + fine", True, "affine"),
    ("coarse + anchor affine + NCC search", False, "ncc"),
    ("coarse + anchor affine + fine + NCC search", True, "ncc"),
    (ONESHOT_DEFAULT, False, "local-affine"),
)


def _point_record(point, reference) -> dict:
    """A located point's error and what the uncertainty flags saw (for choosing thresholds on validation)."""
    keep = ("spread_mm", "map_residual_mm", "fit_rms_mm", "ncc", "ncc_on_border", "support_spread_mm")
    return {"error": float(np.linalg.norm(point.position - reference)), "selected": bool(point.selected),
            **{k: point.properties[k] for k in keep if k in point.properties}}


FEW_SHOT = 3  # supports of the few-shot row: the first training subjects
FEW_SHOT_LABEL = f"few-shot: {FEW_SHOT} supports, median (default refinement each)"


def _support(path: Path) -> tuple:
    """A support image with the IXI-8 extreme points and the IXI-16 centroids of its label map."""
    seg = sitk.Cast(sitk.ReadImage(str(DATA / "ixi" / "seg" / path.name)), sitk.sitkUInt16)
    return (read_image(path), label_extreme_points(seg, list(IXI8.values()), list(IXI8)),
            label_centroids(seg, list(IXI16_LABELS.values()), list(IXI16_LABELS)))


def oneshot(split: str = "test") -> None:
    """Ablation of the one-shot refinement on an IXI split (support IXI012), baselines in the same run."""
    train = _lines(RUNS / "ixi" / "train_images.txt")
    queries = _lines(RUNS / "ixi" / f"{split}_images.txt")
    support_path = train[0]
    support, extreme, centroids = _support(support_path)
    coarse, fine = MODELS / "brain-t1-rpr-coarse.safetensors", MODELS / "brain-t1-rpr-fine.safetensors"
    locators = {False: OneShotLocator.from_files(coarse, None, device="cpu"),
                True: OneShotLocator.from_files(coarse, fine, device="cpu")}
    templates = {k: (loc.make_template(support, extreme), loc.make_template(support, centroids))
                 for k, loc in locators.items()}
    ref_boxes = {_subject(q): {b.name: b for b in read_boxes(RUNS / "ixi" / "boxes" / f"{_subject(q)}.mrk.json")}
                 for q in queries}
    ref_points = {_subject(q): _positions(RUNS / "ixi" / "landmarks" / f"{_subject(q)}.mrk.json") for q in queries}
    ref_extreme = {_subject(q): _positions(RUNS / "ixi" / "extreme" / f"{_subject(q)}.mrk.json") for q in queries}
    query_images = {_subject(q): read_image(q) for q in queries}
    out = {"support": _subject(support_path), "split": split, "configs": {}}

    def box_scores(result, subject) -> dict:
        got = {b.name: b for b in result.boxes}
        return {n: {"iou": box_iou(got[n], ref), "awd": box_wall_distance(got[n], ref)}
                for n, ref in ref_boxes[subject].items() if n in got}

    for label, use_fine, refine in ONESHOT_VARIANTS:
        loc = locators[use_fine]
        cfg = {"boxes": {}, "seconds": [], "steps": [], "points": {}, "point_records": []}
        for subject, image in progress(query_images.items(), desc=label):
            result = loc.locate(image, templates[use_fine][0], runs=15, seed=0, refine=refine)
            cfg["seconds"].append(result.seconds)
            cfg["steps"].append(result.timings)
            cfg["boxes"][subject] = box_scores(result, subject)
            cfg["point_records"] += [_point_record(p, ref_extreme[subject][p.label]) for p in result.points]
            centre = loc.locate(image, templates[use_fine][1], runs=15, seed=0, refine=refine)
            cfg["points"][subject] = _errors_by_name({p.label: p.position for p in centre.points},
                                                     ref_points[subject])
            cfg["point_records"] += [_point_record(p, ref_points[subject][p.label]) for p in centre.points]
        out["configs"][label] = cfg
    # Few-shot (`oneshot` with --support three times): the first three training subjects, median of their points.
    loc = locators[False]
    few = [templates[False]] + [(loc.make_template(image, extreme_points), loc.make_template(image, centre_points))
                                for image, extreme_points, centre_points in map(_support, train[1:FEW_SHOT])]
    cfg = {"boxes": {}, "seconds": [], "points": {}, "point_records": []}
    for subject, image in progress(query_images.items(), desc=FEW_SHOT_LABEL):
        result = loc.locate_consensus(image, [t[0] for t in few], runs=15, seed=0)
        cfg["seconds"].append(result.seconds)
        cfg["boxes"][subject] = box_scores(result, subject)
        cfg["point_records"] += [_point_record(p, ref_extreme[subject][p.label]) for p in result.points]
        centre = loc.locate_consensus(image, [t[1] for t in few], runs=15, seed=0)
        cfg["points"][subject] = _errors_by_name({p.label: p.position for p in centre.points}, ref_points[subject])
        cfg["point_records"] += [_point_record(p, ref_points[subject][p.label]) for p in centre.points]
    out["configs"][FEW_SHOT_LABEL] = cfg
    cfg = {"boxes": {}, "seconds": []}
    for subject, image in progress(query_images.items(), desc="ncc (FFT)"):
        result = ncc_locate(image, support, extreme, NccConfig(use_fft=True))
        cfg["seconds"].append(result.seconds)
        cfg["boxes"][subject] = box_scores(result, subject)
    out["configs"]["ncc (FFT)"] = cfg
    # One registration per query serves both the boxes and the centroids (its time does not depend on the points).
    cfg = {"boxes": {}, "seconds": [], "points": {}}
    for subject, image in progress(query_images.items(), desc="registration (affine)"):
        result = registration_locate(image, support, extreme + centroids)
        cfg["seconds"].append(result.seconds)
        cfg["boxes"][subject] = box_scores(result, subject)
        cfg["points"][subject] = _errors_by_name({p.label: p.position for p in result.points}, ref_points[subject])
    out["configs"]["registration (affine)"] = cfg
    # The deformable baseline (`oneshot --method deformable`, ANTs SyN), the same way: ~10-20 s per query.
    require_ants("the deformable registration rows of the evaluation")
    cfg = {"boxes": {}, "seconds": [], "points": {}}
    for subject, image in progress(query_images.items(), desc=DEFORMABLE):
        result = deformable_locate(image, support, extreme + centroids)
        cfg["seconds"].append(result.seconds)
        cfg["boxes"][subject] = box_scores(result, subject)
        cfg["points"][subject] = _errors_by_name({p.label: p.position for p in result.points}, ref_points[subject])
    out["configs"][DEFORMABLE] = cfg
    _save("oneshot" if split == "test" else f"oneshot_{split}", out)


def ceph_analysis() -> None:
    from ceph_analysis import analyse

    # the 15 images train-fcn holds out with seed 0 (prepare_ceph.py), with which every ceph stage was selected
    _save("ceph_analysis", analyse(MODELS / "ceph-isbi19.safetensors", RUNS / "ceph" / "heldout_train.csv",
                                   spacing=0.1, train_images=15, val_path=RUNS / "ceph" / "heldout_val.csv"))


def ceph() -> None:
    images = _lines(RUNS / "ceph" / "test1_images.txt")
    refs = {_subject(p): _positions(RUNS / "ceph" / "test1_ref" / f"{_subject(p)}.mrk.json") for p in images}
    _save("ceph_g2l", evaluate_fcn(MODELS / "ceph-isbi19.safetensors", images, refs, spacing=0.1, desc="ceph"))




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*",
                        choices=("brain", "brain-shift", "oneshot", "oneshot-val", "oneshot-robust", "ceph",
                                 "ceph-shift", "ceph-analysis"),
                        default=None,
                        help="sections (default: brain brain-shift oneshot ceph ceph-shift ceph-analysis; "
                        "brain-shift / ceph-shift: the test split clean and under the shifts of issue 24 (and the "
                        "validation split's, for the signal analysis); oneshot-val: the one-shot "
                        "ablation on the validation split, to choose variants and thresholds; oneshot-robust: the "
                        "robustness table on the MNI152 template and perturbed test queries, ~60 min on the shared "
                        "2-core machine)")
    parser.add_argument("--reuse-registration", action="store_true",
                        help="oneshot-robust: take affine and deformable registration's scores from the cached run "
                        "where it has them (they do not "
                        "depend on the one-shot models; on the MNI152 row only if brain-t1-ixi16, whose points are "
                        "the reference there, is the same) and rerun only the one-shot rows")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.report_only:
        for section in args.only or ("brain", "brain-shift", "oneshot", "ceph", "ceph-shift", "ceph-analysis"):
            {"brain": brain, "oneshot": oneshot, "oneshot-val": lambda: oneshot("val"),
             "brain-shift": lambda: [records_for("brain", split) for split in SETS["brain"]["splits"]],
             "ceph-shift": lambda: [records_for("ceph", split) for split in SETS["ceph"]["splits"]],
             "oneshot-robust": lambda: oneshot_robust(reuse_registration=args.reuse_registration), "ceph": ceph,
             "ceph-analysis": ceph_analysis}[section]()
    report()


if __name__ == "__main__":
    main()
