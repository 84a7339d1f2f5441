"""Benchmark: smoothing baselines vs NeAR (shape-only S, shape + appearance S+A; single-case
refinement and study mode) on distorted annotations with known truth.

Case sets:

* ``alan_cases``: ALAN val shapes (1 mm, 64^3), each distorted with a fixed seed; with
  ``appearance`` each also gets a synthetic CT (``phantom.ct_phantom``, same seed) around its
  clean shape, so the image shows the true boundary and the annotation does not.
* ``real_ct_cases``: labels of a real CT (the adrenal glands of ../shared/data/totalseg_example),
  resampled with the CT onto a 1 mm working cube around each label, each distorted with several
  seeds.
* ``unseen_class_cases``: generated shapes of the classes the general prior never trained on
  (``anatomy_shapes.HELD_OUT_CLASSES``), 10-200 mm, each in a synthetic CT.
* ``real_ct_structures``: every label of a real CT with enough voxels, distorted on the CT's own
  grid (a spleen, a vertebra and an adrenal gland as a user's segments are), each named so that
  ``--prior auto`` chooses for it as for a user's segment. Each is a ``ScanCase``: its truth and
  annotation held as the boxes of their voxels, the scan's image shared, so that a full-resolution
  CT's hundred labels fit in memory; ``run_bench`` scores each on the box its methods read
  (``bench_box``), which gives the whole scan's results.

Every NeAR row goes through the full ``refine_mask`` (or ``run_study``) path: crop, working grid,
fit, decode, map back. Reports DSC and NSD (1 mm tolerance) as mean +- sd in percent and seconds
per case (a study's training time is shared out over its cases). ``by_structure`` scores each
structure (its cases averaged over their seeds) against its input.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from .baselines import BASELINES
from .annotation_errors import corrupt
from .boxed_mask import BoxedMask
from .case_crop import CropSource
from .heldout_errors import corrupt_heldout, is_heldout
from .distort import distort
from .errors import InputError
from .geometry import Grid, occupied_box, to_working
from .modality import ScanFacts
from .metrics import dice, normalized_surface_dice
from .refine import RefineOptions, reads_box, refine_mask

BENCH_SEED = 20_000  # case i is distorted (and its phantom CT drawn) with seed BENCH_SEED + i


@dataclass
class BenchCase:
    """A distorted ``annotation`` of a known ``truth`` (bool ``[k, j, i]`` on ``grid``), with its CT (HU) or None."""

    name: str
    truth: np.ndarray
    annotation: np.ndarray
    grid: Grid
    image: Optional[np.ndarray] = None
    # what the mask is, for ``--prior auto`` (a variant's own ``structure`` wins); None: the variant's
    structure: Optional[str] = None
    # the image's own finest voxel side (mm) when it was resampled onto this finer grid, as Slicer tells
    # the engine for a volume under an oversampled segmentation (``RefineOptions.image_voxel_mm``)
    image_voxel_mm: Optional[float] = None
    # set when the case is a box of a larger scan (``ScanCase.on_box``): where it lies, the scan's facts
    source: Optional[CropSource] = None


# the farthest (mm) any smoothing baseline reads or writes beyond the mask: gaussian 2 mm is cut at 4
# sigma (8 mm), a closing of 5 mm reads its dilation 5 mm out
BASELINE_REACH_MM = 12.0


@dataclass
class ScanCase:
    """A distorted annotation of a known truth on a large scan, each held as the box of its voxels
    (``BoxedMask``), with the scan's grid, image (HU, one array shared by every case of the scan) and
    facts. ``truth``, ``annotation``, ``grid`` and ``image`` are the whole scan's, as a ``BenchCase``'s
    (the masks allocated at each read); ``on_box`` gives the case on a box of the scan."""

    name: str
    truth_box: BoxedMask
    annotation_box: BoxedMask
    grid: Grid
    image: np.ndarray
    scan: ScanFacts
    structure: Optional[str] = None
    image_voxel_mm: Optional[float] = None

    @property
    def truth(self) -> np.ndarray:
        return self.truth_box.full() > 0

    @property
    def annotation(self) -> np.ndarray:
        return self.annotation_box.full() > 0

    def occupied(self) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi)`` box of the scan ([k, j, i]) holding the truth and the annotation."""
        found = [(b.lo, occupied_box(b.array)) for b in (self.truth_box, self.annotation_box) if b.any()]
        return (np.min([np.add(at, lo) for at, (lo, _) in found], axis=0),
                np.max([np.add(at, hi) for at, (_, hi) in found], axis=0))

    def near_box(self) -> tuple[np.ndarray, np.ndarray]:
        """``[lo, hi)`` box of the scan holding the truth, the annotation and what every smoothing baseline
        reads and writes around them (``BASELINE_REACH_MM``)."""
        lo, hi = self.occupied()
        pad = np.ceil(BASELINE_REACH_MM / np.asarray(self.grid.spacing, float)[::-1]).astype(int) + 1
        return np.maximum(lo - pad, 0), np.minimum(hi + pad, self.grid.shape)

    def on_box(self, lo, hi) -> BenchCase:
        """The case on the box ``[lo, hi)`` of the scan, which must hold its truth and annotation: the masks
        copied, the image a view of the scan's, ``source`` saying where it lies."""
        lo = tuple(int(v) for v in lo)
        shape = tuple(int(h) - a for a, h in zip(lo, hi))
        masks = []
        for b in (self.truth_box, self.annotation_box):
            m = np.zeros(shape, bool)
            if b.any():
                m[tuple(slice(a - o, a - o + n) for a, o, n in zip(b.lo, lo, b.array.shape))] = b.array
            masks.append(m)
        box = tuple(slice(a, a + n) for a, n in zip(lo, shape))
        return BenchCase(self.name, masks[0], masks[1], self.grid.sub_grid(lo, tuple(hi)), self.image[box],
                         self.structure, self.image_voxel_mm, CropSource(self.grid, lo, shape, self.scan))


