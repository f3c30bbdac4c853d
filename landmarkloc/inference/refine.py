"""Refinement of one-shot points across subjects: a robust anchor map, a local NCC search, a local affine map.

The coarse RPR agent's estimates are noisy and, across subjects, biased point by
point. Three steps turn them into positions a user can rely on:

1. **Anchor map.** The template also holds a few hundred *anchor* points spread
   over the support's body, with their coarse latent vectors. Their coarse
   estimates in the query reuse the K start patches' latents (no extra network
   pass), so they cost almost nothing. A robust affine map support -> query is
   fitted to them (iteratively reweighted least squares with Tukey's biweight;
   each anchor also weighted by the spread of its K runs) and carries the target
   points over. Hundreds of noisy estimates average into a map far better than
   any one of them.
2. **Local NCC search.** Around each mapped point the query is sampled along
   the map (so a rotated or scaled query is compared in the support's frame) and
   the support's intensity patch around the target (stored in the template) is
   matched by normalised cross-correlation within +-``search_mm``; the best
   window (sub-voxel by a parabola through the peak) is the answer.
3. **Local affine** (``local-affine``, the default). A wider support patch per
   point may also stretch and shear into the query: its own affine map, started
   at the NCC match and the anchor map, follows the gradient of the NCC. This
   follows structures whose shape differs between the subjects, which a patch
   that can only move cannot.

Everything is vectorised: the anchor fit is a few 4x4 solves, the search one
trilinear sampling of all query blocks and one grouped convolution, the local
affine a few dozen batched samplings and their gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from landmarkloc.inference.patches import PreparedVolume
from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE, REFINE_MODES  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class RefineConfig:
    """How the template is made for refinement and how a query is refined.

    Template side: ``anchors`` points in the support body at least
    ``anchor_margin_mm`` inside it; ``patch_mm`` support patches sampled every
    ``step_mm``. Query side: NCC search within +-``search_mm``; uncertainty
    thresholds (chosen on the IXI validation split, docs/results.md).
    """

    anchors: int = 400
    anchor_margin_mm: float = 6.0
    anchor_seed: int = 0
    patch_mm: float = 24.0
    step_mm: float = 2.0
    # query side (chosen on the IXI validation split: +-6 mm with a second pass matched +-10 mm and 32 mm patches
    # within 0.01 IoU at a third of the cost)
    search_mm: float = 6.0
    search_passes: int = 2  # search again around the points whose best match was on the search border
    fit_iterations: int = 10
    spread_floor_mm: float = 5.0  # anchor weight 1 / (spread^2 + floor^2)
    locality_mm: float = 0.0  # > 0: per point, an affine fit to the anchors near it (Gaussian sigma)
    # uncertainty: a point is flagged when any of these is exceeded. On the IXI validation split the NCC and
    # map-residual limits flag 17 % of the points, 60 % of them more than 6 mm off (median 8.8 mm vs 3.4 mm for
    # the others). The K-run spread (at most 17.5 mm there) and the anchor-fit RMS (9.3 mm) did not separate good
    # from bad points within IXI; their limits catch gross failures such as a query unlike the training images
    # (the MNI template with today's models: spread 27 mm, fit RMS 23 mm).
    max_spread_mm: float = 20.0
    max_map_residual_mm: float = 12.0
    min_ncc: float = 0.6
    # query level: when the median NCC peak of all points is below this, the images do not match as images
    # (e.g. support and query of different contrasts, where NCC locks onto wrong structures): every point is
    # flagged. Below the lowest median of the 40 IXI validation locates (20 queries x boxes, centroids: 0.71);
    # phantoms of another contrast (Testing/test_rpr_appearance.py): 0.66-0.67.
    min_median_ncc: float = 0.7
    max_fit_rms_mm: float = 15.0
    # few-shot (OneShotLocator.locate_consensus): RMS distance of the supports' positions to their median
    max_support_spread_mm: float = 6.0
    # local affine (refine "local-affine", after the NCC search): a wider, coarser support patch per point whose
    # affine map into the query (start: the NCC match and the anchor map) is fitted by NCC gradient ascent. IXI
    # validation, first 10 queries, IXI-16 centroids, median (docs/oneshot.md): NCC search alone 2.14 mm; 40 mm
    # patches every 4 mm, 40 Adam steps of 0.1: 1.41 mm; 25 steps of 0.15: 1.43 mm at 5/8 of the cost (kept);
    # fewer or coarser steps, smaller patches or a pull towards the anchor map: 1.58-2.19 mm
    affine_patch_mm: float = 40.0
    affine_step_mm: float = 4.0
    affine_iterations: int = 25
    affine_learning_rate: float = 0.15


DEFAULT_REFINE = RefineConfig()


def sample_anchors(volume: PreparedVolume, count: int, margin_mm: float, seed: int = 0) -> np.ndarray:
    """``count`` voxel indices (ITK order) drawn from the body, at least ``margin_mm`` inside it."""
    body = volume.body.float()[None, None]
    radius = max(0, int(round(margin_mm / float(min(volume.geometry.spacing)))))
    if radius > 0:
        pool = F.max_pool3d if volume.ndim == 3 else F.max_pool2d
        inner = -pool(-body, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0.5  # erosion
        if int(inner.sum()) < count:
            inner = volume.body
    else:
        inner = volume.body
    candidates = torch.nonzero(inner).flip(-1).cpu().numpy()  # ITK order
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return candidates[np.sort(pick)]


@dataclass
class AffineFit:
    """``y = x @ matrix.T + translation`` (LPS mm), with the robust weights and residuals of the anchors."""

    matrix: np.ndarray
    translation: np.ndarray
    weights: np.ndarray
    residuals: np.ndarray
    rms_mm: float  # weighted RMS residual of the inliers

    def apply(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) @ self.matrix.T + self.translation


def fit_affine(source: np.ndarray, target: np.ndarray, prior_weights: np.ndarray | None = None,
               iterations: int = 10) -> AffineFit:
    """Robust affine ``source -> target`` by IRLS with Tukey's biweight (scale from the weighted MAD).

    Falls back to a translation when the anchors cannot determine an affine map
    (fewer than D + 1 of them, or all in a plane).
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = x.shape
    prior = np.ones(n) if prior_weights is None else np.asarray(prior_weights, dtype=np.float64)
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    weights = prior.copy()
    matrix, translation = np.eye(d), np.zeros(d)
    for _ in range(max(1, iterations)):
        w = np.sqrt(weights)[:, None]
        solution, _, rank, _ = np.linalg.lstsq(design * w, y * w, rcond=None)
        if rank < d + 1:
            matrix = np.eye(d)
            translation = np.average(y - x, axis=0, weights=weights + 1e-12)
        else:
            matrix, translation = solution[:d].T, solution[d]
        residuals = np.linalg.norm(x @ matrix.T + translation - y, axis=1)
        scale = 1.4826 * _weighted_median(residuals, prior) + 1e-6
        c = 4.685 * scale
        weights = prior * np.clip(1.0 - (residuals / c) ** 2, 0.0, None) ** 2
        if weights.sum() <= 0:
            weights = prior.copy()
    residuals = np.linalg.norm(x @ matrix.T + translation - y, axis=1)
    rms = float(np.sqrt(np.average(residuals**2, weights=weights + 1e-12)))
    return AffineFit(matrix=matrix, translation=translation, weights=weights, residuals=residuals, rms_mm=rms)


