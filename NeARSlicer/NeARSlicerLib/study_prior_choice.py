"""Which prior a study adapts: ``--prior auto`` for a whole study, as ``refine`` chooses for one segment.

A study adapts one prior to all of its cases. With ``auto`` (or no prior named) each case's
structure (``StudyCase.structure``: a segment name, Slicer terminology text, a label or file name)
chooses as ``prior.choose_prior`` does for a single refinement: the adrenal pair for an adrenal
gland, the general ``anatomy`` pair otherwise. A study whose cases would get different priors is
refused with the cases named (one study per prior: a study of spleens does not adapt the adrenal
prior, and adrenal glands studied with spleens would lose the adrenal prior that ``refine`` gives
them); ``groups_by_prior`` gives those studies, and ``run_studies_by_prior`` runs them one after
the other (the engine worker for Slicer's study mode; the CLI's ``--split-by-prior`` writes each to a
folder of its own). A named prior or a file is used for every case.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .errors import InputError
from .prior import AUTO, choose_prior

if TYPE_CHECKING:  # study.py imports this module
    from .study import StudyCase, StudyConfig, StudyResult


def _is_auto(prior: Optional[str]) -> bool:
    return prior is None or str(prior).strip().lower() in ("", AUTO)


def groups_by_prior(structures: Sequence[Optional[str]], prior: Optional[str],
                    with_image: bool) -> dict[Path, list[int]]:
    """{prior file: indices of the cases it serves} in first-seen order; one group unless ``prior``
    is ``auto`` and the structures ask for different priors. Raises PriorError for an unknown prior."""
    groups: dict[Path, list[int]] = {}
    if not _is_auto(prior):
        path = choose_prior(str(prior), None, with_image)[1]
        return {path: list(range(len(structures)))}
    for i, structure in enumerate(structures):
        groups.setdefault(choose_prior(None, structure, with_image)[1], []).append(i)
    return groups


def prior_label(path: Path, structure: Optional[str], with_image: bool, prior: Optional[str] = None) -> str:
    """A short name for the prior ``prior`` gives ``structure`` (``auto``: by the structure; its registry
    name, e.g. ``adrenal-sa``; else the file's stem): the sub-folder of its study under ``--split-by-prior``."""
    name = choose_prior(None, structure, with_image)[0] if _is_auto(prior) else choose_prior(str(prior), None,
                                                                                            with_image)[0]
    return name or Path(path).stem


def plan_by_prior(cases: Sequence["StudyCase"], prior: Optional[str],
                  appearance: bool) -> list[tuple[str, Path, list[int]]]:
    """(label, prior file, case indices) of each study ``prior`` gives ``cases`` (``groups_by_prior``), in
    first-seen order; the images count (an S+A prior) when ``appearance`` and any case has one."""
    with_image = bool(appearance and any(c.image is not None for c in cases))
    structures = [getattr(c, "structure", None) for c in cases]
    return [(prior_label(path, structures[idx[0]], with_image, prior), path, idx)
            for path, idx in groups_by_prior(structures, prior, with_image).items()]


def study_prior(names: Sequence[str], structures: Sequence[Optional[str]], prior: Optional[str],
                with_image: bool) -> Optional[str]:
    """The one prior file a study of these cases adapts (``prior`` as given when it names one).

    Raises InputError when ``auto`` would give its cases different priors, naming them."""
    if not _is_auto(prior):
        return prior
    groups = groups_by_prior(structures, prior, with_image)
    if len(groups) > 1:
        parts = []
        for path, idx in groups.items():
            shown = ", ".join(names[i] for i in idx[:4]) + (f" and {len(idx) - 4} more" if len(idx) > 4 else "")
            what = prior_label(path, structures[idx[0]], with_image)
            parts.append(f"the {what} prior for {len(idx)} case(s) ({shown})")
        raise InputError("--prior auto would refine the cases of this study with different priors: "
                         + "; ".join(parts) + ". A study adapts one prior: run one study per prior (the CLI's "
                         "--split-by-prior does, one sub-folder each; Slicer's refineStudy does it itself), or "
                         "name one for all (--prior in the CLI, prior= in Slicer: adrenal, anatomy or a "
                         ".safetensors file)")
    return str(next(iter(groups))) if groups else None


@dataclass
class PriorStudy:
    """One of the studies a split study ran: the prior it adapted, its cases (indices into the
    whole study's cases) and its result; ``prior_out`` where its trained prior was saved (or None)."""

    label: str
    prior: Path
    cases: list[int]
    result: "StudyResult"
    prior_out: Optional[Path] = None


def split_prior_path(prior_out: str | Path, label: str) -> Path:
    """Where the study of one prior saves its trained prior when a study is split by prior:
    ``study_prior.safetensors`` -> ``study_prior-adrenal-sa.safetensors`` (its card beside it)."""
    path = Path(prior_out)
    return path.with_name(f"{path.stem}-{label}{path.suffix}")


def run_studies_by_prior(cases: Sequence["StudyCase"], prior: Optional[str], cfg: "StudyConfig",
                         prior_out: Optional[str | Path] = None, overwrite: bool = False,
                         progress: Optional[Callable[[float, str], None]] = None) -> list[PriorStudy]:
    """``run_study`` once per prior that ``prior`` (``auto``: each case's structure) gives the cases, in
    first-seen order; one study, and ``prior_out`` as given, when they all get one prior. With several,
    each study's trained prior is saved to ``split_prior_path(prior_out, label)``; every such file is
    checked (existing ones only replaced with ``overwrite``) before the first study trains."""
    from .output_safety import check_outputs
    from .study import run_study, save_study_prior

    report = progress or (lambda f, m: None)
    plan = plan_by_prior(cases, prior, cfg.appearance)
    outs: list[Optional[Path]] = [None] * len(plan)
    if prior_out is not None:
        outs = [Path(prior_out) if len(plan) == 1 else split_prior_path(prior_out, label) for label, _, _ in plan]
        check_outputs([f for o in outs for f in (o, o.with_suffix(".json"))],
                      [p for c in cases for p in (getattr(c, "mask_path", None), getattr(c, "image_path", None))],
                      overwrite=overwrite)
    done = []
    for k, ((label, path, idx), out) in enumerate(zip(plan, outs)):
        def sub(f: float, msg: str, _k: int = k, _label: str = label) -> None:
            report((_k + f) / len(plan), msg if len(plan) == 1 else f"study {_k + 1}/{len(plan)} ({_label}): {msg}")

        result = run_study([cases[i] for i in idx], str(path), cfg, progress=sub)
        if out is not None:
            save_study_prior(result, out)
        done.append(PriorStudy(label, Path(path), list(idx), result, out))
    return done


__all__ = ["groups_by_prior", "prior_label", "plan_by_prior", "study_prior", "split_prior_path", "run_studies_by_prior",
           "PriorStudy"]
