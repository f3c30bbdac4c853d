"""What both module widgets do with a running worker job: poll it, show progress, apply or report its end.

A mixin for a ScriptedLoadableModuleWidget with ``self.ui.progressBar``,
``self.ui.statusLabel``, ``self.timer``, ``self._job`` and the methods
``applyResult(result)`` and ``updateButtons()``. Slicer is imported only when
a job is polled, so this Lib stays importable without Slicer's GUI.
"""

from __future__ import annotations


class JobPollingMixin:
    def cancelJob(self) -> None:
        if self._job is None:
            return
        self._job.cancel()
        self.onPoll()

    def onPoll(self) -> None:
        import slicer
        from slicer.i18n import tr as _

        if self._job is None:
            self.timer.stop()
            return
        for event in self._job.poll():
            if event.kind == "progress":
                self.ui.progressBar.value = int(round(100 * event.fraction))
                self.ui.statusLabel.text = event.stage
            elif event.kind == "done":
                self.applyResult(event.result)
            elif event.kind == "failed":
                self.ui.statusLabel.text = _("Failed.")
                slicer.util.errorDisplay(event.error)
            elif event.kind == "cancelled":
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        if not self._job.running:
            self.timer.stop()
            self._job.cleanup()
            self._job = None
            self.updateButtons()
