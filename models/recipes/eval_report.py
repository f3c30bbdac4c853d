"""docs/results.md and its figures from the runs/eval caches (``evaluate.py --report-only``): tables, plots and
the calibrated-uncertainty sections, apart from the runs so that the report can be rewritten without them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from eval_common import DEFORMABLE, IXI8, MODELS, ONESHOT_DEFAULT, REPO, _load
from eval_findings import BRAIN_FINDINGS, CEPH_FINDINGS, CEPH_PUBLISHED, DISCUSSION, SHIFT_FINDINGS
from eval_robustness import _robust_report
from eval_shift import SETS, signal_table, table

from landmarkloc.metrics import summarize_errors

FIGURES = REPO / "docs" / "figures"
THRESHOLDS = (2.0, 2.5, 3.0, 4.0)


def _per_landmark(cases: dict) -> tuple:
    names = list(next(iter(cases.values()))["errors"])
    per = {n: summarize_errors([c["errors"][n] for c in cases.values() if n in c["errors"]], THRESHOLDS)
           for n in names}
    overall = summarize_errors([e for c in cases.values() for e in c["errors"].values()], THRESHOLDS)
    return per, overall


def _landmark_table(cases: dict) -> list:
    per, overall = _per_landmark(cases)
    lines = ["| landmark | median (IQR) mm | mean ± SD mm | SDR 2 | SDR 2.5 | SDR 3 | SDR 4 |",
             "|---|---|---|---|---|---|---|"]
    for name, s in list(per.items()) + [("**all**", overall)]:
        lines.append(f"| {name} | {s['median']:.2f} ({s['iqr']:.2f}) | {s['mean']:.2f} ± {s['sd']:.2f} | "
                     + " | ".join(f"{100 * s['sdr'][f'{t:g}']:.1f}%" for t in THRESHOLDS) + " |")
    return lines


def _overall_row(label: str, cases: dict) -> str:
    _, s = _per_landmark(cases)
    seconds = np.median([c["seconds"] for c in cases.values()])
    not_found = sum(len(c["not_found"]) for c in cases.values())
    return (f"| {label} | {s['median']:.2f} ({s['iqr']:.2f}) | {s['mean']:.2f} ± {s['sd']:.2f} | "
            f"{100 * s['sdr']['2']:.1f}% | {100 * s['sdr']['4']:.1f}% | {not_found} | {seconds:.3f} |")


def _sdr_plot(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, cases in series.items():
        errors = np.array([e for c in cases.values() for e in c["errors"].values()])
        t = np.linspace(0, 10, 201)
        ax.plot(t, [100 * np.mean(errors < x) for x in t], label=label)
    ax.set(xlabel="radial error threshold (mm)", ylabel="success detection rate (%)", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


RELIABILITY_BINS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


def _flag_rows(cases: dict, radius: float) -> dict:
    """Points found with their error, calibrated probability and flag."""
    errors, probs, flags = [], [], []
    for c in cases.values():
        for name, e in c["errors"].items():
            if name in c.get("not_found", []) or name not in c.get("p_large_error", {}):
                continue
            errors.append(e)
            probs.append(c["p_large_error"][name])
            flags.append(c["uncertain"][name])
    errors, probs, flags = np.array(errors), np.array(probs), np.array(flags, dtype=bool)
    return {"errors": errors, "p": probs, "flagged": flags, "large": errors > radius}


def _reliability_plot(series: dict, radius: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    edges = np.array(RELIABILITY_BINS)
    for label, rows in series.items():
        which = np.clip(np.digitize(rows["p"], edges[1:-1]), 0, len(edges) - 2)
        xs, ys, ns = [], [], []
        for b in range(len(edges) - 1):
            sel = which == b
            if sel.sum():
                xs.append(rows["p"][sel].mean())
                ys.append(rows["large"][sel].mean())
                ns.append(int(sel.sum()))
        ax.plot(xs, ys, marker="o", label=label)
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel=f"predicted P(error > {radius:g} mm) (bin mean)",
           ylabel=f"observed share with error > {radius:g} mm",
           xlim=(0, 1), ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _uncertainty_section(model_name: str, sets: dict, key: str, split: str) -> list:
    """Calibrated 'uncertain' flag on the test split: flagged share, large errors caught, reliability plot."""
    from landmarkloc.inference.fcn_uncertainty import Calibration, auc

    meta = json.loads((MODELS / f"{model_name}.json").read_text())
    cal = Calibration.from_metadata(meta)
    if cal is None or not any(c.get("p_large_error") for cs in sets.values() for c in cs.values()):
        return [f"No calibrated uncertainty for {model_name} (its metadata has no calibration).", ""]
    r = cal.radius_mm
    fit = cal.fit
    md = [f"### Calibrated uncertainty ({model_name})", "",
          f"A point is *uncertain* (written unselected) when its calibrated probability of an error above "
          f"{r:g} mm reaches {cal.threshold:.3f}. Mapping: logistic regression on "
          f"{', '.join(f'`{n}`' for n in cal.signals)}, fitted by `landmarkloc calibrate` on "
          f"`{Path(str(fit.get('dataset', '?'))).name}`"
          f"{' (the images train-fcn held out)' if fit.get('held_out') else ''}"
          f" ({fit.get('points')} points of {fit.get('images')} images, {fit.get('large_errors')} with error "
          f"> {r:g} mm; never the test split); threshold chosen there on out-of-fold probabilities (5 folds over "
          f"subjects). Targets: catch ≥ "
          f"{100 * fit.get('targets', {}).get('catch', 0.7):.0f}% of the errors > {r:g} mm while flagging ≤ "
          f"{100 * fit.get('targets', {}).get('max_flagged', 0):.0f}% of the points.", "",
          "| data | points | errors > R | flagged | large errors caught | flagged points within R | AUC of P |",
          "|---|---|---|---|---|---|---|"]
    oof = fit.get("out_of_fold", {})
    if oof:
        md.append(f"| calibration data (out-of-fold) | {fit.get('points')} | {fit.get('large_errors')} | "
                  f"{100 * oof['flagged']:.1f}% | {100 * oof['caught']:.1f}% | "
                  f"{100 * oof['flagged_within_radius']:.0f}% | {oof.get('auc', float('nan')):.3f} |")
    series = {}
    for label, cases in sets.items():
        rows = _flag_rows(cases, r)
        series[label] = rows
        n, large, flagged = len(rows["p"]), rows["large"], rows["flagged"]
        caught = flagged[large].mean() if large.any() else float("nan")
        within = (flagged & ~large).sum() / max(1, flagged.sum())
        md.append(f"| {split}, {label} | {n} | {int(large.sum())} | {100 * flagged.mean():.1f}% | "
                  f"{100 * caught:.1f}% | {100 * within:.0f}% | {auc(rows['p'], large):.3f} |")
    disc = fit.get("signal_discrimination", {})
    if disc:
        md += ["", f"Each signal alone on the validation split (AUC for error > {r:g} mm, below 0.5: smaller "
               "values mean larger errors; Spearman with the error):", "",
               "| signal | AUC | Spearman |", "|---|---|---|"]
        md += [f"| `{n}` | {d['auc']:.3f} | {d['spearman']:+.3f} |" for n, d in disc.items()]
    path = FIGURES / f"{key}_reliability.png"
    _reliability_plot(series, r, path, f"{model_name}, {split}")
    md += ["", f"![{model_name} reliability](figures/{path.name})", "",
           "Reliability: points binned by predicted probability; the observed share of errors above the radius "
           "per bin (numbers: points per bin).", ""]
    return md


def _query_bootstrap(per_query: list, statistic, draws: int = 2000, seed: int = 0) -> tuple:
    """95 % percentile interval of ``statistic`` over queries resampled with replacement (each query keeps all
    its structures or points: they are not independent)."""
    rng = np.random.default_rng(seed)
    values = [statistic([per_query[i] for i in rng.integers(len(per_query), size=len(per_query))])
              for _ in range(draws)]
    return tuple(np.percentile(values, [2.5, 97.5]))


def _mean_iou(cases: list) -> float:
    return float(np.mean([v["iou"] for case in cases for v in case.values()]))


def _median_error(cases: list) -> float:
    return float(np.median([e for case in cases for e in case.values()]))


def _paired_gain(one: dict, name: str, baseline: str) -> list:
    """Per-query paired difference of ``name`` against ``baseline``: IoU gain and centroid median reduction."""
    a, b = one["configs"][name], one["configs"][baseline]
    subjects = [s for s in a["boxes"] if s in b["boxes"]]
    pairs = [(a["boxes"][s], b["boxes"][s]) for s in subjects]
    gain = _mean_iou([p for p, _ in pairs]) - _mean_iou([q for _, q in pairs])
    lo, hi = _query_bootstrap(pairs, lambda d: _mean_iou([p for p, _ in d]) - _mean_iou([q for _, q in d]))
    text = f"IoU {gain:+.3f} (95 % CI {lo:+.3f} to {hi:+.3f})"
    if "points" in a and "points" in b:
        pts = [(a["points"][s], b["points"][s]) for s in subjects]

        def reduction(d):
            return _median_error([q for _, q in d]) - _median_error([p for p, _ in d])
        lo, hi = _query_bootstrap(pts, reduction)
        text += f", centroid median {reduction(pts):+.2f} mm lower (95 % CI {lo:+.2f} to {hi:+.2f})"
    return [f"* {name} against {baseline}, same {len(subjects)} queries: {text}"]


def _oneshot_report(one: dict) -> list:
    split = one.get("split", "test")
    title = "IXI test split" if split == "test" else "IXI validation split (used to choose the variant and thresholds)"
    md = [f"## One-shot: IXI-8 structure boxes and IXI-16 centroids, {title} (20 queries)", "",
          f"Support: one training subject ({one['support']}); boxes from the six extreme points of each structure "
          "of its label map, reference boxes from each query's label map; centroids: the IXI-16 structure "
          "centroids of the support located in each query. K = 15 runs. Time per query excludes model loading and "
          "reading the image (wall time on the shared 2-core machine; `landmarkloc bench` has controlled timings); "
          "*refinement s* is the anchor map, NCC search and local affine alone. *Uncertain*: share of points "
          "unselected by the uncertainty flags, and the median error of unselected / selected points.", "",
          "Intervals: 95 % bootstrap over the queries (each query keeps all its structures).", "",
          "| method | mean IoU (95 % CI) | mean AWD mm | centroids median (IQR) mm | centroid median 95 % CI mm "
          "| median s / query | refinement s | uncertain: share, median error unsel. / sel. mm |",
          "|---|---|---|---|---|---|---|---|"]
    for name, cfg in one["configs"].items():
        ious = [v["iou"] for case in cfg["boxes"].values() for v in case.values()]
        awds = [v["awd"] for case in cfg["boxes"].values() for v in case.values()]
        iou_lo, iou_hi = _query_bootstrap(list(cfg["boxes"].values()), _mean_iou)
        centroid = centroid_ci = "–"
        if "points" in cfg:
            c = summarize_errors([e for case in cfg["points"].values() for e in case.values()], THRESHOLDS)
            centroid = f"{c['median']:.2f} ({c['iqr']:.2f})"
            centroid_ci = "{:.2f}-{:.2f}".format(*_query_bootstrap(list(cfg["points"].values()), _median_error))
        refine_s = "–"
        if cfg.get("steps"):
            steps = [st["anchor map"] + st["ncc search"] + st.get("local affine", 0.0) for st in cfg["steps"]]
            refine_s = f"{np.median(steps):.3f}"
        flags = "–"
        records = cfg.get("point_records")
        if records:
            unsel = [r["error"] for r in records if not r["selected"]]
            sel = [r["error"] for r in records if r["selected"]]
            med_unsel, med_sel = (f"{np.median(v):.1f}" if v else "–" for v in (unsel, sel))
            flags = f"{100 * len(unsel) / len(records):.0f}%, {med_unsel} / {med_sel}"
        md.append(f"| {name} | {np.mean(ious):.3f} ({iou_lo:.3f}-{iou_hi:.3f}) | {np.mean(awds):.2f} | {centroid} | "
                  f"{centroid_ci} | {np.median(cfg['seconds']):.3f} | {refine_s} | {flags} |")
    best = ONESHOT_DEFAULT
    reg = one["configs"].get("registration (affine)")
    syn = one["configs"].get(DEFORMABLE)
    if best in one["configs"]:
        md += ["", "Paired differences (positive: better than the baseline):", ""]
        for name in (best,) + tuple(n for n in one["configs"] if n.startswith("few-shot")):
            md += [line for baseline in ("registration (affine)", DEFORMABLE) if baseline in one["configs"]
                   for line in _paired_gain(one, name, baseline)]
    if best in one["configs"] and reg:
        md += ["", f"Per structure ({best} vs affine" + (" and deformable (SyN)" if syn else "") + " registration):",
               "", "| structure | IoU rpr | AWD rpr mm | IoU registration | AWD registration mm |"
               + (" IoU SyN | AWD SyN mm |" if syn else ""), "|---|---|---|---|---|" + ("---|---|" if syn else "")]
        for name in IXI8:
            cells = []
            for cfg in (one["configs"][best], reg) + ((syn,) if syn else ()):
                r = [c[name] for c in cfg["boxes"].values() if name in c]
                cells += [f"{np.mean([v['iou'] for v in r]):.3f}", f"{np.mean([v['awd'] for v in r]):.2f}"]
            md.append(f"| {name} | " + " | ".join(cells) + " |")
    md.append("")
    return md


def _ceph_analysis_section(a: dict) -> list:
    """The error analysis of ceph-isbi19 on its validation images (numbers from ceph_analysis.py)."""
    v = a["validation"]
    fine = a.get("fine_stage", True)  # analyses of models with a fine stage have a "local" row before it
    labels = {"global": "global stage alone", "local": "global + local stage (before the fine stage)",
              "final": "global-to-local" + (" + fine stage" if fine else "") + " (the model's output)",
              "local_twice": "a second pass of the last stage from the first",
              "local_from_truth": "local stage" + ("s" if fine else "") + " started at the reference point "
              "(their own accuracy)"}

    def row(label, s):
        return f"| {label} | {s['median']:.2f} | {s['mean']:.2f} | {100 * s['sdr2']:.1f}% | {s['over4']} |"

    md = ["### Error analysis on the validation images", "",
          f"The {v['images']} training images train-fcn held out for model selection "
          f"({', '.join(a['validation_images'])}); `python models/recipes/evaluate.py --only ceph-analysis`. "
          "Numbers of the shipped model; those of the earlier model are in the findings below.", "",
          "| stage | median mm | MRE mm | SDR 2 mm | points > 4 mm |", "|---|---|---|---|---|"]
    md += [row(labels[k], s) for k, s in v["overall"].items()]
    if "training" in a:
        md += [row(f"{labels[k]}, {a['training']['images']} training images", a["training"]["overall"][k])
               for k in ("global", "final", "local_from_truth")]
    md += ["", f"The local stage improves {v['local_better_1mm']} points by more than 1 mm and worsens "
           f"{v['local_worse_1mm']}; of the {len(v['tail'])} points still off by more than 4 mm, "
           f"{v['tail_from_global']} were already off by more than 4 mm after the global stage.", "",
           "| landmark | global median / MRE mm | final median / MRE mm | local from reference median / MRE mm |",
           "|---|---|---|---|"]
    for name, s in v["per_landmark"].items():
        md.append(f"| {name} | " + " | ".join(f"{s[k]['median']:.2f} / {s[k]['mean']:.2f}"
                                             for k in ("global", "final", "local_from_truth")) + " |")
    md += ["", "The long tail (final error > 4 mm):", "",
           "| image | landmark | global mm | final mm | local from reference mm | global confidence |",
           "|---|---|---|---|---|---|"]
    md += [f"| {t['image']} | {t['landmark']} | {t['global']:.1f} | {t['final']:.1f} | {t['local_from_truth']:.1f} "
           f"| {t['global_confidence']:.2f} |" for t in v["tail"]]
    md += [""] + a.get("findings", CEPH_FINDINGS) + [""]
    return md


def _current_sections() -> dict:
    """The level-2 sections of the current docs/results.md by heading, so a section without cached
    numbers (runs/eval) is kept as it is instead of dropped when another section is regenerated."""
    path = REPO / "docs" / "results.md"
    sections, current = {}, None
    for line in (path.read_text().splitlines() if path.exists() else []):
        if line.startswith("## "):
            current = sections.setdefault(line, [])
        elif line.startswith("### Error analysis"):
            current = None  # regenerated from its own cache
        if current is not None:
            current.append(line)
    kept = {}
    for heading, lines in sections.items():
        for prefix in ("## brain-t1-ixi16", "## FCN models under distribution shift", "## One-shot", "## ceph-isbi19"):
            if heading.startswith(prefix):
                kept.setdefault(prefix, []).extend(lines)
    return kept


def _shift_section(kept: dict) -> list:
    """Both FCN models on their test split clean and shifted (eval_shift.py), the signals on the validation
    split's shifted images; the section as it stands when no model has cached test records."""
    found = {which: _shift_records(which) for which in SETS}
    if not any(v["test"] for v in found.values()):  # nothing cached: the section as it stands
        return kept.get("## FCN models under distribution shift", [])
    md = ["## FCN models under distribution shift", "",
          "Each test image localized as it is and changed the way clinical images differ from the training images "
          "(`landmarkloc.geometry.shifts`; every physical position kept, so the references stay exact; "
          "`python models/recipes/evaluate.py --only brain-shift ceph-shift`). *Flagged*: written unselected "
          "(uncertain, or not found); *radius*: the point's conformal error radius (90 %), which should hold the "
          "true position for 90 % of the points; intervals are 95 % Wilson intervals. Nothing was tuned on the "
          "test images: the calibration saw the validation images and shifted copies of them.", ""] + SHIFT_FINDINGS
    for which, splits in found.items():
        if not splits["test"]:
            continue
        spec = SETS[which]
        md += [f"### {spec['model']}, {splits['test']['split']} split ({splits['test']['images']} images)", ""]
        md += table(splits["test"], spec["radius"]) + [""]
        if splits["val"]:
            md += [f"Signals on the {splits['val']['split']} split, the calibration's images "
                   f"({splits['val']['images']} images; AUC for an error above "
                   f"{spec['radius']:g} mm, below 0.5: smaller values mean larger errors):", ""]
            md += signal_table(splits["val"], spec["radius"]) + [""]
    return md


