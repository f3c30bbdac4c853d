"""Evaluate the shipped models on the held-out real data and write docs/results.md (+ figures).

Reads ../shared/data through the files made by prepare_ixi.py and prepare_ceph.py
(runs/ixi, runs/ceph); writes numbers to runs/eval/*.json and the report to
docs/results.md with plots in docs/figures/. Sections can be run alone:

    python models/recipes/evaluate.py [--only brain oneshot ceph ceph-analysis] [--report-only]

``ceph-analysis`` is the error analysis of the ceph model on the training images held out for
validation (ceph_analysis.py); it never touches Test1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from landmarkloc.geometry.labels import label_centroids, label_extreme_points
from landmarkloc.inference.baselines import NccConfig, ncc_locate, registration_locate
from landmarkloc.inference.fcn import Localizer
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.io.image import read_image
from landmarkloc.io.markups import read_boxes, read_points
from landmarkloc.metrics import box_iou, box_wall_distance, summarize_errors
from landmarkloc.runtime import progress

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
RUNS = REPO / "runs"
MODELS = REPO / "models"
EVAL = RUNS / "eval"
FIGURES = REPO / "docs" / "figures"
THRESHOLDS = (2.0, 2.5, 3.0, 4.0)
IXI8 = {"BrainStem": 35, "Hippocampus_R": 47, "Hippocampus_L": 48, "LateralVentricle_R": 51,
        "LateralVentricle_L": 52, "ThalamusProper_R": 59, "ThalamusProper_L": 60, "CerebellumExterior_R": 38}
IXI16_LABELS = {"3rdVentricle": 4, "4thVentricle": 11, "BrainStem": 35, "Amygdala_R": 31, "Amygdala_L": 32,
                "Caudate_R": 36, "Caudate_L": 37, "Hippocampus_R": 47, "Hippocampus_L": 48, "Pallidum_R": 55,
                "Pallidum_L": 56, "Putamen_R": 57, "Putamen_L": 58, "ThalamusProper_R": 59,
                "ThalamusProper_L": 60, "CorpusCallosum": 95}
DISCUSSION = [
    "## Where we are behind, and why", "",
    "* **Cephalograms**: close to Noothout et al. in the mean (MRE 1.40 mm on Test1 against their 1.35 mm over "
    "both test sets), behind in the median (1.06 against 0.95 mm) and SDR 2 mm (78 %). The error analysis above "
    "shows why: the long tail of the global stage (exposure failures) is gone, and what remains is the local "
    "stage's own accuracy at 0.5 mm (median about 0.9 mm even when started at the reference point) and the "
    "landmarks on long contours (gonion, porion, subspinale, articulare). Next steps: a local stage on a finer "
    "grid than the global one (the paper's works at the full 0.1 mm), a larger network and far longer training "
    "on a GPU (the paper: 300 000 iterations; ours: 9500 of a compact network on one shared CPU core).",
    "* **One-shot boxes**: RPR is faster than both baselines but clearly less accurate than affine "
    "registration. Its projection networks were trained for about an hour of one CPU core per stage in "
    "total (the paper: days on a GPU). Across subjects the fine step makes the boxes slightly worse than "
    "the coarse step alone (although it reduces the error when support and query are the same image): it "
    "errs by several mm per extreme point, which the IoU of small structures (hippocampus, thalamus) "
    "punishes most.",
    "* **Known problem**: the RPR models do not carry over to the MNI152 template used by the demo: even "
    "with the template itself as support and query, the one-shot points are tens of mm off, while on IXI "
    "test images (with or without skull) the same experiment gives a few mm. The FCN has no such problem "
    "on the template. The cause is not found yet; until it is, the demo's one-shot step shows this "
    "failure rather than hiding it.",
    "",
]


CEPH_PUBLISHED = "Noothout et al. 2020 (global-to-local FCN), Test1: median 0.95 mm (IQR 1.15)"


# What the analysis of the model shipped before it (compact, xray percentiles, 192-px crops, 5000 iterations)
# showed on the same validation images, and what was changed because of it.
CEPH_FINDINGS = [
    "What the analysis of the earlier model (compact network, percentile intensities, 192-pixel crops, "
    "5000 iterations; validation median 0.96 mm, MRE 1.48 mm) showed:", "",
    "* **The long tail is the global stage's.** Alone it gave median 2.57 mm, MRE 3.08 mm, SDR 2 mm 36 %; of "
    "the 14 points still off by more than 4 mm after the local stage, 13 were already off by more than 4 mm "
    "before it (the local sub-image reaches only 8 mm from the global estimate).",
    "* **The worst misses are exposure failures.** Sella in image 065 (18.6 mm) and nasion in 131, 088, 055 "
    "and 109 (8-15 mm) had a global confidence of 0.00-0.04: the network did not recognise the structure at "
    "all. The four nasion failures are the two brightest (131, 109: median grey value 178 and 171) and the "
    "two darkest (055, 088: 68 and 87) of the 15 radiographs (the others: 98-146). "
    "Percentile scaling keeps such exposure differences; the paper equalizes the histograms. In two pilot runs "
    "(1000 iterations, otherwise identical) equalization gave validation MRE 1.90 mm against 2.40 mm.",
    "* **Underfitting, not overfitting.** On 15 training images the numbers were the same as on validation "
    "(global MRE 3.21 mm, final median 0.96 mm, MRE 1.40 mm), so capacity and training length limit, not the "
    "150 images (more augmentation would not help).",
    "* **The local stage bounds the median.** Started at the reference point it reached median 0.85 mm, MRE "
    "1.12 mm, SDR 2 mm 87 % (training images: 0.79 mm): a perfect global stage would still leave the median "
    "near the paper's 0.95 mm on Test1, which is harder than validation. Gonion (1.9 mm), nasion, porion and "
    "subspinale are the worst even there: landmarks on long smooth contours, also those on which the two "
    "experts disagree most. A second local pass from the first gained little (median 0.93 mm, SDR 2 mm lower).",
    "",
    "Changes made for the current model: histogram equalization (`--intensity xray-equalized`), average "
    "pooling before all four stages of the global network as the paper does for cephalograms (receptive "
    "field 276 instead of 124 pixels, i.e. 138 mm at 0.5 mm), wider last stages (64/128 channels, heads 128; "
    "cheap at 1/32 resolution), 256-pixel crops and about twice the iterations (see the model card). "
    "Effect on validation: MRE 1.48 -> 1.19 mm, median 0.96 -> 0.89 mm, points > 4 mm 14 -> 5, not found "
    "9 -> 0; the global stage alone MRE 3.08 -> 2.60 mm. The exposure failures are gone; the worst point left "
    "(nasion in 065, 5.6 mm) is one where the local stage is 5.4 mm off even from the reference point. The "
    "local stage did not get sharper (from the reference: median 0.91 mm, was 0.85 mm), so the median is now "
    "bounded by it: a local stage on a finer grid is the next step.",
]


def _lines(path: Path) -> list:
    return [Path(line) for line in path.read_text().split() if line]


def _subject(path: Path) -> str:
    return path.name.split(".")[0]


def _positions(path: Path) -> dict:
    return {p.label: p.position for p in read_points(path)}


def _errors_by_name(pred: dict, ref: dict) -> dict:
    return {n: float(np.linalg.norm(pred[n] - ref[n])) for n in ref if n in pred}


def _save(name: str, data) -> None:
    EVAL.mkdir(parents=True, exist_ok=True)
    (EVAL / f"{name}.json").write_text(json.dumps(data, indent=1))


def _load(name: str):
    path = EVAL / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ------------------------------------------------------------------------------------------ evaluations


def evaluate_fcn(model: Path, images: list, references: dict, spacing=None, use_local=True, mask_dir=None,
                 desc="") -> dict:
    """Localize every image; return per-case errors, confidences and times."""
    loc = Localizer.from_file(model, device="cpu")
    cases = {}
    for path in progress(images, desc=desc):
        image = read_image(path, spacing=spacing)
        if mask_dir is not None:
            mask = sitk.ReadImage(str(mask_dir / f"{_subject(path)}.nii.gz"))
            image = sitk.Mask(image, sitk.Cast(mask > 0, sitk.sitkUInt8))
        start = time.perf_counter()
        result = loc.localize(image, use_local=use_local)
        seconds = time.perf_counter() - start
        pred = {lm.name: lm.position for lm in result.landmarks}
        ref = references[_subject(path)]
        cases[_subject(path)] = {"errors": _errors_by_name(pred, ref), "seconds": seconds,
                                 "not_found": [lm.name for lm in result.landmarks if not lm.found],
                                 "confidence": {lm.name: float(lm.confidence) for lm in result.landmarks}}
    return cases


def brain() -> None:
    images = _lines(RUNS / "ixi" / "test_images.txt")
    refs = {_subject(p): _positions(RUNS / "ixi" / "landmarks" / f"{_subject(p)}.mrk.json") for p in images}
    model = MODELS / "brain-t1-ixi16.safetensors"
    _save("brain_g2l", evaluate_fcn(model, images, refs, desc="brain global-to-local"))
    _save("brain_global", evaluate_fcn(model, images, refs, use_local=False, desc="brain global only"))
    _save("brain_stripped", evaluate_fcn(model, images, refs, mask_dir=RUNS / "ixi" / "masks",
                                         desc="brain skull-stripped"))


def oneshot() -> None:
    train = _lines(RUNS / "ixi" / "train_images.txt")
    queries = _lines(RUNS / "ixi" / "test_images.txt")
    support_path = train[0]
    support = read_image(support_path)
    support_seg = sitk.Cast(sitk.ReadImage(str(DATA / "ixi" / "seg" / support_path.name)), sitk.sitkUInt16)
    extreme = label_extreme_points(support_seg, list(IXI8.values()), list(IXI8))
    centroids = label_centroids(support_seg, list(IXI16_LABELS.values()), list(IXI16_LABELS))
    coarse, fine = MODELS / "brain-t1-rpr-coarse.safetensors", MODELS / "brain-t1-rpr-fine.safetensors"
    locators = {"coarse": OneShotLocator.from_files(coarse, None, device="cpu"),
                "coarse+fine": OneShotLocator.from_files(coarse, fine, device="cpu")}
    templates = {k: (loc.make_template(support, extreme), loc.make_template(support, centroids))
                 for k, loc in locators.items()}
    ref_boxes = {_subject(q): {b.name: b for b in read_boxes(RUNS / "ixi" / "boxes" / f"{_subject(q)}.mrk.json")}
                 for q in queries}
    ref_points = {_subject(q): _positions(RUNS / "ixi" / "landmarks" / f"{_subject(q)}.mrk.json") for q in queries}
    query_images = {_subject(q): read_image(q) for q in queries}
    out = {"support": _subject(support_path), "configs": {}}

    def record(name: str, fn) -> None:
        boxes, seconds = {}, []
        for subject, image in progress(query_images.items(), desc=name):
            result = fn(image)
            seconds.append(result.seconds)
            got = {b.name: b for b in result.boxes}
            boxes[subject] = {n: {"iou": box_iou(got[n], ref), "awd": box_wall_distance(got[n], ref)}
                              for n, ref in ref_boxes[subject].items() if n in got}
        out["configs"][name] = {"boxes": boxes, "seconds": seconds}

    for stage, loc in locators.items():
        for runs in (1, 5, 15):
            record(f"rpr {stage} K={runs}", lambda im, loc=loc, stage=stage, runs=runs:
                   loc.locate(im, templates[stage][0], runs=runs, seed=0))
    record("ncc (FFT)", lambda im: ncc_locate(im, support, extreme, NccConfig(use_fft=True)))
    # One registration per query serves both the boxes and the centroids (its time does not depend on the points).
    registered = {}

    def register(image):
        result = registration_locate(image, support, extreme + centroids)
        registered[id(image)] = result
        return result

    record("registration (affine)", register)
    points = {}
    for subject, image in progress(query_images.items(), desc="rpr points"):
        result = locators["coarse+fine"].locate(image, templates["coarse+fine"][1], runs=15, seed=0)
        points[subject] = _errors_by_name({p.label: p.position for p in result.points}, ref_points[subject])
    out["points_rpr_K15"] = points
    out["points_registration"] = {
        subject: _errors_by_name({p.label: p.position for p in registered[id(image)].points}, ref_points[subject])
        for subject, image in query_images.items()}
    _save("oneshot", out)


def ceph_analysis() -> None:
    from ceph_analysis import analyse

    _save("ceph_analysis", analyse(MODELS / "ceph-isbi19.safetensors", RUNS / "ceph" / "train.csv", spacing=0.1,
                                   train_images=15))


def ceph() -> None:
    images = _lines(RUNS / "ceph" / "test1_images.txt")
    refs = {_subject(p): _positions(RUNS / "ceph" / "test1_ref" / f"{_subject(p)}.mrk.json") for p in images}
    _save("ceph_g2l", evaluate_fcn(MODELS / "ceph-isbi19.safetensors", images, refs, spacing=0.1, desc="ceph"))


# ------------------------------------------------------------------------------------------ report


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


def _ceph_analysis_section(a: dict) -> list:
    """The error analysis of ceph-isbi19 on its validation images (numbers from ceph_analysis.py)."""
    v = a["validation"]
    labels = {"global": "global stage alone", "final": "global-to-local (the model's output)",
              "local_twice": "a second local pass from the first", "local_from_truth":
              "local stage started at the reference point (its own accuracy)"}

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
    return {prefix: lines for heading, lines in sections.items()
            for prefix in ("## brain-t1-ixi16", "## One-shot IXI-8", "## ceph-isbi19") if heading.startswith(prefix)}


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
    one = _load("oneshot")
    if not one:
        md += kept.get("## One-shot IXI-8", [])
    if one:
        md += ["## One-shot IXI-8 structure boxes, IXI test split (20 queries)", "",
               f"Support: one training subject ({one['support']}); boxes from the six extreme points of each "
               "structure of its label map; reference boxes from each query's label map. Time per query excludes "
               "model loading and reading the image.", "",
               "| method | mean IoU | mean AWD mm | median s / query |", "|---|---|---|---|"]
        for name, cfg in one["configs"].items():
            ious = [v["iou"] for case in cfg["boxes"].values() for v in case.values()]
            awds = [v["awd"] for case in cfg["boxes"].values() for v in case.values()]
            md.append(f"| {name} | {np.mean(ious):.3f} | {np.mean(awds):.2f} | {np.median(cfg['seconds']):.3f} |")
        best = "rpr coarse+fine K=15"
        if best in one["configs"]:
            md += ["", f"Per structure ({best} vs registration):", "",
                   "| structure | IoU rpr | AWD rpr mm | IoU registration | AWD registration mm |",
                   "|---|---|---|---|---|"]
            reg = one["configs"].get("registration (affine)", {"boxes": {}})
            for name in IXI8:
                r = [c[name] for c in one["configs"][best]["boxes"].values() if name in c]
                g = [c[name] for c in reg["boxes"].values() if name in c]
                md.append(f"| {name} | {np.mean([v['iou'] for v in r]):.3f} | {np.mean([v['awd'] for v in r]):.2f} | "
                          f"{np.mean([v['iou'] for v in g]) if g else float('nan'):.3f} | "
                          f"{np.mean([v['awd'] for v in g]) if g else float('nan'):.2f} |")
        for key, label in (("points_rpr_K15", "rpr coarse+fine K=15"), ("points_registration", "registration")):
            if key in one:
                s = summarize_errors([e for c in one[key].values() for e in c.values()], THRESHOLDS)
                md += ["", f"IXI-16 centroids found one-shot ({label}): median {s['median']:.2f} mm "
                       f"(IQR {s['iqr']:.2f}), mean {s['mean']:.2f} ± {s['sd']:.2f} mm, "
                       f"SDR 4 mm {100 * s['sdr']['4']:.1f}%."]
        md.append("")
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
               f"Published: {CEPH_PUBLISHED}. Per landmark:", ""] + _landmark_table(cp) + [""]
        _sdr_plot({"ceph Test1": cp}, FIGURES / "ceph_sdr.png")
        md += ["![ceph SDR](figures/ceph_sdr.png)", ""]
    analysis = _load("ceph_analysis")
    if analysis:
        md += _ceph_analysis_section(analysis)
    md += DISCUSSION
    (REPO / "docs" / "results.md").write_text("\n".join(md) + "\n")
    print(f"wrote {REPO / 'docs' / 'results.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=("brain", "oneshot", "ceph", "ceph-analysis"), default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if not args.report_only:
        for section in args.only or ("brain", "oneshot", "ceph", "ceph-analysis"):
            {"brain": brain, "oneshot": oneshot, "ceph": ceph, "ceph-analysis": ceph_analysis}[section]()
    report()


if __name__ == "__main__":
    main()
