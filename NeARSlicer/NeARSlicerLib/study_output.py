"""The files a study writes: ``<case>.nii.gz`` refined masks, ``summary.csv`` (one row per case in
the batch contract, ``batch.SUMMARY_COLUMNS``, added as each case is written: ``nearslicer report``
reviews a study as it reviews a batch), and the study-trained prior (``study_prior.safetensors`` +
its JSON card).

Everything is checked before training starts (:class:`StudyOutputs`): the output folder must not be
a folder holding the study's inputs (the refined ``<case>.nii.gz`` files would sit among, and with
``.nii.gz`` masks replace, the annotations), no output may be an input, and existing outputs are
only replaced with ``overwrite``. Every file is written atomically (``output_safety``).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence

import numpy as np

from .batch import SUMMARY_COLUMNS as BATCH_COLUMNS, result_cells
from .output_safety import (OutputError, SummaryWriter, atomic_write_text, check_output_folder, check_outputs,
                            same_file)
from .prior import save_prior

if TYPE_CHECKING:  # only for type hints: study.py imports this module
    from .study import StudyCase, StudyResult

_HOST = socket.gethostname()

# the batch contract (``nearslicer batch``, Slicer's refineStudy): ``nearslicer report`` and Slicer's review
# queue read a study's outputs as they read a batch's
SUMMARY_COLUMNS = tuple(BATCH_COLUMNS)
SUMMARY_NAME = "summary.csv"
PRIOR_NAME = "study_prior.safetensors"
CARD_NAME = "study_prior.json"

__all__ = ["StudyOutputs", "write_study", "save_study_prior", "study_card", "summary_row", "SUMMARY_COLUMNS"]


def summary_row(case: "StudyCase", refined: np.ndarray, seconds: float, info: Optional[dict] = None,
                warnings: Sequence[str] = (), output: Optional[str | Path] = None) -> dict:
    """One summary row in the batch contract (``batch.SUMMARY_COLUMNS``): the case's input files, segment
    and label (what the review reads the original with), ``output``, voxels before/after, Dice(input,
    refined), seconds and, for the denoise recipe (each case is refined), the refinement's facts and
    ``warnings``, as a batch reports them (empty for the fast and paper recipes)."""
    cells = {key: "" for key in SUMMARY_COLUMNS}
    cells.update(result_cells(case.mask, refined, info or {}, list(warnings), seconds))
    cells.update({"case": case.name, "segment": case.segment or "", "label": "" if case.label is None else str(case.label),
                  "mask": os.path.abspath(case.mask_path) if case.mask_path else "",
                  "image": os.path.abspath(case.image_path) if case.image_path else "",
                  "output": os.path.abspath(output) if output else "", "host": _HOST})
    return cells


def study_card(result: "StudyResult") -> dict:
    """Facts about a study-trained prior, for its metadata and JSON card."""
    cfg = result.config
    return {
        "kind": "nearslicer study prior",
        "recipe": cfg.recipe,
        "cases": list(result.names),
        "steps": result.steps,
        "epochs": result.epochs,
        "stopped_early": result.stopped_early,
        "final_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.train_seconds, 1),
        "mlp_point_evals": result.mlp_point_evals,
        "decoder_passes": result.decoder_passes,
        "appearance": bool(result.info.get("appearance")),
        "config": cfg.to_dict(),
        "warm_start": result.info.get("prior"),
        # a usable (trained) encoder: the prior's (fast), adapted (denoise); a paper-recipe model has a random one
        "encoder_trained": cfg.recipe != "paper",
        # adapted on the annotations as painted: refine gives it a thick-slice staircase as it is, as the
        # study did (refine --prior study_prior.safetensors reproduces the study's masks)
        "interpolate_slices": False,
        "fov_mm": float((result.info.get("prior_meta") or {}).get("fov_mm", 64.0)),
        # the warm-start prior's working scale, domain and image normalisation hold for the study prior too
        **{k: v for k, v in (result.info.get("prior_meta") or {}).items()
           if k in ("scale", "domain", "appearance_norm", "modalities")},
        "note": "trained transductively on the listed cases' own (imperfect) annotations; "
                "NeAR: Yang, Shi et al., MICCAI 2022",
    }


def save_study_prior(result: "StudyResult", path: str | Path) -> Path:
    """The study-trained model as a reusable prior (safetensors) with its JSON card beside it
    (same name, ``.json``); both written atomically."""
    import json

    card = study_card(result)
    prior = save_prior(path, result.model, card)
    atomic_write_text(prior.with_suffix(".json"), json.dumps(card, indent=2))
    return prior


def case_inputs(cases: Sequence["StudyCase"]) -> List[str]:
    return [p for c in cases for p in (getattr(c, "mask_path", None), getattr(c, "image_path", None)) if p]


def refuse_input_folder(out_dir: str | Path, inputs: Iterable[str | Path]) -> Path:
    """``out_dir`` as an absolute path; OutputError if it is the folder of one of ``inputs``."""
    out = Path(os.path.abspath(os.fspath(out_dir)))
    for inp in inputs:
        if same_file(Path(os.path.abspath(os.fspath(inp))).parent, out):
            raise OutputError(f"output folder {out} holds the study's input {Path(inp).name}: the refined "
                              "<case>.nii.gz files would sit among (and could replace) the inputs; "
                              "choose another output folder")
    return out


class StudyOutputs:
    """The output folder of a study, checked at construction (before any training) and written case
    by case.

    ``inputs``: the files the cases were read from (default: the cases' ``mask_path`` and
    ``image_path``); ``checkpoint``: a checkpoint file in the folder that may exist (resume);
    ``other_inputs`` (e.g. the prior): files no output may replace, wherever they are.
    Raises :class:`~output_safety.OutputError` with the path and the reason.
    """

    def __init__(self, out_dir: str | Path, cases: Sequence["StudyCase"], overwrite: bool = False,
                 inputs: Optional[Iterable[str | Path]] = None, checkpoint: Optional[str | Path] = None,
                 other_inputs: Iterable[Optional[str | Path]] = ()) -> None:
        ins = [os.fspath(p) for p in (inputs if inputs is not None else case_inputs(cases)) if p]
        out = refuse_input_folder(out_dir, ins)
        self.folder = check_output_folder(out, create=True)
        self.masks = {c.name: self.folder / f"{c.name}.nii.gz" for c in cases}
        self.prior = self.folder / PRIOR_NAME
        check_outputs([*self.masks.values(), self.folder / SUMMARY_NAME, self.prior, self.folder / CARD_NAME],
                      [*ins, checkpoint, *other_inputs], overwrite=overwrite)
        # existence was checked above: the summary starts afresh at its first row (not before)
        self.summary = SummaryWriter(self.folder / SUMMARY_NAME, SUMMARY_COLUMNS, overwrite=True)

    def case_done(self, case: "StudyCase", mask: np.ndarray, seconds: float, info: Optional[dict] = None,
                  warnings: Sequence[str] = ()) -> None:
        """Write one refined mask, then its summary row (``info``, ``warnings``: its refinement's, if refined)."""
        from .io import write_mask

        path = self.masks[case.name]
        source = getattr(case, "source", None)  # a case held as a box (study.load_cases): its whole volume
        write_mask(str(path), *((mask, case.grid) if source is None else (source.place(mask), source.grid)))
        self.summary.add(summary_row(case, mask, seconds, info, warnings, output=path))

    def finish(self, result: "StudyResult") -> Path:
        """Write the study-trained prior and its card; returns the folder."""
        save_study_prior(result, self.prior)
        return self.folder


def write_study(result: "StudyResult", cases: Sequence["StudyCase"], out_dir: str | Path,
                overwrite: bool = False) -> Path:
    """Write a finished study's ``<name>.nii.gz`` masks, ``summary.csv`` and ``study_prior.*`` into
    ``out_dir`` (created if needed), with the checks of :class:`StudyOutputs`."""
    outs = StudyOutputs(out_dir, cases, overwrite=overwrite)
    infos = result.case_info or [None] * len(cases)
    # each mask on its case as studied (a box read again larger, ``study._within_reach``)
    for c, m, s, info in zip(result.cases or cases, result.masks, result.case_seconds, infos):
        outs.case_done(c, m, s, info, result.case_warnings(c.name))
    return outs.finish(result)
