"""``landmarkloc oneshot``: locate a support's points or organ boxes in query images."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, InputWarning
from ..inference.refine_modes import DEFAULT_REFINE_MODE, REFINE_MODES
from ..io.atomic import check_writable
from ..io.image import check_image_file, check_spacing_applies, read_image
from ..io.markups import read_points, write_boxes, write_points
from ..io.modelfile import model_paths, shipped_model_names
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

EXAMPLE = """examples:
  landmarkloc oneshot --query q.nii.gz --support s.nii.gz --support-labels s_seg.nii.gz --labels 35,47,48 \\
      --names BrainStem,Hippocampus_R,Hippocampus_L --model coarse.safetensors --fine-model fine.safetensors \\
      -o q_points.mrk.json --rois q_rois.mrk.json --save-template brain3.safetensors
  landmarkloc oneshot --query a.nii.gz b.nii.gz --template brain3.safetensors --model brain-t1-rpr-coarse \\
      -o out/ --rois out/
  landmarkloc oneshot --refine none --query q.nii.gz --template brain3.safetensors --model brain-t1-rpr-coarse \\
      --fine-model brain-t1-rpr-fine -o q.mrk.json     (the paper's coarse + fine agent, no refinement)
  landmarkloc oneshot --refine ncc --query q.nii.gz --template brain3.safetensors --model brain-t1-rpr-coarse \\
      -o q.mrk.json     (faster, less accurate: no local affine step; also for templates of older versions)
  landmarkloc oneshot --method registration --query q.nii.gz --support s.nii.gz \\
      --support-markups s.mrk.json -o q.mrk.json
  landmarkloc oneshot --query q.nii.gz --support s1.nii.gz --support-labels s1_seg.nii.gz --support s2.nii.gz \\
      --support-labels s2_seg.nii.gz --support s3.nii.gz --support-labels s3_seg.nii.gz --labels 35,47,48 \\
      --model brain-t1-rpr-coarse -o q.mrk.json --rois q_rois.mrk.json     (few-shot: median of 3 supports)
  landmarkloc oneshot --method deformable --query q.nii.gz --support s.nii.gz \\
      --support-labels s_seg.nii.gz --labels 35,47 -o q.mrk.json --rois q_rois.mrk.json   (ANTs SyN)
  (-o and --rois folders (needed for several queries): QUERY.mrk.json / QUERY_rois.mrk.json)
"""


def register(sub) -> None:
    p = sub.add_parser("oneshot", help="one-shot localization of points / organ boxes from one annotated support",
                       description="Locate the points of a support image (a markups file, or the six extreme "
                       "points of label-map organs) in query images with relative position regression (Lei et "
                       "al. 2021), or with the template matching (ncc), registration (affine) or deformable "
                       "registration (ANTs SyN, needs antspyx) baselines.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--query", required=True, nargs="+", help="query image(s)")
    p.add_argument("--support", action="append",
                   help="support image; give it two or more times (each with its own --support-markups or "
                   "--support-labels, in the same order) for few-shot: rpr locates with each support alone "
                   "and takes the per-point median")
    p.add_argument("--support-markups", action="append", help="support points (.mrk.json, .fcsv, .csv)")
    p.add_argument("--support-labels", action="append",
                   help="support label map: organ boxes from their six extreme points")
    p.add_argument("--labels", help="with --support-labels: comma-separated label values")
    p.add_argument("--names", help="with --support-labels: comma-separated organ names")
    p.add_argument("--template", nargs="+", help=model_help("rpr: saved support template(s) instead of --support "
                                                            "(several: few-shot, as with several --support)",
                                                            ("rpr-template",)))
    p.add_argument("--save-template", help="rpr: save the support template here (NAME.safetensors + NAME.json)")
    p.add_argument("--model", help=model_help("rpr: coarse model", ("rpr",)))
    p.add_argument("--fine-model", help=model_help("rpr: fine model (the paper's second step; not needed with "
                   "--refine: across IXI subjects it made refined points worse, see docs/results.md)", ("rpr",)))
    p.add_argument("--fine-steps", type=int, default=1, help="rpr: fine steps (default 1)")
    p.add_argument("--runs", type=int, default=15, help="rpr: random starts K of the multi-run ensemble (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=("rpr", "ncc", "registration", "deformable"), default="rpr",
                   help="rpr (default): the one-shot agent; ncc: template matching; registration: SimpleITK "
                   "rigid + affine; deformable: ANTs SyN after affine (antspyx: pip install "
                   "'landmarkloc[deformable]'): the most accurate baseline, 10-20 s per query on a 2-core CPU")
    p.add_argument("--refine", choices=REFINE_MODES, default=DEFAULT_REFINE_MODE,
                   help="rpr: after the coarse agent, 'affine' maps the points by a robust affine fit to the "
                   "template's anchor points, 'ncc' then searches the best local image match (+-6 mm), "
                   "'local-affine' (default) then fits each point's own affine map of a 40 mm support patch "
                   "to the query; 'none' is the paper's agent alone. Templates saved by older versions need "
                   "--refine ncc (or none) or remaking")
    p.add_argument("--ncc-stride", type=int, default=0,
                   help="ncc: sliding-window stride (the paper's 2); 0 (default) = FFT at every voxel")
    p.add_argument("--bspline", action="store_true", help="registration: add a B-spline stage after affine")
    add_spacing_argument(p)
    p.add_argument("--pixel-spacing", help="deprecated name of --spacing")
    p.add_argument("--coordinate-system", choices=("LPS", "RAS"), default="LPS")
    p.add_argument("-o", "--output", required=True,
                   help="points file (one query), or a folder: QUERY.mrk.json per query")
    p.add_argument("--rois", help="organ boxes: a .mrk.json file (one query), or a folder: QUERY_rois.mrk.json")
    add_series_argument(p)
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def _spacing(args):
    """--spacing, or its deprecated name --pixel-spacing (with a warning)."""
    if args.pixel_spacing is None:
        return parse_spacing(args.spacing)
    if args.spacing is not None:
        raise InputError("give --spacing only (--pixel-spacing is its deprecated name)")
    warnings.warn("--pixel-spacing is deprecated; use --spacing", InputWarning, stacklevel=2)
    return parse_spacing(args.pixel_spacing)


def _read(path, args):
    return read_image(path, spacing=args.spacing_mm, series=args.series)


def _supports(args) -> list:
    """``(image, points)`` of each --support, with its annotation (the n-th --support-markups or -labels)."""
    if bool(args.support_markups) == bool(args.support_labels):
        raise InputError("give the support annotation as either --support-markups or --support-labels")
    annotations = args.support_markups or args.support_labels
    if len(annotations) != len(args.support):
        option = "--support-markups" if args.support_markups else "--support-labels"
        raise InputError(f"{len(args.support)} --support but {len(annotations)} {option}: give one per support")
    supports = []
    for image_path, annotation in zip(args.support, annotations):
        image = _read(image_path, args)
        supports.append((image, _support_points(args, image, annotation)))
    return supports


def _support_points(args, support_image, annotation):
    from ..geometry.labels import label_extreme_points
    from .derive import parse_labels

    if args.support_markups:
        return read_points(annotation)
    if not args.labels:
        raise InputError("--support-labels needs --labels")
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    labelmap = _read(annotation, args)
    if labelmap.GetSize() != support_image.GetSize() or not np.allclose(
            np.r_[labelmap.GetOrigin(), labelmap.GetSpacing(), labelmap.GetDirection()],
            np.r_[support_image.GetOrigin(), support_image.GetSpacing(), support_image.GetDirection()],
            atol=1e-3):
        raise InputError("the support label map and image differ in size or geometry (not the same grid)")
    return label_extreme_points(labelmap, parse_labels(args.labels), names)


def _output_paths(queries, args) -> list:
    """(points file, ROI file or None) per query, under the one -o rule (cli/outputs.py)."""
    points = output_paths(queries, args.output, ".mrk.json", (".mrk.json", ".fcsv", ".csv"))
    rois = output_paths(queries, args.rois, "_rois.mrk.json", (".mrk.json",), "--rois") if args.rois else None
    return list(zip(points, rois or [None] * len(points)))


def _inputs(queries, args) -> list:
    """Every file this run reads, as ``(option, path)``: images, the support annotation, template and models."""
    files = [("--query", q) for q in queries]
    files += [(option, value) for option, values in (("--support", args.support),
                                                     ("--support-markups", args.support_markups),
                                                     ("--support-labels", args.support_labels))
              for value in values or ()]
    for option, models in (("--template", args.template), ("--model", [args.model]),
                           ("--fine-model", [args.fine_model])):
        for model in models or ():
            if model:
                files += model_files(option, model)
    return files


def _outputs(outputs, args) -> list:
    files = [("-o", points) for points, _ in outputs] + [("--rois", rois) for _, rois in outputs if rois]
    if args.save_template:
        files += [("--save-template", path) for path in model_paths(args.save_template)]
    return files


def _check_template_name(name) -> None:
    """A bare name that is a shipped model's would hide that model in this folder (an existing path wins)."""
    stem = model_paths(name)[0].name[: -len(".safetensors")]
    if len(Path(name).parts) == 1 and stem in shipped_model_names():
        raise InputError(f"--save-template {name} is the name of a shipped model; a template saved under it would "
                         "be loaded instead of that model from this folder; choose another name")


def run(args) -> int:
    from ..runtime import progress

    queries = [Path(q) for q in args.query]
    several = len(queries) > 1
    args.spacing_mm = _spacing(args)
    outputs = _output_paths(queries, args)
    if args.template and (args.support or args.support_markups or args.support_labels):
        raise InputError("give either --template or a support (--support with --support-markups or "
                         "--support-labels), not both")
    check_outputs_are_not_inputs(_inputs(queries, args), _outputs(outputs, args))
    # Check every input file's header and every output path before any work or any file written.
    images = queries + [Path(p) for p in (args.support or []) + (args.support_labels or [])]
    for path in images:
        check_image_file(path, args.series)
    check_spacing_applies(images, args.spacing_mm)
    for markups in args.support_markups or ():
        if not Path(markups).is_file():
            raise InputError(f"support markups not found: {markups}")
    for out in (path for pair in outputs for path in pair):
        if out is not None:
            check_writable(out)
    if args.save_template:
        _check_template_name(args.save_template)
        for path in model_paths(args.save_template):
            check_writable(path)
    if args.method == "deformable":
        from ..inference.deformable import require_ants

        require_ants()  # before reading anything
    if args.method == "rpr":
        locate = _rpr(args)
    else:
        if args.template or not args.support:
            raise InputError(f"--method {args.method} needs --support with --support-markups or --support-labels")
        if len(args.support) > 1:
            raise InputError(f"--method {args.method} takes one --support (few-shot is for --method rpr)")
        support, points = _supports(args)[0]
        locate = _baseline(args, support, points)
    for query_path, (out, rois) in progress(list(zip(queries, outputs)), desc="queries",
                                            quiet=args.quiet or not several):
        with about(query_path):
            query = _read(query_path, args)
            result = locate(query)
        if rois is not None and not result.boxes:
            raise InputError("--rois needs organ boxes: give the support as --support-labels")
        write_points(out, result.points, args.coordinate_system)
        if rois is not None:
            write_boxes(rois, result.boxes, args.coordinate_system)
        for warning in result.warnings:
            print(f"landmarkloc oneshot: warning: {query_path}: {warning}", file=sys.stderr)
        if not args.quiet:
            print(f"{query_path.name}: {len(result.points)} points"
                  + (f", {len(result.boxes)} boxes" if result.boxes else "")
                  + f" in {result.seconds:.3f} s ({result.method}) -> {out}")
    return 0


def _rpr(args):
    from ..inference.oneshot import OneShotLocator, Template

    if not args.model:
        raise InputError("--method rpr needs --model (the coarse RPR model)")
    locator = OneShotLocator.from_files(args.model, args.fine_model, args.device, args.fine_steps)
    if args.save_template and len(args.support or ()) + len(args.template or ()) > 1:
        raise InputError("--save-template takes one support: save each support's template in its own run, "
                         "then give them all to --template")
    if args.template:
        templates = [Template.load(path) for path in args.template]
    else:
        if not args.support:
            raise InputError("give --support (with --support-markups or --support-labels) or --template")
        templates = [locator.make_template(image, points) for image, points in _supports(args)]
    if args.save_template:
        templates[0].save(args.save_template)
        if not args.quiet:
            print(f"saved template ({len(templates[0].names)} points) to {args.save_template}")
    for template in templates:  # before reading any query
        locator.check_template(template, args.refine)
    if len(templates) == 1:
        return lambda query: locator.locate(query, templates[0], runs=args.runs, seed=args.seed, refine=args.refine)
    return lambda query: locator.locate_consensus(query, templates, runs=args.runs, seed=args.seed,
                                                  refine=args.refine)


def _baseline(args, support, points):
    from ..inference.baselines import NccConfig, RegistrationConfig, ncc_locate, registration_locate

    if args.method == "ncc":
        config = NccConfig(stride=max(1, args.ncc_stride), use_fft=args.ncc_stride == 0)
        return lambda query: ncc_locate(query, support, points, config)
    if args.method == "deformable":
        from ..inference.deformable import DeformableConfig, deformable_locate

        deformable = DeformableConfig(seed=args.seed)
        return lambda query: deformable_locate(query, support, points, deformable)
    config = RegistrationConfig(bspline=args.bspline, seed=args.seed)
    return lambda query: registration_locate(query, support, points, config)
