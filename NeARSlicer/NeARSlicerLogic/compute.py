"""The engine calls -- the one place where the NeAR engine runs -- sent to the engine process
(``engine.sharedEngine()``, a child process of Slicer's Python). Touches no MRML node while the
engine works; imports neither Qt nor torch.

* ``computeRefinement(job, engine)``: blocks until done (the Python console, batches), keeping
  Slicer's window responsive meanwhile;
* ``RefinementRun(engine, job)``: started, then polled without blocking by the widget's QTimer;
* ``computeStudy(engine, cases, ...)``: study mode, blocking.

Cancel kills the engine process (within 2 s); a crashed engine ends the job with a clear
``EngineStopped`` message. Either way the scene is untouched: results are applied afterwards,
in the main thread, by ``apply``.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

from NeARSlicerLib.errors import Cancelled, InputError
from NeARSlicerLib.worker_client import EngineProcess, StudyOutcome

from .common import cancelFunction
from .job import RefinementJob, attachResult


def _keepResponsive() -> None:
    """Let Slicer repaint while a blocking call waits for the engine (no-op without an application)."""
    import slicer

    app = getattr(slicer, "app", None)
    if app is not None and hasattr(app, "processEvents"):
        app.processEvents()


def _nodeRemovedError(job: RefinementJob) -> Optional[InputError]:
    node = job.segmentationNode
    if node is not None and node.GetScene() is None:
        return InputError(f"segmentation '{node.GetName()}' was removed from the scene while '{job.segmentName}' "
                          "was being refined; the result was not added")
    return None


def volumeModality(volumeNode) -> Optional[str]:
    """The volume's DICOM Modality ("CT", "MR", ...) when the scene knows it, else None (the engine
    then guesses it from the intensities). Read from the node's ``DICOM.Modality`` attribute or the
    subject-hierarchy attribute that Slicer's DICOM import sets on the series item."""
    if volumeNode is None:
        return None
    value = volumeNode.GetAttribute("DICOM.Modality")
    if value:
        return str(value)
    try:
        import slicer

        shNode = slicer.mrmlScene.GetSubjectHierarchyNode() if slicer.mrmlScene is not None else None
        item = shNode.GetItemByDataNode(volumeNode) if shNode is not None else 0
        while item:
            value = shNode.GetItemAttribute(item, "DICOM.Modality")
            if value:
                return str(value)
            item = shNode.GetItemParent(item)
            if item == shNode.GetSceneItemID():
                break
    except (AttributeError, TypeError):  # a scene without subject hierarchy (tests, old Slicer)
        return None
    return None


def engineOptions(job: RefinementJob) -> dict:
    """The job's RefineOptions fields, with the volume's modality when the scene knows it."""
    options = dict(job.options)
    if job.image is not None and not options.get("modality"):
        modality = volumeModality(job.volumeNode)
        if modality:
            options["modality"] = modality
    return options


def computeRefinement(job: RefinementJob, engine: EngineProcess, progress=None, cancel=None):
    """Run the engine on the job's arrays (blocking); set ``job.result`` and ``job.stats``; return the result.

    :param progress: ``progress(fraction, message)``.
    :param cancel: a callable or ``threading.Event``; when set, the engine is stopped and ``Cancelled`` raised.
    """
    cancelled = cancelFunction(cancel)
    handle = engine.submit_refine(job.mask, job.grid, job.image, engineOptions(job), job.scan)
    result = engine.wait(progress=progress, cancel=cancelled, tick=_keepResponsive, job=handle)
    attachResult(job, result, result.seconds)
    return result


def computeStudy(engine: EngineProcess, cases: Sequence, prior: Optional[str], config: dict,
                 priorOut: Optional[str] = None, progress=None, cancel=None, splitByPrior: bool = False,
                 overwrite: bool = False) -> StudyOutcome:
    """Study mode in the engine (blocking): ``cases`` have name, mask, grid, image (and structure);
    ``config`` holds ``StudyConfig`` fields (``recipe`` picks the defaults); the trained prior is saved to
    ``priorOut``. ``splitByPrior``: cases that ``auto`` gives different priors run as one study per prior,
    each prior saved beside ``priorOut`` (``study_prior-<prior>.safetensors``; an existing one replaced only
    with ``overwrite``)."""
    handle = engine.submit_study(cases, prior, config, prior_out=priorOut, split_by_prior=splitByPrior,
                                 overwrite=overwrite)
    return engine.wait(progress=progress, cancel=cancelFunction(cancel), tick=_keepResponsive, job=handle)


class RefinementRun:
    """One refinement in the engine process for the GUI: ``start()``, then ``poll()`` from a QTimer.

    Nothing runs in Slicer's process meanwhile. After ``poll()`` returns True, ``error`` is None and
    ``job`` holds the result (apply it in the main thread), or ``error`` says why not; ``cancelled``
    is True after ``cancel()``. A segmentation node removed from the scene meanwhile stops the run
    with a clear ``InputError``.
    """

    def __init__(self, engine: EngineProcess, job: RefinementJob):
        self.engine, self.job = engine, job
        self.fraction, self.message = 0.0, "starting"
        self.error: Optional[BaseException] = None
        self.done = False
        self.started = 0.0
        self._handle = None  # the EngineJob: read by its handle, never "whatever the engine runs now"

    def start(self) -> "RefinementRun":
        self.started = time.perf_counter()
        self._handle = self.engine.submit_refine(self.job.mask, self.job.grid, self.job.image, engineOptions(self.job),
                                                 self.job.scan)
        return self

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def poll(self) -> bool:
        """Read the engine's progress (never blocks); return ``done``."""
        if self.done:
            return True
        removed = _nodeRemovedError(self.job)
        if removed is not None:
            self.engine.cancel(self._handle)
            self.error, self.done = removed, True
            return True
        status = self.engine.poll(self._handle)
        self.fraction, self.message = status.fraction, status.message
        if status.done:
            try:
                result = self.engine.result(self._handle)
                attachResult(self.job, result, result.seconds)
            except Exception as exc:  # reported by the caller, in the main thread
                self.error = exc
            self.done = True
        return self.done

    def cancel(self) -> None:
        """Stop the engine now (it is killed within 2 s); the scene is not touched."""
        if not self.done:
            self.engine.cancel(self._handle)
            self.poll()

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> bool:
        """Poll until done (tests and scripts; the GUI polls from its timer instead); return ``done``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)
        return self.done
