"""Batch refinement of cases from files: ``refineStudy`` for the Python console. No Qt.

Works through the public API of the module logic it is given (``prepareRefinement``,
``computeRefinement``, ``computeStudy``, ``applyRefinement``, ``refinementStats``, ``setJobResult``), so
the engine calls stay in one place (the engine process). Cases in a folder are found by ``NeARSlicerLib.cases``, the rule the CLI
uses too.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import numpy as np

import slicer
from NeARSlicerLib.cases import case_stem
from NeARSlicerLib.engine_protocol import STUDY_REFINE_OPTIONS
from NeARSlicerLib.errors import Cancelled, InputError

from . import io as nio
from .common import cancelFunction
from .extract import askedOptions
from .outputs import CaseOutputs, SUMMARY_COLUMNS, SUMMARY_NAME, engine_cells, settings_text

# the name Slicer gives a label map's segment: it says nothing of the structure
_GENERIC_SEGMENT = re.compile(r"Label_\d+")

__all__ = ["refineStudy", "discoverCases", "SUMMARY_COLUMNS"]


def discoverCases(folder) -> list:
    """Cases in a folder as dicts: ``name``, ``volume``, ``segmentation`` (and ``error`` when unusable).

    The rules are those of ``NeARSlicerLib.cases.discover_cases`` (shared with ``nearslicer study``):
    one sub-folder per case, flat ``NAME.nii.gz`` + ``NAME.seg.nrrd`` / ``NAME_seg.nii.gz`` pairs, or
    segmentations without an image.
    """
    from NeARSlicerLib.cases import discover_cases

    return [{"name": c.name, "volume": str(c.image) if c.image else None,
             "segmentation": str(c.segmentation) if c.segmentation else "",
             "folderCase": c.folder_case, **({"error": c.error} if c.error else {})}
            for c in discover_cases(folder)]


def refineStudy(logic, cases, outputDir, progress=None, cancel=None, csvName=SUMMARY_NAME,
                study=False, studyOptions=None, overwrite=False, workers=None, rayAddress=None, resume=False,
                **options) -> list:
    """Refine cases from files; see ``NeARSlicerLogic.refineStudy``. Returns the summary rows."""
    outputDir = Path(outputDir)
    caseList = discoverCases(cases) if isinstance(cases, (str, os.PathLike)) else [_normalizeCase(c) for c in cases]
    usedNames: set = set()
    named = [(_uniqueCaseName(case, usedNames), case) for case in caseList]
    if (workers is not None or rayAddress) and not study:
        # the engine's own batch (nearslicer batch) in a child process: a process pool or Ray
        from .batch_engine import runEngineBatch
        from .engine import enginePython

        if csvName != SUMMARY_NAME:
            raise InputError(f"with workers/rayAddress the summary is {SUMMARY_NAME} (the batch contract)")
        return runEngineBatch(enginePython(), cases, named, outputDir, progress=progress,
                              cancel=cancelFunction(cancel), workers=workers, rayAddress=rayAddress,
                              overwrite=overwrite, resume=resume, **options)
    if resume:
        raise InputError("resume needs workers or rayAddress (the engine's batch)")
    outputs = CaseOutputs(outputDir, csvName, [case for _, case in named], [name for name, _ in named],
                          overwrite=overwrite, study=study)
    cancelled = cancelFunction(cancel)
    with outputs:
        if study:
            _refineJointly(logic, named, outputs, progress, cancelled, options, dict(studyOptions or {}))
        else:
            for caseIndex, (caseName, case) in enumerate(named):
                if _skipCase(caseName, case, cancelled, outputs.record):
                    continue

                def caseProgress(fraction, message="", _i=caseIndex, _name=caseName):
                    if progress is not None:
                        progress((_i + float(fraction)) / len(caseList), f"{_name}: {message}")

                _refineCase(logic, case, caseName, outputs, caseProgress, cancel, options)
    logging.info("NeAR batch: %d rows written to %s", len(outputs.rows), outputs.csvPath)
    return outputs.rows


def _loadCase(case, caseName):
    """(nodes, volumeNode, segmentationNode, segmentIds, outputNode, fileStructure) of one case; nodes are
    in the scene. ``fileStructure``: for a label map of one structure, its file's name (TotalSegmentator
    writes ``adrenal_gland_left.nii.gz``), what ``nearslicer batch`` reads for ``--prior auto``; else None."""
    if Path(case["segmentation"]).is_dir():
        raise InputError(f"{case['segmentation']} is a folder of one mask per structure (TotalSegmentator's "
                         "segmentations/): refineStudy(..., workers=N) refines it (the engine's batch), each file "
                         "a segment")
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
        fileStructure = case_stem(case["segmentation"]) if len(labelToId) == 1 else None
        outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{caseName} NeAR")
        nodes.append(outputNode)
        geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        outputNode.GetSegmentation().SetConversionParameter(
            geometryName, segmentationNode.GetSegmentation().GetConversionParameter(geometryName))
    except BaseException:
        nio.removeNodes(nodes)
        raise
    return nodes, volumeNode, segmentationNode, segmentIds, outputNode, fileStructure


def _prepareJob(logic, volumeNode, segmentationNode, segmentId, fileStructure, options):
    """``prepareRefinement`` of one segment; a label map's ``Label_N`` segment names no structure, so
    ``--prior auto`` reads its file's name instead, as ``nearslicer batch`` does (``batch.structure_of``)."""
    job = logic.prepareRefinement(volumeNode, segmentationNode, segmentId, **options)
    if fileStructure and _GENERIC_SEGMENT.fullmatch(job.segmentName or ""):
        job.options["structure"] = fileStructure
    return job


