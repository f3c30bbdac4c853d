"""LandmarkLocalizer: find anatomical landmarks with a global-to-local FCN model (3D volumes and 2D images).

The module file is thin: the widget wires the .ui to ``LandmarkLocalizerLib``
(Qt-free logic, tested in CI with real MRML). The network runs in a
``PythonSlicer`` worker process, so Slicer stays responsive and Cancel works;
MRML is only touched here, on the main thread, when the worker is done.
"""

import os
import sys
from typing import Annotated, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode
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

POLL_MS = 100
# Grey volumes and pictures (PNG/JPEG load as vector volumes). The wrapper sets a node selector's types to exactly
# these (replacing the .ui's list), and a selector that hides subclasses would not offer pictures otherwise.
ImageVolume = Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode, None]


class LandmarkLocalizer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Landmark Localizer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Landmark Localization")]
        self.parent.dependencies = ["Markups"]
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = _(
            "Finds anatomical landmarks in a 3D volume or a 2D image (PNG/JPEG pictures are used as grey) with a "
            "global-to-local fully convolutional network (Noothout et al. 2020). Points come out as a point list "
            "with a confidence per point; uncertain points are unselected (amber). Move a point and click "
            "<i>Refine selected</i> to re-run the local stage from there. To try it without data of your own, "
            "load <i>MNI152 T1</i> from the Sample Data module.") + \
            f' <a href="{DOCS_URL}">' + _("Module documentation") + "</a>."
        self.parent.acknowledgementText = _("Built on the landmarkloc package (PyTorch, SimpleITK). The MNI152 "
                                            "sample is the ICBM 2009a template (McConnell Brain Imaging Centre), "
                                            "from the nilearn package.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The MNI152 T1 template in Sample Data: loads it and points both modules at it (no download)."""
    import SampleData
    from LandmarkLocalizerLib import sampledata

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=sampledata.SAMPLE_CATEGORY,
        sampleName=sampledata.SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", sampledata.THUMBNAIL),
        # SampleData wants one URI and file name per node; the loader below reads the file from nilearn instead
        uris=sampledata.SOURCE_URI,
        fileNames=sampledata.FILE_NAME,
        nodeNames=sampledata.NODE_NAME,
        customDownloader=loadMNI152Sample,
    )


def loadMNI152Sample(source=None):
    """Load the MNI152 T1 sample and set it as the input of both modules (RPR One-Shot with its support template).

    Sample Data's button calls this; ``SampleData.downloadSample("MNI152 T1")`` does not (it downloads the
    registered URI and loads the file), so scripts call ``LandmarkLocalizer.loadMNI152Sample()`` instead.
    """
    from LandmarkLocalizerLib import sampledata
    from LandmarkLocalizerLib.dependencies import ensure_installed

    from landmarkloc.errors import LandmarkLocError

    try:
        ensure_installed(slicer.util.confirmOkCancelDisplay, extra=("nilearn",), engines=False)
        models = sampledata.sample_models()
        node = sampledata.load_mni152(slicer.mrmlScene)
    except LandmarkLocError as exc:
        slicer.util.errorDisplay(_("The MNI152 sample cannot be loaded:\n{message}").format(message=exc))
        return []
    slicer.util.setSliceViewerLayers(background=node, fit=True)
    parameters = LandmarkLocalizerLogic().getParameterNode()
    parameters.inputVolume, parameters.modelPath = node, models.fcn
    if hasattr(slicer.modules, "rproneshot"):
        from RPROneShot import RPROneShotLogic

        parameters = RPROneShotLogic().getParameterNode()
        parameters.queryVolume, parameters.method = node, "rpr"
        parameters.modelPath, parameters.fineModelPath, parameters.templatePath = \
            models.coarse, models.fine, models.template
    return [node]


@parameterNodeWrapper
class LandmarkLocalizerParameterNode:
    """Saved with the scene: inputs, options and the last outputs."""

    inputVolume: ImageVolume = None
    modelPath: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    uncertainBelow: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showEvidence: bool = False
    outputPoints: vtkMRMLMarkupsFiducialNode
    evidenceVolume: vtkMRMLScalarVolumeNode


# The results table follows its point list: moved, added, removed or (un)placed points.
POINT_LIST_EVENTS = (vtkMRMLMarkupsFiducialNode.PointModifiedEvent, vtkMRMLMarkupsFiducialNode.PointAddedEvent,
                     vtkMRMLMarkupsFiducialNode.PointRemovedEvent, vtkMRMLMarkupsFiducialNode.PointPositionDefinedEvent)


