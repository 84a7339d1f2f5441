"""Static checks of the Slicer extension: .ui, widget names, CMake lists, metadata, icon, Qt-free logic.

These need neither Slicer nor slicer-core.
"""

import ast
import json
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "NeARSlicer"
MODULE_PY = MODULE_DIR / "NeARSlicer.py"
UI_PATH = MODULE_DIR / "Resources" / "UI" / "NeARSlicer.ui"


def _ui_widgets():
    root = ET.parse(UI_PATH).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _module_ast():
    return ast.parse(MODULE_PY.read_text())


def test_ui_parses_and_is_a_qmrmlwidget():
    root = ET.parse(UI_PATH).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "NeARSlicer"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt_classes = {c for c in used if c.startswith("Q")}
    assert used - qt_classes <= declared, f"custom widgets not declared: {used - qt_classes - declared}"


def test_every_widget_the_code_looks_up_exists_in_the_ui():
    names = set(re.findall(r"\bself\.ui\.(\w+)", MODULE_PY.read_text()))
    names |= set(re.findall(r"\bwidget\.ui\.(\w+)", MODULE_PY.read_text()))
    # the self-test names widgets in a tuple of strings
    tree = _module_ast()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "test_Widget":
            names |= {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                      and re.fullmatch(r"[a-z]\w+(Selector|Button|Bar|Label|CheckBox|ComboBox)", c.value)}
    widgets = _ui_widgets()
    assert names, "no widget lookups found"
    missing = sorted(n for n in names if n not in widgets)
    assert not missing, f"widgets used in NeARSlicer.py but missing from the .ui: {missing}"


def _parameter_fields():
    for node in ast.walk(_module_ast()):
        if isinstance(node, ast.ClassDef) and node.name == "NeARSlicerParameterNode":
            decorators = [d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in node.decorator_list]
            assert "parameterNodeWrapper" in decorators
            return {n.target.id: ast.unparse(n.annotation) for n in node.body if isinstance(n, ast.AnnAssign)}
    raise AssertionError("NeARSlicerParameterNode not found")


def test_ui_parameter_bindings_match_the_parameter_node():
    fields = _parameter_fields()
    bound = {}
    for widget in _ui_widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert bound, "no SlicerParameterName bindings in the .ui"
    unknown = set(bound) - set(fields)
    assert not unknown, f".ui binds parameters the parameter node does not have: {unknown}"
    # each binding uses a widget the parameterNodeWrapper has a connector for
    expected = {"vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox", "vtkMRMLSegmentationNode": "qMRMLNodeComboBox",
                "bool": "QCheckBox", "pathlib.Path": "ctkPathLineEdit"}
    for parameter, widget_class in bound.items():
        annotation = fields[parameter]
        if annotation in expected:
            assert widget_class == expected[annotation], (parameter, widget_class)
        elif "Choice" in annotation:
            assert widget_class == "QComboBox", (parameter, widget_class)
        elif annotation.startswith("Annotated[int"):
            assert widget_class in ("QSpinBox", "QSlider"), (parameter, widget_class)
    for required in ("inputVolume", "inputSegmentation", "preset", "useAppearance", "device", "seed"):
        assert required in bound, f"{required} is not bound to a widget"


