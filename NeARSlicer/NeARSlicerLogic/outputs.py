"""The files a batch writes, made safe before anything is computed. No Qt.

* An output is never an input: when ``<outputDir>/<case>.seg.nrrd`` is one of the batch's input
  files (``NAME.nii.gz`` + ``NAME.seg.nrrd`` refined into their own folder), the output is written
  *beside* it as ``<case>.NeAR.seg.nrrd``; the user's file is not touched.
* An existing output is not replaced unless ``overwrite``; every output is checked (folder exists
  and is writable, no name collision) before the first case runs (``OutputError``, an InputError).
* Each file is written atomically (a unique temporary file in the same folder, then a rename), and
  summary rows are appended as cases finish; an existing summary with the same columns is extended.

The ``.seg.nrrd`` files are written by Slicer's own segmentation storage node, which keeps every
segment's name, color, terminology and tags (``NeARSlicer.*``).
"""

from __future__ import annotations

import socket
from pathlib import Path

from NeARSlicerLib.cases import NEAR_OUTPUT_SUFFIX
from NeARSlicerLib.output_safety import (
    SummaryWriter,
    atomic_path,
    check_output_folder,
    check_outputs,
    same_file,
)

from . import io as nio

# the batch contract's columns (NeARSlicerLib.batch, shared with nearslicer batch and the review tools)
from NeARSlicerLib.batch import (EARLIER_SUMMARY_COLUMNS, SUMMARY_COLUMNS, SUMMARY_NAME,  # noqa: E402,F401
                                 engine_cells, settings_text)
OUTPUT_SUFFIX = ".seg.nrrd"
BESIDE_SUFFIX = NEAR_OUTPUT_SUFFIX  # used when <case>.seg.nrrd is an input file in the output folder
STUDY_PRIOR = "study_prior.safetensors"
_HOST = socket.gethostname()


class CaseOutputs:
    """Output paths of a batch, checked up front; atomic writers; the appending summary CSV."""

    def __init__(self, outputDir, csvName: str, cases: list, names: list, overwrite: bool = False,
                 study: bool = False):
        self.outputDir = check_output_folder(outputDir, create=True)
        self.overwrite = bool(overwrite)
        inputs = [p for case in cases for p in (case.get("volume"), case.get("segmentation")) if p]
        self._paths = {}
        # absolute input paths (and a single segment spec) of each case, for its summary rows
        self._inputs = {name: (_absolute(case.get("segmentation")), _absolute(case.get("volume")),
                               "" if isinstance(case.get("segment"), (list, tuple)) or case.get("segment") is None
                               else str(case.get("segment"))) for name, case in zip(names, cases)}
        for name in names:
            path = self.outputDir / f"{name}{OUTPUT_SUFFIX}"
            if any(same_file(path, source) for source in inputs):
                path = self.outputDir / f"{name}{BESIDE_SUFFIX}"
            self._paths[name] = path
        self.csvPath = self.outputDir / csvName
        self.priorPath = self.outputDir / STUDY_PRIOR if study else None
        planned = list(self._paths.values()) + [self.csvPath]
        if self.priorPath is not None:
            planned += [self.priorPath, self.priorPath.with_suffix(".json")]
        check_outputs(planned, inputs, overwrite=overwrite, may_exist=[self.csvPath])
        self._summary = SummaryWriter(self.csvPath, SUMMARY_COLUMNS, overwrite=overwrite,
                                      earlier=EARLIER_SUMMARY_COLUMNS)
        self.rows: list = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def segmentationPath(self, caseName: str) -> Path:
        return self._paths[caseName]

    def record(self, row: dict) -> None:
        """Append one summary row (all columns as text) to the CSV and to ``rows``; ``host`` is this machine."""
        row = {key: str(row.get(key, "")) for key in SUMMARY_COLUMNS}
        row["host"] = row["host"] or _HOST
        mask, image, label = self._inputs.get(row["case"], ("", "", ""))
        row["mask"], row["image"], row["label"] = row["mask"] or mask, row["image"] or image, row["label"] or label
        self._summary.add(row)
        self.rows.append(row)

    def writeSegmentation(self, segmentationNode, path) -> Path:
        """Write the node to ``path`` atomically (whole or not at all)."""
        with atomic_path(path) as tmp:
            nio.saveSegmentationFile(segmentationNode, tmp)
        return Path(path)

    def writeStudyPrior(self, save) -> Path:
        """``save(path)`` writes the study prior (and its ``.json`` card) atomically itself."""
        return save(self.priorPath)


def _absolute(path) -> str:
    return str(Path(path).absolute()) if path else ""
