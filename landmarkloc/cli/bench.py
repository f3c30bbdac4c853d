"""``landmarkloc bench``: time and memory of localization on this machine, baselines side by side."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..errors import InputError
from . import add_device_argument, add_quiet_argument

EXAMPLE = """examples:
  landmarkloc bench -o runs/bench                      # full sizes, shipped models from ./models
  landmarkloc bench --quick -o /tmp/bench              # tiny sizes (what CI runs), a few seconds
  landmarkloc bench --models models --repeat 20 --device cuda -o runs/bench-gpu
  (writes OUT/bench.json, OUT/bench.md - docs-ready, also printed - and OUT/bench_scaling.png;
   absent shipped models are replaced by untrained networks of the same architecture, and the report
   says so; every scenario runs in a fresh process so its peak memory is its own)
"""


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark localization speed and memory (FCN, RPR, baselines)",
                       description="Measure the global-to-local FCN and the RPR one-shot agent against template "
                       "matching and registration on generated images of real sizes; print a markdown table.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="folder for bench.json, bench.md and bench_scaling.png")
    p.add_argument("--models", default="models",
                   help="folder with the shipped models (brain-t1-ixi16, ceph-isbi19, brain-t1-rpr-coarse/-fine); "
                   "default: models")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (a smoke test, not timings)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per scenario after a warm-up (default 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per scenario (default: one per core, torch's choice)")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import PRESETS, run_bench, to_markdown, write_report

    config = PRESETS["quick" if args.quick else "full"]
    if args.repeat is not None:
        if args.repeat < 1:
            raise InputError("--repeat must be at least 1")
        config = replace(config, repeat=args.repeat)
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    report = run_bench(config, models_dir=args.models, device=args.device, quiet=args.quiet, threads=args.threads)
    paths = write_report(report, args.output)
    print(to_markdown(report))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    failed = [k for k, v in report["scenarios"].items() if v.get("error")]
    if failed:
        print(f"failed scenarios: {', '.join(failed)}")
    return 0