def _writeRefined(logic, caseName, job, segmentationNode, outputNode, outputPath, record, settings="") -> bool:
    """Add ``job``'s result to the case and copy original + refined segments to the output node.
    ``settings``: the row's settings cell (empty in study mode, as in ``nearslicer study``'s summary)."""
    newId = logic.applyRefinement(job, showResult=False)
    stats = logic.refinementStats(segmentationNode, newId)
    target, source = outputNode.GetSegmentation(), segmentationNode.GetSegmentation()
    if not (target.CopySegmentFromSegmentation(source, job.segmentId)
            and target.CopySegmentFromSegmentation(source, newId)):
        record({"case": caseName, "segment": job.segmentName, "error": "could not copy the segments to the output"})
        return False
    record({"case": caseName, "segment": job.segmentName, "voxels_before": stats["voxelsBefore"],
            "voxels_after": stats["voxelsAfter"], "dice": f"{stats['dice']:.4f}",
            **engine_cells(getattr(job.result, "info", None) or {}, getattr(job.result, "warnings", None)),
            "seconds": f"{stats['seconds']:.2f}", "output": str(outputPath), "settings": settings})
    return True


def _refineJointly(logic, named, outputs, progress, cancelled, options, studyOptions):
    """Study mode: prepare every segment of every case, train one model on all, apply the results.

    Only the cropped arrays stay in memory while the model trains: each CT is released once its
    segments are taken (the job keeps the grid, not the volume).
    """
    from types import SimpleNamespace

    record = outputs.record
    report = progress or (lambda fraction, message="": None)
    loaded = []  # (caseName, nodes, segmentationNode, outputNode, jobs)
    try:
        for index, (caseName, case) in enumerate(named):
            if _skipCase(caseName, case, cancelled, record):
                continue
            report(0.1 * index / len(named), f"{caseName}: reading")
            try:
                nodes, volumeNode, segmentationNode, segmentIds, outputNode, fileStructure = _loadCase(case, caseName)
            except Exception as exc:  # the case could not be read: recorded, the batch goes on
                logging.warning("NeAR batch: case %s failed: %s", caseName, exc)
                record({"case": caseName, "segment": _segmentSpecText(case.get("segment")), "error": _oneLine(exc)})
                continue
            loaded.append((caseName, nodes, segmentationNode, outputNode, []))
            for segmentId in segmentIds:
                try:
                    job = _prepareJob(logic, volumeNode, segmentationNode, segmentId, fileStructure, options)
                except Exception as exc:
                    segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
                    record({"case": caseName, "segment": segmentName, "error": _oneLine(exc)})
                    continue
                job.volumeNode = None  # the arrays are taken; the volume node is released below
                loaded[-1][4].append(job)
            if volumeNode is not None:
                nodes.remove(volumeNode)
                nio.removeNodes([volumeNode])
        jobs = [job for entry in loaded for job in entry[4]]
        if not jobs:
            return
        # the structure refine would read (segment name and terminology, or a label map's file name): the
        # engine's --prior auto chooses the study's prior by it
        # and each case's own image voxel (a CT resampled onto an oversampled segment): per case, never study-wide
        studyCases = [SimpleNamespace(name=f"{entry[0]}/{job.segmentName}", mask=job.mask, grid=job.grid,
                                      image=job.image, structure=job.options.get("structure") or job.segmentName,
                                      image_voxel_mm=job.options.get("image_voxel_mm"), scan=job.scan)
                      for entry in loaded for job in entry[4]]
        # the engine's default recipe (NeARSlicerLib.study.DEFAULT_RECIPE, not imported here: no torch in
        # Slicer's process): denoise never trains towards the annotations, so it does not learn their errors
        config = {"recipe": "denoise", "appearance": bool(options.get("appearance", True)),
                  "seed": int(options.get("seed", 0)), "device": options.get("device") or "auto",
                  # denoise refines every case after adapting: with the batch's preset, as without study mode
                  **({"refine_preset": options["preset"]} if options.get("preset") else {}), **studyOptions}
        if config["recipe"] == "denoise" and "refine_options" not in config:
            # ... and the batch's do-no-harm settings (changes=, imageOpensGate=...), the same for every job
            config["refine_options"] = {k: v for k, v in jobs[0].options.items() if k in STUDY_REFINE_OPTIONS}
        # the engine process trains the model and saves it (atomically) as the study prior; segments that
        # --prior auto gives different priors (adrenal glands among other organs) run as one study per
        # prior, each prior saved beside it (study_prior-adrenal-sa.safetensors, ...)
        result = logic.computeStudy(studyCases, options.get("prior") or None, config,
                                    priorOut=str(outputs.priorPath),
                                    progress=lambda f, m: report(0.1 + 0.8 * f, f"study: {m}"), cancel=cancelled,
                                    splitByPrior=True, overwrite=outputs.overwrite)
        for study in (getattr(result, "info", None) or {}).get("studies") or ():
            logging.info("NeAR study of %d segment(s) adapted the %s prior; saved to %s",
                         len(study["cases"]), study["label"], study["prior_out"])
        infos = list(getattr(result, "case_info", None) or []) or [{}] * len(jobs)
        for job, studyCase, mask, prob, seconds, info in zip(jobs, studyCases, result.masks, result.probabilities,
                                                              result.case_seconds, infos):
            own = [w for w in result.warnings if w.startswith(f"case {studyCase.name}:")]
            # info: the case's refinement facts (confidence, action, prior...) for the summary, as without study mode
            logic.setJobResult(job, SimpleNamespace(mask=mask, probability=prob, warnings=own, info=info), seconds)
        for index, (caseName, nodes, segmentationNode, outputNode, caseJobs) in enumerate(loaded):
            report(0.9 + 0.1 * index / len(loaded), f"{caseName}: writing")
            outputPath = outputs.segmentationPath(caseName)
            written = 0
            for job in caseJobs:
                try:
                    written += _writeRefined(logic, caseName, job, segmentationNode, outputNode, outputPath, record)
                except Exception as exc:
                    record({"case": caseName, "segment": job.segmentName, "error": _oneLine(exc)})
            if written:
                outputs.writeSegmentation(outputNode, outputPath)
    finally:
        for entry in loaded:
            nio.removeNodes(entry[1])


