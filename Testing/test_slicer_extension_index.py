"""The Extensions Index entry (LandmarkLoc.json) and CMakeLists.txt pass the index's own checks: the catalog
entry schema (reproduced from Slicer/Slicer Schemas/, v1.0.1) and the checks of its
scripts/check_description_files.py that need no network (category, scm_url, repository and project names)."""

import json
import re
import urllib.parse

import pytest
from mrml_testing import REPO

jsonschema = pytest.importorskip("jsonschema")

HERE = REPO / "Testing" / "extension_index"
ENTRY = REPO / "LandmarkLoc.json"


def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def schema() -> dict:
    return json.loads((HERE / "slicer-extension-catalog-entry-schema-v1.0.1.json").read_text(encoding="utf-8"))


def accepted_categories() -> list:
    lines = (HERE / "accepted_categories.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def cmake_setting(name: str) -> str:
    match = re.search(rf'set\({name} "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"CMakeLists.txt sets no {name}"
    return match.group(1)


def test_the_entry_validates_against_the_catalog_entry_schema_it_names():
    data = entry()
    assert data["$schema"].split("#")[0].endswith("/slicer-extension-catalog-entry-schema-v1.0.1.json")
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(data, schema())


@pytest.mark.parametrize("change", [{"category": ["Quantification"]}, {"build_dependencies": "PyTorch"},
                                    {"scm_tag": "v1"}, {"tier": 2}], ids=str)
def test_the_schema_refuses_what_the_index_refuses(change):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**entry(), **change}, schema())


def test_the_entry_passes_the_index_checks_that_need_no_network():
    data = entry()
    assert data["category"] in accepted_categories()
    assert data["build_dependencies"] == ["PyTorch"]
    scheme = urllib.parse.urlsplit(data["scm_url"]).scheme
    assert "://" in data["scm_url"] and scheme in ("git", "https")
    repository = urllib.parse.urlsplit(data["scm_url"]).path.split("/")[-1].removesuffix(".git")
    assert "slicer" in repository.lower()  # check_git_repository_name
    assert not ENTRY.stem.lower().startswith("slicer")  # check_extension_name
    assert "\r" not in ENTRY.read_text(encoding="utf-8")  # check_json_file_format: LF line endings only
    assert (REPO / data.get("build_subdirectory", ".") / "CMakeLists.txt").is_file()


def test_cmake_lists_agree_with_the_entry():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\s*\(\s*([^\s)]+)", text).group(1) == ENTRY.stem  # check_cmakelists_content
    assert cmake_setting("EXTENSION_CATEGORY") in accepted_categories()
    assert cmake_setting("EXTENSION_CATEGORY") == entry()["category"]
    assert cmake_setting("EXTENSION_DEPENDS").split(";") == entry()["build_dependencies"]


def test_the_clone_size_check_measures_a_fresh_clone_and_fails_above_its_limit():
    import os
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout")
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow checkout has no history to measure")

    def check(limit_mb):
        return subprocess.run(["bash", str(REPO / "scripts" / "check_clone_size.sh")], capture_output=True,
                              text=True, env={**os.environ, "CLONE_SIZE_LIMIT_MB": str(limit_mb)})

    roomy, tight = check(100000), check(1)
    assert roomy.returncode == 0 and re.search(r"a fresh clone is \d+ MB \(\d+ MB of it \.git\)", roomy.stdout)
    assert tight.returncode == 1 and "too large for the Extensions Index" in tight.stderr
