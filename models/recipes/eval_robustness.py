"""The one-shot robustness experiment (``evaluate.py --only oneshot-robust``) and its report section, kept
together because the section's text describes the perturbations' settings.

The default one-shot configuration (coarse + anchor map + NCC search, K=15, support IXI012), affine registration and
deformable registration (ANTs SyN, ``oneshot --method deformable``) on the MNI152 template and on perturbed IXI test
queries. The perturbations keep the physical content (or move it by a known map), so the references are exact;
nothing here is tuned (test split, a report).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
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
    _load,
    _positions,
    _save,
    _subject,
)

from landmarkloc.geometry.labels import label_boxes, label_centroids, label_extreme_points
from landmarkloc.geometry.shifts import (
    bias_field,
    centre_of,
    cut_off,
    grid_of,
    masked,
    resample_onto,
    respace,
    rotation_matrix,
)
from landmarkloc.inference.baselines import registration_locate
from landmarkloc.inference.deformable import deformable_locate, require_ants
from landmarkloc.inference.fcn import Localizer
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import read_boxes
from landmarkloc.io.modelfile import read_metadata
from landmarkloc.metrics import box_iou
from landmarkloc.runtime import progress

ROBUST_QUERIES = 10  # first test subjects per perturbed row (registration costs ~20 s per query on this machine)
ROBUST_SEED = 0
ROBUST_BIAS_COEFFICIENTS = 0.8  # TorchIO RandomBiasField, order 3 (its default strength is 0.5)
ROBUST_DILATION_VOXELS = 2  # skull-stripping mask: the query's label map > 0, dilated by 2 voxels (4 mm)
ROBUST_ROTATION_DEG = 20.0  # about the left-right axis through the image centre (a nodding head)
ROBUST_CROP_TOP = 0.25  # share of the superior extent removed
ROBUST_KEEP_VOLUME = 0.9  # on a new grid, a structure with less of its volume left is excluded


def _to_1mm(image: sitk.Image, seg: sitk.Image) -> tuple:
    """Linear resampling to 1 mm over the same field of view (voxel edges kept)."""
    return respace(image, 1.0), respace(seg, 1.0, label=True)


def _bias_field(image: sitk.Image, seg: sitk.Image, seed: int) -> tuple:
    """A smooth multiplicative field from TorchIO's RandomBiasField (order 3), seeded per query; third: the
    field's range in the brain (99th over 1st percentile)."""
    out = bias_field(image, ROBUST_BIAS_COEFFICIENTS, seed)
    before = sitk.GetArrayViewFromImage(image).astype(np.float64)
    inside = (sitk.GetArrayViewFromImage(seg) > 0) & (before > 0)
    field = sitk.GetArrayViewFromImage(out)[inside] / before[inside]
    return out, seg, float(np.percentile(field, 99) / np.percentile(field, 1))


def _skull_stripped(image: sitk.Image, seg: sitk.Image) -> tuple:
    return masked(image, seg, ROBUST_DILATION_VOXELS), seg


def _rotated(image: sitk.Image, seg: sitk.Image) -> tuple:
    """The same physical content on a grid rotated about the L-R axis through its centre: the anatomy turns by
    ``ROBUST_ROTATION_DEG`` relative to the image axes (what the networks see); the points stay where they are."""
    origin, spacing, direction, size = grid_of(image)
    new_direction = rotation_matrix(3, ROBUST_ROTATION_DEG, 0) @ direction  # about the physical L-R axis
    new_origin = centre_of(image) - new_direction @ (spacing * (size - 1) / 2.0)
    return (resample_onto(image, new_origin, spacing, new_direction, size),
            resample_onto(seg, new_origin, spacing, new_direction, size, label=True))


def _cropped_top(image: sitk.Image, seg: sitk.Image) -> tuple:
    """The superior ``ROBUST_CROP_TOP`` of the field of view removed (along the image axis closest to S)."""
    return cut_off(image, ROBUST_CROP_TOP, 2), cut_off(seg, ROBUST_CROP_TOP, 2)


