"""Global-to-local landmark localization with a trained FCN model.

The image is resampled to the model spacing (same origin and axes), its
intensities normalized with the model's preset, and the global network runs on
the whole grid (zero-padded at the end to a multiple of the patch size). Its
posterior-weighted votes give a first estimate per landmark; the bank of local
networks then sees one sub-image per landmark centred there (all landmarks in
one grouped forward pass) and refines it the same way. Estimates are continuous
indices of the resampled grid and become LPS millimetres through that grid's
full geometry, so oblique and flipped images come out right.

Python API (used by the Slicer module and the benchmark)::

    loc = Localizer.from_file("model.safetensors", device="auto")
    result = loc.localize(sitk_image, evidence=["Sella"])
    result.points            # ControlPoints of the landmarks found (LPS mm)
    point = refine(loc, sitk_image, "Sella", position_lps)
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import InputError, ModelError
from ..geometry.frames import ImageGeometry, from_point3, to_point3
from ..geometry.intensity import PRESETS, get_preset, normalizer, unlike_profile
from ..geometry.resample import (
    canonical_orientation,
    crop_to_foreground,
    resample_to_grid,
    resampled_geometry,
    to_model_grid,
)
from ..io.image import check_image, check_not_constant, squeeze_single_slice
from ..io.labelmap import label_map_warning
from ..io.modelfile import load_model
from ..networks.fcn import FCNConfig, GlobalToLocal, bank_members
from ..networks.fcn_encoding import get_variant
from ..points import ControlPoint
from ..runtime import resolve_device
from .fcn_shape import ShapeModel, rotation_angle_deg
from .fcn_uncertainty import CONTRAST_GAMMA, TTA_KINDS, Calibration, logistic_probability, shift_offsets
from .fcn_votes import VoteSummary, combine_members, summarize_votes

MODEL_KIND = "fcn"
# Models without a calibration: below this confidence a found landmark is flagged as uncertain (the old rule).
UNCERTAIN_BELOW = 0.5
# An estimate within one global patch of the image's edge whose posterior mass is below this is beyond the edge.
BORDER_CONFIDENCE = 0.1


# --------------------------------------------------------------------------- shared with training


def preprocess(image: sitk.Image, spacing, intensity, with_normalizer: bool = False,
               foreground_margin_mm: float | None = None) -> tuple:
    """(normalized float32 array [k, j, i], geometry) of ``image`` on the model's grid.

    The grid has the canonical axis order (see ``to_model_grid``), so a model
    trained on sagittally stored scans also reads axially stored ones. With
    ``foreground_margin_mm`` the grid is cut to the anatomy (:func:`crop_to_foreground`) before the
    intensities are normalized, so a wider or off-centre field of view changes neither what the
    global network sees nor the intensity map. With ``with_normalizer``, the intensity map (fixed to
    this image's statistics) comes third.
    """
    array, geometry, normalize = normalized_grid(model_grid(image, spacing, foreground_margin_mm), intensity)
    return (array, geometry, normalize) if with_normalizer else (array, geometry)


def model_grid(image: sitk.Image, spacing, foreground_margin_mm: float | None = None) -> sitk.Image:
    """``image`` resampled onto the model's grid, cut to its anatomy with ``foreground_margin_mm`` (what
    :func:`preprocess` normalizes)."""
    resampled = to_model_grid(image, spacing)
    return resampled if foreground_margin_mm is None else crop_to_foreground(resampled, foreground_margin_mm)


def normalized_grid(resampled: sitk.Image, intensity) -> tuple:
    """(normalized float32 array [k, j, i], geometry, intensity map) of an image on the model's grid."""
    raw = sitk.GetArrayViewFromImage(resampled)
    normalize = normalizer(raw, get_preset(intensity))
    return np.ascontiguousarray(normalize(raw), dtype=np.float32), ImageGeometry.from_image(resampled), normalize


@dataclass(frozen=True)
class PreparedImage:
    """An input on the model's grid: the (squeezed) image, its normalized array, the grid, the intensity map
    (fixed to this image) and, where the out-of-distribution check compares another normalization, the
    resampled image it normalizes (None otherwise)."""

    image: sitk.Image
    array: np.ndarray
    geometry: ImageGeometry
    normalize: object
    resampled: sitk.Image | None = None


def _median_shape_residual(result: LocalizationResult) -> float:
    return float(np.median([lm.signals["shape_residual_mm"] for lm in result.landmarks]))


def turned(image: sitk.Image, direction: np.ndarray, spacing) -> sitk.Image:
    """``image`` resampled onto a grid with axes ``direction`` (and ``spacing``: one value or one per axis) that
    covers all of it; outside it, the image's lowest value (air, not a bright frame)."""
    geometry = ImageGeometry.from_image(image)
    corners = np.array([geometry.index_to_physical(np.array(c, dtype=np.float64) * (np.array(geometry.size) - 1))
                        for c in itertools.product((0, 1), repeat=geometry.ndim)])
    along = corners @ direction  # mm along the new axes
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (geometry.ndim,))
    size = np.ceil((along.max(axis=0) - along.min(axis=0)) / spacing).astype(int) + 1
    target = ImageGeometry(origin=direction @ along.min(axis=0), spacing=spacing, direction=direction,
                           size=tuple(int(v) for v in size))
    low = float(sitk.GetArrayViewFromImage(image).min())
    return resample_to_grid(image, target, "linear", low)


