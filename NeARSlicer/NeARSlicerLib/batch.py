"""Batch refinement of many cases from files (``nearslicer batch``; Slicer's ``refineStudy`` too).

Each case is refined exactly as ``nearslicer refine`` would refine it (:func:`read_case_inputs`,
``refine_mask`` with the same options: same prior choice, S+A when an image is given, same seed =>
same mask). The output folder follows one contract (README "Batch refinement"):

* ``<out>/<case>.nii.gz``: the refined 0/1 mask on the input's grid, for label-map inputs of one label;
* ``<out>/<case>.seg.nrrd``: for ``.seg.nrrd`` inputs, every original segment plus a refined
  ``"<name> (NeAR)"`` segment per refined one (``<case>.NeAR.seg.nrrd`` when ``<case>.seg.nrrd`` is
  itself an input, i.e. a folder refined into itself); also for a label map of which a case names
  several labels (``"8;9"``, ``"all"``): each label's original segment and its refined one;
* ``<out>/summary.csv``: one row per case and segment (:data:`SUMMARY_COLUMNS`), the rows of a case
  committed together (one atomic rewrite) as soon as it finishes; a failed case is a row with its
  error and the batch goes on.

Nothing lost: every output is checked before anything is computed (never an input, never an
existing file unless ``overwrite``), each file is written atomically (``output_safety``). Resume:
a case is done when the summary holds its rows, none is an error, its output exists and the rows were
made from the inputs the case names now (mask, image, label) with the settings asked now (the rows'
``settings``: the refine options and the manifest's structure); the other cases are run again (a failed
case too: its file may have been mended, or its label corrected in the manifest), so an interrupted
batch resumed ends with the rows and files of an uninterrupted one, none missing or twice, and never
mixes the outputs of two sets of settings.

The per-case work (:func:`run_task`) is a plain function of a picklable :class:`CaseTask`, so the
executors of ``batch_executor`` (in-process, a local process pool, Ray) run the same code.
"""
from __future__ import annotations

import csv
import io as _io
import json
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .boxed_mask import BoxedMask
from .errors import InputError
from .output_safety import (OutputError, atomic_write_bytes, check_output_folder, check_outputs, locked,
                            same_file, summary_columns)

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ["case", "segment", "label", "mask", "image", "output", "voxels_before", "voxels_after", "dice",
                   "confidence", "action", "prior", "modality", "warnings", "seconds", "host", "error",
                   "painted_slices_mm", "slices_interpolated", "image_restored", "image_withdrawn",
                   "image_margin_mm", "image_margin_sides", "image_trimmed", "specks_removed", "specks_filled",
                   "settings"]
# the columns of earlier versions (before painted_slices_mm, before slices_interpolated, before the image
# check's counts, before the margin, trim and specks; 2026-11-28/29; before settings, 2026-12-07): such a
# summary is resumed, not refused
EARLIER_SUMMARY_COLUMNS = (SUMMARY_COLUMNS[:17], SUMMARY_COLUMNS[:18], SUMMARY_COLUMNS[:19], SUMMARY_COLUMNS[:21],
                           SUMMARY_COLUMNS[:26])
# options that say where a case runs, not what it computes: a batch resumed on another device is not redone
PLACE_OPTIONS = ("device",)
WARNING_SEPARATOR = " | "  # the engine's warnings of one segment, in one cell
SEG_SUFFIX = ".seg.nrrd"
BESIDE_SEG_SUFFIX = ".NeAR.seg.nrrd"  # NeARSlicerLib.cases never takes these for cases
MASK_SUFFIX = ".nii.gz"
REFINED_COLOR = (0.2, 0.4, 1.0)
ORIGINAL_COLOR = (0.9, 0.2, 0.2)  # a label map's labels written beside their refined segments: red vs blue
ALL_LABELS = "all"  # a case's label: every label of its label map (every segment of a .seg.nrrd)
LABEL_SEPARATOR = ";"  # a case's label: several labels, "8;9" or "adrenal_gland_left;adrenal_gland_right"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def warnings_cell(warnings) -> str:
    """The engine's warnings of one segment as one CSV cell (whitespace collapsed, ``WARNING_SEPARATOR``)."""
    return WARNING_SEPARATOR.join(" ".join(str(w).split()) for w in (warnings or []))


def result_cells(before: np.ndarray, after: np.ndarray, info: dict, warnings, seconds: float) -> dict:
    """The summary cells of one refined segment: voxels before/after, Dice(input, refined), the engine's
    facts (``engine_cells``) and seconds, as ``nearslicer batch`` and ``nearslicer study`` write them."""
    from .metrics import dice

    before, after = np.asarray(before) > 0, np.asarray(after) > 0
    return {"voxels_before": int(before.sum()), "voxels_after": int(after.sum()), "dice": f"{dice(before, after):.4f}",
            **engine_cells(info, warnings), "seconds": f"{float(seconds):.2f}"}