ROBUST_MNI = "MNI152 template (the demo's moved, cropped query)"
ROBUST_ROWS = {
    "resampled to 1 mm": lambda image, seg, seed: _to_1mm(image, seg),
    "strong bias field": _bias_field,
    "skull-stripped": lambda image, seg, seed: _skull_stripped(image, seg),
    f"rotated {ROBUST_ROTATION_DEG:g}°": lambda image, seg, seed: _rotated(image, seg),
    f"top {100 * ROBUST_CROP_TOP:g}% of the field of view cut off": lambda image, seg, seed: _cropped_top(image, seg),
}


def _label_volumes(seg: sitk.Image, labels) -> dict:
    counts = np.bincount(sitk.GetArrayViewFromImage(seg).ravel().astype(np.int64), minlength=max(labels) + 1)
    return {lab: float(counts[lab] * np.prod(seg.GetSpacing())) for lab in labels}


def _robust_query(name: str, image: sitk.Image, references: dict, loc, templates, support, extreme, centroids,
                  out: dict, cached: dict | None = None) -> None:
    """Default one-shot configuration, affine and deformable registration on one query; append its scores to
    ``out``. ``cached``: the previous run's row, whose registration scores (they do not depend on the one-shot
    models) are reused where it has this query."""
    ref_boxes, ref_points = references.get("boxes", {}), references["points"]
    rows = {"rpr": out.setdefault("rpr", {"boxes": {}, "points": {}, "seconds": [], "selected": []})}
    support_points = (extreme if ref_boxes else []) + centroids
    if ref_boxes:
        result = loc.locate(image, templates[0], runs=15, seed=0, refine=DEFAULT_REFINE_MODE)
        rows["rpr"]["seconds"].append(result.seconds)
        rows["rpr"]["selected"] += [bool(p.selected) for p in result.points if p.label.rsplit("_", 1)[0] in ref_boxes]
        got = {b.name: b for b in result.boxes}
        rows["rpr"]["boxes"][name] = {n: box_iou(got[n], ref) for n, ref in ref_boxes.items() if n in got}
    centre = loc.locate(image, templates[1], runs=15, seed=0, refine=DEFAULT_REFINE_MODE)
    if not ref_boxes:
        rows["rpr"]["seconds"].append(centre.seconds)
    rows["rpr"]["selected"] += [bool(p.selected) for p in centre.points if p.label in ref_points]
    rows["rpr"]["points"][name] = _errors_by_name({p.label: p.position for p in centre.points}, ref_points)
    for key, locate in (("registration", registration_locate), ("deformable", deformable_locate)):
        row = out.setdefault(key, {"boxes": {}, "points": {}, "seconds": []})
        before = (cached or {}).get(key)
        if before is not None and name in before["points"]:
            for part in ("boxes", "points"):
                row[part][name] = before[part][name]
            row["seconds"].append(before["seconds"][list(before["points"]).index(name)])
            continue
        result = locate(image, support, support_points)
        row["seconds"].append(result.seconds)
        got = {b.name: b for b in result.boxes}
        row["boxes"][name] = {n: box_iou(got[n], ref) for n, ref in ref_boxes.items() if n in got}
        row["points"][name] = _errors_by_name({p.label: p.position for p in result.points}, ref_points)


