"""``landmarkloc calibrate``: fit a FCN model's calibrated uncertainty on its validation images.

Localizes every validation image (with the test-time-augmented local passes),
measures how well each uncertainty signal separates errors above the radius from
the rest (AUC, Spearman with the error), chooses a few signals by cross-validation
over images, fits a logistic regression P(error > radius), chooses the threshold
on the out-of-fold probabilities to catch the wanted share of large errors within
a flag budget, and writes it all into the model's JSON metadata (the weights and
their sha256 are unchanged). See docs/fcn.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, InputWarning
from ..geometry.frames import to_point3
from ..geometry.resample import canonical_direction
from ..geometry.shifts import BRAIN_SHIFTS, CEPH_SHIFTS, SHIFTS, get_shift
from ..inference.fcn_shape import ShapeModel
from ..inference.fcn_uncertainty import (
    LOCAL_ONLY,
    SIGNALS,
    TTA_SIGNALS,
    auc,
    beyond_guards,
    choose_guards,
    choose_threshold,
    conformal_quantile,
    fit_part,
    landmark_rates,
    logistic_probability,
    operating_point,
    spearman,
)
from ..io.atomic import write_text_atomic
from ..io.datasets import load_dataset
from ..io.image import check_spacing_applies
from ..io.modelfile import model_paths, read_metadata
from ..runtime import progress
from . import add_device_argument, add_quiet_argument, add_spacing_argument, parse_spacing

EXAMPLE = """examples:
  landmarkloc calibrate models/brain-t1-ixi16.json --val runs/ixi/val.csv --masked-copies --radius 3 \\
      --max-flagged 0.10
  landmarkloc calibrate models/ceph-isbi19.json --val runs/ceph/train.csv --held-out --spacing 0.1 --radius 4 \\
      --max-flagged 0.25
  (--held-out: the validation images are those train-fcn held out of this training dataset, chosen with the
   seed and fraction recorded in the model; --records keeps the localizations for a rerun with other settings,
   and is ignored when they came from other weights)