def linear_interpolation(array: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Values of ``array`` ([k, j, i]) at continuous ITK indices ``points`` (N, D), (bi/tri)linear, the
    nearest edge value beyond the last voxel centres (as linear resampling within half a voxel of the edge)."""
    d = points.shape[1]
    upper = np.array(array.shape[::-1]) - 1
    points = np.clip(points, 0, upper)
    low = np.minimum(np.floor(points).astype(np.int64), np.maximum(upper - 1, 0))
    frac = points - low
    out = np.zeros(len(points), dtype=np.float64)
    for corner in range(2 ** d):
        bits = [(corner >> a) & 1 for a in range(d)]
        index = np.minimum(low + bits, upper)
        weight = np.prod([frac[:, a] if bit else 1.0 - frac[:, a] for a, bit in enumerate(bits)], axis=0)
        out += weight * array[tuple(index[:, a] for a in reversed(range(d)))]
    return out


class ResampledWindows:
    """An image on a grid of the model whose sub-images are resampled on demand, not the whole grid.

    A fine stage's grid (0.2 mm for a cephalogram: over a million pixels) is
    needed only in the sub-images around the landmarks; resampling just those
    keeps ``localize`` fast. Intensities go through ``normalize``, the model
    grid's intensity map (the same image, so the same statistics). Stands in for
    the grid's array where sub-images are taken (``ndim``, ``shape``, ``windows``).
    """

    def __init__(self, image: sitk.Image, spacing, normalize):
        image = canonical_orientation(image)
        self.source = ImageGeometry.from_image(image)
        self.geometry = resampled_geometry(self.source, spacing)
        self.image = image  # keeps the buffer of the view below alive
        self.array = sitk.GetArrayViewFromImage(image)  # no copy: only the pixels around the windows are read
        self.normalize = normalize
        self.ndim = self.geometry.ndim
        self.shape = tuple(int(n) for n in self.geometry.size[::-1])

    def windows(self, centres: np.ndarray, size: int) -> tuple:
        """As :func:`extract_subimages` on the whole grid: (windows, starts), zero outside the image.

        All windows in one linear interpolation at the points the full resampling
        would take (window voxel -> physical -> input index), reading only the
        input pixels next to them.
        """
        starts = np.round(np.nan_to_num(centres) - (size - 1) / 2.0).astype(int)
        d = self.ndim
        mesh = np.meshgrid(*([np.arange(size)] * d), indexing="ij")  # array order
        offsets = np.stack(mesh[::-1], axis=-1).reshape(-1, d)  # ITK order, window voxels in array order
        points = (starts[:, None, :] + offsets[None]).reshape(-1, d).astype(np.float64)
        source = self.source.physical_to_index(self.geometry.index_to_physical(points))
        extent = np.array(self.source.size)
        inside = np.all((source >= -0.5) & (source <= extent - 0.5), axis=1)
        values = linear_interpolation(self.array, source)
        out = np.where(inside.reshape(len(starts), -1), self.normalize(values.reshape(len(starts), -1)), 0.0)
        out = out.astype(np.float32)
        return out.reshape((len(starts),) + (size,) * d), starts


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad at the end of every axis to a multiple of ``multiple`` (the patch size)."""
    pad = [(0, (-n) % multiple) for n in array.shape]
    return np.pad(array, pad) if any(p for _, p in pad) else array


def _autocast(device: torch.device, enabled: bool = True):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext()


def _memory_format(ndim: int):
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and channels_last:
        x = x.contiguous(memory_format=_memory_format(x.dim() - 2))
    return x


def run_global(net, array: np.ndarray, variant, spacing, device, amp: bool = True,
               channels_last: bool = True) -> VoteSummary:
    """The global network's votes on a whole (resampled, normalized) image.

    ``amp`` (mixed precision) and ``channels_last`` apply on CUDA only.
    """
    padded = pad_to_multiple(array, net.patch_size)
    x = _to_device(torch.from_numpy(padded)[None, None], device, channels_last)
    with _autocast(device, amp):
        logits, disp = net(x)
    return summarize_votes(logits[0].float(), disp[0].float(), net.patch_size, variant, spacing)


def extract_subimages(array: np.ndarray, centres: np.ndarray, size: int) -> tuple:
    """One ``size``^D window per centre (continuous ITK index), zero outside the image.

    Returns (windows (L, *size^D) float32, starts (L, D) integer ITK index of
    each window's first voxel).
    """
    if isinstance(array, ResampledWindows):
        return array.windows(centres, size)
    ndim = array.ndim
    starts = np.round(np.nan_to_num(centres) - (size - 1) / 2.0).astype(int)
    shape_itk = np.array(array.shape[::-1])
    out = np.zeros((len(centres),) + (size,) * ndim, dtype=np.float32)
    for n, start in enumerate(starts):
        lo = np.maximum(start, 0)
        hi = np.minimum(start + size, shape_itk)
        if np.any(hi <= lo):
            continue
        src = tuple(slice(a, b) for a, b in zip(lo[::-1], hi[::-1]))
        dst = tuple(slice(a, b) for a, b in zip((lo - start)[::-1], (hi - start)[::-1]))
        out[(n, *dst)] = array[src]
    return out, starts


def run_bank(bank, windows: np.ndarray, starts: np.ndarray, variant, spacing, device, amp: bool = True,
             channels_last: bool = True) -> list:
    """The bank on B sets of L sub-images (B, L, *size) in one pass; one VoteSummary per set.

    Every member of an ensemble bank sees the same sub-image; its members are
    combined (:func:`combine_members`). Estimates and votes come back as
    indices of the full grid (``starts`` (B, L, D): each window's first voxel).
    """
    members = bank_members(bank, windows.shape[1])
    tiled = np.concatenate([windows] * members, axis=1) if members > 1 else windows
    x = _to_device(torch.from_numpy(np.ascontiguousarray(tiled)), device, channels_last)
    with _autocast(device, amp):
        logits, disp = bank(x)
    out = []
    for b in range(len(windows)):
        summary = summarize_votes(logits[b].float(), disp[b].float(), bank.patch_size, variant, spacing)
        offset = np.concatenate([starts[b]] * members) if members > 1 else starts[b]
        summary.estimate = summary.estimate + offset
        summary.votes = summary.votes + offset[:, None, :]
        out.append(combine_members(summary, members, spacing))
    return out


def run_local(bank, array: np.ndarray, centres: np.ndarray, size: int, variant, spacing, device,
              landmarks=None, amp: bool = True, channels_last: bool = True) -> VoteSummary:
    """Refine ``centres`` (L, D) with the local bank: one grouped forward pass for all landmarks.

    ``landmarks`` restricts the pass to some landmark rows (their sub-images are
    evaluated; the others get empty sub-images and are dropped from the result).
    """
    windows, starts = extract_subimages(array, centres, size)
    summary = run_bank(bank, windows[None], starts[None], variant, spacing, device, amp, channels_last)[0]
    return summary if landmarks is None else summary.rows(landmarks)


def grid_key(spacing) -> tuple:
    """A grid's spacing as a dictionary key (grids of one image differ only in spacing)."""
    return tuple(np.round(np.asarray(spacing, dtype=np.float64), 9))


def regrid(indices: np.ndarray, source: ImageGeometry, target: ImageGeometry) -> np.ndarray:
    """Continuous indices of grid ``source`` -> the same physical points as indices of grid ``target``."""
    if source is target:
        return indices
    return target.physical_to_index(source.index_to_physical(np.asarray(indices, dtype=np.float64)))


@dataclass
class LocalStage:
    """A bank of local networks and the grid it works on (sub-images of ``sub_image_size`` voxels)."""

    bank: torch.nn.Module
    spacing: np.ndarray
    sub_image_size: int


@dataclass
class StageResult:
    summary: VoteSummary  # the stage's estimates (indices of its grid)
    start: np.ndarray  # (L, D) where its sub-images were centred (indices of its grid)
    array: np.ndarray
    geometry: ImageGeometry


def run_stages(stages, centres: np.ndarray, geometry: ImageGeometry, grid, variant, device, landmarks=None,
               amp: bool = True, channels_last: bool = True) -> list:
    """Refine ``centres`` (L, D; indices of ``geometry``) with each stage in turn, each on its own grid.

    ``grid(spacing)`` gives (normalized array, geometry) of the image at that
    spacing. ``landmarks`` restricts the stages to some landmark rows (as run_local).
    """
    results = []
    centres = np.asarray(centres, dtype=np.float64)
    for stage in stages:
        array, stage_geometry = grid(stage.spacing)
        centres = regrid(centres, geometry, stage_geometry)
        summary = run_local(stage.bank, array, centres, stage.sub_image_size, variant, stage_geometry.spacing,
                            device, landmarks=landmarks, amp=amp, channels_last=channels_last)
        start = centres if landmarks is None else centres[list(landmarks)]
        results.append(StageResult(summary, start, array, stage_geometry))
        centres = centres.copy()
        centres[slice(None) if landmarks is None else list(landmarks)] = summary.estimate
        geometry = stage_geometry
    return results


def mirror_partners(names) -> list | None:
    """For each landmark the index of its left/right partner (itself on the midline), or None without pairs.

    Pairs are names that differ only in a ``_L``/``_R`` (or ``_Left``/``_Right``) suffix.
    """
    index = {n: i for i, n in enumerate(names)}
    swaps = (("_L", "_R"), ("_R", "_L"), ("_Left", "_Right"), ("_Right", "_Left"))
    partners, paired = [], False
    for i, name in enumerate(names):
        partner = i
        for a, b in swaps:
            if name.endswith(a) and name[: -len(a)] + b in index:
                partner, paired = index[name[: -len(a)] + b], True
                break
        partners.append(partner)
    return partners if paired else None


def left_right_axis(geometry: ImageGeometry) -> int | None:
    """The array axis ([k, j, i] order) closest to the patient's left-right direction (3D images only)."""
    if geometry.ndim != 3:
        return None
    itk_axis = int(np.argmax(np.abs(geometry.direction[0])))
    return geometry.ndim - 1 - itk_axis


def local_tta_estimates(bank, array: np.ndarray, global_centres: np.ndarray, local_estimate: np.ndarray, size: int,
                        variant, spacing, device, shift_step: int, kinds=("shift", "recentre", "contrast"),
                        mirror=None, amp: bool = True, channels_last: bool = True) -> dict:
    """Test-time augmentation of the local stage in one batched pass of the local bank.

    Returns the local estimates (L, D) (continuous indices) of the sub-images
    ``shifted`` by +-``shift_step`` voxels along every axis from the global
    estimate (a list), ``recentred`` at the local estimate, with their
    ``contrast`` multiplied by ``CONTRAST_GAMMA``, and ``mirrored``: the
    recentred sub-image flipped left-right and given to the local network of
    the left/right partner landmark (``mirror = (array axis, partners)``), a
    second opinion from another network; only the ``kinds`` asked for.
    """
    sets, tags = [], []
    if "shift" in kinds:
        for o in shift_offsets(array.ndim, shift_step):
            sets.append(extract_subimages(array, global_centres + o, size))
            tags.append("shifted")
    if "recentre" in kinds:
        sets.append(extract_subimages(array, local_estimate, size))
        tags.append("recentred")
    if "contrast" in kinds:
        windows, starts = extract_subimages(array, global_centres, size)
        sets.append((windows * CONTRAST_GAMMA, starts))
        tags.append("contrast")
    if "mirror" in kinds and mirror is not None:
        axis, partners = mirror
        windows, starts = extract_subimages(array, local_estimate, size)
        flipped = np.flip(windows, axis=1 + axis)[partners]  # network p sees the flipped window of its partner
        sets.append((np.ascontiguousarray(flipped), starts))
        tags.append("mirrored")
    out = {"shifted": []}
    if not sets:
        return out
    windows = np.stack([w for w, _ in sets])
    zeros = np.zeros((len(sets), windows.shape[1], array.ndim), dtype=int)  # window indices first
    summaries = run_bank(bank, windows, zeros, variant, spacing, device, amp, channels_last)
    for (_, starts), tag, summary in zip(sets, tags, summaries):
        estimate = summary.estimate
        if tag == "mirrored":
            axis, partners = mirror
            itk_axis = array.ndim - 1 - axis
            estimate = estimate[partners]  # row n: network partners[n] on landmark n's flipped window
            estimate[:, itk_axis] = (size - 1) - estimate[:, itk_axis]
        estimate = estimate + starts
        if tag == "shifted":
            out["shifted"].append(estimate)
        else:
            out[tag] = estimate
    return out


def uncertainty_signals(glob: VoteSummary | None, local: VoteSummary | None, spacing, tta: dict | None = None,
                        local_spacing=None, global_in_local=None, before_fine=None) -> dict:
    """Every candidate uncertainty signal (see :mod:`.fcn_uncertainty`), (L,) arrays; absent stages give none.

    ``local`` is the last local stage's summary. ``spacing`` is the global
    grid's; a last stage on its own grid (a fine stage) gives its spacing
    (``local_spacing``), the global estimate as indices of that grid
    (``global_in_local``) and the estimate it started from (``before_fine``).
    """
    global_spacing = np.asarray(spacing, dtype=np.float64)
    spacing = global_spacing if local_spacing is None else np.asarray(local_spacing, dtype=np.float64)
    out = {}

    def dist(a, b, grid_spacing=None):
        s = spacing if grid_spacing is None else grid_spacing
        return np.linalg.norm((np.asarray(a) - np.asarray(b)) * s, axis=-1)

    if glob is not None:
        out["global_confidence"] = glob.confidence
        out["global_spread_mm"] = glob.spread_mm
        out["global_peak"] = glob.probability.flatten(1).max(dim=1).values.cpu().numpy().astype(np.float64)
    if local is not None:
        out["local_confidence"] = local.confidence
        out["local_spread_mm"] = local.spread_mm
    for tag, summary in (("global", glob), ("local", local)):
        if summary is None:
            continue
        prob = summary.probability.flatten(1).float()
        top = prob.argmax(dim=1).cpu().numpy()
        out[f"{tag}_mode_mm"] = dist(summary.votes[np.arange(len(top)), top], summary.estimate,
                                     global_spacing if tag == "global" else spacing)
        if tag == "local":
            out["local_peak"] = prob.max(dim=1).values.cpu().numpy().astype(np.float64)
            out["local_mass"] = prob.sum(dim=1).cpu().numpy().astype(np.float64)
            if summary.members_mm is not None:
                out["local_members_mm"] = summary.members_mm
            if before_fine is not None:
                out["local_fine_mm"] = dist(before_fine, summary.estimate)
    if glob is not None and local is not None:
        out["confidence"] = np.minimum(glob.confidence, local.confidence)
        out["global_local_mm"] = dist(local.estimate, glob.estimate if global_in_local is None else global_in_local)
    else:
        out["confidence"] = (glob or local).confidence
    if tta is not None and local is not None:
        if tta.get("shifted"):
            shifted = np.stack([dist(e, local.estimate) for e in tta["shifted"]])
            out["local_shift_mm"] = np.sqrt((shifted ** 2).mean(axis=0))
        for kind, name in (("recentred", "local_recentre_mm"), ("contrast", "local_contrast_mm"),
                           ("mirrored", "local_mirror_mm")):
            if kind in tta:
                out[name] = dist(tta[kind], local.estimate)
    return {k: np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0) for k, v in out.items()}


