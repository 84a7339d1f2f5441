"""NeARSlicer: refine an imperfect segment with Neural Annotation Refinement (NeAR).

This file holds the Slicer module, its (thin) widget and its self-test. The work is done by
``NeARSlicerLogic`` (no Qt; usable from the Python console) on top of the engine ``NeARSlicerLib``.
"""

import os
import pathlib
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from NeARSlicerLogic import (
    NeARSlicerLogic,
    formatStats,
    installDependencies,
    missingRequirements,
)
from NeARSlicerLogic.job import formatOutcome
from NeARSlicerLogic.priorchoice import describePrior, priorFromChoice
from NeARSlicerLogic.review_queue import ReviewQueue

__all__ = ["NeARSlicer", "NeARSlicerWidget", "NeARSlicerLogic", "NeARSlicerTest", "NeARSlicerParameterNode"]


#
# NeARSlicer
#


class NeARSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "NeAR Refinement"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["NeARSlicer contributors"]
        self.parent.helpText = """
Refine an imperfect segment (for example a quickly painted adrenal gland) with Neural Annotation
Refinement (NeAR): a learned shape prior fits a smooth, plausible surface to the annotation, guided
by the CT intensities. The result is added as a new segment "&lt;name&gt; (NeAR)" (blue) next to the
original (shown red); the original is never modified. Review with <b>Compare</b>, keep it with
<b>Accept</b>. For batches, use <code>NeARSlicerLogic().refineStudy(cases, outputDir)</code> in the
Python console (<code>study=True</code>: train one model on the whole study, the paper's transductive
mode). See the <a href="https://github.com/NeARSlicer/NeARSlicer">documentation</a>.
"""
        self.parent.acknowledgementText = """
NeAR: Yang J., Shi R., Jin L., Huang X., Kuang K., Wei D., Gu S., Liu J., Liu P., Chai Z., Xiao Y.,
Chen H., Xu L., Du B., Yan X., Tang H., Alessio A., Holste G., Zhang J., Wang X., Chen J., Chen J., Ni B.
"Neural Annotation Refinement: Development of a New 3D Dataset for Adrenal Gland Analysis", MICCAI 2022.
The shipped adrenal priors were trained on the ALAN shapes (MedMNIST v2, CC BY 4.0); the shape +
appearance one also on synthetic CT phantoms generated around them.
"""


#
# Parameter node
#