"""
REFINE_EXTRA = ("global_local_mm",)  # in refine: how far the local stage moved the user's point


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a FCN model's calibrated uncertainty on validation images",
                       description="Fit P(error > radius) per point from the model's uncertainty signals on "
                       "validation images and store it (with the flag threshold) in the model's metadata.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model .safetensors or .json (its JSON is updated)")
    p.add_argument("--val", required=True, help="validation dataset (folder, CSV list or pixel table)")
    p.add_argument("--held-out", action="store_true",
                   help="--val is the training dataset: use the images train-fcn held out of it")
    add_spacing_argument(p)
    p.add_argument("--masked-copies", action="store_true",
                   help="also localize each image with its mask applied (CSV 'mask' column), e.g. skull-stripped")
    p.add_argument("--shifts", help="also localize each image changed as clinical images differ (comma-separated "
                   "names of landmarkloc.geometry.shifts, or 'brain' / 'ceph' for their sets, each with '*N' for N "
                   f"copies with other random draws, e.g. ceph*3; known: "
                   f"{', '.join(SHIFTS)}), so that the calibration sees the large errors such images cause; "
                   "--max-flagged counts the unshifted images only")
    p.add_argument("--coverage", type=float, default=0.9,
                   help="share of points whose true position the error radius holds (default 0.9)")
    p.add_argument("--radius", type=float, help="error radius in mm that makes a point 'wrong' "
                   "(default: the model's current calibration radius)")
    p.add_argument("--catch", type=float, default=0.7, help="share of errors above the radius to flag (0.7)")
    p.add_argument("--max-flagged", type=float, default=0.1, help="most points to flag (share, default 0.1)")
    p.add_argument("--signals", help="comma-separated signals to use (default: chosen by cross-validation); "
                   f"known: {', '.join(SIGNALS)}")
    p.add_argument("--tta", action="store_true",
                   help="also consider the test-time-augmented local signals (local_shift/recentre/contrast/"
                   "mirror_mm); localize then runs extra local passes (slower; off by default)")
    p.add_argument("--max-signals", type=int, default=3, help="at most this many signals (default 3)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over images (default 5)")
    p.add_argument("--records", help="JSON file of the localizations: read if it exists, else written")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the model file as it is")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------- collection


def held_out_split(meta: dict) -> tuple:
    """(fraction, seed) with which train-fcn held validation images out of the training images."""
    cfg = meta.get("train_config") or {}
    if (meta.get("training_data") or {}).get("validation_held_out") is False:
        raise InputError("--held-out: this model was validated on images given apart at training (train-fcn "
                         "--val); give those images as --val, without --held-out")
    if "seed" not in cfg or "val_fraction" not in cfg:
        raise InputError("--held-out needs the model's train_config (seed, val_fraction); give --val instead")
    return float(cfg["val_fraction"]), int(cfg["seed"])


def validation_cases(dataset, split: tuple | None) -> list:
    """All of ``dataset``, or the images train-fcn held out of it (``split``: fraction, seed)."""
    if split is None:
        return list(dataset.cases)
    from ..training.fcn import held_out_indices

    return [dataset.cases[i] for i in held_out_indices(len(dataset.cases), *split)]


FEW_LARGE_ERRORS = 10  # below this many errors above the radius, a calibration's AUC and catch rate mean little


def warn_if_few_large_errors(records: list, radius: float, catch: float) -> None:
    """A calibration on a handful of large errors reports a fine AUC and 'targets met' by chance: say how many it
    rests on and how uncertain its catch rate is (one binomial standard error at the target)."""
    found = [r for r in records if r["found"]]
    large = sum(r["error_mm"] > radius for r in found)
    if 0 < large < FEW_LARGE_ERRORS:
        spread = np.sqrt(catch * (1.0 - catch) / large)
        warnings.warn(f"the calibration rests on only {large} validation points with an error above {radius:g} mm "
                      f"(of {len(found)} found): its catch rate is uncertain by about +-{spread:.0%} (one standard "
                      f"error at the {catch:.0%} target); use more validation images or a smaller --radius "
                      f"({FEW_LARGE_ERRORS} or more such errors advised)", InputWarning, stacklevel=2)


def collect(model_path, cases, names, spacing=None, masked_copies=False, device="cpu", quiet=False,
            shifts=()) -> list:
    """One record per (image, landmark): image name, landmark, error (mm), every signal and what was written.

    ``shifts``: names of :mod:`landmarkloc.geometry.shifts` under which each image is localized too (the
    same subject, so cross-fitting keeps its copies in one fold); the points keep their positions.
    """
    from ..inference.fcn import Localizer

    loc = Localizer.from_file(model_path, device=device)
    shift_list = [(tag, get_shift(tag.split("#")[0])) for tag in shifts]  # unknown names refused before any work
    records = []
    for index, case in enumerate(progress(cases, desc="localize validation images", quiet=quiet)):
        image, truth = case.load(names, spacing)
        # the axes of the unshifted image's model grid: the references' pose as the networks saw it
        ndim = image.GetDimension()
        grid_direction = canonical_direction(np.reshape(image.GetDirection(), (ndim, ndim))).ravel().tolist()
        mask = sitk.ReadImage(str(case.mask_path)) if case.mask_path is not None else None
        tags = [""] + (["masked"] if masked_copies and mask is not None else []) + [
            tag for tag, s in shift_list if s.kind != "mask" or mask is not None]
        for tag in tags:
            if tag == "":
                shown = image
            elif tag == "masked":
                shown = sitk.Mask(image, sitk.Cast(mask > 0, sitk.sitkUInt8))
            else:  # made one at a time: a 600 mm field of view is large; copy k of a shift: its own seed
                name, _, copy = tag.partition("#")
                shown = get_shift(name).apply(image, mask, seed=index + 1000 * int(copy or 0))
            result = loc.localize(shown, tta=True)
            for n, lm in enumerate(result.landmarks):
                if not np.all(np.isfinite(truth[n])):
                    continue
                error = float(np.linalg.norm(lm.position - to_point3(truth[n])))
                records.append({"image": case.name + (f"/{tag}" if tag else ""), "subject": case.name,
                                "shift": tag, "landmark": lm.name, "found": bool(lm.found), "error_mm": error,
                                "position": [float(v) for v in lm.position],
                                "reference": [float(v) for v in to_point3(truth[n])],
                                "uncertain": bool(lm.uncertain), "unlike_training": bool(lm.unlike_training),
                                "p_large_error": lm.p_large_error, "error_radius_mm": lm.error_radius_mm,
                                "grid_direction": grid_direction,
                                "signals": lm.signals})
    return records


# ----------------------------------------------------------------------------------------- fitting


def _table(records: list, names, rates: dict | None = None) -> dict:
    """Signal columns; ``landmark_rate`` comes from ``rates`` (per-landmark large-error shares)."""
    table = {n: np.array([r["signals"][n] for r in records]) for n in names if n != "landmark_rate"}
    if "landmark_rate" in names:
        default = float(np.mean(list(rates.values()))) if rates else 0.0
        table["landmark_rate"] = np.array([rates.get(r["landmark"], default) for r in records])
    return table


def _rates(records: list, large: np.ndarray) -> dict:
    return landmark_rates([r["landmark"] for r in records], large)


def _folds(records: list, k: int) -> np.ndarray:
    subjects = sorted({r["subject"] for r in records})
    order = np.random.default_rng(0).permutation(len(subjects))
    fold_of = {subjects[i]: f % k for f, i in enumerate(order)}
    return np.array([fold_of[r["subject"]] for r in records])


def out_of_fold(records: list, large: np.ndarray, names: list, folds: np.ndarray) -> np.ndarray:
    """Probabilities of each point from a model fitted without its image's fold."""
    prob = np.zeros(len(records))
    for f in np.unique(folds):
        train = folds != f
        if large[train].sum() < 2 or (~large[train]).sum() < 2:
            prob[~train] = large[train].mean()
            continue
        train_records = [r for r, t in zip(records, train) if t]
        table = _table(records, names, _rates(train_records, large[train]))
        part = fit_part({k: v[train] for k, v in table.items()}, large[train], names)
        prob[~train] = logistic_probability(part, {k: v[~train] for k, v in table.items()})
    return prob