def outside_view(estimate: np.ndarray, shape, votes: np.ndarray | None = None, confidence=None,
                 border: float = 0.0) -> np.ndarray:
    """(L,) True where the network places a landmark outside the image of array ``shape``.

    That is: the estimate (continuous ITK index) lies outside the image (or is
    undefined); or, given the votes (L, N, D), their component-wise median does
    (every cell regresses the displacement to the landmark, also to one out of
    view, so most votes point outside when it is); or, given ``confidence``, the
    estimate lies within ``border`` voxels of the image's edge with a confidence
    below ``BORDER_CONFIDENCE`` (pushed against the edge with no cell claiming it:
    beyond the edge). A landmark in view that is hard to see is found, and flagged
    by its uncertainty, not "not found".
    """
    upper = np.array(shape[::-1], dtype=np.float64) - 0.5

    def outside(points, margin=0.0):
        with np.errstate(invalid="ignore"):
            return ~np.all((points >= -0.5 + margin) & (points <= upper - margin), axis=-1)

    estimate = np.asarray(estimate, dtype=np.float64)
    out = outside(estimate)
    if votes is not None:
        out = out | outside(np.median(votes, axis=1))
    if confidence is not None and border > 0:
        out = out | (outside(estimate, border) & (np.asarray(confidence) < BORDER_CONFIDENCE))
    return out