def engine_cells(info: dict, warnings) -> dict:
    """The summary cells that report the engine's facts of one refined segment (``RefineResult.info`` and its
    warnings), as ``nearslicer batch`` and Slicer's ``refineStudy`` both write them. ``slices_interpolated``:
    for a segment found painted on thick slices, "yes" when the prior was given its painted slices
    interpolated, "no" when its staircase (``--keep-staircase``, a study prior); empty otherwise.
    ``image_restored`` / ``image_withdrawn``: voxels the image check put back / took out of the prior's
    change (``image_evidence``); empty when the output was not checked against an image (or the image
    had too few reference voxels to judge it). ``image_margin_mm``: the margin moved to the image's edge
    all round (mm, + outwards; 0: none found; empty: not fitted), ``image_margin_sides`` the sides moved
    instead (``+i:-1.0 -j:1.0``); ``image_trimmed``: voxels the image's trim removed (empty: not tried);
    ``specks_removed`` / ``specks_filled``: voxels of specks dropped / small holes filled (empty: not cleaned)."""
    painted = info.get("painted_slices_mm")
    check = info.get("image_check") or {}
    check = check if check.get("judged") else {}
    trim = info.get("image_trim") or {}
    trim = trim if trim.get("judged") else {}
    specks = info.get("specks") or {}
    return {"confidence": _fmt(info.get("confidence"), 4), "action": info.get("action") or "",
            "prior": info.get("prior_name") or info.get("prior") or "", "modality": info.get("modality") or "",
            "warnings": warnings_cell(warnings), "painted_slices_mm": _fmt(painted, 1),
            "slices_interpolated": "" if painted is None else ("yes" if info.get("slices_interpolated") else "no"),
            "image_restored": str(int(check["restored"])) if check else "",
            "image_withdrawn": str(int(check["withdrawn"])) if check else "",
            "image_margin_mm": _fmt(info.get("image_margin_mm"), 2),
            "image_margin_sides": " ".join(f"{side}:{float(mm):.1f}" for side, mm in info.get("image_margin_sides") or ()),
            "image_trimmed": str(int(trim["removed"])) if trim else "",
            "specks_removed": str(int(specks["removed"])) if specks else "",
            "specks_filled": str(int(specks["filled"])) if specks else ""}


