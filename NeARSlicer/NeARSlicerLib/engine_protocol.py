"""The wire format between an application (Slicer) and the engine worker process.

Messages are JSON objects, one per line (UTF-8): requests on the worker's stdin, replies on its
stdout. Arrays never travel in a message: they are ``.npz`` files (no pickle, read with
``allow_pickle=False``) in a private job folder whose path the request names. Pure numpy, so the
client side needs neither torch nor SciPy.

Requests: ``{"id", "cmd": "refine" | "study" | "warm" | "shutdown", "dir", ...}``.
Replies: ``{"type": "ready"}`` once at start-up, then per request ``progress`` messages and one
``result`` or ``error`` (``kind`` = the error class, ``message`` = one line).
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

PROTOCOL = "nearslicer-engine-1"
INPUT_FILE = "input.npz"
RESULT_FILE = "result.npz"
# the RefineOptions fields a study passes on to every case's final refinement (``StudyConfig.refine_options``):
# the do-no-harm settings a user chose for the batch; the study sets the prior, preset, seed, scale itself
STUDY_REFINE_OPTIONS = ("keep_threshold", "change_policy", "fit_margin", "trim_to_image", "image_opens_gate")


def grid_to_dict(grid: Any) -> dict:
    """A ``geometry.Grid`` (or any object with its four fields) as plain JSON values."""
    return {
        "shape": [int(n) for n in grid.shape],
        "spacing": [float(s) for s in grid.spacing],
        "origin": [float(o) for o in grid.origin],
        "direction": [float(d) for d in np.ravel(grid.direction)],
    }


def save_arrays(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to ``path`` (.npz, uncompressed: the folder is private and short-lived).

    Written under a unique temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex}.npz")
    try:
        np.savez(tmp, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` written by :func:`save_arrays`; object arrays (pickle) are refused."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def jsonable(value: Any) -> Any:
    """``value`` with tuples, numpy scalars/arrays and paths turned into JSON types (NaN -> None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_message(stream: IO[bytes], message: dict) -> None:
    """One message as one line, flushed at once (the reader polls it)."""
    stream.write(json.dumps(jsonable(message), separators=(",", ":")).encode("utf-8") + b"\n")
    stream.flush()


def read_message(line: bytes) -> dict:
    """The message on one line; ValueError if it is not a JSON object."""
    message = json.loads(line.decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {type(message).__name__}")
    return message
