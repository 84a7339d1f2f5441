"""Reading and writing masks, images and Slicer segmentations with their exact geometry.

NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) go through SimpleITK; Slicer
segmentations (.seg.nrrd, .seg.nhdr) go through pynrrd so their segment names/label values/layers are
kept. Files made of a header and a data file (.nhdr, .mhd, .seg.nhdr) are read, never written: a
rename cannot replace a pair of files at once. Arrays are ``[k, j, i]``;
geometry is a :class:`~NeARSlicerLib.geometry.Grid` (LPS, mm). Writes are atomic: a temporary
file in the destination folder is renamed over the target only once fully written.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import nrrd
import numpy as np
import SimpleITK as sitk

from .boxed_mask import BoxedMask, label_boxes
from .errors import InputError
from .geometry import Grid, check_volume_shape
from .output_safety import atomic_write as _atomic_write

__all__ = ["read_mask", "read_image", "write_mask", "write_image", "write_segmentation", "read_segments",
           "atomic_write"]

_SEG_EXTS = (".seg.nrrd", ".seg.nhdr")
# read by SimpleITK, by their kind
_SITK_KINDS = {".nrrd": "nrrd", ".nhdr": "nhdr", ".mha": "mha", ".mhd": "mhd"}
SEG_KINDS = ("seg.nrrd", "seg.nhdr")
_LPS_NAMES = ("left-posterior-superior", "lps")
_RAS_NAMES = ("right-anterior-superior", "ras")


def _kind(path: str) -> str:
    """'seg.nrrd', 'seg.nhdr', 'nifti', 'nrrd', 'nhdr', 'mha' or 'mhd' from the file name; InputError
    otherwise."""
    if os.path.isdir(path):
        from .cases import structure_files

        masks = structure_files(path)
        if masks:  # TotalSegmentator's segmentations/, most often: one mask file per structure
            raise InputError(f"{os.fspath(path)} is a folder of {len(masks)} image or mask files, not a file: give "
                             f"one of them (e.g. {masks[0].name}), or its case folder to nearslicer batch --cases, "
                             "which refines each file as a segment")
        raise InputError(f"{os.fspath(path)} is a folder, not a file: give an image or mask file (a DICOM series "
                         "must be converted first: load it in Slicer and save the volume as .nrrd, or use dcm2niix)")
    low = os.fspath(path).lower()
    for ext in _SEG_EXTS:
        if low.endswith(ext):
            return ext[1:]
    if low.endswith(".nii") or low.endswith(".nii.gz"):
        ext = os.fspath(path)[-len(".nii.gz" if low.endswith(".gz") else ".nii"):]
        if ext not in (ext.lower(), ext.upper()):
            raise InputError(f"{os.path.basename(os.fspath(path))}: ITK reads and writes a NIfTI file only with its "
                             "extension in lower or upper case (.nii.gz or .NII.GZ); rename the file")
        return "nifti"
    kind = _SITK_KINDS.get(os.path.splitext(low)[1])
    if kind is None:
        raise InputError(f"unsupported file type: {os.path.basename(os.fspath(path))} (use .nii, .nii.gz, .nrrd, "
                         ".mha or .seg.nrrd)")
    return kind


def is_segmentation_file(path: str) -> bool:
    """True for a Slicer segmentation (.seg.nrrd, .seg.nhdr), whose segments have names."""
    try:
        return _kind(path) in SEG_KINDS
    except InputError:
        return False


# what write_mask and write_image can write, by _kind (single files only: see the module's docstring)
MASK_OUTPUTS = ("nifti", "nrrd", "mha", "seg.nrrd")
IMAGE_OUTPUTS = ("nifti", "nrrd", "mha")
_KIND_NAMES = {"nifti": ".nii.gz or .nii", "nrrd": ".nrrd", "mha": ".mha", "seg.nrrd": ".seg.nrrd"}


def check_output_type(path: str, kinds: Sequence[str] = MASK_OUTPUTS, what: str = "output") -> None:
    """Refuse (InputError), before anything is computed, a file name of a type that ``write_mask``
    (``MASK_OUTPUTS``) or ``write_image`` (``IMAGE_OUTPUTS``) cannot write."""
    try:
        kind = _kind(path)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    if kind not in kinds:
        raise InputError(f"{what} {os.path.basename(os.fspath(path))}: give a file name ending in "
                         f"{' or '.join(_KIND_NAMES[k] for k in kinds)}")


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"file not found: {path}")


def _gzip_hint(path: str) -> str:
    """Why ITK may not know a file: it is gzip-compressed under a name without .gz (a renamed .nii.gz)."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
    except OSError:
        return ""
    if compressed and not os.fspath(path).lower().endswith(".gz"):
        return f" (the file is gzip-compressed: name it {os.path.basename(os.fspath(path))}.gz)"
    return ""


