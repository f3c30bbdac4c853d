"""Overview figures: orthogonal slices through the landmarks, with labels and boxes (PNG).

Slices are taken on the canonical (LPS axis order) grid so that anatomy appears
upright whatever the file's axis order; axial and coronal views follow the
radiological convention (patient's right on the viewer's left).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .geometry.frames import ImageGeometry
from .geometry.resample import to_model_grid
from .io.atomic import atomic_path

# (title, axis fixed by the slice, (row axis, column axis)) in LPS axes 0=x(L), 1=y(P), 2=z(S)
_VIEWS = (("axial", 2, (1, 0)), ("coronal", 1, (2, 0)), ("sagittal", 0, (2, 1)))


def _display_range(arr: np.ndarray) -> tuple:
    lo, hi = np.percentile(arr, (1, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


def render_overview(image: sitk.Image, points, path, boxes=(), title: str = "", near_mm: float = 10.0) -> None:
    """Write a PNG with the image and the points (and boxes) drawn on it.

    3D: axial, coronal and sagittal slices through the points' median; a point
    is drawn on a slice only when it lies within ``near_mm`` of it (None: every
    point, projected), so that no mark sits on anatomy it does not belong to.
    2D: the image with every point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ndim = image.GetDimension()
    spacing = float(min(image.GetSpacing()))
    canon = to_model_grid(image, spacing)
    geo = ImageGeometry.from_image(canon)
    arr = sitk.GetArrayFromImage(canon)  # [k, j, i], axes ordered and signed as L, P, S
    vmin, vmax = _display_range(arr)
    pos = np.array([p.position[:ndim] for p in points]) if len(points) else np.zeros((0, ndim))
    idx = geo.physical_to_index(pos) if len(pos) else pos
    colors = ["tab:red" if p.selected else "tab:orange" for p in points]
    if ndim == 2:
        fig, ax = plt.subplots(figsize=(7, 7 * arr.shape[0] / arr.shape[1]))
        ax.imshow(arr, cmap="gray", vmin=vmin, vmax=vmax)
        for (i, j), p, c in zip(idx, points, colors):
            ax.plot(i, j, "+", color=c, ms=10, mew=1.5)
            ax.annotate(p.label, (i, j), xytext=(4, 4), textcoords="offset points", color=c, fontsize=7)
        ax.set_axis_off()
        axes = [ax]
    else:
        center = np.median(idx, axis=0) if len(idx) else (np.array(geo.size) - 1) / 2.0
        fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
        for ax, (name, fixed, (row_axis, col_axis)) in zip(axes, _VIEWS):
            s = int(np.clip(round(center[fixed]), 0, geo.size[fixed] - 1))
            sl = np.take(arr, s, axis=2 - fixed)  # numpy axis of LPS axis a is 2 - a
            sl = sl if (2 - row_axis) < (2 - col_axis) else sl.T
            aspect = geo.spacing[row_axis] / geo.spacing[col_axis]
            ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, aspect=aspect,
                      origin="lower" if row_axis == 2 else "upper")
            for (pi, p, c) in zip(idx, points, colors):
                if near_mm is not None and abs(pi[fixed] - s) * geo.spacing[fixed] > near_mm:
                    continue
                ax.plot(pi[col_axis], pi[row_axis], "+", color=c, ms=9, mew=1.5)
                ax.annotate(p.label, (pi[col_axis], pi[row_axis]), xytext=(3, 3), textcoords="offset points",
                            color=c, fontsize=6)
            for box in boxes:
                _draw_box(ax, box, geo, fixed, s, row_axis, col_axis)
            shown = "all points projected" if near_mm is None else f"points within {near_mm:g} mm"
            ax.set_title(f"{name} (slice {s}; {shown})", fontsize=9)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _draw_box(ax, box, geo: ImageGeometry, fixed: int, s: int, row_axis: int, col_axis: int) -> None:
    """Outline of an (axis-aligned) box on a canonical slice, if the slice cuts it."""
    from matplotlib.patches import Rectangle

    half = np.abs(box.orientation) @ box.size / 2  # half-extent along the LPS axes
    lo = geo.physical_to_index(box.center - half)
    hi = geo.physical_to_index(box.center + half)
    if not (min(lo[fixed], hi[fixed]) <= s <= max(lo[fixed], hi[fixed])):
        return
    x0, x1 = sorted((lo[col_axis], hi[col_axis]))
    y0, y1 = sorted((lo[row_axis], hi[row_axis]))
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1))
    ax.annotate(box.name, (x0, y0), color="cyan", fontsize=6)
