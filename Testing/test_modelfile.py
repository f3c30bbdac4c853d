"""Model files are safetensors + JSON; damaged, tampered or pickled models are refused."""

import json

import numpy as np
import pytest
import torch

from landmarkloc.errors import ModelError
from landmarkloc.io.modelfile import load_model, read_metadata, save_model


def _save(tmp_path):
    tensors = {"conv.weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)}
    save_model(tmp_path / "m", tensors, {"kind": "fcn", "landmarks": ["a", "b"]})
    return tensors


def test_round_trip_by_either_file(tmp_path):
    tensors = _save(tmp_path)
    for name in ("m", "m.safetensors", "m.json"):
        loaded, meta = load_model(tmp_path / name, kind="fcn")
        assert meta["landmarks"] == ["a", "b"] and meta["format_version"] == 1
        assert torch.equal(loaded["conv.weight"], tensors["conv.weight"])


def test_wrong_kind_and_tampering_are_refused(tmp_path):
    _save(tmp_path)
    with pytest.raises(ModelError, match="'rpr' model is needed"):
        load_model(tmp_path / "m", kind="rpr")
    data = bytearray((tmp_path / "m.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(tmp_path / "m")


def test_truncated_weights_and_bad_metadata(tmp_path):
    _save(tmp_path)
    meta = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.safetensors").write_bytes((tmp_path / "m.safetensors").read_bytes()[:40])
    with pytest.raises(ModelError):
        load_model(tmp_path / "m")
    meta["format_version"] = 99
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="format version"):
        read_metadata(tmp_path / "m")
    (tmp_path / "m.json").write_text("{broken")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_metadata(tmp_path / "m")


def test_pickle_checkpoints_are_refused_without_being_opened(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"anything")
    with pytest.raises(ModelError, match="pickle"):
        load_model(path)


def test_import_model_converts_a_weights_only_checkpoint(tmp_path):
    from landmarkloc.cli import main

    torch.save({"state_dict": {"module.w": torch.ones(2, 2)}}, tmp_path / "c.pth")
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "fcn", "sha256": "stale"}))
    assert main(["import-model", str(tmp_path / "c.pth"), "--metadata", str(tmp_path / "meta.json"),
                 "-o", str(tmp_path / "converted")]) == 0
    tensors, meta = load_model(tmp_path / "converted", kind="fcn")
    assert torch.equal(tensors["w"], torch.ones(2, 2)) and meta["sha256"] != "stale"


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_import_model_refuses_a_checkpoint_with_code(tmp_path, capsys):
    from landmarkloc.cli import main

    torch.save({"w": torch.ones(1), "evil": _Evil()}, tmp_path / "evil.pt")
    (tmp_path / "meta.json").write_text(json.dumps({"kind": "fcn"}))
    assert main(["import-model", str(tmp_path / "evil.pt"), "--metadata", str(tmp_path / "meta.json"),
                 "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "this must never run" not in captured.out
    assert "weights-only" in captured.err
    assert not (tmp_path / "out.safetensors").exists()


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    _save(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("m.safetensors", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_a_model_stored_in_float16_localizes_as_in_float32(tmp_path):
    """Half-precision weights (half the file) load into float32 networks and give the same points."""
    from reliability_inputs import body_volume, image, tiny_fcn

    from landmarkloc.inference.fcn import Localizer
    from landmarkloc.io.modelfile import as_float16

    torch.set_num_threads(1)
    full = tiny_fcn(tmp_path / "full")
    tensors, meta = load_model(full)
    meta = {k: v for k, v in meta.items() if k not in ("weights", "sha256", "format_version")}
    half, _ = save_model(tmp_path / "half", as_float16(tensors), {**meta, "weights_dtype": "float16"})
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert all(t.dtype in (torch.float16, torch.int64) for t in load_model(half)[0].values())
    volume = image(body_volume())
    a = Localizer.from_file(full, "cpu").localize(volume).landmarks
    b = Localizer.from_file(half, "cpu").localize(volume).landmarks
    assert next(Localizer.from_file(half, "cpu").network.parameters()).dtype == torch.float32
    for x, y in zip(a, b):
        assert float(np.linalg.norm(x.position - y.position)) < 0.05