def _fmt(value, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


@dataclass(frozen=True)
class BatchCase:
    """One entry of a batch: absolute paths; ``label`` a value or segment name (None: the only one,
    or every segment of a ``.seg.nrrd``), several separated by ``;``, or ``all`` (:func:`several_labels`);
    ``error`` set when the entry cannot be run; ``structure`` what the mask is, for ``--prior auto``
    (None: the segment's or the file's name, as ``refine`` reads it)."""

    name: str
    mask: str
    image: Optional[str] = None
    label: Optional[str] = None
    error: str = ""
    structure: Optional[str] = None


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs to refine one case: picklable, paths absolute. ``part`` (index, count): refine
    every count-th of the case's segments from index on and write nothing (``case_parts.py``)."""

    case: BatchCase
    output: str
    options: Dict[str, object] = field(default_factory=dict)  # RefineOptions fields
    part: Optional[Tuple[int, int]] = None


# ------------------------------------------------------------------------------ case lists
def manifest_table(path: Path) -> tuple:
    """(columns, rows) of a manifest CSV, names in lower case and cells stripped: a spreadsheet's
    byte-order mark is ignored, and its cells may be separated by commas or by the semicolons (or
    tabs) that a spreadsheet set to a decimal comma writes. Shared by ``batch`` and ``study``."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    header, _, rest = text.partition("\n")
    hint = header.strip()
    if hint.lower().startswith("sep=") and len(hint) == 5:  # a spreadsheet's "sep=;" line names the separator
        delimiter, text = hint[4], rest
    else:
        delimiter = max(",;\t", key=header.count) if any(c in header for c in ";\t") else ","
    reader = csv.DictReader(_io.StringIO(text, newline=""), delimiter=delimiter)
    cols = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return cols, rows


def read_manifest(path) -> List[BatchCase]:
    """Cases of a CSV with columns ``case,mask`` and optionally ``image,label,structure``; relative paths
    are relative to the CSV's folder. ``structure`` names what a row's mask is, for ``--prior auto`` (a
    mixed study of adrenal glands and other organs whose files are all called ``seg.nii.gz``). A row
    with a bad entry (no mask, a name that is no file name, a repeated name) becomes a case with
    ``error``; a file without the columns is an InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest not found: {path}")
    cols, raw = manifest_table(p)
    if "case" not in cols or "mask" not in cols:
        raise InputError(f"manifest {p.name} needs the columns case and mask (optional: image, label, structure); "
                         f"found {cols}")
    base = p.resolve().parent

    def absolute(value: str) -> Optional[str]:
        return str(Path(os.path.join(base, os.path.expanduser(value)))) if value else None

    cases = [BatchCase(r.get("case", ""), absolute(r.get("mask", "")) or "", absolute(r.get("image", "")),
                       label_cell(r.get("label") or None), structure=r.get("structure") or None)
             for r in raw if any(r.values())]
    return _checked_names(cases, f"manifest {p.name}")


def cases_from_folder(folder) -> List[BatchCase]:
    """Cases found in a folder by ``NeARSlicerLib.cases.discover_cases`` (the rule of Slicer's batch)."""
    from .cases import discover_cases

    found = discover_cases(folder)
    cases = [BatchCase(c.name, str(Path(c.segmentation).absolute()) if c.segmentation else "",
                       str(Path(c.image).absolute()) if c.image else None, None, c.error) for c in found]
    return _checked_names(cases, f"folder {folder}")


def _checked_names(cases: List[BatchCase], where: str) -> List[BatchCase]:
    """Names become file names: refuse path separators and repeats (as errors of those entries)."""
    count: Dict[str, int] = {}
    for c in cases:
        count[c.name] = count.get(c.name, 0) + 1
    out = []
    for c in cases:
        error = c.error
        if not error and not _SAFE_NAME.match(c.name or ""):
            error = (f"case name {c.name!r} in {where} is not usable as a file name "
                     "(letters, digits, '_', '-', '.'; not starting with '.')")
        elif not error and count[c.name] > 1:
            error = f"case name {c.name!r} appears {count[c.name]} times in {where}"
        elif not error and not c.mask:
            error = f"case {c.name}: no mask file given"
        out.append(replace(c, error=error) if error != c.error else c)
    return out


# ------------------------------------------------------------------------------ one case
def label_cell(label: Optional[str]) -> Optional[str]:
    """A manifest's (or ``--label``'s) label as the summary records it: each ``;``-separated part that
    is a whole number written as a decimal (``9.0``, as pandas writes an integer column with gaps) as
    that number (``9``), so that a resume matches the rows it recorded."""
    from .io import label_text

    if label is None:
        return None
    return ";".join(label_text(part) for part in str(label).split(";"))


def several_labels(label: Optional[str]) -> Optional[List[str]]:
    """The labels a case's ``label`` names when it may name several: ``"8;9"`` -> ``["8", "9"]`` (blank
    parts and repeats dropped), ``"all"`` -> ``[]`` (every label of the file); None for one label or none.
    Such a case's output is a ``.seg.nrrd`` (one segment pair per label) whatever its input."""
    if label is None:
        return None
    text = str(label).strip()
    if text.lower() == ALL_LABELS:
        return []
    if LABEL_SEPARATOR not in text:
        return None
    return list(dict.fromkeys(part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip()))


def named_labels(label: Optional[str]) -> Optional[List[str]]:
    """The labels a case's ``label`` names, one or several (``several_labels``); None for every one (no
    label, or ``all``)."""
    several = several_labels(label)
    if several is None:
        return None if label is None else [label]
    return several or None


def read_case_inputs(mask_path: str, image_path: Optional[str], label=None):
    """(mask, grid, image or None, info) as ``nearslicer refine`` reads them (one structure)."""
    from .io import read_mask

    mask, grid, info = read_mask(mask_path, label=label)
    return (mask, grid, read_image_on(image_path, grid, mask_path), info)


def structure_of(mask_path: str, given: Optional[str], info: dict) -> Optional[str]:
    """What the mask is, for ``--prior auto``: ``given`` (``--structure``), else the .seg.nrrd segment's
    name, else the label's name in the file's label table (TotalSegmentator's multi-label output), else the
    name of a single-structure mask file (TotalSegmentator writes adrenal_gland_left.nii.gz)."""
    if given:
        return given
    if info.get("segment"):
        return str(info["segment"])
    if info.get("label_name"):
        return str(info["label_name"])
    if len(info.get("labels") or []) <= 1:
        from .cases import case_stem  # the file-name rule case discovery uses

        return case_stem(mask_path)
    return None


def segment_name(info: dict) -> str:
    """The summary's segment name of a mask ``read_mask`` read: its .seg.nrrd segment's name, else its
    label's name in the file's label table, else ``Label_<value>`` (Slicer's name for a label map's)."""
    return str(info.get("segment") or info.get("label_name") or f"Label_{info['label']}")


def read_image_on(image_path: Optional[str], grid, mask_path: str):
    """The image at ``image_path`` on the mask's ``grid`` (None without a path). An image of the same
    voxels stored flipped, with its axes in another order or around a cropped mask is read on the mask's
    voxels exactly (``geometry.on_lattice``); any other grid is refused, saying what differs."""
    from .geometry import grid_difference, on_lattice
    from .io import read_image

    if not image_path:
        return None
    image, igrid = read_image(image_path)
    if igrid.same_as(grid):
        return image
    same_voxels = on_lattice(image, igrid, grid)
    if same_voxels is None:
        raise InputError(f"image {Path(image_path).name} and mask {Path(mask_path).name} are on different grids "
                         f"({grid_difference(igrid, grid)}), and the mask's voxels are not voxels of the image: "
                         "resample the image onto the mask (in Slicer, export the segmentation with the image "
                         "as its reference geometry)")
    return same_voxels


def _segments_to_refine(case: BatchCase):
    """[(segment name, label value, mask, structure)], grid, image or None, and (.seg.nrrd) every segment
    of the file for the output (the masks of several segments as ``BoxedMask``). A label map gives one
    structure, chosen as ``nearslicer refine`` does; a .seg.nrrd without a label gives each of its
    segments (not earlier NeAR results); a folder, its structure files (``_structure_files``).
    ``structure`` is what ``--prior auto`` reads, as ``nearslicer refine`` finds it."""
    from .io import choose_segment, is_segmentation_file, read_label_masks, read_mask, read_segments

    several = several_labels(case.label)
    if os.path.isdir(case.mask):
        return _structure_files(case)
    if not is_segmentation_file(case.mask):
        if several is None:
            mask, grid, info = read_mask(case.mask, label=case.label)
            return ([(segment_name(info), info["label"], mask, structure_of(case.mask, None, info))], grid,
                    read_image_on(case.image, grid, case.mask), None)
        # several labels of one label map: read once; written as a segmentation, each original beside its result
        read, grid = read_label_masks(case.mask, several or None)
        chosen = [(segment_name(info), info["label"], mask, structure_of(case.mask, None, info)) for mask, info in read]
        _refuse_repeats(chosen, case)
        return chosen, grid, read_image_on(case.image, grid, case.mask), originals_of(chosen)
    table, grid = read_segments(case.mask, boxed=True)
    file_name = os.path.basename(case.mask)
    parts = named_labels(case.label)
    if parts and not table:
        # a label map saved under a .seg.nrrd name (no segment list): each label read as a label map's
        chosen = []
        for part in parts:
            mask, _, info = read_mask(case.mask, label=part)
            chosen.append((segment_name(info), info["label"], BoxedMask.of(mask), structure_of(case.mask, None, info)))
        _refuse_repeats(chosen, case)
        # written as a label map's several labels are: each original (red) beside its refined segment
        table = originals_of(chosen)
    elif parts:
        # the named segments, from the table already read (its name, ID or label value: read_mask's rule)
        named = [choose_segment(table, part, file_name) for part in parts]
        chosen = [(s["name"], s["label_value"], s["mask"], s["name"]) for s in named]
        _refuse_repeats(chosen, case)
    else:
        chosen = [(s["name"], s["label_value"], s["mask"], s["name"]) for s in table if not s["name"].endswith(" (NeAR)")]
        if not chosen:
            raise InputError(f"segmentation {file_name} has no segment to refine")
    empty = [n for n, _, m, _ in chosen if not m.any()]
    if empty:
        raise InputError(f"mask is empty (segment(s) {empty} of {file_name} have no voxels)")
    return chosen, grid, read_image_on(case.image, grid, case.mask), table


def _structure_files(case: BatchCase, part: Optional[Tuple[int, int]] = None):
    """``_segments_to_refine`` of a folder of one mask file per structure (TotalSegmentator's
    ``segmentations/``): each file a segment named by its file name, the case's label naming the files
    to refine (``spleen;liver``), else every file that is not empty (TotalSegmentator writes a file for
    every structure it knows, found or not). ``part`` (index, count): only every count-th of those
    files from index on is read, and their positions among them are returned last instead of the
    originals (a part task's share; the grid is None when all its files are empty)."""
    from .cases import case_stem, structure_files
    from .io import read_mask

    files = {case_stem(p): p for p in structure_files(case.mask)}
    named = [name.strip() for name in named_labels(case.label) or []]
    if named:
        missing = [n for n in named if n not in files]
        if missing:
            listed = ", ".join(sorted(files)[:20]) + (", ..." if len(files) > 20 else "")
            raise InputError(f"no mask file {', '.join(map(repr, missing))} in {case.mask} (it has: {listed})")
    chosen, grid, first, positions = [], None, None, []
    for position, name in enumerate(named or sorted(files)):
        if part is not None and position % part[1] != part[0]:
            continue
        try:
            mask, file_grid, _ = read_mask(str(files[name]))
        except InputError as exc:
            if not named and str(exc).startswith("mask is empty"):
                continue  # a structure this scan does not show
            raise InputError(f"{files[name].name}: {exc}") from None
        if grid is None:
            grid, first = file_grid, files[name]
        elif not file_grid.same_as(grid):
            from .geometry import grid_difference

            raise InputError(f"{files[name].name} and {first.name} are on different grids "
                             f"({grid_difference(file_grid, grid)})")
        chosen.append((name, name, BoxedMask.of(mask), name))
        positions.append(position)
    if part is not None:
        return chosen, grid, None if grid is None else read_image_on(case.image, grid, str(first)), positions
    if not chosen:
        raise InputError(empty_structures(case))
    return chosen, grid, read_image_on(case.image, grid, str(first)), originals_of(chosen)


def empty_structures(case: BatchCase) -> str:
    """The error of a folder of structure files that are all empty."""
    return f"every mask file in {case.mask} is empty: nothing to refine"


def originals_of(chosen: Sequence[tuple]) -> List[dict]:
    """The segment table of a case whose segments are ``chosen`` alone (a label map's, a folder's):
    each original in red, to be written beside its result."""
    return [{"name": name, "mask": mask, "color": ORIGINAL_COLOR} for name, _, mask, _ in chosen]


def _refuse_repeats(chosen: Sequence[tuple], case: BatchCase) -> None:
    """Two of a case's labels that name one structure ("8;adrenal_gland_right") would make two results."""
    names = [name for name, *_ in chosen]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"labels {case.label!r} name {', '.join(map(repr, repeated))} more than once")


