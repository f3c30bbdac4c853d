"""Python packages the engines need inside Slicer, installed only after the user agrees.

Slicer ships numpy, SimpleITK and vtk: those are never installed or pinned
here. PyTorch comes from the PyTorch extension's ``PyTorchUtils`` when that
extension is installed (it picks the build matching the GPU and driver), else
from ``pip``; safetensors and tqdm from ``pip``.
"""

from __future__ import annotations

import importlib.util

from landmarkloc.errors import InputError

PIP_PACKAGES = ("safetensors", "tqdm")  # small, pure or wheel-only; torch is handled separately
SHIPPED_WITH_SLICER = ("numpy", "SimpleITK", "vtk")


def missing_packages() -> list:
    """Import names the engines need that this Python does not have."""
    return [name for name in ("torch", *PIP_PACKAGES) if importlib.util.find_spec(name) is None]


def ensure_installed(confirm) -> None:
    """Install what is missing inside Slicer; ``confirm(message) -> bool`` asks the user first.

    Raises InputError when the user declines, so no work starts without the packages.
    """
    missing = missing_packages()
    if not missing:
        return
    if not confirm("The landmark localization engines need these Python packages, which are not installed yet: "
                   f"{', '.join(missing)}.\n\nInstall them now? This may take several minutes."):
        raise InputError(f"the packages {', '.join(missing)} are needed; install them to run localization")
    import slicer

    if "torch" in missing:
        _install_torch(slicer)
    others = [name for name in PIP_PACKAGES if name in missing]
    if others:
        slicer.util.pip_install(" ".join(others))
    still = missing_packages()
    if still:
        raise InputError(f"installing {', '.join(still)} failed; see the Python console")


def _install_torch(slicer) -> None:
    try:
        import PyTorchUtils  # the PyTorch extension
    except ImportError:
        slicer.util.pip_install("torch")
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    if torch is None:
        raise InputError("PyTorch could not be installed (PyTorch extension); see the Python console")
