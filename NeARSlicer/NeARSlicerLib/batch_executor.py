"""Where the cases of a batch run: in this process, on a local process pool, or on a Ray cluster.

Every executor has ``map(tasks) -> iterator of (task, rows)``: it runs ``batch.run_task`` on each
``CaseTask`` and yields the rows as cases finish (not in order). Tasks are handed out as workers
free up, never more than a few per worker at a time, so memory does not grow with the number of
cases. Each worker uses one torch thread and keeps its prior loaded between cases (the engine's
``PRIOR_CACHE`` lives as long as the worker process), and refines exactly as in-process: the
results of every executor are the same masks.

Ray is optional (``pip install nearslicer[ray]``); it is imported only by :class:`RayExecutor`.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Iterable, Iterator, List, Optional, Tuple

from .batch import CaseTask, error_text, run_task
from .output_safety import remove_temporaries

Result = Tuple[CaseTask, List[dict]]
IN_FLIGHT_PER_WORKER = 2  # one running, one waiting: workers never idle, memory stays bounded


def one_thread() -> None:
    """Limit this process to one compute thread (set before torch starts its thread pools)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a reused worker): keep it
        pass


def _failed(task: CaseTask, message: str) -> List[dict]:
    """The rows of a case whose worker could not return them."""
    c = task.case
    return [{"case": c.name, "segment": "" if c.label is None else str(c.label),
             "label": "" if c.label is None else str(c.label), "mask": c.mask, "image": c.image or "",
             "error": message}]


class SequentialExecutor:
    """One case after another in this process (the reference the others are compared with)."""

    workers = 1

    def map(self, tasks: Iterable[CaseTask]) -> Iterator[Result]:
        for task in tasks:
            yield task, run_task(task)


class LocalExecutor:
    """A pool of ``workers`` processes (default: the cores this process may use), one torch thread each.

    Processes are started with ``spawn`` (safe with torch and CUDA). If a worker dies (killed, out
    of memory), the pool is restarted and the cases it held are run again; a case held by a dying
    pool twice is recorded as failed.
    """

    def __init__(self, workers: Optional[int] = None, max_attempts: int = 2):
        self.workers = int(workers) if workers else default_workers()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_attempts = max_attempts

    def _pool(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=one_thread)

    def map(self, tasks: Iterable[CaseTask]) -> Iterator[Result]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        source = iter(tasks)
        retry: deque = deque()  # (task, attempts so far) to run again after a pool broke
        limit = IN_FLIGHT_PER_WORKER * self.workers
        pool = self._pool()
        pending: dict = {}  # future -> (task, attempts)
        try:
            while True:
                while len(pending) < limit:
                    if retry:
                        task, attempts = retry.popleft()
                    else:
                        task = next(source, None)
                        attempts = 0
                        if task is None:
                            break
                    pending[pool.submit(run_task, task)] = (task, attempts + 1)
                if not pending:
                    return
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                broken = False
                for future in finished:
                    task, attempts = pending.pop(future)
                    try:
                        yield task, future.result()
                    except BrokenProcessPool:
                        broken = True
                        if attempts >= self.max_attempts:
                            yield task, _failed(task, f"worker process died {attempts} times while refining this case")
                        else:
                            retry.append((task, attempts))
                if broken:  # every other case of the dead pool is run again on a new one
                    for future, (task, attempts) in pending.items():
                        retry.append((task, attempts))
                    pending.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._pool()
        except BaseException:
            # interrupted (Ctrl-C) or closed early (a cancelled batch): the workers stop at once, where
            # a pool's shutdown would let them finish their case and start the ones already queued to
            # them, writing outputs that no summary row records
            _kill_workers(pool)
            _drop_outputs_in_flight(task for task, _ in pending.values())
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _kill_workers(pool) -> None:
    """Kill a ProcessPoolExecutor's worker processes (its own method from Python 3.14 on)."""
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.join()


def _drop_outputs_in_flight(tasks: Iterable[CaseTask]) -> None:
    """The temporary files that killed workers left beside the outputs of ``tasks``."""
    for task in tasks:
        remove_temporaries(task.output)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _ray_run_task(task: CaseTask) -> List[dict]:
    """``run_task`` in a Ray worker: one torch thread (Ray gives each task one CPU)."""
    import torch

    torch.set_num_threads(1)
    return run_task(task)


class RayExecutor:
    """The same tasks on a Ray cluster: ``address`` ``"auto"`` (the cluster ``ray start`` made on this
    machine, else a new local one) or ``ray://host:10001`` / ``host:6379``.

    Paths must be on storage every node sees (the same absolute path), and ``nearslicer`` installed
    on every node. A task whose worker or node dies is retried (``max_retries``) on another one; it
    writes its output atomically, so a retry replaces a half-done attempt by the same file.
    ``gpus_per_task`` > 0 asks Ray for that share of a GPU per case (``device="auto"`` then uses it).
    """

    def __init__(self, address: Optional[str] = "auto", gpus_per_task: float = 0.0, max_retries: int = 3,
                 cpus_per_task: float = 1.0):
        if gpus_per_task < 0:
            raise ValueError(f"gpus_per_task must be >= 0, got {gpus_per_task}")
        self.address, self.gpus_per_task = address, float(gpus_per_task)
        self.max_retries, self.cpus_per_task = int(max_retries), float(cpus_per_task)
        self.workers = None

    def map(self, tasks: Iterable[CaseTask]) -> Iterator[Result]:
        try:
            import ray
        except ImportError:
            from .errors import InputError

            raise InputError("--ray needs Ray: pip install 'nearslicer[ray]' (or pip install 'ray[default]')") from None
        started_here = not ray.is_initialized()
        if started_here and self.address in (None, "", "auto"):
            try:  # the cluster `ray start` made on this machine (or RAY_ADDRESS)...
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:  # ...else a new one on this machine, stopped at the end
                ray.init(log_to_driver=False, include_dashboard=False)
        elif started_here:
            ray.init(address=self.address, log_to_driver=False)
        pending: dict = {}  # object ref -> task
        try:
            remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                max_retries=self.max_retries)(_ray_run_task)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self.workers = max(1, int(cpus // max(self.cpus_per_task, 1e-9)))
            limit = IN_FLIGHT_PER_WORKER * self.workers
            source = iter(tasks)
            while True:
                while len(pending) < limit:
                    task = next(source, None)
                    if task is None:
                        break
                    pending[remote.remote(task)] = task
                if not pending:
                    return
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    rows = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # retries used up: recorded, the batch goes on
                    rows = _failed(task, f"Ray task failed: {error_text(exc)}")
                yield task, rows
        except BaseException:  # interrupted or closed early: no task still running may write an output
            for ref in pending:
                ray.cancel(ref, force=True)
            _drop_outputs_in_flight(pending.values())
            raise
        finally:
            if started_here:
                ray.shutdown()


def make_executor(workers: Optional[int] = None, ray_address: Optional[str] = None, gpus_per_task: float = 0.0):
    """The executor for the CLI's options: Ray when ``ray_address``; else a pool of ``workers``
    processes (None: one per core); ``workers=0`` runs in this process."""
    if ray_address:
        return RayExecutor(ray_address, gpus_per_task=gpus_per_task)
    if gpus_per_task:
        from .errors import InputError

        raise InputError("--gpus-per-task is a Ray option: give --ray auto or --ray ADDRESS")
    if workers == 0:
        return SequentialExecutor()
    if workers is not None and workers < 0:
        from .errors import InputError

        raise InputError(f"--workers must be >= 0, got {workers}")
    return LocalExecutor(workers)
