"""NeARSlicerLogic: the module's logic as one object for the widget and the Python console. No Qt.

A thin facade over plain modules, one job each:

* ``extract``  -- scene -> engine inputs (checks, working grid, crop, arrays, geometry);
* ``compute``  -- the engine calls, sent to the engine process (``engine``): torch never runs in Slicer;
* ``apply``    -- engine result -> ``"<name> (NeAR)"`` segment; accept / remove;
* ``review``   -- comparison display, surfaces, report PNG;
* ``batch``    -- ``refineStudy`` over cases from files.

One refinement is three steps so that the GUI can run the slow middle one off the main thread:
:meth:`prepareRefinement` (main thread), :meth:`computeRefinement` (the engine process; blocks) or
:meth:`startRefinement` (the same, polled by the widget's timer), :meth:`applyRefinement` (main thread,
all or nothing). :meth:`refineSegment` does the three in a row.
"""

from __future__ import annotations

from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import apply, batch, compute, extract, review
from . import engine as engines
from .job import RefinementJob, attachResult


class NeARSlicerLogic(ScriptedLoadableModuleLogic):
    """Refine segments with NeAR; usable from the Python console without the module's GUI.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("NeARSlicer")
        newId = logic.refineSegment(volumeNode, segmentationNode, segmentId, preset="fast")
        logic.acceptRefinement(segmentationNode, newId)
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self.lastStats: dict = {}
        self.engine = None  # an EngineProcess; None: the session's shared one (engine.sharedEngine)

    # ------------------------------------------------------------------ the engine process
    def engineProcess(self):
        """The ``EngineProcess`` refinements of this logic run in."""
        return self.engine if self.engine is not None else engines.sharedEngine()

    def shutdownEngine(self) -> None:
        """Stop the engine process now (any running job is cancelled); the next job starts a new one."""
        if self.engine is not None:
            self.engine.close()
        else:
            engines.shutdownEngine()

    # ------------------------------------------------------------------ one refinement, in steps
    def prepareRefinement(self, volumeNode, segmentationNode, segmentId, **options) -> RefinementJob:
        """Check the inputs and take the arrays from the scene (main thread). See :meth:`refineSegment`."""
        return extract.prepareJob(volumeNode, segmentationNode, segmentId, **options)

    def computeRefinement(self, job: RefinementJob, progress=None, cancel=None):
        """Run the engine on the prepared arrays in the engine process; blocks until done. Touches no node."""
        return compute.computeRefinement(job, self.engineProcess(), progress=progress, cancel=cancel)

    def computeStudy(self, cases, prior, config: dict, priorOut=None, progress=None, cancel=None,
                     splitByPrior=False, overwrite=False):
        """Study mode in the engine process (blocking); see ``compute.computeStudy``."""
        return compute.computeStudy(self.engineProcess(), cases, prior, config, priorOut=priorOut,
                                    progress=progress, cancel=cancel, splitByPrior=splitByPrior,
                                    overwrite=overwrite)

    def startRefinement(self, job: RefinementJob) -> compute.RefinementRun:
        """Start the engine on the prepared arrays and return at once; poll the returned run (GUI timer)."""
        return compute.RefinementRun(self.engineProcess(), job).start()

    def applyRefinement(self, job: RefinementJob, showResult=True) -> str:
        """Add the computed result as ``"<name> (NeAR)"`` (main thread, all or nothing); return its id."""
        newId = apply.applyResult(job, showResult=showResult)
        self.lastStats = dict(job.stats, newSegmentId=newId)
        return newId

    @staticmethod
    def setJobResult(job: RefinementJob, result, seconds: float) -> None:
        """Attach an engine result (``.mask`` on the job's grid) and its statistics to ``job``."""
        attachResult(job, result, seconds)

    # ------------------------------------------------------------------ console API
    def refineSegment(self, volumeNode, segmentationNode, segmentId, *, prior=None, appearance=True,
                      preset="default", device="auto", seed=0, progress=None, cancel=None,
                      probabilityVolume=False, changeSegments=False, showResult=True,
                      marginMm=None, spacingMm=None, geometry="auto", changes=None, fitMargin=True,
                      trimToImage=True, imageOpensGate=True) -> str:
        """Refine one segment with NeAR and add the result as a new segment; return its id.

        :param volumeNode: scalar volume (CT) whose grid and intensities are used; None to use the
          segmentation's own geometry (then no appearance). Volume and segmentation may each be
          under a linear parent transform; a non-linear one is refused (``InputError``).
        :param segmentationNode: the segmentation; the result ``"<name> (NeAR)"`` is added to it,
          blue, and the original is shown red. The original segment and the volume are never changed.
        :param segmentId: id of the segment to refine.
        :param prior: a prior name (``"auto"``, ``"adrenal"``, ``"anatomy"``; ``-s`` / ``-sa`` to force
          shape-only / shape + image) or a ``.safetensors`` path; None is ``"auto"``: the adrenal prior
          when the segment's name or terminology names an adrenal gland, else the general one.
        :param appearance: use the volume's intensities (when the prior supports it).
        :param preset: ``"fast"``, ``"default"`` or ``"quality"``.
        :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        :param seed: random seed (results are reproducible for a seed).
        :param progress: ``progress(fraction, message)`` callback.
        :param cancel: ``cancel() -> bool`` or a ``threading.Event``; when set, ``Cancelled`` is raised
          and the scene is left as it was.
        :param probabilityVolume: also add the refined probability map as a volume.
        :param changeSegments: also add ``"<name> (NeAR added)"`` / ``"(NeAR removed)"`` segments (hidden).
        :param geometry: ``"auto"`` (the segment's own grid when it is finer than the volume's, so an
          oversampled segmentation keeps its resolution; else the volume's), ``"volume"`` or
          ``"segmentation"``.
        :param changes: which of the prior's changes are applied (do no harm): ``"all"``, ``"thick"``
          (only errors thicker than about a voxel; the segment's own boundary is kept) or ``"gated"``
          (all when the segment has thick errors or the prior changes over 15 % of it, else thick); thick
          and gated keep a segment outside the prior's domain. None: the engine's default (gated).
        :param fitMargin: with a CT, a segment painted too thick or too thin all round (up to 2.5 mm) first
          has its boundary moved to the image's edge when the image clearly shows it (the CLI's
          ``--no-margin-fit`` is ``fitMargin=False``).
        :param trimToImage: with a CT, pieces of the result that the image shows as the structure's
          surroundings (a slab or leak painted into fat) are removed last (the CLI's ``--no-image-trim``
          is ``trimToImage=False``).
        :param imageOpensGate: with a CT, a thin change the image supports (80 % of it or more) is applied
          whole where the do-no-harm gate would keep the segment's boundary (the CLI's ``--no-image-gate``
          is ``imageOpensGate=False``).
        :raises InputError: (a ValueError) with a one-line reason for bad inputs.
        """
        job = self.prepareRefinement(volumeNode, segmentationNode, segmentId, prior=prior, appearance=appearance,
                                     preset=preset, device=device, seed=seed, marginMm=marginMm,
                                     spacingMm=spacingMm, probabilityVolume=probabilityVolume,
                                     changeSegments=changeSegments, geometry=geometry, changes=changes,
                                     fitMargin=fitMargin, trimToImage=trimToImage,
                                     imageOpensGate=imageOpensGate)
        self.computeRefinement(job, progress=progress, cancel=cancel)
        return self.applyRefinement(job, showResult=showResult)

    def refineSegments(self, volumeNode, segmentationNode, segmentIds=None, progress=None, cancel=None,
                       **options) -> dict:
        """Refine every listed segment (default: all that are not NeAR outputs).

        Returns ``{originalId: newSegmentId}``. All or nothing: if one fails or is cancelled, the
        results added by this call are removed again and the error is raised.
        """
        from NeARSlicerLib.errors import InputError

        if segmentationNode is None:
            raise InputError("no segmentation selected")
        segmentIds = list(segmentIds) if segmentIds is not None else self.refinableSegmentIds(segmentationNode)
        if not segmentIds:
            raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments to refine")
        done = {}
        count = len(segmentIds)
        try:
            for index, segmentId in enumerate(segmentIds):
                def stepProgress(fraction, message="", _index=index):
                    if progress is not None:
                        progress((_index + float(fraction)) / count, f"[{_index + 1}/{count}] {message}")

                done[segmentId] = self.refineSegment(volumeNode, segmentationNode, segmentId,
                                                     progress=stepProgress, cancel=cancel, **options)
        except BaseException:
            for newId in done.values():
                if segmentationNode.GetSegmentation().GetSegment(newId) is not None:
                    self.removeRefinement(segmentationNode, newId)
            raise
        return done

    def refineStudy(self, cases, outputDir, progress=None, cancel=None, csvName="summary.csv",
                    study=False, studyOptions=None, overwrite=False, workers=None, rayAddress=None,
                    resume=False, **options) -> list:
        """Refine a list of cases from files, for the Python console.

        :param cases: a folder (see :func:`NeARSlicerLogic.discoverCases`, the rules ``nearslicer study``
          uses too) or a list of ``(volumePath, segmentationPath)`` / ``(volumePath, segmentationPath,
          segment)`` tuples, where ``segment`` is a segment name, a label value (int) or a list of them;
          no segment: all segments. ``volumePath`` may be None (the segmentation's geometry is used).
        :param outputDir: where ``<case>.seg.nrrd`` (original and refined segments) and the CSV go. It
          may be the input folder: an output is never an input file. When ``<case>.seg.nrrd`` is an
          input there, the output is written beside it as ``<case>.NeAR.seg.nrrd``; an existing
          output file is not replaced unless ``overwrite`` (``OutputError``, an ``InputError``, before
          anything is computed).
        :param study: False (default): refine each segment on its own with the prior. True: study mode,
          the paper's transductive NeAR: one model and a latent code per segment are trained on all
          the segments jointly (warm-started from the prior), then every segment is decoded; the
          trained model is saved as ``study_prior.safetensors`` (+ ``.json`` card) in ``outputDir``.
        :param studyOptions: StudyConfig overrides for study mode (e.g. ``{"epochs": 30}``).
        :param workers: run the cases with the engine's batch (``nearslicer batch``) in a child process on
          a pool of this many worker processes; ``rayAddress`` (``"auto"`` or an address): on a Ray
          cluster instead. The output folder is then the batch contract's (``<case>.nii.gz`` for
          label-map inputs, ``<case>.seg.nrrd`` for .seg.nrrd inputs, ``summary.csv``), ``resume``
          skips the cases an earlier run finished from the same inputs (failed ones run again), and the options are preset, device, prior,
          appearance and seed. Default (neither): each segment in the session's engine process.
        :param options: refineSegment options (preset, device, prior, appearance, seed, ...).
        :returns: the CSV rows as dicts. Rows are appended to the CSV as cases finish. A failing case
          or segment is recorded with its error and the batch goes on; a cancel stops the batch (rows
          so far are kept) and raises ``Cancelled``.
        """
        return batch.refineStudy(self, cases, outputDir, progress=progress, cancel=cancel, csvName=csvName,
                                 study=study, studyOptions=studyOptions, overwrite=overwrite, workers=workers,
                                 rayAddress=rayAddress, resume=resume, **options)

    # ------------------------------------------------------------------ results
    @staticmethod
    def isNeAROutput(segment) -> bool:
        return apply.isNeAROutput(segment)

    def refinableSegmentIds(self, segmentationNode) -> list:
        """Segments that are inputs (not NeAR outputs, not kept originals)."""
        return apply.refinableSegmentIds(segmentationNode)

    def sourceSegmentId(self, segmentationNode, newSegmentId) -> str:
        """The id of the segment a NeAR result was computed from."""
        return apply.sourceSegmentId(segmentationNode, newSegmentId)

    def refinementStats(self, segmentationNode, newSegmentId) -> dict:
        """The numbers stored with a NeAR result (voxels, volumes, Dice, seconds)."""
        return apply.refinementStats(segmentationNode, newSegmentId)

    def removeRefinement(self, segmentationNode, newSegmentId) -> None:
        """Remove a (not accepted) NeAR result and what came with it; restore the original's display."""
        apply.removeRefinement(segmentationNode, newSegmentId)

    def acceptRefinement(self, segmentationNode, newSegmentId) -> str:
        """Make the refined segment the segment of record (the original is kept, renamed, hidden)."""
        return apply.acceptRefinement(segmentationNode, newSegmentId)

    # ------------------------------------------------------------------ review
    def showComparison(self, volumeNode, segmentationNode, originalId, refinedId, isolate=True, setLayout=True):
        """Review display: original red vs refined blue, linked slice views and 3D (display only)."""
        return review.showComparison(volumeNode, segmentationNode, originalId, refinedId, isolate, setLayout)

    def segmentArrays(self, segmentationNode, originalId, refinedId, volumeNode=None):
        """``(image or None, original mask, refined mask, spacing (i, j, k) mm)`` on one grid."""
        return review.segmentArrays(segmentationNode, originalId, refinedId, volumeNode)

    def renderSurfaces(self, segmentationNode, segmentIds, colors, opacities, size=(360, 360)):
        """The segments' closed surfaces rendered offscreen, RGB uint8."""
        return review.renderSurfaces(segmentationNode, segmentIds, colors, opacities, size)

    def saveReport(self, path, segmentationNode, refinedId, volumeNode=None, title=None, surfaces=True) -> str:
        """Write the review picture (slices with outlines and numbers, 3D surfaces) as a PNG."""
        return review.saveReport(path, segmentationNode, refinedId, volumeNode, title, surfaces)
