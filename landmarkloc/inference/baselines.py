"""Baselines for one-shot localisation, with the same output as the RPR agent.

``ncc``: template matching (the paper's comparison): the support patch around
each point is compared with every window of the query by normalised
cross-correlation; the best window's centre is the answer. Two versions give
the same scores: a sliding window with a stride (the paper's, stride 2) and an
FFT correlation at every voxel (much faster on large images).

``registration``: SimpleITK registers the support image to the query (rigid,
then affine, optionally B-spline; Mattes mutual information, multi-resolution)
and maps the support points through the inverse transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from landmarkloc.errors import InputError
from landmarkloc.inference.oneshot import OneShotResult, result_from_positions, support_positions
from landmarkloc.inference.patches import PreparedVolume, extract_patches, prepare_volume
from landmarkloc.io.image import check_not_constant


@dataclass(frozen=True)
class NccConfig:
    """Template matching set-up: both images resampled to ``spacing`` mm, patches of ``patch_size`` voxels."""

    spacing: float = 2.0
    patch_size: int = 32
    intensity: str = "mr"
    stride: int = 2  # sliding-window stride (the paper's 2); the FFT version scores every voxel
    use_fft: bool = True
    min_std: float = 1e-3  # windows flatter than this (air) are never chosen
    templates_per_batch: int = 8  # FFT memory: this many templates at a time


def _box_sum(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Sums over every window of ``size`` (numpy order) of a padded tensor, via cumulative sums."""
    out = x.double()
    for axis, s in enumerate(size):
        out = torch.cumsum(F.pad(out, [0, 0] * (x.dim() - axis - 1) + [1, 0]), dim=axis)
        n = out.shape[axis]
        out = out.narrow(axis, s, n - s) - out.narrow(axis, 0, n - s)
    return out


def ncc_scores(volume: PreparedVolume, templates: torch.Tensor, config: NccConfig) -> tuple[torch.Tensor, int]:
    """NCC of each template ``(P, *patch)`` with the window centred at every (stride) voxel.

    Returns scores ``(P, *grid)`` (numpy order) and the stride of the grid.
    """
    patch = templates.shape[1:]
    size_itk = tuple(reversed(patch))
    padded, pad = volume.padded(size_itk)
    # crop the padded volume so that window n starts at voxel n - p // 2
    region = []
    for axis, p in enumerate(patch):
        lo = int(pad[len(patch) - 1 - axis]) - p // 2
        region.append(slice(lo, lo + volume.data.shape[axis] + p - 1))
    image = padded[tuple(region)].double()
    n = float(np.prod(patch))
    t = templates.double() - templates.double().mean(dim=tuple(range(1, templates.dim())), keepdim=True)
    t_norm = t.flatten(1).norm(dim=1)
    local_sum = _box_sum(image, patch)
    local_sq = _box_sum(image * image, patch)
    stride = 1 if config.use_fft else config.stride
    if stride > 1:
        sl = tuple(slice(None, None, stride) for _ in patch)
        local_sum, local_sq = local_sum[sl], local_sq[sl]
    var = (local_sq - local_sum * local_sum / n).clamp(min=0)
    denom = var.sqrt()
    if config.use_fft:
        fsize = [image.shape[a] for a in range(len(patch))]
        f_image = torch.fft.rfftn(image, s=fsize)
        numer = []
        for chunk in t.split(config.templates_per_batch):
            f_t = torch.fft.rfftn(chunk, s=fsize)
            corr = torch.fft.irfftn(f_image[None] * f_t.conj(), s=fsize)
            numer.append(corr[(slice(None),) + tuple(slice(0, s) for s in local_sum.shape)])
        numerator = torch.cat(numer)
    else:
        # float32 sends the sliding window to oneDNN's direct convolution; in float64 PyTorch unfolds every
        # window (im2col: 32^3 values x 160 000 windows = 42 GB for a 2 mm head), which runs out of memory.
        conv = F.conv3d if len(patch) == 3 else F.conv2d
        numerator = torch.cat([conv(image[None, None].float(), chunk[:, None].float(), stride=stride)[0].double()
                               for chunk in t.split(config.templates_per_batch)])
    scores = numerator / (t_norm.view(-1, *[1] * len(patch)) * denom[None]).clamp(min=1e-12)
    flat = denom[None] < config.min_std * np.sqrt(n)
    return scores.masked_fill(flat, -2.0), stride


def _support(query_image: sitk.Image, support_image: sitk.Image, support_points, names) -> tuple:
    """(dimension, point names, support positions (P, D) in LPS) shared by the baselines; checks the inputs."""
    ndim = query_image.GetDimension()
    if support_image.GetDimension() != ndim:
        raise InputError("support and query images differ in dimension")
    names = list(names) if names is not None else [p.label for p in support_points]
    return ndim, names, support_positions(support_image, support_points, names)


