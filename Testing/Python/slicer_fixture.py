"""Headless Slicer for the NeARSlicer module tests: the real MRML and segmentation libraries.

The PyPI package ``slicer-core`` ships Slicer's MRML, logic and segmentation libraries and the
real ``slicer.util``, but no Qt application. This file builds what Slicer's application builds at
start-up (the way trame-slicer's ``SlicerApp`` does it):

* one ``vtkMRMLScene``,
* a ``vtkSlicerApplicationLogic`` on that scene, with the default color nodes,
* the module logics the NeARSlicer logic uses -- ``vtkSlicerVolumesLogic``,
  ``vtkSlicerSegmentationsModuleLogic``, the Colors logic they look up, the Subject hierarchy logic
  and the Data logic (which removes a removed node's display and storage nodes, as in the
  application) -- each given the
  scene with ``SetMRMLScene`` and the application logic with ``SetMRMLApplicationLogic`` and
  registered with ``SetModuleLogic``,

and exposes them where Slicer's Python code looks for them: ``slicer.mrmlScene``,
``slicer.modules.<name>.logic()`` and a minimal ``slicer.app``. With those the real
``slicer.util`` helpers (``arrayFromVolume``, ``arrayFromSegmentBinaryLabelmap``,
``updateSegmentBinaryLabelmapFromArray``, ...) run unchanged, and so does ``NeARSlicerLogic``,
which imports no Qt.

Use from a test module::

    from slicer_fixture import slicer_app, mrml_scene, ct_case  # noqa: F401  (pytest fixtures)

or, outside pytest, ``app = create_headless_slicer()``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "NeARSlicer"
# <repo>/../shared (NEARSLICER_SHARED points elsewhere, as for the CLI): real data, not in the repository
SHARED_DIR = Path(os.environ.get("NEARSLICER_SHARED") or REPO_ROOT.parent / "shared")
SHARED_DATA = SHARED_DIR / "data"
LEFT_ADRENAL_LABEL = 9
RIGHT_ADRENAL_LABEL = 8
PHANTOM_LABELS = (1, 2, 3, 4, 5, 6, 7, 10, 11, 12)  # "organs" beside the two glands, as in a multilabel map

# A rough annotation of the gland on this 3 mm CT: NeARSlicerLib.distort's defaults are sized for
# 1 mm voxels (cubes of 3-8 voxels) and leave Dice ~0.2 on a 180-voxel gland at 3 mm; these voxel
# sizes give Dice(distorted, true) = 0.51 for DISTORT_SEED (slabs painted over and cut away, a
# one-voxel erosion or dilation, speckle at the border).
DISTORTION_3MM = dict(n_cubes=(3, 6), cube_size=(2, 4), p_morph=0.6, noise_fraction=0.006, noise_band=2)
DISTORT_SEED = 11

# Offscreen 3D rendering (report surfaces) without an X display: go straight to EGL.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

def _write_phantom_case(folder: Path) -> tuple:
    """A CT and a multilabel map shaped like ../shared/data/totalseg_example (30 x 101 x 122 voxels of
    3 mm, LPS directions of a NIfTI from RAS), built from NeARSlicerLib.phantom: adrenal-like glands
    as labels 8 (right) and 9 (left) in a synthetic CT, and ten ellipsoid "organs" as other labels."""
    import numpy as np
    import SimpleITK as sitk

    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    shape, spacing = (30, 101, 122), (3.0, 3.0, 3.0)
    labels = np.zeros(shape, np.uint8)
    for label, seed, (k, j, i) in ((RIGHT_ADRENAL_LABEL, 3, (8, 40, 36)), (LEFT_ADRENAL_LABEL, 5, (8, 40, 78))):
        gland = adrenal_phantom(seed=seed, shape=(14, 20, 20), spacing=spacing)
        labels[k:k + 14, j:j + 20, i:i + 20][gland] = label
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    for n, label in enumerate(PHANTOM_LABELS):
        centre = (5 + 2 * (n % 10), 75 + (n % 3) * 7, 10 + 10 * n)
        organ = ((kk - centre[0]) / 3.0) ** 2 + ((jj - centre[1]) / 4.0) ** 2 + ((ii - centre[2]) / 4.0) ** 2 <= 1
        labels[organ & (labels == 0)] = label
    ct = np.clip(np.round(ct_phantom(labels == LEFT_ADRENAL_LABEL, seed=1, spacing=spacing)), -1024, 3000)
    ct[labels == RIGHT_ADRENAL_LABEL] = 38.0 + ct[labels == RIGHT_ADRENAL_LABEL] * 0.1
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ct.nii.gz", folder / "seg.nii.gz"
    for array, path in ((ct.astype(np.int16), paths[0]), (labels, paths[1])):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((177.956, -11.319, 94.302))
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(image, str(path))
    return paths


def _example_case():
    """``(folder, ct, seg, problem)``: the real example, or the built-in phantom when ../shared is absent.

    ``problem`` is a message when ../shared exists but its example cannot be read: then the phantom
    stands in outside CI, and in CI the tests that need the data fail (require_totalseg_data).
    """
    real = SHARED_DATA / "totalseg_example"
    problem = None
    if SHARED_DIR.exists():
        try:
            for path in (real / "ct.nii.gz", real / "seg.nii.gz"):
                with open(path, "rb") as stream:
                    stream.read(16)
            return real, real / "ct.nii.gz", real / "seg.nii.gz", None
        except OSError as exc:
            problem = f"{SHARED_DIR} exists but its example case cannot be read ({exc})"
    folder = Path(tempfile.mkdtemp(prefix="nearslicer-phantom-")) / "totalseg_example"
    ct, seg = _write_phantom_case(folder)
    return folder, ct, seg, problem


# The module folder is on sys.path inside Slicer; do the same here so that
# ``import NeARSlicerLogic`` and ``import NeARSlicerLib`` resolve to this checkout.
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

TOTALSEG_DIR, CT_PATH, SEG_PATH, EXAMPLE_PROBLEM = _example_case()


def segment_name_of(label: int) -> str:
    """The name a label of SEG_PATH gets in Slicer: its TotalSegmentator label table's (the real example,
    e.g. "adrenal_gland_left"), else ``Label_<value>`` (the phantom standing in has no table)."""
    from NeARSlicerLib.label_table import label_names

    return label_names(SEG_PATH).get(label, f"Label_{label}")
USING_PHANTOM = EXAMPLE_PROBLEM is not None or not str(CT_PATH).startswith(str(SHARED_DIR))


def install_module_base_stub(slicer) -> None:
    """Provide ``slicer.ScriptedLoadableModule`` where slicer-core lacks it (headless, no Qt).

    In the application that module is Slicer's own (it imports Qt); the logic imports its
    ``ScriptedLoadableModuleLogic`` from there. This stand-in has the same behaviour for what the
    logic uses: ``moduleName`` and a singleton parameter node.
    """
    existing = sys.modules.get("slicer.ScriptedLoadableModule")
    if existing is not None and hasattr(existing, "ScriptedLoadableModuleLogic"):
        return

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def createParameterNode(self):
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetSingletonTag(self.moduleName)
            return node

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNode(self.createParameterNode())
            return node

    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.__doc__ = "Headless stand-in (tests): ScriptedLoadableModuleLogic only."
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    sys.modules["slicer.ScriptedLoadableModule"] = module
    slicer.ScriptedLoadableModule = module


def import_slicer_core():
    """Import the ``slicer`` package of slicer-core, or skip (outside CI) when it is missing.

    In CI (``CI`` set) a missing slicer-core is an error, not a skip: those tests must run there.
    """
    try:
        import slicer  # noqa: F401
        from slicer import vtkMRMLScene  # noqa: F401  (not the unrelated PyPI package "slicer")
        import slicer.util  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(
            f"slicer-core is not installed ({exc}); install it with pip install -e '.[slicer]'",
            allow_module_level=True,
        )
    install_module_base_stub(sys.modules["slicer"])
    return sys.modules["slicer"]


class _ModuleHandle:
    """What ``slicer.modules.<name>`` is for a loadable module: something with ``logic()``."""

    def __init__(self, name: str, logic):
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class _HeadlessApp:
    """The few members of ``slicer.app`` (qSlicerApplication) that non-GUI code touches."""

    def __init__(self, scene, app_logic, temporary_path: str):
        self._scene = scene
        self._app_logic = app_logic
        self.temporaryPath = temporary_path
        self.majorVersion, self.minorVersion = 5, 13

    def mrmlScene(self):
        return self._scene

    def applicationLogic(self):
        return self._app_logic

    def processEvents(self, *args):
        pass

    def testingEnabled(self):
        return True

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass

    def layoutManager(self):  # no views without Qt
        return None


class HeadlessSlicer:
    """The scene, application logic and module logics of a headless Slicer session."""

    def __init__(self):
        slicer = import_slicer_core()
        from vtkmodules.vtkCommonCore import vtkCollection, vtkOutputWindow

        # VTK warnings go to stderr, where pytest shows them with the failing test.
        out = vtkOutputWindow()
        out.SetDisplayModeToAlwaysStdErr()
        vtkOutputWindow.SetInstance(out)

        self.slicer = slicer
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().SetMRMLScene(self.scene)
        self.app_logic.GetColorLogic().AddDefaultColorNodes()
        self.app_logic.SetSliceLogics(vtkCollection())
        self.app_logic.SetViewLogics(vtkCollection())

        self.color_logic = self._register("Colors", self.app_logic.GetColorLogic(), set_scene=False)
        self.volumes_logic = self._register("Volumes", slicer.vtkSlicerVolumesLogic())
        self.segmentations_logic = self._register("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
        # As in the application, a subject hierarchy node is always there (data tree of the scene).
        self.subject_hierarchy_logic = self._register("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
        # The Data module's logic removes the display and storage nodes of a removed node, as in Slicer.
        self.data_logic = self._register("Data", slicer.vtkSlicerDataModuleLogic())

        self._tmp = tempfile.TemporaryDirectory(prefix="nearslicer-headless-")
        self.app = _HeadlessApp(self.scene, self.app_logic, self._tmp.name)
        self.install()

    def _register(self, name, logic, set_scene=True):
        if set_scene:
            logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.app_logic)
        self.app_logic.SetModuleLogic(name, logic)
        return logic

    def install(self):
        """Expose this session as ``slicer.mrmlScene``, ``slicer.modules`` and ``slicer.app``."""
        slicer = self.slicer
        slicer.mrmlScene = self.scene
        slicer.app = self.app
        modules = getattr(slicer, "modules", None)
        if not isinstance(modules, types.SimpleNamespace):
            modules = types.SimpleNamespace()
        modules.volumes = _ModuleHandle("Volumes", self.volumes_logic)
        modules.segmentations = _ModuleHandle("Segmentations", self.segmentations_logic)
        modules.colors = _ModuleHandle("Colors", self.color_logic)
        modules.data = _ModuleHandle("Data", self.data_logic)
        slicer.modules = modules

    def clear(self):
        """Empty the scene between tests (default color nodes stay, as after File > Close Scene)."""
        self.scene.Clear(0)
        self.scene.GetSubjectHierarchyNode()  # recreated at once, as the application does

    def close(self):
        self.clear()
        self._tmp.cleanup()


_SESSION: HeadlessSlicer | None = None


def create_headless_slicer() -> HeadlessSlicer:
    """One headless session per process (module logics are global in Slicer too)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = HeadlessSlicer()
    _SESSION.install()
    return _SESSION