def select_signals(records: list, large: np.ndarray, candidates: list, folds: np.ndarray, most: int) -> tuple:
    """Greedy forward selection by out-of-fold AUC; stops when a signal adds less than 0.005."""
    chosen, best, trace = [], 0.5, []
    while len(chosen) < most:
        scores = {c: auc(out_of_fold(records, large, chosen + [c], folds), large) for c in candidates
                  if c not in chosen}
        if not scores:
            break
        name = max(scores, key=scores.get)
        if scores[name] < best + 0.005:
            break
        chosen.append(name)
        best = scores[name]
        trace.append({"signals": list(chosen), "out_of_fold_auc": round(best, 4)})
    return chosen, trace


UNSHIFTED = ("", "masked")  # the images as given (and their masked copies): the flag budget counts these


def unshifted(records: list) -> np.ndarray:
    return np.array([r.get("shift", "") in UNSHIFTED for r in records])


def fit(records: list, radius: float, catch: float, max_flagged: float, candidates: list, most: int,
        k: int, fixed=None, measured=None, coverage: float | None = None) -> dict:
    """Choose signals among ``candidates``, fit, choose the threshold; discrimination of all ``measured``.

    With ``coverage`` (the localize part) also the guards and the conformal error radius: guarded points
    count as flagged when the threshold is chosen, and the radius is fitted per group (flagged or not,
    out of fold; per landmark for the points not flagged).
    """
    measured = measured or candidates
    found = [r for r in records if r["found"]]
    errors = np.array([r["error_mm"] for r in found])
    large = errors > radius
    if large.sum() < 3:
        raise InputError(f"only {int(large.sum())} validation points have an error above {radius:g} mm: "
                         "too few to calibrate (use more validation images or a smaller radius)")
    rates = _rates(found, large)
    table = _table(found, measured, rates)
    folds = _folds(found, k)
    discrimination = {n: {"auc": round(auc(table[n], large), 4), "spearman": round(spearman(table[n], errors), 4)}
                      for n in measured}
    # the per-landmark prior is fitted on these very points: report its out-of-fold discrimination
    if "landmark_rate" in measured:
        discrimination["landmark_rate"]["auc"] = round(auc(out_of_fold(found, large, ["landmark_rate"], folds),
                                                           large), 4)
    if fixed:
        chosen, trace = list(fixed), []
    else:
        chosen, trace = select_signals(found, large, candidates, folds, most)
    part = fit_part(table, large, chosen)
    oof = out_of_fold(found, large, chosen, folds)
    counted = unshifted(found)
    guards = {}
    if coverage is not None:
        signals = {n: np.array([r["signals"][n] for r in found]) for n in found[0]["signals"]}
        guards = choose_guards(signals, counted)
        guarded = beyond_guards(guards, signals)
        oof = np.where(guarded, 1.0, oof)
    op = choose_threshold(oof, large, catch, max_flagged, counted)
    part["threshold"] = round(op["threshold"], 6)
    in_sample_p = logistic_probability(part, table)
    if guards:
        in_sample_p = np.where(guarded, 1.0, in_sample_p)
    in_sample = operating_point(in_sample_p, large, part["threshold"], counted)
    summary = {"points": len(found), "large_errors": int(large.sum()), "not_found": len(records) - len(found),
               "images": len({r["image"] for r in found}), "subjects": len({r["subject"] for r in found}),
               "unshifted_points": int(counted.sum()), "large_errors_unshifted": int(large[counted].sum()),
               "signal_discrimination": discrimination, "selection": trace,
               "out_of_fold": {**op, "auc": round(auc(oof, large), 4)},
               "in_sample": {**in_sample, "auc": round(auc(in_sample_p, large), 4)}}
    out = {"part": part, "summary": summary, "oof": oof, "large": large, "rates": rates, "guards": guards}
    if coverage is not None:
        out["error_radius"], summary["with_radius"] = error_radius(found, errors, oof >= op["threshold"], radius,
                                                                    large, counted, coverage)
    return out