def ncc_locate(query_image: sitk.Image, support_image: sitk.Image, support_points, config: NccConfig = NccConfig(),
               names: Sequence[str] | None = None) -> OneShotResult:
    """Template matching of each support point's patch over the query."""
    start = time.perf_counter()
    ndim, names, pos = _support(query_image, support_image, support_points, names)
    spacing = (float(config.spacing),) * ndim
    patch = (int(config.patch_size),) * ndim
    support = prepare_volume(support_image, spacing, config.intensity, name="support image")
    query = prepare_volume(query_image, spacing, config.intensity, name="query image")
    templates = extract_patches(support, support.to_index(pos), patch)[:, 0]
    scores, stride = ncc_scores(query, templates, config)
    best = scores.flatten(1).argmax(dim=1).cpu().numpy()
    grid = np.stack(np.unravel_index(best, scores.shape[1:]), axis=1)[:, ::-1] * stride  # ITK order voxels
    best_scores = scores.flatten(1).max(dim=1).values.cpu().numpy()
    located = query.to_physical(grid)
    properties = [{"ncc": round(float(s), 4)} for s in best_scores]
    return result_from_positions(names, located, query_image, "ncc",
                                 time.perf_counter() - start, properties)


@dataclass(frozen=True)
class RegistrationConfig:
    """Intensity-based registration of the support image to the query."""

    affine: bool = True
    bspline: bool = False
    bspline_mesh_mm: float = 60.0  # B-spline control point spacing
    iterations: int = 100
    histogram_bins: int = 32
    sampling_fraction: float = 0.05
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (4.0, 2.0, 0.0)
    seed: int = 0


def _registration(config: RegistrationConfig, iterations: int | None = None) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=config.histogram_bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(config.sampling_fraction, config.seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                               numberOfIterations=iterations or config.iterations,
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel(list(config.shrink_factors))
    r.SetSmoothingSigmasPerLevel(list(config.smoothing_mm))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return r


def register_images(fixed: sitk.Image, moving: sitk.Image, config: RegistrationConfig = RegistrationConfig()):
    """Transform mapping fixed (query) physical points to moving (support) points."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    ndim = fixed.GetDimension()
    rigid0 = sitk.Euler3DTransform() if ndim == 3 else sitk.Euler2DTransform()
    rigid0 = sitk.CenteredTransformInitializer(fixed, moving, rigid0,
                                               sitk.CenteredTransformInitializerFilter.MOMENTS)
    r = _registration(config)
    r.SetInitialTransform(rigid0, inPlace=False)
    try:
        rigid = r.Execute(fixed, moving)
    except RuntimeError as exc:
        raise InputError(f"rigid registration failed: {str(exc).splitlines()[0]}") from None
    rigid = rigid.GetNthTransform(0) if isinstance(rigid, sitk.CompositeTransform) else rigid
    rigid = (sitk.Euler3DTransform if ndim == 3 else sitk.Euler2DTransform)(rigid)
    linear = sitk.AffineTransform(ndim)
    linear.SetMatrix(rigid.GetMatrix())
    linear.SetTranslation(rigid.GetTranslation())
    linear.SetCenter(rigid.GetCenter())
    if config.affine:
        r = _registration(config)
        r.SetInitialTransform(linear, inPlace=True)
        try:
            r.Execute(fixed, moving)
        except RuntimeError as exc:
            raise InputError(f"affine registration failed: {str(exc).splitlines()[0]}") from None
    if not config.bspline:
        return linear, None
    mesh = [max(1, int(round(sz * sp / config.bspline_mesh_mm))) for sz, sp in zip(fixed.GetSize(), fixed.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh)
    r = _registration(config)
    r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=config.iterations)
    r.SetMovingInitialTransform(linear)
    r.SetInitialTransform(bspline, inPlace=True)
    try:
        r.Execute(fixed, moving)
    except RuntimeError as exc:
        raise InputError(f"B-spline registration failed: {str(exc).splitlines()[0]}") from None
    return linear, bspline


def map_support_points(points: np.ndarray, linear: sitk.Transform, bspline: sitk.Transform | None) -> np.ndarray:
    """Support -> query points: invert the query -> support transform (fixed-point steps for a B-spline)."""
    inverse = linear.GetInverse()
    out = np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in points])
    if bspline is None:
        return out
    composite = sitk.CompositeTransform([linear, bspline])  # applies bspline first, then linear
    for _ in range(30):  # y <- y + A^-1 (x - T(y)); converges for the smooth, small deformations used here
        mapped = np.array([composite.TransformPoint(tuple(float(v) for v in y)) for y in out])
        residual = points - mapped
        out = out + np.array([np.asarray(inverse.TransformVector(tuple(float(v) for v in r), tuple(y)))
                              for r, y in zip(residual, out)])
        if np.abs(residual).max() < 1e-3:
            break
    return out


def registration_locate(query_image: sitk.Image, support_image: sitk.Image, support_points,
                        config: RegistrationConfig = RegistrationConfig(),
                        names: Sequence[str] | None = None) -> OneShotResult:
    """Register the support to the query and carry the support points over."""
    start = time.perf_counter()
    _, names, pos = _support(query_image, support_image, support_points, names)
    check_not_constant(support_image, "support image")
    check_not_constant(query_image, "query image")
    linear, bspline = register_images(query_image, support_image, config)
    located = map_support_points(pos, linear, bspline)
    return result_from_positions(names, located, query_image, "registration",
                                 time.perf_counter() - start)
