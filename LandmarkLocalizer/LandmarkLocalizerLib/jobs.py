"""Run the heavy work in a separate Python process so Slicer never freezes, with progress and Cancel.

The Slicer side writes the inputs (images as uncompressed .mha in LPS, a JSON
request) to a temporary folder and starts ``PythonSlicer -m <worker> request.json``.
The worker prints one JSON object per line on stdout:

* ``{"progress": 0.4, "stage": "local stage"}`` as it goes,
* ``{"error": "message"}`` for a user error (then exits with code 2),

and writes ``result.json`` in the folder before exiting with 0. Anything else
it prints (on stdout or stderr: library messages, a traceback) is the job's log,
which the modules show in their log panel. Two reader threads collect the
lines; the GUI polls :meth:`Job.poll` from a QTimer and touches MRML only then,
on the main thread. Cancel ends the worker's whole
process tree, which is the only reliable way to stop a running network:
``PythonSlicer`` is the CTK launcher, which starts ``python-real`` as a child
and forwards no signals, so ending the launcher alone would leave the network
running. On POSIX the worker starts in a new session (its own process group,
ended with ``os.killpg``); on Windows it runs without a console window (as
``slicer.util.launchConsoleProcess`` starts processes) and its tree is ended
with ``taskkill /T /F``.

Nothing here imports Qt or MRML, so it runs (and is tested) anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from landmarkloc.errors import LandmarkLocError

RESULT_FILE = "result.json"
REQUEST_FILE = "request.json"
EXIT_USER_ERROR = 2
# Once the worker has exited, its pipes reach end-of-file at once; only a process it started and left running
# (holding the pipe open) can delay that, and the job must still end then.
PIPE_CLOSE_TIMEOUT_S = 5.0


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` (same packages as Slicer, no GUI) when present, else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    here = Path(sys.executable).parent
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        if (here / name).is_file():
            return str(here / name)
    return sys.executable


def package_paths(*module_names: str) -> list:
    """Folders that must be on the worker's PYTHONPATH for the given importable packages."""
    import importlib

    paths = []
    for name in module_names:
        module = importlib.import_module(name)
        folder = str(Path(module.__file__).resolve().parent.parent)
        if folder not in paths:
            paths.append(folder)
    return paths


def launch_options(platform_name: str = None) -> dict:
    """``subprocess.Popen`` keywords that give the worker its own process tree and no console window.

    POSIX: a new session, so the launcher and everything it starts share one
    process group that Cancel ends at once. Windows: no console window (as
    ``slicer.util.launchConsoleProcess`` does; closing that window would kill
    the job) and a new process group, ended with ``taskkill /T``.
    """
    if (platform_name or os.name) != "nt":
        return {"start_new_session": True}
    startupinfo = subprocess.STARTUPINFO()
    startupinfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    startupinfo.wShowWindow = 0  # SW_HIDE
    return {"startupinfo": startupinfo,
            "creationflags": subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP}


