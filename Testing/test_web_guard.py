"""``landmarkloc web``'s safety rules and command line, without a browser or trame (any environment)."""

from __future__ import annotations

import os

import pytest
from LandmarkLocWebLib.guard import (
    WebConfig,
    allowed_path,
    check_upload_size,
    is_loopback,
    make_config,
    token_matches,
    upload_file_name,
)

from landmarkloc.cli import main
from landmarkloc.errors import InputError


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("example.org", False)])
def test_only_loopback_addresses_serve_without_a_token(tmp_path, host, loopback):
    assert is_loopback(host) == loopback
    config = make_config(host, 8080, tmp_path, 10)
    assert bool(config.token) != loopback
    if not loopback:
        assert len(config.token) >= 24 and f"token={config.token}" in config.url()
        assert make_config(host, 8080, tmp_path, 10).token != config.token  # a new one at every start


def test_the_token_is_compared_exactly():
    assert token_matches("", None)  # none needed
    assert token_matches("a" * 24, "a" * 24)
    for wrong in (None, "", "a" * 23, "a" * 23 + "b", ["a" * 24]):
        assert not token_matches("a" * 24, wrong)


def test_files_are_opened_only_inside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "scan.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    os.symlink(tmp_path / "secret.nii.gz", data / "link.nii.gz")
    assert allowed_path(data, "sub/scan.nii.gz") == (data / "sub" / "scan.nii.gz").resolve()
    assert allowed_path(data, "sub") == (data / "sub").resolve()  # a DICOM folder
    for path, message in (("../secret.nii.gz", "outside the data folder"), ("link.nii.gz", "outside the data folder"),
                          ("sub/../../secret.nii.gz", "outside"), (str(tmp_path / "secret.nii.gz"), "absolute"),
                          ("missing.nii.gz", "not found"), ("  ", "type the path")):
        with pytest.raises(InputError, match=message):
            allowed_path(data, path)


def test_uploads_are_size_limited_and_keep_only_their_file_name():
    check_upload_size("a.nii.gz", 2**20, 2**20)
    with pytest.raises(InputError, match="a.nii.gz is 1.0 MB; uploads are limited to 1 MB"):
        check_upload_size("a.nii.gz", 2**20 + 1, 2**20)
    assert upload_file_name("../../etc/scan.nii.gz") == "scan.nii.gz"
    assert upload_file_name("C:\\scans\\scan.nii.gz") == "scan.nii.gz"
    with pytest.raises(InputError, match="no name"):
        upload_file_name("..")


def test_bad_options_give_one_line(tmp_path, capsys):
    for argv, message in ((["--data-folder", str(tmp_path / "missing")], "is not a folder"),
                          (["--port", "0"], "--port must be between"),
                          (["--max-upload-mb", "0"], "--max-upload-mb must be positive")):
        assert main(["web", "--data-folder", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert WebConfig().host == "127.0.0.1"  # the default serves this machine only


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["web", "--help"])
    out = capsys.readouterr().out
    assert "landmarkloc web --data-folder" in out and "--host 0.0.0.0" in out and "token" in out
