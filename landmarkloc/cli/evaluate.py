"""``landmarkloc evaluate``: errors of predicted points or boxes against references."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..io.atomic import check_writable
from ..metrics.landmarks import DEFAULT_THRESHOLDS
from ..metrics.report import REPORT_SUFFIXES, Evaluation, format_table, pair_files, write_reports
from . import parse_floats
from .outputs import check_outputs_are_not_inputs, output_paths

EXAMPLE = """example:
  landmarkloc evaluate --pred out/ --ref reference/ --thresholds 1,2,2.5,3,4 -o report --plot
  (files are matched by name; writes report.json, report.csv, report_sdr.png, report_errors.png)
"""


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="radial errors, SDR, box IoU/AWD against references",
                       description="Compare predicted markups with reference markups (files, or folders matched "
                       "by file name). Points: median (IQR), mean +- SD of the radial error in mm and success "
                       "detection rates. ROI boxes: IoU and average wall distance.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="predicted markups file or folder")
    p.add_argument("--ref", required=True, help="reference markups file or folder")
    p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
                   help="SDR thresholds in mm (default: 2,2.5,3,4)")
    p.add_argument("-o", "--output", default="evaluation",
                   help="report file stem (default: evaluation), or a folder: PRED_evaluation.json/.csv in it")
    p.add_argument("--plot", action="store_true", help="also write an SDR curve and a per-landmark box plot")
    p.set_defaults(func=run)


def run(args) -> int:
    thresholds = tuple(parse_floats(args.thresholds, "--thresholds"))
    if not thresholds or any(not t > 0 for t in thresholds):
        raise InputError("--thresholds must be positive numbers of mm")
    stem = output_paths([args.pred], args.output, "_evaluation")[0]
    for suffix in (".json", ".csv"):  # -o report.json: the stem is report
        if stem.name.lower().endswith(suffix) and not Path(args.output).is_dir():
            stem = stem.with_name(stem.name[: -len(suffix)])
    check_writable(stem.with_name(stem.name + ".json"))
    pairs = pair_files(args.pred, args.ref)
    reports = [stem.with_name(stem.name + suffix) for suffix in REPORT_SUFFIXES[: None if args.plot else 2]]
    check_outputs_are_not_inputs([(option, path) for _, pred, ref in pairs
                                  for option, path in (("--pred", pred), ("--ref", ref))],
                                 [("-o", path) for path in reports])
    evaluation = Evaluation(thresholds=thresholds)
    for case, pred, ref in pairs:
        evaluation.add_case(case, pred, ref)
    summary = evaluation.summary()
    print(format_table(summary))
    for path in write_reports(evaluation, stem, plot=args.plot):
        print(f"wrote {path}")
    return 0
