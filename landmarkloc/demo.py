"""The demo: brain landmarks and one-shot localization on the MNI152 T1 template.

The template image comes with the ``nilearn`` package (the ``demo`` extra), so
the demo needs no download. Step 1 localizes the 16 IXI-16 landmarks with the
global-to-local FCN ``brain-t1-ixi16``. Step 2 moves the template's anatomy by
a known rigid motion and crops it (a "new patient"), then finds the same 16
points one-shot with the RPR models from the shipped support template (made on
the unmoved template, ``models/recipes/mni152_support_template.py``); since
the motion is known, the demo reports how far each point is from where it
should be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry.frames import ImageGeometry
from .geometry.resample import crop_or_pad
from .inference.refine_modes import DEFAULT_REFINE_MODE
from .io.image import read_image
from .io.markups import write_points
from .io.modelfile import shipped_model
from .points import ControlPoint
from .viz import render_overview

MNI_IN_NILEARN = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
FCN_MODEL = "brain-t1-ixi16"
RPR_MODELS = ("brain-t1-rpr-coarse", "brain-t1-rpr-fine")
SUPPORT_TEMPLATE = "brain-t1-rpr-mni152-support"
ONE_SHOT_TOLERANCE_MM = 10.0  # above this median distance the demo says plainly that one-shot failed


def mni_template_path() -> Path:
    """The MNI152 (2009c, symmetric) T1 template shipped inside the nilearn wheel."""
    try:
        import nilearn
    except ImportError:
        raise InputError("the demo needs the 'demo' extra: pip install 'landmarkloc[demo]' (it brings nilearn, "
                         "whose wheel contains the MNI152 template)") from None
    path = Path(nilearn.__file__).parent / MNI_IN_NILEARN
    if not path.is_file():
        raise InputError(f"this nilearn has no MNI152 T1 template at {path}")
    return path


@dataclass(frozen=True)
class Motion:
    """A known rigid motion plus a crop: what turns the template into the demo's query."""

    rotation_deg: tuple = (6.0, -4.0, 10.0)
    translation_mm: tuple = (8.0, -12.0, 5.0)
    crop_mm: float = 12.0  # removed from each side along x

    def transform(self, center) -> sitk.Euler3DTransform:
        rx, ry, rz = np.deg2rad(self.rotation_deg)
        return sitk.Euler3DTransform(tuple(float(c) for c in center), float(rx), float(ry), float(rz),
                                     tuple(float(t) for t in self.translation_mm))


def moved_query(image: sitk.Image, motion: Motion = Motion()) -> tuple:
    """(query image, transform mapping template points to query points)."""
    geometry = ImageGeometry.from_image(image)
    center = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2.0)
    t = motion.transform(center)
    moved = sitk.Resample(image, image, t.GetInverse(), sitk.sitkLinear, 0.0)  # query(x) = image(T^-1 x)
    crop = int(round(motion.crop_mm / geometry.spacing[0]))
    size = list(geometry.size)
    size[0] -= 2 * crop
    return crop_or_pad(moved, (crop, 0, 0), size), t


def run_demo(out_dir, device: str = "auto", say=print) -> dict:
    """Run both steps, write markups and a PNG overview into ``out_dir``; return a summary."""
    from .inference.fcn import Localizer
    from .inference.oneshot import OneShotLocator, Template

    out = Path(out_dir)
    timings = {}
    t0 = time.perf_counter()
    image = read_image(mni_template_path())
    timings["read template"] = time.perf_counter() - t0
    say(f"MNI152 T1 template: {image.GetSize()} voxels at {image.GetSpacing()[0]:g} mm")

    t0 = time.perf_counter()
    localizer = Localizer.from_file(shipped_model(FCN_MODEL), device=device)
    timings["load FCN model"] = time.perf_counter() - t0
    result = localizer.localize(image)
    timings["localize 16 landmarks (FCN)"] = result.seconds
    points = [lm.to_control_point() for lm in result.landmarks]
    write_points(out / "mni152_landmarks.mrk.json", points)
    say(f"\n1. Global-to-local FCN ({FCN_MODEL}): {len(result.points)} of {len(points)} landmarks found "
        f"in {result.seconds:.2f} s")
    for lm in result.landmarks:
        x, y, z = lm.position
        flag = "" if lm.found and not lm.uncertain else ("  (uncertain)" if lm.found else "  (not found)")
        say(f"   {lm.name:<18} LPS ({x:7.1f}, {y:7.1f}, {z:7.1f}) mm  confidence {lm.confidence:.2f}{flag}")

    t0 = time.perf_counter()
    # coarse agent + anchor map + local NCC search (the default refinement); the fine model is not used: across
    # subjects it made the points worse (docs/results.md, one-shot ablation)
    locator = OneShotLocator.from_files(shipped_model(RPR_MODELS[0]), None, device=device)
    template = Template.load(shipped_model(SUPPORT_TEMPLATE))
    timings["load RPR models + support template"] = time.perf_counter() - t0
    query, motion = moved_query(image)
    found = locator.locate(query, template, runs=15, seed=0, refine=DEFAULT_REFINE_MODE)
    timings["one-shot 16 points, K=15 (RPR + refinement)"] = found.seconds
    truth = np.array([motion.TransformPoint(tuple(float(v) for v in p)) for p in template.support_positions])
    errors = np.linalg.norm(np.array([p.position for p in found.points]) - truth, axis=1)
    for p, e in zip(found.points, errors):
        p.properties["error_vs_known_motion_mm"] = round(float(e), 2)
    write_points(out / "moved_query_oneshot.mrk.json", found.points)
    say(f"\n2. One-shot RPR on the template moved by a known rigid motion and cropped: {len(found.points)} points "
        f"in {found.seconds:.2f} s; distance to where the motion put them: median {np.median(errors):.1f} mm, "
        f"max {errors.max():.1f} mm")
    for warning in found.warnings:
        say(f"   {warning}")
    if np.median(errors) > ONE_SHOT_TOLERANCE_MM:
        say(f"   warning: that is far off (median above {ONE_SHOT_TOLERANCE_MM:g} mm): the models or the support "
            "template do not fit this image; see docs/results.md for what to expect.")

    t0 = time.perf_counter()
    render_overview(image, points, out / "mni152_landmarks.png", title=f"{FCN_MODEL} on the MNI152 T1 template")
    truth_points = [ControlPoint(p.label, t) for p, t in zip(found.points, truth)]
    render_overview(query, found.points, out / "moved_query_oneshot.png", reference=truth_points,
                    title="one-shot RPR vs the known positions in the moved, cropped template")
    timings["figures"] = time.perf_counter() - t0
    say(f"\nwrote {out / 'mni152_landmarks.mrk.json'}, {out / 'moved_query_oneshot.mrk.json'},\n"
        f"      {out / 'mni152_landmarks.png'}, {out / 'moved_query_oneshot.png'}")
    say("\ntime per step:")
    for step, seconds in timings.items():
        say(f"   {step:<38} {seconds:6.2f} s")
    return {"timings": timings, "oneshot_errors_mm": errors.tolist(), "found": len(result.points)}
