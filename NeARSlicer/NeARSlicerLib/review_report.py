"""``nearslicer report``: one HTML page to review a refined batch, opened from disk in any browser.

The page (``report.html``) holds its styles and script inline and links only the pictures in the
folder beside it (``report_files/``): a red (original) vs blue (refined) thumbnail over the CT per
case and segment, through the slices of largest change, and the full report picture of each case
(``report.save_report_png``). Nothing is fetched from a network. Rows are sortable (column
headers) and filterable (change, confidence, review status); the URL hash keeps the view, e.g.
``report.html#sort=change&dir=desc&status=unreviewed``.

The rows and review status come from ``review_status`` (the reader the Slicer review queue uses):
a decision taken in Slicer shows here once the page is made again. Outputs go through
``output_safety``: checked before anything is drawn (never an input; existing files replaced only
with ``overwrite``), each picture and the page written atomically, the page last.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError
from .image_evidence import describe_undone
from .output_safety import atomic_write, atomic_write_text, check_output_folder, check_outputs
from .report import _CT_WINDOW, _ORIGINAL, _REFINED, _bbox, _outline, save_report_png
from .review_status import BatchRow, read_batch

__all__ = ["build_report", "load_case", "change_centre", "save_thumbnail", "REFINED_SUFFIX"]

REFINED_SUFFIX = " (NeAR)"      # the refined segment's name in a .seg.nrrd (Slicer's convention)
ORIGINAL_SUFFIX = " (original)"  # the original's name after Slicer's Accept
Arrays = Tuple[Optional[np.ndarray], np.ndarray, np.ndarray, Tuple[float, float, float]]


# ------------------------------------------------------------------------------ reading a case
def _segment_pair(segments: List[dict], name: str, path: Path) -> tuple:
    """(original, refined) masks of segment ``name`` in a batch .seg.nrrd, before or after Accept."""
    by_name = {s["name"]: s for s in segments}
    if name + REFINED_SUFFIX in by_name and name in by_name:
        return by_name[name]["mask"], by_name[name + REFINED_SUFFIX]["mask"]
    if name + ORIGINAL_SUFFIX in by_name and name in by_name:  # accepted in Slicer: the refined took the name
        return by_name[name + ORIGINAL_SUFFIX]["mask"], by_name[name]["mask"]
    raise InputError(f"{path.name} has no segments '{name}' and '{name}{REFINED_SUFFIX}' "
                     f"(it has: {', '.join(sorted(by_name)) or 'none'})")


def _on_grid(image: np.ndarray, grid, target) -> np.ndarray:
    """The CT resampled (linear) onto the mask grid ``target`` when the grids differ (e.g. a Slicer
    .seg.nrrd cropped to its extent); -1024 HU outside the scan."""
    if grid.same_as(target):
        return image
    import SimpleITK as sitk

    out = sitk.Resample(grid.to_sitk(np.asarray(image, np.float32)),
                        target.to_sitk(np.zeros(target.shape, np.uint8)), sitk.Transform(), sitk.sitkLinear,
                        -1024.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


class CaseFiles:
    """The files of the last case read, kept for its next rows: a case's rows follow one another in a
    summary, and reading a full-resolution CT and a segmentation of many segments again for each of
    them took seconds and gigabytes per row (a TotalSegmentator label map's 117 structures)."""

    def __init__(self) -> None:
        self._segments: tuple = (None, None)
        self._image: tuple = (None, None)

    def segments(self, path: Path) -> tuple:
        """``read_segments(path, boxed=True)``: every segment as a ``BoxedMask``, with the grid."""
        from .io import read_segments

        if self._segments[0] != path:
            self._segments = (None, None)  # the previous case's arrays go first
            self._segments = (path, read_segments(str(path), boxed=True))
        return self._segments[1]

    def image(self, path: Path, grid) -> np.ndarray:
        """The CT at ``path`` on ``grid``."""
        from .io import read_image

        if self._image[0] != (path, grid):
            self._image = (None, None)
            ct, ct_grid = read_image(str(path))
            self._image = ((path, grid), _on_grid(ct, ct_grid, grid))
        return self._image[1]


def load_case(row: BatchRow, folder: Path, files: Optional[CaseFiles] = None) -> Arrays:
    """``(CT or None, original, refined, spacing (i, j, k) mm)`` of one row, on the refined file's grid.

    ``.seg.nrrd`` outputs hold both segments; for mask outputs the original is read from the row's
    ``mask`` (and ``label``). The CT is the row's ``image`` when there is one and it can be read.
    ``files``: the files of the case read for its earlier rows (``CaseFiles``).
    """
    from .io import read_mask

    files = files or CaseFiles()
    output = row.path("output", folder)
    if output is None:
        raise InputError("the summary row names no output file")
    if not output.is_file():
        raise InputError(f"output {output} not found")
    if output.name.lower().endswith(".seg.nrrd"):
        segments, grid = files.segments(output)
        original, refined = (m.full() for m in _segment_pair(segments, row.segment, output))
    else:
        refined, grid, _ = read_mask(str(output))
        mask_path = row.path("mask", folder)
        if mask_path is None:
            raise InputError("the summary row names no input mask to compare the refined mask with")
        original, mask_grid, _ = read_mask(str(mask_path), label=row.text("label") or None)
        if not mask_grid.same_as(grid, tol=1e-3):
            raise InputError(f"input mask {mask_path.name} and output {output.name} are on different grids")
    image = None
    image_path = row.path("image", folder)
    if image_path is not None and image_path.is_file():
        image = files.image(image_path, grid)
    return image, np.asarray(original) != 0, np.asarray(refined) != 0, tuple(float(s) for s in grid.spacing)


# ------------------------------------------------------------------------------ pictures
def change_centre(original: np.ndarray, refined: np.ndarray) -> Tuple[int, int, int]:
    """``(k, j, i)``: on each axis the slice with the most changed voxels (original XOR refined);
    the centre of both masks where nothing changed."""
    changed = original ^ refined
    box = _bbox(original | refined)
    if box is None:
        return tuple(int(n) // 2 for n in original.shape)
    centre = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        counts = changed.sum(axis=other)
        centre.append(int(np.argmax(counts)) if counts.any() else int((box[axis, 0] + box[axis, 1]) // 2))
    return tuple(centre)


def save_thumbnail(path: Union[str, os.PathLike], image: Optional[np.ndarray], original: np.ndarray,
                   refined: np.ndarray, spacing: Sequence[float], size_px: Tuple[int, int] = (390, 130)) -> None:
    """Axial, coronal and sagittal slices through the largest change (``change_centre``), cropped
    around both masks: CT in a soft-tissue window (black without CT), red = original, blue = refined.
    ``spacing`` is (i, j, k) mm. Written atomically as PNG."""
    si, sj, sk = (float(s) for s in spacing)
    box = _bbox(original | refined)
    shape = np.array(original.shape)
    if box is None:
        lo, hi = np.zeros(3, int), shape - 1
    else:
        sp = np.array([sk, sj, si])
        margin = np.ceil(np.maximum(8.0, 0.35 * (box[:, 1] - box[:, 0] + 1) * sp) / sp).astype(int)
        lo, hi = np.maximum(box[:, 0] - margin, 0), np.minimum(box[:, 1] + margin, shape - 1)
    crop = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    o, r = original[crop], refined[crop]
    img = None if image is None else np.asarray(image, np.float32)[crop]
    c = np.array(change_centre(original, refined)) - lo
    dpi = 100.0
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    views = [(lambda v: v[c[0]], sj / si, "upper"), (lambda v: v[:, c[1]], sk / si, "lower"),
             (lambda v: v[:, :, c[2]], sk / sj, "lower")]
    for n, (cut, aspect, origin) in enumerate(views):
        ax = fig.add_axes([n / 3.0, 0.0, 1 / 3.0, 1.0])
        ax.set_facecolor("black")
        background = cut(img) if img is not None else np.zeros(cut(o).shape)
        window = _CT_WINDOW if img is not None else (0.0, 1.0)
        ax.imshow(background, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin,
                  interpolation="nearest")
        _outline(ax, cut(o), _ORIGINAL, width=2.2)
        _outline(ax, cut(r), _REFINED, width=1.1)
        ax.axis("off")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor="black"))


# ------------------------------------------------------------------------------ the page
def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def _fmt(value: Optional[float], fmt: str, empty: str = "") -> str:
    return empty if value is None else format(value, fmt)


def _histogram_svg(changes: Sequence[float], bins: int = 12, width: int = 260, height: int = 60) -> str:
    """Inline SVG bar chart of the volume changes (%)."""
    if not changes:
        return '<svg class="hist" width="260" height="60" role="img" aria-label="no change values"></svg>'
    values = np.asarray(changes, float)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    bar_w = width / bins
    top = max(int(counts.max()), 1)
    bars = []
    for n, count in enumerate(counts):
        h = (height - 14) * count / top
        bars.append(f'<rect x="{n * bar_w + 1:.1f}" y="{height - 14 - h:.1f}" width="{bar_w - 2:.1f}" '
                    f'height="{h:.1f}" fill="#777"><title>{edges[n]:+.1f} to {edges[n + 1]:+.1f} %: '
                    f'{count}</title></rect>')
    labels = (f'<text x="0" y="{height - 2}" font-size="10">{lo:+.0f} %</text>'
              f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">{hi:+.0f} %</text>')
    return (f'<svg class="hist" width="{width}" height="{height}" role="img" '
            f'aria-label="histogram of volume change">{"".join(bars)}{labels}</svg>')


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px}
.strip{display:flex;gap:28px;align-items:center;background:#f3f3f3;padding:10px 14px;border-radius:6px}
.strip .n{font-size:22px;font-weight:600}.strip .l{font-size:12px;color:#555}
.controls{margin:12px 0;display:flex;gap:18px;align-items:center;font-size:13px}
.controls input{width:70px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:middle}
th{background:#eee;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.t,th.t{text-align:left}td.pic{padding:2px}td.pic img{display:block;border:0}
tr.failed td{background:#fff4e5}
.st{display:inline-block;padding:1px 6px;border-radius:8px;font-size:12px;background:#e8e8e8}
.st.accepted{background:#d8f0d8}.st.rejected{background:#f3d6d6}.st.needs_edit{background:#fff0c2}
.legend{font-size:12px;color:#555;margin-top:6px}
"""

_SCRIPT = r"""
(function () {
  var table = document.getElementById('cases');
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var state = {sort: 'change', dir: 'desc', status: 'all', minchange: '', maxconf: ''};
  var keys = {case: 'text', segment: 'text', before: 'num', after: 'num', change: 'num', dice: 'num',
              confidence: 'num', prior: 'text', action: 'text', review: 'text'};
  function readHash() {
    var text = decodeURIComponent((location.hash || '').replace(/^#/, ''));
    text.split('&').forEach(function (part) {
      var kv = part.split('=');
      if (kv.length === 2 && kv[0] in state) { state[kv[0]] = kv[1]; }
    });
    if (!(state.sort in keys)) { state.sort = 'change'; }
    if (state.dir !== 'asc') { state.dir = 'desc'; }
  }
  function value(row, key) {
    var v = row.getAttribute('data-' + key);
    if (keys[key] === 'num') {
      if (v === null || v === '') { return null; }
      return key === 'change' ? Math.abs(parseFloat(v)) : parseFloat(v);
    }
    return (v || '').toLowerCase();
  }
  function compare(a, b) {
    var va = value(a, state.sort), vb = value(b, state.sort);
    if (va === null && vb === null) { return a.getAttribute('data-index') - b.getAttribute('data-index'); }
    if (va === null) { return 1; }   // rows without the number last, whatever the direction
    if (vb === null) { return -1; }
    var d = va < vb ? -1 : (va > vb ? 1 : 0);
    if (state.dir === 'desc') { d = -d; }
    return d || (a.getAttribute('data-index') - b.getAttribute('data-index'));
  }
  function visible(row) {
    var status = row.getAttribute('data-review') || 'unreviewed';
    if (row.getAttribute('data-failed') === '1') { status = 'failed'; }
    if (state.status !== 'all' && state.status !== status) { return false; }
    var minChange = parseFloat(state.minchange);
    if (!isNaN(minChange)) {
      var change = value(row, 'change');
      if (change === null || change < minChange) { return false; }
    }
    var maxConf = parseFloat(state.maxconf);
    if (!isNaN(maxConf)) {
      var conf = value(row, 'confidence');
      if (conf === null || conf > maxConf) { return false; }
    }
    return true;
  }
  function render() {
    rows.sort(compare);
    var shown = 0;
    rows.forEach(function (row) {
      body.appendChild(row);
      row.hidden = !visible(row);
      if (!row.hidden) { shown += 1; }
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      var key = cell.getAttribute('data-key');
      if (!key) { return; }
      cell.setAttribute('aria-sort', key === state.sort ? (state.dir === 'asc' ? 'ascending' : 'descending') : 'none');
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' rows shown';
    document.getElementById('status').value = state.status;
    document.getElementById('minchange').value = state.minchange;
    document.getElementById('maxconf').value = state.maxconf;
    var hash = '#sort=' + state.sort + '&dir=' + state.dir + '&status=' + state.status +
               (state.minchange !== '' ? '&minchange=' + state.minchange : '') +
               (state.maxconf !== '' ? '&maxconf=' + state.maxconf : '');
    if (location.hash !== hash && window.history && history.replaceState) { history.replaceState(null, '', hash); }
    document.body.setAttribute('data-sorted', state.sort + ':' + state.dir);
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
    var key = cell.getAttribute('data-key');
    if (!key) { return; }
    cell.addEventListener('click', function () {
      if (state.sort === key) { state.dir = state.dir === 'asc' ? 'desc' : 'asc'; }
      else { state.sort = key; state.dir = keys[key] === 'num' && key !== 'confidence' && key !== 'dice' ? 'desc' : 'asc'; }
      render();
    });
  });
  document.getElementById('status').addEventListener('change', function (e) { state.status = e.target.value; render(); });
  document.getElementById('minchange').addEventListener('input', function (e) { state.minchange = e.target.value; render(); });
  document.getElementById('maxconf').addEventListener('input', function (e) { state.maxconf = e.target.value; render(); });
  window.addEventListener('hashchange', function () { readHash(); render(); });
  readHash();
  render();
})();
"""

_COLUMNS = [("", None, "pic"), ("case", "case", "t"), ("segment", "segment", "t"), ("voxels before", "before", ""),
            ("voxels after", "after", ""), ("change %", "change", ""), ("Dice(orig, refined)", "dice", ""),
            ("confidence", "confidence", ""), ("prior", "prior", "t"), ("action", "action", "t"),
            ("review", "review", "t"), ("error / note", None, "t")]


def _prior_label(prior: str) -> str:
    """A prior's name for the table: the file name without extension for a path."""
    if "/" in prior or "\\" in prior or prior.endswith(".safetensors"):
        return Path(prior.replace("\\", "/")).name.rsplit(".safetensors", 1)[0]
    return prior


def _painted_note(row: BatchRow) -> str:
    """Why a refinement replaced the whole surface: the original was painted on thick slices."""
    mm = row.number("painted_slices_mm")
    if not mm:
        return ""
    how = ", interpolated for NeAR" if row.text("slices_interpolated") == "yes" else ""
    return f"painted on {mm:.1f} mm slices{how}: the refined surface replaces its staircase everywhere"


def _image_check_note(row: BatchRow) -> str:
    """What the image check undid of the prior's change (batch's image_restored / image_withdrawn), in
    the words of Slicer's line beside Accept."""
    restored, withdrawn = int(row.number("image_restored") or 0), int(row.number("image_withdrawn") or 0)
    if not restored and not withdrawn:
        return ""
    return f"checked against the image: {describe_undone(restored, withdrawn)}"


def _row_html(index: int, row: BatchRow, thumb: Optional[str], full: Optional[str], note: str) -> str:
    esc = html.escape
    change = row.change_percent
    data = {"index": str(index), "case": row.case, "segment": row.segment,
            "before": _fmt(row.voxels_before, ".0f"), "after": _fmt(row.voxels_after, ".0f"),
            "change": _fmt(change, ".3f"), "dice": _fmt(row.dice, ".4f"),
            "confidence": _fmt(row.confidence, ".4f"), "prior": row.text("prior"), "action": row.text("action"),
            "review": row.review, "failed": "1" if row.failed else "0"}
    attrs = " ".join(f'data-{k}="{esc(v, quote=True)}"' for k, v in data.items())
    if thumb:
        alt = f"{row.case} / {row.segment}: original (red) vs refined (blue)"
        picture = f'<img src="{esc(thumb, quote=True)}" alt="{esc(alt, quote=True)}" width="390" height="130">'
        if full:
            picture = f'<a href="{esc(full, quote=True)}" target="_blank" title="open the full report">{picture}</a>'
    else:
        picture = ""
    notes = (note, _painted_note(row), _image_check_note(row), row.text("warnings"))
    status = row.review or "unreviewed"
    if row.failed:
        status = "failed"
    cells = [f'<td class="pic">{picture}</td>', f'<td class="t">{esc(row.case)}</td>',
             f'<td class="t">{esc(row.segment)}</td>', f"<td>{data['before']}</td>", f"<td>{data['after']}</td>",
             f"<td>{_fmt(change, '+.1f')}</td>", f"<td>{_fmt(row.dice, '.3f')}</td>",
             f"<td>{_fmt(row.confidence, '.2f')}</td>", f'<td class="t" title="{esc(row.text("prior"), quote=True)}">{esc(_prior_label(row.text("prior")))}</td>',
             f'<td class="t">{esc(row.text("action"))}</td>',
             f'<td class="t"><span class="st {esc(status)}">{esc(status.replace("_", " "))}</span></td>',
             f'<td class="t">{esc(row.error or "; ".join(t for t in notes if t))}</td>']
    klass = ' class="failed"' if row.failed else ""
    return f"<tr{klass} {attrs}>{''.join(cells)}</tr>"


def _page(title: str, summary_name: str, rows_html: List[str], cases: int, failed_cases: int, n_rows: int,
          changes: List[float]) -> str:
    esc = html.escape
    head = "".join(f'<th class="{klass}"' + (f' data-key="{key}"' if key else "") + f">{esc(label)}</th>"
                   for label, key, klass in _COLUMNS)
    options = "".join(f'<option value="{v}">{v.replace("_", " ")}</option>'
                      for v in ("all", "unreviewed", "accepted", "rejected", "needs_edit", "failed"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body data-sorted="">
<h1>{esc(title)}</h1>
<div class="strip">
 <div><div class="n" id="n-cases">{cases}</div><div class="l">cases ({n_rows} segments)</div></div>
 <div><div class="n" id="n-failed">{failed_cases}</div><div class="l">failed cases</div></div>
 <div>{_histogram_svg(changes)}<div class="l">volume change refined vs original</div></div>
</div>
<div class="controls">
 <label>status <select id="status">{options}</select></label>
 <label>|change| &ge; <input id="minchange" type="number" step="1" min="0"> %</label>
 <label>confidence &le; <input id="maxconf" type="number" step="0.05" min="0" max="1"></label>
 <span id="shown"></span>
</div>
<table id="cases"><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(rows_html)}
</tbody></table>
<p class="legend">Thumbnails: axial, coronal and sagittal slices through the largest change; red = original,
blue = refined, over the CT when the batch recorded it. Click a thumbnail for the full report picture; click a
column header to sort. Made from {esc(summary_name)}; review decisions are those recorded in it when this page
was made (nearslicer report again, or the Slicer review queue, updates them).</p>
<script>{_SCRIPT}</script>
</body></html>
"""


def build_report(batch: Union[str, os.PathLike], out: Optional[Union[str, os.PathLike]] = None,
                 overwrite: bool = False, full_reports: bool = True,
                 progress: Optional[Callable[[int, int, str], None]] = None) -> Path:
    """Write the review page of a batch folder; returns its path (default ``<batch>/report.html``).

    Pictures go to ``<page stem>_files/`` beside the page. A row whose files cannot be read is
    listed with the reason instead of a picture (the page is still made).
    """
    summary, rows = read_batch(batch)
    folder = summary.parent
    out = Path(os.path.abspath(os.fspath(out))) if out else folder / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"report {out} must be an .html file")
    assets = out.parent / f"{out.stem}_files"
    inputs = [summary] + [p for row in rows for p in (row.path(c, folder) for c in ("mask", "image", "output")) if p]
    planned: List[Tuple[int, BatchRow, Path, Optional[Path]]] = []
    for index, row in enumerate(rows):
        if row.failed:
            continue
        stem = f"{index:04d}_{_safe_name(row.case)}_{_safe_name(row.segment)}"
        planned.append((index, row, assets / f"{stem}_thumb.png", assets / f"{stem}_report.png" if full_reports else None))
    check_output_folder(out.parent)
    check_outputs([out], inputs, overwrite=overwrite)
    if assets.exists() and not assets.is_dir():
        raise InputError(f"{assets} exists and is not a folder")
    pictures = [p for _, _, thumb, full in planned for p in (thumb, full) if p is not None]
    if assets.is_dir():
        check_outputs(pictures, inputs, overwrite=overwrite)
    if planned:
        check_output_folder(assets, create=True)

    links = {}
    notes = {}
    files = CaseFiles()
    for n, (index, row, thumb, full) in enumerate(planned):
        if progress is not None:
            progress(n, len(planned), f"{row.case} / {row.segment}")
        try:
            image, original, refined, spacing = load_case(row, folder, files)
            save_thumbnail(thumb, image, original, refined, spacing)
            if full is not None:
                metrics = {"Dice(original, refined)": row.dice if row.dice is not None else ""}
                if row.change_percent is not None:
                    metrics["volume change"] = f"{row.change_percent:+.1f} %"
                if row.confidence is not None:
                    metrics["confidence"] = row.confidence
                for column in ("prior", "action", "review"):
                    if row.text(column):
                        metrics[column] = row.text(column)
                save_report_png(str(full), image, original, refined, spacing,
                                title=f"{row.case} / {row.segment}: original (red) vs NeAR (blue)", metrics=metrics)
            links[index] = (thumb, full)
            if image is None:
                notes[index] = "no CT recorded for this case" if not row.text("image") else "CT not found"
        except (InputError, OSError, ValueError) as exc:
            notes[index] = f"not shown: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"

    def rel(path: Optional[Path]) -> Optional[str]:  # a relative URL: the page and its folder move together
        return None if path is None else quote(os.path.relpath(path, out.parent).replace(os.sep, "/"))

    rows_html = [_row_html(i, row, rel(links.get(i, (None, None))[0]), rel(links.get(i, (None, None))[1]),
                           notes.get(i, "")) for i, row in enumerate(rows)]
    cases = {row.case for row in rows}
    failed_cases = {row.case for row in rows if row.failed}
    changes = [row.change_percent for row in rows if not row.failed and row.change_percent is not None]
    page = _page(f"NeAR review: {folder.name}", summary.name, rows_html, len(cases), len(failed_cases), len(rows),
                 changes)
    atomic_write_text(out, page)
    return out


def report_facts(path: Union[str, os.PathLike]) -> dict:
    """What a made page says in its summary strip (for tests and scripts): counts as ints."""
    text = Path(path).read_text(encoding="utf-8")
    facts = {}
    for key in ("n-cases", "n-failed"):
        match = re.search(rf'id="{key}">(\d+)<', text)
        facts[key] = int(match.group(1)) if match else None
    facts["rows"] = len(re.findall(r"<tr[^>]* data-index=", text))
    return facts