@parameterNodeWrapper
class NeARSlicerParameterNode:
    """Everything the user chose in the module panel (saved with the scene).

    inputVolume, inputSegmentation: what to refine (the segment id is kept in ``segmentId``).
    preset, useAppearance, priorChoice (+ priorPath for "file"), device, seed, changes, imageOpensGate:
    engine options.
    probabilityVolume, changeSegments: extra review outputs.
    refinedSegmentId: the last result, for Compare / Accept / Save report.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    preset: Annotated[str, Choice(["fast", "default", "quality"])] = "default"
    useAppearance: bool = True
    # auto: the adrenal prior for a segment named (or with terminology) adrenal gland, else the general one
    priorChoice: Annotated[str, Choice(["auto", "adrenal", "general", "file"])] = "auto"
    priorPath: pathlib.Path = pathlib.Path()  # used when priorChoice is "file"
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    seed: Annotated[int, WithinRange(0, 999999)] = 0
    probabilityVolume: bool = False
    changeSegments: bool = False
    # which of the prior's changes are applied (NeARSlicerLib.confidence.CHANGE_POLICIES); gated: do no harm
    changes: Annotated[str, Choice(["gated", "thick", "all"])] = "gated"
    # a CT that supports the prior's thin change may open the gate; off for near-correct masks on thick slices
    imageOpensGate: bool = True
    refinedSegmentId: str = ""


#
# NeARSlicerWidget
#


class NeARSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 150

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # the RefinementRun in the engine process, polled by _timer
        self._timer = None
        self._reviewQueue = None  # the batch review queue (NeARSlicerLogic.review_queue)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NeARSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NeARSlicerLogic()
        self.ui.progressBar.setVisible(False)
        # what NeAR did with the last segment and how far to trust it, right above Accept
        self.resultLabel = qt.QLabel("")
        self.resultLabel.wordWrap = True
        self.resultLabel.setVisible(False)
        self.ui.reviewCollapsibleButton.layout().insertWidget(1, self.resultLabel)

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollRun)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # The segment combobox follows the segmentation selector; its choice goes to the parameter node.
        self.ui.inputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentChanged)

        self.ui.refineButton.connect("clicked(bool)", self.onRefineButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptButton)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReportButton)
        self._setupBatchReview()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        # stop the timer first so that no poll runs on a half torn-down widget, then the engine process
        if self._timer is not None:
            self._timer.stop()
        self._cancelRun()
        self._run = None
        if self.logic is not None:
            self.logic.shutdownEngine()
        if self._reviewQueue is not None:
            self._reviewQueue.close()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun()
        self.setParameterNode(None)
        if self._reviewQueue is not None:
            self._reviewQueue.close()
            self._updateBatchReview()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(NeARSlicerParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.inputSegmentation:
            firstSegmentationNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
            if firstSegmentationNode:
                self._parameterNode.inputSegmentation = firstSegmentationNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are bound to the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.ui.segmentSelector.setCurrentNode(self._parameterNode.inputSegmentation)
            if self._parameterNode.segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(self._parameterNode.segmentId)
        self._updateButtons()

    # ------------------------------------------------------------------ selection
    def onSegmentationChanged(self, node) -> None:
        self.ui.segmentSelector.setCurrentNode(node)
        self.onSegmentChanged(self.ui.segmentSelector.currentSegmentID())

    def onSegmentChanged(self, segmentId) -> None:
        if self._parameterNode and self._parameterNode.segmentId != (segmentId or ""):
            self._parameterNode.segmentId = segmentId or ""

    def _refinedSegmentAvailable(self) -> bool:
        parameters = self._parameterNode
        if not parameters or not parameters.inputSegmentation or not parameters.refinedSegmentId:
            return False
        return parameters.inputSegmentation.GetSegmentation().GetSegment(parameters.refinedSegmentId) is not None

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._run is not None
        parameters = self._parameterNode
        canRefine = bool(parameters and parameters.inputSegmentation and parameters.segmentId)
        self.ui.refineButton.enabled = running or canRefine
        if not running:
            self.ui.refineButton.text = "Refine segmentation"
            self.ui.refineButton.toolTip = ("Refine the selected segment with NeAR. The result is added as a new "
                                            "segment; the original is kept as it is." if canRefine else
                                            "Select a segmentation and a segment to refine.")
        hasResult = not running and self._refinedSegmentAvailable()
        for button in (self.ui.compareButton, self.ui.saveReportButton):
            button.enabled = hasResult
        accepted = False
        if hasResult:
            segment = parameters.inputSegmentation.GetSegmentation().GetSegment(parameters.refinedSegmentId)
            accepted = segment.HasTag("NeARSlicer.Accepted")
        self.ui.acceptButton.enabled = hasResult and not accepted
        self.ui.priorPathLineEdit.enabled = bool(parameters and parameters.priorChoice == "file")

    # ------------------------------------------------------------------ refine / cancel
    def _ensureDependencies(self) -> bool:
        if not missingRequirements():
            return True
        with slicer.util.tryWithErrorDisplay("Installing the Python packages NeAR needs failed."):
            return installDependencies(
                confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, "NeAR: install Python packages"))

    def onRefineButton(self) -> None:
        if self._run is not None:  # the button reads "Cancel" while running
            self._cancelRun()
            return
        if not self._ensureDependencies():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("NeAR refinement could not start.", waitCursor=True):
            prior = priorFromChoice(parameters.priorChoice, str(parameters.priorPath))
            job = self.logic.prepareRefinement(
                parameters.inputVolume, parameters.inputSegmentation, parameters.segmentId,
                prior=prior, appearance=parameters.useAppearance, preset=parameters.preset,
                device=parameters.device, seed=parameters.seed,
                probabilityVolume=parameters.probabilityVolume, changeSegments=parameters.changeSegments,
                changes=parameters.changes, imageOpensGate=parameters.imageOpensGate)
            # the engine runs in its own process (started on first use, then kept warm); the timer polls it
            self._run = self.logic.startRefinement(job)
            self._timer.start()
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.refineButton.text = "Cancel"
            self.ui.refineButton.toolTip = "Stop the refinement; nothing is added to the scene."
            self.ui.statusLabel.text = f"Refining '{job.segmentName}'..."
            self._updateButtons()

    def _cancelRun(self) -> None:
        """Stop the engine process (within 2 s); the next timer tick reports the cancellation."""
        if self._run is not None:
            self.ui.refineButton.text = "Cancelling..."
            self.ui.refineButton.enabled = False
            self._run.cancel()

    def _pollRun(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        done = run.poll()
        self.ui.progressBar.setValue(int(round(100 * min(max(run.fraction, 0.0), 1.0))))
        self.ui.progressBar.setFormat(f"%p%  {run.message}")
        if not done:
            return
        self._timer.stop()
        self._run = None
        self.ui.progressBar.setVisible(False)
        try:
            self._finishRefinement(run)
        finally:
            self._updateButtons()

    def _finishRefinement(self, run) -> None:
        if run.cancelled:
            self.ui.statusLabel.text = "Refinement cancelled; the scene was not changed."
            return
        if run.error is not None:
            # one-line messages (bad input, engine stopped, internal error); details in the engine's log
            self.ui.statusLabel.text = f"Refinement failed; the scene was not changed: {run.error}"
            details = getattr(run.error, "log_tail", "")  # an engine that stopped: the end of its log
            slicer.util.errorDisplay(f"NeAR refinement failed: {run.error}",
                                     **({"detailedText": details} if details else {}))
            return
        with slicer.util.tryWithErrorDisplay("Adding the refined segment failed; the scene was not changed."):
            newSegmentId = self.logic.applyRefinement(run.job)
            self._parameterNode.refinedSegmentId = newSegmentId
            text = formatStats(run.job.stats)
            usedPrior = describePrior(getattr(run.job.result, "info", None))
            if usedPrior:
                text += f"\n{usedPrior}"
            for warning in run.job.stats.get("warnings", []):
                text += f"\nNote: {warning}"
            self.ui.statusLabel.text = text
            self.resultLabel.text = formatOutcome(run.job.stats)
            self.resultLabel.setVisible(bool(self.resultLabel.text))

    # ------------------------------------------------------------------ review
    def onCompareButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not show the comparison.", waitCursor=True):
            segmentation = parameters.inputSegmentation
            originalId = self.logic.sourceSegmentId(segmentation, parameters.refinedSegmentId)
            self.logic.showComparison(parameters.inputVolume, segmentation, originalId, parameters.refinedSegmentId)
            layoutManager = slicer.app.layoutManager()
            if layoutManager is not None:
                for index in range(layoutManager.threeDViewCount):
                    layoutManager.threeDWidget(index).threeDView().resetFocalPoint()
            stats = self.logic.refinementStats(segmentation, parameters.refinedSegmentId)
            self.ui.statusLabel.text = formatStats(stats)
            self.resultLabel.text = formatOutcome(stats)
            self.resultLabel.setVisible(bool(self.resultLabel.text))

    def onAcceptButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not accept the refinement."):
            self.logic.acceptRefinement(parameters.inputSegmentation, parameters.refinedSegmentId)
            name = parameters.inputSegmentation.GetSegmentation().GetSegment(parameters.refinedSegmentId).GetName()
            self.ui.statusLabel.text = (f"Accepted: '{name}' is now the refined segment; the original is kept "
                                        f"hidden as '{name} (original)'.")
        self._updateButtons()

    def onSaveReportButton(self) -> None:
        parameters = self._parameterNode
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Save NeAR report", "NeAR-report.png",
                                              "PNG image (*.png)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not save the report.", waitCursor=True):
            self.logic.saveReport(path, parameters.inputSegmentation, parameters.refinedSegmentId,
                                  parameters.inputVolume)
            self.ui.statusLabel.text = f"Report saved: {path}"


    # ------------------------------------------------------------------ batch review (logic: ReviewQueue)
    REVIEW_ORDERS = ("change", "confidence")  # the items of reviewOrderComboBox, in order

    def _setupBatchReview(self) -> None:
        self._reviewQueue = ReviewQueue()
        self.ui.reviewOpenButton.connect("clicked(bool)", self.onReviewOpenButton)
        self.ui.reviewOrderComboBox.connect("currentIndexChanged(int)", self.onReviewOrderChanged)
        self.ui.reviewTable.connect("cellDoubleClicked(int,int)", self.onReviewTableActivated)
        self.ui.reviewNextButton.connect("clicked(bool)", lambda: self._reviewStep(self._reviewQueue.next))
        self.ui.reviewPreviousButton.connect("clicked(bool)", lambda: self._reviewStep(self._reviewQueue.previous))
        self.ui.reviewAcceptButton.connect("clicked(bool)", lambda: self.onReviewDecision("accepted"))
        self.ui.reviewRejectButton.connect("clicked(bool)", lambda: self.onReviewDecision("rejected"))
        self.ui.reviewNeedsEditButton.connect("clicked(bool)", lambda: self.onReviewDecision("needs_edit"))
        self.ui.reviewTable.horizontalHeader().setStretchLastSection(True)
        self._updateBatchReview()

    def onReviewOpenButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Open a refined batch folder")
        if not folder:
            return
        order = self.REVIEW_ORDERS[max(self.ui.reviewOrderComboBox.currentIndex, 0)]
        with slicer.util.tryWithErrorDisplay("Could not open the batch folder.", waitCursor=True):
            self._reviewQueue.open(folder, order=order)
            self._resetFocalPoints()
        self._updateBatchReview()

    def onReviewOrderChanged(self, index) -> None:
        if self._reviewQueue.rows:
            self._reviewQueue.setOrder(self.REVIEW_ORDERS[max(index, 0)])
        self._updateBatchReview()

    def onReviewTableActivated(self, row, column) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show this case.", waitCursor=True):
            self._reviewQueue.load(row)
            self._resetFocalPoints()
        self._updateBatchReview()

    def _reviewStep(self, step) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show the case.", waitCursor=True):
            if step() is not None:
                self._resetFocalPoints()
        self._updateBatchReview()

    def onReviewDecision(self, status) -> None:
        """Record the decision in the batch (Accept also in the case's .seg.nrrd), then go on."""
        with slicer.util.tryWithErrorDisplay("Could not record the decision; the batch files were not changed.",
                                             waitCursor=True):
            self._reviewQueue.decide(status)
            if self._reviewQueue.next() is not None:
                self._resetFocalPoints()
        self._updateBatchReview()

    def _resetFocalPoints(self) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            for index in range(layoutManager.threeDViewCount):
                layoutManager.threeDWidget(index).threeDView().resetFocalPoint()

    def _updateBatchReview(self) -> None:
        queue = self._reviewQueue
        table = self.ui.reviewTable
        rows = queue.tableRows()
        table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, text in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        if 0 <= queue.index < len(rows):
            table.selectRow(queue.index)
        loaded = queue.segmentationNode is not None
        for button in (self.ui.reviewAcceptButton, self.ui.reviewRejectButton, self.ui.reviewNeedsEditButton):
            button.enabled = loaded
        self.ui.reviewNextButton.enabled = bool(rows)
        self.ui.reviewPreviousButton.enabled = bool(rows)
        self.ui.reviewStatusLabel.text = queue.describe()


#
# NeARSlicerTest
#


class NeARSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload & Test, or ctest): the same flow as the headless pytest suite.

    Data: the real CT example when found (``NEARSLICER_TEST_DATA`` or ``../shared/data`` next to the
    source tree), otherwise a synthetic gland and CT from ``NeARSlicerLib.phantom``.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RefineCompareAccept()
        self.setUp()
        self.test_ErrorsLeaveSceneUnchanged()
        self.setUp()
        self.test_RefineStudy()
        self.setUp()
        self.test_Widget()

    # -- data
    def _dataDir(self):
        candidates = [os.environ.get("NEARSLICER_TEST_DATA", "")]
        here = pathlib.Path(__file__).resolve()
        candidates += [str(parent / "shared" / "data" / "totalseg_example") for parent in here.parents[:4]]
        for candidate in candidates:
            if candidate and os.path.isfile(os.path.join(candidate, "ct.nii.gz")):
                return candidate
        return None

    def _loadCase(self):
        """(volumeNode, segmentationNode, trueSegmentId)."""
        import numpy as np

        import NeARSlicerLogic as L

        dataDir = self._dataDir()
        if dataDir:
            volume = L.loadVolumeFile(os.path.join(dataDir, "ct.nii.gz"), name="ct")
            segmentation, labels = L.loadLabelmapAsSegmentation(os.path.join(dataDir, "seg.nii.gz"), volume, name="seg")
            return volume, segmentation, labels[9]
        from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

        gland = adrenal_phantom(seed=1, shape=(48, 64, 64), spacing=1.5)
        image = ct_phantom(gland, seed=1, spacing=(1.5, 1.5, 1.5))
        ijkToRas = np.diag([1.5, 1.5, 1.5, 1.0])
        volume = slicer.util.addVolumeFromArray(image.astype(np.float32), ijkToRas, name="phantom CT")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "phantom segmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        trueId = segmentation.GetSegmentation().AddEmptySegment("", "gland")
        slicer.util.updateSegmentBinaryLabelmapFromArray(gland.astype(np.uint8), segmentation, trueId, volume)
        return volume, segmentation, trueId

    def _addDistorted(self, volume, segmentation, trueId):
        """A rough annotation of the true segment (Dice about 0.5 on the 3 mm CT), as in the pytest suite."""
        import numpy as np

        from NeARSlicerLib.distort import DistortionParams, distort

        truth = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, trueId, volume) > 0
        voxelMm = min(volume.GetSpacing())
        params = DistortionParams(n_cubes=(3, 6), cube_size=(2, 4) if voxelMm >= 2.5 else (3, 6), p_morph=0.6,
                                  noise_fraction=0.006, noise_band=2 if voxelMm >= 2.5 else 4)
        distorted = distort(truth, seed=11, params=params).astype(np.uint8)
        distortedId = segmentation.GetSegmentation().AddEmptySegment("", "distorted gland")
        slicer.util.updateSegmentBinaryLabelmapFromArray(distorted, segmentation, distortedId, volume)
        return distortedId, truth, distorted

    # -- tests
    def test_RefineCompareAccept(self):
        import numpy as np

        from NeARSlicerLib.metrics import dice

        self.delayDisplay("Refine, compare and accept")
        volume, segmentation, trueId = self._loadCase()
        distortedId, truth, distorted = self._addDistorted(volume, segmentation, trueId)
        logic = NeARSlicerLogic()
        newId = logic.refineSegment(volume, segmentation, distortedId, preset="fast", seed=0)
        segment = segmentation.GetSegmentation().GetSegment(newId)
        self.assertEqual(segment.GetName(), "distorted gland (NeAR)")
        self.assertGreater(segment.GetColor()[2], 0.8)
        after = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, distortedId, volume)
        self.assertTrue(np.array_equal(after > 0, distorted > 0), "the original segment changed")
        refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, newId, volume) > 0
        self.assertGreater(dice(refined, truth), dice(distorted, truth))
        logic.showComparison(volume, segmentation, distortedId, newId)
        slicer.app.processEvents()
        logic.acceptRefinement(segmentation, newId)
        self.assertEqual(segment.GetName(), "distorted gland")
        original = segmentation.GetSegmentation().GetSegment(distortedId)
        self.assertEqual(original.GetName(), "distorted gland (original)")
        self.assertFalse(segmentation.GetDisplayNode().GetSegmentVisibility(distortedId))
        self.delayDisplay("Refine, compare and accept: passed")

    def test_ErrorsLeaveSceneUnchanged(self):
        from NeARSlicerLib.errors import Cancelled, InputError

        self.delayDisplay("Bad inputs and cancel")
        volume, segmentation, trueId = self._loadCase()
        logic = NeARSlicerLogic()
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        segments = segmentation.GetSegmentation().GetNumberOfSegments()
        with self.assertRaises(InputError):
            logic.refineSegment(volume, segmentation, "no such segment")
        emptyId = segmentation.GetSegmentation().AddEmptySegment("", "empty")
        with self.assertRaises(InputError):
            logic.refineSegment(volume, segmentation, emptyId)
        segmentation.GetSegmentation().RemoveSegment(emptyId)
        with self.assertRaises(Cancelled):
            logic.refineSegment(volume, segmentation, trueId, preset="fast", cancel=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
        self.assertEqual(segmentation.GetSegmentation().GetNumberOfSegments(), segments)
        self.delayDisplay("Bad inputs and cancel: passed")

    def test_RefineStudy(self):
        import csv
        import tempfile

        import NeARSlicerLogic as L

        self.delayDisplay("Batch refinement")
        volume, segmentation, trueId = self._loadCase()
        with tempfile.TemporaryDirectory() as folder:
            volumePath = os.path.join(folder, "case1.nrrd")
            segmentationPath = os.path.join(folder, "case1.seg.nrrd")
            slicer.util.saveNode(volume, volumePath)
            L.saveSegmentationFile(segmentation, segmentationPath)
            name = segmentation.GetSegmentation().GetSegment(trueId).GetName()
            cases = [(volumePath, segmentationPath, name), (volumePath, os.path.join(folder, "missing.seg.nrrd"), name)]
            rows = NeARSlicerLogic().refineStudy(cases, os.path.join(folder, "out"), preset="fast")
            self.assertEqual(len(rows), 2)
            self.assertEqual(rows[0]["error"], "")
            self.assertNotEqual(rows[1]["error"], "")
            with open(os.path.join(folder, "out", "summary.csv")) as stream:
                self.assertEqual(len(list(csv.DictReader(stream))), 2)
            loaded, _ = L.loadSegmentationFile(rows[0]["output"])
            self.assertEqual(loaded.GetSegmentation().GetNumberOfSegments(), 2)
        self.delayDisplay("Batch refinement: passed")

    def test_Widget(self):
        self.delayDisplay("Module panel")
        slicer.util.selectModule("NeARSlicer")
        widget = slicer.modules.NeARSlicerWidget
        for name in ("inputVolumeSelector", "inputSegmentationSelector", "segmentSelector", "refineButton",
                     "compareButton", "acceptButton", "progressBar", "statusLabel", "reviewOpenButton",
                     "reviewOrderComboBox", "reviewNextButton", "reviewPreviousButton", "reviewAcceptButton",
                     "reviewRejectButton", "reviewNeedsEditButton", "reviewStatusLabel"):
            self.assertTrue(hasattr(widget.ui, name), name)
        self.delayDisplay("Module panel: passed")