def end_process_tree(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """End ``process`` and every process it started (the worker under the ``PythonSlicer`` launcher)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True,
                       creationflags=subprocess.CREATE_NO_WINDOW, check=False)
    else:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # the process group started by start_new_session
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=timeout)
                if sig == signal.SIGTERM:
                    # the launcher is gone; make sure no child outlived it (a worker ignoring SIGTERM)
                    os.killpg(process.pid, signal.SIGKILL)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class JobEvent:
    """Something the GUI shows: progress (fraction, stage), completion (result) or failure (error)."""

    kind: str  # "progress" | "log" | "done" | "failed" | "cancelled"
    fraction: float = 0.0
    stage: str = ""
    text: str = ""  # a line of the worker's own output ("log")
    result: dict = field(default_factory=dict)
    error: str = ""


class Job:
    """A worker process running ``python -m worker_module request.json`` in its own temporary folder."""

    def __init__(self, worker_module: str, request: dict, workdir, python_paths=(), python: str = None):
        self.workdir = Path(workdir)
        self.worker_module = worker_module
        self.request = dict(request)
        self.python = python or python_executable()
        self.python_paths = list(python_paths)
        self._lines: queue.Queue = queue.Queue()
        self._process = None
        self._readers = ()
        self._stderr_tail: list = []
        self._last_error = ""
        self._finished = False
        self._cancelled = False

    @property
    def running(self) -> bool:
        return self._process is not None and not self._finished

    def start(self) -> None:
        request_path = self.workdir / REQUEST_FILE
        request_path.write_text(json.dumps(self.request), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(self.python_paths + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        self._process = subprocess.Popen(
            [self.python, "-u", "-m", self.worker_module, str(request_path)], cwd=str(self.workdir), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            **launch_options())
        self._readers = (threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True))
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of the worker's output

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            self._stderr_tail = (self._stderr_tail + [line.rstrip()])[-40:]
            self._lines.put(JobEvent("log", text=line.rstrip()))

    def cancel(self) -> None:
        """Stop the worker and everything it started (terminate, then kill what is left after a few seconds)."""
        if self._process is None or self._finished:
            return
        self._cancelled = True
        end_process_tree(self._process)

    def poll(self) -> list:
        """Events since the last call; the last one is 'done', 'failed' or 'cancelled' once the job ended.

        Never waits for more output: once the worker has exited, its last lines are already in the pipe.
        """
        events = []
        stdout_closed = self._take_lines(events)
        if self._finished or self._process is None:
            return events
        if self._cancelled:
            self._finished = True
            return events + [JobEvent("cancelled")]
        if stdout_closed or self._process.poll() is not None:
            code = self._process.wait()
            for reader in self._readers:  # exited: its last lines (a traceback on stderr) are being read now
                reader.join(timeout=PIPE_CLOSE_TIMEOUT_S)
            self._take_lines(events)
            self._finished = True
            events.append(self._final_event(code))
        return events

    def cleanup(self) -> None:
        """Remove the job folder (inputs, result, evidence) once the result is in the scene."""
        if self._process is not None and not self._finished:
            self.cancel()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def wait(self, timeout: float = None) -> JobEvent:
        """Block until the job ends (for scripts and tests; the GUI polls instead)."""
        self._process.wait(timeout=timeout)
        last = None
        while not self._finished:
            for event in self.poll():
                last = event
        return last

    def _take_lines(self, events: list) -> bool:
        """Move what the readers collected so far into ``events``; True once the worker's stdout has ended."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return False
            if line is None:
                return True
            event = line if isinstance(line, JobEvent) else self._parse(line)
            if event is not None:
                events.append(event)

    def _parse(self, line: str):
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            message = None
        if not isinstance(message, dict):  # the worker's own prints (libraries, warnings): the log
            return JobEvent("log", text=line.rstrip()) if line.strip() else None
        if "error" in message:
            self._last_error = str(message["error"])
            return None
        if "progress" in message:
            return JobEvent("progress", fraction=float(message["progress"]), stage=str(message.get("stage", "")))
        return JobEvent("log", text=line.rstrip())

    def _final_event(self, code: int) -> JobEvent:
        if code == 0:
            result_path = self.workdir / RESULT_FILE
            if result_path.is_file():
                return JobEvent("done", fraction=1.0, result=json.loads(result_path.read_text(encoding="utf-8")))
            return JobEvent("failed", error="the worker finished without writing a result")
        if code == EXIT_USER_ERROR and self._last_error:
            return JobEvent("failed", error=self._last_error)
        message = self._last_error or f"the worker stopped with exit code {code}"
        tail = "\n".join(self._stderr_tail[-12:])
        return JobEvent("failed", error=f"{message}\n{tail}".strip())


def new_workdir(prefix: str = "landmarkloc-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextlib.contextmanager
def starting_workdir(prefix: str = "landmarkloc-"):
    """A fresh work folder that is removed again when the job cannot start (bad input found while writing)."""
    workdir = new_workdir(prefix)
    try:
        yield workdir
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- worker side


def report_progress(fraction: float, stage: str) -> None:
    """Worker side: tell the GUI how far the work is (0..1) and what it is doing."""
    print(json.dumps({"progress": round(float(fraction), 4), "stage": stage}), flush=True)


def exit_worker(code: int) -> None:
    """Worker main's last step: end the process at once once its result is written and its output flushed.

    The interpreter's own teardown takes about 0.6 s with torch loaded (measured on a 2-core CPU), and the GUI
    shows the result only once the worker has exited, so the user would wait for it after every run.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker(handler, argv=None) -> int:
    """Worker main: read the request, call ``handler(request, workdir, report_progress)``, write its result.

    User errors become ``{"error": message}`` and exit code 2; anything else is
    a bug and keeps its traceback on stderr (exit code 1).
    """
    argv = sys.argv[1:] if argv is None else argv
    request_path = Path(argv[0])
    workdir = request_path.parent
    try:
        request = json.loads(request_path.read_text(encoding="utf-8"))
        result = handler(request, workdir, report_progress)
    except LandmarkLocError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: keep the traceback for the report
        traceback.print_exc()
        print(json.dumps({"error": f"internal error ({type(exc).__name__}: {exc}); the traceback is in the log"}),
              flush=True)
        return 1
    tmp = workdir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, workdir / RESULT_FILE)
    return 0
