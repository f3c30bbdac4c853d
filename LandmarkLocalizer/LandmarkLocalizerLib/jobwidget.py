"""What both module widgets do with a worker job: start it, poll it, show progress, apply or report its end.

A mixin for a ScriptedLoadableModuleWidget with ``self.ui.progressBar``,
``self.ui.statusLabel``, ``self.ui.logTextEdit`` (in a collapsible Log
section), ``self.timer`` and ``updateButtons()``. Slicer is imported only when
a job starts or is polled, so this Lib stays importable without Slicer's GUI.

What the user sees: the stage the worker is in and the seconds since the start
(updated at every poll), the worker's own output in the log, and at the end a
summary with the time taken and the device used. Warnings go to the status
area and the log; only errors open a dialog (Slicer's guidance: no popup for
something the user need not act on).

Three rules keep it safe:

* the function that applies a result is made when the job starts, with the
  nodes chosen then, so changing a selector during a run cannot misplace the
  result;
* while packages install (the installer processes events, so clicks arrive)
  the run buttons are disabled and a click that still arrives starts nothing;
* before anything that can open a dialog (``errorDisplay`` runs its own event
  loop, in which the poll timer keeps firing) the timer is stopped and the job
  is taken off the widget, so a poll inside the dialog finds nothing to do.
"""

from __future__ import annotations

import time


class JobPollingMixin:
    _job = None
    _jobKind = ""
    _finishJob = None
    _installing = False
    _jobStart = 0.0
    _jobStage = ""

    def startJob(self, kind: str, start, finish) -> None:
        """Install missing packages (asking first), then ``start() -> Job``; ``finish(result)`` applies its result.

        Bad input, a declined or failed installation: a message, and nothing starts.
        """
        if self._installing or self._job is not None:
            return  # a click that reached us while packages install: the first click's run is on its way
        import slicer
        from slicer.i18n import tr as _

        from landmarkloc.errors import LandmarkLocError

        from .dependencies import ensure_installed

        self._installing = True
        self.updateButtons()
        problem = ""
        try:
            ensure_installed(slicer.util.confirmOkCancelDisplay)
            job = start()
        except LandmarkLocError as exc:
            problem = str(exc)
        finally:
            self._installing = False
        if problem:
            self.updateButtons()
            slicer.util.errorDisplay(problem)
            return
        self._job, self._jobKind, self._finishJob = job, kind, finish
        self._jobStart, self._jobStage = time.monotonic(), _("Starting")
        self.ui.progressBar.value = 0
        self.ui.logTextEdit.clear()
        self.showJobStatus()
        self.timer.start()
        self.updateButtons()

    def cancelJob(self) -> None:
        job = self._job
        if job is None:
            return
        job.cancel()
        self.onPoll()

    def elapsedSeconds(self) -> float:
        return time.monotonic() - self._jobStart

    def showJobStatus(self) -> None:
        from slicer.i18n import tr as _

        self.ui.statusLabel.text = _("{stage}... {seconds:.0f} s").format(stage=self._jobStage,
                                                                         seconds=self.elapsedSeconds())

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def showOutcome(self, result: dict) -> None:
        """After ``finish`` wrote its summary: the time and device, then the warnings (in the status, not a popup)."""
        from slicer.i18n import tr as _

        took = _("{seconds:.0f} s").format(seconds=self.elapsedSeconds())
        device = result.get("device")
        where = _(" on {device}").format(device=device) if device else ""
        lines = [f"{self.ui.statusLabel.text} ({took}{where})"]
        for warning in result.get("warnings", []):
            lines.append(_("Warning: {text}").format(text=warning))
            self.appendLog(_("Warning: {text}").format(text=warning))
        self.ui.statusLabel.text = "\n".join(lines)

    def onPoll(self) -> None:
        import slicer
        from slicer.i18n import tr as _

        from landmarkloc.errors import LandmarkLocError

        job = self._job
        if job is None:
            self.timer.stop()
            return
        events = job.poll()
        ended = not job.running
        finish = self._finishJob
        if ended:  # before any dialog: a poll from inside its event loop must find no job
            self.timer.stop()
            self._job = self._finishJob = None
        try:
            for event in events:
                if event.kind == "progress":
                    self.ui.progressBar.value = int(round(100 * event.fraction))
                    self._jobStage = event.stage
                    self.appendLog(event.stage)
                elif event.kind == "log":
                    self.appendLog(event.text)
                elif event.kind == "done":
                    self.ui.progressBar.value = 100
                    try:
                        finish(event.result)
                        self.showOutcome(event.result)
                    except LandmarkLocError as exc:
                        self.ui.statusLabel.text = _("Failed.")
                        self.appendLog(str(exc))
                        slicer.util.errorDisplay(str(exc))
                elif event.kind == "failed":
                    self.ui.statusLabel.text = _("Failed.")
                    self.appendLog(event.error)
                    slicer.util.errorDisplay(event.error)
                elif event.kind == "cancelled":
                    self.ui.progressBar.value = 0
                    self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
            if not ended:
                self.showJobStatus()
        finally:
            if ended:
                job.cleanup()  # after finish: it reads the job folder (evidence maps)
                self.updateButtons()