def _robust_mni(loc, templates, support, extreme, centroids, scratch: Path, previous: dict | None = None) -> dict:
    """The demo's query (the MNI152 template moved by a known rigid motion and cropped); reference: the IXI-16
    points brain-t1-ixi16 places on the unmoved template, carried by the motion. No label map: no boxes.
    ``previous``: the cached row, whose registration scores are reused if measured against the same FCN model."""
    from landmarkloc.demo import Motion, mni_template_path, moved_query

    template_image = read_image(mni_template_path())
    fcn_model = MODELS / "brain-t1-ixi16.safetensors"
    fcn_sha256 = read_metadata(fcn_model)["sha256"]
    fcn_points = Localizer.from_file(fcn_model, device="cpu").localize(template_image)
    query, motion = moved_query(template_image, Motion())
    ref = {p.label: np.array(motion.TransformPoint(tuple(float(v) for v in p.position))) for p in fcn_points.points}
    (scratch / "mni152").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(query, str(scratch / "mni152" / "moved_cropped.nii.gz"))
    row = {"queries": 1, "excluded": {}, "reference_model_sha256": fcn_sha256}
    same_reference = (previous or {}).get("reference_model_sha256") == fcn_sha256
    cached = previous if same_reference else None
    _robust_query("MNI152", query, {"points": ref}, loc, templates, support, extreme, centroids, row, cached)
    return row


def oneshot_robust(queries: int = ROBUST_QUERIES, rows=None, reuse_registration: bool = False) -> None:
    """The robustness table (issue 11): the default one-shot configuration on the MNI152 template (the demo's
    moved, cropped query) and on perturbed IXI test queries, affine registration in the same run.

    ``rows``: labels of the rows to run (default: all, ``ROBUST_MNI`` and the keys of ``ROBUST_ROWS``);
    ``reuse_registration``: registration's scores come from the cached run where it has the query."""
    require_ants("the deformable registration columns of the robustness table")
    previous = (_load("oneshot_robust") or {}).get("rows", {}) if reuse_registration else {}
    train = _lines(RUNS / "ixi" / "train_images.txt")
    test = _lines(RUNS / "ixi" / "test_images.txt")[:queries]
    support_path = train[0]
    support = read_image(support_path)
    support_seg = sitk.Cast(sitk.ReadImage(str(DATA / "ixi" / "seg" / support_path.name)), sitk.sitkUInt16)
    extreme = label_extreme_points(support_seg, list(IXI8.values()), list(IXI8))
    centroids = label_centroids(support_seg, list(IXI16_LABELS.values()), list(IXI16_LABELS))
    loc = OneShotLocator.from_files(MODELS / "brain-t1-rpr-coarse.safetensors", None, device="cpu")
    templates = (loc.make_template(support, extreme), loc.make_template(support, centroids))
    scratch = RUNS / "robust"
    out = {"support": _subject(support_path), "queries": [_subject(q) for q in test], "rows": {},
           "settings": {"bias_coefficients": ROBUST_BIAS_COEFFICIENTS, "dilation_voxels": ROBUST_DILATION_VOXELS,
                        "rotation_deg": ROBUST_ROTATION_DEG, "crop_top": ROBUST_CROP_TOP,
                        "keep_volume": ROBUST_KEEP_VOLUME, "seed": ROBUST_SEED}}
    out["registration_reused"] = bool(previous)
    started = time.perf_counter()
    if rows is None or ROBUST_MNI in rows:
        t0 = time.perf_counter()
        out["rows"][ROBUST_MNI] = _robust_mni(loc, templates, support, extreme, centroids, scratch,
                                              previous.get(ROBUST_MNI))
        out["rows"][ROBUST_MNI]["wall_seconds"] = time.perf_counter() - t0
        _save("oneshot_robust", out)
    for label, perturb in ROBUST_ROWS.items():
        if rows is not None and label not in rows:
            continue
        t0 = time.perf_counter()
        row = {"queries": len(test), "excluded": {}, "bias_range": []}
        folder = scratch / "".join(c if c.isalnum() else "_" for c in label)
        folder.mkdir(parents=True, exist_ok=True)
        for n, path in enumerate(progress(test, desc=label)):
            subject = _subject(path)
            seg = sitk.Cast(sitk.ReadImage(str(DATA / "ixi" / "seg" / path.name)), sitk.sitkUInt16)
            made = perturb(read_image(path), seg, ROBUST_SEED + n)
            image, new_seg = made[0], made[1]
            if len(made) > 2:
                row["bias_range"].append(made[2])
            sitk.WriteImage(image, str(folder / f"{subject}.nii.gz"))
            # the physical content is unchanged (or only cropped): the query's own references hold, except the
            # boxes of the rotated grid (axis-aligned in the new axes: from the label map on that grid); a
            # structure that lost part of its volume to the perturbation is excluded and reported
            labels = sorted(set(IXI8.values()) | set(IXI16_LABELS.values()))
            before, after = _label_volumes(seg, labels), _label_volumes(new_seg, labels)
            same_grid = image.GetSpacing() == seg.GetSpacing() and image.GetDirection() == seg.GetDirection()
            keep = 1.0 if same_grid else ROBUST_KEEP_VOLUME  # a crop on the same grid: any voxel lost counts
            cut = {lab for lab in labels if after[lab] < keep * before[lab] - 1e-6}
            boxes = {b.name: b for b in read_boxes(RUNS / "ixi" / "boxes" / f"{subject}.mrk.json")}
            if image.GetDirection() != seg.GetDirection():
                boxes = {b.name: b for b in label_boxes(new_seg, list(IXI8.values()), list(IXI8))}
            boxes = {k: b for k, b in boxes.items() if IXI8[k] not in cut}
            points = {k: v for k, v in _positions(RUNS / "ixi" / "landmarks" / f"{subject}.mrk.json").items()
                      if IXI16_LABELS[k] not in cut}
            excluded = sorted({k for k, v in {**IXI8, **IXI16_LABELS}.items() if v in cut})
            if excluded:
                row["excluded"][subject] = excluded
            _robust_query(subject, image, {"boxes": boxes, "points": points}, loc, templates, support, extreme,
                          centroids, row, previous.get(label))
        row["wall_seconds"] = time.perf_counter() - t0
        out["rows"][label] = row
        _save("oneshot_robust", out)
    out["total_seconds"] = time.perf_counter() - started
    _save("oneshot_robust", out)


