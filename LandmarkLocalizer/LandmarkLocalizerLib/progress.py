"""Worker side: progress from inside an engine call, for engines that take no progress callback.

The FCN and one-shot engines run their stages inside one call (``localize``,
``locate``). :func:`reporting_stages` wraps the stage functions for the length
of that call, in the worker process only, so each reports ``(fraction,
stage)`` the first time it starts. The stage names are the engines' own
function names: ``Testing/test_slicer_devices.py`` and the one-shot
click-through fail if they change.
"""

from __future__ import annotations

import contextlib
import functools


@contextlib.contextmanager
def reporting_stages(stages, report):
    """``stages``: ``(owner, function name, fraction, stage)`` in call order; ``report(fraction, stage)``."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _, _ in stages]
    reported = set()

    def reporting(original, fraction, stage):
        @functools.wraps(original)
        def run(*args, **kwargs):
            if stage not in reported:
                reported.add(stage)
                report(fraction, stage)
            return original(*args, **kwargs)
        return run

    for (owner, name, original), (_, _, fraction, stage) in zip(originals, stages):
        setattr(owner, name, reporting(original, fraction, stage))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