def error_text(exc: BaseException) -> str:
    """One line for the summary: ``ErrorType: first line of the message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()


def task_cells(task: CaseTask) -> dict:
    """The summary cells every row of a task's case starts from."""
    case = task.case
    return {"case": case.name, "label": "" if case.label is None else str(case.label), "mask": case.mask,
            "image": case.image or "", "host": socket.gethostname(),
            "settings": settings_text(task.options, case.structure)}


def failed_rows(task: CaseTask, exc: BaseException, seconds: float) -> List[dict]:
    """The one row of a case that failed with ``exc`` (its segment: the case's label)."""
    cells = task_cells(task)
    return [{**cells, "segment": cells["label"], "error": error_text(exc), "seconds": f"{seconds:.2f}"}]


def run_task(task: CaseTask):
    """Refine one case and write its output (atomically); returns its summary rows (all columns).

    Never raises for a bad case: the error is the rows' ``error``. The output is written only when
    every segment of the case was refined (whole or absent). Safe to run twice (a retried task):
    the output is replaced atomically with the same content. A part task (``task.part``) refines its
    share of the segments and returns a ``case_parts.PartResult`` (or its case's error rows) instead.
    """
    case = task.case
    started = time.perf_counter()
    if case.error:
        return [{**task_cells(task), "error": case.error}]
    try:
        # the output may never be one of this case's inputs (re-checked here, where it is written)
        for source in (case.mask, case.image):
            if source and same_file(task.output, source):
                raise OutputError(f"output {task.output} is the input {source}; choose another output folder")
        if task.part is not None:
            from .case_parts import PartResult

            index, count = task.part
            if os.path.isdir(case.mask):  # a folder of structure files: each part reads its own files only
                chosen, grid, image, mine = _structure_files(case, task.part)
                rows, refined = refine_segments(task, chosen, grid, image, boxed=True)
                return PartResult(mine, rows, refined, originals_of(chosen), grid, own_originals=True)
            chosen, grid, image, table = _segments_to_refine(case)
            mine = list(range(len(chosen)))[index::count]
            rows, refined = refine_segments(task, [chosen[i] for i in mine], grid, image, boxed=True)
            return PartResult(mine, rows, refined, table if index == 0 else None, grid)
        chosen, grid, image, table = _segments_to_refine(case)
        rows, refined = refine_segments(task, chosen, grid, image, boxed=table is not None)
        write_case_output(task.output, table, refined, grid)
        return rows
    except Exception as exc:  # noqa: BLE001 - recorded; the batch goes on
        return failed_rows(task, exc, time.perf_counter() - started)


