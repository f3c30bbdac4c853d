"""Deformable registration baseline: ANTs SyN (antspyx) after affine, support points carried into the query.

The support image is registered to the query (fixed = query, moving = support)
with ``ants.registration`` (default ``type_of_transform="SyN"``: affine, then
symmetric normalisation). ANTs maps *points* the opposite way to images: its
forward transforms (warp, affine), which resample the support into the query's
grid, take a query point to the support point that lands on it. A support point
is carried into the query by the inverse list ``invtransforms`` (affine
inverted, then the inverse warp), which SyN computes with the forward one.
ANTs physical points are LPS millimetres like ITK's, so no flips are needed.

antspyx is an optional dependency (``pip install 'landmarkloc[deformable]'``);
:func:`require_ants` says so in one line when it is missing. Measured against
SimpleITK B-spline and elastix in docs/oneshot.md.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from landmarkloc.errors import InputError
from landmarkloc.inference.oneshot import OneShotResult, result_from_positions

INSTALL_HINT = "pip install 'landmarkloc[deformable]'"


def require_ants(what: str = "--method deformable"):
    """The ``ants`` module, or an :class:`InputError` saying how to install it (one line)."""
    try:
        import ants
    except ImportError:
        raise InputError(f"{what} needs antspyx: {INSTALL_HINT}") from None
    return ants


@dataclass(frozen=True)
class DeformableConfig:
    """ANTs registration settings; the defaults are antspyx's ``SyN`` (Mattes MI, 40x20x0 SyN iterations)."""

    type_of_transform: str = "SyN"
    reg_iterations: tuple[int, ...] = (40, 20, 0)
    # the metric's sampling: ANTs gets seed + 1 (it takes 0 as "seed from the clock"); None: from the clock. With
    # more than one ITK thread the result still varies a little (~0.3 mm on the test phantom): set
    # ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 before the first import of ants for identical runs
    seed: int | None = 0
    extra: dict = field(default_factory=dict)  # further keyword arguments of ants.registration


def to_ants(image: sitk.Image):
    """A scalar SimpleITK image as an ANTs image on the same physical grid (float32)."""
    ants = require_ants()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("deformable registration needs a scalar (single-component) image")
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)  # numpy order (z, y, x)
    ndim = image.GetDimension()
    return ants.from_numpy(np.ascontiguousarray(array.transpose()),  # ANTs arrays are in ITK index order
                           origin=list(image.GetOrigin()), spacing=list(image.GetSpacing()),
                           direction=np.array(image.GetDirection()).reshape(ndim, ndim))


@contextlib.contextmanager
def _ants_seed(ants, seed):
    """ANTs reads its random seed from package state (``ants.config``); set it for one call only (0 there means
    the clock, so the seed is shifted by one)."""
    config = getattr(ants, "config", None)
    if config is None or not hasattr(config, "_random_seed"):
        yield
        return
    before = config._random_seed
    config._random_seed = None if seed is None else int(seed) + 1
    try:
        yield
    finally:
        config._random_seed = before


def map_support_points(points: np.ndarray, query_image: sitk.Image, support_image: sitk.Image,
                       config: DeformableConfig = DeformableConfig()) -> np.ndarray:
    """Register the support to the query with ANTs and return the support points (P, D) mapped into the query."""
    ants = require_ants()
    ndim = query_image.GetDimension()
    fixed, moving = to_ants(query_image), to_ants(support_image)
    with tempfile.TemporaryDirectory(prefix="landmarkloc-ants-") as tmp, _ants_seed(ants, config.seed):
        try:
            reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=config.type_of_transform,
                                    reg_iterations=tuple(config.reg_iterations), outprefix=f"{tmp}/reg_",
                                    **config.extra)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"deformable registration failed: {str(exc).splitlines()[0] if str(exc) else exc}") \
                from None
        inverse = list(reg["invtransforms"])
        # invtransforms is [affine, inverse warp] (SyN) or [affine] (linear types); the affine is inverted
        whichtoinvert = [name.endswith(".mat") for name in inverse]
        import pandas as pd

        columns = list("xyz")[:ndim]
        frame = pd.DataFrame(np.asarray(points, dtype=np.float64), columns=columns)
        mapped = ants.apply_transforms_to_points(ndim, frame, inverse, whichtoinvert=whichtoinvert)
        return mapped[columns].to_numpy(dtype=np.float64)


def deformable_locate(query_image: sitk.Image, support_image: sitk.Image, support_points,
                      config: DeformableConfig = DeformableConfig(),
                      names: Sequence[str] | None = None) -> OneShotResult:
    """Deformable registration (ANTs SyN) of the support to the query; the support points carried over."""
    from landmarkloc.inference.baselines import _support
    from landmarkloc.io.image import check_not_constant

    start = time.perf_counter()
    require_ants()
    _, names, pos = _support(query_image, support_image, support_points, names)
    check_not_constant(support_image, "support image")
    check_not_constant(query_image, "query image")
    located = map_support_points(pos, query_image, support_image, config)
    return result_from_positions(names, located, query_image, "deformable", time.perf_counter() - start)
