"""Work off Slicer's main thread: the worker protocol (progress, result, errors, cancel) and the model list."""

import os
import queue
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from LandmarkLocalizerLib.jobs import Job, launch_options, new_workdir, package_paths, python_executable  # noqa: I001
from LandmarkLocalizerLib.models import inspect_model, models_folder, shipped_models
from mrml_testing import REPO  # noqa: F401  (puts the module Lib folders on sys.path)

from landmarkloc.errors import ModelError
from landmarkloc.io.modelfile import save_model

torch = pytest.importorskip("torch")


def fake_worker(tmp_path, body: str) -> list:
    """A worker module ``fakeworker`` whose handler runs ``body``; returns the PYTHONPATH it needs."""
    (tmp_path / "fakeworker.py").write_text(textwrap.dedent("""
        import sys, time
        from landmarkloc.errors import InputError
        from LandmarkLocalizerLib.jobs import run_worker

        def handle(request, workdir, report):
        {body}

        sys.exit(run_worker(handle))
        """).format(body=textwrap.indent(textwrap.dedent(body), "    ")))
    return [str(tmp_path)] + package_paths("landmarkloc", "LandmarkLocalizerLib")


def run(tmp_path, body, request=None):
    job = Job("fakeworker", request or {"n": 3}, new_workdir(), fake_worker(tmp_path, body), python=sys.executable)
    job.start()
    events = []
    deadline = time.time() + 60
    while job.running and time.time() < deadline:
        events += job.poll()
        time.sleep(0.02)
    events += job.poll()
    job.cleanup()
    return events


def test_progress_then_result(tmp_path):
    events = run(tmp_path, """
        for i in range(request["n"]):
            report((i + 1) / request["n"], f"step {i + 1}")
        print("a library's stray print")
        return {"sum": request["n"] * 2}
    """)
    assert [e.kind for e in events] == ["progress", "progress", "progress", "log", "done"]
    assert [e.stage for e in events[:3]] == ["step 1", "step 2", "step 3"]
    assert events[1].fraction == pytest.approx(2 / 3, abs=1e-3)
    assert events[-1].result == {"sum": 6}


class NonBlockingQueue(queue.Queue):
    """The job's line queue, refusing to be waited on: the GUI thread must never block in poll()."""

    def get(self, block=True, timeout=None):
        assert not block, f"poll() waited on the worker's output (timeout={timeout})"
        return super().get(block=False)


def test_the_job_ends_at_the_first_poll_after_the_worker_exits_without_waiting(tmp_path):
    job = Job("fakeworker", {}, new_workdir(), fake_worker(tmp_path, """
        report(0.5, "half way")
        print("a library's message")
        return {"ok": True}
    """), python=sys.executable)
    job._lines = NonBlockingQueue()
    job.start()
    job._process.wait(timeout=60)
    events = job.poll()
    job.cleanup()
    assert [e.kind for e in events] == ["progress", "log", "done"]
    assert events[1].text == "a library's message"
    assert events[-1].result == {"ok": True}


def test_the_workers_stderr_goes_to_the_log(tmp_path):
    events = run(tmp_path, """
        print("loading weights", file=sys.stderr)
        return {}
    """)
    assert [e.text for e in events if e.kind == "log"] == ["loading weights"]
    assert events[-1].kind == "done"


def test_user_error_is_reported_as_its_message(tmp_path):
    events = run(tmp_path, """
        report(0.1, "start")
        raise InputError("the support points lie outside the support image")
    """)
    assert events[-1].kind == "failed"
    assert events[-1].error == "the support points lie outside the support image"


def test_crash_keeps_the_traceback(tmp_path):
    events = run(tmp_path, """
        return {"x": 1 / 0}
    """)
    assert events[-1].kind == "failed"
    assert "internal error (ZeroDivisionError" in events[-1].error
    assert "Traceback" in events[-1].error


def test_cancel_stops_the_worker_quickly(tmp_path):
    job = Job("fakeworker", {}, new_workdir(), fake_worker(tmp_path, """
        report(0.01, "sleeping")
        time.sleep(120)
        return {}
    """), python=sys.executable)
    job.start()
    deadline = time.time() + 30
    seen = []
    while not any(e.kind == "progress" for e in seen) and time.time() < deadline:
        seen += job.poll()
        time.sleep(0.02)
    start = time.time()
    job.cancel()
    events = job.poll()
    assert time.time() - start < 6
    assert events[-1].kind == "cancelled"
    assert not job.running
    assert job._process.poll() is not None
    workdir = job.workdir
    job.cleanup()
    assert not workdir.exists()