def refine_segments(task: CaseTask, chosen: Sequence[tuple], grid, image, boxed: bool) -> tuple:
    """(rows, [(segment name, refined mask)]) of ``chosen`` (``_segments_to_refine``'s), each refined
    as ``nearslicer refine`` would; the masks as ``BoxedMask`` when ``boxed``."""
    from .refine import RefineOptions, refine_mask

    case, base = task.case, task_cells(task)
    options = RefineOptions(**task.options)
    rows, refined = [], []
    for name, value, mask, structure in chosen:
        t0 = time.perf_counter()
        mask = mask.full() if isinstance(mask, BoxedMask) else mask  # the whole volume, one segment at a time
        with warnings.catch_warnings():  # the engine's notes are in res.warnings; no stderr noise per case
            warnings.simplefilter("ignore", UserWarning)
            # what the mask is: the manifest row's structure, else the options', else the segment's or file's name
            given = case.structure or options.structure or structure
            res = refine_mask(mask, grid, image, replace(options, structure=given))
        rows.append({**base, "segment": name, "label": str(value), "output": task.output,
                     **result_cells(mask, res.mask, res.info, res.warnings, time.perf_counter() - t0), "error": ""})
        # a case's segments are kept as boxes until written: 117 full-size masks of a CT needed tens of GB
        refined.append((name, BoxedMask.of(res.mask) if boxed else res.mask))
    return rows, refined


def write_case_output(output: str, table: Optional[list], refined: Sequence[tuple], grid) -> None:
    """A case's output (atomically): with a segment ``table``, a .seg.nrrd of every original and each
    ``"<name> (NeAR)"`` result; else the one refined mask."""
    from .io import write_mask, write_segmentation

    if table is not None:
        segments = [(s["name"], s["mask"], s["color"] if len(s["color"]) == 3 else (0.5, 0.5, 0.5)) for s in table]
        segments += [(f"{name} (NeAR)", m, REFINED_COLOR) for name, m in refined]
        write_segmentation(output, segments, grid)
    else:
        write_mask(output, refined[0][1], grid)


# ------------------------------------------------------------------------------ outputs + summary
def output_path(out_dir: Path, case: BatchCase) -> Path:
    """``<out>/<case>.seg.nrrd`` for .seg.nrrd inputs, for several labels of a label map and for a folder
    of one mask per structure (``<case>.NeAR.seg.nrrd`` when that is an input of the case), else
    ``<out>/<case>.nii.gz``."""
    from .io import is_segmentation_file

    if is_segmentation_file(case.mask) or several_labels(case.label) is not None or os.path.isdir(case.mask):
        path = out_dir / f"{case.name}{SEG_SUFFIX}"
        if any(p and same_file(path, p) for p in (case.mask, case.image)):
            path = out_dir / f"{case.name}{BESIDE_SEG_SUFFIX}"
        return path
    return out_dir / f"{case.name}{MASK_SUFFIX}"


