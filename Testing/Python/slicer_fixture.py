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
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TOTALSEG_DIR = SHARED_DATA / "totalseg_example"
CT_PATH = TOTALSEG_DIR / "ct.nii.gz"
SEG_PATH = TOTALSEG_DIR / "seg.nii.gz"
LEFT_ADRENAL_LABEL = 9
RIGHT_ADRENAL_LABEL = 8

# A rough annotation of the gland on this 3 mm CT: NeARSlicerLib.distort's defaults are sized for
# 1 mm voxels (cubes of 3-8 voxels) and leave Dice ~0.2 on a 180-voxel gland at 3 mm; these voxel
# sizes give Dice(distorted, true) = 0.51 for DISTORT_SEED (slabs painted over and cut away, a
# one-voxel erosion or dilation, speckle at the border).
DISTORTION_3MM = dict(n_cubes=(3, 6), cube_size=(2, 4), p_morph=0.6, noise_fraction=0.006, noise_band=2)
DISTORT_SEED = 11

# Offscreen 3D rendering (report surfaces) without an X display: go straight to EGL.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

# The module folder is on sys.path inside Slicer; do the same here so that
# ``import NeARSlicerLogic`` and ``import NeARSlicerLib`` resolve to this checkout.
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


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
    if not (CT_PATH.is_file() and SEG_PATH.is_file()):
        pytest.skip(f"real CT example not found at {TOTALSEG_DIR} (read ../shared/README.md)")


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
    job.result = fake_result(job.mask, refined_mask)
    refined = job.result.mask
    before, after = int(job.mask.sum()), int(refined.sum())
    job.stats = {"segmentName": job.segmentName, "segmentId": segment_id, "voxelsBefore": before,
                 "voxelsAfter": after, "volumeBeforeMl": before * 0.027, "volumeAfterMl": after * 0.027,
                 "volumeChangePercent": 100.0 * (after - before) / max(before, 1), "dice": 0.5, "seconds": 0.01,
                 "warnings": []}
    return job
