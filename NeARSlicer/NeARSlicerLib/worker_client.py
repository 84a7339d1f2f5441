"""The application's side of the engine worker: start it, send a job, poll or wait, cancel, restart.

``EngineProcess`` runs ``engine_worker`` in a child process of a given Python (Slicer's
``PythonSlicer``; ``sys.executable`` by default), so torch and the prior never live in the
application's process. One job at a time:

* ``submit_refine`` / ``submit_study`` return at once; ``poll()`` reads the progress without
  blocking (a GUI timer calls it); ``wait()`` blocks until the job ends (a console API);
* ``cancel()`` kills the worker (terminate, then kill) and removes the job's files;
* a worker that dies mid-job (crash, out-of-memory kill) ends the job with ``EngineStopped``;
* the next job starts a new worker when the last one is gone; an idle worker exits by itself.

Pure Python and numpy: importing this module imports neither torch nor Slicer.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .engine_protocol import INPUT_FILE, grid_to_dict, jsonable, load_arrays, read_message, \
    save_arrays, write_message
from .errors import Cancelled, InputError, NeARError, PriorError, RefinementError

PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder that holds NeARSlicerLib
STOP_GRACE_S = 0.8  # terminate, then kill after this long; both together stay under 2 s


class EngineError(NeARError):
    """The engine process failed: it could not start, or an unexpected error ended the job."""


class EngineStopped(EngineError):
    """The worker process ended in the middle of a job (crash, killed, out of memory)."""

    def __init__(self, message: str, exit_code: Optional[int] = None, log_tail: str = ""):
        super().__init__(message)
        self.exit_code, self.log_tail = exit_code, log_tail


# the engine's own errors come back as themselves; anything else as EngineError ("internal error: ...")
_ERRORS = {"InputError": InputError, "PriorError": PriorError, "Cancelled": Cancelled,
           "RefinementError": RefinementError}


@dataclass
class EngineResult:
    """A refinement done by the worker; the fields of ``refine.RefineResult`` (arrays on the input grid)."""

    mask: np.ndarray  # uint8 0/1
    probability: np.ndarray  # float32 in [0, 1]
    added: np.ndarray  # bool: refined but not in the input
    removed: np.ndarray  # bool: in the input but not refined
    seconds: float  # the engine's own time, without the transfer
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


@dataclass
class StudyOutcome:
    """A study done by the worker: per case (in the order given) its refined mask and probability."""

    names: list[str]
    masks: list[np.ndarray]
    probabilities: list[np.ndarray]
    case_seconds: list[float]
    seconds: float
    train_seconds: float
    steps: int
    epochs: int
    stopped_early: bool
    epoch_losses: list[float]
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    case_info: list = field(default_factory=list)  # per case its refinement's facts (denoise), else empty


@dataclass(frozen=True)
class JobStatus:
    """What ``poll()`` returns: progress in [0, 1], its message, and whether the job has ended."""

    fraction: float
    message: str
    done: bool
    error: Optional[BaseException] = None
    cancelled: bool = False


@dataclass
class EngineJob:
    """A submitted job (returned by the ``submit_*`` methods): pass it to ``poll``/``result``/``cancel``
    to be sure of reading this job even if the engine has been given another one since."""

    id: int
    kind: str  # refine | study | warm
    folder: Path
    request: dict
    input_mask: Optional[np.ndarray] = None
    proc: Any = None  # the process the request was sent to
    fraction: float = 0.0
    message: str = ""
    done: bool = False
    cancelled: bool = False
    resend: bool = False  # the worker exited for idleness before reading the request
    result: Any = None
    error: Optional[BaseException] = None


def _cancel_function(cancel) -> Optional[Callable[[], bool]]:
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    return cancel


def _stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """End ``proc``: terminate, and kill if it is still there after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    except OSError:
        pass


def _exit_text(code: int) -> str:
    if code in (-9, 137):
        return f"exit code {code}: it was killed, often because the system ran out of memory"
    if code < 0:
        return f"exit code {code}: stopped by signal {-code}"
    return f"exit code {code}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""


