"""Stand-ins for the parts of Slicer that ``slicer-core`` lacks (Qt, the scripted-module base classes, the
parameter-node wrapper, translation), so that tests can import the real module files and drive their widgets'
code with real MRML, real worker processes and fake Qt widgets.

Only what the module files touch is imported or faked; a missing attribute fails the test loudly.
"""

from __future__ import annotations

import importlib
import sys
import types
import typing
import xml.etree.ElementTree as ET
from types import SimpleNamespace

from mrml_testing import REPO  # noqa: F401  (puts the module folders on sys.path)


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, *args):
        self.slots.append(args[-1])


class QTimer:
    def __init__(self):
        self.active = False
        self.interval = 0

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class Widget(SimpleNamespace):
    """Any .ui widget: attributes as properties, ``connect`` recorded."""

    def connect(self, signal, slot):
        self.__dict__.setdefault("connections", []).append((signal, slot))


class NodeComboBox(Widget):
    """A ``qMRMLNodeComboBox`` as its .ui file sets it up, offering nodes as its ``qMRMLSortFilterProxyModel`` does:
    a node of exactly one of ``nodeTypes``, or of a subclass when ``showChildNodeTypes`` is on; never a node hidden
    from editors."""

    def __init__(self, nodeTypes=(), showChildNodeTypes=True, parameterName=None):
        super().__init__(nodeTypes=tuple(nodeTypes), showChildNodeTypes=showChildNodeTypes,
                         parameterName=parameterName)

    def offered(self, scene) -> list:
        nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        return [node for node in nodes if not node.GetHideFromEditors() and any(
            node.GetClassName() == name or (self.showChildNodeTypes and node.IsA(name)) for name in self.nodeTypes)]


def node_selectors(ui_path) -> dict:
    """name -> NodeComboBox for every ``qMRMLNodeComboBox`` of a .ui file, with the node types it sets."""
    selectors = {}
    for widget in ET.parse(ui_path).iter("widget"):
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        properties = {prop.get("name"): prop for prop in widget.findall("property")}
        node_types = [item.text for item in properties["nodeTypes"].iter("string")] if "nodeTypes" in properties \
            else []
        show_children = properties["showChildNodeTypes"].find("bool").text == "true" \
            if "showChildNodeTypes" in properties else True
        parameter = properties["SlicerParameterName"].find("string").text if "SlicerParameterName" in properties \
            else None
        selectors[widget.get("name")] = NodeComboBox(node_types, show_children, parameter)
    return selectors


def wrapper_node_types(annotation) -> tuple:
    """The node class names Slicer's parameter-node wrapper gives a node selector for a field's type hint: the
    node class itself, or each node class of a Union (None left out); Annotated extras are ignored."""
    import slicer

    hint = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    members = typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,)
    names = tuple(member().GetClassName() for member in members
                  if isinstance(member, type) and issubclass(member, slicer.vtkMRMLNode))
    if not names:
        raise TypeError(f"{annotation} is not a node type or a Union of node types")
    return names


def connect_node_selectors(parameter_class, selectors: dict) -> None:
    """What ``connectGui`` does to node selectors: their node types become those of the bound field's type hint,
    replacing what the .ui file listed."""
    hints = typing.get_type_hints(parameter_class, include_extras=True)
    for selector in selectors.values():
        if selector.parameterName is not None:
            selector.nodeTypes = wrapper_node_types(hints[selector.parameterName])


class Combo(Widget):
    def __init__(self):
        super().__init__(items=[], current=-1, enabled=True)

    def clear(self):
        self.items = []

    def addItem(self, text, data=""):
        self.items.append((text, data))

    def insertItem(self, index, text, data=""):
        self.items.insert(index, (text, data))

    def setCurrentIndex(self, index):
        self.current = index

    def itemText(self, index):
        return self.items[index][0]

    def itemData(self, index):
        return self.items[index][1]

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)


class Table(Widget):
    def __init__(self):
        super().__init__(rows=0, row=-1, cells={})

    def currentRow(self):
        return self.row

    def setRowCount(self, n):
        self.rows = n

    def setItem(self, r, c, item):
        self.cells[(r, c)] = item

    def selectRow(self, r):
        self.row = r


class PlainTextEdit(Widget):
    """A read-only QPlainTextEdit (the log panel): the lines appended since the last clear."""

    def __init__(self):
        super().__init__(lines=[])

    def clear(self):
        self.lines = []

    def appendPlainText(self, text):
        self.lines.append(text)


