"""NeARSlicer module logic (no Qt): ``from NeARSlicerLogic import NeARSlicerLogic``.

A package rather than a ``NeARSlicerLogic.py`` file beside ``NeARSlicer.py``: Slicer treats every
``.py`` file in a scripted-module folder as a module of its own, but not files inside packages.
"""

from .dependencies import dependenciesInstalled, installDependencies, missingRequirements
from .io import (
    loadLabelmapAsSegmentation,
    loadSegmentationFile,
    loadVolumeFile,
    removeNodes,
    saveSegmentationFile,
)
from .common import (
    COMPARE_LAYOUT_ID,
    ORIGINAL_REVIEW_COLOR,
    ORIGINAL_SUFFIX,
    REFINED_COLOR,
    REFINED_SUFFIX,
    formatStats,
)
from .batch import discoverCases
from .compute import RefinementRun
from .job import RefinementJob
from .logic import NeARSlicerLogic

__all__ = [
    "NeARSlicerLogic",
    "RefinementJob",
    "RefinementRun",
    "REFINED_SUFFIX",
    "ORIGINAL_SUFFIX",
    "REFINED_COLOR",
    "ORIGINAL_REVIEW_COLOR",
    "COMPARE_LAYOUT_ID",
    "discoverCases",
    "formatStats",
    "loadVolumeFile",
    "loadLabelmapAsSegmentation",
    "loadSegmentationFile",
    "saveSegmentationFile",
    "removeNodes",
    "dependenciesInstalled",
    "installDependencies",
    "missingRequirements",
]
