"""Evaluate predicted points/boxes against references: per-landmark tables, JSON, CSV, plots."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path, write_text_atomic
from ..io.markups import points_by_label, read_boxes, read_points
from .boxes import box_iou, box_wall_distance
from .landmarks import DEFAULT_THRESHOLDS, radial_errors, summarize_errors

MARKUP_SUFFIXES = (".mrk.json", ".json", ".fcsv", ".csv")
REPORT_SUFFIXES = (".json", ".csv", "_sdr.png", "_errors.png")  # summary, every error, plots (--plot)


def case_name(path: Path) -> str:
    name = path.name
    for s in MARKUP_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _markup_files(folder: Path) -> dict:
    return {case_name(p): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(MARKUP_SUFFIXES)}


def pair_files(pred, ref) -> list:
    """Match prediction and reference files: two files, or two folders matched by case name."""
    pred, ref = Path(pred), Path(ref)
    for p in (pred, ref):
        if not p.exists():
            raise InputError(f"not found: {p}")
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_dir() and ref.is_dir():
        preds, refs = _markup_files(pred), _markup_files(ref)
        common = sorted(set(preds) & set(refs))
        if not common:
            raise InputError(f"no file names in common between {pred} and {ref}")
        unmatched = [f"{what}: {_listed(sorted(names))}" for what, names in (
            (f"in {ref} without a prediction", set(refs) - set(preds)),
            (f"in {pred} without a reference", set(preds) - set(refs))) if names]
        if unmatched:  # a case left out would silently raise the success rates
            raise InputError(f"cases do not match ({'; '.join(unmatched)}); give folders with the same cases")
        return [(name, preds[name], refs[name]) for name in common]
    raise InputError("--pred and --ref must both be files or both be folders")


def _listed(names, most: int = 10) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _is_roi_file(path: Path) -> bool:
    if not path.name.lower().endswith(".json"):
        return False
    try:
        markups = json.loads(path.read_text(encoding="utf-8")).get("markups", [])
    except (ValueError, AttributeError, UnicodeDecodeError):
        return False
    return any(isinstance(m, dict) and m.get("type") == "ROI" for m in markups)


def _check_names_overlap(case: str, predicted: list, reference: list) -> None:
    """Predictions that share no name with the reference are a mix-up (other model, other file), not misses."""
    if predicted and reference and not set(predicted) & set(reference):
        raise InputError(f"{case}: no landmark names in common between prediction ({', '.join(predicted[:3])}...) "
                         f"and reference ({', '.join(reference[:3])}...)")


@dataclass
class Evaluation:
    """All matched point errors and box scores of an evaluation run."""

    thresholds: tuple = DEFAULT_THRESHOLDS
    point_rows: list = field(default_factory=list)  # (case, landmark, error_mm)
    box_rows: list = field(default_factory=list)  # (case, structure, iou, awd_mm)
    missing: list = field(default_factory=list)  # (case, name) in the reference but not predicted
    missing_points: list = field(default_factory=list)  # the landmarks among them: misses in the SDR
    case_only: dict = field(default_factory=dict)  # reference name -> predicted name differing only in case

    def add_case(self, case: str, pred: Path, ref: Path) -> None:
        if _is_roi_file(ref):
            predicted = {b.name: b for b in read_boxes(pred)}
            reference = read_boxes(ref)
            _check_names_overlap(case, list(predicted), [b.name for b in reference])
            for box in reference:
                if box.name not in predicted:
                    self.missing.append((case, box.name))
                    continue
                self.box_rows.append((case, box.name, box_iou(predicted[box.name], box),
                                      box_wall_distance(predicted[box.name], box)))
            return
        predicted = points_by_label(read_points(pred))
        reference = points_by_label(read_points(ref))
        _check_names_overlap(case, list(predicted), list(reference))
        lowered = {name.lower(): name for name in predicted}
        for label, point in reference.items():
            if label not in predicted:
                self.missing.append((case, label))
                self.missing_points.append((case, label))
                if label.lower() in lowered:
                    self.case_only[label] = lowered[label.lower()]
                continue
            self.point_rows.append((case, label, float(radial_errors(predicted[label].position, point.position))))

    def summary(self) -> dict:
        out = {"thresholds_mm": list(self.thresholds), "missing": [list(m) for m in self.missing]}
        if self.case_only:
            out["names_differing_only_in_case"] = dict(self.case_only)
        if self.point_rows or self.missing_points:
            errors = np.array([r[2] for r in self.point_rows])
            names = list(dict.fromkeys([r[1] for r in self.point_rows] + [m[1] for m in self.missing_points]))
            out["points"] = {
                "overall": summarize_errors(errors, self.thresholds, len(self.missing_points)),
                "per_landmark": {n: summarize_errors([r[2] for r in self.point_rows if r[1] == n], self.thresholds,
                                                     sum(m[1] == n for m in self.missing_points)) for n in names},
            }
        if self.box_rows:
            names = list(dict.fromkeys(r[1] for r in self.box_rows))
            out["boxes"] = {
                "overall": _box_stats([r[2] for r in self.box_rows], [r[3] for r in self.box_rows]),
                "per_structure": {n: _box_stats([r[2] for r in self.box_rows if r[1] == n],
                                                [r[3] for r in self.box_rows if r[1] == n]) for n in names},
            }
        return out

    def rows_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        if self.point_rows:
            w.writerow(["case", "landmark", "error_mm"])
            w.writerows([c, n, f"{e:.4f}"] for c, n, e in self.point_rows)
        if self.box_rows:
            w.writerow(["case", "structure", "iou", "awd_mm"])
            w.writerows([c, n, f"{i:.4f}", f"{a:.4f}"] for c, n, i, a in self.box_rows)
        return out.getvalue()


def _box_stats(ious, awds) -> dict:
    return {"n": len(ious), "iou_mean": float(np.mean(ious)), "iou_sd": float(np.std(ious)),
            "awd_mean": float(np.mean(awds)), "awd_sd": float(np.std(awds))}


def format_table(summary: dict) -> str:
    """A plain-text table of the summary, for the terminal."""
    lines = []
    pts = summary.get("points")
    if pts:
        ts = [f"{t:g}" for t in summary["thresholds_mm"]]
        header = f"{'landmark':<24}{'n':>5}{'miss':>5}{'median':>9}{'IQR':>8}{'mean':>8}{'SD':>8}" + "".join(
            f"{'SDR' + t:>9}" for t in ts)
        lines += [header, "-" * len(header)]
        rows = list(pts["per_landmark"].items()) + [("ALL", pts["overall"])]
        for name, s in rows:
            errors = (f"{s['median']:>9.2f}{s['iqr']:>8.2f}{s['mean']:>8.2f}{s['sd']:>8.2f}" if s["n"]
                      else f"{'-':>9}{'-':>8}{'-':>8}{'-':>8}")
            lines.append(f"{name[:23]:<24}{s['n']:>5}{s.get('missing', 0):>5}{errors}"
                         + "".join(f"{100 * s['sdr'][t]:>8.1f}%" for t in ts))
    boxes = summary.get("boxes")
    if boxes:
        header = f"{'structure':<24}{'n':>5}{'IoU':>8}{'AWD mm':>9}"
        lines += ["" if lines else None, header, "-" * len(header)]
        for name, s in list(boxes["per_structure"].items()) + [("ALL", boxes["overall"])]:
            lines.append(f"{name[:23]:<24}{s['n']:>5}{s['iou_mean']:>8.3f}{s['awd_mean']:>9.2f}")
    if summary.get("missing"):
        missing = [f"{case}: {name}" for case, name in summary["missing"]]
        lines.append(f"missing predictions: {len(missing)}, counted as misses in the SDR: {_listed(missing)}")
    if summary.get("names_differing_only_in_case"):
        pairs = [f"{ref} (predicted {pred})" for ref, pred in summary["names_differing_only_in_case"].items()]
        lines.append(f"names are matched exactly; these differ only in case: {_listed(pairs)}")
    return "\n".join(line for line in lines if line is not None)


def write_reports(evaluation: Evaluation, out_stem: Path, plot: bool = False) -> list:
    """Write ``<stem>.json`` (summary) and ``<stem>.csv`` (every error), plus PNG plots on request."""
    summary = evaluation.summary()
    written = [out_stem.with_name(out_stem.name + suffix) for suffix in REPORT_SUFFIXES[:2]]
    write_text_atomic(written[0], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(written[1], evaluation.rows_csv())
    if plot and evaluation.point_rows:
        written += plot_point_errors(evaluation, out_stem)
    return written


def plot_point_errors(evaluation: Evaluation, out_stem: Path) -> list:
    """An SDR curve and a per-landmark box plot of the radial errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = np.array([r[2] for r in evaluation.point_rows])
    names = list(dict.fromkeys(r[1] for r in evaluation.point_rows))
    curve = out_stem.with_name(out_stem.name + REPORT_SUFFIXES[2])
    fig, ax = plt.subplots(figsize=(5, 4))
    t = np.linspace(0, max(10.0, float(np.percentile(errors, 95))), 200)
    ax.plot(t, [100 * np.mean(errors < x) for x in t])
    for x in evaluation.thresholds:
        ax.axvline(x, color="grey", lw=0.5, ls=":")
    ax.set(xlabel="radial error threshold (mm)", ylabel="success detection rate (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(curve) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    box = out_stem.with_name(out_stem.name + REPORT_SUFFIXES[3])
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(names) + 2), 4))
    ax.boxplot([[r[2] for r in evaluation.point_rows if r[1] == n] for n in names], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="radial error (mm)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(box) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return [curve, box]