class Item(SimpleNamespace):
    def __init__(self, text=""):
        super().__init__(text=text)

    def setBackground(self, brush):
        self.background = brush

    def setToolTip(self, text):
        self.tooltip = text


def fake_qt():
    return SimpleNamespace(QTimer=QTimer, QColor=lambda *a: a, QBrush=lambda c: c, QTableWidgetItem=Item,
                           QFileDialog=SimpleNamespace(), QDir=SimpleNamespace(homePath=lambda: "/tmp"))


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    pass


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message, msec=None):
        self.__dict__.setdefault("displayed", []).append(message)


def parameterNodeWrapper(cls):
    return cls


def install(monkeypatch) -> None:
    """Make ``import LandmarkLocalizer`` / ``import RPROneShot`` work in this process (undone after the test)."""
    import slicer

    monkeypatch.setitem(sys.modules, "qt", fake_qt())
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    monkeypatch.setitem(sys.modules, "slicer.i18n", i18n)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = parameterNodeWrapper
    wrapper.Choice = wrapper.WithinRange = lambda *a: None
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    base = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    for name in ("LandmarkLocalizer", "RPROneShot"):  # imported afresh over the stand-ins, once per test
        if name in sys.modules and not getattr(sys.modules[name], "_over_stand_ins", False):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None, raising=False)


def dialogs(monkeypatch, on_dialog=None) -> list:
    """Record error/warning dialogs (and run ``on_dialog`` inside them, as a modal event loop would)."""
    import slicer

    shown = []

    def display(kind):
        def show(text, *args, **kwargs):
            shown.append((kind, text))
            if on_dialog is not None:
                on_dialog()
        return show

    monkeypatch.setattr(slicer.util, "errorDisplay", display("error"))
    monkeypatch.setattr(slicer.util, "warningDisplay", display("warning"))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: True)
    return shown


def localizer_widget(monkeypatch, parameters: dict):
    """A LandmarkLocalizerWidget with fake Qt widgets and a plain parameter object (no setup(), no .ui)."""
    install(monkeypatch)
    module = importlib.import_module("LandmarkLocalizer")
    module._over_stand_ins = True
    widget = module.LandmarkLocalizerWidget()
    widget.ui = SimpleNamespace(
        progressBar=Widget(value=0), statusLabel=Widget(text=""), localizeButton=Widget(), refineButton=Widget(),
        exportButton=Widget(), resultsTable=Table(), uncertainSliderWidget=Widget(value=0.5),
        modelComboBox=Combo(), modelInfoLabel=Widget(text=""), logTextEdit=PlainTextEdit(),
        resultsCollapsibleButton=Widget(text="Results"))
    widget.timer = QTimer()
    widget.logic = module.LandmarkLocalizerLogic()
    widget._parameterNode = SimpleNamespace(**{"inputVolume": None, "modelPath": "", "device": "CPU",
                                               "uncertainBelow": 0.5, "showEvidence": False, "outputPoints": None,
                                               "evidenceVolume": None, **parameters})
    return module, widget


def one_shot_widget(monkeypatch, parameters: dict, models: list):
    """An RPROneShotWidget with fake Qt widgets, a plain parameter object and the given model list."""
    install(monkeypatch)
    module = importlib.import_module("RPROneShot")
    module._over_stand_ins = True
    widget = module.RPROneShotWidget()
    widget.ui = SimpleNamespace(
        progressBar=Widget(value=0), statusLabel=Widget(text=""), findButton=Widget(), saveTemplateButton=Widget(),
        loadTemplateButton=Widget(), clearTemplateButton=Widget(), exportButton=Widget(), modelComboBox=Combo(),
        fineModelComboBox=Combo(), runsSpinBox=Widget(), stepsSpinBox=Widget(), templateLabel=Widget(text=""),
        logTextEdit=PlainTextEdit())
    widget.timer = QTimer()
    widget.logic = module.RPROneShotLogic()
    widget.logic.getParameterNode = lambda: widget._parameterNode
    widget._models = list(models)
    widget._parameterNode = SimpleNamespace(**{
        "supportVolume": None, "supportPoints": None, "supportLabels": None, "templatePath": "", "queryVolume": None,
        "method": "rpr", "modelPath": "", "fineModelPath": "", "runs": 3, "steps": 1, "device": "CPU",
        "outputPoints": None, **parameters})
    widget.setParameterNode = lambda node: None
    return module, widget