# --------------------------------------------------------------------------- results


@dataclass
class LandmarkEstimate:
    """One landmark's result, positions in LPS mm (3,) (2D images: z = 0)."""

    name: str
    position: np.ndarray
    confidence: float  # 0..1: posterior mass near the estimate (global and local stage)
    spread_mm: float  # weighted RMS distance of the final stage's votes from the estimate
    found: bool
    uncertain: bool
    global_position: np.ndarray
    global_confidence: float
    local_confidence: float | None = None
    unlike_training: bool = False  # the image is unlike the training images (intensities, or the configuration)
    p_large_error: float | None = None  # calibrated P(error > radius_mm); None for an uncalibrated model
    radius_mm: float | None = None
    # the distance from the point within which its true position lies at the calibration's stated rate
    # (e.g. 90 %; conformal on validation images and shifted copies of them); None: not calibrated
    error_radius_mm: float | None = None
    error_radius_coverage: float | None = None  # that rate
    reasons: tuple = ()  # why the point is uncertain beyond its probability (guards crossed, a wide radius)
    signals: dict = field(default_factory=dict)  # uncertainty signals (see fcn_uncertainty)

    def to_control_point(self) -> ControlPoint:
        props = {"confidence": round(float(self.confidence), 4), "spread_mm": round(float(self.spread_mm), 3),
                 "found": int(self.found)}
        if self.local_confidence is not None:
            props["global_confidence"] = round(float(self.global_confidence), 4)
            props["local_confidence"] = round(float(self.local_confidence), 4)
        calibrated = self.p_large_error is not None and self.found
        if calibrated:
            props["p_large_error"] = round(float(self.p_large_error), 4)
            props["radius_mm"] = float(self.radius_mm)
            if self.error_radius_mm is not None:
                props["error_radius_mm"] = round(float(self.error_radius_mm), 2)
        if self.unlike_training:
            props["unlike_training"] = 1
        chance = ""
        if calibrated:
            share = "<1%" if self.p_large_error < 0.005 else f"{self.p_large_error:.0%}"
            chance = f"{share} chance of an error > {self.radius_mm:g} mm"
            if self.error_radius_mm is not None:
                chance += (f"; true position within {self.error_radius_mm:.1f} mm "
                           f"({self.error_radius_coverage:.0%} of such points)")
        if not self.found:
            text = "not found"
        elif self.unlike_training:
            text = "uncertain: image unlike the training data" + (f"; {chance}" if chance else "")
        elif self.uncertain:
            why = "; ".join(self.reasons + ((chance,) if chance else ()))
            text = f"uncertain: {why}" if why else "uncertain"
        else:
            text = chance
        return ControlPoint(label=self.name, position=self.position, description=text,
                            selected=self.found and not self.uncertain, properties=props)