class LandmarkLocalizerWidget(JobPollingMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []
        self._downloads = []  # released models (landmarkloc.distribution) offered for download
        self._observedPoints = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LandmarkLocalizer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LandmarkLocalizerLogic()

        self.ui.resultsTable.horizontalHeader().setStretchLastSection(True)
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

        self.ui.localizeButton.connect("clicked(bool)", self.onLocalizeButton)
        self.ui.refineButton.connect("clicked(bool)", self.onRefineButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onResultClicked)
        self.ui.outputPointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputPointsChanged)
        self.ui.uncertainSliderWidget.connect("valueChanged(double)", self.onUncertainBelowChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.populateModels()
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
        if not self._parameterNode.inputVolume:
            from LandmarkLocalizerLib.mrml import first_input_volume

            self._parameterNode.inputVolume = first_input_volume(slicer.mrmlScene)
        self.selectModelPath(self._parameterNode.modelPath)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()
        self.updateResultsTable()

    def updateButtons(self, caller=None, event=None) -> None:
        from LandmarkLocalizerLib.mrml import source_volume

        running = self._job is not None
        p = self._parameterNode
        idle = not running and not self._installing
        cancels = running and self._jobKind in ("localize", "download")  # Localize cancels a download too
        self.ui.localizeButton.text = _("Cancel") if cancels else _("Localize")
        self.ui.localizeButton.enabled = cancels or bool(p and p.inputVolume and p.modelPath) and idle
        hasVolume = bool(p and (p.inputVolume or source_volume(p.outputPoints)))
        self.ui.refineButton.text = _("Cancel") if running and self._jobKind == "refine" else _("Refine selected")
        self.ui.refineButton.enabled = bool(p and p.outputPoints and hasVolume and p.modelPath) and (
            idle or running and self._jobKind == "refine")
        self.ui.exportButton.enabled = bool(p and p.outputPoints) and idle

    # ------------------------------------------------------------------ models

    def populateModels(self) -> None:
        """The shipped and downloaded models, then a "Download ..." item per released model not downloaded yet."""
        from LandmarkLocalizerLib.models import downloadable_models, offered_models

        self._models = offered_models("fcn")
        self._downloads = downloadable_models("fcn", self._models)
        combo = self.ui.modelComboBox
        combo.clear()
        for model in self._models:
            combo.addItem(model.label, model.path)
        for released in self._downloads:
            combo.addItem(_("Download {name} ({size:.0f} MB)...").format(name=released.name, size=released.size / 1e6),
                          "")
        combo.addItem(ADD_MODEL_TEXT, "")

    def selectModelPath(self, path: str) -> None:
        """Select ``path`` (a model saved with the scene is added to the list if it is valid), else the first."""
        from LandmarkLocalizerLib.models import restore_saved_model

        listed = len(self._models)
        path = restore_saved_model(self._models, path, "fcn") or (self._models[0].path if self._models else "")
        for position in range(listed, len(self._models)):
            self.ui.modelComboBox.insertItem(position, self._models[position].label, self._models[position].path)
        index = next((i for i, m in enumerate(self._models) if m.path == path), -1)
        if index >= 0:
            self.ui.modelComboBox.setCurrentIndex(index)
        if self._parameterNode:
            self._parameterNode.modelPath = path
        self.showModelInfo()

    def addModelFile(self, path: str) -> bool:
        from LandmarkLocalizerLib.models import inspect_model

        from landmarkloc.errors import LandmarkLocError

        try:
            model = inspect_model(path, "fcn")
        except LandmarkLocError as exc:
            slicer.util.errorDisplay(_("This model cannot be used:\n{message}").format(message=exc))
            return False
        self._models.append(model)
        self.ui.modelComboBox.insertItem(len(self._models) - 1, model.label, model.path)
        return True

    def onModelActivated(self, index: int) -> None:
        if self.ui.modelComboBox.itemText(index) == ADD_MODEL_TEXT:
            path = qt.QFileDialog.getOpenFileName(
                self.parent, _("Add landmark model"), "", _("Model files (*.safetensors *.json)"))
            if path and self.addModelFile(path):
                self.selectModelPath(self._models[-1].path)
            else:
                self.selectModelPath(self._parameterNode.modelPath if self._parameterNode else "")
            return
        download = index - len(self._models)
        if 0 <= download < len(self._downloads):
            released = self._downloads[download]
            self.selectModelPath(self._parameterNode.modelPath)  # the current model stays until the new one is in
            self.startJob("download", lambda: self.logic.startDownload(released), self.showDownloaded)
            return
        if 0 <= index < len(self._models):
            self._parameterNode.modelPath = self._models[index].path
        self.showModelInfo()

    def showDownloaded(self, result: dict) -> None:
        """The downloaded model joins the list and is selected."""
        from LandmarkLocalizerLib.models import inspect_model

        model = inspect_model(result["model"], "fcn")
        self.populateModels()
        self.selectModelPath(model.path)
        self.ui.statusLabel.text = _("Downloaded {name}.").format(name=model.name)

    def currentModel(self):
        path = self._parameterNode.modelPath if self._parameterNode else ""
        return next((m for m in self._models if m.path == path), None)

    def showModelInfo(self) -> None:
        model = self.currentModel()
        if model is None:
            self.ui.modelInfoLabel.text = _("No model: add a model file.") if not self._models else ""
            return
        names = ", ".join(model.landmarks[:12]) + (" ..." if len(model.landmarks) > 12 else "")
        self.ui.modelInfoLabel.text = f"{model.description}\n{names}".strip()

    # ------------------------------------------------------------------ running

    def onLocalizeButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        # everything the result depends on is bound now: selectors changed during the run do not move it
        p = self._parameterNode
        volume, model, device, evidence = p.inputVolume, self.currentModel(), p.device, p.showEvidence
        threshold = p.uncertainBelow
        self.startJob("localize", lambda: self.logic.startLocalize(volume, model, device, evidence),
                      lambda result: self.showLocalization(result, volume, model, threshold))

    def onRefineButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        from LandmarkLocalizerLib.logic import refine_volume

        p = self._parameterNode
        model, points, device = self.currentModel(), p.outputPoints, p.device
        volume = refine_volume(points, p.inputVolume)
        row, threshold = self.ui.resultsTable.currentRow(), p.uncertainBelow
        pointId = points.GetNthControlPointID(row) if points and 0 <= row < points.GetNumberOfControlPoints() else ""
        self.startJob("refine", lambda: self.logic.startRefine(volume, model, points, row, device),
                      lambda result: self.showRefinement(result, points, pointId, volume, threshold))

    def showLocalization(self, result: dict, volume, model, uncertainBelow: float) -> None:
        """The result as a new point list (and evidence map) of the volume and model the job started with."""
        p = self._parameterNode
        outcome = self.logic.applyLocalization(result, volume, model, uncertainBelow)
        if p is not None:
            p.outputPoints = outcome.points_node
            if outcome.evidence_node is not None:
                p.evidenceVolume = outcome.evidence_node
        if outcome.evidence_node is not None:
            slicer.util.setSliceViewerLayers(foreground=outcome.evidence_node, foregroundOpacity=0.4)
        found = _("Found {n} landmarks.").format(n=outcome.points_node.GetNumberOfControlPoints())
        missing = ", ".join(outcome.not_found)
        self.ui.statusLabel.text = found + (" " + _("Not found: {names}.").format(names=missing) if missing else "")
        self.updateResultsTable()

    def showRefinement(self, result: dict, points, pointId: str, volume, uncertainBelow: float) -> None:
        """Move the point the job started from (in the point list chosen then)."""
        self.logic.applyRefinement(points, pointId, result, volume, uncertainBelow)
        label = points.GetNthControlPointLabel(points.GetNthControlPointIndexByID(pointId))
        self.ui.statusLabel.text = _("Refined {label}.").format(label=label)
        self.updateResultsTable()

    # ------------------------------------------------------------------ results

    def onOutputPointsChanged(self, node) -> None:
        if self._observedPoints is not None:
            for event in POINT_LIST_EVENTS:
                self.removeObserver(self._observedPoints, event, self.updateResultsTable)
        self._observedPoints = node
        if node is not None:
            for event in POINT_LIST_EVENTS:
                self.addObserver(node, event, self.updateResultsTable)
        self.updateResultsTable()

    def onUncertainBelowChanged(self, value: float) -> None:
        """Points now below the threshold turn amber (unselected) in the views, and in the table."""
        from LandmarkLocalizerLib.mrml import apply_uncertain_below

        node = self._parameterNode.outputPoints if self._parameterNode else None
        if node is not None:
            apply_uncertain_below(node, value)
        self.updateResultsTable()

    def updateResultsTable(self, caller=None, event=None) -> None:
        from LandmarkLocalizerLib.logic import DEVICE_ATTRIBUTE
        from LandmarkLocalizerLib.mrml import result_rows

        table = self.ui.resultsTable
        node = self._parameterNode.outputPoints if self._parameterNode else None
        rows = result_rows(node) if node else []
        device = node.GetAttribute(DEVICE_ATTRIBUTE) if node else None
        self.ui.resultsCollapsibleButton.text = _("Results (found on {device})").format(device=device) if device \
            else _("Results")
        current = table.currentRow()
        table.setRowCount(len(rows))
        amber = qt.QColor(230, 159, 0, 90)  # the views' colour of uncertain points (mrml.UNCERTAIN_COLOR)
        for r, row in enumerate(rows):
            for c, text in enumerate((row.label, row.position_text, row.confidence_text)):
                item = qt.QTableWidgetItem(text)
                if row.uncertain:
                    item.setBackground(qt.QBrush(amber))
                    item.setToolTip(_("Uncertain: check this landmark"))
                table.setItem(r, c, item)
        if 0 <= current < len(rows):
            table.selectRow(current)

    def onResultClicked(self, row: int, column: int) -> None:
        node = self._parameterNode.outputPoints if self._parameterNode else None
        if node is None or row >= node.GetNumberOfControlPoints():
            return
        slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(node.GetID(), row, True)

    def onExportButton(self) -> None:
        node = self._parameterNode.outputPoints
        path = qt.QFileDialog.getSaveFileName(
            self.parent, _("Export landmarks"), os.path.join(qt.QDir.homePath(), node.GetName() + ".mrk.json"),
            _("Markups JSON, LPS (*.mrk.json);;Fiducial CSV (*.fcsv);;CSV table (*.csv)"))
        if path:
            self.exportTo(path)

    def exportTo(self, path: str) -> bool:
        from landmarkloc.errors import LandmarkLocError

        try:
            self.logic.exportPoints(self._parameterNode.outputPoints, path)
        except LandmarkLocError as exc:
            slicer.util.errorDisplay(str(exc))
            return False
        self.ui.statusLabel.text = _("Exported to {path}").format(path=path)
        return True


class LandmarkLocalizerLogic(ScriptedLoadableModuleLogic):
    """Thin wrapper over ``LandmarkLocalizerLib.logic`` for the widget and for scripts (Slicer's Python console)."""

    def getParameterNode(self):
        return LandmarkLocalizerParameterNode(super().getParameterNode())

    def startLocalize(self, volumeNode, model, device="Auto", evidence=False):
        from LandmarkLocalizerLib import logic

        return logic.start_localize(volumeNode, model, device, evidence)

    def applyLocalization(self, result, volumeNode, model, uncertainBelow=0.5):
        from LandmarkLocalizerLib import logic

        return logic.apply_localization(slicer.mrmlScene, result, volumeNode, model, uncertainBelow)

    def startRefine(self, volumeNode, model, pointsNode, index, device="Auto"):
        from LandmarkLocalizerLib import logic

        return logic.start_refine(volumeNode, model, pointsNode, index, device)

    def startDownload(self, released):
        from LandmarkLocalizerLib import logic

        return logic.start_download(released)

    def applyRefinement(self, pointsNode, pointId, result, volumeNode, uncertainBelow=0.5):
        from LandmarkLocalizerLib import logic

        logic.apply_refinement(pointsNode, pointId, result, volumeNode, uncertainBelow)

    def exportPoints(self, pointsNode, path):
        from LandmarkLocalizerLib import mrml

        mrml.export_points(pointsNode, path)

    def localize(self, volumeNode, modelPath, device="Auto", evidence=False, uncertainBelow=0.5):
        """Run a localization and wait for it (scripts and tests; the GUI does not block like this)."""
        from LandmarkLocalizerLib.models import inspect_model

        from landmarkloc.errors import LandmarkLocError

        model = inspect_model(modelPath, "fcn")
        job = self.startLocalize(volumeNode, model, device, evidence)
        try:
            event = job.wait()
            if event.kind != "done":
                raise LandmarkLocError(event.error or event.kind)
            return self.applyLocalization(event.result, volumeNode, model, uncertainBelow)
        finally:
            job.cleanup()


class LandmarkLocalizerTest(ScriptedLoadableModuleTest):
    """The whole workflow on a generated volume with a tiny untrained model (needs PyTorch in Slicer)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from LandmarkLocalizerLib.selftest import packages_the_self_test_lacks, skip_message

        missing = packages_the_self_test_lacks(slicer.app.testingEnabled(), slicer.util.confirmOkCancelDisplay)
        if missing:
            self.delayDisplay(skip_message(missing))
            return
        self.setUp()
        self.test_localize_refine_export()
        self.setUp()
        self.test_bad_input_changes_nothing()
        self.setUp()
        self.test_widget_click_through()

    def _volume(self, name="generated"):
        import numpy as np
        from LandmarkLocalizerLib.selftest import blob_volume

        node = slicer.util.addVolumeFromArray(blob_volume(), name=name)
        node.SetSpacing(1.6, 1.5, 1.8)
        node.SetOrigin(-20.0, 15.0, -30.0)
        # an oblique, flipped volume under a rotating parent transform: world coordinates must still be right
        directions = vtk.vtkMatrix4x4()
        rotation = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
        for r in range(3):
            for c in range(3):
                directions.SetElement(r, c, rotation[r, c])
        node.SetIJKToRASDirectionMatrix(directions)
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 12.0)
        transform.SetMatrixTransformToParent(matrix)
        node.SetAndObserveTransformNodeID(transform.GetID())
        return node

    def _model(self):
        from LandmarkLocalizerLib.selftest import make_tiny_fcn_model

        return make_tiny_fcn_model(os.path.join(slicer.app.temporaryPath, "LandmarkLocalizerSelfTest", "tiny"))

    def test_localize_refine_export(self):
        from LandmarkLocalizerLib import mrml
        from LandmarkLocalizerLib.models import inspect_model
        from LandmarkLocalizerLib.selftest import TINY_LANDMARKS

        volume = self._volume()
        modelPath = self._model()
        logic = LandmarkLocalizerLogic()
        self.delayDisplay("Localizing")
        outcome = logic.localize(volume, modelPath, "CPU", evidence=True)
        points = outcome.points_node
        self.assertEqual(points.GetName(), "generated tiny-test")
        self.assertEqual([points.GetNthControlPointLabel(i) for i in range(points.GetNumberOfControlPoints())],
                         list(TINY_LANDMARKS))
        geometry = mrml.volume_geometry(volume)
        for point in mrml.points_from_node(points):
            self.assertTrue(geometry.contains(point.position[None], margin=8.0)[0])
            self.assertIn("confidence", point.properties)
        self.assertIsNotNone(outcome.evidence_node)

        self.delayDisplay("Refining a moved point")
        position = [0.0, 0.0, 0.0]
        points.GetNthControlPointPositionWorld(0, position)
        points.SetNthControlPointPositionWorld(0, position[0] + 4.0, position[1] - 3.0, position[2] + 2.0)
        job = logic.startRefine(volume, inspect_model(modelPath, "fcn"), points, 0, "CPU")
        event = job.wait()
        self.assertEqual(event.kind, "done", event.error)
        logic.applyRefinement(points, points.GetNthControlPointID(0), event.result, volume)
        job.cleanup()

        self.delayDisplay("Exporting")
        for suffix in (".mrk.json", ".fcsv", ".csv"):
            path = os.path.join(slicer.app.temporaryPath, "LandmarkLocalizerSelfTest", "points" + suffix)
            logic.exportPoints(points, path)
            self.assertTrue(os.path.getsize(path) > 0)
        loaded = slicer.util.loadMarkups(os.path.join(slicer.app.temporaryPath, "LandmarkLocalizerSelfTest",
                                                      "points.mrk.json"))
        for i in range(points.GetNumberOfControlPoints()):
            original, reread = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
            points.GetNthControlPointPositionWorld(i, original)
            loaded.GetNthControlPointPositionWorld(i, reread)
            for a, b in zip(original, reread):
                self.assertAlmostEqual(a, b, places=3)
        self.delayDisplay("Test passed")

    def test_bad_input_changes_nothing(self):
        from LandmarkLocalizerLib.models import ModelInfo

        from landmarkloc.errors import InputError

        volume = self._volume()
        before = slicer.mrmlScene.GetNumberOfNodes()
        logic = LandmarkLocalizerLogic()
        model2d = ModelInfo(path="unused.json", name="2D", kind="fcn", ndim=2)
        with self.assertRaises(InputError):
            logic.startLocalize(None, model2d)
        with self.assertRaises(InputError):
            logic.startLocalize(volume, model2d)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Bad input refused")

    def test_widget_click_through(self):
        """Localize, move a point, Refine selected, Export: through the module's widget, as a user clicks."""
        from LandmarkLocalizerLib.selftest import click_through_localizer, process_events_until_idle

        volume = self._volume("clicked")
        modelPath = self._model()
        slicer.util.selectModule("LandmarkLocalizer")
        widget = slicer.modules.landmarklocalizer.widgetRepresentation().self()
        self.delayDisplay("Clicking Localize, Refine selected and Export")
        points = click_through_localizer(widget, volume, modelPath,
                                         os.path.join(slicer.app.temporaryPath, "LandmarkLocalizerSelfTest", "ui"),
                                         process_events_until_idle)
        self.assertEqual(points.GetName(), "clicked tiny-test")
        self.delayDisplay("Test passed")