class CaseSummary:
    """``summary.csv`` of a batch: the rows of each finished case committed in one atomic rewrite.

    Each commit reads the file again under ``output_safety.locked`` and keeps what others wrote
    there meanwhile: a reviewer's ``review`` column and decisions (``review_status.set_review``,
    Slicer's review queue), on a running batch and on one resumed later. The rows of the cases to
    redo (``drop_cases``, a resume) are dropped at the first commit. A summary of an earlier
    version (one of :data:`EARLIER_SUMMARY_COLUMNS`) is resumed and gets today's columns, empty in its
    rows; one with other columns is refused unless ``overwrite``, which keeps the old file until
    the first commit.
    """

    def __init__(self, path: Path, overwrite: bool = False, drop_cases: Iterable[str] = ()):
        self.path = Path(os.path.abspath(os.fspath(path)))
        if not self.path.parent.is_dir():
            raise OutputError(f"output folder {self.path.parent} does not exist (for {self.path.name}); create it first")
        self._replace = overwrite
        self._drop = set(drop_cases)
        self._mine: Optional[tuple] = None  # (stamp, columns, rows, text) of our last write: no re-parse if unchanged
        if not overwrite and self.path.exists():
            self._read()
        self._dirty = bool(self._drop) and self.path.exists()  # rows of cases to redo are dropped at the first commit

    def _read(self) -> tuple:
        """(header, rows) of the file now; refused when its columns are not a batch summary's."""
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = [{k: v or "" for k, v in r.items() if k is not None} for r in reader]
                header = list(reader.fieldnames or [])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OutputError(f"summary {self.path} cannot be read to append to it ({exc})") from None
        if header and summary_columns(header, SUMMARY_COLUMNS, EARLIER_SUMMARY_COLUMNS) is None:
            raise OutputError(f"summary {self.path} has the columns {header}, not {SUMMARY_COLUMNS}; "
                              "pass --overwrite to replace it or choose another file")
        return header, rows

    def _stamp(self) -> tuple:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size  # every rewrite is an atomic rename: a new inode

    def _commit(self, new_rows: Sequence[dict]) -> None:
        with locked(self.path):
            if self._replace or not self.path.exists():
                header, rows, text = [], [], None
            elif self._mine is not None and self._mine[0] == self._stamp():
                _, header, rows, text = self._mine  # nobody wrote since our last commit: append to our text
            else:
                (header, rows), text = self._read(), None
            if self._drop:
                rows, text = [r for r in rows if r.get("case") not in self._drop], None
            columns = summary_columns(header, SUMMARY_COLUMNS, EARLIER_SUMMARY_COLUMNS) if header \
                else SUMMARY_COLUMNS  # ours, then others' (e.g. the reviewer's)
            rows = rows + list(new_rows)
            buf = _io.StringIO()
            w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            if text is None:
                w.writeheader()
            for r in (new_rows if text is not None else rows):
                w.writerow({k: r.get(k, "") for k in columns})
            text = (text or "") + buf.getvalue()
            atomic_write_bytes(self.path, text.encode("utf-8"))
            self._mine = (self._stamp(), columns, rows, text)
        self._replace, self._drop, self._dirty = False, set(), False

    def add_case(self, rows: Sequence[dict]) -> None:
        self._commit(rows)

    def flush(self) -> None:
        """Commit the dropping of stale rows even if no case was added."""
        if self._dirty:
            self._commit([])


def recorded_cases(summary: Path) -> Dict[str, List[dict]]:
    """The rows of an earlier run's ``summary.csv``, by case (none when there is no summary)."""
    if not summary.is_file():
        return {}
    by_case: Dict[str, List[dict]] = {}
    with open(summary, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_case.setdefault(row.get("case", ""), []).append(row)
    return by_case


def recorded_output(recorded: str, out: Path) -> Path:
    """The file a summary row's ``output`` names: the one of that name in the batch folder ``out`` when
    there is one (a batch writes its outputs there, and the folder may have been moved or copied since,
    keeping the absolute paths it recorded), else the recorded path. Read by resume and review alike."""
    path = Path(recorded)
    if not path.is_absolute():
        return out / path
    beside = out / path.name
    return beside if beside.is_file() else path


def completed_cases(recorded: Dict[str, List[dict]], out: Path) -> Dict[str, List[dict]]:
    """Of an earlier run's rows by case (``recorded_cases``), the cases that are done: rows present, none
    an error, every output file there (``recorded_output``)."""
    done = {}
    for name, rows in recorded.items():
        outputs = {r.get("output") for r in rows}
        if not any(r.get("error") for r in rows) and all(o and recorded_output(o, out).is_file() for o in outputs):
            done[name] = rows
    return done


def settings_text(options: Dict[str, object], structure: Optional[str] = None) -> str:
    """The ``settings`` cell of a case's rows: the refine options it was run with and the manifest's
    structure, as sorted compact JSON (one text per set of settings; ``PLACE_OPTIONS`` left out)."""
    chosen = {k: v for k, v in options.items() if k not in PLACE_OPTIONS and v is not None}
    if structure:
        chosen["structure"] = structure
    return json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str)


