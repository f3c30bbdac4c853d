"""Draw the Slicer icons (128x128 PNG) with matplotlib: the modules' (a slice with landmarks / with an organ box)
and the extension's (both), which EXTENSION_ICONURL points to.

Run from the repository root: ``python scripts/make_slicer_icons.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE_PX = 128


def slice_image(n: int = 128) -> np.ndarray:
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    head = ((x / 0.78) ** 2 + (y / 0.9) ** 2 <= 1.0) * 0.55
    inner = ((x / 0.62) ** 2 + ((y + 0.05) / 0.74) ** 2 <= 1.0) * 0.25
    blob = np.exp(-((x - 0.15) ** 2 + (y + 0.2) ** 2) / 0.02) * 0.35
    return head + inner + blob


def draw(path: Path, landmarks: bool, box: bool) -> None:
    fig = plt.figure(figsize=(1, 1), dpi=SIZE_PX)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(slice_image(), cmap="gray", extent=(-1, 1, -1, 1), vmin=0, vmax=1.1)
    if landmarks:
        for (x, y), colour in zip([(-0.35, 0.35), (0.3, 0.42), (0.0, -0.55), (0.45, -0.1)],
                                  ["#ff7f7f", "#ff7f7f", "#ff7f7f", "#ffd900"]):
            ax.plot(x, y, "o", ms=9, mfc=colour, mec="white", mew=1.5)
    if box:
        ax.add_patch(Rectangle((-0.1, -0.5), 0.5, 0.55, fill=False, ec="#4fc3f7", lw=3))
    if box and not landmarks:
        ax.plot([-0.6, -0.1], [0.6, 0.0], "--", color="#ffd900", lw=2)
        ax.plot(-0.6, 0.6, "o", ms=9, mfc="#ffd900", mec="white", mew=1.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=SIZE_PX, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    draw(ROOT / "LandmarkLocalizer" / "Resources" / "Icons" / "LandmarkLocalizer.png", landmarks=True, box=False)
    draw(ROOT / "RPROneShot" / "Resources" / "Icons" / "RPROneShot.png", landmarks=False, box=True)
    draw(ROOT / "Resources" / "LandmarkLoc.png", landmarks=True, box=True)
