"""Released models fetched on demand, against a loopback HTTP server (127.0.0.1 only): the files arrive with
progress and pass the model checks, a cached model is not fetched again, and a corrupt, short or failed download
leaves nothing behind."""

import hashlib
import http.server
import json
import threading

import pytest

from landmarkloc import distribution
from landmarkloc.errors import InputError, ModelError
from landmarkloc.io.modelfile import save_model, verify_model

torch = pytest.importorskip("torch")


class Assets(http.server.ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes) on 127.0.0.1; ``tamper(name, data) -> data`` alters what is sent."""

    def __init__(self):
        self.files, self.requests, self.tamper = {}, [], (lambda name, data: data)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):  # noqa: N805
                name = handler.path.rsplit("/", 1)[-1]
                self.requests.append(name)
                if name not in self.files:
                    handler.send_error(404)
                    return
                data = self.tamper(name, self.files[name])
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def url(self, name):
        return f"http://127.0.0.1:{self.server_port}/releases/download/models-v1/{name}"


@pytest.fixture
def server():
    assets = Assets()
    thread = threading.Thread(target=assets.serve_forever, daemon=True)
    thread.start()
    yield assets
    assets.shutdown()
    assets.server_close()


@pytest.fixture
def released(tmp_path, server):
    """A real (tiny) model uploaded to the server, and its model list entry."""
    weights, meta = save_model(tmp_path / "upload" / "big-model", {"w": torch.arange(300000.0)},
                               {"kind": "fcn", "ndim": 3, "name": "big-model"})
    files = []
    for path in (meta, weights):
        data = path.read_bytes()
        server.files[path.name] = data
        files.append(distribution.ReleasedFile(path.name, server.url(path.name), hashlib.sha256(data).hexdigest(),
                                               len(data)))
    return distribution.ReleasedModel("big-model", "fcn", tuple(files))


def test_fetch_downloads_every_file_with_progress_into_the_cache_and_the_model_checks_out(tmp_path, released,
                                                                                         server):
    cache = tmp_path / "cache"
    seen = []
    path = distribution.fetch(released, cache, lambda done, total, name: seen.append((done, total, name)))
    assert path == cache / "big-model.json"
    verify_model(path, "fcn")  # weights present and matching the metadata's sha256
    total = sum(f.size for f in released.files)
    assert [done for done, _, _ in seen] == sorted(done for done, _, _ in seen)
    assert seen[-1][:2] == (total, total) and all(t == total for _, t, _ in seen)
    assert {name for _, _, name in seen} == {"big-model.json", "big-model.safetensors"}
    assert sorted(p.name for p in cache.iterdir()) == ["big-model.json", "big-model.safetensors"]

    server.requests.clear()
    assert distribution.fetch(released, cache) == path
    assert server.requests == []  # cached and intact: nothing downloaded again


@pytest.mark.parametrize("damage", ["corrupted", "truncated", "missing"])
def test_a_bad_download_leaves_nothing_behind_and_says_what_happened(tmp_path, released, server, damage):
    if damage == "missing":
        del server.files["big-model.safetensors"]
    else:
        server.tamper = lambda name, data: data if name.endswith(".json") else (
            data[:-10] + bytes(10) if damage == "corrupted" else data[: len(data) // 2])
    cache = tmp_path / "cache"
    message = "failed: HTTP Error 404" if damage == "missing" else "is corrupt"
    with pytest.raises(ModelError, match=message):
        distribution.fetch(released, cache)
    assert list(cache.iterdir()) == []  # not the metadata, not a partial weights file


def test_a_damaged_cached_file_is_downloaded_again(tmp_path, released, server):
    cache = tmp_path / "cache"
    distribution.fetch(released, cache)
    (cache / "big-model.safetensors").write_bytes(b"damaged on disk")
    server.requests.clear()
    distribution.fetch(released, cache)
    assert "big-model.safetensors" in server.requests
    verify_model(cache / "big-model.json", "fcn")


def test_the_command_line_fetches_a_listed_model_and_refuses_an_unknown_one(tmp_path, released, server,
                                                                           monkeypatch, capsys):
    listing = tmp_path / "released_models.json"
    listing.write_text(json.dumps({"schema_version": 1, "models": [released.to_dict()]}))
    monkeypatch.setattr(distribution, "MODEL_LIST", listing)
    monkeypatch.setenv("LANDMARKLOC_MODEL_CACHE", str(tmp_path / "cache"))
    assert distribution.main(["available"]) == 0
    assert "big-model" in capsys.readouterr().out
    assert distribution.main(["fetch", "big-model"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "cache" / "big-model.json") and "100.0 %" in err
    assert distribution.main(["fetch", "no-such-model"]) == 2
    assert "no released model 'no-such-model' (released: big-model)" in capsys.readouterr().err


def test_the_list_entry_of_a_local_model_is_what_fetch_needs(tmp_path, released, server):
    entry = distribution.list_entry(tmp_path / "upload" / "big-model.json", server.url("").rstrip("/"))
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    [model] = distribution.read_model_list(listing)
    assert model == released


@pytest.mark.parametrize("bad", [{"name": "../outside.json"}, {"url": "file:///etc/passwd"}], ids=str)
def test_the_model_list_refuses_names_outside_the_cache_and_other_url_schemes(tmp_path, bad):
    file = {"name": "m.json", "url": "https://example.org/m.json", "sha256": "0" * 64, "size": 1, **bad}
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"schema_version": 1, "models": [{"name": "m", "kind": "fcn", "files": [file]}]}))
    with pytest.raises(ModelError, match="plain name with an http"):
        distribution.read_model_list(listing)


def test_the_shipped_model_list_reads():
    models = distribution.read_model_list()
    assert all(isinstance(m, distribution.ReleasedModel) for m in models)
    with pytest.raises(InputError, match="no released model"):
        distribution.released_model("surely-not-released", models)


def released_list(tmp_path, monkeypatch, released):
    listing = tmp_path / "released_models.json"
    listing.write_text(json.dumps({"schema_version": 1, "models": [released.to_dict()]}))
    monkeypatch.setattr(distribution, "MODEL_LIST", listing)
    monkeypatch.setenv("LANDMARKLOC_MODEL_CACHE", str(tmp_path / "cache"))


def run_until_idle(widget, timeout=60.0):
    import time

    deadline = time.time() + timeout
    while widget._job is not None and time.time() < deadline:
        widget.onPoll()
        time.sleep(0.02)
    assert widget._job is None


def test_landmark_localizer_offers_a_released_model_downloads_it_with_progress_and_selects_it(tmp_path, released,
                                                                                             server, monkeypatch):
    pytest.importorskip("slicer")
    import slicer_gui_stand_ins as gui

    released_list(tmp_path, monkeypatch, released)
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {})
    widget.populateModels()
    combo = widget.ui.modelComboBox
    offer = next(i for i, (text, _) in enumerate(combo.items) if text.startswith("Download big-model ("))
    widget.onModelActivated(offer)
    assert widget._job is not None and widget.ui.localizeButton.text == "Cancel"
    run_until_idle(widget)
    assert shown == []
    assert widget._parameterNode.modelPath == str(tmp_path / "cache" / "big-model.json")
    assert combo.itemData(combo.current) == widget._parameterNode.modelPath
    assert not any(text.startswith("Download big-model") for text, _ in combo.items)  # downloaded: no offer
    assert widget.ui.statusLabel.text.startswith("Downloaded big-model.")
    assert any(line.startswith("Downloading big-model.safetensors (") for line in widget.ui.logTextEdit.lines)
    assert widget.ui.progressBar.value == 100


def test_a_corrupt_download_in_the_module_is_an_error_and_adds_nothing(tmp_path, released, server, monkeypatch):
    pytest.importorskip("slicer")
    import slicer_gui_stand_ins as gui

    released_list(tmp_path, monkeypatch, released)
    server.tamper = lambda name, data: data[:-4] + b"XXXX"
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.localizer_widget(monkeypatch, {})
    widget.populateModels()
    before = list(widget.ui.modelComboBox.items)
    offer = next(i for i, (text, _) in enumerate(before) if text.startswith("Download big-model ("))
    widget.onModelActivated(offer)
    run_until_idle(widget)
    [(kind, text)] = shown
    assert kind == "error" and "is corrupt" in text
    assert widget.ui.modelComboBox.items == before
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_rpr_one_shot_offers_a_released_coarse_model_in_its_coarse_list_and_selects_it(tmp_path, server,
                                                                                      monkeypatch):
    pytest.importorskip("slicer")
    import slicer_gui_stand_ins as gui
    from LandmarkLocalizerLib.models import downloadable_models, shipped_models
    from RPROneShotLib.selftest import make_tiny_rpr_models

    coarse, _ = make_tiny_rpr_models(tmp_path / "upload")
    entry = distribution.list_entry(coarse, server.url("").rstrip("/"))
    for file in entry["files"]:
        server.files[file["name"]] = (tmp_path / "upload" / file["name"]).read_bytes()
    released_list(tmp_path, monkeypatch, distribution.ReleasedModel.from_dict(entry))
    shown = gui.dialogs(monkeypatch)
    _, widget = gui.one_shot_widget(monkeypatch, {}, shipped_models("rpr"))
    widget._downloads = downloadable_models("rpr", widget._models)  # as setup() does
    widget.fillModelCombos()
    offers = [text for text, _ in widget.ui.fineModelComboBox.items if text.startswith("Download")]
    assert offers == []  # a coarse model is not offered as the fine one
    combo = widget.ui.modelComboBox
    offer = next(i for i, (text, _) in enumerate(combo.items) if text.startswith("Download tiny-rpr-coarse ("))
    widget.onModelActivated(offer, fine=False)
    assert widget.ui.findButton.text == "Cancel"
    run_until_idle(widget)
    assert shown == []
    assert widget._parameterNode.modelPath == str(tmp_path / "cache" / "tiny-rpr-coarse.json")
    assert combo.itemData(combo.current) == widget._parameterNode.modelPath
    assert not any(text.startswith("Download") for text, _ in combo.items)
