"""localize over a cohort, as on a cluster: --input-list, --shard I/N, --skip-existing and the run's --summary."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from reliability_inputs import NAMES, body_volume, image, tiny_fcn, write

from landmarkloc.cli import main
from landmarkloc.io.markups import read_points


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_fcn(tmp_path_factory.mktemp("model") / "fcn")


def _cohort(folder: Path, count: int = 5) -> Path:
    """``count`` images in folder/images and a list naming them relative to the list's folder."""
    (folder / "images").mkdir()
    for n in range(count):
        write(image(body_volume(seed=n)), folder / "images" / f"case{n}.nrrd")
    listing = folder / "list.txt"
    listing.write_text("# the cohort\n" + "".join(f"images/case{n}.nrrd\n\n" for n in range(count)))
    return listing


def _localize(model, listing, out, *extra):
    return ["localize", "--input-list", str(listing), "--model", str(model), "-o", f"{out}/", "-q",
            "--device", "cpu", *extra]


def _summary(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("count", [2, 3])
def test_shards_cover_every_image_exactly_once(model, tmp_path, capsys, count):
    listing = _cohort(tmp_path)
    done = []
    for index in range(1, count + 1):
        summary = tmp_path / f"summary_{index}.csv"
        assert main(_localize(model, listing, tmp_path / "out", "--shard", f"{index}/{count}",
                              "--summary", str(summary))) == 0, capsys.readouterr().err
        done += sorted({Path(row["image"]).name for row in _summary(summary)})
    assert sorted(done) == [f"case{n}.nrrd" for n in range(5)]  # each once: no image in two shards
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"case{n}.mrk.json" for n in range(5)]


def test_the_summary_has_each_landmark_of_each_image_as_written(model, tmp_path, capsys):
    listing = _cohort(tmp_path, 2)
    assert main(_localize(model, listing, tmp_path / "out", "--summary", str(tmp_path / "run.csv"))) == 0
    rows = _summary(tmp_path / "run.csv")
    assert [(Path(r["image"]).name, r["landmark"], r["status"]) for r in rows] == [
        ("case0.nrrd", NAMES[0], "done"), ("case0.nrrd", NAMES[1], "done"),
        ("case1.nrrd", NAMES[0], "done"), ("case1.nrrd", NAMES[1], "done")]
    for row in rows:
        point = {p.label: p for p in read_points(row["output"])}[row["landmark"]]
        np.testing.assert_allclose([float(row[k]) for k in ("x_lps", "y_lps", "z_lps")], point.position, atol=1e-4)
        assert row["uncertain"] == str(int(not point.selected)) and row["error"] == ""


def test_a_rerun_with_skip_existing_does_no_work_and_summarizes_the_outputs(model, tmp_path, capsys):
    listing = _cohort(tmp_path, 3)
    out = tmp_path / "out"
    assert main(_localize(model, listing, out, "--summary", str(tmp_path / "first.csv"))) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    assert main(_localize(model, listing, out, "--skip-existing", "--summary", str(tmp_path / "again.csv"))) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 image(s) whose output exists (--skip-existing)" in printed
    assert "model loaded" not in printed  # nothing to localize: the model is not even loaded
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    first, again = _summary(tmp_path / "first.csv"), _summary(tmp_path / "again.csv")
    assert {r["status"] for r in again} == {"skipped"}
    assert [(r["image"], r["landmark"], r["x_lps"], r["y_lps"], r["z_lps"]) for r in again] == [
        (r["image"], r["landmark"], r["x_lps"], r["y_lps"], r["z_lps"]) for r in first]


def test_a_bad_image_in_the_list_is_reported_and_the_rest_is_done(model, tmp_path, capsys):
    listing = _cohort(tmp_path, 3)
    nan = body_volume()
    nan[3, 4, 5] = np.nan
    write(image(nan), tmp_path / "images" / "nan.nrrd")
    (tmp_path / "images" / "notes.nrrd").write_text("not an image")
    listing.write_text(listing.read_text() + "images/nan.nrrd\nimages/missing.nrrd\nimages/notes.nrrd\n")
    capsys.readouterr()
    code = main(_localize(model, listing, tmp_path / "out", "--summary", str(tmp_path / "run.csv")))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1] == (f"landmarkloc localize: error: 3 of 6 image(s) failed (listed in {tmp_path / 'run.csv'}); "
                       "the others are done")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.mrk.json", "case1.mrk.json",
                                                                     "case2.mrk.json"]
    rows = {Path(r["image"]).name: r for r in _summary(tmp_path / "run.csv") if r["status"] == "failed"}
    assert sorted(rows) == ["missing.nrrd", "nan.nrrd", "notes.nrrd"]
    assert "contains NaN or infinite voxel values" in rows["nan.nrrd"]["error"]
    assert "image not found" in rows["missing.nrrd"]["error"]
    assert "cannot read notes.nrrd as an image" in rows["notes.nrrd"]["error"]


