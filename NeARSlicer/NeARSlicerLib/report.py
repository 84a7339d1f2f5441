"""A one-page PNG comparing an original and a refined mask (for the CLI, the demo and reviews).

Headless: it draws on matplotlib's Agg canvas directly and never touches pyplot or the global
backend, so it is safe inside Slicer and on servers. Arrays are ``[k, j, i]``; spacing is
``(i, j, k)`` mm. Panels show array axes (not patient orientation); they are labelled as such.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from skimage import measure

from .errors import InputError
from .output_safety import atomic_write

__all__ = ["save_report_png", "append_panel_png", "read_report_facts"]

# PNG text chunk holding the reported numbers as JSON, so they can be checked against the files
_FACTS_KEY = "NeARSlicer"

_ORIGINAL = "#e41a1c"   # red
_REFINED = "#1f5bff"    # blue
_CT_WINDOW = (-160.0, 240.0)  # soft-tissue window: level 40 HU, width 400 HU


def _bbox(mask: np.ndarray) -> Optional[np.ndarray]:
    """[[lo, hi], ...] per axis ([k, j, i]) of the set voxels, or None if empty."""
    if not mask.any():
        return None
    nz = np.nonzero(mask)
    return np.array([[a.min(), a.max()] for a in nz])


def _outline(ax, mask2d: np.ndarray, color: str, label: Optional[str] = None, width: float = 1.2) -> None:
    """Draw the 0.5 iso-contour of a 2D mask; nothing if the slice misses the mask."""
    if mask2d.shape[0] < 2 or mask2d.shape[1] < 2 or not mask2d.any():
        return
    padded = np.pad(mask2d.astype(np.float32), 1)  # closes contours that touch the crop edge
    for n, c in enumerate(measure.find_contours(padded, 0.5)):
        ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=color, linewidth=width, label=label if n == 0 else None)


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def _json_value(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def read_report_facts(path: str) -> dict:
    """The numbers a report PNG shows (``title``, ``original_voxels``, ``refined_voxels``,
    ``spacing``, ``metrics``), read back from its text chunk; ``{}`` for a PNG without them."""
    from PIL import Image

    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    return json.loads(text[_FACTS_KEY]) if _FACTS_KEY in text else {}


def _save_png(fig: Figure, path: str, facts: dict, **kwargs) -> None:
    meta = {_FACTS_KEY: json.dumps(facts)} if facts else {}
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata=meta, **kwargs))


def save_report_png(path: str, image_or_None: Optional[np.ndarray], original_mask: np.ndarray,
                    refined_mask: np.ndarray, grid_spacing: Sequence[float], title: str = "",
                    metrics: Optional[Dict[str, object]] = None) -> None:
    """Write a PNG: three orthogonal slices through the masks' centre (CT in a soft-tissue window
    if given, red = original, blue = refined), maximum-intensity projections of both masks, and
    a box with ``metrics``. ``grid_spacing`` is (i, j, k) mm and sets the aspect ratios.
    """
    orig = np.asarray(original_mask) != 0
    ref = np.asarray(refined_mask) != 0
    if orig.ndim != 3 or orig.shape != ref.shape:
        raise InputError(f"report masks must be 3D and alike, got {orig.shape} and {ref.shape}")
    if image_or_None is not None and np.shape(image_or_None) != orig.shape:
        raise InputError(f"report image shape {np.shape(image_or_None)} does not match mask shape {orig.shape}")
    si, sj, sk = (float(s) for s in grid_spacing)

    # Crop around both masks (+ margin) so a small gland is visible in a large scan.
    box = _bbox(orig | ref)
    shape = np.array(orig.shape)
    if box is None:
        lo, hi, centre = np.zeros(3, int), shape - 1, shape // 2
    else:
        sp_kji = np.array([sk, sj, si])
        margin = np.ceil(np.maximum(10.0, 0.5 * (box[:, 1] - box[:, 0] + 1) * sp_kji) / sp_kji).astype(int)
        lo = np.maximum(box[:, 0] - margin, 0)
        hi = np.minimum(box[:, 1] + margin, shape - 1)
        centre = ((box[:, 0] + box[:, 1]) // 2).astype(int)
    crop = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    o, r = orig[crop], ref[crop]
    img = None if image_or_None is None else np.asarray(image_or_None, dtype=np.float32)[crop]
    c = centre - lo

    fig = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5, gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.8]})
    # (name, slicer of the cropped volume, aspect = row spacing / column spacing, rows flipped?)
    views = [
        (f"axial k={centre[0]}", lambda v: v[c[0]], sj / si, False),
        (f"coronal j={centre[1]}", lambda v: v[:, c[1]], sk / si, True),
        (f"sagittal i={centre[2]}", lambda v: v[:, :, c[2]], sk / sj, True),
    ]
    for ax, (name, cut, aspect, flip) in zip(axes[:3], views):
        origin = "lower" if flip else "upper"  # keep k (superior in most scans) pointing up
        if img is not None:
            ax.imshow(cut(img), cmap="gray", vmin=_CT_WINDOW[0], vmax=_CT_WINDOW[1], aspect=aspect,
                      origin=origin, interpolation="nearest")
        else:
            ax.imshow(np.zeros(cut(o).shape), cmap="gray", vmin=0, vmax=1, aspect=aspect, origin=origin)
        _outline(ax, cut(o), _ORIGINAL, "original", width=2.6)  # wide and below: a red halo
        _outline(ax, cut(r), _REFINED, "refined")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    # A 3D-ish view: projections along j (front view) of both masks, filled lightly and outlined.
    ax = axes[3]
    mo, mr = o.any(axis=1), r.any(axis=1)
    tint = np.ones(mo.shape + (3,))
    tint[mo] = (1.0, 0.82, 0.82)
    tint[mr] = (0.82, 0.86, 1.0)
    tint[mo & mr] = (0.88, 0.8, 0.95)
    ax.imshow(tint, aspect=sk / si, origin="lower", interpolation="nearest")
    _outline(ax, mo, _ORIGINAL, "original", width=2.6)
    _outline(ax, mr, _REFINED, "refined")
    ax.set_title("projection along j", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=7, framealpha=0.8)

    ax = axes[4]
    ax.axis("off")
    lines = [f"original: {int(orig.sum())} vox", f"refined: {int(ref.sum())} vox",
             f"spacing: {si:g} x {sj:g} x {sk:g} mm"]
    lines += [f"{k}: {_fmt(v)}" for k, v in (metrics or {}).items()]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace",
            transform=ax.transAxes, bbox={"boxstyle": "round", "facecolor": "#f4f4f4", "edgecolor": "#999"})
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    facts = {"title": title, "original_voxels": int(orig.sum()), "refined_voxels": int(ref.sum()),
             "spacing": [si, sj, sk], "metrics": {k: _json_value(v) for k, v in (metrics or {}).items()}}
    _save_png(fig, path, facts)


def append_panel_png(path: str, panel: np.ndarray, title: str) -> None:
    """Put ``panel`` (RGB(A) array, e.g. a 3D rendering) with ``title`` to the right of the report
    PNG at ``path``. The file is rewritten atomically and keeps its reported numbers."""
    from matplotlib.image import imread

    report = imread(path)
    facts = read_report_facts(path)
    height, width = report.shape[:2]
    side, dpi = height, 100.0
    fig = Figure(figsize=((width + side) / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    left = fig.add_axes([0.0, 0.0, width / (width + side), 1.0])
    left.imshow(report, interpolation="nearest")
    left.axis("off")
    right = fig.add_axes([width / (width + side), 0.02, side / (width + side), 0.86])
    right.imshow(np.asarray(panel), interpolation="bilinear")
    right.axis("off")
    right.set_title(title, fontsize=10)
    _save_png(fig, path, facts, dpi=dpi, facecolor="white")
