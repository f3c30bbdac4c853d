"""``landmarkloc bench``: how fast localization is on this machine, with the baselines side by side.

Every scenario runs in a fresh process (:mod:`landmarkloc.bench_worker`) on
generated images of the real sizes and geometry (timing does not depend on the
image content), so its peak memory is its own. Models: the shipped ones from
``--models`` when present, otherwise untrained networks with the same
architecture (the report says which).

Scenarios: the global-to-local FCN on a brain MRI, a CT-sized volume and a
cephalogram; RPR one-shot boxes of 8 organs (48 points) against template
matching (sliding window and FFT), affine registration and deformable
registration (ANTs SyN, ``oneshot --method deformable``; reported as failed
when antspyx is not installed); time and memory
against input size; process start to first result of ``landmarkloc localize``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from landmarkloc.errors import InputError, LandmarkLocError
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE
from landmarkloc.points import ControlPoint

BRAIN_MODEL = "brain-t1-ixi16"
CEPH_MODEL = "ceph-isbi19"
RPR_COARSE_MODEL = "brain-t1-rpr-coarse"
RPR_FINE_MODEL = "brain-t1-rpr-fine"
IXI16 = ["3rdVentricle", "4thVentricle", "BrainStem", "Amygdala_R", "Amygdala_L", "Caudate_R", "Caudate_L",
         "Hippocampus_R", "Hippocampus_L", "Pallidum_R", "Pallidum_L", "Putamen_R", "Putamen_L",
         "ThalamusProper_R", "ThalamusProper_L", "CorpusCallosum"]
CEPH19 = [f"L{n}" for n in range(1, 20)]
# Geometry of the untrained stand-ins (the shipped models' metadata wins when they are present).
UNTRAINED_BRAIN_SPACING_MM = 2.0
UNTRAINED_CEPH_SPACING_MM = 0.4
RPR_BASE_CHANNELS = 8  # the shipped RPR models: compact preset with --base-channels 8
# IXI T1 volumes are stored sagittally: image axes (i, j, k) run along (A, S, L)-ish physical axes.
SAGITTAL_DIRECTION = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ORGANS = 8


@dataclass(frozen=True)
class ImageSpec:
    size: tuple
    spacing: float
    direction: tuple | None = None
    # "uint8" as radiographs come (JPEG, 8-bit DICOM): integer inputs take other paths (e.g. the label-map check)
    pixel_type: str = "float32"

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size))

    def describe(self) -> str:
        pixels = " (8-bit)" if self.pixel_type == "uint8" else ""
        return f"{' x '.join(map(str, self.size))} at {self.spacing:g} mm{pixels}"


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and repetitions of a run; ``quick`` is what CI runs (tiny sizes, seconds)."""

    name: str
    brain: ImageSpec
    ct: ImageSpec
    ceph: ImageSpec
    scaling: tuple  # ImageSpecs, growing, for FCN and RPR
    repeat: int = 10
    baseline_repeat: int = 3  # ncc / registration (slow): fewer repetitions
    deformable_repeat: int = 1  # ANTs SyN (slowest, ~10 s a query): one query
    ncc_timed_points: int = 3  # the stride-2 sliding window is timed on 1 and this many points
    organs: int = ORGANS
    runs: int = 15  # K random starts of the RPR agent
    startup_runs: int = 3
    cuda_variants: bool = True
    timeout_s: float = 900.0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "full": BenchConfig(
        name="full",
        brain=ImageSpec((120, 120, 90), 2.0, SAGITTAL_DIRECTION),
        ct=ImageSpec((512, 512, 300), 0.8),
        ceph=ImageSpec((1935, 2400), 0.1, pixel_type="uint8"),
        scaling=(ImageSpec((128, 128, 75), 0.8), ImageSpec((256, 256, 150), 0.8),
                 ImageSpec((384, 384, 225), 0.8), ImageSpec((512, 512, 300), 0.8))),
    "quick": BenchConfig(
        name="quick",
        brain=ImageSpec((40, 40, 32), 2.0, SAGITTAL_DIRECTION),
        ct=ImageSpec((80, 80, 50), 0.8),
        ceph=ImageSpec((200, 240), 0.4, pixel_type="uint8"),
        scaling=(ImageSpec((32, 32, 24), 2.0), ImageSpec((64, 64, 48), 2.0)),
        repeat=2, baseline_repeat=1, ncc_timed_points=2, startup_runs=1, timeout_s=300.0),
}

