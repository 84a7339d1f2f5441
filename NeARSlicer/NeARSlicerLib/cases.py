"""Finding the cases in a folder: one rule shared by the CLI (``nearslicer study --masks``) and
Slicer's batch (``refineStudy(folder)`` / ``discoverCases``), so the same folder gives the same cases.

A folder holds any mix of:

* one sub-folder per case with one segmentation (a ``.seg.nrrd`` file, or an image whose name has a
  word like seg/label/mask: ``seg.nii.gz``) and at most one image (``ct.nii.gz``), named after the
  sub-folder;
* flat pairs: ``NAME.nii.gz`` with ``NAME.seg.nrrd``, ``NAME_seg.nii.gz``, ``NAME-label.nrrd``, ...;
* segmentations without an image (shape only), e.g. ``NAME_mask.nii.gz`` alone. A folder in which
  no file name says "segmentation" is a folder of masks: every file is a mask without an image;
* TotalSegmentator's default output: a sub-folder with at most one image and a ``segmentations``
  folder of one mask file per structure (``spleen.nii.gz``, ...): one case whose structures are those
  files (its ``segmentation`` is that folder).

Entries that cannot be used (an image with no segmentation, two segmentations for one image, a
sub-folder with two images) are returned with ``error`` set, so a caller can report them.
Only file names are looked at; nothing is read. ``NAME.NeAR.seg.nrrd`` files (results written
beside their inputs) are never cases, nor is a sub-folder holding a batch's or a study's summary
(``--out cases/refined``: an output folder among the cases).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import InputError

SEGMENTATION_SUFFIXES = (".seg.nrrd", ".seg.nhdr", ".seg.nii.gz", ".seg.nii")
# what Slicer's batch writes beside the inputs when it refines a folder into itself: never a case
NEAR_OUTPUT_SUFFIX = ".NeAR.seg.nrrd"
# a sub-folder holding one of these is a batch's or study's output folder (Slicer's batch names its own
# nearslicer_summary.csv when asked to), never a case
OUTPUT_SUMMARIES = ("summary.csv", "nearslicer_summary.csv")
STRUCTURE_FOLDER = "segmentations"  # TotalSegmentator's default output: one mask file per structure
IMAGE_SUFFIXES = SEGMENTATION_SUFFIXES + (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_WORDS = r"seg|segmentation|label|labels|labelmap|mask|masks|annotation|annotations"
_SEGMENTATION_WORD = re.compile(rf"(^|[_\-.\s])({_WORDS})([_\-.\s]|$)", re.IGNORECASE)
_TRAILING_WORD = re.compile(rf"[_\-.\s]({_WORDS})$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One case: ``segmentation`` (a mask / label map / .seg.nrrd) and its ``image`` (or None)."""

    name: str
    segmentation: Optional[Path]
    image: Optional[Path] = None
    error: str = ""
    folder_case: bool = False  # from a sub-folder of its own


def image_stem(name: str) -> Optional[str]:
    """File name without its image suffix (``a.seg.nrrd`` -> ``a``); None if it is not an image."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_stem(path) -> str:
    """A file's case name: its image stem, or the file name when it is not an image file."""
    name = Path(path).name
    return image_stem(name) or name


def is_segmentation_name(name: str) -> bool:
    """True for ``.seg.*`` files and images whose name has a seg/label/mask word."""
    lower = name.lower()
    return lower.endswith(SEGMENTATION_SUFFIXES) or bool(_SEGMENTATION_WORD.search(image_stem(name) or name))


def _segmentation_key(name: str) -> str:
    """The image stem a segmentation belongs to: ``NAME.seg.nrrd`` / ``NAME_seg.nii.gz`` -> ``NAME``."""
    stem = image_stem(name) or name
    return _TRAILING_WORD.sub("", stem) if not name.lower().endswith(SEGMENTATION_SUFFIXES) else stem


def _image_files(folder: Path) -> list:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and image_stem(p.name) is not None
                  and not p.name.lower().endswith(NEAR_OUTPUT_SUFFIX.lower()))


def structure_files(folder) -> list:
    """The mask files of a folder of one mask per structure (``STRUCTURE_FOLDER``), sorted."""
    return _image_files(Path(folder))