def error_radius(found: list, errors: np.ndarray, flagged: np.ndarray, tolerance: float, large: np.ndarray,
                 counted: np.ndarray, coverage: float) -> tuple:
    """(the conformal radius part of the calibration, the operating point once radii above ``tolerance`` flag
    their points too, with each group's size)."""
    names = np.array([r["landmark"] for r in found])
    per = {str(n): round(conformal_quantile(errors[~flagged & (names == n)], coverage), 3)
           for n in np.unique(names)}
    part = {"coverage": coverage, "flagged_mm": round(conformal_quantile(errors[flagged], coverage), 3),
            "landmarks_mm": per, "points_flagged": int(flagged.sum()), "points_not_flagged": int((~flagged).sum())}
    radius = np.where(flagged, part["flagged_mm"], np.array([per[n] for n in names]))
    final = flagged | (radius > tolerance)
    op = operating_point(final.astype(float), large, 0.5, counted)
    op["radius_above_tolerance"] = sorted(n for n, v in per.items() if v > tolerance)
    return part, op


def run(args) -> int:
    meta = read_metadata(args.model)
    if meta.get("kind") != "fcn":
        raise InputError("calibrate needs an FCN landmark model")
    radius = args.radius or (meta.get("calibration") or {}).get("radius_mm")
    if not radius:
        raise InputError("give --radius (mm): the error above which a point counts as wrong")
    spacing = parse_spacing(args.spacing)
    split = held_out_split(meta) if args.held_out else None  # refused before any image is read
    fixed = [s.strip() for s in args.signals.split(",")] if args.signals else None
    for s in fixed or []:
        if s not in SIGNALS:
            raise InputError(f"unknown signal {s!r} (known: {', '.join(SIGNALS)})")
    shifts = shift_names(args.shifts)
    records_path = Path(args.records) if args.records else None
    stored = json.loads(records_path.read_text()) if records_path and records_path.exists() else None
    if stored is not None and stored.get("sha256") not in (None, meta["sha256"]):
        print(f"{records_path} holds the localizations of another model (sha256 differs): localizing again")
        stored = None
    if stored is not None and list(stored.get("shifts", [])) != shifts:
        print(f"{records_path} holds the localizations under other shifts: localizing again")
        stored = None
    if stored is not None and bool(stored.get("masked_copies", False)) != bool(args.masked_copies):
        print(f"{records_path} holds the localizations {'without' if args.masked_copies else 'with'} masked copies: "
              "localizing again")
        stored = None
    if stored is not None:
        records = stored["records"]
        print(f"read {len(records)} localized points from {records_path}")
    else:
        dataset = load_dataset(args.val)
        check_spacing_applies([c.image_path for c in dataset.cases], spacing)
        if list(dataset.names) != list(meta["landmark_names"]) and not set(meta["landmark_names"]) <= set(
                dataset.names):
            raise InputError("the validation dataset lacks some of the model's landmarks")
        cases = validation_cases(dataset, split)
        records = collect(args.model, cases, meta["landmark_names"], spacing, args.masked_copies, args.device,
                          args.quiet, shifts)
        if records_path:
            write_text_atomic(records_path, json.dumps({"model": str(args.model), "sha256": meta["sha256"],
                                                        "shifts": shifts, "masked_copies": bool(args.masked_copies),
                                                        "records": records}) + "\n")
    warn_if_few_large_errors(records, radius, args.catch)
    shape = add_shape_signal(records, meta["landmark_names"])
    measured = [n for n in SIGNALS if n != "landmark_rate" and all(n in r["signals"] for r in records)]
    candidates = [n for n in measured
                  if (args.tta or n not in TTA_SIGNALS or n in (fixed or []))] + ["landmark_rate"]
    main = fit(records, radius, args.catch, args.max_flagged, candidates, args.max_signals, args.folds, fixed,
               measured + ["landmark_rate"], coverage=args.coverage)
    refine_candidates = [n for n in candidates if n in LOCAL_ONLY + REFINE_EXTRA]
    refine = fit(records, radius, args.catch, args.max_flagged, refine_candidates, args.max_signals, args.folds,
                 [s for s in fixed if s in refine_candidates] if fixed else None,
                 [n for n in measured + ["landmark_rate"] if n in LOCAL_ONLY + REFINE_EXTRA])
    _report(main["summary"], main["part"], radius, "localize", main["guards"], main["error_radius"])
    _report(refine["summary"], refine["part"], radius, "refine (local stage only)")
    calibration = {
        "radius_mm": float(radius), **main["part"],
        "landmark_rates": {k: round(v, 4) for k, v in main["rates"].items()},
        "guards": main["guards"], "error_radius": main["error_radius"],
        "refine": {**refine["part"], "fit": refine["summary"]},
        "fit": {**main["summary"], "dataset": str(args.val), "held_out": bool(args.held_out),
                "masked_copies": bool(args.masked_copies), "shifts": shifts, "targets": {"catch": args.catch,
                                                                      "max_flagged": args.max_flagged},
                "date": datetime.date.today().isoformat()},
        "definitions": {n: SIGNALS[n][0] for n in main["part"]["signals"] + refine["part"]["signals"]},
    }
    if args.dry_run:
        print("dry run: the model file is unchanged")
        return 0
    _, meta_path = model_paths(args.model)
    meta = read_metadata(args.model)  # re-read: the weights' sha256 stays as it is
    meta["calibration"] = calibration
    if shape is not None:
        meta["shape"] = shape.to_metadata()
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    print(f"wrote the calibration into {meta_path}")
    return 0


