"""The GUI's path, headless: prepare in the main thread, the engine in a RefinementWorker thread
polled like the widget's QTimer does, apply in the main thread; cancel from the main thread."""

import time

import numpy as np

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    logic,
    LEFT_ADRENAL_LABEL,
    ct_case,
    fake_result,
    mrml_scene,
    require_engine,
    scene_state,
    slicer_app,
)


def _poll(worker, timeout=120.0):
    """What the widget's timer does: read progress until the worker is done."""
    seen = []
    deadline = time.monotonic() + timeout
    while not worker.done:
        assert time.monotonic() < deadline, "worker did not finish"
        seen.append(worker.fraction)
        time.sleep(0.02)
    return seen


def test_worker_runs_in_a_thread_and_can_be_cancelled(logic, ct_case, mrml_scene, monkeypatch):
    import threading

    import NeARSlicerLogic as L
    from NeARSlicerLib.errors import Cancelled

    volume, segmentation, labels = ct_case
    main = threading.get_ident()
    threads = []

    def slow_compute(job, progress=None, cancel=None):
        threads.append(threading.get_ident())
        for step in range(200):
            if cancel.is_set():
                raise Cancelled("refinement cancelled")
            progress(step / 200.0, "fitting")
            time.sleep(0.01)
        job.result = fake_result(job.mask, job.mask)

    monkeypatch.setattr(logic, "computeRefinement", slow_compute)
    before = scene_state(mrml_scene)
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    worker = L.RefinementWorker(logic, job).start()
    while worker.fraction < 0.1:
        time.sleep(0.01)
    worker.cancel()
    _poll(worker)
    assert threads and threads[0] != main, "the engine must not run in the main thread"
    assert worker.cancelled and isinstance(worker.error, Cancelled)
    assert scene_state(mrml_scene) == before


def test_worker_then_apply_with_the_engine(logic, ct_case, mrml_scene):
    require_engine()
    import slicer

    import NeARSlicerLogic as L

    volume, segmentation, labels = ct_case
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    worker = L.RefinementWorker(logic, job).start()
    fractions = _poll(worker)
    assert worker.error is None and not worker.cancelled, worker.error
    assert fractions == sorted(fractions), "progress only moves forward"
    new_id = logic.applyRefinement(worker.job)
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, new_id, volume) > 0
    assert refined.any() and L.formatStats(job.stats).startswith("Label_9: volume")
    assert np.array_equal(refined[tuple(slice(a, a + n) for a, n in zip(job.cropOffset, job.mask.shape))],
                          job.result.mask > 0)
