"""What both module widgets do with a worker job: start it, poll it, show progress, apply or report its end.

A mixin for a ScriptedLoadableModuleWidget with ``self.ui.progressBar``,
``self.ui.statusLabel``, ``self.timer`` and ``updateButtons()``. Slicer is
imported only when a job starts or is polled, so this Lib stays importable
without Slicer's GUI.

Two rules keep it safe:

* the function that applies a result is made when the job starts, with the
  nodes chosen then, so changing a selector during a run cannot misplace the
  result;
* before anything that can open a dialog (``errorDisplay`` and
  ``warningDisplay`` run their own event loop, in which the poll timer keeps
  firing) the timer is stopped and the job is taken off the widget, so a poll
  inside the dialog finds nothing to do.
"""

from __future__ import annotations


class JobPollingMixin:
    _job = None
    _jobKind = ""
    _finishJob = None

    def startJob(self, kind: str, start, finish) -> None:
        """Install missing packages (asking first), then ``start() -> Job``; ``finish(result)`` applies its result.

        Bad input, a declined or failed installation: a message, and nothing starts.
        """
        import slicer
        from slicer.i18n import tr as _

        from landmarkloc.errors import LandmarkLocError

        from .dependencies import ensure_installed

        try:
            ensure_installed(slicer.util.confirmOkCancelDisplay)
            job = start()
        except LandmarkLocError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self._job, self._jobKind, self._finishJob = job, kind, finish
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self.timer.start()
        self.updateButtons()

    def cancelJob(self) -> None:
        job = self._job
        if job is None:
            return
        job.cancel()
        self.onPoll()

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
                    self.ui.statusLabel.text = event.stage
                elif event.kind == "done":
                    self.ui.progressBar.value = 100
                    try:
                        finish(event.result)
                    except LandmarkLocError as exc:
                        self.ui.statusLabel.text = _("Failed.")
                        slicer.util.errorDisplay(str(exc))
                elif event.kind == "failed":
                    self.ui.statusLabel.text = _("Failed.")
                    slicer.util.errorDisplay(event.error)
                elif event.kind == "cancelled":
                    self.ui.progressBar.value = 0
                    self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        finally:
            if ended:
                job.cleanup()  # after finish: it reads the job folder (evidence maps)
                self.updateButtons()