def _robust_report(rob: dict, one: dict | None) -> list:
    settings = rob["settings"]
    n = len(rob["queries"])
    runtime = rob.get("total_seconds") or sum(row.get("wall_seconds", np.nan) for row in rob["rows"].values())
    md = ["## One-shot robustness: the MNI152 template and perturbed IXI test queries", "",
          f"The shipped default one-shot configuration (coarse model + anchor map + NCC search, K = 15, support "
          f"{rob['support']} as above), affine and deformable (ANTs SyN) registration (same support) "
          + ("(its scores from an earlier run on the same perturbed queries: they do not depend on the one-shot "
             "models) " if rob.get("registration_reused") else "in the same run ")
          + "(`python models/recipes/evaluate.py --only oneshot-robust`"
          + (f", {runtime / 60:.0f} min" if np.isfinite(runtime) else "")
          + f"). Perturbed rows: the first {n} test queries "
          f"({rob['queries'][0]} ... {rob['queries'][-1]}); nothing was tuned on them. IoU: IXI-8 boxes (six "
          "located extreme points each, boxes along the query's axes); centroids: IXI-16 structure centroids; "
          "*uncertain*: share of the located points (extreme points and centroids) unselected by the uncertainty "
          "flags; time: median per query for the 8 boxes (excluding model loading and reading; wall time on the "
          "shared 2-core machine).", "",
          "| query | n | IoU rpr | centroids median mm rpr | uncertain | s / query rpr | IoU registration | "
          "centroids median mm registration | s / query registration | IoU SyN | centroids median mm SyN | "
          "s / query SyN | structures excluded |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cells(cfg: dict | None, subjects=None) -> tuple:
        if cfg is None:  # a cache from before the deformable columns
            return "–", "–", "–"
        keep = (lambda d: d) if subjects is None else (lambda d: {k: v for k, v in d.items() if k in subjects})
        ious = [v if not isinstance(v, dict) else v["iou"] for case in keep(cfg["boxes"]).values()
                for v in case.values()]
        errors = [e for case in keep(cfg["points"]).values() for e in case.values()]
        seconds = cfg["seconds"] if subjects is None else [
            s for k, s in zip(cfg["boxes"], cfg["seconds"]) if k in subjects]
        return (f"{np.mean(ious):.3f}" if ious else "–", f"{np.median(errors):.2f}" if errors else "–",
                f"{np.median(seconds):.2f}" if seconds else "–")

    if one and ONESHOT_DEFAULT in one["configs"]:
        subjects = set(rob["queries"])
        rpr, reg = one["configs"][ONESHOT_DEFAULT], one["configs"]["registration (affine)"]
        records = rpr.get("point_records", [])
        per_query = len(records) // max(1, len(rpr["boxes"]))
        flags = "–"
        if per_query * len(rpr["boxes"]) == len(records):
            picked = [r for k, chunk in zip(rpr["boxes"], range(0, len(records), per_query)) if k in subjects
                      for r in records[chunk:chunk + per_query]]
            flags = f"{100 * np.mean([not r['selected'] for r in picked]):.0f}%" if picked else "–"
        a, b, c = cells(rpr, subjects), cells(reg, subjects), cells(one["configs"].get(DEFORMABLE), subjects)
        md.append(f"| unperturbed (the same queries, from the one-shot test section above) | {len(subjects)} | "
                  f"{a[0]} | {a[1]} | {flags} | {a[2]} | {b[0]} | {b[1]} | {b[2]} | {c[0]} | {c[1]} | {c[2]} | – |")
    for label, row in rob["rows"].items():
        a, b, c = cells(row["rpr"]), cells(row["registration"]), cells(row.get("deformable"))
        share = f"{100 * (1 - np.mean(row['rpr']['selected'])):.0f}%" if row["rpr"]["selected"] else "–"
        excluded = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["excluded"].items())
        excluded = excluded or ("–" if label == ROBUST_MNI else "none")
        md.append(f"| {label} | {row['queries']} | {a[0]} | {a[1]} | {share} | {a[2]} | {b[0]} | {b[1]} | {b[2]} | "
                  f"{c[0]} | {c[1]} | {c[2]} | {excluded} |")
    bias = rob["rows"].get("strong bias field", {}).get("bias_range")
    md += ["", "Rows:", "",
           "* **MNI152 template**: the demo's query (nilearn's MNI152 2009c T1 template moved by the demo's known "
           "rigid motion and cropped, `landmarkloc.demo.moved_query`) with the IXI support. The template has no "
           "label map: the reference for the IXI-16 centroids is the 16 points that `brain-t1-ixi16` places on "
           "the unmoved template (an FCN estimate, not a segmentation centroid), carried by the known motion; no "
           "boxes can be scored (–); time is for the 16 centroids.",
           "* **resampled to 1 mm**: linear resampling of the 2 mm images to 1 mm over the same field of view; "
           "references unchanged (the same physical content).",
           f"* **strong bias field**: TorchIO `RandomBiasField(coefficients={settings['bias_coefficients']:g}, "
           f"order=3)` (default strength 0.5), seeded per query ({settings['seed']} + query index)"
           + (f"; the field's 99th / 1st percentile inside the brain: median ratio {np.median(bias):.1f}"
              if bias else "") + ".",
           f"* **skull-stripped**: the query's own label map > 0, dilated by {settings['dilation_voxels']} voxels, "
           "as the mask (the support keeps its skull).",
           f"* **rotated {settings['rotation_deg']:g}°**: the same physical content resampled onto a grid rotated "
           f"by {settings['rotation_deg']:g}° about the left-right axis through the image centre (the direction "
           "matrix changes): the anatomy is tilted relative to the image axes, as a nodding head in the scanner. "
           "Reference points are unchanged; reference boxes are the label map's boxes on the rotated grid "
           "(nearest-neighbour), along its axes, like the located boxes.",
           f"* **top {100 * settings['crop_top']:g}% cut off**: the superior {100 * settings['crop_top']:g}% of "
           "the field of view (along the image axis closest to S) removed; a structure that loses any voxel to the "
           "crop is excluded from the scores (listed).", ""]
    return md
