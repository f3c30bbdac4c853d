"""Cohorts on a cluster: which images a run does (an input list, one shard of it, the ones without an output
yet) and the run's one summary CSV. See docs/cohorts.md."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import InputError, LandmarkLocError
from ..io.atomic import write_text_atomic
from ..io.markups import read_points

SUMMARY_COLUMNS = ("image", "status", "output", "landmark", "x_lps", "y_lps", "z_lps", "found", "uncertain",
                   "unlike_training", "confidence", "p_large_error", "error")


def read_input_list(path, column: str = "image") -> list:
    """The image paths of an input list: one per line (blank lines and ``#`` comments skipped), or, for a .csv
    file, the ``column`` of its rows. Relative paths are relative to the list's folder, so a list works from
    any working folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input list not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"input list {path.name} is not a text file") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if column not in (reader.fieldnames or []):
            raise InputError(f"input list {path.name} has no column {column!r} (it has: "
                             f"{', '.join(reader.fieldnames or []) or 'none'}); choose one with --input-column")
        entries = [row[column].strip() for row in reader if (row[column] or "").strip()]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise InputError(f"input list {path.name} names no images")
    return [str(path.parent / entry) if not Path(entry).is_absolute() else entry for entry in entries]


def parse_shard(text: str) -> tuple:
    """``I/N`` -> (I, N): this run does the I-th of N shares of the inputs (I from 1 to N)."""
    index, sep, count = str(text).partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise InputError(f"--shard must be I/N with 1 <= I <= N (e.g. 3/10), got {text!r}")
    return index, count


def take_shard(items: list, index: int, count: int) -> list:
    """Every count-th item from the index-th: the shards cover each item exactly once, in list order, and are
    as even as can be."""
    return items[index - 1::count]


def summary_rows(image, status: str, output="", points=(), names=(), error: str = "") -> list:
    """Rows of the summary for one image: one per landmark (``names``, those not in ``points`` as not found),
    or one row when there are no landmarks (a failed image)."""
    base = [str(image), status, str(output)]
    by_label = {p.label: p for p in points}
    rows = []
    for name in names:
        point = by_label.get(name)
        if point is None:
            rows.append(base + [name, "", "", "", 0, "", "", "", "", error])
            continue
        props = point.properties
        rows.append(base + [name, *(f"{v:.4f}" for v in point.position), 1, int(not point.selected),
                            int(props.get("unlike_training", 0)), props.get("confidence", ""),
                            props.get("p_large_error", ""), error])
    return rows or [base + [""] * (len(SUMMARY_COLUMNS) - 4) + [error]]


def existing_output_rows(image, output, names) -> list:
    """Summary rows for an image skipped because its output exists: its points, read back from that output."""
    try:
        points = read_points(output)
    except LandmarkLocError as exc:
        return summary_rows(image, "skipped", output, error=f"output exists but cannot be read: {exc}")
    return summary_rows(image, "skipped", output, points, names)


def write_summary(path, rows: list) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())