def map_locally(fit: AffineFit, source: np.ndarray, target: np.ndarray, points: np.ndarray,
                sigma_mm: float) -> np.ndarray:
    """Map ``points`` by affine fits to the anchors near each one (moving least squares, Gaussian ``sigma_mm``).

    Uses the global fit's robust weights, so outlier anchors stay out; falls
    back to the global map where too few anchors are near.
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    out = fit.apply(pts)
    d = x.shape[1]
    for k, p in enumerate(pts):
        w = fit.weights * np.exp(-0.5 * ((x - p) ** 2).sum(axis=1) / sigma_mm**2)
        if (w > 1e-3 * max(fit.weights.max(), 1e-12)).sum() < 4 * (d + 1):
            continue
        sw = np.sqrt(w)[:, None]
        solution, _, rank, _ = np.linalg.lstsq(design * sw, y * sw, rcond=None)
        if rank == d + 1:
            out[k] = np.append(p, 1.0) @ solution
    return out


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def patch_offsets(patch_mm: float, step_mm: float, ndim: int, extra: int = 0) -> np.ndarray:
    """Offsets (mm, LPS axes) of a cubic patch of ``patch_mm`` (+ ``extra`` samples) centred on 0: (N, D)."""
    n = int(round(patch_mm / step_mm)) + extra
    axis = (np.arange(n) - (n - 1) / 2.0) * step_mm
    grids = np.meshgrid(*([axis] * ndim), indexing="ij")  # LPS axis 0 slowest
    return np.stack(grids, axis=-1).reshape(-1, ndim)


def sample_around(volume: PreparedVolume, centres: np.ndarray, offsets: np.ndarray,
                  matrix: np.ndarray | None = None) -> torch.Tensor:
    """Trilinear (bilinear) samples at ``centres[p] + matrix @ offsets[n]`` (LPS mm): ``(P, N)``; outside reads 0.

    The physical -> voxel map is affine, so only the centres go through it in
    float64; the ``P x N`` sample positions are built in float32 on the volume's device.
    """
    ndim = volume.ndim
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, ndim)
    linear = np.eye(ndim) if matrix is None else np.asarray(matrix, dtype=np.float64)
    base, mm_to_grid = _grid_map(volume, centres)
    step = linear.T @ mm_to_grid  # offset (mm, support frame) -> normalised grid units
    device = volume.device
    grid = (torch.as_tensor(base, dtype=torch.float32, device=device)[:, None, :]
            + torch.as_tensor(np.asarray(offsets, dtype=np.float64) @ step, dtype=torch.float32,
                              device=device)[None])
    return _sample_grid(volume.data, grid)


def _grid_map(volume: PreparedVolume, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """grid_sample coordinates of ``centres`` (LPS mm, float64) and the (D, D) map from mm along LPS axes to
    grid units (row a: one mm along axis a): the physical -> voxel map is affine, so only the centres need
    float64."""
    ndim = volume.ndim
    to_index = volume.geometry.physical_to_index
    origin = to_index(np.zeros((1, ndim)))
    jacobian_t = to_index(np.eye(ndim)) - origin  # row a: the voxel step of one mm along LPS axis a
    size = np.asarray(volume.geometry.size, dtype=np.float64)
    scale = 2.0 / np.maximum(size - 1, 1)  # voxel index -> grid_sample's [-1, 1]
    return to_index(centres) * scale - 1.0, jacobian_t * scale[None, :]


def _sample_grid(data: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a volume's ``data`` at grid coordinates ``(P, N, D)`` (zeros outside): ``(P, N)``."""
    p, n, ndim = grid.shape
    grid = grid.reshape(1, -1, *([1] * (ndim - 1)), ndim)  # grid_sample wants (x=i, y=j, z=k)
    out = F.grid_sample(data[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(p, n)


def support_patches(volume: PreparedVolume, points_lps: np.ndarray, patch_mm: float, step_mm: float) -> np.ndarray:
    """Intensity patches ``(P, n, n, n)`` around support points along the LPS axes (for the NCC search)."""
    ndim = volume.ndim
    offsets = patch_offsets(patch_mm, step_mm, ndim)
    n = int(round(patch_mm / step_mm))
    return sample_around(volume, points_lps, offsets).reshape((len(points_lps),) + (n,) * ndim).cpu().numpy()


def box_sums(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over every window of ``size`` along each axis but the first (batch), by cumulative sums."""
    out = x
    for axis in range(1, x.dim()):
        pad = [0, 0] * (x.dim() - axis - 1) + [1, 0]
        out = torch.cumsum(F.pad(out, pad), dim=axis)
        length = out.shape[axis]
        out = out.narrow(axis, size, length - size) - out.narrow(axis, 0, length - size)
    return out


def ncc_search(volume: PreparedVolume, patches: np.ndarray, centres: np.ndarray, matrix: np.ndarray,
               step_mm: float, search_mm: float, passes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best NCC match of each support patch within +-``search_mm`` (support frame) of its query centre;
    ``passes`` > 1 searches again around the points whose best match lay on the search border.
    """
    position, peak, border = _ncc_search_once(volume, patches, centres, matrix, step_mm, search_mm)
    for _ in range(passes - 1):
        if not border.any():
            break
        again = np.flatnonzero(border)
        position[again], peak[again], border[again] = _ncc_search_once(
            volume, patches[again], position[again], matrix, step_mm, search_mm)
    return position, peak, border


def _ncc_search_once(volume: PreparedVolume, patches: np.ndarray, centres: np.ndarray, matrix: np.ndarray,
                     step_mm: float, search_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One search: the best NCC match of each support patch within +-``search_mm`` of its query centre.

    The query is sampled at ``centre + matrix @ offset`` (``matrix``: the linear
    part of the support -> query map) so the comparison happens in the support's
    frame and a rotated or scaled query still matches. Returns the matched query
    positions (P, D), the peak NCC (P,) and whether the peak lies on the search
    border (P,) (the true match may be further away).
    """
    ndim = volume.ndim
    p = len(patches)
    n = patches.shape[1]
    r = int(round(search_mm / step_mm))
    block = patch_offsets(n * step_mm, step_mm, ndim, extra=2 * r)  # (m^D, D), m = n + 2r
    m = n + 2 * r
    centres = np.asarray(centres, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    blocks = sample_around(volume, centres, block, matrix).reshape((p,) + (m,) * ndim)
    t = torch.as_tensor(patches, dtype=torch.float32, device=blocks.device)
    t = t - t.flatten(1).mean(dim=1).view(-1, *[1] * ndim)
    t_norm = t.flatten(1).norm(dim=1).view(-1, *[1] * ndim)
    dims = tuple(range(1, ndim + 1))
    # correlation of each template with its own block by FFT (no wrap-around inside the valid windows)
    spectrum = torch.fft.rfftn(blocks, dim=dims) * torch.fft.rfftn(t, s=(m,) * ndim, dim=dims).conj()
    valid = (slice(None),) + (slice(0, 2 * r + 1),) * ndim
    numerator = torch.fft.irfftn(spectrum, s=(m,) * ndim, dim=dims)[valid]
    count = float(n**ndim)
    window_sum = box_sums(blocks, n)
    var = (box_sums(blocks * blocks, n) - window_sum * window_sum / count).clamp(min=0)
    scores = numerator / (t_norm * var.sqrt()).clamp(min=1e-9)
    flat_windows = (var.sqrt() < 1e-3 * np.sqrt(count)) | (t_norm < 1e-6)
    scores = scores.masked_fill(flat_windows, -1.0)
    flat = scores.flatten(1)
    best = flat.argmax(dim=1)
    peak = flat.gather(1, best[:, None])[:, 0].cpu().numpy()
    w = 2 * r + 1
    idx = np.stack(np.unravel_index(best.cpu().numpy(), (w,) * ndim), axis=1).astype(np.float64)  # LPS axis order
    on_border = np.any((idx == 0) | (idx == w - 1), axis=1) if r > 0 else np.zeros(p, dtype=bool)
    # sub-sample peak: a parabola through the peak and its neighbours along each axis
    s = flat.cpu().numpy()
    rows = np.arange(p)
    strides = [w ** (ndim - 1 - axis) for axis in range(ndim)]
    best_flat = best.cpu().numpy()
    for axis in range(ndim):
        inside = (idx[:, axis] > 0) & (idx[:, axis] < w - 1)
        lo = s[rows, np.where(inside, best_flat - strides[axis], best_flat)]
        hi = s[rows, np.where(inside, best_flat + strides[axis], best_flat)]
        denom = lo - 2 * s[rows, best_flat] + hi
        ok = inside & (denom < 0)
        idx[ok, axis] += np.clip(0.5 * (lo[ok] - hi[ok]) / denom[ok], -0.5, 0.5)
    shift = (idx - r) * step_mm  # support-frame offset of the best window's centre
    return centres + shift @ matrix.T, peak, on_border


def _ncc_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-9)


def local_affine_search(volume: PreparedVolume, patches: np.ndarray, centres: np.ndarray, matrix: np.ndarray,
                        step_mm: float, iterations: int, learning_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the affine map of its support patch into the query that maximises their NCC.

    Each support patch (``(P, m, m[, m])``, sampled every ``step_mm`` along LPS
    axes around the support point) is compared with the query sampled at
    ``centre + A @ offset``; centre and ``A`` (start: ``centres`` and the anchor
    map's ``matrix``) follow Adam on the NCC, all points in one batch. Where one
    structure's shape differs between the subjects (a wider ventricle, a tilted
    hippocampus), the map's own scale and shear around the point fit it, which a
    patch that can only move cannot. Returns the positions (P, D) and the final
    NCC (P,); a point whose support patch is flat keeps its start.
    """
    # the gradients need autograd even where the caller runs in inference mode (the bench, the Slicer worker)
    with torch.inference_mode(False):
        return _local_affine_search(volume, patches, centres, matrix, step_mm, iterations, learning_rate)


def _local_affine_search(volume, patches, centres, matrix, step_mm, iterations, learning_rate):
    ndim = volume.ndim
    count, width = len(patches), patches.shape[1]
    device = volume.device
    data = volume.data.clone() if volume.data.is_inference() else volume.data  # inference tensors: no autograd
    offsets = torch.as_tensor(patch_offsets(width * step_mm, step_mm, ndim), dtype=torch.float32, device=device)
    target = torch.as_tensor(patches.reshape(count, -1), dtype=torch.float32, device=device)
    usable = target.std(dim=1) > 1e-6
    base, mm_to_grid = _grid_map(volume, np.asarray(centres, dtype=np.float64))
    base_t = torch.as_tensor(base, dtype=torch.float32, device=device)
    to_grid = torch.as_tensor(mm_to_grid, dtype=torch.float32, device=device)
    shift = torch.zeros((count, ndim), dtype=torch.float32, device=device, requires_grad=True)  # mm, LPS
    linear = torch.as_tensor(np.asarray(matrix, dtype=np.float64), dtype=torch.float32, device=device)
    linear = linear.expand(count, ndim, ndim).clone().requires_grad_(True)

    def score(shift, linear) -> torch.Tensor:
        moved = shift[:, None, :] + torch.einsum("pij,nj->pni", linear, offsets)  # (P, N, D) mm from the centre
        return _ncc_rows(_sample_grid(data, base_t[:, None, :] + moved @ to_grid), target)

    # Adam written out (torch.optim's first step costs a second of imports; this is the whole of it)
    params = [shift, linear]
    first = [torch.zeros_like(x) for x in params]
    second = [torch.zeros_like(x) for x in params]
    beta1, beta2 = 0.9, 0.999
    for step in range(1, iterations + 1):
        with torch.enable_grad():
            grads = torch.autograd.grad(-score(*params)[usable].sum(), params)
        with torch.no_grad():
            for x, g, mean, square in zip(params, grads, first, second):
                mean.mul_(beta1).add_(g, alpha=1 - beta1)
                square.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (square / (1 - beta2**step)).sqrt_().add_(1e-8)
                x.addcdiv_(mean, denom, value=-learning_rate / (1 - beta1**step))
    with torch.no_grad():
        final = score(shift, linear)
        moved = torch.where(usable[:, None], shift, torch.zeros_like(shift))
    return np.asarray(centres, dtype=np.float64) + moved.cpu().numpy().astype(np.float64), final.cpu().numpy()