def _refineCase(logic, case, caseName, outputs, progress, cancel, options):
    record = outputs.record
    nodes = []
    started = time.perf_counter()
    try:
        nodes, volumeNode, segmentationNode, segmentIds, outputNode, fileStructure = _loadCase(case, caseName)
        outputPath = outputs.segmentationPath(caseName)
        okCount = 0
        for index, segmentId in enumerate(segmentIds):
            segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            segmentStarted = time.perf_counter()
            try:
                def segmentProgress(fraction, message="", _i=index, _name=segmentName):
                    progress((_i + float(fraction)) / len(segmentIds), f"{_name}: {message}")

                job = _prepareJob(logic, volumeNode, segmentationNode, segmentId, fileStructure, options)
                logic.computeRefinement(job, progress=segmentProgress, cancel=cancel)
                # the settings cell nearslicer batch writes for the same options, so that a resume through
                # the engine's batch (workers=) redoes a case made with other settings
                okCount += _writeRefined(logic, caseName, job, segmentationNode, outputNode, outputPath, record,
                                         settings_text(askedOptions(job)))
            except Cancelled:
                raise
            except Exception as exc:  # recorded, the batch goes on
                logging.warning("NeAR batch: %s / %s failed: %s", caseName, segmentName, exc)
                record({"case": caseName, "segment": segmentName, "error": _oneLine(exc),
                        "seconds": f"{time.perf_counter() - segmentStarted:.2f}"})
                continue
        if okCount:
            outputs.writeSegmentation(outputNode, outputPath)
    except Cancelled:
        raise
    except Exception as exc:  # the case could not be read or written: recorded, the batch goes on
        logging.warning("NeAR batch: case %s failed: %s", caseName, exc)
        record({"case": caseName, "segment": _segmentSpecText(case.get("segment")), "error": _oneLine(exc),
                "seconds": f"{time.perf_counter() - started:.2f}"})
    finally:
        nio.removeNodes(nodes)


# ---------------------------------------------------------------------------- helpers
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
        path = Path(case.get("volume") or case.get("segmentation"))
        name = case_stem(path)
        # a generic file name ("ct", "image") in a per-case folder: use the folder's name
        if case.get("folderCase") or name.lower() in ("ct", "image", "img", "volume", "mr", "t1", "t2"):
            name = path.parent.name or name
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_") or "case"
    unique, n = name, 2
    while unique in usedNames:
        unique, n = f"{name}_{n}", n + 1
    usedNames.add(unique)
    return unique


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
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit()
                                                    and not segmentation.GetSegmentIdBySegmentName(item)):
            segmentId = labelToId.get(int(item)) or segmentation.GetSegmentIdBySegmentName(f"Label_{int(item)}")
        else:
            segmentId = segmentation.GetSegmentIdBySegmentName(str(item))
            if not segmentId and segmentation.GetSegment(str(item)) is not None:
                segmentId = str(item)
            if not segmentId and _GENERIC_SEGMENT.fullmatch(str(item)):
                # "Label_8" still finds label 8 of a label map whose table names it ("adrenal_gland_right")
                segmentId = labelToId.get(int(str(item)[len("Label_"):]))
        if not segmentId:
            raise InputError(f"segment {item!r} not found in {segmentationNode.GetName()}")
        ids.append(segmentId)
    return ids
