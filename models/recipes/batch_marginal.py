"""The batch command line against the bench (issue 20, part 3): the marginal time per query of one
``landmarkloc oneshot --query q1 ... qN --template T`` run, against the bench's in-process one-shot row.

Marginal = (wall time with 1 + N queries - wall time with 1 query) / N, so process start, model loading and
the template are left out; the bench's ``rpr_boxes`` scenario (the same worker as ``landmarkloc bench``,
shipped models, the brain-sized phantom) gives the in-process time per query; ``in-process, real queries`` is
``OneShotLocator.locate`` alone on the same IXI images as the batch run. Support IXI012 with the IXI-8 boxes,
queries the validation images.

    python models/recipes/batch_marginal.py [--repeat 3] [--n 10] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval_common import DATA, IXI8, MODELS, RUNS, _lines

from landmarkloc.inference.refine_modes import DEFAULT_REFINE_MODE

OUT = RUNS / "batch"


def _cli(*args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "landmarkloc", "oneshot", *map(str, args)], check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=10, help="queries added to the one of the short run")
    parser.add_argument("--profile", action="store_true", help="profile the per-query loop (cProfile, top 25)")
    args = parser.parse_args()
    train, val = _lines(RUNS / "ixi" / "train_images.txt"), _lines(RUNS / "ixi" / "val_images.txt")
    support = train[0]
    queries = val[: args.n + 1]
    OUT.mkdir(parents=True, exist_ok=True)
    model = MODELS / "brain-t1-rpr-coarse.safetensors"
    template = OUT / "ixi8_template"
    _cli("--query", queries[0], "--support", support, "--support-labels", DATA / "ixi" / "seg" / support.name,
         "--labels", ",".join(map(str, IXI8.values())), "--names", ",".join(IXI8), "--model", model,
         "--save-template", template, "-o", OUT / "first.mrk.json", "--quiet")
    common = ["--template", f"{template}.safetensors", "--model", model, "--quiet"]
    results = {"one": [], "many": [], "marginal": []}
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            one = _cli("--query", queries[0], *common, "-o", f"{tmp}/one/", "--rois", f"{tmp}/one/")
            many = _cli("--query", *queries, *common, "-o", f"{tmp}/many/", "--rois", f"{tmp}/many/")
        results["one"].append(one)
        results["many"].append(many)
        results["marginal"].append((many - one) / args.n)
        print(f"run {r + 1}: 1 query {one:.2f} s, {len(queries)} queries {many:.2f} s, marginal "
              f"{results['marginal'][-1]:.3f} s / query", flush=True)

    from landmarkloc.bench import PRESETS, run_worker
    from landmarkloc.inference.oneshot import OneShotLocator, Template
    from landmarkloc.io.image import read_image

    brain = PRESETS["full"].brain
    spec = {"scenario": "rpr", "coarse": str(model), "fine": None, "refine": DEFAULT_REFINE_MODE, "runs": 15,
            "repeat": 10, "device": "cpu", "image": {"size": list(brain.size), "spacing": brain.spacing,
                                       "direction": brain.direction, "pixel_type": brain.pixel_type}}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        bench = run_worker(spec, Path(tmp), 900.0)
    results["bench_rpr_boxes_s"] = bench.get("median_s")
    loc = OneShotLocator.from_files(model, None, device="cpu")
    tpl = Template.load(f"{template}.safetensors")
    images = [read_image(q) for q in queries]
    loc.locate(images[0], tpl)  # warm-up
    seconds = []
    for image in images[1:]:
        start = time.perf_counter()
        loc.locate(image, tpl)
        seconds.append(time.perf_counter() - start)
    results["in_process_real_s"] = statistics.median(seconds)
    marginal = statistics.median(results["marginal"])
    print(f"batch marginal (median of {args.repeat}) {marginal:.3f} s / query; bench rpr_boxes "
          f"{results['bench_rpr_boxes_s']:.3f} s; in-process on the same real queries "
          f"{results['in_process_real_s']:.3f} s; ratio batch / bench {marginal / results['bench_rpr_boxes_s']:.2f}")
    (OUT / "batch_marginal.json").write_text(json.dumps(results, indent=1))
    if args.profile:
        import cProfile
        import pstats

        from landmarkloc.cli import main as cli_main

        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            cli_main(["oneshot", "--query", str(queries[0]), *map(str, common), "-o", f"{tmp}/w/"])  # warm
            profile = cProfile.Profile()
            profile.enable()
            cli_main(["oneshot", "--query", *map(str, queries), *map(str, common), "-o", f"{tmp}/p/", "--rois",
                      f"{tmp}/p/"])
            profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