def test_python_executable_is_runnable():
    assert python_executable()


# --------------------------------------------------------------------------- models


def write_model(path, kind="fcn", **meta):
    return save_model(path, {"w": torch.zeros(2, 3)}, {"kind": kind, "ndim": 3, **meta})


def test_shipped_models_lists_valid_models_of_the_kind(tmp_path):
    write_model(tmp_path / "knee", landmark_names=["a", "b"], name="Knee CT")
    write_model(tmp_path / "agent", kind="rpr")
    weights, _ = write_model(tmp_path / "broken")
    weights.write_bytes(b"not the weights the metadata describes")
    (tmp_path / "notes.json").write_text("{ not json")
    models = shipped_models("fcn", tmp_path)
    assert [m.name for m in models] == ["Knee CT"]
    assert models[0].label == "Knee CT (2 landmarks, 3D)"
    assert [m.name for m in shipped_models("rpr", tmp_path)] == ["agent"]


def test_inspect_model_refuses_corrupt_wrong_and_missing_files(tmp_path):
    weights, meta = write_model(tmp_path / "m")
    assert inspect_model(weights, "fcn").path == str(meta)
    with pytest.raises(ModelError, match="'fcn' model, but a 'rpr' model is needed"):
        inspect_model(meta, "rpr")
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(ModelError, match="sha256"):
        inspect_model(meta, "fcn")
    with pytest.raises(ModelError, match="not found"):
        inspect_model(tmp_path / "nothing.json", "fcn")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="JSON object"):
        inspect_model(tmp_path / "bad.json", "fcn")
    (tmp_path / "old.pth").write_bytes(b"pickled")
    with pytest.raises(ModelError, match="pickle"):
        inspect_model(tmp_path / "old.pth", "fcn")


def test_models_folder_is_next_to_the_package():
    assert models_folder() == REPO / "models"


# --------------------------------------------------------------------------- the launcher's process tree


def stand_in_launcher(tmp_path) -> str:
    """An executable like ``PythonSlicer``: starts the real Python as a child, forwards no signal, waits for it."""
    launcher = tmp_path / "PythonSlicerStandIn"
    launcher.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import subprocess, sys
        sys.exit(subprocess.call([{sys.executable!r}] + sys.argv[1:]))
        """))
    launcher.chmod(0o755)
    return str(launcher)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped has ended and counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir() and Path("/proc/self").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(os.name == "nt", reason="the POSIX process group path; Windows uses taskkill /T")
def test_cancel_ends_the_worker_under_a_launcher_that_forwards_no_signals(tmp_path):
    job = Job("fakeworker", {}, new_workdir(), fake_worker(tmp_path, """
        import os
        (workdir / "worker.pid").write_text(str(os.getpid()))
        report(0.01, "working")
        time.sleep(120)
        return {}
    """), python=stand_in_launcher(tmp_path))
    job.start()
    deadline = time.time() + 60
    seen = []
    while not any(e.kind == "progress" for e in seen) and time.time() < deadline:
        seen += job.poll()
        time.sleep(0.02)
    worker_pid = int((job.workdir / "worker.pid").read_text())
    launcher_pid = job._process.pid
    assert worker_pid != launcher_pid  # the network runs in the launcher's child, as under PythonSlicer
    assert process_alive(worker_pid)
    job.cancel()
    assert job.poll()[-1].kind == "cancelled"
    deadline = time.time() + 10
    while process_alive(worker_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not process_alive(worker_pid), "the worker outlived Cancel"
    assert not process_alive(launcher_pid)
    job.cleanup()


def test_worker_starts_in_its_own_session_on_posix_and_without_a_console_on_windows(monkeypatch):
    assert launch_options("posix") == {"start_new_session": True}

    class StartupInfo:  # subprocess.STARTUPINFO exists on Windows only
        dwFlags = 0
        wShowWindow = 1

    monkeypatch.setattr(subprocess, "STARTUPINFO", StartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "STARTF_USESHOWWINDOW", 1, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NO_WINDOW", 0x08000000, raising=False)
    monkeypatch.setattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200, raising=False)
    options = launch_options("nt")
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0  # SW_HIDE
    assert options["creationflags"] & 0x08000000  # CREATE_NO_WINDOW: no console to close by mistake
    assert options["creationflags"] & 0x00000200  # its own group, ended by taskkill /T
