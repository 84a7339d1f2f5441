"""The GUI's and the console's path, headless: prepare in the main thread, the engine in its own
process (polled like the widget's QTimer does, or waited for by the console API), apply in the main
thread. Cancel, a killed engine and a segmentation removed mid-run leave the scene as it was."""

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    LEFT_ADRENAL_LABEL,
    MODULE_DIR,
    ct_case,
    logic,
    mrml_scene,
    require_engine,
    scene_state,
    segment_name_of,
    slicer_app,
)

# long enough to be stopped mid-run on any device: 8 mirrored views x 400 fitting steps
LONG_STEPS = 400


@pytest.fixture
def own_engine(logic):
    """A private engine process for tests that cancel or kill it (the shared one stays warm)."""
    from NeARSlicerLib.worker_client import EngineProcess

    logic.engine = EngineProcess(idle_timeout_s=600)
    yield logic.engine
    logic.engine.close()


def _poll(run, timeout=240.0):
    """What the widget's timer does: poll until the run is done; the fractions seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while not run.poll():
        assert time.monotonic() < deadline, "the run did not finish"
        seen.append(run.fraction)
        time.sleep(0.02)
    return seen


def _start_long_run(logic, volume, segmentation, segment_id):
    job = logic.prepareRefinement(volume, segmentation, segment_id, preset="quality")
    job.options["steps"] = LONG_STEPS
    run = logic.startRefinement(job)
    deadline = time.monotonic() + 240
    while run.fraction <= 0.05:
        assert not run.poll(), f"the run ended before fitting started: {run.error}"
        assert time.monotonic() < deadline, "fitting did not start"
        time.sleep(0.02)
    return run


def test_run_in_the_engine_process_then_apply(logic, ct_case, mrml_scene):
    require_engine()
    import slicer

    import NeARSlicerLogic as L

    volume, segmentation, labels = ct_case
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    run = logic.startRefinement(job)
    fractions = _poll(run)
    assert run.error is None and not run.cancelled, run.error
    assert logic.engineProcess().pid not in (None, os.getpid()), "the engine runs in another process"
    assert fractions == sorted(fractions), "progress only moves forward"
    new_id = logic.applyRefinement(run.job)
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, new_id, volume) > 0
    assert refined.any() and L.formatStats(job.stats).startswith(f"{segment_name_of(LEFT_ADRENAL_LABEL)}: volume")
    assert np.array_equal(refined[tuple(slice(a, a + n) for a, n in zip(job.cropOffset, job.mask.shape))],
                          job.result.mask > 0)


def test_cancel_stops_the_engine_within_2_s_and_the_scene_is_unchanged(logic, own_engine, ct_case, mrml_scene):
    require_engine()
    volume, segmentation, labels = ct_case
    before = scene_state(mrml_scene)
    run = _start_long_run(logic, volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    process = own_engine._proc
    t0 = time.perf_counter()
    run.cancel()
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"cancel took {elapsed:.2f} s"
    assert process.poll() is not None, "the engine process is gone"
    assert run.poll() and run.cancelled and str(run.error) == "refinement cancelled"
    assert scene_state(mrml_scene) == before


def test_console_api_blocks_and_cancels_from_another_thread(logic, own_engine, ct_case, mrml_scene):
    require_engine()
    from NeARSlicerLib.errors import Cancelled

    volume, segmentation, labels = ct_case
    before = scene_state(mrml_scene)
    stop = threading.Event()
    cancelled_at = []

    def progress(fraction, message):
        if fraction > 0.05 and not stop.is_set():
            cancelled_at.append(time.perf_counter())
            stop.set()

    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="quality")
    job.options["steps"] = LONG_STEPS
    with pytest.raises(Cancelled):
        logic.computeRefinement(job, progress=progress, cancel=stop)
    assert time.perf_counter() - cancelled_at[0] < 2.0
    assert job.result is None and not own_engine.running
    assert scene_state(mrml_scene) == before


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_killed_engine_leaves_the_scene_intact_with_a_clear_message(logic, own_engine, ct_case, mrml_scene):
    require_engine()
    from NeARSlicerLib.worker_client import EngineStopped

    volume, segmentation, labels = ct_case
    before = scene_state(mrml_scene)
    run = _start_long_run(logic, volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    killed = own_engine.pid
    os.kill(killed, signal.SIGKILL)  # what the system's out-of-memory killer does
    _poll(run, timeout=30)
    assert isinstance(run.error, EngineStopped) and not run.cancelled
    assert str(run.error).startswith("the refinement engine stopped unexpectedly (exit code -9: it was killed, "
                                     "often because the system ran out of memory). Nothing was changed")
    assert run.job.result is None
    assert scene_state(mrml_scene) == before
    new_id = logic.refineSegment(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    assert segmentation.GetSegmentation().GetSegment(new_id) is not None and own_engine.pid != killed


def test_segmentation_removed_mid_run_gives_a_clear_message_and_no_orphan(logic, own_engine, ct_case, mrml_scene):
    require_engine()
    from NeARSlicerLib.errors import InputError

    volume, segmentation, labels = ct_case
    segment_count = segmentation.GetSegmentation().GetNumberOfSegments()
    run = _start_long_run(logic, volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    process = own_engine._proc
    mrml_scene.RemoveNode(segmentation)
    t0 = time.perf_counter()
    _poll(run, timeout=5)
    assert time.perf_counter() - t0 < 2.0 and process.poll() is not None, "the engine is stopped at once"
    assert isinstance(run.error, InputError) and not run.cancelled
    assert str(run.error) == (f"segmentation 'seg' was removed from the scene while "
                              f"'{segment_name_of(LEFT_ADRENAL_LABEL)}' was being refined; the result was not added")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == segment_count, "nothing written to the orphan"
    assert mrml_scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_segmentation_removed_before_apply_adds_nothing(logic, ct_case, mrml_scene):
    """The console path: the engine finished, then the node went away before the result was applied."""
    require_engine()
    from NeARSlicerLib.errors import InputError

    volume, segmentation, labels = ct_case
    segment_count = segmentation.GetSegmentation().GetNumberOfSegments()
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    logic.computeRefinement(job)
    assert job.result.mask.any()
    nodes_before = scene_state(mrml_scene)[0]
    mrml_scene.RemoveNode(segmentation)
    nodes_left = scene_state(mrml_scene)[0]
    with pytest.raises(InputError, match=f"^segmentation 'seg' was removed from the scene while "
                                         f"'{segment_name_of(LEFT_ADRENAL_LABEL)}' was being refined; the result "
                                         "was not added$"):
        logic.applyRefinement(job)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == segment_count
    assert scene_state(mrml_scene)[0] == nodes_left and set(nodes_left) < set(nodes_before)


def test_shutdown_stops_a_running_engine(logic, own_engine, ct_case, mrml_scene):
    require_engine()
    volume, segmentation, labels = ct_case
    run = _start_long_run(logic, volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    process = own_engine._proc
    t0 = time.perf_counter()
    logic.shutdownEngine()
    assert time.perf_counter() - t0 < 3.0 and process.poll() is not None
    assert run.poll() and run.cancelled


def test_widget_cleanup_stops_the_timer_the_run_and_the_engine():
    """Checked statically (no Qt application here): cleanup() stops the poll timer, cancels the run
    and shuts the engine process down; the widget never imports the engine (torch) itself."""
    tree = ast.parse((MODULE_DIR / "NeARSlicer.py").read_text())
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NeARSlicerWidget")
    cleanup = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "cleanup")
    calls = [ast.unparse(n.func) for n in ast.walk(cleanup) if isinstance(n, ast.Call)]
    assert "self._timer.stop" in calls and "self._cancelRun" in calls and "self.logic.shutdownEngine" in calls
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [i for i in imports if "refine" in i or "torch" in i or "study" in i], imports


def test_refinement_needs_no_torch_in_slicer_process(tmp_path):
    """A whole refinement (load, prepare, engine, apply) in a fresh headless Slicer process: the
    segment is added and torch was never imported there -- it lives in the engine process only."""
    require_engine()
    script = tmp_path / "no_torch.py"
    script.write_text(f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from slicer_fixture import CT_PATH, SEG_PATH, LEFT_ADRENAL_LABEL, create_headless_slicer
create_headless_slicer()
import NeARSlicerLogic as L
assert 'torch' not in sys.modules, 'importing the logic imported torch'
volume = L.loadVolumeFile(str(CT_PATH), name='ct')
segmentation, labels = L.loadLabelmapAsSegmentation(str(SEG_PATH), volume, name='seg')
logic = L.NeARSlicerLogic()
new_id = logic.refineSegment(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset='fast')
engine_pid = logic.engineProcess().pid
logic.shutdownEngine()
print(new_id, engine_pid != os.getpid(), 'torch' in sys.modules)
""")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(MODULE_DIR), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    new_id, other_process, torch_loaded = done.stdout.split()[-3:]
    assert new_id and other_process == "True"
    assert torch_loaded == "False", "torch was imported into the Slicer process"
