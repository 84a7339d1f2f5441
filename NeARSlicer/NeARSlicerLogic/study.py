"""Batch refinement of cases from files (the Python console's refineStudy). No Qt."""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

import slicer
from NeARSlicerLib.errors import Cancelled, InputError

from . import io as nio
from .common import _cancelFunction


class StudyMixin:
    """Part of NeARSlicerLogic: ``refineStudy`` and its per-case work."""

    def refineStudy(self, cases, outputDir, progress=None, cancel=None, csvName="nearslicer_summary.csv",
                    study=False, studyOptions=None, **options) -> list:
        """Refine a list of cases from files, for the Python console.

        :param cases: a folder (see :func:`discoverCases`) or a list of
          ``(volumePath, segmentationPath)`` / ``(volumePath, segmentationPath, segment)`` tuples, where
          ``segment`` is a segment name, a label value (int) or a list of them; no segment: all segments.
          ``volumePath`` may be None (the segmentation's geometry is used, no appearance).
        :param outputDir: where ``<case>.seg.nrrd`` (original and refined segments) and the CSV go.
        :param study: False (default): refine each segment on its own with the prior. True: study mode,
          the paper's transductive NeAR: one model and a latent code per segment are trained on all
          the segments jointly (warm-started from the prior), then every segment is decoded; the
          trained model is saved as ``study_prior.safetensors`` (+ ``.json`` card) in ``outputDir``.
        :param studyOptions: StudyConfig overrides for study mode (e.g. ``{"epochs": 30}``).
        :param options: refineSegment options (preset, device, prior, appearance, seed, ...).
        :returns: the CSV rows as dicts. A failing case or segment is recorded with its error and the
          batch goes on; a cancel stops the batch (rows so far are written) and raises ``Cancelled``.
        """
        outputDir = Path(outputDir)
        outputDir.mkdir(parents=True, exist_ok=True)
        caseList = discoverCases(cases) if isinstance(cases, (str, os.PathLike)) else [_normalizeCase(c) for c in cases]
        csvPath = outputDir / csvName
        columns = ["case", "segment", "voxels_before", "voxels_after", "dice", "seconds", "error", "output"]
        rows = []
        usedNames = set()
        named = [(_uniqueCaseName(case, usedNames), case) for case in caseList]
        cancelled = _cancelFunction(cancel)

        with open(csvPath, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()

            def record(row):
                row = {key: str(row.get(key, "")) for key in columns}
                rows.append(row)
                writer.writerow(row)
                stream.flush()

            if study:
                self._refineJointly(named, outputDir, record, progress, cancelled, options, dict(studyOptions or {}))
            else:
                for caseIndex, (caseName, case) in enumerate(named):
                    if _skipCase(caseName, case, cancelled, record):
                        continue

                    def caseProgress(fraction, message="", _i=caseIndex, _name=caseName):
                        if progress is not None:
                            progress((_i + float(fraction)) / len(caseList), f"{_name}: {message}")

                    self._refineCase(case, caseName, outputDir, record, caseProgress, cancel, options)
        logging.info("NeAR batch: %d rows written to %s", len(rows), csvPath)
        return rows

    def _loadCase(self, case, caseName):
        """(nodes, volumeNode, segmentationNode, segmentIds, outputNode) of one case; nodes are in the scene."""
        nodes = []
        try:
            volumeNode = None
            if case.get("volume"):
                volumeNode = nio.loadVolumeFile(case["volume"], name=f"{caseName} volume")
                nodes.append(volumeNode)
            segmentationNode, labelToId = nio.loadSegmentationFile(case["segmentation"], volumeNode,
                                                                   name=f"{caseName} segmentation")
            nodes.append(segmentationNode)
            segmentIds = _resolveSegments(segmentationNode, labelToId, case.get("segment"))
            outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{caseName} NeAR")
            nodes.append(outputNode)
            if volumeNode is not None:
                outputNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            else:
                geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
                outputNode.GetSegmentation().SetConversionParameter(
                    geometryName, segmentationNode.GetSegmentation().GetConversionParameter(geometryName))
        except BaseException:
            nio.removeNodes(nodes)
            raise
        return nodes, volumeNode, segmentationNode, segmentIds, outputNode

    def _writeRefined(self, caseName, job, segmentationNode, outputNode, outputPath, record) -> bool:
        """Add ``job``'s result to the case and copy original + refined segments to the output."""
        newId = self.applyRefinement(job, showResult=False)
        stats = self.refinementStats(segmentationNode, newId)
        target, source = outputNode.GetSegmentation(), segmentationNode.GetSegmentation()
        if not (target.CopySegmentFromSegmentation(source, job.segmentId)
                and target.CopySegmentFromSegmentation(source, newId)):
            record({"case": caseName, "segment": job.segmentName, "error": "could not copy the segments to the output"})
            return False
        record({"case": caseName, "segment": job.segmentName, "voxels_before": stats["voxelsBefore"],
                "voxels_after": stats["voxelsAfter"], "dice": f"{stats['dice']:.4f}",
                "seconds": f"{stats['seconds']:.2f}", "output": str(outputPath)})
        return True

    def _refineJointly(self, named, outputDir, record, progress, cancelled, options, studyOptions):
        """Study mode: prepare every segment of every case, train one model on all, apply the results.

        Only the cropped arrays stay in memory while the model trains: each CT is released once its
        segments are taken (a geometry-only reference replaces it).
        """
        from types import SimpleNamespace

        from NeARSlicerLib.study import StudyCase, StudyConfig, run_study, save_study_prior

        report = progress or (lambda fraction, message="": None)
        loaded = []  # (caseName, nodes, segmentationNode, outputNode, jobs)
        try:
            for index, (caseName, case) in enumerate(named):
                if _skipCase(caseName, case, cancelled, record):
                    continue
                report(0.1 * index / len(named), f"{caseName}: reading")
                try:
                    nodes, volumeNode, segmentationNode, segmentIds, outputNode = self._loadCase(case, caseName)
                except Exception as exc:  # the case could not be read: recorded, the batch goes on
                    logging.warning("NeAR batch: case %s failed: %s", caseName, exc)
                    record({"case": caseName, "segment": _segmentSpecText(case.get("segment")), "error": _oneLine(exc)})
                    continue
                loaded.append((caseName, nodes, segmentationNode, outputNode, []))
                for segmentId in segmentIds:
                    try:
                        job = self.prepareRefinement(volumeNode, segmentationNode, segmentId, **options)
                    except Exception as exc:
                        segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
                        record({"case": caseName, "segment": segmentName, "error": _oneLine(exc)})
                        continue
                    if job.referenceNode is volumeNode:
                        job.referenceNode = self._croppedReference(volumeNode, (0, 0, 0), job.mask.shape)
                    loaded[-1][4].append(job)
                if volumeNode is not None:
                    nodes.remove(volumeNode)
                    nio.removeNodes([volumeNode])
            jobs = [job for entry in loaded for job in entry[4]]
            if not jobs:
                return
            studyCases = [StudyCase(f"{entry[0]}/{job.segmentName}", job.mask, job.grid, job.image)
                          for entry in loaded for job in entry[4]]
            config = StudyConfig.for_recipe("fast", **{"appearance": bool(options.get("appearance", True)),
                                                       "seed": int(options.get("seed", 0)),
                                                       "device": options.get("device") or "auto", **studyOptions})
            result = run_study(studyCases, options.get("prior") or None, config,
                               progress=lambda f, m: report(0.1 + 0.8 * f, f"study: {m}"), cancel=cancelled)
            for job, studyCase, mask, prob, seconds in zip(jobs, studyCases, result.masks, result.probabilities,
                                                            result.case_seconds):
                own = [w for w in result.warnings if w.startswith(f"case {studyCase.name}:")]
                self.setJobResult(job, SimpleNamespace(mask=mask, probability=prob, warnings=own), seconds)
            save_study_prior(result, outputDir / "study_prior.safetensors")
            for index, (caseName, nodes, segmentationNode, outputNode, caseJobs) in enumerate(loaded):
                report(0.9 + 0.1 * index / len(loaded), f"{caseName}: writing")
                outputPath = outputDir / f"{caseName}.seg.nrrd"
                written = 0
                for job in caseJobs:
                    try:
                        written += self._writeRefined(caseName, job, segmentationNode, outputNode, outputPath, record)
                    except Exception as exc:
                        record({"case": caseName, "segment": job.segmentName, "error": _oneLine(exc)})
                if written:
                    nio.saveSegmentationFile(outputNode, outputPath)
        finally:
            for entry in loaded:
                nio.removeNodes(entry[1])

    def _refineCase(self, case, caseName, outputDir, record, progress, cancel, options):
        nodes = []
        started = time.perf_counter()
        try:
            nodes, volumeNode, segmentationNode, segmentIds, outputNode = self._loadCase(case, caseName)
            outputPath = outputDir / f"{caseName}.seg.nrrd"
            okCount = 0
            for index, segmentId in enumerate(segmentIds):
                segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
                segmentStarted = time.perf_counter()
                try:
                    def segmentProgress(fraction, message="", _i=index, _name=segmentName):
                        progress((_i + float(fraction)) / len(segmentIds), f"{_name}: {message}")

                    job = self.prepareRefinement(volumeNode, segmentationNode, segmentId, **options)
                    self.computeRefinement(job, progress=segmentProgress, cancel=cancel)
                    okCount += self._writeRefined(caseName, job, segmentationNode, outputNode, outputPath, record)
                except Cancelled:
                    raise
                except Exception as exc:  # recorded, the batch goes on
                    logging.warning("NeAR batch: %s / %s failed: %s", caseName, segmentName, exc)
                    record({"case": caseName, "segment": segmentName, "error": _oneLine(exc),
                            "seconds": f"{time.perf_counter() - segmentStarted:.2f}"})
                    continue
            if okCount:
                nio.saveSegmentationFile(outputNode, outputPath)
        except Cancelled:
            raise
        except Exception as exc:  # the case could not be read: recorded, the batch goes on
            logging.warning("NeAR batch: case %s failed: %s", caseName, exc)
            record({"case": caseName, "segment": _segmentSpecText(case.get("segment")), "error": _oneLine(exc),
                    "seconds": f"{time.perf_counter() - started:.2f}"})
        finally:
            nio.removeNodes(nodes)


# ---------------------------------------------------------------------------- batch helpers
_IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_SEGMENTATION_WORD = re.compile(r"(^|[_\-.\s])(seg|segmentation|label|labels|labelmap|mask|annotation)s?([_\-.\s]|$)",
                                re.IGNORECASE)


def _skipCase(caseName, case, cancelled, record) -> bool:
    """Raise ``Cancelled`` if the batch was cancelled; record a case that could not be listed and skip it."""
    if cancelled is not None and cancelled():
        raise Cancelled(f"batch cancelled before case {caseName}")
    if case.get("error"):
        record({"case": caseName, "segment": case.get("segment") or "", "error": case["error"]})
        return True
    return False


def _oneLine(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _segmentSpecText(spec) -> str:
    if spec is None:
        return ""
    if isinstance(spec, (list, tuple)):
        return ";".join(str(s) for s in spec)
    return str(spec)


def _imageStem(name):
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _isSegmentationName(name) -> bool:
    return name.lower().endswith(nio.SEGMENTATION_SUFFIXES) or bool(_SEGMENTATION_WORD.search(_imageStem(name) or name))


def _normalizeCase(case) -> dict:
    if isinstance(case, dict):
        out = dict(case)
    elif isinstance(case, (list, tuple)) and len(case) in (2, 3):
        out = {"volume": case[0], "segmentation": case[1], "segment": case[2] if len(case) == 3 else None}
    else:
        raise InputError(f"a case is (volume path, segmentation path[, segment]), got {case!r}")
    if not out.get("segmentation"):
        raise InputError(f"case {case!r} has no segmentation path")
    out["volume"] = str(out["volume"]) if out.get("volume") else None
    out["segmentation"] = str(out["segmentation"])
    return out


def _uniqueCaseName(case, usedNames) -> str:
    name = case.get("name")
    if not name:
        source = case.get("volume") or case.get("segmentation")
        path = Path(source)
        name = _imageStem(path.name) or path.stem
        # a generic file name ("ct", "image") in a per-case folder: use the folder's name
        if case.get("folderCase") or name.lower() in ("ct", "image", "img", "volume", "mr", "t1", "t2"):
            name = path.parent.name or name
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_") or "case"
    unique, n = name, 2
    while unique in usedNames:
        unique, n = f"{name}_{n}", n + 1
    usedNames.add(unique)
    return unique


def discoverCases(folder) -> list:
    """Cases in a folder, as dicts with ``volume``, ``segmentation`` (and ``error`` when unusable).

    * one sub-folder per case, holding one image and one segmentation (a ``.seg.nrrd`` file or an
      image whose name contains seg/label/mask, e.g. ``ct.nii.gz`` + ``seg.nii.gz``); or
    * flat files: ``NAME.nii.gz`` with ``NAME.seg.nrrd`` / ``NAME_seg.nii.gz`` / ``NAME_label.nrrd``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"case folder not found: {folder}")
    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.is_file() and _imageStem(p.name) is not None)
        segs = [p for p in images if _isSegmentationName(p.name)]
        vols = [p for p in images if p not in segs]
        if not images:
            continue
        if len(segs) == 1 and len(vols) <= 1:
            cases.append({"volume": str(vols[0]) if vols else None, "segmentation": str(segs[0]),
                          "name": sub.name, "folderCase": True})
        else:
            cases.append({"volume": None, "segmentation": "", "name": sub.name,
                          "error": f"folder {sub.name} needs one image and one segmentation, found "
                                   f"{len(vols)} image(s) and {len(segs)} segmentation(s)"})
    files = sorted(p for p in folder.iterdir() if p.is_file() and _imageStem(p.name) is not None)
    segs = [p for p in files if _isSegmentationName(p.name)]
    for volume in (p for p in files if p not in segs):
        stem = _imageStem(volume.name)
        matches = [s for s in segs if (_imageStem(s.name) or "").startswith(stem) and s != volume]
        if len(matches) == 1:
            cases.append({"volume": str(volume), "segmentation": str(matches[0]), "name": stem})
        else:
            cases.append({"volume": str(volume), "segmentation": "", "name": stem,
                          "error": f"{volume.name}: found {len(matches)} matching segmentation files"})
    if not cases:
        raise InputError(f"no cases found in {folder}")
    return cases


def _resolveSegments(segmentationNode, labelToId, spec) -> list:
    """Segment ids for a segment spec: None (all), a name, a label value, or a list of those."""
    segmentation = segmentationNode.GetSegmentation()
    if spec is None or spec == "":
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments")
        return ids
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    ids = []
    for item in specs:
        segmentId = None
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit()
                                                    and not segmentation.GetSegmentIdBySegmentName(item)):
            segmentId = labelToId.get(int(item)) or segmentation.GetSegmentIdBySegmentName(f"Label_{int(item)}")
        else:
            segmentId = segmentation.GetSegmentIdBySegmentName(str(item))
            if not segmentId and segmentation.GetSegment(str(item)) is not None:
                segmentId = str(item)
        if not segmentId:
            raise InputError(f"segment {item!r} not found in {segmentationNode.GetName()}")
        ids.append(segmentId)
    return ids