def _cmake_list(text, variable):
    match = re.search(r"set\(%s\s+(.*?)\)" % variable, text, re.S)
    assert match, f"{variable} not set"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def test_module_cmakelists_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    scripts = {s.replace("${MODULE_NAME}", "NeARSlicer") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
               if "__pycache__" not in p.parts and "Testing" not in p.parts}
    assert scripts == on_disk, (f"not listed: {sorted(on_disk - scripts)}; listed but missing: "
                                f"{sorted(scripts - on_disk)}")
    resources = {s.replace("${MODULE_NAME}", "NeARSlicer") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    for resource in ("Resources/Icons/NeARSlicer.png", "Resources/UI/NeARSlicer.ui"):
        assert resource in resources and (MODULE_DIR / resource).is_file()
    # the shipped prior files are picked up by the glob
    assert "${MODULE_NAME}Lib/priors/*.safetensors" in text


def test_testing_registration():
    text = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text()
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \S*(NeARSlicer|\$\{MODULE_NAME\})\.py\)", text)
    assert "add_subdirectory(Testing)" in (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "add_subdirectory(Python)" in (MODULE_DIR / "Testing" / "CMakeLists.txt").read_text()
    tree = _module_ast()
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModuleTest" in classes["NeARSlicerTest"]
    assert "ScriptedLoadableModule" in classes["NeARSlicer"]
    assert "ScriptedLoadableModuleWidget" in classes["NeARSlicerWidget"]


def test_top_level_cmakelists():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(r"set\(%s \"[^\"]+\"\)" % key, text), key
    assert re.search(r'set\(EXTENSION_DEPENDS "?PyTorch"?\)', text)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(NeARSlicer)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text


def test_s4ext_and_catalog_entry_agree():
    s4ext = {}
    for line in (REPO / "NeARSlicer.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            s4ext[key] = value.strip()
    entry = json.loads((REPO / "NeARSlicer.json").read_text())
    # the ExtensionsIndex catalog entry schema v1.0.1: required keys, no others
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert entry["tier"] in (1, 3, 5)
    assert entry["scm_url"] == s4ext["scmurl"] and entry["scm_revision"] == s4ext["scmrevision"]
    assert entry["category"] == s4ext["category"] == "Segmentation"
    assert entry["build_dependencies"] == s4ext["depends"].split() == ["PyTorch"]
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert s4ext["iconurl"] in cmake and s4ext["homepage"] in cmake


def _png_size(path):
    data = Path(path).read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("path", ["Resources/Icons/NeARSlicer.png", "NeARSlicer/Resources/Icons/NeARSlicer.png"])
def test_icons_are_128_png(path):
    assert _png_size(REPO / path) == (128, 128)


def test_logic_imports_without_qt():
    """NeARSlicerLogic (and the engine import it does at load time) must not pull in Qt, and it
    provides every name NeARSlicer.py imports from it."""
    names = [alias.name for node in ast.walk(_module_ast()) if isinstance(node, ast.ImportFrom)
             and node.module == "NeARSlicerLogic" for alias in node.names]
    assert "NeARSlicerLogic" in names
    code = (
        "import sys\n"
        "for name in ('qt', 'ctk', 'PythonQt', 'slicer.parameterNodeWrapper'):\n"
        "    sys.modules[name] = None  # any import of these raises ImportError\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "try:\n"
        "    import slicer\n"
        "    from slicer import vtkMRMLScene\n"
        "except ImportError:\n"
        "    print('NO-SLICER'); raise SystemExit(0)\n"
        "# the application's slicer.ScriptedLoadableModule imports Qt itself; the logic only takes its\n"
        "# base class from there, so a Qt-free stand-in shows that nothing else pulls Qt in\n"
        "import slicer_fixture\n"
        "slicer_fixture.install_module_base_stub(slicer)\n"
        "import NeARSlicerLogic\n"
        "logic = NeARSlicerLogic.NeARSlicerLogic()\n"
        "assert logic.moduleName == 'NeARSlicer', logic.moduleName\n"
        f"missing = [n for n in {names!r} if not hasattr(NeARSlicerLogic, n)]\n"
        "assert not missing, missing\n"
        "heavy = [m for m in ('torch', 'qt', 'ctk') if sys.modules.get(m) is not None]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    if "NO-SLICER" in result.stdout:
        pytest.skip("slicer-core not installed")
    assert "HEAVY []" in result.stdout, "importing the logic must not import torch or Qt: " + result.stdout


def test_module_file_keeps_logic_out():
    """NeARSlicer.py holds Module/Widget/Test only; the logic lives in the Qt-free package."""
    tree = _module_ast()
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert "NeARSlicerLogic" not in classes
    assert len(MODULE_PY.read_text().splitlines()) < 700


def test_dependency_installer_never_touches_slicer_packages(monkeypatch):
    sys.path.insert(0, str(MODULE_DIR))
    from slicer_fixture import import_slicer_core

    import_slicer_core()  # the package imports the module base class (a stand-in without the app)
    from NeARSlicerLogic import dependencies as D

    monkeypatch.setattr(D, "_importable", lambda name: False)  # pretend nothing is installed
    missing = D.missingRequirements()
    assert missing[0].startswith("torch>=")
    names = {re.split(r"[<>=!\[ ]", r)[0].lower() for r in missing}
    assert not names & {"numpy", "simpleitk", "vtk"}

    # declined: nothing installed
    calls = []
    assert D.installDependencies(confirm=lambda text: False, pipInstall=calls.append) is False
    assert calls == []

    # accepted: torch by pip (no PyTorchUtils here), the rest in one call with Slicer's packages pinned
    state = {"installed": False}
    monkeypatch.setattr(D, "missingRequirements",
                        lambda: [] if state["installed"] else ["torch>=2.1", "scipy>=1.10", "scikit-image>=0.21"])
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    seen_constraints = []

    def pip(args):
        calls.append(args)
        if isinstance(args, list) and "-c" in args:
            seen_constraints.append(Path(args[args.index("-c") + 1]).read_text())
            state["installed"] = True

    assert D.installDependencies(confirm=lambda text: "torch" in text, pipInstall=pip) is True
    assert calls[0] == "torch>=2.1"
    assert calls[1][:2] == ["scipy>=1.10", "scikit-image>=0.21"]
    assert "numpy==" in seen_constraints[0]


# ------------------------------------------------------------------ batch review section
REVIEW_BUTTONS = {"reviewOpenButton": None, "reviewNextButton": "Alt+N", "reviewPreviousButton": "Alt+P",
                  "reviewAcceptButton": "Alt+A", "reviewRejectButton": "Alt+R", "reviewNeedsEditButton": "Alt+D"}
MENU_MNEMONICS = {"Alt+F", "Alt+E", "Alt+V", "Alt+H"}  # Slicer's File, Edit, View, Help menus


def _descendants(widget):
    return {w.get("name"): w for w in widget.iter("widget")}


def _property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string") or prop.findtext("bool") or prop.findtext("enum") or prop.findtext("set")
    return None


def test_batch_review_section_has_its_widgets_and_shortcuts():
    section = _ui_widgets()["batchReviewCollapsibleButton"]
    assert section.get("class") == "ctkCollapsibleButton" and _property(section, "text") == "Review a batch"
    inside = _descendants(section)
    for name in list(REVIEW_BUTTONS) + ["reviewOrderComboBox", "reviewTable", "reviewStatusLabel"]:
        assert name in inside, f"{name} is not in the batch review section"
    shortcuts = {}
    for name, key in REVIEW_BUTTONS.items():
        assert _property(inside[name], "shortcut") == key, name
        if key:
            assert key in _property(inside[name], "toolTip"), f"{name}'s tooltip names its shortcut"
            shortcuts[key] = name
    assert len(shortcuts) == 5 and not set(shortcuts) & MENU_MNEMONICS
    columns = [c.findtext("property/string") for c in inside["reviewTable"].findall("column")]
    assert columns == ["case", "segment", "change %", "Dice", "confidence", "review"]
    orders = [i.findtext("property/string") for i in inside["reviewOrderComboBox"].findall("item")]
    assert orders == ["largest change first", "lowest confidence first"]


def test_batch_review_wiring_calls_the_queue_logic():
    """Every review button is connected; the widget only calls what ReviewQueue has; its order names
    are the queue's, in the combo box's order."""
    text = MODULE_PY.read_text()
    for name in REVIEW_BUTTONS:
        assert re.search(rf'self\.ui\.{name}\.connect\("clicked\(bool\)"', text), f"{name} is not connected"
    for decision in ("accepted", "rejected", "needs_edit"):
        assert f'self.onReviewDecision("{decision}")' in text
    tree = ast.parse((MODULE_DIR / "NeARSlicerLogic" / "review_queue.py").read_text())
    queue = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ReviewQueue")
    members = {n.name for n in queue.body if isinstance(n, ast.FunctionDef)}
    members |= {t.attr for n in ast.walk(queue) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    used = set(re.findall(r"(?:self\._reviewQueue|queue)\.(\w+)", text))
    assert used and used <= members, f"the widget calls what ReviewQueue lacks: {sorted(used - members)}"
    orders = next(n for n in ast.walk(_module_ast()) if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "REVIEW_ORDERS" for t in n.targets))
    values = [c.value for c in orders.value.elts]
    assert values == ["change", "confidence"]
    status = ast.parse((MODULE_DIR / "NeARSlicerLib" / "review_status.py").read_text())
    engine_orders = next(n for n in status.body if isinstance(n, ast.Assign)
                         and any(getattr(t, "id", "") == "ORDERS" for t in n.targets))
    assert values == [c.value for c in engine_orders.value.elts]


def test_every_engine_option_of_the_panel_reaches_prepare_refinement():
    """Each engine option the parameter node holds is passed by Refine to ``prepareRefinement`` under the
    name ``refineSegment`` takes (the CT's opening of the gate included: off for thick-slice CTs)."""
    call = next(n for n in ast.walk(_module_ast()) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "prepareRefinement")
    passed = {k.arg: ast.unparse(k.value) for k in call.keywords}
    for keyword, parameter in (("preset", "preset"), ("device", "device"), ("seed", "seed"),
                               ("appearance", "useAppearance"), ("changes", "changes"),
                               ("imageOpensGate", "imageOpensGate")):
        assert passed.get(keyword) == f"parameters.{parameter}", (keyword, passed.get(keyword))
    assert "imageOpensGate" in _parameter_fields()