def test_a_csv_input_list_gives_the_chosen_column(model, tmp_path, capsys):
    _cohort(tmp_path, 2)
    table = tmp_path / "cohort.csv"
    table.write_text("subject,scan\ns0,images/case0.nrrd\ns1,images/case1.nrrd\n")
    assert main(_localize(model, table, tmp_path / "out", "--input-column", "scan")) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.mrk.json", "case1.mrk.json"]


COHORT_REFUSALS = [
    ("shard 0", lambda t: ["--shard", "0/2"], "--shard must be I/N with 1 <= I <= N (e.g. 3/10), got '0/2'"),
    ("shard beyond N", lambda t: ["--shard", "3/2"], "--shard must be I/N"),
    ("shard not a fraction", lambda t: ["--shard", "half"], "--shard must be I/N"),
    ("CSV list without the column", lambda t: ["--input-list", str(_table(t))],
     "input list cohort.csv has no column 'image' (it has: subject, scan); choose one with --input-column"),
    ("input list missing", lambda t: ["--input-list", str(t / "none.txt")], "input list not found"),
    ("summary not .csv", lambda t: ["--summary", str(t / "run.json")], "--summary"),
    ("summary is the input list", lambda t: ["--summary", str(t / "list.csv")], "is also the input --input-list"),
]


def _table(t):
    (t / "cohort.csv").write_text("subject,scan\ns0,images/case0.nrrd\n")
    return t / "cohort.csv"


@pytest.mark.parametrize("what, extra, message", COHORT_REFUSALS, ids=[r[0] for r in COHORT_REFUSALS])
def test_cohort_options_refuse_what_they_cannot_do(model, tmp_path, capsys, what, extra, message):
    listing = _cohort(tmp_path, 2)
    if what == "summary is the input list":
        listing = listing.rename(tmp_path / "list.csv")
        listing.write_text("image\nimages/case0.nrrd\n")
    argv = _localize(model, listing, tmp_path / "out", *extra(tmp_path))
    if "--input-list" in extra(tmp_path):  # the row's own list replaces the cohort's
        argv = argv[:1] + argv[3:]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landmarkloc localize: error: ") and message in err and "\n" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_no_images_and_no_list_is_refused(model, tmp_path, capsys):
    assert main(["localize", "--model", str(model), "-o", str(tmp_path / "out/")]) == 2
    assert "give input images, or --input-list FILE" in capsys.readouterr().err


def test_a_job_stopped_by_sigterm_still_summarizes_what_it_did(model, tmp_path, capsys, monkeypatch):
    """SIGTERM (the job's time limit) while the second image's points are written: the first is summarized as
    done, the second has no output (and no temporary file), and a rerun with --skip-existing finishes the list."""
    import os
    import signal

    import landmarkloc.cli.localize as localize_cli

    listing = _cohort(tmp_path, 3)
    written = []

    def write_points_once(path, points):
        if written:
            os.kill(os.getpid(), signal.SIGTERM)
        written.append(path)
        write_points(path, points)

    write_points = localize_cli.write_points
    monkeypatch.setattr(localize_cli, "write_points", write_points_once)
    summary = tmp_path / "run.csv"
    assert main(_localize(model, listing, tmp_path / "out", "--summary", str(summary))) == 128 + signal.SIGTERM
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.mrk.json"]
    assert {(Path(r["image"]).name, r["status"]) for r in _summary(summary)} == {("case0.nrrd", "done")}
    monkeypatch.undo()
    capsys.readouterr()
    assert main(_localize(model, listing, tmp_path / "out", "--skip-existing", "--summary", str(summary))) == 0
    assert "skipped 1 image(s)" in capsys.readouterr().out
    assert [Path(r["image"]).name for r in _summary(summary) if r["landmark"] == NAMES[0]] == [
        "case0.nrrd", "case1.nrrd", "case2.nrrd"]
