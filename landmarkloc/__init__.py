"""landmarkloc: automatic anatomical landmark and organ-box localization.

GUI-free core of the Slicer extension: image and markups I/O in physical LPS
millimetres, the global-to-local FCN of Noothout et al. (2020), the one-shot
relative-position-regression agent of Lei et al. (2021), metrics and a CLI.
Imports torch, numpy and SimpleITK only (never slicer, vtk or qt).
"""

__version__ = "0.1.0"