class EngineProcess:
    """A warm engine worker in a child process (see the module docstring).

    :param python: the Python that runs the worker (needs torch and the engine's dependencies).
    :param idle_timeout_s: the worker exits after this long without a job (0: never).
    :param temp_dir: where the private session folder (job files, the worker's log) is made.
    """

    def __init__(self, python: Optional[str] = None, idle_timeout_s: float = 300.0,
                 temp_dir: Optional[str] = None, env: Optional[dict] = None):
        self.python = python or sys.executable
        self.idle_timeout_s = float(idle_timeout_s)
        self.temp_dir, self.env = temp_dir, env
        self.ready: dict = {}  # the worker's "ready" message (pid, torch version, device)
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._job: Optional[EngineJob] = None
        self._ids = itertools.count(1)
        self._session: Optional[Path] = None
        self._last_active = 0.0
        self._finalizers: list = []

    # ------------------------------------------------------------------ process
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether a worker process is alive (busy or idle)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    @property
    def log_path(self) -> Optional[Path]:
        return self._session / "engine.log" if self._session is not None else None

    def _session_folder(self) -> Path:
        if self._session is None or not self._session.is_dir():
            self._session = Path(tempfile.mkdtemp(prefix="nearslicer-engine-", dir=self.temp_dir))
            self._finalizers.append(weakref.finalize(self, shutil.rmtree, str(self._session), True))
        return self._session

    def start(self) -> None:
        """Start a worker unless one is alive and not about to exit for idleness."""
        if self.running and not self._near_idle_exit():
            return
        if self._proc is not None:
            _stop(self._proc)
        env = dict(os.environ if self.env is None else self.env)
        # the worker imports the engine from this checkout; PYTHONPATH is not used because
        # Slicer's launcher rewrites it
        bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r}); "
                     "from NeARSlicerLib.engine_worker import main; sys.exit(main(sys.argv[1:]))")
        command = [self.python, "-c", bootstrap, "--idle-timeout", str(self.idle_timeout_s)]
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        session = self._session_folder()
        with open(session / "engine.log", "ab") as log:
            try:
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                        cwd=str(session), env=env, creationflags=flags)
            except OSError as exc:
                raise EngineError(f"could not start the refinement engine with {self.python}: {exc}") from None
        self._proc = proc
        self._last_active = time.monotonic()
        self._finalizers.append(weakref.finalize(self, _stop, proc))
        threading.Thread(target=self._read, args=(proc,), name="NeAR engine reader", daemon=True).start()

    def _near_idle_exit(self) -> bool:
        # the worker's idle clock starts a moment before ours: restart rather than race its exit
        if self.idle_timeout_s <= 0:
            return False
        margin = min(10.0, self.idle_timeout_s / 2)
        return time.monotonic() - self._last_active > self.idle_timeout_s - margin

    def _read(self, proc: subprocess.Popen) -> None:
        """Reader thread of one worker: applies its messages to the job sent to it."""
        said_bye = started = False
        for line in proc.stdout:
            try:
                message = read_message(line)
            except ValueError:
                continue
            kind = message.get("type")
            if kind == "ready":
                self.ready, started = message, True
                continue
            if kind == "bye":
                said_bye = True
                continue
            with self._lock:
                job = self._job
                if job is None or job.done or job.proc is not proc or message.get("id") != job.id:
                    continue
                if kind == "progress":
                    job.fraction = max(job.fraction, float(message.get("fraction", 0.0)))
                    job.message = str(message.get("message", ""))
                    continue
            if kind == "result":
                self._finish(job, message)
            elif kind == "error":
                error = _ERRORS.get(message.get("kind"), EngineError)(str(message.get("message", "")))
                self._end(job, error=error)
        code = proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        with self._lock:
            job = self._job
            if job is None or job.done or job.proc is not proc:
                return
            if said_bye and code == 0:  # it left for idleness before reading the job: send it again
                job.resend = True
                return
        log_tail = _tail(self.log_path) if self.log_path else ""
        if started:
            text = (f"the refinement engine stopped unexpectedly ({_exit_text(code)}). Nothing was changed; "
                    f"the next run starts a new engine. Engine log: {self.log_path}")
        else:
            last = log_tail.strip().splitlines()[-1] if log_tail.strip() else "no output"
            text = f"the refinement engine could not start with {self.python} ({_exit_text(code)}): {last}"
        self._end(job, error=EngineStopped(text, code, log_tail))

    def _finish(self, job: EngineJob, message: dict) -> None:
        try:
            arrays = load_arrays(job.folder / message["file"]) if message.get("file") else {}
            result = self._build_result(job, message, arrays)
        except (OSError, KeyError, ValueError) as exc:  # e.g. cancelled meanwhile: its folder is gone
            self._end(job, error=EngineError(f"could not read the engine's result: {exc}"))
            return
        self._end(job, result=result)

    @staticmethod
    def _build_result(job: EngineJob, message: dict, arrays: dict):
        if job.kind == "refine":
            mask = arrays["mask"]
            original = np.asarray(job.input_mask) > 0
            return EngineResult(mask=mask, probability=arrays["probability"], added=(mask > 0) & ~original,
                                removed=original & (mask == 0), seconds=float(message.get("seconds", 0.0)),
                                warnings=list(message.get("warnings", [])), info=dict(message.get("info", {})))
        if job.kind == "study":
            n = len(message["names"])
            return StudyOutcome(
                names=list(message["names"]), masks=[arrays[f"mask_{i}"] for i in range(n)],
                probabilities=[arrays[f"probability_{i}"] for i in range(n)],
                case_seconds=[float(s) for s in message["case_seconds"]], seconds=float(message["seconds"]),
                train_seconds=float(message["train_seconds"]), steps=int(message["steps"]),
                epochs=int(message["epochs"]), stopped_early=bool(message["stopped_early"]),
                epoch_losses=list(message["epoch_losses"]), warnings=list(message.get("warnings", [])),
                info=dict(message.get("info", {})), config=dict(message.get("config", {})),
                case_info=[dict(i) for i in message.get("case_info") or []])
        return {k: v for k, v in message.items() if k not in ("id", "type")}

    def _end(self, job: EngineJob, result: Any = None, error: Optional[BaseException] = None) -> None:
        if job.done:
            return
        shutil.rmtree(job.folder, ignore_errors=True)  # before ``done``: a finished job has no files left
        with self._lock:
            if job.done:
                return
            if job.cancelled:
                # cancelled at once, the worker can find its input removed and say so before the cancel
                # has ended the job: what it says after a cancel is the cancel's doing
                result, error = None, Cancelled("refinement cancelled")
            job.result, job.error, job.done = result, error, True
            if error is None:
                job.fraction, job.message = 1.0, "done"
            self._last_active = time.monotonic()

    # ------------------------------------------------------------------ jobs
    def _new_job(self, kind: str) -> EngineJob:
        if self.busy:
            raise EngineError("the refinement engine is busy with another job: wait for it or cancel it")
        job_id = next(self._ids)
        folder = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=self._session_folder()))
        return EngineJob(id=job_id, kind=kind, folder=folder, request={"id": job_id, "cmd": kind, "dir": str(folder)})

    def _launch(self, job: EngineJob) -> None:
        """Send ``job`` to a live worker (starting one if needed)."""
        job.message = "waiting for the engine" if self.running else "starting the engine (torch, the prior)"
        for attempt in range(2):
            try:
                self.start()
            except EngineError:
                shutil.rmtree(job.folder, ignore_errors=True)
                raise
            with self._lock:
                job.proc, job.resend = self._proc, False
                job.done, job.error = False, None
                self._job = job
            try:
                write_message(self._proc.stdin, job.request)
                return
            except OSError:  # the worker died before reading it (e.g. exited for idleness): once more
                _stop(self._proc)
                if attempt:
                    self._end(job, error=EngineError("could not send the job to the refinement engine"))

    def submit_refine(self, mask: np.ndarray, grid: Any, image: Optional[np.ndarray] = None,
                      options: Optional[dict] = None, scan: Any = None) -> EngineJob:
        """Start refining ``mask`` ([k, j, i] on ``grid``, a ``geometry.Grid``); ``image`` in HU, optional.

        ``options``: the fields of ``refine.RefineOptions`` as a dict; ``scan``: the whole scan's
        ``modality.ScanFacts`` when ``image`` is a crop of it (``refine_mask``'s ``scan``). Returns at
        once; see poll/wait.
        """
        job = self._new_job("refine")
        mask = np.asarray(mask)
        arrays = {"mask": (mask > 0).astype(np.uint8)}
        if image is not None:
            arrays["image"] = np.asarray(image, dtype=np.float32)
        try:
            save_arrays(job.folder / INPUT_FILE, **arrays)
        except OSError as exc:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise EngineError(f"could not write the job's input to {job.folder}: {exc}") from None
        job.input_mask = mask
        job.request.update(grid=grid_to_dict(grid), options=jsonable(options or {}),
                           scan=None if scan is None else scan.to_dict())
        self._launch(job)
        return job

    def submit_study(self, cases: Sequence[Any], prior: Optional[str] = None, config: Optional[dict] = None,
                     prior_out: Optional[str] = None, out_dir: Optional[str] = None,
                     checkpoint: Optional[str] = None, split_by_prior: bool = False,
                     overwrite: bool = False) -> EngineJob:
        """Start a study on ``cases`` (objects with name, mask, grid, image like ``study.StudyCase``).

        ``config``: ``study.StudyConfig`` fields (``recipe`` picks the defaults); ``prior_out``: where
        to save the study-trained prior; ``out_dir`` / ``checkpoint``: as in ``run_study``.
        ``split_by_prior``: cases that ``--prior auto`` gives different priors are run as one study per
        prior (``study_prior_choice.run_studies_by_prior``: each prior saved beside ``prior_out``,
        replacing an existing one only with ``overwrite``) instead of being refused.
        """
        job = self._new_job("study")
        entries = []
        try:
            for index, case in enumerate(cases):
                arrays = {"mask": (np.asarray(case.mask) > 0).astype(np.uint8)}
                if getattr(case, "image", None) is not None:
                    arrays["image"] = np.asarray(case.image, dtype=np.float32)
                name = f"case-{index}.npz"
                save_arrays(job.folder / name, **arrays)
                entries.append({"name": str(case.name), "grid": grid_to_dict(case.grid), "file": name,
                                "structure": getattr(case, "structure", None),
                                "image_voxel_mm": getattr(case, "image_voxel_mm", None),
                                "scan": None if getattr(case, "scan", None) is None else case.scan.to_dict()})
        except OSError as exc:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise EngineError(f"could not write the study's input to {job.folder}: {exc}") from None
        job.request.update(cases=entries, prior=prior, config=jsonable(config or {}),
                           prior_out=prior_out, out_dir=out_dir, checkpoint=checkpoint,
                           split_by_prior=bool(split_by_prior), overwrite=bool(overwrite))
        self._launch(job)
        return job

    def submit_warm(self, options: Optional[dict] = None) -> EngineJob:
        """Start the worker and load the prior ``options`` (prior, appearance, device) would use."""
        job = self._new_job("warm")
        job.request.update(options=jsonable(options or {}))
        self._launch(job)
        return job

    def poll(self, job: Optional[EngineJob] = None) -> JobStatus:
        """Progress of ``job`` (default: the latest); never blocks (a GUI timer calls it)."""
        current = self._job
        if current is not None and current.resend and not current.done:
            self._launch(current)
        job = job or current
        if job is None:
            return JobStatus(0.0, "", True)
        with self._lock:
            return JobStatus(job.fraction, job.message, job.done, job.error, job.cancelled)

    def result(self, job: Optional[EngineJob] = None):
        """The finished job's result; raises its error (InputError, PriorError, Cancelled, EngineError)."""
        job = job or self._job
        if job is None:
            raise EngineError("no job was submitted to the refinement engine")
        if not job.done:
            raise EngineError("the refinement engine is still working on the job")
        if job.error is not None:
            raise job.error
        return job.result

    def wait(self, timeout: Optional[float] = None, progress: Optional[Callable[[float, str], None]] = None,
             cancel=None, tick: Optional[Callable[[], None]] = None, interval_s: float = 0.05,
             job: Optional[EngineJob] = None):
        """Block until ``job`` (default: the latest) ends and return its result; ``cancel`` (callable or
        Event) cancels it; ``tick()`` is called on every round (e.g. to let a GUI repaint)."""
        job = job or self._job
        cancelled = _cancel_function(cancel)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            status = self.poll(job)
            if progress is not None and (status.fraction, status.message) != last and status.error is None:
                last = (status.fraction, status.message)
                progress(status.fraction, status.message)
            if status.done:
                return self.result(job)
            if cancelled is not None and cancelled():
                self.cancel(job)
                return self.result(job)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel(job)
                raise EngineError(f"the refinement engine did not finish within {timeout:.0f} s; it was stopped")
            if tick is not None:
                tick()
            time.sleep(interval_s)

    def refine(self, mask: np.ndarray, grid: Any, image: Optional[np.ndarray] = None,
               options: Optional[dict] = None, progress=None, cancel=None, scan: Any = None) -> EngineResult:
        """``submit_refine`` then ``wait``: the blocking form."""
        job = self.submit_refine(mask, grid, image, options, scan)
        return self.wait(progress=progress, cancel=cancel, job=job)

    def study(self, cases: Sequence[Any], prior: Optional[str] = None, config: Optional[dict] = None,
              progress=None, cancel=None, **paths) -> StudyOutcome:
        """``submit_study`` then ``wait``: the blocking form."""
        job = self.submit_study(cases, prior, config, **paths)
        return self.wait(progress=progress, cancel=cancel, job=job)

    def cancel(self, job: Optional[EngineJob] = None) -> None:
        """Stop the current job (or ``job``, if it is still the current one) now: the worker is killed
        (the next job starts a new one)."""
        with self._lock:
            current = self._job
            if current is None or current.done or (job is not None and job is not current):
                return
            job = current
            job.cancelled = True
            proc = self._proc
        self._end(job, error=Cancelled("refinement cancelled"))
        if proc is not None:
            _stop(proc)

    def close(self) -> None:
        """Cancel any job, stop the worker and remove the session folder."""
        self.cancel()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                write_message(proc.stdin, {"id": 0, "cmd": "shutdown"})
                proc.wait(STOP_GRACE_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
            _stop(proc)
        for finalizer in self._finalizers:
            finalizer()
        self._finalizers.clear()
        self._session = None

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
