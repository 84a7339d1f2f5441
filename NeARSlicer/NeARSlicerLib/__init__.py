"""NeARSlicerLib: the Slicer-free NeAR engine (Neural Annotation Refinement).

Conventions, written once for the whole package:

* Voxel arrays are numpy arrays indexed ``[k, j, i]`` (= ``z, y, x``), the order of
  ``SimpleITK.GetArrayFromImage`` and of ``slicer.util.arrayFromVolume``.
* Physical quantities follow ITK: ``spacing`` and ``origin`` are given in ``(i, j, k)``
  order, in millimetres, in LPS world coordinates; ``direction`` is the 3x3 matrix whose
  columns are the unit vectors of the i, j, k axes (SimpleITK's flat 9-tuple, row-major).
  Slicer's RAS is converted to LPS at the Slicer boundary (``NeARSlicer.py``), nowhere else.
* Intensities are Hounsfield units (HU); masks are 0/1 (bool or uint8).
"""

__version__ = "0.1.0"
