"""``landmarkloc demo``: brain landmarks and one-shot points on the MNI152 template, with figures."""

from __future__ import annotations

import argparse

from . import add_device_argument, add_quiet_argument

EXAMPLE = """example:
  landmarkloc demo -o demo_output
  (writes demo_output/mni152_landmarks.mrk.json + .png and demo_output/moved_query_oneshot.mrk.json + .png)
"""


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the shipped models on the MNI152 template (needs the 'demo' extra)",
                       description="Localize the 16 brain landmarks on the MNI152 T1 template (shipped inside the "
                       "nilearn wheel) with the global-to-local FCN, then find them one-shot with RPR in a copy of "
                       "the template moved by a known rigid motion; writes markups and PNG overviews and prints "
                       "where the points are and how long each step took.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default: demo_output)")
    add_device_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    run_demo(args.output, device=args.device, say=(lambda *a, **k: None) if args.quiet else print)
    return 0
