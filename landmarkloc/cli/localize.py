"""``landmarkloc localize``: landmarks of one or more images with a trained FCN model."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError, LandmarkLocError
from ..io.atomic import check_writable, write_text_atomic
from ..io.image import check_image_file, check_spacing_applies, read_image, write_image
from ..io.markups import write_points
from ..io.modelfile import read_metadata
from ..memory import check_fits_in_memory
from ..runtime import progress
from . import (
    Terminated,
    about,
    add_device_argument,
    add_quiet_argument,
    add_series_argument,
    add_spacing_argument,
    model_help,
    parse_spacing,
)
from .cohorts import existing_output_rows, parse_shard, read_input_list, summary_rows, take_shard, write_summary
from .outputs import check_outputs_are_not_inputs, model_files, output_paths

FORMATS = {"mrk.json": ".mrk.json", "fcsv": ".fcsv", "csv": ".csv"}
EVIDENCE_LIMIT_GB = 2.0
EXIT_SOME_FAILED = 1  # with --summary: the run went on past inputs that failed, listed in the summary

EXAMPLE = """examples:
  landmarkloc localize IXI002.nii.gz --model brain-t1-ixi16 -o IXI002.mrk.json
  landmarkloc localize ceph/images/15*.jpg --spacing 0.1 --model ceph.json -o out/ --format csv --evidence
  landmarkloc localize --input-list cohort.txt --model brain-t1-ixi16 -o results/ --shard 3/50 \\
      --skip-existing --summary results/summary_3.csv     (one job of a cluster array: docs/cohorts.md)
  (-o a folder (or several inputs): one file per input named after it; landmarks that are not found,
   e.g. outside the field of view, are left out and reported; uncertain ones are written unselected)
"""


def register(sub) -> None:
    p = sub.add_parser("localize", help="localize landmarks with a trained FCN model",
                       description="Localize the model's landmarks (global-to-local FCN) in each input image; "
                       "points are written in the input's physical space (LPS) with a confidence per point.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="input image files or DICOM folders")
    p.add_argument("--model", required=True, help=model_help("FCN model", ("fcn",)))
    p.add_argument("-o", "--output", required=True,
                   help="output file (one input), or a folder: one file per input, named after it")
    add_spacing_argument(p)
    p.add_argument("--format", choices=list(FORMATS), default=None,
                   help="output format (default: from the output file name, else mrk.json)")
    p.add_argument("--evidence", action="store_true",
                   help="also write each landmark's classification posterior (NRRD on the input grid) "
                   "and its votes (CSV: LPS x, y, z, weight); the size is announced before any work")
    p.add_argument("--evidence-limit-gb", type=float, default=EVIDENCE_LIMIT_GB,
                   help=f"refuse --evidence when its posteriors would exceed this many GB, uncompressed "
                   f"(default {EVIDENCE_LIMIT_GB:g}; 16 landmarks on a 0.5 mm head volume take several GB)")
    p.add_argument("--global-only", action="store_true", help="skip the local refinement stage")
    p.add_argument("--input-list", metavar="FILE",
                   help="more inputs: a text file with one path per line, or a .csv file (its --input-column); "
                   "relative paths are relative to the list's folder")
    p.add_argument("--input-column", default="image", help="the column of a .csv --input-list (default: image)")
    p.add_argument("--shard", metavar="I/N", help="do only the I-th of N shares of the inputs (I from 1 to N; every "
                   "N-th input from the I-th), e.g. one per job of a cluster job array")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose output file exists (a rerun resumes; written last, it is complete)")
    p.add_argument("--summary", metavar="FILE.csv",
                   help="one CSV for the run: each input's landmarks (LPS position, flags) or its error. With it, "
                   "an input that fails is recorded there and the others are done (exit code 1 at the end)")
    add_series_argument(p)
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _output_paths(images, output, fmt) -> list:
    suffixes = (FORMATS[fmt],) if fmt else tuple(FORMATS.values())
    return output_paths(images, output, FORMATS[fmt or "mrk.json"], suffixes)


def _without_format_suffix(path: Path) -> str:
    for suffix in FORMATS.values():
        if path.name.lower().endswith(suffix):
            return str(path)[: -len(suffix)]
    return str(path)


def _write_votes(path: Path, positions: np.ndarray, weights: np.ndarray) -> None:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["x_lps", "y_lps", "z_lps", "weight"])
    w.writerows([f"{p[0]:.4f}", f"{p[1]:.4f}", f"{p[2]:.4f}", f"{q:.6g}"] for p, q in zip(positions, weights))
    write_text_atomic(path, out.getvalue())


def _check_evidence_size(sizes, landmarks: int, args) -> None:
    """--evidence writes one float32 posterior per landmark on each input's grid and holds one image's at once:
    announce the size, refuse it above --evidence-limit-gb, and refuse what would not fit in memory."""
    voxels = [float(np.prod(size)) for size in sizes]
    total = 4.0 * landmarks * sum(voxels)
    check_fits_in_memory(4.0 * landmarks * max(voxels), f"--evidence ({landmarks} posterior images of the largest "
                         "input)")
    size = f"{total / 1e9:.1f} GB" if total >= 1e8 else f"{total / 1e6:.1f} MB"
    if total > args.evidence_limit_gb * 1e9:
        raise InputError(f"--evidence would write about {size} ({landmarks} posterior images per input, "
                         f"uncompressed), more than --evidence-limit-gb {args.evidence_limit_gb:g}; raise it to "
                         "write them, or leave out --evidence")
    if not args.quiet:
        print(f"--evidence: {landmarks} posterior images per input, up to {size} in all (uncompressed)")


def _inputs(args) -> list:
    images = list(args.images) + (read_input_list(args.input_list, args.input_column) if args.input_list else [])
    if not images:
        raise InputError("give input images, or --input-list FILE")
    return images


def _cohort_files(args, images, outputs) -> tuple:
    """(inputs, outputs) as ``(option, path)`` for the rule that no output is an input of the run."""
    inputs = [("image", p) for p in images] + model_files("--model", args.model)
    if args.input_list:
        inputs.append(("--input-list", args.input_list))
    return inputs, [("-o", p) for p in outputs] + ([("--summary", args.summary)] if args.summary else [])


def run(args) -> int:
    from ..inference.fcn import Localizer

    images = _inputs(args)
    outputs = _output_paths(images, args.output, args.format)  # over the whole list: shards never share a file
    if args.summary and not str(args.summary).lower().endswith(".csv"):
        raise InputError(f"--summary {args.summary} does not end with .csv")
    check_outputs_are_not_inputs(*_cohort_files(args, images, outputs))
    work = list(zip(images, outputs))
    if args.shard:
        work = take_shard(work, *parse_shard(args.shard))
    spacing = parse_spacing(args.spacing)
    check_spacing_applies(images, spacing)
    names = list(read_metadata(args.model).get("landmark_names", []))
    rows = {}  # image -> its summary rows
    failed = []
    todo = work
    if args.skip_existing:
        todo = [(image, out) for image, out in work if not Path(out).is_file()]
        for image, out in (pair for pair in work if pair not in todo):
            rows[image] = existing_output_rows(image, out, names)
        if len(todo) < len(work):
            print(f"skipped {len(work) - len(todo)} image(s) whose output exists (--skip-existing)")
    # Everything checkable without the voxels is checked first, so a bad input or output path is
    # reported before any work and before any file is written; with --summary a bad input is recorded there
    # and the others are done.
    sizes, ready = [], []
    for image_path, out_path in todo:
        check_writable(out_path)
        try:
            with about(Path(image_path)):
                sizes.append(check_image_file(image_path, args.series))
            ready.append((image_path, out_path))
        except LandmarkLocError as exc:
            if not args.summary:
                raise
            failed.append((image_path, str(exc)))
    if args.summary:
        check_writable(args.summary)
    if args.evidence and ready:
        _check_evidence_size(sizes, len(names), args)
    try:
        if ready:
            _localize_all(args, Localizer, ready, spacing, rows, failed)
    except (KeyboardInterrupt, Terminated):
        if args.summary:  # a job stopped by its time limit still says what it did
            _write_summary(args, work, rows, failed)
        raise
    if args.summary:
        _write_summary(args, work, rows, failed)
    if failed:
        print(f"landmarkloc localize: error: {len(failed)} of {len(todo)} image(s) failed (listed in "
              f"{args.summary}); the others are done", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _write_summary(args, work, rows, failed) -> None:
    """The summary in the order of the inputs: each one's landmarks, skipped with its existing output, or failed."""
    rows.update((image, summary_rows(image, "failed", error=error)) for image, error in failed)
    write_summary(args.summary, [row for image, _ in work if image in rows for row in rows[image]])
    print(f"summary of {sum(image in rows for image, _ in work)} image(s) -> {args.summary}")