@dataclass
class LocalizationResult:
    landmarks: list  # LandmarkEstimate, in the model's landmark order
    seconds: float = 0.0  # time of the localization itself (no model loading)
    evidence: dict = field(default_factory=dict)  # name -> sitk.Image posterior on the input grid
    votes: dict = field(default_factory=dict)  # name -> (positions (N, 3) LPS mm, weights (N,))
    warnings: list = field(default_factory=list)  # one-line warnings for the user (not errors)
    pose_turned_deg: float | None = None  # localized again on a grid turned by this angle (a tilted anatomy)

    @property
    def points(self) -> list:
        """ControlPoints of the landmarks found; not-found landmarks are left out, never invented."""
        return [lm.to_control_point() for lm in self.landmarks if lm.found]

    @property
    def not_found(self) -> list:
        return [lm.name for lm in self.landmarks if not lm.found]


# --------------------------------------------------------------------------- the model


def build_network(metadata: dict) -> GlobalToLocal:
    try:
        global_cfg = FCNConfig.from_dict(metadata["global_architecture"])
        local = metadata.get("local_architecture")
        local_cfg = FCNConfig.from_dict(local) if local else None
        fine = metadata.get("fine_stage")
        fine_cfg = FCNConfig.from_dict(fine["architecture"]) if fine else None
    except (KeyError, TypeError) as exc:
        raise ModelError(f"model metadata lacks a valid architecture: {exc}") from None
    names = metadata.get("landmark_names")
    if not isinstance(names, list) or len(names) != global_cfg.num_landmarks:
        raise ModelError("model metadata: landmark_names does not match the network's number of landmarks")
    if metadata.get("ndim") != global_cfg.ndim:
        raise ModelError("model metadata: ndim does not match the network architecture")
    return GlobalToLocal(global_cfg, local_cfg, fine_cfg)


def local_stages(network: GlobalToLocal, metadata: dict) -> list:
    """The model's local refinement stages in order: the local bank, then the fine bank if it has one.

    The local stage works on the model grid; the fine stage on its own (``fine_stage``).
    """
    if network.local_net is None:
        return []
    stages = [LocalStage(network.local_net, np.asarray(metadata["spacing"], dtype=np.float64),
                         int(metadata["sub_image_size"]))]
    fine = metadata.get("fine_stage")
    if fine and network.fine_net is not None:
        stages.append(LocalStage(network.fine_net, np.asarray(fine["spacing"], dtype=np.float64),
                                 int(fine["sub_image_size"])))
    return stages


def model_metadata_checked(metadata: dict) -> dict:
    for key in ("ndim", "landmark_names", "spacing", "intensity", "variant", "sub_image_size"):
        if key not in metadata:
            raise ModelError(f"model metadata lacks '{key}'")
    get_variant(metadata["variant"])
    return metadata