def _read_sitk(path: str, what: str) -> Tuple[np.ndarray, Grid]:
    """Array [k, j, i] and grid of a scalar 3D image read by SimpleITK."""
    _require_file(path)
    try:
        img = sitk.ReadImage(os.fspath(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"cannot read {what} {path}: {first}{_gzip_hint(path)}") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} {path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    array = sitk.GetArrayFromImage(img)
    check_volume_shape(array, what)
    return array, Grid.from_sitk(img)


# --- Slicer segmentation (.seg.nrrd) ------------------------------------------------------------
def _nrrd_grid(header: Dict[str, Any], domain_axes: List[int], sizes: Sequence[int]) -> Grid:
    """Grid (LPS) from a NRRD header's space / space directions / space origin."""
    space = str(header.get("space", "left-posterior-superior")).strip().lower()
    if space in _LPS_NAMES:
        flip = np.array([1.0, 1.0, 1.0])
    elif space in _RAS_NAMES:
        flip = np.array([-1.0, -1.0, 1.0])  # RAS -> LPS: negate x and y
    else:
        raise InputError(f"unsupported NRRD space {space!r}; expected left-posterior-superior or RAS")
    if "space directions" in header:
        dirs = np.asarray(header["space directions"], dtype=float)[domain_axes] * flip[None, :]
    else:
        spacings = np.asarray(header.get("spacings", [1.0] * len(sizes)), dtype=float)[domain_axes]
        dirs = np.diag(spacings) * flip[None, :]
    if not np.all(np.isfinite(dirs)):
        raise InputError("NRRD space directions of a domain axis are missing")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float) * flip
    affine = np.eye(4)
    affine[:3, :3] = dirs.T  # NRRD lists one row per axis; the affine wants one column per axis
    affine[:3, 3] = origin
    shape = tuple(int(sizes[a]) for a in reversed(domain_axes))
    return Grid.from_ijk_to_lps(shape, affine)


