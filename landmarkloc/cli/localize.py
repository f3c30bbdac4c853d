"""``landmarkloc localize``: landmarks of one or more images with a trained FCN model."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import check_writable, write_text_atomic
from ..io.image import check_image_file, check_spacing_applies, read_image, write_image
from ..io.markups import write_points
from ..io.modelfile import read_metadata
from ..memory import check_fits_in_memory
from ..runtime import progress
from . import (
    about,
    add_device_argument,
    add_quiet_argument,
    add_series_argument,
    add_spacing_argument,
    model_help,
    parse_spacing,
)
from .outputs import check_outputs_are_not_inputs, model_files, output_paths

FORMATS = {"mrk.json": ".mrk.json", "fcsv": ".fcsv", "csv": ".csv"}
EVIDENCE_LIMIT_GB = 2.0

EXAMPLE = """examples:
  landmarkloc localize IXI002.nii.gz --model brain-t1-ixi16 -o IXI002.mrk.json
  landmarkloc localize ceph/images/15*.jpg --spacing 0.1 --model ceph.json -o out/ --format csv --evidence
  (-o a folder (or several inputs): one file per input named after it; landmarks that are not found,
   e.g. outside the field of view, are left out and reported; uncertain ones are written unselected)
"""


def register(sub) -> None:
    p = sub.add_parser("localize", help="localize landmarks with a trained FCN model",
                       description="Localize the model's landmarks (global-to-local FCN) in each input image; "
                       "points are written in the input's physical space (LPS) with a confidence per point.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="input image files or DICOM folders")
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
                   f"(default {EVIDENCE_LIMIT_GB:g}; a 0.5 mm head volume with 16 landmarks takes about 4 GB)")
    p.add_argument("--global-only", action="store_true", help="skip the local refinement stage")
    add_series_argument(p)
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _output_paths(images, output: Path, fmt) -> list:
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


def run(args) -> int:
    from ..inference.fcn import Localizer

    outputs = _output_paths(args.images, args.output, args.format)
    spacing = parse_spacing(args.spacing)
    check_outputs_are_not_inputs([("image", p) for p in args.images] + model_files("--model", args.model),
                                 [("-o", p) for p in outputs])
    # Everything checkable without the voxels is checked first, so a bad input or output path is
    # reported before any work and before any file is written.
    sizes = []
    for image_path, out_path in zip(args.images, outputs):
        sizes.append(check_image_file(image_path, args.series))
        check_writable(out_path)
    check_spacing_applies(args.images, spacing)
    if args.evidence:
        _check_evidence_size(sizes, len(read_metadata(args.model).get("landmark_names", [])), args)
    t0 = time.perf_counter()
    localizer = Localizer.from_file(args.model, args.device)
    print(f"model loaded in {time.perf_counter() - t0:.2f} s ({len(localizer.names)} landmarks, "
          f"device {localizer.device})")
    if localizer.calibration_notice:
        print(f"note: {localizer.calibration_notice}")
    times = []
    for image_path, out_path in progress(list(zip(args.images, outputs)), desc="localize", quiet=args.quiet):
        with about(Path(image_path)):
            image = read_image(image_path, spacing=spacing, series=args.series)
            result = localizer.localize(image, evidence=bool(args.evidence), use_local=not args.global_only)
        times.append(result.seconds)
        write_points(out_path, result.points)
        message = f"{image_path}: {len(result.points)} landmarks in {result.seconds:.3f} s -> {out_path}"
        if result.not_found:
            message += f"; not found: {', '.join(result.not_found)}"
        uncertain = [lm.name for lm in result.landmarks if lm.found and lm.uncertain]
        if uncertain:
            message += f"; uncertain: {', '.join(uncertain)}"
        print(message)
        for warning in result.warnings:
            print(f"landmarkloc localize: warning: {image_path}: {warning}", file=sys.stderr)
        if args.evidence:
            stem = _without_format_suffix(out_path)
            for name, posterior in result.evidence.items():
                write_image(posterior, f"{stem}_{name}_posterior.nrrd")
                _write_votes(Path(f"{stem}_{name}_votes.csv"), *result.votes[name])
    if times:
        print(f"time per image (excluding start-up): mean {np.mean(times):.3f} s, max {np.max(times):.3f} s "
              f"over {len(times)} image(s)")
    return 0