class Localizer:
    """A loaded FCN model, ready to localize many images (load once, call often).

    On CUDA the networks run with mixed precision (``amp``) in channels-last
    memory layout (``channels_last``) unless switched off (the benchmark compares both).
    """

    def __init__(self, network: GlobalToLocal, metadata: dict, device="auto", amp: bool = True,
                 channels_last: bool = True):
        self.metadata = model_metadata_checked(metadata)
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.variant = get_variant(metadata["variant"])
        self.names = list(metadata["landmark_names"])
        self.ndim = int(metadata["ndim"])
        self.amp = bool(amp)
        self.channels_last = bool(channels_last)
        self.network = network.to(self.device).eval()
        if self.device.type == "cuda" and self.channels_last:
            self.network = self.network.to(memory_format=_memory_format(self.ndim))
        self.spacing = np.asarray(metadata["spacing"], dtype=np.float64)
        self.intensity = metadata["intensity"]
        # models trained on images cut to their anatomy see every image so (None: the whole field of view)
        self.foreground_margin_mm = metadata.get("foreground_margin_mm")
        self.sub_image_size = int(metadata["sub_image_size"])
        # local refinement stages, each on its grid (same intensity preset as the global network's)
        self.stages = local_stages(self.network, metadata)
        self.uncertain_below = float(metadata.get("uncertain_below", UNCERTAIN_BELOW))
        # test models (untrained networks) report every landmark
        self.always_found = bool(metadata.get("always_found", False))
        self.calibration = Calibration.from_metadata(metadata)
        self.shape = ShapeModel.from_metadata(metadata, self.names)
        self.partners = mirror_partners(self.names)
        last_size = self.stages[-1].sub_image_size if self.stages else self.sub_image_size
        self.tta_shift = int((self.calibration.fit.get("tta_shift") if self.calibration else None)
                             or max(1, last_size // 8))
        # said once per loaded model (CLI: after loading; Slicer: with the results), not per image
        self.calibration_notice = None if self.calibration is not None else (
            "this model has no calibrated uncertainty: 'uncertain' means confidence below "
            f"{self.uncertain_below:g} (fit one with 'landmarkloc calibrate')")

    @classmethod
    def from_file(cls, path, device="auto", amp: bool = True, channels_last: bool = True) -> Localizer:
        tensors, metadata = load_model(path, kind=MODEL_KIND)
        network = build_network(model_metadata_checked(metadata))
        try:
            network.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ModelError(f"{Path(path).name}: weights do not fit the architecture in its metadata ({first})") \
                from None
        return cls(network, metadata, device, amp=amp, channels_last=channels_last)

    @property
    def has_local_stage(self) -> bool:
        return self.network.local_net is not None

    def _prepare(self, image: sitk.Image) -> PreparedImage:
        """``image`` on the model's grid (the local stage's too)."""
        if image.GetDimension() == 3 and self.ndim == 2:
            image = squeeze_single_slice(image)
        if image.GetDimension() != self.ndim:
            raise InputError(f"this model localizes in {self.ndim}D images, got a {image.GetDimension()}D image")
        check_image(image)
        check_not_constant(image)
        resampled = model_grid(image, self.spacing, self.foreground_margin_mm)
        return PreparedImage(image, *normalized_grid(resampled, self.intensity),
                             resampled if self._profile_view() else None)

    def _profile_view(self) -> str | None:
        """The preset under which the intensity profile compares images when it is not the model's own (an
        equalizing model's: the percentile range), else None."""
        profile = self.metadata.get("intensity_profile")
        view = profile.get("preset") if isinstance(profile, dict) else None
        return view if view is not None and view != get_preset(self.intensity).name else None

    def _unlike_training(self, prepared: PreparedImage) -> str | None:
        """The warning when the image's intensities are unlike the training images', compared under the
        normalization the profile was recorded with."""
        profile, view = self.metadata.get("intensity_profile"), self._profile_view()
        if view is None:
            return unlike_profile(prepared.array, profile)
        if view not in PRESETS:
            return None  # a profile this version cannot read: nothing to compare with
        return unlike_profile(normalized_grid(prepared.resampled, view)[0], profile)

    def _grids(self, image: sitk.Image, array: np.ndarray, geometry: ImageGeometry, normalize):
        """``grid(spacing)`` -> (array, geometry) of ``image`` for the stages, each made once.

        A grid other than ``geometry``'s (a fine stage's) is resampled only where
        sub-images are taken (:class:`ResampledWindows`), with ``geometry``'s intensity map.
        """
        cache = {grid_key(geometry.spacing): (array, geometry)}

        def grid(spacing):
            key = grid_key(spacing)
            if key not in cache:
                windows = ResampledWindows(image, spacing, normalize)
                cache[key] = (windows, windows.geometry)
            return cache[key]
        return grid

    def _name_index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"the model has no landmark {name!r} (it knows: {', '.join(self.names)})") from None

    @torch.inference_mode()
    def localize(self, image: sitk.Image, evidence=(), use_local: bool = True, tta: bool | None = None
                 ) -> LocalizationResult:
        """All landmarks of one image; ``evidence``: names (or True for all) whose posterior map to return.

        ``tta``: run the test-time-augmented local passes (default: when the
        model's calibration uses their signals); ``landmarkloc calibrate`` asks for them.
        A model with a pose (its ``shape``) localizes a second time, on a grid turned with the anatomy, when
        the points found lie in a pose further from the validation images' than they ever were (a tilted head).
        """
        start = time.perf_counter()
        if image.GetDimension() == 3 and self.ndim == 2:
            image = squeeze_single_slice(image)
        result, grid, other_intensities = self._localize(image, evidence, use_local, tta, image)
        rotation = None
        # not for intensities unlike the training images' (no tilt makes a CT an MR), but when only the
        # configuration looked odd: a tilt can be what made it so
        if self.shape is not None and not other_intensities:
            found = np.array([lm.found for lm in result.landmarks])
            points = np.array([from_point3(lm.position, self.ndim) for lm in result.landmarks])
            rotation = self.shape.pose(np.where(found[:, None], (points - grid.origin) @ grid.direction, np.nan))
        if rotation is not None:
            # voxels as fine as the image's, but no finer than the finest stage needs (a 0.8 mm CT turned at 2 mm)
            finest = min([min(grid.spacing)] + [min(stage.spacing) for stage in self.stages])
            spacing = max(min(image.GetSpacing()), finest)
            again, _, _ = self._localize(turned(image, grid.direction @ rotation, spacing), evidence, use_local,
                                         tta, image)
            # kept only when its points fit the landmark configuration better: an unusual anatomy (not a tilt)
            # can look like a pose, and turning such a head away from the training poses would harm it
            if _median_shape_residual(again) < _median_shape_residual(result):
                result = again
                result.pose_turned_deg = rotation_angle_deg(rotation)
        result.seconds = time.perf_counter() - start
        return result

    def _localize(self, image: sitk.Image, evidence, use_local: bool, tta, evidence_grid: sitk.Image) -> tuple:
        """(result, model grid geometry, whether the intensities were unlike the training images') of one pass;
        evidence maps on ``evidence_grid`` (the user's image)."""
        prepared = self._prepare(image)
        image, array, geometry, normalize = prepared.image, prepared.array, prepared.geometry, prepared.normalize
        unlike = other_intensities = self._unlike_training(prepared)
        glob = run_global(self.network.global_net, array, self.variant, geometry.spacing, self.device,
                          self.amp, self.channels_last)
        final, local, augmented = glob, None, None
        final_array, final_geometry, global_in_local, before_fine = array, geometry, None, None
        if use_local and self.has_local_stage:
            results = run_stages(self.stages, glob.estimate, geometry, self._grids(image, array, geometry, normalize),
                                 self.variant, self.device, amp=self.amp, channels_last=self.channels_last)
            last = results[-1]
            local = final = last.summary
            final_array, final_geometry = last.array, last.geometry
            global_in_local = regrid(glob.estimate, geometry, final_geometry)
            if len(results) > 1:
                before_fine = last.start
            kinds = TTA_KINDS if tta else (() if tta is not None or self.calibration is None
                                           else self.calibration.tta_kinds())
            if kinds:
                augmented = local_tta_estimates(
                    self.stages[-1].bank, final_array, np.nan_to_num(last.start), np.nan_to_num(local.estimate),
                    self.stages[-1].sub_image_size, self.variant, final_geometry.spacing, self.device,
                    self.tta_shift, kinds, self._mirror(final_geometry), self.amp, self.channels_last)
        signals = uncertainty_signals(glob, local, geometry.spacing, augmented, final_geometry.spacing,
                                      global_in_local, before_fine)
        # A landmark is not found when the network places it outside the image (or most of its
        # votes point outside): a landmark in view but hard to see is found, and uncertain.
        out_of_view = outside_view(final.estimate, final_array.shape) | outside_view(
            glob.estimate, array.shape, glob.votes, glob.confidence, border=self.network.global_net.patch_size)
        found = self.always_found | ~np.asarray(out_of_view, dtype=bool)
        positions = np.array([final_geometry.index_to_physical(np.nan_to_num(e)) for e in final.estimate])
        odd_shape = self._shape_signal(signals, positions, found)
        unlike = unlike or odd_shape
        p_large = self._p_large_error(signals, local is None)
        uncertain, error_radius, reasons = self._flags(signals, p_large)
        landmarks = []
        for n, name in enumerate(self.names):
            landmarks.append(LandmarkEstimate(
                name=name, position=to_point3(positions[n]), confidence=float(signals["confidence"][n]),
                spread_mm=float(final.spread_mm[n]), found=bool(found[n]),
                uncertain=bool(uncertain[n]) or unlike is not None,
                global_position=to_point3(geometry.index_to_physical(np.nan_to_num(glob.estimate[n]))),
                global_confidence=float(glob.confidence[n]),
                local_confidence=None if local is None else float(local.confidence[n]),
                unlike_training=unlike is not None,
                p_large_error=None if p_large is None else float(p_large[n]),
                radius_mm=None if p_large is None else self.calibration.radius_mm,
                error_radius_mm=None if error_radius is None else float(error_radius[n]),
                error_radius_coverage=None if error_radius is None else self.calibration.error_radius["coverage"],
                reasons=tuple(reasons[n]), signals={k: float(v[n]) for k, v in signals.items()}))
        label_map = label_map_warning(image)
        result = LocalizationResult(landmarks=landmarks, warnings=[w for w in (label_map, unlike) if w])
        wanted = self.names if evidence is True else list(evidence or ())
        for name in wanted:
            n = self._name_index(name)
            result.evidence[name] = self._posterior_image(glob, n, geometry, evidence_grid)
            result.votes[name] = (to_point3(geometry.index_to_physical(glob.votes[n])), glob.weights[n].copy())
        return result, geometry, other_intensities is not None

    def _mirror(self, geometry: ImageGeometry):
        axis = left_right_axis(geometry)
        return None if axis is None or self.partners is None else (axis, self.partners)

    def _shape_signal(self, signals: dict, positions: np.ndarray, found: np.ndarray) -> str | None:
        """Add ``shape_residual_mm`` (models with a shape model); a warning when most points lie far from where
        the others put them, which happens on images unlike the training ones (another contrast, mostly empty)."""
        if self.shape is None:
            return None
        points = np.where(found[:, None], positions, np.nan)
        residual = self.shape.residuals(points)
        signals["shape_residual_mm"] = np.where(np.isfinite(residual), residual, 1e3)  # unplaceable: far off
        typical = float(np.median(signals["shape_residual_mm"]))
        if typical <= self.shape.image_limit_mm:
            return None
        return (f"the landmarks do not form the configuration of the training images (median {typical:.0f} mm "
                f"from where the others put them; usual: {self.shape.typical_mm:.1f} mm): is the image unlike "
                "them (contrast, field of view, anatomy)? Its points are marked uncertain")

    def _flags(self, signals: dict, p_large) -> tuple:
        """(uncertain per point, conformal error radius per point or None, why in words per point).

        Uncertain: the calibrated probability reaches its threshold, a guard is crossed (near-zero
        confidence, votes that disagree) or the point's error radius exceeds the model's tolerance;
        uncalibrated models: confidence below ``uncertain_below``. The words name the guards crossed and a
        landmark whose radius alone exceeds the tolerance (the probability speaks for itself).
        """
        if p_large is None:
            return np.asarray(signals["confidence"]) < self.uncertain_below, None, [[] for _ in self.names]
        cal = self.calibration
        reasons = cal.guard_reasons(signals)
        flagged = (p_large >= cal.threshold) | np.array([bool(r) for r in reasons])
        radius = cal.radius_of(self.names, flagged)
        if radius is not None:
            wide = ~flagged & (radius > cal.radius_mm)
            for i in np.flatnonzero(wide):
                reasons[i].append(f"this landmark's error radius exceeds {cal.radius_mm:g} mm")
            flagged = flagged | wide
        return flagged, radius, reasons

    def _p_large_error(self, signals: dict, global_only: bool):
        """Calibrated P(error > radius) per landmark, or None (no calibration, or it does not cover this case)."""
        cal = self.calibration
        if cal is None or global_only:
            return None  # the calibration was fitted on the full pipeline
        return cal.probability(self._with_rates(signals))

    def _with_rates(self, signals: dict, rows=None) -> dict:
        """Add the calibration's per-landmark prior (``landmark_rate``) to the signals."""
        names = self.names if rows is None else [self.names[r] for r in rows]
        rates = self.calibration.landmark_rates if self.calibration else {}
        default = float(np.mean(list(rates.values()))) if rates else 0.0
        return {**signals, "landmark_rate": np.array([rates.get(n, default) for n in names])}

    def _posterior_image(self, summary: VoteSummary, n: int, geometry: ImageGeometry,
                         image: sitk.Image) -> sitk.Image:
        """The classification posterior of landmark ``n`` resampled onto the input image's grid."""
        patch = self.network.global_net.patch_size
        prob = summary.probability[n].float().cpu().numpy()
        cells = ImageGeometry(
            origin=geometry.index_to_physical(np.full(self.ndim, (patch - 1) / 2.0)),
            spacing=geometry.spacing * patch, direction=geometry.direction, size=prob.shape[::-1])
        cell_image = cells.apply_to(sitk.GetImageFromArray(prob.astype(np.float32)))
        return resample_to_grid(cell_image, ImageGeometry.from_image(image), "linear", 0.0)

    @torch.inference_mode()
    def refine(self, image: sitk.Image, name: str, position_lps) -> ControlPoint:
        """Run only the local stage(s) of landmark ``name`` from a (user-moved) point."""
        if not self.has_local_stage:
            raise ModelError("this model has no local stage (trained as 'global only')")
        n = self._name_index(name)
        prepared = self._prepare(image)
        image, first_array, first_geometry = prepared.image, prepared.array, prepared.geometry
        normalize = prepared.normalize
        start = first_geometry.physical_to_index(from_point3(np.asarray(position_lps, dtype=np.float64), self.ndim))
        centres = np.zeros((len(self.names), self.ndim))
        centres[n] = start
        results = run_stages(self.stages, centres, first_geometry,
                             self._grids(image, first_array, first_geometry, normalize), self.variant, self.device,
                             landmarks=[n], amp=self.amp, channels_last=self.channels_last)
        last = results[-1]
        local, array, geometry = last.summary, last.array, last.geometry
        centre = regrid(start, first_geometry, geometry)
        cal = self.calibration
        refine_cal = cal.refine if cal is not None else None
        augmented = None
        kinds = cal.tta_kinds(refine=True) if refine_cal else ()
        if kinds:
            starts = np.zeros((len(self.names), self.ndim))
            starts[n] = np.nan_to_num(last.start[0])
            full_local = starts.copy()
            full_local[n] = np.nan_to_num(local.estimate[0])
            tta = local_tta_estimates(self.stages[-1].bank, array, starts, full_local,
                                      self.stages[-1].sub_image_size, self.variant, geometry.spacing, self.device,
                                      self.tta_shift, kinds, self._mirror(geometry), self.amp, self.channels_last)
            augmented = {k: ([e[[n]] for e in v] if k == "shifted" else v[[n]]) for k, v in tta.items()}
        signals = uncertainty_signals(None, local, geometry.spacing, augmented,
                                      before_fine=last.start if len(results) > 1 else None)
        # the distance the local stage moved the start point (in localize: from the global estimate)
        moved = np.linalg.norm((local.estimate - centre) * geometry.spacing, axis=-1)
        signals["global_local_mm"] = np.nan_to_num(moved)
        conf = float(local.confidence[0])
        found = self.always_found or not bool(outside_view(local.estimate, array.shape)[0])
        estimate = local.estimate[0] if found else centre
        p_large = float(logistic_probability(refine_cal, self._with_rates(signals, [n]))[0]) if refine_cal else None
        uncertain = p_large >= float(refine_cal["threshold"]) if refine_cal else conf < self.uncertain_below
        lm = LandmarkEstimate(
            name=name, position=to_point3(geometry.index_to_physical(estimate)), confidence=conf,
            spread_mm=float(local.spread_mm[0]), found=found, uncertain=uncertain,
            global_position=to_point3(np.asarray(position_lps, dtype=np.float64)), global_confidence=float("nan"),
            local_confidence=conf, p_large_error=p_large, radius_mm=cal.radius_mm if refine_cal else None,
            signals={k: float(v[0]) for k, v in signals.items()})
        point = lm.to_control_point()
        point.properties.pop("global_confidence", None)
        if not found:
            point.description = "not found near this point (the local network places it outside the image); " \
                "kept where it was"
        return point


def refine(model: Localizer, image: sitk.Image, name: str, position_lps) -> ControlPoint:
    """Refine one landmark from ``position_lps`` with the model's local stage only."""
    return model.refine(image, name, position_lps)
