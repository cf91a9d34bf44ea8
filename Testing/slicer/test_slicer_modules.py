"""Static checks of the Slicer modules (no Slicer needed): Python parses, the .ui files are
well-formed and name every widget the code uses, the parameter nodes match the .ui bindings,
and every module file is listed in its CMakeLists."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from repo_paths import REPO  # noqa: E402
MODULES = ("RADASegmentation", "RADATrainer")


def _python_files(module: str) -> list[Path]:
    return sorted(p for p in (REPO / module).rglob("*.py") if "Testing" not in p.parts)


@pytest.mark.parametrize("module", MODULES)
def test_every_python_file_parses(module):
    files = list((REPO / module).rglob("*.py"))
    assert len(files) >= 4
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _ui_widgets(module: str) -> tuple[dict[str, str], dict[str, str]]:
    """(widget name -> class, widget name -> SlicerParameterName) of the module's .ui."""
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    widgets, bindings = {}, {}
    for widget in root.iter("widget"):
        widgets[widget.get("name")] = widget.get("class")
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.find("string").text
    return widgets, bindings


def _parameter_fields(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_every_widget_the_code_uses(module):
    widgets, bindings = _ui_widgets(module)
    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", source))
    assert used, "the module uses no .ui widget?"
    missing = sorted(used - set(widgets))
    assert not missing, f"{module}.py uses widgets the .ui does not have: {missing}"
    # Every SlicerParameterName is a field of the parameter node, and each field is bound at most once.
    fields = _parameter_fields(ast.parse(source))
    unknown = sorted(set(bindings.values()) - fields)
    assert not unknown, f"SlicerParameterName values with no parameter node field: {unknown}"
    assert len(set(bindings.values())) == len(bindings)
    # The wrapper's connectors need exact widget classes for these types.
    for widget, name in bindings.items():
        assert widgets[widget] in {"qMRMLNodeComboBox", "QComboBox", "QLineEdit", "QCheckBox", "QSpinBox",
                                   "QDoubleSpinBox", "ctkSliderWidget"}, (widget, widgets[widget])


def test_segmentation_ui_has_the_required_controls():
    widgets, bindings = _ui_widgets("RADASegmentation")
    for name in ("inputVolumeSelector", "paintedSegmentSelector", "outputSegmentationSelector",
                 "modelComboBox", "checkpointPathLineEdit", "presetComboBox", "deviceComboBox",
                 "serverModeComboBox", "serverURLLineEdit", "serverTokenLineEdit", "segmentButton",
                 "cancelButton", "progressBar", "stageLabel", "statusLabel"):
        assert name in widgets, name
    assert widgets["paintedSegmentSelector"] == "qMRMLSegmentSelectorWidget"
    # The token is never saved in the scene.
    assert "serverTokenLineEdit" not in bindings
    source = (REPO / "RADASegmentation" / "RADASegmentation.py").read_text(encoding="utf-8")
    assert "token" not in " ".join(_parameter_fields(ast.parse(source))).lower()


def _cmake_list(module: str, variable: str) -> set[str]:
    text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL).group(1)
    return {line.strip().replace("${MODULE_NAME}", module) for line in block.split() if line.strip()}


@pytest.mark.parametrize("module", MODULES)
def test_every_module_file_is_listed_in_cmake(module):
    scripts = _cmake_list(module, "MODULE_PYTHON_SCRIPTS")
    files = {p.relative_to(REPO / module).as_posix() for p in _python_files(module)}
    assert scripts == files, f"CMake SCRIPTS vs files: missing {sorted(files - scripts)}, extra {sorted(scripts - files)}"
    resources = _cmake_list(module, "MODULE_PYTHON_RESOURCES")
    on_disk = {p.relative_to(REPO / module).as_posix() for p in (REPO / module / "Resources").rglob("*")
               if p.is_file()}
    assert resources == on_disk, f"RESOURCES vs files: {sorted(on_disk ^ resources)}"
    text = (REPO / module / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    testing = REPO / module / "Testing" / "Python"
    for test in testing.glob("*.py"):
        assert f"SCRIPT {test.name}" in (testing / "CMakeLists.txt").read_text(encoding="utf-8")


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({key} ", text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text and 'set(EXTENSION_DEPENDS "PyTorch")' in text
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    assert (REPO / "Resources" / "Icons" / "RADA.png").read_bytes().startswith(b"\x89PNG")
    for module in MODULES:
        assert (REPO / module / "Resources" / "Icons" / f"{module}.png").read_bytes().startswith(b"\x89PNG")


def test_requirements_never_touch_what_slicer_ships():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "rada_slicer_deps", REPO / "RADASegmentation" / "RADASegmentationLib" / "dependencies.py")
    deps = importlib.util.module_from_spec(spec)
    sys.modules["rada_slicer_deps"] = deps
    spec.loader.exec_module(deps)
    files, _constraints = deps.requirement_files(REPO / "RADASegmentation" / "Resources" / "Python")
    reqs = [r for path in files for r in deps.read_requirements(path)]
    names = {deps._canonical(deps.requirement_name(r)) for r in reqs}
    shipped = {deps._canonical(n) for n in deps.SHIPPED}
    assert not names & shipped, names & shipped  # torch, numpy, SimpleITK, ... are not requirements
    assert {"httpx", "slicerio", "antspyx", "fastapi", "uvicorn"} <= names
    assert deps.to_install(["numpy>=0", "torch>=99"]) == []  # shipped packages are never installed
    assert deps.to_install(["surely-not-installed-package-xyz>=1"]) == ["surely-not-installed-package-xyz>=1"]
