"""The Slicer module files against their .ui files and CMake lists (they cannot be imported without Slicer's GUI):
every widget the code uses exists, every button is connected, parameter names match, the Libs stay Qt-free."""

import ast
import re
import xml.etree.ElementTree as ET

import pytest
from mrml_testing import REPO

MODULES = ["LandmarkLocalizer", "RPROneShot"]


def ui_widgets(module: str) -> dict:
    """name -> (class, SlicerParameterName or None) of every widget in the module's .ui file."""
    tree = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")
    out = {}
    for widget in tree.iter("widget"):
        param = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.find("string").text
        out[widget.get("name")] = (widget.get("class"), param)
    return out


def module_source(module: str) -> str:
    return (REPO / module / f"{module}.py").read_text(encoding="utf-8")


def ui_names_used(source: str) -> set:
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            names.add(node.attr)
    return names


def parameter_fields(source: str, module: str) -> set:
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


@pytest.mark.parametrize("module", MODULES)
def test_every_widget_used_in_code_exists_in_the_ui(module):
    widgets = ui_widgets(module)
    used = ui_names_used(module_source(module))
    assert used, "the widget uses no ui widgets?"
    missing = used - set(widgets)
    assert not missing, f"{module}.py uses widgets not in {module}.ui: {sorted(missing)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_button_is_connected(module):
    source = module_source(module)
    buttons = [name for name, (cls, _) in ui_widgets(module).items() if cls == "QPushButton"]
    assert buttons
    for name in buttons:
        assert re.search(rf"self\.ui\.{name}\.connect\(\"clicked\(bool\)\", self\.on\w+\)", source), \
            f"{name} is not connected"
        handler = re.search(rf"self\.ui\.{name}\.connect\(\"clicked\(bool\)\", self\.(on\w+)\)", source).group(1)
        assert f"def {handler}(self" in source, f"{name} is connected to a missing handler {handler}"


@pytest.mark.parametrize("module", MODULES)
def test_every_connected_slot_is_defined(module):
    """Signals (buttons, the poll timer, ...) go to methods of the widget or of the shared job mixin."""
    source = module_source(module)
    mixin = (REPO / "LandmarkLocalizer" / "LandmarkLocalizerLib" / "jobwidget.py").read_text()
    slots = set(re.findall(r"\.connect\(\"[^\"]+\", self\.(\w+)\)", source))
    assert "onPoll" in slots
    for slot in slots:
        assert f"def {slot}(self" in source or f"def {slot}(self" in mixin, f"{slot} is connected but not defined"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_in_the_ui_are_fields_of_the_parameter_node(module):
    fields = parameter_fields(module_source(module), module)
    bound = {param for _, param in ui_widgets(module).values() if param}
    assert bound
    assert bound <= fields, f"unknown parameters in {module}.ui: {sorted(bound - fields)}"


@pytest.mark.parametrize("module", MODULES)
def test_module_has_the_scripted_module_classes(module):
    tree = ast.parse(module_source(module))
    classes = {n.name: [getattr(b, "id", None) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes[module]
    assert "ScriptedLoadableModuleWidget" in classes[f"{module}Widget"]
    assert "ScriptedLoadableModuleLogic" in classes[f"{module}Logic"]
    assert "ScriptedLoadableModuleTest" in classes[f"{module}Test"]


@pytest.mark.parametrize("module", MODULES)
def test_cmake_lists_every_lib_file_and_resource(module):
    cmake = (REPO / module / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"\$\{MODULE_NAME\}Lib/(\w+\.py)", cmake))
    present = {p.name for p in (REPO / module / f"{module}Lib").glob("*.py")}
    assert listed == present
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake
    for resource in (f"Resources/Icons/{module}.png", f"Resources/UI/{module}.ui"):
        assert (REPO / module / resource).is_file()
        assert resource.replace(module, "${MODULE_NAME}") in cmake
    for listed_resource in re.findall(r"^\s+(Resources/\S+)$", cmake, flags=re.M):
        assert (REPO / module / listed_resource.replace("${MODULE_NAME}", module)).is_file(), listed_resource


def test_extension_cmake_has_metadata_and_modules():
    cmake = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", cmake), key
    for module in MODULES:
        assert f"add_subdirectory({module})" in cmake
    assert "landmarkloc/*.py" in cmake and "models/*.json" in cmake


@pytest.mark.parametrize("module", MODULES)
def test_lib_is_qt_free_and_imports_mrml_lazily(module):
    for path in (REPO / module / f"{module}Lib").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("qt", "ctk", "PythonQt") for n in names), path.name
        for node in tree.body:  # module level: no slicer/vtk (they are imported inside functions)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("slicer", "vtk") for n in names), path.name


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_follows_slicers_template(module):
    """Category translated in Slicer's core-module context, "Name (Organization)" contributors, help with a link."""
    tree = ast.parse(module_source(module))
    init = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == module
                for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    text = ast.unparse(init)
    assert "self.parent.categories = [translate('qSlicerAbstractCoreModule', 'Landmark Localization')]" in text
    contributors = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CONTRIBUTORS")
    for name in ast.literal_eval(contributors):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", name), name
    assert "DOCS_URL" in text and "<a href=" in text
    docs_url = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and n.targets[0].id == "DOCS_URL")
    assert docs_url.endswith("docs/slicer.md") and (REPO / "docs" / "slicer.md").is_file()


def test_extension_icon_is_in_the_top_level_resources():
    cmake = (REPO / "CMakeLists.txt").read_text()
    icon_url = re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', cmake).group(1)
    assert icon_url.endswith("/main/Resources/LandmarkLoc.png")
    assert (REPO / "Resources" / "LandmarkLoc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', cmake).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", c.strip()) for c in contributors.split(","))


@pytest.mark.parametrize("module, selectors", [("LandmarkLocalizer", ["inputVolumeSelector"]),
                                               ("RPROneShot", ["supportVolumeSelector", "queryVolumeSelector"])])
def test_image_selectors_offer_grey_volumes_and_pictures_but_not_label_maps(module, selectors):
    tree = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui")
    for widget in tree.iter("widget"):
        if widget.get("name") not in selectors:
            continue
        props = {p.get("name"): p for p in widget.findall("property")}
        types = [s.text for s in props["nodeTypes"].iter("string")]
        assert types == ["vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"]
        assert props["showChildNodeTypes"].find("bool").text == "false"  # no label maps
        selectors = [s for s in selectors if s != widget.get("name")]
    assert selectors == []