def _shift_records(which: str) -> dict:
    out = {}
    for role, split in zip(("val", "test"), SETS[which]["splits"]):
        path = REPO / "runs" / "shift" / f"{which}_{split}.json"
        out[role] = json.loads(path.read_text()) if path.exists() else None
    return out


def report() -> None:
    md = ["# Results on real data", "",
          "Produced by `python models/recipes/evaluate.py` (after the recipes in `models/recipes/`) on the "
          "held-out splits; numbers are from the models in `models/`. CPU timings are single-image wall times "
          "on the 2-core development machine, some taken while training jobs shared it (docs/benchmarks.md has "
          "controlled timings).", ""]
    kept = _current_sections()
    g2l, glob, stripped = _load("brain_g2l"), _load("brain_global"), _load("brain_stripped")
    if not g2l:
        md += kept.get("## brain-t1-ixi16", [])
    if g2l:
        md += ["## brain-t1-ixi16 — 16 brain landmarks, IXI test split (20 subjects)", "",
               "Reference: centroids of the DLMUSE automatic segmentation (a reference derived from an automatic "
               "segmentation, not manual annotation). 2 mm T1 volumes.", "",
               "| configuration | median (IQR) mm | mean ± SD mm | SDR 2 mm | SDR 4 mm | not found | s / image |",
               "|---|---|---|---|---|---|---|",
               _overall_row("R_log+C global-to-local", g2l)]
        if glob:
            md.append(_overall_row("R_log+C global only (same model, local stage off)", glob))
        if stripped:
            md.append(_overall_row("global-to-local, skull-stripped inputs", stripped))
        md += ["", "Per landmark (global-to-local, original images):", ""] + _landmark_table(g2l) + [""]
        series = {"global-to-local": g2l, **({"global only": glob} if glob else {}),
                  **({"skull-stripped": stripped} if stripped else {})}
        _sdr_plot(series, FIGURES / "brain_sdr.png")
        md += ["![brain SDR](figures/brain_sdr.png)", ""]
        md += _uncertainty_section("brain-t1-ixi16", {"original images": g2l,
                                                      **({"skull-stripped": stripped} if stripped else {})},
                                   "brain", "IXI test split")
        md += BRAIN_FINDINGS + [""]
    md += _shift_section(kept)
    ones = [_load(name) for name in ("oneshot", "oneshot_val")]
    if not any(one and one.get("configs") for one in ones):
        md += kept.get("## One-shot", [])
    for one in ones:
        if one and one.get("configs"):
            md += _oneshot_report(one)
    rob = _load("oneshot_robust")
    if rob and rob.get("rows"):
        md += _robust_report(rob, _load("oneshot"))
    cp = _load("ceph_g2l")
    if not cp:
        md += kept.get("## ceph-isbi19", [])
    if cp:
        _, s = _per_landmark(cp)
        md += ["## ceph-isbi19 — 19 cephalometric landmarks, ISBI 2015 Test1 (images 151-300)", "",
               "| | median (IQR) mm | MRE ± SD mm | SDR 2 | SDR 2.5 | SDR 3 | SDR 4 |", "|---|---|---|---|---|---|---|",
               f"| this model | {s['median']:.2f} ({s['iqr']:.2f}) | {s['mean']:.2f} ± {s['sd']:.2f} | "
               + " | ".join(f"{100 * s['sdr'][f'{t:g}']:.1f}%" for t in THRESHOLDS) + " |",
               "| Noothout et al. 2020 | 0.95 (1.15) | 1.35 ± 1.19 (both test sets) | – | – | – | – |",
               "| Lindner & Cootes 2015 | – | – | ~75-85% | – | – | – |", "",
               f"Landmarks not found: {sum(len(c['not_found']) for c in cp.values())} of "
               f"{sum(len(c['errors']) for c in cp.values())} (all are inside the images).", "",
               f"Published: {CEPH_PUBLISHED}. Per landmark:", ""] + _landmark_table(cp) + [""]
        _sdr_plot({"ceph Test1": cp}, FIGURES / "ceph_sdr.png")
        md += ["![ceph SDR](figures/ceph_sdr.png)", ""]
        md += _uncertainty_section("ceph-isbi19", {"all images": cp}, "ceph", "Test1")
    analysis = _load("ceph_analysis")
    if analysis:
        md += _ceph_analysis_section(analysis)
    md += DISCUSSION
    (REPO / "docs" / "results.md").write_text("\n".join(md) + "\n")
    print(f"wrote {REPO / 'docs' / 'results.md'}")
