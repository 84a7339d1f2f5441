"""The engine call of one refinement -- the one place where the NeAR engine runs -- and a thread
that runs it for the GUI. Touches no MRML node. No Qt.

``computeRefinement(job, progress, cancel)`` is the swap point for running the engine elsewhere
(e.g. in a separate worker process): everything else only hands it a prepared ``RefinementJob``
and reads ``job.result`` / ``job.stats`` back.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from NeARSlicerLib.errors import Cancelled

from .common import cancelFunction
from .job import RefinementJob, attachResult


def computeRefinement(job: RefinementJob, progress=None, cancel=None):
    """Run the engine on the job's arrays; set ``job.result`` and ``job.stats``; return the result.

    :param progress: ``progress(fraction, message)``.
    :param cancel: a callable or ``threading.Event``; when set, ``Cancelled`` is raised.
    """
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    cancelled = cancelFunction(cancel)
    started = time.perf_counter()
    result = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options),
                         progress=progress, cancel=cancelled)
    seconds = float(getattr(result, "seconds", 0.0) or (time.perf_counter() - started))
    attachResult(job, result, seconds)
    if cancelled is not None and cancelled():
        raise Cancelled("refinement cancelled")
    return result


class RefinementWorker:
    """Runs ``logic.computeRefinement(job)`` in a Python thread; the caller polls it.

    The module's widget polls ``fraction``, ``message`` and ``done`` with a QTimer, so Slicer stays
    responsive, then calls ``logic.applyRefinement(job)`` in the main thread. ``cancel()`` sets the
    flag the engine checks between its steps. The thread touches no MRML node.
    """

    def __init__(self, logic, job: RefinementJob):
        self.logic, self.job = logic, job
        self.cancelEvent = threading.Event()
        self.fraction, self.message = 0.0, "starting"
        self.error: Optional[BaseException] = None
        self.done = False
        self._thread = threading.Thread(target=self._run, name="NeAR refinement", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def cancel(self):
        self.cancelEvent.set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled) or (self.done and self.error is None and self.cancelEvent.is_set())

    def join(self, timeout=None):
        self._thread.join(timeout)
        return self.done

    def _progress(self, fraction, message=""):
        self.fraction, self.message = float(fraction), str(message)

    def _run(self):
        try:
            self.logic.computeRefinement(self.job, progress=self._progress, cancel=self.cancelEvent)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc
        finally:
            self.done = True
