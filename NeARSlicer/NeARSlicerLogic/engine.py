"""The engine process the module's logic uses: the NeAR engine runs in a child process of
Slicer's Python, never in Slicer's own process. No Qt, no torch.

One ``EngineProcess`` per Slicer session, shared by every logic instance (the widget's and the
console's), so the prior is in memory once. It is started by the first refinement, stays warm
between refinements, exits by itself after ``IDLE_TIMEOUT_S`` without work (returning its memory,
GPU memory included) and is restarted by the next refinement. ``shutdownEngine()`` stops it now
(the widget's ``cleanup`` calls it).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Optional

from NeARSlicerLib.worker_client import EngineProcess

IDLE_TIMEOUT_S = 300.0

_engine: Optional[EngineProcess] = None


def enginePython() -> str:
    """The Python that runs the engine: Slicer's ``PythonSlicer`` (the same interpreter and packages
    as Slicer's own Python; inside the application ``sys.executable`` is the application itself),
    else ``sys.executable`` (headless use, tests)."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return beside if os.path.isfile(beside) else sys.executable


def _temporaryFolder() -> Optional[str]:
    """Slicer's temporary folder (application settings), where the job files go; None: the system's."""
    import slicer

    app = getattr(slicer, "app", None)
    folder = getattr(app, "temporaryPath", None) if app is not None else None
    return folder if folder and os.path.isdir(folder) else None


def sharedEngine() -> EngineProcess:
    """The session's engine process (created on first use; the process itself starts with the first job)."""
    global _engine
    if _engine is None:
        _engine = EngineProcess(python=enginePython(), idle_timeout_s=IDLE_TIMEOUT_S, temp_dir=_temporaryFolder())
    return _engine


def shutdownEngine() -> None:
    """Cancel any running job and stop the session's engine process; the next job starts a new one."""
    global _engine
    if _engine is not None:
        _engine.close()
        _engine = None