def settings_change(rows: Sequence[dict], settings: str) -> Optional[str]:
    """None when a case's recorded ``rows`` were made with ``settings`` (``settings_text``), or by a version
    that did not record them (an empty cell: taken as the same, as before); else what differs, in words
    ("preset: default -> quality")."""
    recorded = {r.get("settings") or "" for r in rows} - {""}
    if not recorded or recorded == {settings}:
        return None
    try:
        before, now = json.loads(sorted(recorded)[0]), json.loads(settings)
    except ValueError:
        return "the settings cell of its rows is not readable"
    keys = sorted(set(before) | set(now))
    return ", ".join(f"{k}: {before.get(k, 'default')} -> {now.get(k, 'default')}"
                     for k in keys if before.get(k) != now.get(k)) or "other settings"


def same_inputs(case: BatchCase, rows: Sequence[dict]) -> bool:
    """Whether a case's recorded ``rows`` were made from the mask, image and label the case names now.

    A refined row records the label's value and its segment's name, so a label given by name or by
    value matches either (names as ``read_mask`` matches them: case and surrounding blanks ignored); a
    .seg.nrrd segment given by its ID is looked up in the file's segment list (its header only)."""
    from .io import is_segmentation_file

    given = None if case.label is None else str(case.label).strip()
    several = several_labels(given)
    wanted = [given] if several is None and given is not None else (several or [])
    refined = [r for r in rows if not r.get("error")]
    aliases = {part: {part} for part in wanted}
    if is_segmentation_file(case.mask) and refined:
        for part in wanted:
            if not any(_names(r, part) for r in refined):
                aliases[part] |= _segment_id_names(case.mask, part)

    def names(row: dict, part: str) -> bool:
        return any(_names(row, alias) for alias in aliases.get(part, {part}))

    for r in rows:
        if (r.get("mask") or "") != case.mask or (r.get("image") or "") != (case.image or ""):
            return False
        if r.get("error"):  # recorded with the label as given
            if (r.get("label") or "").strip() != (given or ""):
                return False
        elif wanted and not any(names(r, part) for part in wanted):
            return False
    return not refined or all(any(names(r, part) for r in refined) for part in wanted)


def _names(row: dict, part: str) -> bool:
    """Whether a summary row is of the label ``part``: its label value, or its segment's name (any case)."""
    return part == (row.get("label") or "").strip() or part.lower() == (row.get("segment") or "").strip().lower()


def _segment_id_names(path: str, part: str) -> set:
    """The names of the segments of the .seg.nrrd ``path`` whose ID is ``part``; none when
    the file cannot be read (the case is then run again and records why)."""
    from .io import segment_table

    try:
        return {str(s["name"]) for s in segment_table(path) if s["id"] == part}
    except InputError:
        return set()


@dataclass
class BatchPlan:
    """The tasks still to run, the cases skipped (resume) and the summary to append to."""

    tasks: List[CaseTask]
    skipped: List[str]
    summary: CaseSummary
    out_dir: Path
    retried: List[str] = field(default_factory=list)  # resume: cases whose recorded rows are errors, run again
    changed: List[str] = field(default_factory=list)  # resume: cases whose inputs differ from their rows, run again
    # resume: cases whose rows were made with other settings, run again, with what differs
    other_settings: Dict[str, str] = field(default_factory=dict)
    # resume: outputs of the rows dropped for a case run again that its new output will not replace (a
    # case's label map became several labels: <case>.nii.gz, now <case>.seg.nrrd); removed with those rows
    stale_outputs: List[Path] = field(default_factory=list)
    # resume: cases of the summary that this batch does not list (renamed or left out); their rows and
    # outputs are kept, since they may be the only copy of a result
    not_listed: List[str] = field(default_factory=list)

    def drop_stale(self) -> None:
        """Commit the dropping of the rows of the cases to run again, then remove their stale outputs."""
        self.summary.flush()
        for path in self.stale_outputs:
            path.unlink(missing_ok=True)


def _stale_outputs(out: Path, case: BatchCase, rows: Sequence[dict], target: Path,
                   is_input: Callable[[Path], bool]) -> List[Path]:
    """The files the recorded ``rows`` of ``case`` name as its output that ``target`` does not replace:
    only files of this batch's own naming in ``out`` (``<case>.nii.gz``, ``<case>.seg.nrrd``,
    ``<case>.NeAR.seg.nrrd``), never an input (``is_input``)."""
    own = {f"{case.name}{suffix}".lower() for suffix in (MASK_SUFFIX, SEG_SUFFIX, BESIDE_SEG_SUFFIX)}
    stale = []
    for recorded in sorted({r.get("output") or "" for r in rows} - {""}):
        path = recorded_output(recorded, out)
        if (path.name.lower() in own and os.path.realpath(path.parent) == os.path.realpath(out)
                and not is_input(path) and not same_file(path, target) and path.is_file()):
            stale.append(path)
    return stale


def _input_check(cases: Sequence[BatchCase]) -> Callable[[Path], bool]:
    """Whether a path is one of the batch's input files: by resolved path, or (existing) by inode, which
    also catches hard links (O(cases) once, then O(1) per path)."""
    keys, inodes = set(), set()
    for c in cases:
        for p in (c.mask, c.image):
            if p:
                keys.add(os.path.normcase(os.path.realpath(p)))
                try:
                    st = os.stat(p)
                    inodes.add((st.st_dev, st.st_ino))
                except OSError:
                    pass

    def is_input(path: Path) -> bool:
        if os.path.normcase(os.path.realpath(path)) in keys:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in inodes

    return is_input


