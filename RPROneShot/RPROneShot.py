"""RPROneShot: locate points and organ boxes in a new image from one annotated support image.

Relative position regression (Lei et al. 2021) with ncc and registration
baselines. The module file is thin: ``RPROneShotLib`` holds the Qt-free logic
and the engine adapter, and the shared MRML/worker code comes from
``LandmarkLocalizerLib`` (hence the dependency on LandmarkLocalizer). The
networks run in a ``PythonSlicer`` worker process; MRML changes only here, on
the main thread.
"""

import os
import sys
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLVectorVolumeNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

ADD_MODEL_TEXT = "Add model file..."
DOCS_URL = "https://github.com/landmarkloc/SlicerLandmarkLoc/blob/main/docs/slicer.md"
CONTRIBUTORS = ["landmarkloc developers (landmarkloc project)"]


def _addCorePackageToPath() -> None:
    """Run from a checkout (module paths added in Application Settings): make the repository's landmarkloc importable.

    In a built extension the package is installed beside this file and already importable.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "landmarkloc")) and folder not in sys.path:
            sys.path.append(folder)
            return


_addCorePackageToPath()

from LandmarkLocalizerLib.devices import DEVICE_CHOICES, update_saved_choice  # noqa: E402  (after path set-up)
from LandmarkLocalizerLib.jobwidget import JobPollingMixin  # noqa: E402

NO_FINE_MODEL_TEXT = "None"
DOWNLOAD_DATA_PREFIX = "landmarkloc-download:"  # model combo data of a "Download NAME..." item
POLL_MS = 100
# Grey volumes and pictures (PNG/JPEG load as vector volumes): see LandmarkLocalizer.ImageVolume.
ImageVolume = Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode, None]


class RPROneShot(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("RPR One-Shot")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Landmark Localization")]
        self.parent.dependencies = ["Markups", "Segmentations", "LandmarkLocalizer"]
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Locates the points of one annotated support image, or the organs of its segmentation (six extreme "
            "points and a box per organ), in a query image with relative position regression (Lei et al. 2021). "
            "Save the support as a template to skip it next time. Each point's description holds the spread of "
            "the K runs (mm). To try it without data of your own, load <i>MNI152 T1</i> from the Sample Data "
            "module: it comes with a ready support template.") + \
            f' <a href="{DOCS_URL}">' + _("Module documentation") + "</a>."
        self.parent.acknowledgementText = _("Built on the landmarkloc package (PyTorch, SimpleITK).")


@parameterNodeWrapper
class RPROneShotParameterNode:
    """Saved with the scene: support, query, method and options, the loaded template and the last outputs."""

    supportVolume: ImageVolume = None
    supportPoints: vtkMRMLMarkupsFiducialNode
    supportLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None] = None
    templatePath: str = ""
    queryVolume: ImageVolume = None
    method: Annotated[str, Choice(["rpr", "ncc", "registration"])] = "rpr"
    modelPath: str = ""
    fineModelPath: str = ""
    runs: Annotated[int, WithinRange(1, 200)] = 15
    steps: Annotated[int, WithinRange(1, 10)] = 1
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    outputPoints: vtkMRMLMarkupsFiducialNode


class RPROneShotWidget(JobPollingMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []
        self._downloads = []  # released one-shot models (landmarkloc.distribution) offered for download
        self._roiNodes = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RPROneShot.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RPROneShotLogic()

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.findButton.connect("clicked(bool)", self.onFindButton)
        self.ui.saveTemplateButton.connect("clicked(bool)", self.onSaveTemplateButton)
        self.ui.loadTemplateButton.connect("clicked(bool)", self.onLoadTemplateButton)
        self.ui.clearTemplateButton.connect("clicked(bool)", self.onClearTemplateButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.modelComboBox.connect("activated(int)", lambda index: self.onModelActivated(index, fine=False))
        self.ui.fineModelComboBox.connect("activated(int)", lambda index: self.onModelActivated(index, fine=True))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        from LandmarkLocalizerLib.models import downloadable_models, offered_models

        self._models = offered_models("rpr")  # shipped and downloaded (landmarkloc.distribution)
        self._downloads = downloadable_models("rpr", self._models)
        self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def cleanup(self) -> None:
        self.cancelJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        update_saved_choice(parameterNode)  # a scene saved with an older Device choice
        self.setParameterNode(parameterNode)
        from LandmarkLocalizerLib.models import restore_saved_model

        p = self._parameterNode
        # models saved with the scene that are not shipped (added in an earlier session) are listed again
        coarse = [m for m in self._models if m.stage != "fine"]
        p.modelPath = restore_saved_model(self._models, p.modelPath, "rpr", "coarse") or (
            coarse[0].path if coarse else "")
        p.fineModelPath = restore_saved_model(self._models, p.fineModelPath, "rpr", "fine")
        self.fillModelCombos()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        idle = not running and not self._installing
        hasSupport = bool(p and p.supportVolume and (p.supportPoints or p.supportLabels))
        rpr = bool(p and p.method == "rpr")
        cancels = running and self._jobKind in ("find", "download")  # Find cancels a download too
        self.ui.findButton.text = _("Cancel") if cancels else _("Find")
        canFind = bool(p and p.queryVolume and (hasSupport or (rpr and p.templatePath)) and (p.modelPath or not rpr))
        self.ui.findButton.enabled = cancels or canFind and idle
        self.ui.saveTemplateButton.text = _("Cancel") if running and self._jobKind == "template" \
            else _("Save template...")
        self.ui.saveTemplateButton.enabled = bool(hasSupport and p.modelPath) and (
            idle or running and self._jobKind == "template")
        self.ui.loadTemplateButton.enabled = idle
        self.ui.clearTemplateButton.enabled = bool(p and p.templatePath) and idle
        self.ui.modelComboBox.enabled = self.ui.fineModelComboBox.enabled = rpr
        self.ui.runsSpinBox.enabled = self.ui.stepsSpinBox.enabled = rpr
        self.ui.exportButton.enabled = bool(p and p.outputPoints) and idle
        self.ui.templateLabel.text = _("Using template {name}").format(name=os.path.basename(p.templatePath)) \
            if p and p.templatePath else ""

    # ------------------------------------------------------------------ models

    def modelsOf(self, fine: bool) -> list:
        return [m for m in self._models if (m.stage == "fine") == fine]

    def fillModelCombos(self) -> None:
        p = self._parameterNode
        for fine, combo, current in ((False, self.ui.modelComboBox, p.modelPath),
                                     (True, self.ui.fineModelComboBox, p.fineModelPath)):
            combo.clear()
            if fine:
                combo.addItem(NO_FINE_MODEL_TEXT, "")
            for model in self.modelsOf(fine):
                combo.addItem(model.label, model.path)
            for released in self._downloads:
                if (released.stage == "fine") == fine:
                    combo.addItem(_("Download {name} ({size:.0f} MB)...").format(
                        name=released.name, size=released.size / 1e6), DOWNLOAD_DATA_PREFIX + released.name)
            combo.addItem(ADD_MODEL_TEXT, "")
            index = combo.findData(current) if current else 0
            combo.setCurrentIndex(max(index, 0))

    def onModelActivated(self, index: int, fine: bool) -> None:
        from LandmarkLocalizerLib.models import inspect_model

        from landmarkloc.errors import LandmarkLocError

        combo = self.ui.fineModelComboBox if fine else self.ui.modelComboBox
        p = self._parameterNode
        if combo.itemText(index) == ADD_MODEL_TEXT:
            path = qt.QFileDialog.getOpenFileName(self.parent, _("Add one-shot model"), "",
                                                  _("Model files (*.safetensors *.json)"))
            if path:
                try:
                    model = inspect_model(path, "rpr")
                    if (model.stage == "fine") != fine:
                        raise LandmarkLocError(_("{name} is a {stage} model").format(name=model.name,
                                                                                      stage=model.stage))
                    self._models.append(model)
                    if fine:
                        p.fineModelPath = model.path
                    else:
                        p.modelPath = model.path
                except LandmarkLocError as exc:
                    slicer.util.errorDisplay(_("This model cannot be used:\n{message}").format(message=exc))
            self.fillModelCombos()
            return
        data = combo.itemData(index) or ""
        if data.startswith(DOWNLOAD_DATA_PREFIX):
            released = next(r for r in self._downloads if r.name == data[len(DOWNLOAD_DATA_PREFIX):])
            self.fillModelCombos()  # the current model stays selected until the new one is in
            self.startJob("download", lambda: self.logic.startDownload(released),
                          lambda result: self.showDownloaded(result, fine))
            return
        if fine:
            p.fineModelPath = combo.itemData(index) or ""
        else:
            p.modelPath = combo.itemData(index) or ""

    def showDownloaded(self, result: dict, fine: bool) -> None:
        """The downloaded model joins its list and is selected."""
        from LandmarkLocalizerLib.models import downloadable_models, inspect_model

        model = inspect_model(result["model"], "rpr")
        if all(m.path != model.path for m in self._models):
            self._models.append(model)
        self._downloads = downloadable_models("rpr", self._models)
        if fine:
            self._parameterNode.fineModelPath = model.path
        else:
            self._parameterNode.modelPath = model.path
        self.fillModelCombos()
        self.ui.statusLabel.text = _("Downloaded {name}.").format(name=model.name)

    def modelInfo(self, path):
        return next((m for m in self._models if m.path == path), None) if path else None

    # ------------------------------------------------------------------ running

    def support(self):
        from RPROneShotLib.logic import Support

        p = self._parameterNode
        return Support(volume=p.supportVolume, points_node=p.supportPoints, labels_node=p.supportLabels)

    def onFindButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        # everything the result depends on is bound now: selectors changed during the run do not move it
        p = self._parameterNode
        query, support, method, template = p.queryVolume, self.support(), p.method, p.templatePath
        model, fine = self.modelInfo(p.modelPath), self.modelInfo(p.fineModelPath)
        runs, steps, device = p.runs, p.steps, p.device
        self.startJob("find", lambda: self.logic.startFind(query, support, method, model, fine, template, runs,
                                                           steps, device),
                      lambda result: self.showFound(result, query))

    def onSaveTemplateButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Save one-shot template"),
                                              os.path.join(qt.QDir.homePath(), "template.safetensors"),
                                              _("Template (*.safetensors)"))
        if not path:
            return
        p = self._parameterNode
        support, model, fine, device = self.support(), self.modelInfo(p.modelPath), self.modelInfo(p.fineModelPath), \
            p.device
        self.startJob("template", lambda: self.logic.startSaveTemplate(support, path, model, fine, device),
                      self.showTemplateSaved)

    def onLoadTemplateButton(self) -> None:
        from landmarkloc.errors import LandmarkLocError

        path = qt.QFileDialog.getOpenFileName(self.parent, _("Load one-shot template"), "",
                                              _("Template (*.safetensors *.json)"))
        if not path:
            return
        try:
            meta = self.logic.inspectTemplate(path)
        except LandmarkLocError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self._parameterNode.templatePath = path
        self._parameterNode.method = "rpr"
        self.ui.statusLabel.text = _("Template with {n} points loaded.").format(n=len(meta.get("names", [])))

    def onClearTemplateButton(self) -> None:
        self._parameterNode.templatePath = ""

    def showTemplateSaved(self, result: dict) -> None:
        self._parameterNode.templatePath = result["template"]
        self.ui.statusLabel.text = _("Template saved ({n} points).").format(n=len(result.get("names", [])))

    def showFound(self, result: dict, query) -> None:
        """The points and organ boxes in the query volume the job started with."""
        outcome = self.logic.applyFind(result, query)
        self._parameterNode.outputPoints = outcome.points_node
        self._roiNodes = outcome.roi_nodes
        self.ui.statusLabel.text = _("Located {n} points and {m} organ boxes.").format(
            n=outcome.points_node.GetNumberOfControlPoints(), m=len(outcome.roi_nodes))

    def onExportButton(self) -> None:

        node = self._parameterNode.outputPoints
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Export points"), os.path.join(qt.QDir.homePath(), node.GetName() + ".mrk.json"),
            _("Markups JSON, LPS (*.mrk.json);;Fiducial CSV (*.fcsv);;CSV table (*.csv)"))
        if path:
            self.exportTo(path)

    def exportTo(self, path: str) -> list:
        """Export the result points (and organ boxes beside them); returns the files written."""
        from landmarkloc.errors import LandmarkLocError

        node = self._parameterNode.outputPoints
        try:
            written = self.logic.exportResults(node, [n for n in self._roiNodes if n.GetScene()], path)
        except LandmarkLocError as exc:
            slicer.util.errorDisplay(str(exc))
            return []
        self.ui.statusLabel.text = _("Exported to {paths}").format(paths=", ".join(written))
        return written


class RPROneShotLogic(ScriptedLoadableModuleLogic):
    """Thin wrapper over ``RPROneShotLib.logic`` for the widget and for scripts."""

    def getParameterNode(self):
        return RPROneShotParameterNode(super().getParameterNode())

    def inspectTemplate(self, path):
        from RPROneShotLib import logic

        return logic.inspect_template(path)

    def startFind(self, queryVolume, support, method="rpr", model=None, fineModel=None, templatePath="", runs=15,
                  steps=1, device="Auto"):
        from RPROneShotLib import logic

        return logic.start_find(queryVolume, support, method, model, fineModel, templatePath, runs, steps, device)

    def startDownload(self, released):
        from LandmarkLocalizerLib import logic

        return logic.start_download(released)

    def startSaveTemplate(self, support, path, model, fineModel=None, device="Auto"):
        from RPROneShotLib import logic

        return logic.start_save_template(support, path, model, fineModel, device)

    def applyFind(self, result, queryVolume, name=""):
        from RPROneShotLib import logic

        return logic.apply_find(slicer.mrmlScene, result, queryVolume, name)

    def exportResults(self, pointsNode, roiNodes, path):
        """Points to ``path``; organ boxes (if any) beside it as ``<name>_boxes.mrk.json``. Returns the paths."""
        from LandmarkLocalizerLib import mrml

        mrml.export_points(pointsNode, path)
        written = [path]
        if roiNodes:
            base = path
            for suffix in (".mrk.json", ".fcsv", ".csv"):
                if base.lower().endswith(suffix):
                    base = base[: -len(suffix)]
            mrml.export_boxes(roiNodes, base + "_boxes.mrk.json")
            written.append(base + "_boxes.mrk.json")
        return written

    def run(self, job):
        """Wait for a job and return its result (scripts and tests; the GUI polls instead)."""
        from landmarkloc.errors import LandmarkLocError

        try:
            event = job.wait()
            if event.kind != "done":
                raise LandmarkLocError(event.error or event.kind)
            return event.result
        finally:
            job.cleanup()


class RPROneShotTest(ScriptedLoadableModuleTest):
    """The one-shot workflow on generated volumes with tiny untrained models (needs PyTorch in Slicer)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from LandmarkLocalizerLib.selftest import packages_the_self_test_lacks, skip_message

        missing = packages_the_self_test_lacks(slicer.app.testingEnabled(), slicer.util.confirmOkCancelDisplay)
        if missing:
            self.delayDisplay(skip_message(missing))
            return
        self.setUp()
        self.test_organs_template_and_points()
        self.setUp()
        self.test_widget_click_through()

    def test_organs_template_and_points(self):
        import numpy as np
        from LandmarkLocalizerLib import mrml
        from LandmarkLocalizerLib.models import inspect_model
        from LandmarkLocalizerLib.selftest import blob_volume
        from RPROneShotLib.logic import Support
        from RPROneShotLib.selftest import make_tiny_rpr_models

        from landmarkloc.errors import InputError

        folder = os.path.join(slicer.app.temporaryPath, "RPROneShotSelfTest")
        coarse, fine = (inspect_model(p, "rpr") for p in make_tiny_rpr_models(folder))
        logic = RPROneShotLogic()

        support = slicer.util.addVolumeFromArray(blob_volume(), name="support")
        support.SetSpacing(1.6, 1.5, 1.8)
        labels = np.zeros(blob_volume().shape, dtype=np.uint8)
        labels[6:12, 8:16, 10:20] = 1
        labels[13:19, 12:20, 6:14] = 2
        labelmap = slicer.util.addVolumeFromArray(labels, name="organ labels",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        labelmap.SetSpacing(1.6, 1.5, 1.8)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(support)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(0).SetName("liver")
        segmentation.GetSegmentation().GetNthSegment(1).SetName("spleen")
        query = slicer.util.addVolumeFromArray(blob_volume(seed=1), name="query")
        query.SetSpacing(1.6, 1.5, 1.8)
        query.SetOrigin(5.0, -3.0, 2.0)

        self.delayDisplay("Finding organs")
        organs = Support(volume=support, labels_node=segmentation)
        result = logic.run(logic.startFind(query, organs, "rpr", coarse, fine, runs=5, device="CPU"))
        outcome = logic.applyFind(result, query)
        self.assertEqual([n.GetName() for n in outcome.roi_nodes], ["liver", "spleen"])
        self.assertEqual(outcome.points_node.GetNumberOfControlPoints(), 12)
        self.assertTrue(mrml.roi_description(outcome.roi_nodes[0]).startswith("spread_mm="))

        self.delayDisplay("Template round trip")
        path = os.path.join(folder, "organs.safetensors")
        logic.run(logic.startSaveTemplate(organs, path, coarse, fine, "CPU"))
        again = logic.applyFind(logic.run(logic.startFind(query, Support(), "rpr", coarse, fine, path, runs=5,
                                                          device="CPU")), query, "from template")
        self.assertEqual(len(again.roi_nodes), 2)

        self.delayDisplay("Export")
        written = logic.exportResults(outcome.points_node, outcome.roi_nodes, os.path.join(folder, "found.mrk.json"))
        self.assertEqual(len(written), 2)
        self.assertTrue(all(os.path.getsize(p) > 0 for p in written))

        self.delayDisplay("Support points outside the support are refused")
        geometry = mrml.volume_geometry(support)
        from landmarkloc.points import ControlPoint

        far = mrml.add_points_node(slicer.mrmlScene, [ControlPoint("far", geometry.index_to_physical([99, 0, 0]))],
                                   "far")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            logic.startFind(query, Support(support, far), "rpr", coarse, fine)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")

    def test_widget_click_through(self):
        """Find and Export through the module's widget, with a point list and with a segmentation as support."""
        import numpy as np
        from LandmarkLocalizerLib import mrml
        from LandmarkLocalizerLib.selftest import blob_volume, process_events_until_idle
        from RPROneShotLib.selftest import click_through_one_shot, make_tiny_rpr_models

        from landmarkloc.points import ControlPoint

        folder = os.path.join(slicer.app.temporaryPath, "RPROneShotSelfTest", "ui")
        coarse, fine = make_tiny_rpr_models(folder)
        support = slicer.util.addVolumeFromArray(blob_volume(), name="support")
        labels = np.zeros(blob_volume().shape, dtype=np.uint8)
        labels[6:12, 8:16, 10:20] = 1
        labels[13:19, 12:20, 6:14] = 2
        labelmap = slicer.util.addVolumeFromArray(labels, name="organ labels",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(support)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        geometry = mrml.volume_geometry(support)
        placed = mrml.add_points_node(slicer.mrmlScene, [ControlPoint("P0", geometry.index_to_physical([15, 12, 9])),
                                                         ControlPoint("P1", geometry.index_to_physical([10, 16, 15]))],
                                      "placed")
        query = slicer.util.addVolumeFromArray(blob_volume(seed=1), name="query")
        query.SetOrigin(5.0, -3.0, 2.0)
        slicer.util.selectModule("RPROneShot")
        widget = slicer.modules.rproneshot.widgetRepresentation().self()

        self.delayDisplay("Clicking Find with a point list")
        found, rois, _ = click_through_one_shot(widget, support, query, coarse, fine, folder, process_events_until_idle,
                                                points_node=placed)
        self.assertEqual(found.GetNumberOfControlPoints(), 2)
        self.assertEqual(rois, [])
        self.delayDisplay("Clicking Find with a segmentation")
        found, rois, written = click_through_one_shot(widget, support, query, coarse, fine, folder,
                                                      process_events_until_idle, labels_node=segmentation)
        self.assertEqual(len(rois), 2)
        self.assertEqual(len(written), 2)
        self.delayDisplay("Test passed")
