"""LandmarkLocalizer's logic, Qt-free: MRML boundary, worker jobs, model list, FCN engine adapter.

RPROneShot reuses the shared parts (``mrml``, ``jobs``, ``exchange``,
``models``, ``dependencies``). Nothing here imports Qt; ``slicer``/``vtk`` are
imported inside the functions that touch MRML.
"""