def _folder_case(sub: Path) -> Optional[Case]:
    files = _image_files(sub)
    segs = [p for p in files if is_segmentation_name(p.name)]
    images = [p for p in files if p not in segs]
    structures = sub / STRUCTURE_FOLDER
    if not segs and len(images) <= 1 and structures.is_dir() and structure_files(structures):
        return Case(sub.name, structures, images[0] if images else None, folder_case=True)
    if not files:
        return None
    if len(segs) == 1 and len(images) <= 1:
        return Case(sub.name, segs[0], images[0] if images else None, folder_case=True)
    return Case(sub.name, None, None, folder_case=True,
                error=f"folder {sub.name} needs one segmentation and at most one image, found "
                      f"{len(images)} image(s) and {len(segs)} segmentation(s)")


def _flat_cases(files: list) -> list:
    segs = [p for p in files if is_segmentation_name(p.name)]
    if not segs:  # a folder of masks: nothing in it is named as an image to pair with
        return [Case(case_stem(p), p) for p in files]
    images: dict = {}
    twice = set()
    for p in files:
        if p not in segs:
            twice.update([image_stem(p.name)] if image_stem(p.name) in images else [])
            images.setdefault(image_stem(p.name), p)
    by_image: dict = {}
    for seg in segs:
        by_image.setdefault(_segmentation_key(seg.name), []).append(seg)
    cases = []
    for stem in sorted(set(images) | set(by_image)):
        image, found = images.get(stem), by_image.get(stem, [])
        if stem in twice:
            cases.append(Case(stem, None, image, error=f"{stem}: two image files have this name"))
        elif len(found) == 1:
            cases.append(Case(stem, found[0], image))
        elif not found:
            cases.append(Case(stem, None, image, error=f"{image.name}: no segmentation file for it "
                                                       f"(e.g. {stem}.seg.nrrd or {stem}_seg.nii.gz)"))
        else:
            cases.append(Case(stem, None, image, error=f"{stem}: {len(found)} segmentation files "
                                                       f"({', '.join(p.name for p in found)})"))
    return cases


def _unique_names(cases: list) -> list:
    """A name shared by two entries (a sub-folder and a flat pair) marks both as errors."""
    count: dict = {}
    for case in cases:
        count[case.name] = count.get(case.name, 0) + 1
    return [case if count[case.name] == 1 or case.error else
            Case(case.name, None, None, folder_case=case.folder_case,
                 error=f"two cases are named {case.name!r}; rename one") for case in cases]


def discover_cases(folder) -> list:
    """The cases in ``folder`` (see the module's rules), sub-folders first, each group sorted.

    :raises InputError: the folder does not exist or holds no image files at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"case folder not found: {folder}")
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not any((p / name).is_file() for name in OUTPUT_SUMMARIES))
    cases = [c for c in (_folder_case(sub) for sub in subs) if c is not None]
    cases += _flat_cases(_image_files(folder))
    if not cases:
        raise InputError(f"case folder {folder} holds no .nii.gz, .nii, .nrrd, .mha or .seg.nrrd files: no cases")
    return _unique_names(cases)


def match_folders(masks_dir, images_dir) -> list:
    """Cases from a folder of masks and a separate folder of images, matched by case name
    (``masks/case1.nii.gz`` <-> ``images/case1.nii.gz``); extra images are ignored.

    :raises InputError: a folder is missing or empty, a name repeats, or a mask has no image.
    """
    masks_dir, images_dir = Path(masks_dir), Path(images_dir)
    if masks_dir.resolve() == images_dir.resolve():
        return discover_cases(masks_dir)

    def by_name(folder: Path, what: str) -> dict:
        if not folder.is_dir():
            raise InputError(f"{what} folder not found: {folder}")
        out: dict = {}
        for p in _image_files(folder):
            name = case_stem(p)
            if name in out:
                raise InputError(f"two {what} files share the case name {name!r}: {out[name].name} and {p.name}")
            out[name] = p
        if not out:
            raise InputError(f"{what} folder {folder} holds no .nii, .nii.gz, .nrrd or .seg.nrrd files")
        return out

    masks, images = by_name(masks_dir, "masks"), by_name(images_dir, "images")
    missing = sorted(n for n in masks if n not in images)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"no image in {images_dir} for {len(missing)} mask(s): {shown} "
                         "(files are matched by name, e.g. masks/case1.nii.gz <-> images/case1.nii.gz)")
    return [Case(n, p, images[n]) for n, p in masks.items()]


def usable_cases(cases: list) -> list:
    """``cases`` when none has an error, else ``InputError`` listing the unusable ones (for the CLI,
    where a study needs every case)."""
    bad = [c for c in cases if c.error]
    if bad:
        shown = "; ".join(c.error for c in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InputError(f"{len(bad)} unusable case(s): {shown}")
    return list(cases)