def _localize_all(args, localizer_class, work, spacing, rows, failed) -> None:
    """Localize each (image, output) of ``work``; their summary rows go to ``rows`` (by image), and with --summary
    a failed image goes to ``failed`` and the others are done."""
    t0 = time.perf_counter()
    localizer = localizer_class.from_file(args.model, args.device)
    print(f"model loaded in {time.perf_counter() - t0:.2f} s ({len(localizer.names)} landmarks, "
          f"device {localizer.device})")
    if localizer.calibration_notice:
        print(f"note: {localizer.calibration_notice}")
    times = []
    for image_path, out_path in progress(work, desc="localize", quiet=args.quiet):
        try:
            with about(Path(image_path)):
                image = read_image(image_path, spacing=spacing, series=args.series)
                result = localizer.localize(image, evidence=bool(args.evidence), use_local=not args.global_only)
            _write_result(args, result, out_path)
        except LandmarkLocError as exc:
            if not args.summary:
                raise
            failed.append((image_path, str(exc)))
            continue
        times.append(result.seconds)
        rows[image_path] = summary_rows(image_path, "done", out_path, result.points, localizer.names)
        message = f"{image_path}: {len(result.points)} landmarks in {result.seconds:.3f} s -> {out_path}"
        if result.not_found:
            message += f"; not found: {', '.join(result.not_found)}"
        uncertain = [lm.name for lm in result.landmarks if lm.found and lm.uncertain]
        if uncertain:
            message += f"; uncertain: {', '.join(uncertain)}"
        if result.pose_turned_deg is not None:
            message += f"; the anatomy was tilted by {result.pose_turned_deg:.0f} degrees: localized on a turned grid"
        print(message)
        for warning in result.warnings:
            print(f"landmarkloc localize: warning: {image_path}: {warning}", file=sys.stderr)
    if times:
        print(f"time per image (excluding start-up): mean {np.mean(times):.3f} s, max {np.max(times):.3f} s "
              f"over {len(times)} image(s)")


def _write_result(args, result, out_path) -> None:
    """The evidence first, the points last: an image whose points file exists is complete (--skip-existing)."""
    if args.evidence:
        stem = _without_format_suffix(out_path)
        for name, posterior in result.evidence.items():
            write_image(posterior, f"{stem}_{name}_posterior.nrrd")
            _write_votes(Path(f"{stem}_{name}_votes.csv"), *result.votes[name])
    write_points(out_path, result.points)