def require_totalseg_data():
    """The example case is there: the real one, or the phantom standing in when ../shared is absent.
    In CI, ../shared present but unreadable is a failure (never a silent skip)."""
    if EXAMPLE_PROBLEM and os.environ.get("CI"):
        pytest.fail(EXAMPLE_PROBLEM)
    assert CT_PATH.is_file() and SEG_PATH.is_file(), f"example case missing at {TOTALSEG_DIR}"


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def slicer_app() -> HeadlessSlicer:
    """The headless Slicer session (scene, application logic, module logics)."""
    return create_headless_slicer()


@pytest.fixture
def logic(slicer_app):
    """A fresh NeARSlicerLogic in the headless application."""
    import NeARSlicerLogic as L

    return L.NeARSlicerLogic()


@pytest.fixture
def mrml_scene(slicer_app):
    """An empty scene for one test; cleared again afterwards."""
    slicer_app.clear()
    yield slicer_app.scene
    slicer_app.clear()


@pytest.fixture
def ct_case(mrml_scene):
    """The real CT loaded as a scalar volume and its multilabel map as a segmentation node.

    Returns ``(volumeNode, segmentationNode, labelToSegmentId)``.
    """
    require_totalseg_data()
    import NeARSlicerLogic as L

    volume = L.loadVolumeFile(str(CT_PATH), name="ct")
    segmentation, label_to_id = L.loadLabelmapAsSegmentation(str(SEG_PATH), volume, name="seg")
    return volume, segmentation, label_to_id