# The speed the project aims at on a 2-core laptop CPU (issue 7), checked in every full report.
TARGETS = {
    "fcn_brain_s": 0.1,
    "rpr_boxes_s": 0.15,
    "rpr_vs_registration": 20.0,
    "rpr_vs_ncc_stride2": 1000.0,
    "rpr_vs_deformable": 50.0,  # issue 20: the one-shot at least 50x faster than ANTs SyN in the same run
    "ct_peak_rss_mb": 2048.0,
    "startup_s": 5.0,
}


# --------------------------------------------------------------------------- generated images


def _organs(size: np.ndarray, centre: np.ndarray, count: int) -> list:
    """(name, centre index, semi-axes in voxels, value) of ``count`` separate ellipsoids inside the head."""
    rng = np.random.default_rng(1234)  # the same anatomy in every phantom, relative to the head
    placed: list = []  # (relative centre, largest relative semi-axis)
    while len(placed) < count:
        rel, radius = rng.uniform(-0.24, 0.24, len(size)), rng.uniform(0.04, 0.07)
        if all(np.linalg.norm(rel - other) > radius + r + 0.01 for other, r in placed):
            placed.append((rel, radius))
    organs = []
    for n, (rel, radius) in enumerate(placed):
        radii = radius * rng.uniform(0.7, 1.0, len(size)) * size
        organs.append((f"Organ{n + 1}", centre + rel * size, radii, 100.0 + 12.0 * n))
    return organs


def phantom(size, spacing: float, direction=None, shift: float = 0.0, seed: int = 0,
            organs: int = ORGANS) -> tuple:
    """A head-like image (ellipsoid with ``organs`` brighter ellipsoids, noise) of any size, 2D or 3D.

    ``shift``: the anatomy moves by this fraction of the field of view (a
    different "subject" for one-shot queries). Built slice by slice so a CT-sized
    volume needs no temporary copies. Returns (image, organs as (name, centre
    index, semi-axes, value)).
    """
    size = np.asarray(size, dtype=int)
    ndim = len(size)
    rng = np.random.default_rng(seed)
    centre = (size - 1) / 2.0 + shift * size
    shapes = [("head", centre, 0.42 * size, 60.0)] + _organs(size, centre, organs)
    index = [np.arange(n, dtype=np.float32) for n in size]
    arr = np.empty(tuple(size[::-1]), dtype=np.float32)
    for k in range(arr.shape[0]):  # numpy axis 0 = the last ITK axis
        out = rng.standard_normal(arr.shape[1:], dtype=np.float32)
        out *= 3.0
        for _, c, r, value in shapes:
            d = np.full(arr.shape[1:], ((k - c[-1]) / r[-1]) ** 2, dtype=np.float32)
            for a in range(ndim - 1):
                view = [1] * (ndim - 1)
                view[ndim - 2 - a] = size[a]
                d += (((index[a] - c[a]) / r[a]) ** 2).reshape(view)
            out[d < 1.0] = value + 5.0 * rng.standard_normal(int((d < 1.0).sum()), dtype=np.float32)
        arr[k] = out
    image = sitk.GetImageFromArray(arr, isVector=False)
    del arr
    image.SetSpacing((float(spacing),) * ndim)
    if direction is not None:
        image.SetDirection(tuple(float(v) for v in direction))
    return image, shapes[1:]


def organ_extreme_points(image: sitk.Image, organs) -> list:
    """The extreme points (``<organ>_xmin`` ... along the image axes) of the phantom's organs: 6 per organ."""
    points = []
    for name, centre, radii, _ in organs:
        for axis, letter in enumerate("xyz"[: image.GetDimension()]):
            for sign, end in ((-1.0, "min"), (1.0, "max")):
                idx = np.array(centre, dtype=float)
                idx[axis] += sign * 0.98 * radii[axis]
                lps = np.zeros(3)
                lps[: image.GetDimension()] = image.TransformContinuousIndexToPhysicalPoint(tuple(idx))
                points.append(ControlPoint(f"{name}_{letter}{end}", lps))
    return points


# --------------------------------------------------------------------------- models


@dataclass
class ModelFile:
    path: str
    source: str  # "shipped" or "untrained stand-in (...)"
    spacing: list = field(default_factory=list)