def shift_names(text: str | None) -> list:
    """--shifts: names, or 'brain' / 'ceph' for the sets of issue 24's targets, each optionally '*N' for N
    copies with other random draws (tags NAME, NAME#1, ...); unknown names refused."""
    tags = []
    for item in (text or "").split(","):
        name, _, count = item.strip().partition("*")
        if not name:
            continue
        try:
            copies = int(count or 1)
        except ValueError:
            raise InputError(f"--shifts: {item.strip()!r}: the number after '*' must be a whole number") from None
        sets = {"brain": BRAIN_SHIFTS, "ceph": CEPH_SHIFTS}
        for base in (list(sets[name]) if name in sets else [get_shift(name).name]):
            tags += [base] + [f"{base}#{k}" for k in range(1, copies)]
    return tags


def add_shape_signal(records: list, names) -> ShapeModel | None:
    """Fit the mean landmark configuration on the reference points of the unshifted images and add each
    point's ``shape_residual_mm`` to its signals (as ``Localizer`` computes it); None when records lack
    positions (from an older version) or too few images have every landmark."""
    if not records or "position" not in records[0]:
        return None
    index = {n: i for i, n in enumerate(names)}
    by_image: dict = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    ndim = 2 if all(abs(r["reference"][2]) < 1e-9 for r in records) else 3

    def shape_of(rs, key):
        out = np.full((len(names), ndim), np.nan)
        for r in rs:
            if key == "reference" or r["found"]:
                out[index[r["landmark"]]] = r[key][:ndim]
        return out

    clean = [rs for rs in by_image.values() if rs[0].get("shift", "") == ""]
    grids = None
    # each reference shape in its model grid's axes, for the pose; 3D only: on cephalograms a radiograph turned
    # by its pose lost accuracy on validation (one image 1.18 -> 3.65 mm median), where the networks' own
    # rotation augmentation already covers the poses met
    if ndim == 3 and all("grid_direction" in rs[0] for rs in clean):
        grids = [shape_of(rs, "reference") @ np.reshape(rs[0]["grid_direction"], (ndim, ndim)) for rs in clean]
    try:
        shape = ShapeModel.fit(names, [shape_of(rs, "reference") for rs in clean], grid_shapes=grids)
    except ValueError:
        return None
    for rs in by_image.values():
        residual = shape.residuals(shape_of(rs, "position"))
        for r in rs:
            value = residual[index[r["landmark"]]]
            r["signals"]["shape_residual_mm"] = float(value) if np.isfinite(value) else 1e3
    return shape


