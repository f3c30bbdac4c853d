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


# Okabe-Ito colours (told apart with every common colour-vision deficiency), with distinct marker shapes too
CONFIDENT_STYLE = {"color": "#56B4E9", "marker": "+", "label": "found"}  # sky blue
UNCERTAIN_STYLE = {"color": "#D55E00", "marker": "x", "label": "found, uncertain"}  # vermillion
REFERENCE_STYLE = {"color": "#F0E442", "marker": "o", "label": "known position"}  # yellow, hollow circle
# where a label may go, nearest first: eight directions, then twelve at each larger distance (points)
LABEL_OFFSETS_PT = [(r * np.cos(a), r * np.sin(a)) for r, angles in
                    [(5, (45, 135, -45, -135, 0, 180, 90, -90))] + [(r, range(0, 360, 30)) for r in (12, 20, 30, 42,
                                                                                                   56, 72, 90)]
                    for a in np.deg2rad(angles)]


def render_overview(image: sitk.Image, points, path, boxes=(), title: str = "", near_mm: float = 10.0,
                    reference=()) -> None:
    """Write a PNG with the image and the points (and boxes) drawn on it.

    3D: axial, coronal and sagittal slices through the points' median; a point
    is drawn on a slice only when it lies within ``near_mm`` of it (None: every
    point, projected), so that no mark sits on anatomy it does not belong to.
    2D: the image with every point. ``reference``: points to compare with (e.g.
    known true positions), drawn unlabelled and joined to the point of the same
    label. Labels are placed so that they do not overlap each other or a mark.
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

    def indices(items):
        pos = np.array([p.position[:ndim] for p in items]) if len(items) else np.zeros((0, ndim))
        return geo.physical_to_index(pos) if len(pos) else pos

    idx, ref_idx = indices(points), indices(reference)
    ref_by_label = dict(zip((p.label for p in reference), ref_idx))
    labels = []  # (axes, [(x, y)], [text], [colour], [reference (x, y)]) placed once the layout is final
    if ndim == 2:
        fig, ax = plt.subplots(figsize=(7, 7 * arr.shape[0] / arr.shape[1]))
        ax.imshow(arr, cmap="gray", vmin=vmin, vmax=vmax)
        labels.append(_draw_points(ax, points, idx, ref_idx, ref_by_label, 0, 1, lambda i: True))
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

            def near(index, fixed=fixed, s=s):
                return near_mm is None or abs(index[fixed] - s) * geo.spacing[fixed] <= near_mm

            labels.append(_draw_points(ax, points, idx, ref_idx, ref_by_label, col_axis, row_axis, near))
            for box in boxes:
                _draw_box(ax, box, geo, fixed, s, row_axis, col_axis)
            shown = "all points projected" if near_mm is None else f"points within {near_mm:g} mm"
            ax.set_title(f"{name} (slice {s}; {shown})", fontsize=9)
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    keyed = _legend(fig, points, reference)
    fig.tight_layout(rect=(0, 0.05, 1, 1) if keyed else (0, 0, 1, 1))
    for ax, anchors, texts, colours, references in labels:
        place_labels(ax, anchors, texts, colours, avoid=references)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _draw_points(ax, points, idx, ref_idx, ref_by_label, x_axis, y_axis, near) -> tuple:
    """Marks for the points (and reference points) ``near`` this slice; returns what their labels need."""
    anchors, texts, colours, references = [], [], [], []
    for index in ref_idx:
        if near(index):
            references.append((index[x_axis], index[y_axis]))
            ax.plot(index[x_axis], index[y_axis], REFERENCE_STYLE["marker"], mfc="none",
                    mec=REFERENCE_STYLE["color"], ms=7, mew=1.2)
    for index, point in zip(idx, points):
        if not near(index):
            continue
        style = CONFIDENT_STYLE if point.selected else UNCERTAIN_STYLE
        ax.plot(index[x_axis], index[y_axis], style["marker"], color=style["color"], ms=8, mew=1.6)
        known = ref_by_label.get(point.label)
        if known is not None and near(known):
            ax.plot([index[x_axis], known[x_axis]], [index[y_axis], known[y_axis]], "-",
                    color=REFERENCE_STYLE["color"], lw=0.7)
        anchors.append((index[x_axis], index[y_axis]))
        texts.append(point.label)
        colours.append(style["color"])
    return ax, anchors, texts, colours, references


def _legend(fig, points, reference) -> bool:
    """A key below the views when they show more than one kind of mark; whether one was drawn."""
    from matplotlib.lines import Line2D

    styles = [s for s, used in ((CONFIDENT_STYLE, any(p.selected for p in points)),
                                (UNCERTAIN_STYLE, any(not p.selected for p in points)),
                                (REFERENCE_STYLE, len(reference) > 0)) if used]
    if len(styles) < 2:
        return False
    handles = [Line2D([], [], ls="none", marker=s["marker"], color=s["color"], mfc="none", ms=7, mew=1.5,
                      label=s["label"]) for s in styles]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    return True


def place_labels(ax, anchors, texts, colours, fontsize: float = 7.0, avoid=()) -> list:
    """Annotate each anchor (data coordinates) with its text where it overlaps no other label and no mark
    (the anchors' and those at ``avoid``, e.g. unlabelled reference points).

    Greedy: each label takes the first offset (nearest first, eight directions) whose box is free, with a
    leader line when it had to move away; if none is free, the least crowded. Returns the annotations.
    """
    renderer = ax.figure.canvas.get_renderer()
    to_display = ax.transData.transform
    marks = [_square(to_display(anchor), 5.0) for anchor in [*anchors, *avoid]]
    taken, placed = list(marks), []
    inside = ax.get_window_extent(renderer)
    points_to_pixels = ax.figure.dpi / 72.0
    for anchor, text, colour in zip(anchors, texts, colours):
        best = None
        for dx, dy in LABEL_OFFSETS_PT:
            leader = {"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 0, "shrinkB": 3} \
                if np.hypot(dx, dy) > 6 else None
            # white on a dark box reads on any anatomy; the box's edge has the mark's colour
            artist = ax.annotate(text, anchor, xytext=(dx, dy), textcoords="offset points", color="white",
                                 fontsize=fontsize, ha="left" if dx > 1 else "right" if dx < -1 else "center",
                                 va="bottom" if dy > 1 else "top" if dy < -1 else "center", arrowprops=leader,
                                 bbox={"boxstyle": "square,pad=0.15", "fc": (0, 0, 0, 0.6), "ec": colour,
                                       "lw": 0.8})
            box = text_box(artist, renderer).padded(1.0 * points_to_pixels)
            crowding = sum(_overlap(box, other) for other in taken)
            crowding += box.width * box.height - _overlap(box, inside)  # outside the picture
            if best is None or crowding < best[0]:
                if best is not None:
                    best[1].remove()
                best = (crowding, artist, box)
            else:
                artist.remove()
            if crowding == 0:
                break
        taken.append(best[2])
        placed.append(best[1])
    return placed


def text_box(annotation, renderer):
    """The display box of an annotation's text alone (an Annotation's own box includes its leader line)."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)  # where its offset puts the text now
    return Text.get_window_extent(annotation, renderer)


def _square(centre, half: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return float(width * height) if width > 0 and height > 0 else 0.0


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