def _save_untrained_fcn(path: Path, ndim: int, names: list, spacing: float, intensity: str) -> None:
    import torch

    from landmarkloc.io.modelfile import save_model
    from landmarkloc.networks.fcn import GlobalToLocal
    from landmarkloc.training.fcn import model_metadata, network_configs, train_config

    cfg = train_config("compact", ndim, spacing=(spacing,) * ndim, intensity=intensity)
    global_cfg, local_cfg, _ = network_configs(cfg, len(names))
    torch.manual_seed(0)
    net = GlobalToLocal(global_cfg, local_cfg)
    meta = model_metadata(cfg, names, global_cfg, local_cfg, cfg.spacing, {"untrained": True}, None,
                          {"untrained": True})
    save_model(path, {k: v.detach().contiguous() for k, v in net.state_dict().items()}, meta)


def _save_untrained_rpr(path: Path, stage: str) -> None:
    import torch

    from landmarkloc.geometry.intensity import get_preset
    from landmarkloc.io.modelfile import save_model
    from landmarkloc.networks.pnet import Pnet, rpr_metadata
    from landmarkloc.training.rpr import rpr_preset

    cfg = rpr_preset("compact", 3)
    pnet = replace(cfg.pnet, base_channels=RPR_BASE_CHANNELS)
    torch.manual_seed(0)
    net = Pnet(pnet)
    meta = rpr_metadata(pnet, stage, cfg.spacing, cfg.radius(stage), get_preset(cfg.intensity).to_dict(),
                        cfg.foreground_threshold, untrained=True)
    save_model(path, {k: v.detach().contiguous() for k, v in net.state_dict().items()}, meta)


def resolve_models(models_dir, workdir: Path) -> dict:
    """The shipped model files where ``models_dir`` has them, else untrained stand-ins written to ``workdir``."""
    models_dir = Path(models_dir) if models_dir else None
    makers = {
        "brain": (BRAIN_MODEL, lambda p: _save_untrained_fcn(p, 3, IXI16, UNTRAINED_BRAIN_SPACING_MM, "mr"),
                  f"compact FCN, 16 landmarks, {UNTRAINED_BRAIN_SPACING_MM:g} mm"),
        "ceph": (CEPH_MODEL, lambda p: _save_untrained_fcn(p, 2, CEPH19, UNTRAINED_CEPH_SPACING_MM, "xray"),
                 f"compact 2D FCN, 19 landmarks, {UNTRAINED_CEPH_SPACING_MM:g} mm"),
        "rpr_coarse": (RPR_COARSE_MODEL, lambda p: _save_untrained_rpr(p, "coarse"),
                       f"compact Pnet, base channels {RPR_BASE_CHANNELS}, 2 mm"),
        "rpr_fine": (RPR_FINE_MODEL, lambda p: _save_untrained_rpr(p, "fine"),
                     f"compact Pnet, base channels {RPR_BASE_CHANNELS}, 2 mm"),
    }
    out = {}
    for key, (stem, make, what) in makers.items():
        shipped = models_dir / f"{stem}.json" if models_dir else None
        if shipped is not None and shipped.is_file() and (models_dir / f"{stem}.safetensors").is_file():
            path, source = shipped, "shipped"
        else:
            path, source = workdir / f"{stem}-untrained.json", f"untrained stand-in ({what})"
            make(path)
        meta = json.loads(path.read_text(encoding="utf-8"))
        out[key] = ModelFile(str(path), source, list(meta.get("spacing", [])))
    return out


# --------------------------------------------------------------------------- running scenarios


