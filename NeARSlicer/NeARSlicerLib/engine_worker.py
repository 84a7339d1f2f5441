"""The engine worker process: ``python -m NeARSlicerLib.engine_worker [--idle-timeout S]``.

Runs refinements (and studies) for an application that must not host torch itself (Slicer), one
job at a time, as requests arrive on stdin (see ``engine_protocol``). The process stays alive
between jobs so the prior stays loaded (the ``fast`` preset then costs well under a second), and
exits after ``--idle-timeout`` seconds without a request, or when stdin closes, which returns its
memory (GPU memory included) to the system.

stdout carries protocol messages only: file descriptor 1 is pointed at stderr at start-up, so a
library that prints cannot corrupt the protocol. Logs and tracebacks go to stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Callable, Optional


from .engine_protocol import INPUT_FILE, PROTOCOL, RESULT_FILE, load_arrays, read_message, save_arrays, \
    write_message
from .errors import NeARError

log = logging.getLogger("nearslicer.engine")
DEFAULT_IDLE_TIMEOUT_S = 300.0
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress messages a second reach the application


def one_line(text: str) -> str:
    """The first non-empty line of ``text`` (an error message shown to the user is one line)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for an error reply; unexpected errors are labelled as internal."""
    if isinstance(exc, NeARError):
        return type(exc).__name__, one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "OutOfMemory", ("out of memory while refining: try the fast preset, a smaller margin, or device cpu"
                               + (f" ({one_line(str(exc))})" if one_line(str(exc)) else ""))
    return "InternalError", f"internal error: {type(exc).__name__}: {one_line(str(exc))}"


class Reporter:
    """Sends throttled ``progress`` messages for one job (never backwards, always the final 1.0)."""

    def __init__(self, send: Callable[[dict], None], job_id):
        self.send, self.job_id = send, job_id
        self.fraction, self.message, self.sent_at = -1.0, None, 0.0

    def __call__(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), self.fraction, 0.0), 1.0)
        now = time.monotonic()
        if message == self.message and fraction < 1.0 and now - self.sent_at < PROGRESS_INTERVAL_S:
            return
        self.fraction, self.message, self.sent_at = fraction, message, now
        self.send({"id": self.job_id, "type": "progress", "fraction": fraction, "message": str(message)})


class Worker:
    """Serves requests from ``requests`` (a queue of raw lines, None at end of input)."""

    def __init__(self, out: IO[bytes], idle_timeout_s: float):
        self.out, self.idle_timeout_s = out, float(idle_timeout_s)
        self.requests: "queue.Queue[Optional[bytes]]" = queue.Queue()

    def send(self, message: dict) -> None:
        write_message(self.out, message)

    def read_stdin(self, stream: IO[bytes]) -> None:
        """Reader thread: every line into the queue; None once the application closes the pipe."""
        try:
            for line in stream:
                if line.strip():
                    self.requests.put(line)
        finally:
            self.requests.put(None)

    def serve(self) -> int:
        """Answer requests until stdin closes, a ``shutdown`` request or the idle timeout; exit code."""
        import torch

        from .device import pick_device

        device = pick_device("auto")
        self.send({"type": "ready", "protocol": PROTOCOL, "pid": os.getpid(), "python": sys.executable,
                   "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)})
        while True:
            try:
                line = self.requests.get(timeout=self.idle_timeout_s if self.idle_timeout_s > 0 else None)
            except queue.Empty:
                log.info("idle for %.0f s: exiting to release memory", self.idle_timeout_s)
                self.send({"type": "bye", "reason": "idle"})
                return 0
            if line is None:
                log.info("input closed: exiting")
                return 0
            job_id = None
            try:
                request = read_message(line)
                job_id = request.get("id")
                cmd = request.get("cmd")
                if cmd == "shutdown":
                    self.send({"id": job_id, "type": "bye", "reason": "shutdown"})
                    return 0
                handler = {"refine": self.refine, "study": self.study, "warm": self.warm}.get(cmd)
                if handler is None:
                    raise ValueError(f"unknown request {cmd!r}")
                reply = handler(request, Reporter(self.send, job_id))
                self.send({"id": job_id, "type": "result", **reply})
            except Exception as exc:  # every failure is one reply; the worker serves the next job
                kind, message = describe_error(exc)
                if kind in ("InternalError", "OutOfMemory", "RefinementError"):
                    log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                else:
                    log.info("job %s: %s: %s", job_id, kind, message)
                self.send({"id": job_id, "type": "error", "kind": kind, "message": message})
                self._release_cuda_cache()

    @staticmethod
    def _release_cuda_cache() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ jobs
    @staticmethod
    def _grid(values: dict):
        from .geometry import Grid

        return Grid(tuple(values["shape"]), tuple(values["spacing"]), tuple(values["origin"]),
                    tuple(values["direction"]))

    def refine(self, request: dict, report: Reporter) -> dict:
        """``refine_mask`` on ``<dir>/input.npz`` (mask, optional image); writes ``<dir>/result.npz``."""
        from .errors import InputError
        from .modality import ScanFacts
        from .refine import RefineOptions, refine_mask

        folder = Path(request["dir"])
        arrays = load_arrays(folder / INPUT_FILE)
        try:
            options = RefineOptions(**(request.get("options") or {}))
        except TypeError as exc:
            raise InputError(f"unknown refinement option: {one_line(str(exc))}") from None
        result = refine_mask(arrays["mask"], self._grid(request["grid"]), arrays.get("image"), options,
                             progress=report, scan=ScanFacts.from_dict(request.get("scan")))
        save_arrays(folder / RESULT_FILE, mask=result.mask, probability=result.probability)
        return {"file": RESULT_FILE, "seconds": result.seconds, "warnings": result.warnings, "info": result.info}

    def study(self, request: dict, report: Reporter) -> dict:
        """``run_study`` on the cases of the request; optionally saves the trained prior."""
        from .errors import InputError
        from .modality import ScanFacts
        from .study import StudyCase, StudyConfig, run_study, save_study_prior

        folder = Path(request["dir"])
        cases = []
        for entry in request["cases"]:
            arrays = load_arrays(folder / entry["file"])
            cases.append(StudyCase(entry["name"], arrays["mask"], self._grid(entry["grid"]), arrays.get("image"),
                                   structure=entry.get("structure"), image_voxel_mm=entry.get("image_voxel_mm"),
                                   scan=ScanFacts.from_dict(entry.get("scan"))))
        config = dict(request.get("config") or {})
        recipe = config.pop("recipe", "fast")
        if "milestones" in config:
            config["milestones"] = tuple(config["milestones"])
        try:
            cfg = StudyConfig.for_recipe(recipe, **config)
        except TypeError as exc:
            raise InputError(f"unknown study option: {one_line(str(exc))}") from None
        if request.get("split_by_prior"):
            # one study per prior ``auto`` gives the cases; the reply is one study's, ``info["studies"]`` says which
            from .study_prior_choice import run_studies_by_prior

            if request.get("out_dir") or request.get("checkpoint"):
                raise InputError("a study split by prior takes prior_out only (no out_dir or checkpoint)")
            runs = run_studies_by_prior(cases, request.get("prior"), cfg, prior_out=request.get("prior_out"),
                                        overwrite=bool(request.get("overwrite")), progress=report)
            info = {k: v for k, v in runs[0].result.info.items() if k not in ("prior_meta", "prior")}
            info["studies"] = [{"label": run.label, "prior": str(run.prior),
                                "cases": [cases[i].name for i in run.cases],
                                "prior_out": str(run.prior_out) if run.prior_out else None} for run in runs]
            return self._study_reply(folder, cases, [(run.cases, run.result) for run in runs], info)
        result = run_study(cases, request.get("prior"), cfg, out_dir=request.get("out_dir"),
                           checkpoint=request.get("checkpoint"), progress=report)
        if request.get("prior_out"):
            save_study_prior(result, request["prior_out"])
        info = {k: v for k, v in result.info.items() if k != "prior_meta"}
        return self._study_reply(folder, cases, [(range(len(cases)), result)], info)

    @staticmethod
    def _study_reply(folder: Path, cases: list, runs: list, info: dict) -> dict:
        """Write ``<dir>/result.npz`` and the reply of a study made of ``runs`` ((case indices, StudyResult),
        one per prior): every case's result in the order of ``cases``, the runs' counts added up."""
        n = len(cases)
        masks, probs, seconds, infos = [None] * n, [None] * n, [0.0] * n, [{}] * n
        for idx, r in runs:
            for j, i in enumerate(idx):
                masks[i], probs[i], seconds[i] = r.masks[j], r.probabilities[j], r.case_seconds[j]
                infos[i] = r.case_info[j] if r.case_info else {}
        arrays = {}
        for i, (mask, prob) in enumerate(zip(masks, probs)):
            arrays[f"mask_{i}"], arrays[f"probability_{i}"] = mask, prob
        save_arrays(folder / RESULT_FILE, **arrays)
        results = [r for _, r in runs]
        return {"file": RESULT_FILE, "names": [c.name for c in cases], "case_seconds": seconds,
                "seconds": sum(r.seconds for r in results), "train_seconds": sum(r.train_seconds for r in results),
                "steps": sum(r.steps for r in results), "epochs": max(r.epochs for r in results),
                "stopped_early": all(r.stopped_early for r in results),
                "epoch_losses": [x for r in results for x in r.epoch_losses],
                "warnings": [w for r in results for w in r.warnings], "info": info,
                "config": results[0].config.to_dict(),
                # per case its refinement's facts; none for recipes that decode without refine
                "case_info": infos if any(r.case_info for r in results) else []}

    def warm(self, request: dict, report: Reporter) -> dict:
        """Load a prior ahead of the first job (``prior``, ``appearance``, ``device`` as in RefineOptions)."""
        from .device import pick_device
        from .prior import resolve_prior
        from .refine import PRIOR_CACHE

        options = request.get("options") or {}
        path = resolve_prior(options.get("prior"), with_image=bool(options.get("appearance", True)))
        device = pick_device(options.get("device", "auto"))
        PRIOR_CACHE.get(path, device)
        report(1.0, "prior loaded")
        return {"prior": str(path), "device": str(device)}


def protocol_stream() -> IO[bytes]:
    """A private binary stream on the original stdout; fd 1 then points at stderr (for stray prints)."""
    fd = os.dup(sys.stdout.fileno())
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return os.fdopen(fd, "wb", buffering=0)


def main(argv: Optional[list[str]] = None) -> None:
    """Serve requests until told to stop; ends the process itself (never returns)."""
    parser = argparse.ArgumentParser(prog="python -m NeARSlicerLib.engine_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help="seconds without a request before the worker exits (0: never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s engine[%(process)d] %(message)s")
    out = protocol_stream()
    worker = Worker(out, args.idle_timeout)
    threading.Thread(target=worker.read_stdin, args=(sys.stdin.buffer,), name="stdin", daemon=True).start()
    try:
        code = worker.serve()
    except BrokenPipeError:  # the application went away
        code = 0
    # os._exit: a normal interpreter shutdown aborts while the stdin thread is blocked in a read
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