def _report(summary: dict, part: dict, radius: float, what: str, guards=None, error_radius=None) -> None:
    print(f"\n{what}: {summary['points']} points from {summary['images']} images, "
          f"{summary['large_errors']} with error > {radius:g} mm ({summary['not_found']} not found, left out)")
    print(f"  {'signal':22s} {'AUC':>6s} {'Spearman':>9s}   (AUC of the signal for error > {radius:g} mm; "
          "below 0.5: smaller values mean larger errors)")
    for name, d in summary["signal_discrimination"].items():
        print(f"  {name:22s} {d['auc']:6.3f} {d['spearman']:+9.3f}")
    print(f"  chosen: {', '.join(part['signals'])}; coefficients {part['coefficients']}, "
          f"intercept {part['intercept']}")
    oof, ins = summary["out_of_fold"], summary["in_sample"]
    print(f"  threshold {part['threshold']:.3f}: out-of-fold AUC {oof['auc']:.3f}, flags {oof['flagged']:.1%}, "
          f"catches {oof['caught']:.1%} of errors > {radius:g} mm (targets {'met' if oof['met'] else 'NOT met'}); "
          f"in-sample flags {ins['flagged']:.1%}, catches {ins['caught']:.1%}"
          + (" (flags counted on the unshifted images)" if summary["unshifted_points"] < summary["points"] else ""))
    if guards:
        print("  guards (never reliable beyond): " + ", ".join(
            f"{name} {side} {value:g}" for name, g in guards.items() for side, value in g.items()))
    if "with_radius" in summary:
        op, r = summary["with_radius"], error_radius
        print(f"  error radius ({r['coverage']:.0%}): flagged points {r['flagged_mm']:g} mm, others per landmark "
              f"{min(r['landmarks_mm'].values()):g}-{max(r['landmarks_mm'].values()):g} mm; with radii above "
              f"{radius:g} mm flagged too: flags {op['flagged']:.1%}, catches {op['caught']:.1%}"
              + (f" ({', '.join(op['radius_above_tolerance'])} always uncertain)" if op["radius_above_tolerance"]
                 else ""))