def _segment_table(header: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Segments listed in a .seg.nrrd header: index, id, name, label value, layer, color."""
    segs = []
    n = 0
    while f"Segment{n}_ID" in header or f"Segment{n}_Name" in header:
        p = f"Segment{n}_"
        segs.append({
            "index": n,
            "id": str(header.get(p + "ID", f"Segment_{n + 1}")),
            "name": str(header.get(p + "Name", header.get(p + "ID", f"Segment_{n + 1}"))),
            "label_value": int(float(header.get(p + "LabelValue", n + 1))),
            "layer": int(float(header.get(p + "Layer", 0))),
            "color": tuple(float(c) for c in str(header.get(p + "Color", "0.5 0.5 0.5")).split()),
        })
        n += 1
    return segs


def _read_seg_nrrd(path: str) -> Tuple[np.ndarray, Grid, Dict[str, Any]]:
    """Layers [L, k, j, i] (L=1 for a 3D file), grid and header of a Slicer segmentation."""
    _require_file(path)
    try:
        data, header = nrrd.read(os.fspath(path), index_order="F")  # numpy axes = file axes
    except Exception as exc:  # pynrrd raises several types for corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise InputError(f"cannot read segmentation {path}: {reason}") from None
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * data.ndim)]
    domain_axes = [a for a, k in enumerate(kinds) if k in ("domain", "space")]
    if data.ndim == 3 and len(domain_axes) != 3:
        domain_axes = [0, 1, 2]
    if len(domain_axes) != 3 or data.ndim not in (3, 4):
        raise InputError(f"segmentation {path} has shape {data.shape} with kinds {kinds}; expected 3 spatial axes")
    grid = _nrrd_grid(header, domain_axes, data.shape)
    if data.ndim == 4:
        layer_axis = [a for a in range(4) if a not in domain_axes][0]
        data = np.moveaxis(data, layer_axis, 0)  # [L, i, j, k]
    else:
        data = data[None]
    layers = np.ascontiguousarray(data.transpose(0, 3, 2, 1))  # [L, k, j, i]
    check_volume_shape(layers[0], "mask")
    return layers, grid, header


def segment_table(path: str) -> List[Dict[str, Any]]:
    """The segment list of a .seg.nrrd from its header alone (name, id, label_value, layer, color; no masks)."""
    _require_file(path)
    try:
        header = nrrd.read_header(os.fspath(path))
    except Exception as exc:  # pynrrd raises several types for corrupt files
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise InputError(f"cannot read segmentation {path}: {reason}") from None
    return _segment_table(header)


def read_segments(path: str, boxed: bool = False) -> Tuple[List[Dict[str, Any]], Grid]:
    """All segments of a .seg.nrrd: list of dicts (name, id, label_value, layer, color, mask uint8; with
    ``boxed`` a ``BoxedMask``, so that a file of many segments of a large volume fits in memory)."""
    layers, grid, header = _read_seg_nrrd(path)
    table = _segment_table(header)
    boxes: Dict[int, Dict[int, BoxedMask]] = {}
    for seg in table:
        layer = seg["layer"]
        if not 0 <= layer < layers.shape[0]:
            raise InputError(f"segment {seg['name']!r} is on layer {layer} but the file has {layers.shape[0]}")
        if boxed:
            if layer not in boxes:
                boxes[layer] = label_boxes(layers[layer])
            seg["mask"] = boxes[layer].get(seg["label_value"]) or BoxedMask.empty(grid.shape)
        else:
            seg["mask"] = (layers[layer] == seg["label_value"]).astype(np.uint8)
    return table, grid


def _label_list(values: Sequence[int], limit: int = 20) -> str:
    vals = [int(v) for v in values]
    text = ", ".join(str(v) for v in vals[:limit])
    return f"[{text}, ...]" if len(vals) > limit else f"[{text}]"


def _mask_from_seg(path: str, label: Union[int, str, None]) -> Tuple[np.ndarray, Grid, Dict[str, Any]]:
    layers, grid, header = _read_seg_nrrd(path)
    table = _segment_table(header)
    if not table:
        # A plain label map saved with a .seg.nrrd name: treat it like any label map.
        if layers.shape[0] != 1:
            raise InputError(f"segmentation {path} has {layers.shape[0]} layers but no segment list")
        mask, info = _select_label(layers[0], label, None, os.path.basename(path))
        info.update(format="seg.nrrd", segment=None, segments=[])
        return mask, grid, info
    names = [s["name"] for s in table]
    if label is None:
        if len(table) > 1:
            listing = ", ".join(f"{s['name']!r} ({s['label_value']})" for s in table)
            raise InputError(f"multilabel mask with segments [{listing}]: pass --label (a segment name or label value)")
        chosen = table[0]
    else:
        chosen = choose_segment(table, label, os.path.basename(path))
    if not 0 <= chosen["layer"] < layers.shape[0]:
        raise InputError(f"segment {chosen['name']!r} is on layer {chosen['layer']} but the file has {layers.shape[0]}")
    mask = (layers[chosen["layer"]] == chosen["label_value"]).astype(np.uint8)
    if not mask.any():
        raise InputError(f"mask is empty (segment {chosen['name']!r} has no voxels)")
    info = {"format": "seg.nrrd", "label": chosen["label_value"], "segment": chosen["name"],
            "segments": names, "labels": sorted({s["label_value"] for s in table})}
    return mask, grid, info


def choose_segment(table: Sequence[Dict[str, Any]], label: Union[int, str], file_name: str) -> Dict[str, Any]:
    """The entry of a .seg.nrrd's segment table (``read_segments``) that ``label`` names: its name, else
    its ID, else its label value; InputError when none or several do."""
    matches = [s for s in table if s["name"] == str(label)] or [s for s in table if s["id"] == str(label)]
    value = label_text(label)
    if not matches and _is_int(value):
        matches = [s for s in table if s["label_value"] == int(value)]
    if not matches:
        raise InputError(f"label {label!r} not found in {file_name} (segments: {[s['name'] for s in table]})")
    if len(matches) > 1:
        raise InputError(f"label {label!r} matches several segments {[s['name'] for s in matches]}: pass a segment name")
    return matches[0]


_WHOLE_NUMBER = re.compile(r"\s*([+-]?\d+)\.0*\s*")


def label_text(label: Any) -> Any:
    """A label given as a whole number written as a decimal (``"9.0"``, as a spreadsheet or pandas
    writes an integer column with gaps) as that number's text (``"9"``); anything else unchanged."""
    if isinstance(label, str):
        whole = _WHOLE_NUMBER.fullmatch(label)
        return str(int(whole.group(1))) if whole else label
    return label


def _is_int(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, str) and value.strip().lstrip("+-").isdigit()


def _select_label(array: np.ndarray, label: Union[int, str, None], names: Optional[Dict[int, str]] = None,
                  file_name: str = "") -> Tuple[np.ndarray, Dict[str, Any]]:
    """0/1 uint8 mask of ``label`` (or of the only label) in a label-map array. ``names``: the file's
    label table (``label_table``), whose names ``label`` may then be and the messages list."""
    labels = label_values(array)
    value = _resolve_label(labels, label, names, file_name)
    return (array == value).astype(np.uint8), {"label": value, "labels": labels}


def label_values(array: np.ndarray) -> List[int]:
    """The nonzero values of a label-map array (ascending); InputError for one that is no label map."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError("mask has NaN or Inf values")
        if np.any(array != np.round(array)):
            raise InputError("mask has non-integer values; expected a 0/1 mask or a label map (threshold it first)")
    if array.dtype.kind not in "biuf":
        raise InputError(f"unsupported mask voxel type {array.dtype}")
    if not np.any(array):
        raise InputError("mask is empty")
    return [int(v) for v in np.unique(array) if v != 0]


def _resolve_label(labels: Sequence[int], label: Union[int, str, None], names: Optional[Dict[int, str]],
                   file_name: str) -> int:
    """The value ``label`` (a value, a label-table name, or None: the only one) picks among ``labels``."""
    label = label_text(label)
    if label is None:
        if len(labels) > 1 and names:
            raise InputError(f"multilabel mask with labels {_named_list(labels, names)}: "
                             "pass --label (a value or a name)")
        if len(labels) > 1:
            raise InputError(f"multilabel mask with labels {_label_list(labels)}: pass --label")
        value = labels[0]
    else:
        if not _is_int(label) and not names:
            raise InputError(f"label {label!r} is not an integer, and {file_name or 'this file'} names no labels "
                             f"(labels present: {_label_list(labels)}); names come from a .seg.nrrd's segment list "
                             "or a NIfTI label table (as TotalSegmentator --ml writes)")
        value = int(label) if _is_int(label) else _value_named(names, str(label), file_name, labels)
        if value not in labels and names:
            # a name of the table (or a value) that this scan holds no voxel of: say so, by name
            what = f"label {label!r} (value {value})" if not _is_int(label) else \
                f"label {value}" + (f" ({names[value]})" if value in names else "")
            raise InputError(f"{what} has no voxels in {file_name or 'the mask'} "
                             f"(labels present: {_named_list(labels, names)})")
        if value not in labels:
            raise InputError(f"label {value} not found in mask (labels present: {_label_list(labels)})")
    return value


def _named_list(values: Sequence[int], names: Dict[int, str], limit: int = 20) -> str:
    """``1 (spleen), 2 (kidney_right), ...``: values with their label-table names."""
    text = ", ".join(f"{v} ({names[v]})" if v in names else str(v) for v in values[:limit])
    return text + (", ..." if len(values) > limit else "")


def read_mask(path: str, label: Union[int, str, None] = None) -> Tuple[np.ndarray, Grid, Dict[str, Any]]:
    """Read one structure as a 0/1 uint8 mask ``[k, j, i]`` with its grid.

    ``label`` picks a value of a label map, or (.seg.nrrd) a segment name, ID or label value; it is
    required when the file holds several. ``info`` holds ``format``, ``label``, ``labels`` (all
    nonzero values found) and, for .seg.nrrd, ``segment`` and ``segments`` (names). A NIfTI label map
    with a label table (TotalSegmentator's multi-label output) also gives ``label_name`` (the chosen
    value's name, or None) and ``label_names``; its ``label`` may then be a name, e.g. "adrenal_gland_left".
    """
    from .label_table import label_names

    path = os.fspath(path)
    kind = _kind(path)
    if kind in SEG_KINDS:
        return _mask_from_seg(path, label)
    array, grid = _read_sitk(path, "mask")
    names = label_names(path)
    mask, info = _select_label(array, label, names, os.path.basename(path))
    return mask, grid, _named(info, kind, names)


def _named(info: Dict[str, Any], kind: str, names: Dict[int, str]) -> Dict[str, Any]:
    """A label map's ``_select_label`` info with its format and, from a label table, its names."""
    info["format"] = kind
    if names:
        info["label_name"] = names.get(info["label"])
        info["label_names"] = names
    return info


def read_label_masks(path: str, labels: Union[Sequence[Union[int, str]], None]
                     ) -> Tuple[List[Tuple[BoxedMask, Dict[str, Any]]], Grid]:
    """Several structures of one NIfTI/NRRD label map, the file read once: ``[(0/1 mask, info)]`` as
    ``read_mask`` gives each (``labels``: values or label-table names), or every nonzero value present
    when ``labels`` is None (ascending). Each mask is a ``BoxedMask`` (``.full()`` the array): a
    full-resolution CT's 117 structures fit in memory. A .seg.nrrd is refused (``read_segments``)."""
    from .label_table import label_names

    path = os.fspath(path)
    if _kind(path) in SEG_KINDS:
        raise InputError(f"{os.path.basename(path)} is a segmentation: its segments are read by name")
    array, grid = _read_sitk(path, "mask")
    names = label_names(path)
    present = label_values(array)
    chosen = [_resolve_label(present, label, names, os.path.basename(path)) for label in labels] \
        if labels is not None else present
    boxes = label_boxes(array)
    return [(boxes[value], _named({"label": value, "labels": present}, _kind(path), names)) for value in chosen], grid


def _value_named(names: Dict[int, str], label: str, file_name: str, present: Sequence[int] = ()) -> int:
    """The value a label table gives the name ``label`` (case and surrounding blanks ignored). An unknown
    name is refused with the table's closest names and the names of the labels ``present`` in the mask."""
    wanted = label.strip().lower()
    found = [value for value, name in names.items() if name.strip().lower() == wanted]
    if not found:
        by_lower = {name.strip().lower(): name for name in names.values()}
        close = [by_lower[n] for n in difflib.get_close_matches(wanted, list(by_lower), n=3, cutoff=0.6)]
        hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
        shown = [v for v in present if v in names] or sorted(names, key=lambda v: names[v])
        listed = ", ".join(names[v] for v in shown[:20]) + (", ..." if len(shown) > 20 else "")
        where = "labels present" if present and any(v in names for v in present) else "names"
        raise InputError(f"label {label!r} is not a name in the label table of {file_name}{hint} "
                         f"({where}: {listed})")
    if len(found) > 1:
        raise InputError(f"label {label!r} names several values in the label table of {file_name} "
                         f"({_label_list(sorted(found))}): pass the value")
    return found[0]


def read_image(path: str) -> Tuple[np.ndarray, Grid]:
    """Read a scalar 3D image (CT in HU) as float32 ``[k, j, i]`` with its grid."""
    path = os.fspath(path)
    if _kind(path) in SEG_KINDS:
        raise InputError(f"{os.path.basename(path)} is a segmentation, not an image")
    array, grid = _read_sitk(path, "image")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise InputError(f"image {path} has NaN or Inf values")
    return array, grid


# --- writing ----------------------------------------------------------------------------------
def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp)`` on a unique temporary file beside ``path``, then rename it onto ``path``
    (see :mod:`output_safety`: fsynced, the real extension kept so SimpleITK/pynrrd pick the
    format, the target unchanged and no temporary file left if ``write`` fails)."""
    _atomic_write(path, write)


def _binary(mask: np.ndarray, grid: Grid, what: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != grid.shape:
        raise InputError(f"{what} shape {mask.shape} does not match grid shape {grid.shape}")
    if mask.dtype != bool and not np.all((mask == 0) | (mask == 1)):
        raise InputError(f"{what} must hold only 0 and 1; threshold probabilities before writing")
    return mask.astype(np.uint8)


def _nrrd_geometry(grid: Grid) -> Dict[str, Any]:
    """pynrrd header fields (LPS) for the three spatial axes of ``grid``."""
    a = grid.ijk_to_lps()
    return {"space": "left-posterior-superior", "space directions": a[:3, :3].T.copy(),
            "space origin": a[:3, 3].copy()}


def _boxed(mask: Union[np.ndarray, BoxedMask], grid: Grid, what: str) -> BoxedMask:
    """A segment's 0/1 mask (an array on ``grid`` or a ``BoxedMask`` of it) as a ``BoxedMask``."""
    if isinstance(mask, BoxedMask):
        if tuple(mask.shape) != tuple(grid.shape):
            raise InputError(f"{what} shape {tuple(mask.shape)} does not match grid shape {grid.shape}")
        return mask
    return BoxedMask.of(_binary(mask, grid, what))


def _write_seg_nrrd(path: str, segments: Sequence[Tuple[str, np.ndarray, Sequence[float]]], grid: Grid) -> None:
    """Slicer segmentation: segments packed into as few layers as overlaps allow (as Slicer does)."""
    if not segments:
        raise InputError("write_segmentation needs at least one segment")
    # boxes, not full-size masks: a full-resolution CT's 117 structures and their results
    masks = [_boxed(m, grid, f"segment {name!r}") for name, m, _ in segments]
    layers: List[np.ndarray] = []
    placement = []  # (layer, label value) per segment
    for m in masks:
        for li, layer in enumerate(layers):
            count = sum(1 for used, _ in placement if used == li)  # its largest value; a uint8 layer holds 255
            if count < 255 and not np.any(layer[m.box][m.array]):
                layer[m.box][m.array] = count + 1
                placement.append((li, count + 1))
                break
        else:
            layer = np.zeros(grid.shape, np.uint8)
            layer[m.box][m.array] = 1
            layers.append(layer)
            placement.append((len(layers) - 1, 1))
    header: Dict[str, Any] = _nrrd_geometry(grid)
    if len(layers) == 1:
        data = layers[0]  # [k, j, i]
        header["kinds"] = ["domain"] * 3
    else:
        data = np.stack(layers, axis=-1)  # [k, j, i, L]: the layer axis is the fastest in the file
        header["kinds"] = ["list", "domain", "domain", "domain"]
        header["space directions"] = np.vstack([np.full((1, 3), np.nan), header["space directions"]])
    header["encoding"] = "gzip"
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    for n, ((name, _, color), m, (layer, value)) in enumerate(zip(segments, masks, placement)):
        rgb = [float(c) for c in color]
        if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
            raise InputError(f"segment {name!r} color must be 3 values in 0-1, got {tuple(color)}")
        p = f"Segment{n}_"
        header[p + "Color"] = " ".join(f"{c:.6g}" for c in rgb)
        header[p + "ColorAutoGenerated"] = "0"
        header[p + "Extent"] = m.extent()
        header[p + "ID"] = f"Segment_{n + 1}"
        header[p + "LabelValue"] = str(value)
        header[p + "Layer"] = str(layer)
        header[p + "Name"] = str(name)
        header[p + "NameAutoGenerated"] = "0"
        header[p + "Tags"] = "Segmentation.Status:inprogress|"
    atomic_write(path, lambda tmp: nrrd.write(tmp, data, header, index_order="C", compression_level=6))


def write_mask(path: str, mask: np.ndarray, grid: Grid, name: str = "Segment_1",
               color: Sequence[float] = (0.2, 0.4, 1.0)) -> None:
    """Write a 0/1 mask ``[k, j, i]`` as uint8 with ``grid``'s exact geometry (atomic).

    The format follows the extension: .nii, .nii.gz, .nrrd, .mha, or .seg.nrrd (one segment ``name``).
    """
    path = os.fspath(path)
    check_output_type(path, MASK_OUTPUTS)
    if _kind(path) == "seg.nrrd":
        _write_seg_nrrd(path, [(name, mask, color)], grid)
        return
    img = grid.to_sitk(_binary(mask, grid))
    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, True))


def write_segmentation(path: str, segments: Sequence[Tuple[str, np.ndarray, Sequence[float]]], grid: Grid) -> None:
    """Write several 0/1 masks as one Slicer .seg.nrrd; ``segments`` = [(name, mask, rgb 0-1)].

    Overlapping segments (e.g. original and refined) go to separate layers (a 4D file), as Slicer
    stores them; non-overlapping ones share a layer with distinct label values.
    """
    if _kind(path) != "seg.nrrd":
        raise InputError(f"write_segmentation writes .seg.nrrd files, got {os.path.basename(os.fspath(path))}")
    _write_seg_nrrd(os.fspath(path), segments, grid)


def write_image(path: str, array: np.ndarray, grid: Grid) -> None:
    """Write a float volume ``[k, j, i]`` (e.g. a probability map) as float32 (atomic)."""
    path = os.fspath(path)
    if _kind(path) in SEG_KINDS:
        raise InputError("write_image cannot write a .seg.nrrd; use write_mask or write_segmentation")
    check_output_type(path, IMAGE_OUTPUTS)
    array = np.asarray(array, dtype=np.float32)
    img = grid.to_sitk(array)
    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, True))
