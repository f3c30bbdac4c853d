"""RPROneShot's logic, Qt-free: the one-shot engine adapter, its worker and the MRML glue.

Shared pieces (MRML boundary, worker jobs, model list) come from
``LandmarkLocalizerLib``; the module declares LandmarkLocalizer as a dependency.
"""
