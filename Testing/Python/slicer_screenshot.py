"""Render the README screenshot: the review of a NeAR refinement on the real CT, headless.

    .venv/bin/python Testing/Python/slicer_screenshot.py [output.png]

Same flow as the module: the real CT and its labels are loaded into a headless Slicer scene
(slicer-core), the left adrenal is distorted into a new segment, ``refineSegment`` refines it,
``showComparison`` sets the review display and ``saveReport`` -- the code behind the module's
"Save report..." button -- renders original (red) vs refined (blue) on orthogonal slices and both
surfaces in 3D, offscreen. Default output: Resources/Screenshots/NeARSlicer-compare.png.
"""

import sys
from pathlib import Path

import numpy as np

import slicer_fixture as F


def main(argv):
    output = Path(argv[1]) if len(argv) > 1 else F.REPO_ROOT / "Resources" / "Screenshots" / "NeARSlicer-compare.png"
    app = F.create_headless_slicer()
    app.clear()
    import slicer

    import NeARSlicerLogic as L
    from NeARSlicerLib.distort import DistortionParams, distort
    from NeARSlicerLib.metrics import dice

    volume = L.loadVolumeFile(str(F.CT_PATH), name="ct")
    segmentation, labels = L.loadLabelmapAsSegmentation(str(F.SEG_PATH), volume, name="seg")
    truth = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, labels[F.LEFT_ADRENAL_LABEL], volume) > 0
    distorted = distort(truth, seed=F.DISTORT_SEED, params=DistortionParams(**F.DISTORTION_3MM)).astype(np.uint8)
    distortedId = F.add_segment(segmentation, "left adrenal (rough annotation)", distorted, volume)

    logic = L.NeARSlicerLogic()
    newId = logic.refineSegment(volume, segmentation, distortedId, preset="default", seed=0)
    logic.showComparison(volume, segmentation, distortedId, newId)
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, newId, volume) > 0
    print(L.formatStats(logic.refinementStats(segmentation, newId)))
    print(f"Dice vs TotalSegmentator label: annotation {dice(distorted, truth):.3f}, NeAR {dice(refined, truth):.3f}")
    output.parent.mkdir(parents=True, exist_ok=True)
    logic.saveReport(output, segmentation, newId, volume)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv)