def plan_batch(cases: Sequence[BatchCase], out_dir, options: Dict[str, object], resume: bool = False,
               overwrite: bool = False) -> BatchPlan:
    """Check every output before anything is computed and build the tasks.

    Raises OutputError (an InputError) when an output is an input, when an output or the summary
    exists without ``resume``/``overwrite``, or when the folder cannot be written.
    """
    if resume and overwrite:
        raise InputError("give either --resume (continue a batch) or --overwrite (start it again), not both")
    out = check_output_folder(out_dir, create=True)
    summary_path = out / SUMMARY_NAME
    recorded = recorded_cases(summary_path) if resume else {}
    done = completed_cases(recorded, out)
    if summary_path.exists() and not (resume or overwrite):
        raise OutputError(f"{summary_path} exists: pass --resume to continue that batch or --overwrite to start again")
    is_input = _input_check(cases)  # an output may be none of them
    tasks, skipped, retried, changed, other_settings, stale, seen_outputs = [], [], [], [], {}, [], set()
    for c in cases:
        difference = settings_change(recorded[c.name], settings_text(options, c.structure)) \
            if c.name in recorded else None
        if c.name in recorded and not same_inputs(c, recorded[c.name]):
            changed.append(c.name)
        elif difference is not None:
            other_settings[c.name] = difference
        elif c.name in done:
            skipped.append(c.name)
            continue
        elif any(r.get("error") for r in recorded.get(c.name, ())):
            retried.append(c.name)
        target = output_path(out, c)
        key = os.path.normcase(os.path.realpath(target))
        if not c.error:
            if is_input(target):
                raise OutputError(f"output {target} of case {c.name} is an input file of the batch; choose another "
                                  "--out (NeARSlicer never modifies an input)")
            if key.lower() in seen_outputs:
                raise OutputError(f"two cases would write {target}; rename one")
            seen_outputs.add(key.lower())
            # an output left by an interrupted run (no summary row yet) is ours to replace on resume
            if target.exists() and not (overwrite or resume):
                raise OutputError(f"output {target} exists; pass --overwrite to replace it or --resume to continue")
        tasks.append(CaseTask(c, str(target), dict(options)))
        stale += _stale_outputs(out, c, recorded.get(c.name, ()), target, is_input)
    check_outputs([summary_path], may_exist=[summary_path], overwrite=overwrite)
    redo = [t.case.name for t in tasks]
    summary = CaseSummary(summary_path, overwrite=overwrite and not resume, drop_cases=redo if resume else ())
    listed = {c.name for c in cases}
    return BatchPlan(tasks, skipped, summary, out, retried, changed, other_settings, stale,
                     [name for name in recorded if name not in listed])


@dataclass
class BatchOutcome:
    """Counts of a finished batch (rows are in ``summary``)."""

    done: int
    failed: int
    skipped: int
    seconds: float
    summary: Path
    failed_cases: List[str] = field(default_factory=list)
    retried: List[str] = field(default_factory=list)  # resume: failed before, run again
    changed: List[str] = field(default_factory=list)  # resume: inputs changed since their rows, run again
    # resume: made with other settings (what differs), run again
    other_settings: Dict[str, str] = field(default_factory=dict)
    not_listed: List[str] = field(default_factory=list)  # resume: in the summary, not in this batch; kept


def run_batch(cases: Sequence[BatchCase], out_dir, options: Optional[Dict[str, object]] = None, executor=None,
              resume: bool = False, overwrite: bool = False,
              on_case: Optional[Callable[[str, List[dict]], None]] = None, progress_bar: bool = True) -> BatchOutcome:
    """Refine ``cases`` into ``out_dir`` with ``executor`` (``batch_executor``; default: in-process).

    Rows are committed to ``summary.csv`` as each case finishes; ``on_case(name, rows)`` is called
    after that. A tqdm bar with ETA goes to stderr when ``progress_bar``.
    """
    from tqdm import tqdm

    from .batch_executor import SequentialExecutor
    from .case_parts import CaseParts, split

    t0 = time.perf_counter()
    plan = plan_batch(cases, out_dir, dict(options or {}), resume=resume, overwrite=overwrite)
    executor = executor or SequentialExecutor()
    failed: List[str] = []
    done = 0
    plan.drop_stale()
    def tasks():
        # fewer cases than workers: a case's segments are shared among the idle ones. Drawn when the
        # executor asks for its first task, by which time a Ray executor knows its cluster's workers
        yield from split(plan.tasks, getattr(executor, "workers", None))

    parts = CaseParts()
    with tqdm(total=len(plan.tasks), desc="batch", unit="case", disable=not progress_bar, mininterval=0.5,
              dynamic_ncols=True) as bar:
        for task, rows in executor.map(tasks()):
            if task.part is not None:
                rows = parts.add(task, rows)
                if rows is None:
                    continue
            plan.summary.add_case(rows)
            done += 1
            if any(r.get("error") for r in rows):
                failed.append(task.case.name)
                bar.set_postfix_str(f"{len(failed)} failed", refresh=False)
            bar.update(1)
            if on_case is not None:
                on_case(task.case.name, rows)
    return BatchOutcome(done, len(failed), len(plan.skipped), time.perf_counter() - t0, plan.summary.path, failed,
                        plan.retried, plan.changed, plan.other_settings, plan.not_listed)
