"""Which prior a study adapts: ``--prior auto`` for a whole study, as ``refine`` chooses for one segment.

A study adapts one prior to all of its cases. With ``auto`` (or no prior named) each case's
structure (``StudyCase.structure``: a segment name, Slicer terminology text, a label or file name)
chooses as ``prior.choose_prior`` does for a single refinement: the adrenal pair for an adrenal
gland, the general ``anatomy`` pair otherwise. A study whose cases would get different priors is
refused with the cases named (one study per prior: a study of spleens does not adapt the adrenal
prior, and adrenal glands studied with spleens would lose the adrenal prior that ``refine`` gives
them); ``groups_by_prior`` gives those studies. A named prior or a file is used for every case.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from .errors import InputError
from .prior import AUTO, choose_prior


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


def prior_label(path: Path, structure: Optional[str], with_image: bool) -> str:
    """A short name for the prior ``auto`` gives ``structure`` (its registry name, e.g. ``adrenal-sa``;
    else the file's stem): the sub-folder of its study under ``--split-by-prior``."""
    return choose_prior(None, structure, with_image)[0] or Path(path).stem


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
                         "--split-by-prior does, one sub-folder each), or name one for all (--prior in the CLI, "
                         "prior= in Slicer: adrenal, anatomy or a .safetensors file)")
    return str(next(iter(groups))) if groups else None


__all__ = ["groups_by_prior", "prior_label", "study_prior"]