# ---------------------------------------------------------------------------------- helpers


def require_engine():
    """Skip (outside CI) when the engine or its shipped prior is not there yet."""
    try:
        from NeARSlicerLib.prior import DEFAULT_PRIOR
        import NeARSlicerLib.refine  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"NeAR engine not importable: {exc}")
    if not DEFAULT_PRIOR.is_file():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"shipped prior missing: {DEFAULT_PRIOR}")
        pytest.skip(f"shipped prior not found: {DEFAULT_PRIOR}")


def scene_state(scene):
    """A comparable snapshot of the scene: node ids, and every segment's id, name, color and
    display override of every segmentation node."""
    nodes = tuple(sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())))
    segments = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        segmentation = node.GetSegmentation()
        display = node.GetDisplayNode()
        entries = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            override = None
            if display is not None:
                color = display.GetSegmentOverrideColor(segmentId)
                override = (round(color.GetX(), 4), round(color.GetY(), 4), round(color.GetZ(), 4))
            entries.append((segmentId, segment.GetName(), tuple(round(c, 4) for c in segment.GetColor()), override))
        segments[node.GetID()] = tuple(entries)
    return nodes, segments


def segment_arrays(segmentation_node, reference_volume):
    """{segmentId: uint8 array on the reference volume's grid} for every segment."""
    import numpy as np

    slicer = sys.modules["slicer"]
    segmentation = segmentation_node.GetSegmentation()
    return {
        segmentation.GetNthSegmentID(i): np.array(
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segmentation.GetNthSegmentID(i),
                                                      reference_volume) > 0, dtype=np.uint8)
        for i in range(segmentation.GetNumberOfSegments())
    }