def corrupt_case(mask: np.ndarray, spacing, family: str, seed: int, image: Optional[np.ndarray] = None) -> np.ndarray:
    """A bench case's annotation: the error library's ``family`` (``image`` in HU lets leaks flood similar
    tissue) or, for a held-out process (``heldout_errors``, which reads no image), that process."""
    if is_heldout(family):
        return corrupt_heldout(mask, spacing, family, seed)
    return corrupt(mask, spacing, family, seed, image=image)


def identity_grid(shape: tuple[int, int, int], spacing: float = 1.0) -> Grid:
    return Grid(shape=tuple(shape), spacing=(spacing,) * 3, origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def alan_cases(shapes: np.ndarray, appearance: bool = False, family: Optional[str] = None) -> list[BenchCase]:
    """Distorted clean shapes (1 mm); with ``appearance`` a synthetic CT around each clean shape.

    ``family``: an ``annotation_errors`` family (or ``mixture``) or a held-out process (``heldout_errors``)
    instead of the v1 generator
    (``distort``); case i always gets seed ``BENCH_SEED + i``.
    """
    from .phantom import ct_phantom

    cases = []
    for i, clean in enumerate(shapes):
        clean = np.asarray(clean, bool)
        image = ct_phantom(clean, seed=BENCH_SEED + i) if appearance else None
        noisy = (distort(clean, seed=BENCH_SEED + i) if family is None
                 else corrupt_case(clean, (1.0, 1.0, 1.0), family, BENCH_SEED + i, image=image))
        cases.append(BenchCase(f"val{i:03d}", clean, noisy, identity_grid(clean.shape), image))
    return cases


def real_ct_cases(ct_path: Union[str, Path], seg_path: Union[str, Path], labels: Sequence[int] = (8, 9),
                  per_label: int = 10, fov_mm: float = 64.0, family: Optional[str] = None) -> list[BenchCase]:
    """Cases from a real CT and its label map: each label's mask and the CT are resampled onto a
    1 mm cube of side ``fov_mm`` around the label (the truth), distorted with ``per_label`` seeds
    (``family``: an ``annotation_errors`` family or a held-out process instead of the v1 generator).
    A case is what Slicer hands the engine for a segmentation oversampled on this CT: the CT resampled
    onto the segment's 1 mm grid, with the CT's own voxel side (``BenchCase.image_voxel_mm``)."""
    from .io import read_image, read_mask

    image, igrid = read_image(str(ct_path))
    cases = []
    for label in labels:
        mask, grid, _ = read_mask(str(seg_path), label=label)
        if not igrid.same_as(grid):
            raise InputError(f"{seg_path} and {ct_path} are on different grids")
        if not mask.any():
            raise InputError(f"label {label} is empty in {seg_path}")
        work = to_working(mask > 0, grid, image, margin_mm=8.0, spacing_mm=1.0, min_fov_mm=fov_mm)
        truth = work.mask >= 0.5
        for s in range(per_label):
            seed = BENCH_SEED + 100 * label + s
            noisy = (distort(truth, seed=seed) if family is None
                     else corrupt_case(truth, work.grid.spacing, family, seed, image=work.image))
            cases.append(BenchCase(f"label{label}_d{s}", truth, noisy, work.grid, work.image,
                                   image_voxel_mm=float(min(igrid.spacing))))
    return cases


def real_ct_structures(ct_path: Union[str, Path], seg_path: Union[str, Path], min_voxels: int = 300,
                       per_label: int = 3, family: str = "mixture",
                       adrenal_labels: Sequence[int] = (8, 9), error_units: str = "mm",
                       seed: int = BENCH_SEED) -> list[ScanCase]:
    """Every label of a real CT's label map with at least ``min_voxels`` voxels (and the adrenal glands,
    whatever their size: the adrenal prior's own structures), on the CT's own grid
    (no working cube: ``refine_mask`` crops and scales each as it does a user's segment), distorted by
    the error library's ``family`` with ``per_label`` seeds; the CT is given to the error process, so
    that leaks flood tissue of similar HU. Each case's structure (what ``--prior auto`` reads) is its
    label's name in the map's label table (TotalSegmentator's: "adrenal_gland_left", "spleen"), else
    "adrenal gland" for ``adrenal_labels`` (TotalSegmentator v2's numbering: 8 and 9) and "label N" for
    the others (the general prior); a label the table names an adrenal gland counts as one whatever its
    number. ``error_units`` "voxel": the library's sizes are read in voxels of the CT's grid instead of mm
    (an annotator's brush of 1-2 voxels on a 3 mm CT: 3-6 mm), a harsher, coarser process than the
    library's mm sizes, which at 3 mm mostly stay under one voxel. Case ``label{N}_d{s}`` is distorted with
    seed ``seed + 100 N + s`` (another ``seed``: a fresh sample of the same structures).
    Each case is a ``ScanCase`` (its masks held as their boxes, the CT shared).
    Raises InputError for a mismatch of grids, no label large enough or unknown units."""
    import SimpleITK as sitk

    from .io import read_image
    from .label_table import label_names
    from .prior import is_adrenal_structure

    if error_units not in ("mm", "voxel"):
        raise InputError(f"error units must be mm or voxel, not {error_units!r}")
    image, igrid = read_image(str(ct_path))
    seg_img = sitk.ReadImage(str(seg_path))  # read once: every label's mask comes from this map
    if not igrid.same_as(Grid.from_sitk(seg_img)):
        raise InputError(f"{seg_path} and {ct_path} are on different grids")
    label_map = sitk.GetArrayFromImage(seg_img)
    names = label_names(str(seg_path))
    adrenal = {int(v) for v in adrenal_labels} | {v for v, n in names.items() if is_adrenal_structure(n)}
    values, counts = np.unique(label_map[label_map > 0], return_counts=True)
    chosen = [int(v) for v, c in zip(values, counts) if c >= min_voxels or int(v) in adrenal]
    if not chosen:
        raise InputError(f"no label of {seg_path} has {min_voxels} voxels or more")
    error_spacing = igrid.spacing if error_units == "mm" else (1.0, 1.0, 1.0)
    facts = ScanFacts.of(image)
    cases = []
    for label in chosen:
        truth = label_map == label
        held = BoxedMask.of(truth)
        name = names.get(label) or ("adrenal gland" if label in adrenal else f"label {label}")
        for s in range(per_label):
            # distorted as on the whole scan (the error library reads the box each family reaches), then
            # held as its box
            noisy = BoxedMask.of(corrupt_case(truth, error_spacing, family, seed + 100 * label + s, image=image))
            cases.append(ScanCase(f"label{label}_d{s}", held, noisy, igrid, image, facts, structure=name))
    return cases


def unseen_class_cases(n: int, family: str = "mixture", seed: int = BENCH_SEED) -> list[BenchCase]:
    """``n`` generated shapes of the classes no general prior trained on (``HELD_OUT_CLASSES``:
    branching vessel trees and lymph-node-like shapes, 10-200 mm, each on its own isotropic grid so
    that it spans 32-48 voxels), each in a synthetic CT, distorted by the error library's ``family``
    (sizes in mm) with seed ``seed + i`` (another ``seed``: a fresh sample of the same classes). Named by
    class (``branching_03_d0``); no structure name, so ``--prior auto`` gives them the general prior, as
    it would an unnamed segment."""
    from .anatomy_shapes import HELD_OUT_CLASSES, anatomy_study_cases

    cases = []
    for i, c in enumerate(anatomy_study_cases(seed, n, classes=HELD_OUT_CLASSES)):
        sp = float(c["spacing_mm"])
        clean = np.asarray(c["mask"], bool)
        noisy = corrupt_case(clean, (sp,) * 3, family, seed + i, image=c["image"])
        cases.append(BenchCase(f"{c['cls']}_{i:02d}_d0", clean, noisy, identity_grid(clean.shape, sp), c["image"]))
    return cases


def _summary(rows: list[dict]) -> dict:
    d = np.array([r["dsc"] for r in rows]) * 100
    s = np.array([r["nsd"] for r in rows]) * 100
    t = np.array([r["seconds"] for r in rows])
    return {"dsc_mean": float(d.mean()), "dsc_sd": float(d.std()), "nsd_mean": float(s.mean()),
            "nsd_sd": float(s.std()), "seconds_mean": float(t.mean()), "cases": len(rows)}


def _score(case: BenchCase, mask: np.ndarray, seconds: float, tolerance_mm: Optional[float] = 1.0) -> dict:
    """DSC and NSD at ``tolerance_mm`` (None: the case's own coarsest voxel side)."""
    tol = max(case.grid.spacing) if tolerance_mm is None else tolerance_mm
    return {"case": case.name, "dsc": dice(mask, case.truth),
            "nsd": normalized_surface_dice(mask, case.truth, case.grid.spacing, tol), "seconds": seconds}


def run_bench(
    cases: Union[Sequence[BenchCase], np.ndarray],
    options: Optional[RefineOptions] = None,
    baselines: Optional[dict[str, Callable]] = None,
    log: Callable[[str], None] = print,
    variants: Optional[dict[str, RefineOptions]] = None,
    studies: Optional[dict[str, tuple[Optional[str], bool]]] = None,
    tolerance_mm: Optional[float] = 1.0,
    study_recipe: str = "fast",
    seed_base: int = BENCH_SEED,
) -> dict:
    """Score every method on every case against its truth (NSD at ``tolerance_mm``; None: at each
    case's coarsest voxel side).

    ``cases``: BenchCase or ScanCase list, or an array of clean shapes (``alan_cases`` without images).
    ``variants``: single-case NeAR rows, name -> RefineOptions (None: ``{"NeAR": options}``; empty: none).
    ``studies``: study-mode rows, name -> (prior path, or None / "auto": one study per prior that
    ``--prior auto`` gives the cases' structures; use images), ``study_recipe`` on all cases.
    A case's ``structure`` is given to a variant that names none (``--prior auto`` chooses by it).
    ``seed_base``: the seed the cases were drawn with (case i: ``seed_base + i``), recorded in the settings.
    """
    from .study import StudyConfig
    from .study_prior_choice import run_studies_by_prior

    if not isinstance(cases, (list, tuple)) or (cases and not isinstance(cases[0], (BenchCase, ScanCase))):
        cases = alan_cases(np.asarray(cases))
    methods = dict(baselines if baselines is not None else BASELINES)
    # the benchmark's cases are adrenal glands (ALAN, the real CT's labels 8/9): auto picks that prior
    variants = dict(variants if variants is not None else {"NeAR": options or RefineOptions(structure="adrenal gland")})
    per: dict[str, list[dict]] = {"input": [], **{k: [] for k in methods}, **{k: [] for k in variants}}
    info = {}
    # a case of a large scan is scored on boxes of it, which give the whole scan's results: the input and
    # the smoothing on the box of its masks and the smoothing's reach, NeAR on the box it reads
    boxes = [bench_box(c, variants.values(), (studies or {}).values(), study_recipe) if isinstance(c, ScanCase)
             else None for c in cases]

    def held(i: int) -> BenchCase:
        return cases[i] if boxes[i] is None else cases[i].on_box(*boxes[i])

    for i in tqdm(range(len(cases)), desc="bench", mininterval=2):
        case = cases[i].on_box(*cases[i].near_box()) if boxes[i] is not None else cases[i]
        per["input"].append(_score(case, case.annotation, 0.0, tolerance_mm))
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn(case.annotation, case.grid.spacing)
            per[name].append(_score(case, out, time.perf_counter() - t0, tolerance_mm))
        case = held(i)
        scan = case.source.scan if case.source is not None else None
        for name, opts in variants.items():
            opts = _case_options(case, opts)
            res = refine_mask(case.annotation.astype(np.uint8), case.grid, case.image, options=opts, scan=scan)
            row = _score(case, res.mask > 0, res.seconds, tolerance_mm)
            row["prior"] = res.info.get("prior_name") or Path(str(res.info["prior"])).stem
            # what the do-no-harm default did and how far it trusted the result: the evidence that low
            # confidence or a kept annotation marks the cases the prior would have made worse
            row["action"], row["confidence"] = res.info.get("action"), res.info.get("confidence")
            per[name].append(row)
            info[name] = {k: res.info[k] for k in ("prior", "preset", "appearance", "device")}
    for name in variants:  # with --prior auto the prior differs per case: every one used is listed
        info[name]["priors_used"] = sorted({r["prior"] for r in per[name]})
    for name, (prior, use_images) in (studies or {}).items():
        log(f"study mode: {name} on {len(cases)} cases")
        study_cases = [_study_case(held(i), use_images) for i in range(len(cases))]
        # --prior auto: one study per prior (adrenal glands with the adrenal prior, the rest with the
        # general one), as a user runs them (study_prior_choice refuses a mixed study)
        rows: list[Optional[dict]] = [None] * len(cases)
        info[name] = {"prior": [], "appearance": [], "epochs": [], "recipe": study_recipe, "extent_voxels": [],
                      "train_seconds": [], "cases": []}
        cfg = StudyConfig.for_recipe(study_recipe, appearance=use_images)
        for run in run_studies_by_prior(study_cases, prior, cfg):
            res, idx = run.result, run.cases
            for i, m, s in zip(idx, res.masks, res.case_seconds):
                rows[i] = _score(held(i), m > 0, s, tolerance_mm)
            for k, v in (("prior", res.info["prior"]), ("appearance", res.info["appearance"]),
                         ("epochs", res.epochs), ("extent_voxels", res.config.extent_voxels),
                         ("train_seconds", round(res.train_seconds, 1)), ("cases", len(idx))):
                info[name][k].append(v)
        per[name] = rows
    return {
        "table": {name: _summary(rows) for name, rows in per.items()},
        "per_case": per,
        "structures": {c.name: c.structure for c in cases if c.structure},  # what each case is, where named
        "settings": {"seed_base": seed_base, "nsd_tolerance_mm": tolerance_mm, "torch_threads": torch.get_num_threads(),
                     "machine": platform.machine(), "methods": info},
    }


def _case_options(case: Union[BenchCase, ScanCase], opts: RefineOptions) -> RefineOptions:
    """A variant's options for ``case``: its structure (``--prior auto`` chooses by it) and its image's own
    voxel side, where the variant sets none."""
    if case.structure and opts.structure is None:
        opts = replace(opts, structure=case.structure)
    if case.image_voxel_mm and opts.image_voxel_mm is None:
        opts = replace(opts, image_voxel_mm=case.image_voxel_mm)
    return opts


def _study_case(case: BenchCase, use_image: bool):
    """A bench case as a study case (a box of a scan keeps its ``source``; without its image, no scan facts)."""
    from .study import StudyCase

    source = case.source
    if source is not None and not use_image:
        source = replace(source, scan=None)
    return StudyCase(case.name, case.annotation.astype(np.uint8), case.grid, case.image if use_image else None,
                     structure=case.structure, image_voxel_mm=case.image_voxel_mm, source=source)


def bench_box(case: ScanCase, variants: Sequence[RefineOptions] = (),
              studies: Sequence[tuple[Optional[str], bool]] = (),
              study_recipe: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` box of ``case``'s scan ([k, j, i]) holding all that NeAR's rows read: its truth and
    annotation, the box ``refine_mask`` reads for each variant (``refine.reads_box``, the prior chosen as
    it chooses) and, for each study (prior, reads images) of ``study_recipe``, the box the study reads
    (``study.study_box``). Results on it are the whole scan's."""
    from .study import StudyConfig, study_box

    lo, hi = case.occupied()
    near = case.on_box(lo, hi)  # the masks' own box: each method's box is measured from it
    need_lo, need_hi = [lo], [hi]
    for opts in variants:
        a, b = reads_box(near.annotation.astype(np.uint8), near.grid, near.image, _case_options(near, opts),
                         scan=case.scan)
        need_lo.append(lo + a)
        need_hi.append(lo + b)
    for prior, use_image in studies:
        cfg = StudyConfig.for_recipe(study_recipe, appearance=use_image)
        a, b = study_box(_study_case(near, use_image), prior, cfg, with_image=cfg.appearance, clip=False)
        need_lo.append(lo + a)
        need_hi.append(lo + b)
    return np.maximum(np.min(need_lo, axis=0), 0), np.minimum(np.max(need_hi, axis=0), case.grid.shape)


def best_smoothing(result: dict) -> str:
    """Name of the smoothing baseline with the highest mean DSC in ``result`` (chosen with hindsight)."""
    names = [n for n in result["table"] if n in BASELINES]
    return max(names, key=lambda n: result["table"][n]["dsc_mean"])


def by_structure(result: dict, worse_by: float = 1.0) -> dict:
    """Per structure (cases named ``<structure>_d<seed>``), each method's DSC and NSD (%) averaged over
    the structure's seeds; ``worse``: for each method, the structures whose mean DSC is below their
    input's by more than ``worse_by`` DSC points."""
    per = result["per_case"]
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(per["input"]):
        groups.setdefault(row["case"].rsplit("_d", 1)[0], []).append(i)
    table = {g: {m: {"dsc": 100 * float(np.mean([rows[i]["dsc"] for i in idx])),
                     "nsd": 100 * float(np.mean([rows[i]["nsd"] for i in idx]))}
                 for m, rows in per.items()} for g, idx in groups.items()}
    worse = {m: [g for g, t in table.items() if t[m]["dsc"] < t["input"]["dsc"] - worse_by]
             for m in per if m != "input"}
    named = result.get("structures") or {}
    names = {g: named[per["input"][idx[0]]["case"]] for g, idx in groups.items() if per["input"][idx[0]]["case"] in named}
    return {"structures": table, "worse": worse, "worse_by_dsc": worse_by, "names": names}


def _named(summary: dict, group: str) -> str:
    """A structure's group as printed: ``label8 (adrenal_gland_right)`` when its label map names it."""
    name = (summary.get("names") or {}).get(group)
    return f"{group} ({name})" if name and name != group else group


def worse_names(summary: dict, method: str) -> list[str]:
    """The structures ``method`` made worse than their input (``by_structure``), named as printed."""
    return [_named(summary, g) for g in summary["worse"][method]]


def format_structures(summary: dict, methods: Sequence[str]) -> str:
    """A Markdown table: structure | input | methods..., DSC / NSD in % averaged over its seeds."""
    cols = ["input", *methods]
    lines = ["| structure | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for g, t in summary["structures"].items():
        lines.append(f"| {_named(summary, g)} | " + " | ".join(f"{t[m]['dsc']:.1f} / {t[m]['nsd']:.1f}" for m in cols)
                     + " |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    """A Markdown table: method | DSC % | NSD % (at the run's tolerance) | s / case."""
    tol = result.get("settings", {}).get("nsd_tolerance_mm", 1.0)
    tol = "1 voxel" if tol is None else f"{tol:g} mm"
    lines = [f"| method | DSC (%) | NSD {tol} (%) | s / case |", "|---|---|---|---|"]
    for name, s in result["table"].items():
        lines.append(f"| {name} | {s['dsc_mean']:.2f} +- {s['dsc_sd']:.2f} | {s['nsd_mean']:.2f} +- {s['nsd_sd']:.2f} "
                     f"| {s['seconds_mean']:.2f} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    from .output_safety import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, indent=1))
