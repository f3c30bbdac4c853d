"""Fuzzing the markups readers: any file content gives points or the package's own error, never a crash."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from landmarkloc.errors import InputError
from landmarkloc.io.markups import read_boxes, read_points, write_boxes, write_points
from landmarkloc.points import Box, ControlPoint

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
KEYS = ["markups", "controlPoints", "position", "coordinateSystem", "type", "size", "center", "orientation",
        "label", "description", "selected", "positionStatus", "name"]


def _valid_texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    write_points(folder / "p.mrk.json", [ControlPoint("a", [1, 2, 3], properties={"c": 0.5})])
    write_points(folder / "p.fcsv", [ControlPoint("a, b", [1, 2, 3])])
    write_points(folder / "p.csv", [ControlPoint("a", [1, 2, 3], properties={"c": 0.5})])
    write_boxes(folder / "b.mrk.json", [Box("x", [0, 0, 0], [1, 2, 3])])
    return {name: (folder / name).read_text() for name in ("p.mrk.json", "p.fcsv", "p.csv", "b.mrk.json")}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return _valid_texts(tmp_path_factory)


def _read_all(path):
    for reader in (read_points, read_boxes):
        try:
            reader(path)
        except InputError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_never_crash(tmp_path, seeds, data):
    name = data.draw(st.sampled_from(sorted(seeds)))
    text = seeds[name]
    # Byte-level mutations: cut, replace a span, insert junk.
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(st.text(max_size=12))
    mode = data.draw(st.sampled_from(["truncate", "replace", "insert"]))
    if mode == "truncate":
        text = text[:cut]
    elif mode == "replace":
        text = text[:cut] + junk + text[cut + len(junk):]
    else:
        text = text[:cut] + junk + text[cut:]
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", errors="replace"))
    _read_all(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(markup=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6),
       cps=st.lists(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5), max_size=3))
def test_random_json_structures_never_crash(tmp_path, markup, cps):
    markup = dict(markup)
    if cps:
        markup["controlPoints"] = cps
    path = tmp_path / "f.mrk.json"
    path.write_text(json.dumps({"markups": [markup]}))
    _read_all(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_crash(tmp_path, raw):
    for name in ("r.mrk.json", "r.fcsv", "r.csv"):
        path = tmp_path / name
        path.write_bytes(raw)
        _read_all(path)