def add_segment(segmentation_node, name, mask, reference_volume, color=(0.9, 0.8, 0.1)):
    """Add a segment from a 0/1 array on ``reference_volume``'s grid; return its id."""
    import numpy as np

    slicer = sys.modules["slicer"]
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("", name, color)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.asarray(mask, dtype=np.uint8), segmentation_node,
                                                     segment_id, reference_volume)
    return segment_id


def fake_result(input_mask, refined_mask):
    """What ``refine_mask`` returns, made up from ``refined_mask`` (no engine run)."""
    import types

    import numpy as np

    refined = (np.asarray(refined_mask) > 0).astype(np.uint8)
    original = np.asarray(input_mask) > 0
    return types.SimpleNamespace(mask=refined, probability=refined.astype(np.float32),
                                 added=(refined > 0) & ~original, removed=(refined == 0) & original,
                                 seconds=0.01, warnings=[], info={})


def fake_computed_job(logic, volume, segmentation_node, segment_id, refined_mask, **options):
    """A prepared job whose 'engine result' is ``refined_mask`` (on the full volume grid, cropped
    here to the box the engine would get): tests the MRML side alone."""
    import numpy as np

    job = logic.prepareRefinement(volume, segmentation_node, segment_id, **options)
    refined_mask = np.asarray(refined_mask)
    if refined_mask.shape == tuple(job.fullShape) and refined_mask.shape != job.mask.shape:
        lo = np.array(job.cropOffset)
        refined_mask = refined_mask[tuple(slice(a, b) for a, b in zip(lo, lo + np.array(job.mask.shape)))]
    # the statistics come from the logic's own code path (voxel counts, mL, Dice), not made up here
    logic.setJobResult(job, fake_result(job.mask, refined_mask), seconds=0.01)
    return job
