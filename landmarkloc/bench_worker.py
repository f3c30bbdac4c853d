"""One benchmark scenario in a fresh process: ``python -m landmarkloc.bench_worker SPEC.json``.

Each scenario runs in its own process so that its peak resident memory
(``getrusage``) is its own and the caches of one scenario do not speed up or
slow down the next. The result is printed as one JSON line on stdout.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

import numpy as np
import SimpleITK as sitk


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _timed(fn, repeat: int, synchronize, warmup: bool = True) -> dict:
    """A warm-up call, then ``repeat`` timed calls: wall and CPU seconds (median, min)."""
    if warmup:
        fn()
        synchronize()
    wall, cpu = [], []
    for _ in range(max(1, repeat)):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        synchronize()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"median_s": statistics.median(wall), "min_s": min(wall), "cpu_median_s": statistics.median(cpu),
            "repeat": len(wall), "all_s": [round(t, 5) for t in wall]}


def _image(spec: dict, seed: int = 0, shift: float = 0.0):
    from landmarkloc.bench import phantom

    image, organs = phantom(tuple(spec["size"]), spec["spacing"], spec.get("direction"), shift=shift, seed=seed)
    if spec.get("pixel_type", "float32") == "uint8":
        image = sitk.Cast(sitk.Clamp(image, lowerBound=0.0, upperBound=255.0), sitk.sitkUInt8)
    return image, organs


def run_fcn(spec: dict, device, synchronize) -> dict:
    from landmarkloc.inference.fcn import Localizer

    t0 = time.perf_counter()
    loc = Localizer.from_file(spec["model"], device=device, amp=spec.get("amp", True),
                              channels_last=spec.get("channels_last", True))
    load_s = time.perf_counter() - t0
    image, _ = _image(spec["image"])
    rss_before = peak_rss_mb()
    first0 = time.perf_counter()
    result = loc.localize(image)
    first_s = time.perf_counter() - first0
    timing = _timed(lambda: loc.localize(image), spec["repeat"], synchronize)
    geometry = loc._prepare(image).geometry
    prep = _timed(lambda: loc._prepare(image), max(1, spec["repeat"] // 3), synchronize)
    return {"load_s": load_s, "first_s": first_s, **timing, "prepare_median_s": prep["median_s"],
            "model_grid": list(geometry.size), "model_grid_voxels": int(np.prod(geometry.size)),
            "input_voxels": int(np.prod(image.GetSize())), "landmarks": len(result.landmarks),
            "rss_with_input_mb": rss_before}


def _support_and_query(spec: dict):
    from landmarkloc.bench import organ_extreme_points

    support, organs = _image(spec["image"], seed=1)
    query, _ = _image(spec["image"], seed=2, shift=0.04)
    return support, organ_extreme_points(support, organs), query


def run_rpr(spec: dict, device, synchronize) -> dict:
    from landmarkloc.inference.oneshot import OneShotLocator

    t0 = time.perf_counter()
    loc = OneShotLocator.from_files(spec["coarse"], spec.get("fine"), device=str(device))
    load_s = time.perf_counter() - t0
    support, points, query = _support_and_query(spec)
    template = loc.make_template(support, points)
    refine = spec.get("refine", "none")
    rss_before = peak_rss_mb()
    steps = []

    def locate():
        result = loc.locate_boxes(query, template, runs=spec["runs"], refine=refine)
        steps.append(result.timings)
        return result

    timing = _timed(locate, spec["repeat"], synchronize)
    prep = _timed(lambda: loc.prepare(query), max(1, spec["repeat"] // 3), synchronize)
    result = locate()
    step_median = {k: statistics.median(s[k] for s in steps[1:] or steps) for k in steps[0]}
    grid = loc.prepare(query)[0].geometry.size
    configuration = ("coarse+fine" if spec.get("fine") else "coarse") + {
        "none": "", "affine": " + anchor map", "ncc": " + anchor map + NCC search",
        "local-affine": " + anchor map + NCC search + local affine"}[refine]
    return {"load_s": load_s, **timing, "prepare_median_s": prep["median_s"], "points": len(points),
            "configuration": configuration, "step_median_s": step_median,
            "boxes": len(result.boxes), "runs": spec["runs"], "model_grid": list(grid),
            "model_grid_voxels": int(np.prod(grid)), "input_voxels": int(np.prod(query.GetSize())),
            "rss_with_input_mb": rss_before}


def run_ncc(spec: dict, device, synchronize) -> dict:
    """Template matching of all points; a sliding window too slow for that is timed on a few and extrapolated."""
    from landmarkloc.inference.baselines import NccConfig, ncc_locate

    support, points, query = _support_and_query(spec)
    total = len(points)
    config = NccConfig(stride=spec["stride"], use_fft=spec["use_fft"])
    one = _timed(lambda: ncc_locate(query, support, points[:1], config), 1, synchronize)
    if spec["use_fft"] or one["median_s"] * total <= spec.get("budget_s", 120.0):
        timing = _timed(lambda: ncc_locate(query, support, points, config), spec["repeat"], synchronize,
                        warmup=False)
        return {**timing, "points": total, "timed_points": total, "extrapolated": False}
    few = max(2, int(spec["timed_points"]))
    one = _timed(lambda: ncc_locate(query, support, points[:1], config), spec["repeat"], synchronize, warmup=False)
    many = _timed(lambda: ncc_locate(query, support, points[:few], config), spec["repeat"], synchronize,
                  warmup=False)
    per_point = max(0.0, (many["median_s"] - one["median_s"]) / (few - 1))
    fixed = max(0.0, one["median_s"] - per_point)
    return {"median_s": fixed + total * per_point, "min_s": None, "cpu_median_s": None,
            "repeat": one["repeat"], "points": total, "timed_points": few, "extrapolated": True,
            "per_point_s": per_point, "fixed_s": fixed, "one_point_s": one["median_s"],
            "timed_points_s": many["median_s"]}


def run_registration(spec: dict, device, synchronize) -> dict:
    from landmarkloc.inference.baselines import RegistrationConfig, registration_locate

    support, points, query = _support_and_query(spec)
    timing = _timed(lambda: registration_locate(query, support, points, RegistrationConfig()), spec["repeat"],
                    synchronize, warmup=False)
    return {**timing, "points": len(points)}


def run_deformable(spec: dict, device, synchronize) -> dict:
    """ANTs SyN (``oneshot --method deformable``): slow, so one query by default, timed without a warm-up (the
    import of antspyx is done before)."""
    from landmarkloc.inference.deformable import DeformableConfig, deformable_locate, require_ants

    require_ants("the deformable scenario")
    support, points, query = _support_and_query(spec)
    timing = _timed(lambda: deformable_locate(query, support, points, DeformableConfig()), spec["repeat"],
                    synchronize, warmup=False)
    return {**timing, "points": len(points)}


SCENARIOS = {"fcn": run_fcn, "rpr": run_rpr, "ncc": run_ncc, "registration": run_registration,
             "deformable": run_deformable}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    import torch

    from landmarkloc.runtime import resolve_device

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = resolve_device(spec.get("device", "auto"))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rss_start = peak_rss_mb()
    with torch.inference_mode():
        out = SCENARIOS[spec["scenario"]](spec, device, synchronize)
    out.update({"peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": rss_start, "device": str(device),
                "threads": torch.get_num_threads()})
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
