"""Extension packaging: CMake lists every shipped file, icons, ExtensionsIndex entry, and the
agreement between the .ui, the parameter node and the Widget. Needs neither Slicer nor torch."""

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "SlicerLabelReg"
MODULE_FILE = MODULE / "LabelReg.py"
UI_FILE = MODULE / "Resources" / "UI" / "LabelReg.ui"
# the bundled model is exported by the training tools; a build without it warns
OPTIONAL_FILES = {"labelreg/bundled/model/labelreg_mrus.pt", "labelreg/bundled/model/labelreg_mrus.json"}
SCHEMA_KEYS = {
    "$schema",
    "category",
    "scm_url",
    "scm_revision",
    "scm_type",
    "build_dependencies",
    "dicom_support_rule",
    "build_subdirectory",
    "enabled",
    "tier",
}  # catalog entry schema v1.0.2


def cmake_sets(path: Path) -> dict:
    """``set(NAME values...)`` blocks of a CMakeLists.txt, with ${MODULE_NAME} substituted."""
    text = re.sub(r"#.*", "", path.read_text())
    values = {}
    for name, body in re.findall(r"set\(\s*(\w+)\s+(.*?)\)", text, flags=re.DOTALL):
        values[name] = re.findall(r'"[^"]*"|\S+', body)
    module_name = values.get("MODULE_NAME", [""])[0]
    return {k: [v.replace("${MODULE_NAME}", module_name).strip('"') for v in vs] for k, vs in values.items()}


def shipped_files() -> set:
    files = set()
    for path in MODULE.rglob("*"):
        relative = path.relative_to(MODULE)
        if path.is_dir() or "__pycache__" in relative.parts or relative.parts[0] == "Testing":
            continue
        if path.suffix == ".pyc" or relative.as_posix() == "CMakeLists.txt":
            continue
        files.add(relative.as_posix())
    return files


def test_every_module_file_is_listed_in_cmake():
    sets = cmake_sets(MODULE / "CMakeLists.txt")
    listed = set(sets["MODULE_PYTHON_SCRIPTS"] + sets["MODULE_PYTHON_RESOURCES"] + sets["MODULE_MODEL_FILES"])
    missing = sorted(shipped_files() - listed)
    assert not missing, f"add these files to SlicerLabelReg/CMakeLists.txt: {missing}"
    absent = sorted(f for f in listed - OPTIONAL_FILES if not (MODULE / f).is_file())
    assert not absent, f"SlicerLabelReg/CMakeLists.txt lists files that do not exist: {absent}"
    assert all(f.endswith(".py") for f in sets["MODULE_PYTHON_SCRIPTS"])
    assert "slicerMacroBuildScriptedModule" in (MODULE / "CMakeLists.txt").read_text()


def png_size(path: Path) -> tuple:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("icon", ["LabelReg.png", "SlicerLabelReg/Resources/Icons/LabelReg.png"])
def test_icons_are_128_pixel_pngs(icon):
    assert png_size(REPO / icon) == (128, 128)


def test_extension_metadata():
    sets = cmake_sets(REPO / "CMakeLists.txt")
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert sets.get(key) and all(sets[key]), f"top-level CMakeLists.txt needs {key}"
    assert sets["EXTENSION_DEPENDS"] == ["PyTorch"]
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert all(url.startswith("https://") for url in sets[key])
    assert sets["EXTENSION_ICONURL"][0].endswith("/LabelReg.png")
    assert sets["EXTENSION_SCREENSHOTURLS"][0].endswith("/docs/sample-overlay.png")
    assert png_size(REPO / "docs" / "sample-overlay.png")[0] > 200
    assert "add_subdirectory(SlicerLabelReg)" in (REPO / "CMakeLists.txt").read_text()

    entry = json.loads((REPO / "LabelReg.json").read_text())  # the index's checks: test_extensions_index.py
    assert {"$schema", "category", "scm_url"} <= entry.keys() <= SCHEMA_KEYS
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["category"] == sets["EXTENSION_CATEGORY"][0]
    assert entry["scm_url"] == sets["EXTENSION_HOMEPAGE"][0]
    assert "PyTorch" in entry.get("build_dependencies", [])
    assert 1 <= entry.get("tier", 1) <= 5


def module_source():
    return ast.parse(MODULE_FILE.read_text())


def test_module_classes_and_lazy_torch():
    tree = module_source()
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"LabelReg", "LabelRegParameterNode", "LabelRegWidget", "LabelRegLogic", "LabelRegTest"} <= classes
    lib = MODULE / "LabelRegLib"
    for path in (MODULE_FILE, *(lib / f"{name}.py" for name in ("worker", "process", "dependencies", "sampledata"))):
        for node in ast.parse(path.read_text()).body:  # module level only: Slicer must load without torch
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(
                n.split(".")[0] == "torch" or n in ("labelreg.engine", "LabelRegLib.nodes") for n in names
            ), f"{path.name} imports {names} at module level"


def test_library_and_worker_process_never_import_slicer():
    worker_side = [MODULE / "LabelRegLib" / f"{name}.py" for name in ("registration_worker", "inference", "transfer")]
    for path in [*(MODULE / "labelreg").glob("*.py"), *worker_side]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("slicer", "qt", "vtk") for n in names), (
                    f"{path.name} imports {names}"
                )


def test_ui_matches_parameter_node_and_widget():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    bound = {
        w.get("name"): p.find("string").text
        for w in root.iter("widget")
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    tree = module_source()
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LabelRegParameterNode")
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert set(bound.values()) <= fields, f"unknown parameters in the .ui: {set(bound.values()) - fields}"
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used <= widgets.keys(), f"widgets missing from the .ui: {used - widgets.keys()}"
    from labelreg.choices import DEVICES, USER_MODES  # what the module offers (torch-free)

    for combo, choices in (("modeComboBox", USER_MODES), ("deviceComboBox", DEVICES)):
        items = [i.find("property/string").text for i in widgets[combo].findall("item")]
        assert items == list(choices)
    receivers = {c.find("receiver").text for c in root.iter("connection")}
    selectors = {name for name, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert selectors <= receivers, f"node selectors without setMRMLScene: {selectors - receivers}"


def test_panel_renders_with_qt(tmp_path):
    """The .ui loads in Qt (custom Slicer widgets replaced) and renders the README picture."""
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6 is not installed (pip install pyside6-essentials)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_panel", REPO / "docs" / "render_panel.py")
    render_panel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_panel)
    width, height = png_size(render_panel.render(tmp_path / "panel.png"))
    assert width == 460 and height > 400
