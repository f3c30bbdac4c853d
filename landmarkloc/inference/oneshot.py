"""One-shot localisation of points and organ boxes with relative position regression.

An agent starts at K random body positions of the query (the multi-run
ensemble); the coarse Pnet moves each start straight to its estimate of every
target, ``c = c0 + r_c tanh(p_s - p_q)``; the mean of the K estimates is
refined by the fine Pnet (one patch per point per fine step). The spread of the
K coarse estimates (RMS distance to their mean, mm) is reported as each point's
uncertainty. The K start patches are the same for every target, so their latent
vectors are computed once, and the support side is a stored :class:`Template`:
a query with P points costs K + P * fine_steps patch passes.

Organ boxes: a support label map gives each organ's six extreme points
(``<organ>_xmin`` ... ``_zmax``); the six located points span the box, aligned
with the query image axes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from landmarkloc.errors import InputError, ModelError
from landmarkloc.geometry.frames import ImageGeometry, from_point3, to_point3
from landmarkloc.geometry.intensity import unlike_profile
from landmarkloc.geometry.labels import box_from_points, group_extreme_points, label_extreme_points
from landmarkloc.inference.patches import PreparedVolume, extract_patches, prepare_volume
from landmarkloc.inference.refine import (
    DEFAULT_REFINE,
    DEFAULT_REFINE_MODE,
    REFINE_MODES,
    RefineConfig,
    fit_affine,
    local_affine_search,
    map_locally,
    ncc_search,
    sample_anchors,
    support_patches,
)
from landmarkloc.io.labelmap import label_map_warning
from landmarkloc.networks.pnet import RprModel, load_rpr_model, relative_offset
from landmarkloc.points import Box, ControlPoint

TEMPLATE_KIND = "rpr-template"
TEMPLATE_VERSION = 2  # 2: anchors and intensity patches for refinement
# Patches per network pass. Small batches keep each layer's activations (a few MB) in the CPU caches; a
# batch of 48 patches of 32^3 voxels streams ~100 MB per layer through memory and runs ~1.7x slower
# (measured with the compact Pnet, see docs/benchmarks.md). A batch of one would leave oneDNN.
PATCHES_PER_PASS = 4


@dataclass
class Template:
    """What inference needs from the support image(s): latent vectors of the support patches.

    ``coarse_latents``/``fine_latents``: ``(P, D)``, averaged over the support
    images (few-shot). Model sha256s tie the template to the models that made it.
    Refinement (format 2): ``anchor_positions`` / ``anchor_latents`` ``(A, D)``:
    points spread over the (first) support's body and their coarse latents;
    ``patches`` ``(P, n, ...)``: the support's intensity patches around each
    point (``patch_mm`` wide, sampled every ``step_mm`` along LPS axes);
    ``affine_patches``: wider, coarser ones for the local affine refinement
    (``affine_patch_mm``, ``affine_step_mm``; templates made before it have none).
    """

    names: list[str]
    ndim: int
    coarse_latents: np.ndarray
    coarse_sha256: str
    fine_latents: np.ndarray | None = None
    fine_sha256: str | None = None
    support_positions: np.ndarray | None = None  # (P, 3) LPS, mean over the supports (information)
    supports: int = 1
    anchor_positions: np.ndarray | None = None  # (A, D) LPS, first support
    anchor_latents: np.ndarray | None = None  # (A, D) coarse model
    patches: np.ndarray | None = None  # (P, n, n[, n]) support intensities (first support)
    patch_mm: float = 24.0
    step_mm: float = 2.0
    point_positions: np.ndarray | None = None  # (P, D) LPS in the first support (the anchors' frame)
    affine_patches: np.ndarray | None = None  # (P, m, m[, m]) support intensities (first support)
    affine_patch_mm: float = 40.0
    affine_step_mm: float = 4.0

    @property
    def has_refinement(self) -> bool:
        return self.anchor_positions is not None and self.anchor_latents is not None

    def save(self, path) -> None:
        """Write ``NAME.safetensors`` + ``NAME.json`` (no pickle)."""
        from landmarkloc.io.modelfile import save_model

        tensors = {"coarse_latents": torch.as_tensor(self.coarse_latents, dtype=torch.float32)}
        if self.fine_latents is not None:
            tensors["fine_latents"] = torch.as_tensor(self.fine_latents, dtype=torch.float32)
        for key in ("anchor_positions", "anchor_latents", "patches", "point_positions", "affine_patches"):
            value = getattr(self, key)
            if value is not None:
                dtype = torch.float64 if key.endswith("positions") else torch.float32
                tensors[key] = torch.as_tensor(np.asarray(value), dtype=dtype)
        meta = {"kind": TEMPLATE_KIND, "template_version": TEMPLATE_VERSION, "names": list(self.names),
                "ndim": self.ndim, "coarse_model_sha256": self.coarse_sha256, "fine_model_sha256": self.fine_sha256,
                "supports": self.supports, "patch_mm": self.patch_mm, "step_mm": self.step_mm,
                "affine_patch_mm": self.affine_patch_mm, "affine_step_mm": self.affine_step_mm,
                "support_positions_lps": None if self.support_positions is None
                else np.asarray(self.support_positions).tolist()}
        save_model(path, tensors, meta)

    @classmethod
    def load(cls, path) -> Template:
        """Read a template; version-1 templates (no refinement data) load and can be used with ``refine='none'``."""
        from landmarkloc.io.modelfile import load_model

        tensors, meta = load_model(path, kind=TEMPLATE_KIND)
        version = int(meta.get("template_version", 1))
        if version > TEMPLATE_VERSION:
            raise ModelError(f"{path}: template format {version} is newer than this landmarkloc "
                             f"(reads up to {TEMPLATE_VERSION}); update landmarkloc")

        def array(key, dtype=np.float32):
            return tensors[key].numpy().astype(dtype) if key in tensors else None

        try:
            names = [str(n) for n in meta["names"]]
            positions = meta.get("support_positions_lps")
            template = cls(names=names, ndim=int(meta["ndim"]), coarse_latents=array("coarse_latents"),
                           coarse_sha256=str(meta["coarse_model_sha256"]), fine_latents=array("fine_latents"),
                           fine_sha256=meta.get("fine_model_sha256"),
                           support_positions=None if positions is None else np.asarray(positions, dtype=np.float64),
                           supports=int(meta.get("supports", 1)),
                           anchor_positions=array("anchor_positions", np.float64),
                           anchor_latents=array("anchor_latents"), patches=array("patches"),
                           patch_mm=float(meta.get("patch_mm", 24.0)), step_mm=float(meta.get("step_mm", 2.0)),
                           point_positions=array("point_positions", np.float64),
                           affine_patches=array("affine_patches"),
                           affine_patch_mm=float(meta.get("affine_patch_mm", 40.0)),
                           affine_step_mm=float(meta.get("affine_step_mm", 4.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{path}: incomplete one-shot template ({exc})") from None
        if template.coarse_latents.shape != (len(names), template.ndim):
            raise ModelError(f"{path}: template latents {template.coarse_latents.shape} do not fit {len(names)} points")
        if template.has_refinement and (template.anchor_positions.shape != template.anchor_latents.shape
                                        or template.point_positions is None
                                        or template.point_positions.shape != (len(names), template.ndim)):
            raise ModelError(f"{path}: damaged template (refinement arrays do not fit its points)")
        for key in ("patches", "affine_patches"):
            value = getattr(template, key)
            if value is not None and len(value) != len(names):
                raise ModelError(f"{path}: damaged template ({len(value)} {key} for {len(names)} points)")
        return template


@dataclass
class _QueryStarts:
    """A query prepared for the models, with its K random start voxels and their coarse latents."""

    volumes: dict
    index: np.ndarray  # (K, D) ITK-order voxel indices in volumes[0]
    latents: torch.Tensor  # (K, latent D)
    runs: int
    seconds: float


@dataclass
class OneShotResult:
    """Located points (LPS mm; ``properties['spread_mm']``), boxes if the support defined organs."""

    points: list[ControlPoint]
    boxes: list[Box] = field(default_factory=list)
    seconds: float = 0.0
    method: str = "rpr"
    run_positions: np.ndarray | None = None  # (K, P, D) coarse estimates of the K runs
    refine: str = "none"
    timings: dict = field(default_factory=dict)  # seconds per step (rpr)
    warnings: list[str] = field(default_factory=list)  # about the whole query; uncertain points say why


def uncertainty_reasons(props: dict, config: RefineConfig) -> list[str]:
    """Why a located point cannot be trusted (empty: no reason found), from its ``properties``."""
    reasons = []
    if props.get("spread_mm", 0.0) > config.max_spread_mm:
        reasons.append(f"runs disagree (spread {props['spread_mm']:.0f} mm)")
    if props.get("fit_rms_mm", 0.0) > config.max_fit_rms_mm:
        reasons.append(f"anchor map fits poorly (rms {props['fit_rms_mm']:.0f} mm)")
    if props.get("map_residual_mm", 0.0) > config.max_map_residual_mm:
        reasons.append(f"point disagrees with the anchor map ({props['map_residual_mm']:.0f} mm)")
    if "ncc" in props and props["ncc"] < config.min_ncc:
        reasons.append(f"weak image match (NCC {props['ncc']:.2f})")
    if props.get("support_spread_mm", 0.0) > config.max_support_spread_mm:
        reasons.append(f"supports disagree (spread {props['support_spread_mm']:.0f} mm)")
    return reasons


def flag_uncertain(result: OneShotResult, config: RefineConfig, unlike: str | None = None) -> None:
    """Unselect the points that cannot be trusted and say why in their description; collect warnings."""
    flagged = []
    peaks = [p.properties["ncc"] for p in result.points if "ncc" in p.properties]
    mismatch = None
    if peaks and float(np.median(peaks)) < config.min_median_ncc:
        mismatch = (f"weak image match for most points (median NCC {np.median(peaks):.2f}): support and query may "
                    "differ in contrast or sequence; check the points, or try --refine affine")
        result.warnings.append(mismatch)
    for point in result.points:
        reasons = uncertainty_reasons(point.properties, config)
        if mismatch is not None:
            reasons.append("weak image match for most points of this query")
        if unlike is not None:
            reasons.append("image unlike the training data")
            point.properties["unlike_training"] = 1
        if reasons:
            point.selected = False
            point.description = "uncertain: " + "; ".join(reasons)
            flagged.append(point.label)
    if unlike is not None:
        result.warnings.append(unlike)
    if flagged:
        result.warnings.append(f"{len(flagged)} of {len(result.points)} points uncertain (unselected): "
                               + ", ".join(flagged[:6]) + (" ..." if len(flagged) > 6 else ""))


def query_orientation(geometry: ImageGeometry) -> np.ndarray:
    """3x3 box orientation (columns, LPS) from the image axes; 2D images get z as third axis."""
    r = np.eye(3)
    r[: geometry.ndim, : geometry.ndim] = geometry.direction
    return r


def boxes_from_points(points: Sequence[ControlPoint], geometry: ImageGeometry) -> list[Box]:
    """One box per organ whose extreme points (``<organ>_xmin`` ...) were located, along the query axes.

    Padded by one voxel of the query, so that a box through extreme voxel
    centres matches the voxel-edge boxes of :func:`landmarkloc.geometry.labels.label_boxes`.
    """
    orientation = query_orientation(geometry)
    boxes = []
    for name, positions in group_extreme_points(points).items():
        if len(positions) == 2 * geometry.ndim:
            boxes.append(box_from_points(np.asarray(positions), orientation, name, padding=geometry.spacing))
    return boxes


def support_points_from_labels(labelmap: sitk.Image, labels: Sequence[int],
                               names: Sequence[str] | None = None) -> list[ControlPoint]:
    """The six (2D: four) extreme points of each organ: the support annotation for boxes."""
    return label_extreme_points(labelmap, labels, names)


def result_from_positions(names: Sequence[str], positions: np.ndarray, query_image: sitk.Image, method: str,
                          seconds: float, properties: Sequence[dict] | None = None) -> OneShotResult:
    """Package located positions (P, D) of any method as points (+ boxes for extreme-point names), with a
    warning when the query looks like a label map."""
    geometry = ImageGeometry.from_image(query_image)
    points = []
    for n, (name, pos) in enumerate(zip(names, positions)):
        props = {"method": method}
        if properties is not None:
            props.update(properties[n])
        points.append(ControlPoint(name, to_point3(pos), properties=props))
    warning = label_map_warning(query_image, "the query image")
    return OneShotResult(points=points, boxes=boxes_from_points(points, geometry), seconds=seconds, method=method,
                         warnings=[warning] if warning else [])


def _by_name(points: Sequence[ControlPoint], names: Sequence[str], where: str) -> np.ndarray:
    table = {p.label: p.position for p in points}
    missing = [n for n in names if n not in table]
    if missing:
        raise InputError(f"{where}: no point named {', '.join(missing[:5])}")
    if not names:
        raise InputError(f"{where}: no points given")
    return np.stack([np.asarray(table[n], dtype=np.float64) for n in names])


def support_positions(image: sitk.Image, points: Sequence[ControlPoint], names: Sequence[str],
                      where: str = "support") -> np.ndarray:
    """The named support points (P, D), refused when missing or outside the support image (a wrong file?)."""
    geometry = ImageGeometry.from_image(image)
    pos = from_point3(_by_name(points, names, where), geometry.ndim)
    inside = geometry.contains(pos, margin=1.0)
    if not np.all(inside):
        outside = [n for n, ok in zip(names, inside) if not ok]
        raise InputError(f"{where}: point(s) outside the support image: {', '.join(outside[:5])} "
                         "(points and image must be in the same physical space)")
    return pos


class OneShotLocator:
    """Coarse (and optional fine) RPR models, ready to make templates and locate points and boxes."""

    def __init__(self, coarse: RprModel, fine: RprModel | None = None, device: torch.device | str = "cpu",
                 fine_steps: int = 1) -> None:
        if coarse.stage != "coarse":
            raise ModelError(f"the coarse model is a '{coarse.stage}' model")
        if fine is not None and fine.ndim != coarse.ndim:
            raise ModelError("the coarse and fine models are for different image dimensions")
        self.coarse = coarse
        self.fine = fine
        self.device = torch.device(device)
        self.fine_steps = int(fine_steps) if fine is not None else 0
        self.coarse.net.to(self.device).eval()
        if fine is not None:
            fine.net.to(self.device).eval()

    @classmethod
    def from_files(cls, coarse, fine=None, device: str = "auto", fine_steps: int = 1) -> OneShotLocator:
        from landmarkloc.runtime import resolve_device

        dev = resolve_device(device)
        return cls(load_rpr_model(coarse, dev), load_rpr_model(fine, dev) if fine else None, dev, fine_steps)

    @property
    def ndim(self) -> int:
        return self.coarse.ndim

    def _models(self) -> list[RprModel]:
        return [self.coarse] + ([self.fine] if self.fine is not None else [])

    def prepare(self, image: sitk.Image, name: str = "image") -> dict[int, PreparedVolume]:
        """The image prepared for each model (shared when spacing and intensity agree)."""
        if image.GetDimension() != self.ndim:
            raise InputError(f"{name}: {image.GetDimension()}D image, but the RPR models are {self.ndim}D")
        out: dict[int, PreparedVolume] = {}
        cache: dict[str, PreparedVolume] = {}
        for n, model in enumerate(self._models()):
            key = repr((model.spacing, sorted(model.intensity.items()), model.foreground_threshold))
            if key not in cache:
                cache[key] = prepare_volume(image, model.spacing, model.intensity, model.foreground_threshold,
                                            self.device, name=name)
            out[n] = cache[key]
        return out

    @torch.inference_mode()
    def _latents(self, model: RprModel, volume: PreparedVolume, index: np.ndarray) -> torch.Tensor:
        patches = extract_patches(volume, index, model.patch_size)
        per_pass = PATCHES_PER_PASS if self.device.type == "cpu" else len(patches)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            return torch.cat([model.net(chunk).float() for chunk in patches.split(max(1, per_pass))])

    def make_template(self, support_images: sitk.Image | Sequence[sitk.Image],
                      support_points: Sequence[ControlPoint] | Sequence[Sequence[ControlPoint]],
                      refine: RefineConfig | None = DEFAULT_REFINE) -> Template:
        """Latent vectors of the support patches; several supports (few-shot) are averaged.

        With ``refine`` (the default) the template also holds anchors and
        intensity patches from the first support, for :meth:`locate`'s refinement.
        """
        if isinstance(support_images, sitk.Image):
            support_images, support_points = [support_images], [support_points]
        if len(support_images) != len(support_points) or not support_images:
            raise InputError("give one point list per support image")
        names = [p.label for p in support_points[0]]
        if len(set(names)) != len(names):
            raise InputError("support point names must be unique")
        coarse_sum, fine_sum, positions = 0.0, 0.0, []
        refinement = {}
        for n, (image, points) in enumerate(zip(support_images, support_points)):
            where = f"support {n + 1}"
            if image.GetDimension() != self.ndim:
                raise InputError(f"{where}: {image.GetDimension()}D image, but the RPR models are {self.ndim}D")
            pos = support_positions(image, points, names, where)
            volumes = self.prepare(image, f"{where} image")
            coarse_sum = coarse_sum + self._latents(self.coarse, volumes[0], volumes[0].to_index(pos)).cpu().numpy()
            if self.fine is not None:
                fine_sum = fine_sum + self._latents(self.fine, volumes[1], volumes[1].to_index(pos)).cpu().numpy()
            positions.append(to_point3(pos))
            if n == 0 and refine is not None:
                anchors = sample_anchors(volumes[0], refine.anchors, refine.anchor_margin_mm, refine.anchor_seed)
                refinement = dict(
                    anchor_positions=volumes[0].to_physical(anchors),
                    anchor_latents=self._latents(self.coarse, volumes[0], anchors).cpu().numpy(),
                    patches=support_patches(volumes[0], pos, refine.patch_mm, refine.step_mm),
                    patch_mm=refine.patch_mm, step_mm=refine.step_mm, point_positions=pos,
                    affine_patches=support_patches(volumes[0], pos, refine.affine_patch_mm, refine.affine_step_mm),
                    affine_patch_mm=refine.affine_patch_mm, affine_step_mm=refine.affine_step_mm)
        k = len(support_images)
        return Template(names=names, ndim=self.ndim, coarse_latents=np.asarray(coarse_sum / k, dtype=np.float32),
                        coarse_sha256=self.coarse.sha256,
                        fine_latents=None if self.fine is None else np.asarray(fine_sum / k, dtype=np.float32),
                        fine_sha256=None if self.fine is None else self.fine.sha256,
                        support_positions=np.mean(positions, axis=0), supports=k, **refinement)

    def check_template(self, template: Template, refine: str = "none") -> None:
        """Refuse a template made for other models or another dimension, or without what ``refine`` needs
        (ModelError; before any work, so callers check once per template)."""
        if refine not in REFINE_MODES:
            raise InputError(f"unknown refinement {refine!r}; choose one of {', '.join(REFINE_MODES)}")
        if template.ndim != self.ndim:
            raise ModelError(f"the template is {template.ndim}D, the models are {self.ndim}D")
        if template.coarse_sha256 != self.coarse.sha256:
            raise ModelError("the template was made with a different coarse model; make it again with this one")
        if self.fine is not None:
            if template.fine_latents is None:
                raise ModelError("the template has no fine-model latents; make it with the fine model too")
            if template.fine_sha256 != self.fine.sha256:
                raise ModelError("the template was made with a different fine model; make it again with this one")
        if refine != "none" and not template.has_refinement:
            raise ModelError("this template has no refinement data (made by an older landmarkloc): make it again "
                             "from the support image (--save-template), or use --refine none")
        if refine in ("ncc", "local-affine") and template.patches is None:
            raise ModelError("this template has no support patches for the NCC search: make it again, or use "
                             "--refine affine")
        if refine == "local-affine" and template.affine_patches is None:
            raise ModelError("this template has no support patches for the local affine refinement (made by an "
                             "older landmarkloc): make it again from the support image, or use --refine ncc")

    def _query_starts(self, query_image: sitk.Image, runs: int, seed: int) -> _QueryStarts:
        """The query prepared for the models and the K start patches' latents: shared by every template."""
        if runs < 1:
            raise InputError("runs must be at least 1")
        start = time.perf_counter()
        volumes = self.prepare(query_image, "query image")
        generator = torch.Generator().manual_seed(int(seed))
        fg = volumes[0].foreground
        picks = torch.randint(len(fg), (runs,), generator=generator).to(fg.device)
        start_index = fg[picks].cpu().numpy()
        latents = self._latents(self.coarse, volumes[0], start_index)  # (K, D): once for all points
        return _QueryStarts(volumes, start_index, latents, runs, time.perf_counter() - start)

    def locate(self, query_image: sitk.Image, template: Template, runs: int = 15, seed: int = 0,
               refine: str = DEFAULT_REFINE_MODE, config: RefineConfig = DEFAULT_REFINE) -> OneShotResult:
        """Locate the template's points (and boxes) in ``query_image``.

        ``refine``: ``'none'`` (the paper: coarse mean, then the fine model if
        given), ``'affine'`` (coarse, robust anchor map, fine model if given),
        ``'ncc'`` (``'affine'`` then the local NCC search) or ``'local-affine'``
        (``'ncc'`` then a local affine map per point; the default).
        Every point gets ``properties`` (spread of the K runs, map residual, NCC
        peak) and is unselected with the reason in its description when one of
        them says it cannot be trusted (:func:`uncertainty_reasons`).
        """
        self.check_template(template, refine)
        starts = self._query_starts(query_image, runs, seed)
        return self._locate_from(query_image, starts, template, refine, config)

    def locate_consensus(self, query_image: sitk.Image, templates: Sequence[Template], runs: int = 15,
                         seed: int = 0, refine: str = DEFAULT_REFINE_MODE,
                         config: RefineConfig = DEFAULT_REFINE) -> OneShotResult:
        """Few-shot: locate with each support's template alone, then take the per-point median (multi-atlas).

        One support's anatomy biases every point it gives; supports whose
        errors are independent cancel out in the median (two: the mean). The
        query is prepared and its start patches encoded once. Each point gets
        ``support_spread_mm`` (RMS distance of the supports' positions to the
        consensus) and is unselected when the supports disagree
        (> ``config.max_support_spread_mm``) or when the median of the supports' signals (spread, residual,
        NCC) crosses a limit.
        """
        templates = list(templates)
        if not templates:
            raise InputError("give at least one template")
        names = templates[0].names
        for n, template in enumerate(templates[1:], start=2):
            if template.names != names:
                raise InputError(f"support {n} has other point names than support 1 ({', '.join(names[:3])} ...); "
                                 "every support must annotate the same points")
        for template in templates:
            self.check_template(template, refine)
        if len(templates) == 1:
            return self.locate(query_image, templates[0], runs, seed, refine, config)
        start = time.perf_counter()
        starts = self._query_starts(query_image, runs, seed)
        results = [self._locate_from(query_image, starts, t, refine, config, flag=False) for t in templates]
        positions = np.stack([from_point3(np.stack([p.position for p in r.points]), self.ndim) for r in results])
        consensus = np.median(positions, axis=0)
        support_spread = np.sqrt(((positions - consensus[None]) ** 2).sum(axis=-1).mean(axis=0))
        properties = []
        for n in range(len(names)):
            props = {key: round(float(np.median([r.points[n].properties[key] for r in results])), 4)
                     for key, value in results[0].points[n].properties.items()
                     if isinstance(value, (int, float)) and key != "runs"}
            props.update(runs=runs, supports=len(templates), support_spread_mm=round(float(support_spread[n]), 3))
            properties.append(props)
        result = result_from_positions(names, consensus, query_image, "rpr", time.perf_counter() - start,
                                       properties)
        flag_uncertain(result, config, self._unlike(starts))
        result.refine = refine
        result.timings = {"prepare and starts": starts.seconds,
                          "supports": time.perf_counter() - start - starts.seconds}
        return result

    def _unlike(self, starts: _QueryStarts) -> str | None:
        return unlike_profile(starts.volumes[0].data.cpu().numpy(), self.coarse.metadata.get("intensity_profile"))

    def _locate_from(self, query_image: sitk.Image, starts: _QueryStarts, template: Template, refine: str,
                     config: RefineConfig, flag: bool = True) -> OneShotResult:
        """:meth:`locate` on a query whose preparation and start latents are done (``flag``: set the flags)."""
        start = time.perf_counter()
        timings = {"prepare": starts.seconds}
        volumes, start_index, latent_q, runs = starts.volumes, starts.index, starts.latents, starts.runs
        coarse_vol = volumes[0]
        count = len(template.names)
        support_latents = template.coarse_latents
        if refine != "none":
            support_latents = np.concatenate([support_latents, template.anchor_latents])
        latent_s = torch.as_tensor(support_latents, device=latent_q.device)  # (P [+ A], D)
        offsets = relative_offset(latent_s[None], latent_q[:, None], self.coarse.radius_mm).cpu().numpy()
        runs_all = coarse_vol.to_physical(start_index)[:, None, :] + coarse_vol.offsets_to_physical(offsets)
        mean_all = runs_all.mean(axis=0)
        spread_all = np.sqrt(((runs_all - mean_all[None]) ** 2).sum(axis=-1).mean(axis=0))
        runs_pos, position, spread = runs_all[:, :count], mean_all[:count], spread_all[:count]
        coarse_position = position.copy()
        timings["coarse"] = time.perf_counter() - start
        properties = [{"spread_mm": round(float(s), 3), "runs": runs} for s in spread]
        fit = None
        t0 = time.perf_counter()
        if refine != "none":
            prior = 1.0 / (spread_all[count:] ** 2 + config.spread_floor_mm**2)
            fit = fit_affine(template.anchor_positions, mean_all[count:], prior, config.fit_iterations)
            position = fit.apply(template.point_positions)
            if config.locality_mm > 0:
                position = map_locally(fit, template.anchor_positions, mean_all[count:], template.point_positions,
                                       config.locality_mm)
            for props, c, p in zip(properties, coarse_position, position):
                props["map_residual_mm"] = round(float(np.linalg.norm(c - p)), 3)
                props["fit_rms_mm"] = round(fit.rms_mm, 3)
        timings["anchor map"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if self.fine is not None:
            fine_vol = volumes[1]
            latent_fs = torch.as_tensor(template.fine_latents, device=latent_q.device)
            before_fine = position.copy()
            for _ in range(self.fine_steps):
                index = fine_vol.to_index(position)
                latent_fq = self._latents(self.fine, fine_vol, index)  # (P, D): one patch per point
                step = relative_offset(latent_fs, latent_fq, self.fine.radius_mm).cpu().numpy()
                position = fine_vol.to_physical(index) + fine_vol.offsets_to_physical(step)
            for props, p, c in zip(properties, position, before_fine):
                props["fine_shift_mm"] = round(float(np.linalg.norm(p - c)), 3)
        timings["fine"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if refine in ("ncc", "local-affine"):
            position, peak, border = ncc_search(coarse_vol, template.patches, position, fit.matrix,
                                                template.step_mm, config.search_mm, config.search_passes)
            for props, value, edge in zip(properties, peak, border):
                props["ncc"] = round(float(value), 4)
                props["ncc_on_border"] = int(edge)
        timings["ncc search"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if refine == "local-affine":
            matched = position
            position, peak = local_affine_search(coarse_vol, template.affine_patches, matched, fit.matrix,
                                                 template.affine_step_mm, config.affine_iterations,
                                                 config.affine_learning_rate)
            for props, value, p, c in zip(properties, peak, position, matched):
                props["affine_ncc"] = round(float(value), 4)
                props["affine_shift_mm"] = round(float(np.linalg.norm(p - c)), 3)
        timings["local affine"] = time.perf_counter() - t0
        result = result_from_positions(template.names, position, query_image, "rpr",
                                       starts.seconds + time.perf_counter() - start, properties)
        if flag:
            flag_uncertain(result, config, self._unlike(starts))
        result.run_positions = runs_pos
        result.refine = refine
        result.timings = timings
        return result

    def locate_boxes(self, query_image: sitk.Image, template: Template, runs: int = 15, seed: int = 0,
                     refine: str = DEFAULT_REFINE_MODE, config: RefineConfig = DEFAULT_REFINE) -> OneShotResult:
        """Like :meth:`locate`; the template must hold organ extreme points (``<organ>_xmin`` ...)."""
        if not group_extreme_points([ControlPoint(n, np.zeros(3)) for n in template.names]):
            raise InputError("the template has no organ extreme points (<organ>_xmin ...); "
                             "make it from a support label map")
        return self.locate(query_image, template, runs=runs, seed=seed, refine=refine, config=config)
