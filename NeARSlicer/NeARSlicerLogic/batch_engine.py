"""``refineStudy(..., workers=N | rayAddress=...)``: the cases run by the engine's own batch
(``nearslicer batch``) in a child process of the engine's Python, on a local process pool or a Ray
cluster. No Qt, no torch here: this process writes a manifest, starts the child, follows the
summary rows it appends, and stops it on cancel.

The output folder is the batch contract's (``NeARSlicerLib.batch``): ``<case>.nii.gz`` for
label-map inputs, ``<case>.seg.nrrd`` (or ``<case>.NeAR.seg.nrrd`` beside an input of that name)
for ``.seg.nrrd`` inputs, and ``summary.csv``.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from NeARSlicerLib.batch import SUMMARY_NAME
from NeARSlicerLib.errors import Cancelled, InputError, NeARError
from NeARSlicerLib.worker_client import PACKAGE_PARENT

POLL_S = 0.2
# refineSegment options the batch command line carries; others are refused rather than ignored
_FLAGS = {"preset": "--preset", "device": "--device", "seed": "--seed", "prior": "--prior", "changes": "--changes"}
_LABEL_NAME = re.compile(r"^Label_(\d+)$")


class EngineBatchError(NeARError):
    """The engine's batch process ended without doing the batch (its last error line is the message)."""


def command(python: str, source: list, outputDir, workers=None, rayAddress=None, overwrite=False, resume=False,
            options=None) -> list:
    """The command line of the child: ``<python> -c <bootstrap> batch <source> --out ... [options]``."""
    options = dict(options or {})
    # True by default; False adds --shape-only / --no-margin-fit / --no-image-trim / --no-image-gate
    switches = ("appearance", "fitMargin", "trimToImage", "imageOpensGate")
    unknown = sorted(k for k in options if k not in _FLAGS and k not in switches)
    if unknown:
        raise InputError(f"option(s) {unknown} are not supported with workers/rayAddress "
                         f"(supported: {sorted(_FLAGS) + list(switches)})")
    # PYTHONPATH is not used for the engine's own modules: Slicer's launcher rewrites it
    bootstrap = (f"import sys; sys.path.insert(0, {str(PACKAGE_PARENT)!r}); "
                 "from NeARSlicerLib.cli import main; sys.exit(main(sys.argv[1:]))")
    args = [python, "-c", bootstrap, "batch", *source, "--out", str(outputDir)]
    if rayAddress:
        args += ["--ray", str(rayAddress)]
    elif workers is not None:
        args += ["--workers", str(int(workers))]
    for key, flag in _FLAGS.items():
        if options.get(key) not in (None, ""):
            args += [flag, str(options[key])]
    if options.get("appearance") is False:
        args.append("--shape-only")
    if options.get("fitMargin") is False:
        args.append("--no-margin-fit")
    if options.get("trimToImage") is False:
        args.append("--no-image-trim")
    if options.get("imageOpensGate") is False:
        args.append("--no-image-gate")
    if overwrite:
        args.append("--overwrite")
    if resume:
        args.append("--resume")
    return args


def writeManifest(path: Path, named: list) -> int:
    """Manifest rows for ``(caseName, case)`` pairs; a list of segments becomes one row per segment.
    Returns the number of rows (cases of the batch)."""
    rows = []
    for caseName, case in named:
        spec = case.get("segment")
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        for index, item in enumerate(specs):
            name = caseName if len(specs) == 1 else f"{caseName}_{item}"
            rows.append({"case": name, "mask": case.get("segmentation") or "", "image": case.get("volume") or "",
                         "label": _labelText(item, case.get("segmentation") or "")})
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["case", "mask", "image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _labelText(item, segmentationPath: str) -> str:
    """A segment spec as the manifest's label: Slicer names a label map's segments ``Label_N``."""
    if item is None or item == "":
        return ""
    text = str(item)
    match = _LABEL_NAME.match(text)
    if match and not segmentationPath.lower().endswith(".seg.nrrd"):
        return match.group(1)
    return text


def readRows(path: Path) -> list:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def runEngineBatch(python: str, cases, named, outputDir, progress=None, cancel=None, workers=None,
                   rayAddress=None, overwrite=False, resume=False, **options) -> list:
    """Run the batch in a child process; returns the summary rows. ``cases`` a folder (discovered by
    the engine itself, the same rule) or ``named`` ``(caseName, case dict)`` pairs."""
    outputDir = Path(outputDir)
    summary = outputDir / SUMMARY_NAME
    report = progress or (lambda fraction, message="": None)
    with tempfile.TemporaryDirectory(prefix="nearslicer-batch-") as folder:
        if isinstance(cases, (str, os.PathLike)):
            source, total = ["--cases", str(cases)], len(named)
        else:
            manifest = Path(folder) / "manifest.csv"
            total = writeManifest(manifest, named)
            source = ["--manifest", str(manifest)]
        args = command(python, source, outputDir, workers, rayAddress, overwrite, resume, options)
        before = {r.get("case") for r in readRows(summary)} if resume else set()
        log = open(Path(folder) / "batch.log", "w+b")
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=(os.name != "nt"))
            try:
                while proc.poll() is None:
                    if cancel is not None and cancel():
                        raise Cancelled("batch cancelled")
                    done = len({r.get("case") for r in readRows(summary)} - before) if summary.exists() else 0
                    report(min(done / max(total, 1), 1.0), f"{done} of {total} cases")
                    time.sleep(POLL_S)
            except BaseException:
                _stop(proc)
                raise
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
        finally:
            log.close()
    lastError = next((line for line in reversed(text.splitlines()) if line.startswith("nearslicer: error:")), "")
    message = lastError[len("nearslicer: error:"):].strip() or text.strip()[-500:]
    if proc.returncode == 2:  # bad input or outputs, refused before anything was computed
        raise InputError(message)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and "case(s) failed" not in message):
        raise EngineBatchError(f"the batch process ended with code {proc.returncode}: {message}")
    report(1.0, "done")
    return readRows(summary)


def _stop(proc) -> None:
    """Stop the batch and its worker processes (a process group of their own)."""
    try:
        if os.name != "nt":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired, OSError):
        try:
            if os.name != "nt":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, OSError):
            pass
        proc.wait()
