"""Validation of RPR models (choose checkpoints on this, never on the test split).

For each model given (a coarse model, optionally ``COARSE+FINE``), on the IXI validation split:

* **same-image**: offset error of pairs of body points of one real image (the paper's pairs);
* **cross-view**: offset error of pairs across two views of one subject, each rendered with a random
  appearance (TorchIO, as in training) and a known random deformation, the truth carried through the
  deformations; the views are made once (fixed seed) and cached in ``runs/rprval``;
* **IXI-16 one-shot**: support IXI012 (train split) with its 16 label centroids, queries = validation
  subjects, K = 15 runs, median / mean centroid error;
* **MNI self-test**: support = query = the MNI152 T1 template (as the demo loads it) with the 16 points
  that brain-t1-ixi16 places on it, K = 15: median error (a robustness check; 43.5 mm for the model of
  issue 11).

Errors are in mm (Euclidean). Patches are sampled at the exact (continuous) point positions.

    python models/recipes/rpr_validation.py models/brain-t1-rpr-coarse.safetensors \\
        models/brain-t1-rpr-coarse.safetensors+models/brain-t1-rpr-fine.safetensors runs/rpr/new.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from landmarkloc.geometry.resample import resample_to_grid
from landmarkloc.inference.oneshot import OneShotLocator
from landmarkloc.inference.patches import prepare_volume, sample_at, sample_patches
from landmarkloc.io.image import read_image, write_image
from landmarkloc.io.markups import read_points
from landmarkloc.networks.pnet import load_rpr_model, relative_offset
from landmarkloc.training.views import ViewConfig, ViewWarp, labelled_volume, render

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "ixi"
SUPPORT = "IXI012-HH-1211"
PAIRS_PER_SUBJECT = 25


def _subjects(split: str) -> list[str]:
    lines = (REPO / "runs" / "ixi" / f"{split}_images.txt").read_text().split()
    return [Path(line).name[: -len(".nii.gz")] for line in lines]


def make_views(cache: Path, subjects: list[str], seed: int = 0) -> None:
    """Real image + pairs, and two rendered, deformed views + cross pairs per subject (LPS mm), cached."""
    cache.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    config = ViewConfig()
    for subject in subjects:
        if (cache / f"{subject}.json").is_file():
            continue
        image = read_image(DATA / "t1" / f"{subject}.nii.gz")
        prepared = prepare_volume(image, image.GetSpacing(), "mr")
        labels = resample_to_grid(read_image(DATA / "seg" / f"{subject}.nii.gz"), prepared.geometry, "nearest")
        volume = labelled_volume(prepared, sitk.GetArrayFromImage(labels))
        geometry = prepared.geometry
        shape = tuple(reversed(volume.data.shape))
        grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"),
                           -1).reshape(-1, len(shape))
        views, warps = [], []
        for _ in range(2):
            appearance, _ = render(volume, config, generator)
            warp = ViewWarp(shape, volume.spacing, config, generator)
            source = warp.forward(grid).reshape(1, -1, len(shape)).float()
            data = sample_at(appearance, source, shape)[0, 0]
            out = sitk.GetImageFromArray(data.numpy())
            out.SetSpacing(tuple(geometry.spacing))
            out.SetOrigin(tuple(geometry.origin))
            out.SetDirection(tuple(geometry.direction.ravel()))
            views.append(out)
            warps.append(warp)
        for n, view in enumerate(views):
            write_image(view, cache / f"{subject}_view{n}.nii.gz")
        def pick(k: int, body=volume.body) -> torch.Tensor:
            return body[torch.randint(len(body), (k,), generator=generator)].to(torch.float64)

        def phys(index: torch.Tensor, geometry=geometry) -> list:
            return geometry.index_to_physical(index.numpy()).tolist()

        same_s, same_q = pick(PAIRS_PER_SUBJECT), pick(PAIRS_PER_SUBJECT)
        x_s, x_q = pick(PAIRS_PER_SUBJECT), pick(PAIRS_PER_SUBJECT)
        pairs = {"same": {"support": phys(same_s), "query": phys(same_q), "truth": phys(same_s)},
                 "cross": {"support": phys(warps[0].inverse(x_s)), "query": phys(warps[1].inverse(x_q)),
                           "truth": phys(warps[1].inverse(x_s))}}
        (cache / f"{subject}.json").write_text(json.dumps(pairs))


@torch.inference_mode()
def pair_errors(model, support_image: sitk.Image, query_image: sitk.Image, pairs: dict) -> np.ndarray:
    volumes = [prepare_volume(im, model.spacing, model.intensity, model.foreground_threshold)
               for im in (support_image, query_image)]

    def latents(volume, points) -> torch.Tensor:
        index = torch.from_numpy(volume.geometry.physical_to_index(np.asarray(points))).float()
        eye = torch.eye(volume.ndim)[None].expand(len(index), -1, -1)
        return model.net(sample_patches(volume.data, index, model.patch_size, eye))

    offsets = relative_offset(latents(volumes[0], pairs["support"]), latents(volumes[1], pairs["query"]),
                              model.radius_mm).numpy()
    predicted = np.asarray(pairs["query"]) + volumes[1].offsets_to_physical(offsets)
    return np.linalg.norm(predicted - np.asarray(pairs["truth"]), axis=1)


def offset_validation(model, cache: Path, subjects: list[str]) -> dict[str, float]:
    same, cross = [], []
    for subject in subjects:
        pairs = json.loads((cache / f"{subject}.json").read_text())
        real = read_image(DATA / "t1" / f"{subject}.nii.gz")
        same.append(pair_errors(model, real, real, pairs["same"]))
        views = [read_image(cache / f"{subject}_view{n}.nii.gz") for n in range(2)]
        cross.append(pair_errors(model, views[0], views[1], pairs["cross"]))
    same, cross = np.concatenate(same), np.concatenate(cross)
    return {"same_image_mean_mm": float(same.mean()), "same_image_median_mm": float(np.median(same)),
            "cross_view_mean_mm": float(cross.mean()), "cross_view_median_mm": float(np.median(cross))}


def _errors(result, truth) -> np.ndarray:
    where = {p.label: np.asarray(p.position) for p in truth}
    return np.asarray([np.linalg.norm(np.asarray(p.position) - where[p.label]) for p in result.points])


def oneshot_validation(locator: OneShotLocator, subjects: list[str], runs: int) -> dict[str, float]:
    support = read_image(DATA / "t1" / f"{SUPPORT}.nii.gz")
    template = locator.make_template(support, read_points(REPO / "runs" / "ixi" / "landmarks" / f"{SUPPORT}.mrk.json"))
    errors, seconds = [], []
    for subject in subjects:
        result = locator.locate(read_image(DATA / "t1" / f"{subject}.nii.gz"), template, runs=runs, seed=0)
        errors.append(_errors(result, read_points(REPO / "runs" / "ixi" / "landmarks" / f"{subject}.mrk.json")))
        seconds.append(result.seconds)
    errors = np.concatenate(errors)
    return {"ixi16_oneshot_median_mm": float(np.median(errors)), "ixi16_oneshot_mean_mm": float(errors.mean()),
            "ixi16_seconds_per_query": float(np.median(seconds))}


def mni_self_test(locator: OneShotLocator, runs: int) -> dict[str, float]:
    from landmarkloc.demo import SUPPORT_TEMPLATE, mni_template_path

    image = read_image(mni_template_path())
    points = read_points(REPO / "models" / f"{SUPPORT_TEMPLATE}.mrk.json")
    result = locator.locate(image, locator.make_template(image, points), runs=runs, seed=0)
    errors = _errors(result, points)
    return {"mni_self_test_median_mm": float(np.median(errors)), "mni_self_test_mean_mm": float(errors.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="COARSE or COARSE+FINE model paths")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--subjects", type=int, default=20, help="validation subjects used (first N of 20)")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "rprval")
    parser.add_argument("--skip-oneshot", action="store_true", help="offset errors only (faster)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    subjects = _subjects("val")[: args.subjects]
    make_views(args.cache, subjects)
    table = {}
    for spec in args.models:
        coarse, _, fine = spec.partition("+")
        start = time.perf_counter()
        row = offset_validation(load_rpr_model(coarse), args.cache, subjects)
        if not args.skip_oneshot:
            locator = OneShotLocator.from_files(coarse, fine or None, device="cpu")
            row |= oneshot_validation(locator, subjects, args.runs) | mni_self_test(locator, args.runs)
        row["minutes"] = (time.perf_counter() - start) / 60
        table[spec] = row
        print(spec, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