def run_worker(spec: dict, workdir: Path, timeout_s: float) -> dict:
    """Run one scenario in a fresh Python process and return its JSON result."""
    spec_path = workdir / f"spec-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else root
    try:
        proc = subprocess.run([sys.executable, "-m", "landmarkloc.bench_worker", str(spec_path)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"worker exited with code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_startup(model: str, image: Path, out_dir: Path, device: str, runs: int, threads: int | None = None) -> dict:
    """Wall time of ``landmarkloc localize`` for one image, from process start to exit (and ``import torch``)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    def wall(cmd) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise LandmarkLocError(f"{' '.join(cmd[:4])} failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
        return time.perf_counter() - t0

    cmd = [sys.executable, "-m", "landmarkloc", "localize", str(image), "--model", model,
           "-o", str(out_dir / "startup.mrk.json"), "--device", device, "-q"]
    localize = [wall(cmd) for _ in range(max(1, runs))]
    torch_import = [wall([sys.executable, "-c", "import torch"]) for _ in range(max(1, runs))]
    return {"median_s": float(np.median(localize)), "all_s": [round(t, 3) for t in localize],
            "import_torch_s": float(np.median(torch_import))}


def environment(device: str, threads: int | None = None) -> dict:
    import torch

    from landmarkloc import __version__
    from landmarkloc.runtime import resolve_device

    dev = resolve_device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gb = None
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    env = {"landmarkloc": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu": cpu, "cpu_count": os.cpu_count(), "memory_gb": None if memory_gb is None else round(memory_gb, 1),
           "torch": torch.__version__, "numpy": np.__version__, "SimpleITK": sitk.Version_VersionString(),
           "device": str(dev), "torch_threads": threads or torch.get_num_threads(),
           "torch_interop_threads": torch.get_num_interop_threads(),
           "onednn": bool(torch.backends.mkldnn.is_available()),
           "load_average_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["cuda"] = torch.version.cuda
    return env


def _ratio(slow: dict | None, fast: dict | None) -> float | None:
    if not slow or not fast or slow.get("error") or fast.get("error"):
        return None
    if not slow.get("median_s") or not fast.get("median_s"):
        return None
    return float(slow["median_s"]) / float(fast["median_s"])


def run_bench(config: BenchConfig, models_dir=None, device: str = "auto", output=None, quiet: bool = False,
              workdir=None, threads: int | None = None) -> dict:
    """Run every scenario of ``config``; returns the report (also written to ``output`` if given).

    ``threads``: torch threads in every scenario (default: torch's choice, one per core).
    """
    from landmarkloc.io.image import write_image
    from landmarkloc.runtime import progress, resolve_device

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="landmarkloc-bench-", dir=workdir) as tmp:
        tmp = Path(tmp)
        report = {"config": config.to_dict(), "environment": environment(device, threads),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "scenarios": {}, "scaling": {"fcn": [], "rpr": []}}
        models = resolve_models(models_dir, tmp)
        report["models"] = {k: asdict(v) for k, v in models.items()}
        base = {"device": device, "repeat": config.repeat, "threads": threads}

        def image(spec: ImageSpec) -> dict:
            return {"size": list(spec.size), "spacing": spec.spacing, "direction": spec.direction,
                    "pixel_type": spec.pixel_type}

        # the shipped configuration: coarse agent + the default refinement (the fine model is not used with it)
        rpr = {"coarse": models["rpr_coarse"].path, "fine": None, "refine": DEFAULT_REFINE_MODE, "runs": config.runs}
        jobs = [
            ("fcn_brain", {"scenario": "fcn", "model": models["brain"].path, "image": image(config.brain)}),
            ("fcn_ct", {"scenario": "fcn", "model": models["brain"].path, "image": image(config.ct)}),
            ("fcn_ceph", {"scenario": "fcn", "model": models["ceph"].path, "image": image(config.ceph)}),
            ("rpr_boxes", {"scenario": "rpr", **rpr, "image": image(config.brain)}),
            ("ncc_fft", {"scenario": "ncc", "use_fft": True, "stride": 1, "image": image(config.brain),
                         "repeat": config.baseline_repeat}),
            ("ncc_stride2", {"scenario": "ncc", "use_fft": False, "stride": 2, "image": image(config.brain),
                             "timed_points": config.ncc_timed_points, "repeat": config.baseline_repeat}),
            ("registration", {"scenario": "registration", "image": image(config.brain),
                              "repeat": config.baseline_repeat}),
            ("deformable", {"scenario": "deformable", "image": image(config.brain),
                            "repeat": config.deformable_repeat}),
        ]
        if dev.type == "cuda" and config.cuda_variants:
            for amp, cl in ((False, False), (True, False), (False, True)):
                jobs.append((f"fcn_brain_cuda_amp{int(amp)}_cl{int(cl)}",
                             {"scenario": "fcn", "model": models["brain"].path, "image": image(config.brain),
                              "amp": amp, "channels_last": cl}))
        scaling_jobs = []
        for spec in config.scaling:
            scaling_jobs.append(("fcn", spec, {"scenario": "fcn", "model": models["brain"].path,
                                               "image": image(spec), "repeat": max(2, config.repeat // 2)}))
            scaling_jobs.append(("rpr", spec, {"scenario": "rpr", **rpr, "image": image(spec),
                                               "repeat": max(2, config.repeat // 2)}))
        total = len(jobs) + len(scaling_jobs) + 1
        bar = progress(total=total, desc="bench", quiet=quiet)
        for name, spec in jobs:
            bar.set_postfix_str(name)
            report["scenarios"][name] = run_worker({**base, **spec}, tmp, config.timeout_s)
            bar.update()
        for kind, image_spec, spec in scaling_jobs:
            bar.set_postfix_str(f"scaling {kind} {image_spec.describe()}")
            result = run_worker({**base, **spec}, tmp, config.timeout_s)
            report["scaling"][kind].append({"input": image_spec.describe(), "input_voxels": image_spec.voxels,
                                            **result})
            bar.update()
        bar.set_postfix_str("start-up")
        brain_image, _ = phantom(config.brain.size, config.brain.spacing, config.brain.direction)
        brain_path = tmp / "brain.nii.gz"
        write_image(brain_image, brain_path)
        try:
            report["startup"] = time_startup(models["brain"].path, brain_path, tmp, device, config.startup_runs,
                                             threads)
        except LandmarkLocError as exc:
            report["startup"] = {"error": str(exc)}
        bar.update()
        bar.close()
    s = report["scenarios"]
    report["ratios"] = {
        "rpr_vs_registration": _ratio(s.get("registration"), s.get("rpr_boxes")),
        "rpr_vs_ncc_stride2": _ratio(s.get("ncc_stride2"), s.get("rpr_boxes")),
        "rpr_vs_ncc_fft": _ratio(s.get("ncc_fft"), s.get("rpr_boxes")),
        "rpr_vs_deformable": _ratio(s.get("deformable"), s.get("rpr_boxes")),
    }
    report["environment"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()] \
        if hasattr(os, "getloadavg") else None
    report["targets"] = check_targets(report)
    if output is not None:
        write_report(report, output)
    return report


def check_targets(report: dict) -> list:
    """(what, target, measured, met) for each speed target; measured None where the scenario failed."""
    s, r = report["scenarios"], report["ratios"]

    def value(d, key="median_s"):
        return None if not d or d.get("error") else d.get(key)

    rows = [
        ("FCN brain MRI, 16 landmarks, per image", f"<= {TARGETS['fcn_brain_s']} s",
         value(s.get("fcn_brain")), lambda v: v <= TARGETS["fcn_brain_s"], "s"),
        ("RPR 8 organ boxes, K=15, shipped configuration, per query", f"<= {TARGETS['rpr_boxes_s']} s",
         value(s.get("rpr_boxes")), lambda v: v <= TARGETS["rpr_boxes_s"], "s"),
        ("RPR vs affine registration", f">= {TARGETS['rpr_vs_registration']:g}x", r.get("rpr_vs_registration"),
         lambda v: v >= TARGETS["rpr_vs_registration"], "x"),
        ("RPR vs NCC sliding window (stride 2)", f">= {TARGETS['rpr_vs_ncc_stride2']:g}x",
         r.get("rpr_vs_ncc_stride2"), lambda v: v >= TARGETS["rpr_vs_ncc_stride2"], "x"),
        ("RPR vs deformable registration (ANTs SyN)", f">= {TARGETS['rpr_vs_deformable']:g}x",
         r.get("rpr_vs_deformable"), lambda v: v >= TARGETS["rpr_vs_deformable"], "x"),
        ("CT-sized volume: peak RSS", f"<= {TARGETS['ct_peak_rss_mb']:g} MB",
         value(s.get("fcn_ct"), "peak_rss_mb"), lambda v: v <= TARGETS["ct_peak_rss_mb"], "MB"),
        ("Process start to first result (localize)", f"<= {TARGETS['startup_s']} s",
         value(report.get("startup")), lambda v: v <= TARGETS["startup_s"], "s"),
    ]
    return [{"what": what, "target": target, "measured": measured, "unit": unit,
             "met": None if measured is None else bool(test(measured))}
            for what, target, measured, test, unit in rows]


# --------------------------------------------------------------------------- report


def _fmt_s(v) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1.0 else f"{v:.2f} s"


def _fmt_mb(v) -> str:
    return "-" if v is None else f"{v:.0f} MB"


def to_markdown(report: dict) -> str:
    """The report as docs-ready markdown (pasted into docs/benchmarks.md)."""
    env, s, models = report["environment"], report["scenarios"], report["models"]
    cfg = report["config"]
    lines = [f"### Run of {report['started']} (`{cfg['name']}` sizes, median of {cfg['repeat']} warm runs)", ""]
    lines += [f"- Machine: {env['cpu']}, {env['cpu_count']} CPUs, {env['memory_gb']} GB RAM; {env['platform']}",
              f"- Software: landmarkloc {env['landmarkloc']}, Python {env['python']}, torch {env['torch']} "
              f"(oneDNN {'on' if env['onednn'] else 'off'}), numpy {env['numpy']}, SimpleITK {env['SimpleITK']}",
              f"- Device: {env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}; "
              f"torch threads {env['torch_threads']} (inter-op {env['torch_interop_threads']})",
              f"- Load average at start / end: {env.get('load_average_start')} / {env.get('load_average_end')} "
              "(a busy machine makes every number slower)",
              "- Models: " + "; ".join(f"{k}: {v['source']}" for k, v in models.items()), ""]

    def row(name, what, d, extra=""):
        if not d or d.get("error"):
            return f"| {name} | {what} | failed: {d.get('error') if d else 'not run'} | | | |"
        return (f"| {name} | {what} | {_fmt_s(d.get('median_s'))} | {_fmt_s(d.get('cpu_median_s'))} | "
                f"{_fmt_mb(d.get('peak_rss_mb'))} | {extra} |")

    c = cfg
    lines += ["| Scenario | Input | Time (median) | CPU time | Peak RSS | Notes |", "|---|---|---|---|---|---|"]
    for key, spec, label in (("fcn_brain", c["brain"], "FCN global-to-local, brain MRI"),
                             ("fcn_ct", c["ct"], "FCN global-to-local, CT-sized volume"),
                             ("fcn_ceph", c["ceph"], "FCN global-to-local, cephalogram (2D)")):
        d = s.get(key, {})
        note = ""
        if d and not d.get("error"):
            note = (f"model grid {' x '.join(map(str, d['model_grid']))}; load {_fmt_s(d['load_s'])}; first call "
                    f"{_fmt_s(d['first_s'])}; preprocessing {_fmt_s(d['prepare_median_s'])}; "
                    f"{d['landmarks']} landmarks")
        lines.append(row(label, ImageSpec(tuple(spec["size"]), spec["spacing"],
                                          pixel_type=spec.get("pixel_type", "float32")).describe(), d, note))
    brain = ImageSpec(tuple(c["brain"]["size"]), c["brain"]["spacing"]).describe()
    d = s.get("rpr_boxes", {})
    note = ""
    if d and not d.get("error"):
        note = (f"{d['points']} points, {d['boxes']} boxes, K = {d['runs']}; load {_fmt_s(d['load_s'])}; "
                f"preprocessing {_fmt_s(d['prepare_median_s'])}")
        if d.get("step_median_s"):
            note += "; " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in d["step_median_s"].items())
    lines.append(row(f"RPR one-shot, 8 organ boxes, {d.get('configuration', 'coarse+fine')}", brain, d, note))
    d = s.get("ncc_fft", {})
    lines.append(row("NCC template matching, FFT (every voxel)", brain, d, "same query and 48 points"))
    d = s.get("ncc_stride2", {})
    note = ""
    if d and not d.get("error") and d.get("extrapolated"):
        note = (f"sliding window, stride 2: EXTRAPOLATED to {d['points']} points from timing 1 and "
                f"{d['timed_points']} points ({_fmt_s(d['per_point_s'])} per point + {_fmt_s(d['fixed_s'])})")
    elif d and not d.get("error"):
        note = f"sliding window, stride 2, all {d['points']} points timed (no extrapolation)"
    lines.append(row("NCC template matching, stride 2", brain, d, note))
    lines.append(row("Affine registration (SimpleITK, Mattes MI)", brain, s.get("registration", {}),
                     "rigid then affine, support -> query, 48 points mapped"))
    d = s.get("deformable", {})
    lines.append(row("Deformable registration (ANTs SyN, `--method deformable`)", brain, d,
                     f"affine then SyN, support -> query, 48 points mapped; {d.get('repeat', 1)} query"
                     if d and not d.get("error") else ""))
    for key, d in s.items():
        if key.startswith("fcn_brain_cuda"):
            lines.append(row(f"FCN brain, CUDA variant {key[len('fcn_brain_cuda_'):]}", brain, d,
                             f"peak GPU {_fmt_mb(d.get('peak_gpu_mb'))}" if d and not d.get("error") else ""))
    st = report.get("startup", {})
    if st and not st.get("error"):
        lines.append(f"| `landmarkloc localize`, process start to exit | {brain} | {_fmt_s(st['median_s'])} | | | "
                     "one image, model load and writing included; `import torch` alone "
                     f"{_fmt_s(st['import_torch_s'])} |")
    else:
        lines.append(f"| `landmarkloc localize`, process start to exit | {brain} | failed: {st.get('error')} | | | |")
    r = report["ratios"]
    lines += ["", "Ratios on the same query (time of the baseline / time of RPR): "
              + ", ".join(f"{k.replace('rpr_vs_', 'vs ')} **{v:.0f}x**" if v is not None else f"{k}: -"
                          for k, v in r.items()), ""]
    lines += ["Scaling with input size (FCN model grid at the model spacing; RPR network work does not grow):", "",
              "| Input | Voxels | FCN time | FCN peak RSS | RPR time | RPR preprocessing | RPR peak RSS |",
              "|---|---|---|---|---|---|---|"]
    for f, p in zip(report["scaling"]["fcn"], report["scaling"]["rpr"]):
        lines.append(f"| {f['input']} | {f['input_voxels'] / 1e6:.2f} M | {_fmt_s(f.get('median_s'))} | "
                     f"{_fmt_mb(f.get('peak_rss_mb'))} | {_fmt_s(p.get('median_s'))} | "
                     f"{_fmt_s(p.get('prepare_median_s'))} | {_fmt_mb(p.get('peak_rss_mb'))} |")
    lines += ["", "Targets (2-core CPU, warm, per image):", "", "| Target | Aim | Measured | Met |",
              "|---|---|---|---|"]
    for t in report["targets"]:
        m = t["measured"]
        shown = "-" if m is None else (_fmt_s(m) if t["unit"] == "s" else f"{m:.0f} {t['unit']}".replace(" x", "x"))
        met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['what']} | {t['target']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def plot_scaling(report: dict, path) -> None:
    """Time and peak memory against input voxels for FCN and RPR (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("fcn", "o"), ("rpr", "s")):
        rows = [r for r in report["scaling"][kind] if not r.get("error")]
        if not rows:
            continue
        x = [r["input_voxels"] / 1e6 for r in rows]
        label = "FCN global-to-local" if kind == "fcn" else "RPR one-shot (48 points)"
        ax_t.plot(x, [r["median_s"] for r in rows], marker=marker, label=label)
        ax_m.plot(x, [r["peak_rss_mb"] for r in rows], marker=marker, label=label)
        if kind == "rpr":
            ax_t.plot(x, [r["median_s"] - r["prepare_median_s"] for r in rows], marker=marker, linestyle="--",
                      label="RPR without preprocessing")
    ax_t.set_xlabel("input voxels (millions)")
    ax_t.set_ylabel("time per image (s, median)")
    ax_m.set_xlabel("input voxels (millions)")
    ax_m.set_ylabel("peak RSS of the process (MB)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend()
    env = report["environment"]
    fig.suptitle(f"landmarkloc bench ({report['config']['name']}): {env['device']}, {env['torch_threads']} threads, "
                 f"{env['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, output) -> dict:
    """Write ``bench.json``, ``bench.md`` and ``bench_scaling.png`` into the folder ``output``."""
    from landmarkloc.io.atomic import atomic_path, write_text_atomic

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: give a folder for the benchmark results")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench_scaling.png"}
    write_text_atomic(paths["json"], json.dumps(report, indent=2) + "\n")
    write_text_atomic(paths["markdown"], to_markdown(report))
    with atomic_path(paths["plot"]) as tmp:
        plot_scaling(report, tmp)
    return paths
