"""Python packages the engines need inside Slicer, installed only after the user agrees.

Slicer ships numpy, SimpleITK and vtk: those are never installed or pinned
here. PyTorch comes from the PyTorch extension's ``PyTorchUtils`` when that
extension is installed (it picks the build matching the GPU and driver), else
from ``pip``; safetensors and tqdm from ``pip``. A failed installation (pip
raises ``CalledProcessError``, no network, ...) becomes an InputError that says
what to do, which the modules show as a message.
"""

from __future__ import annotations

import importlib
import importlib.util

from landmarkloc.errors import InputError

PIP_PACKAGES = ("safetensors", "tqdm")  # small, pure or wheel-only; torch is handled separately
SHIPPED_WITH_SLICER = ("numpy", "SimpleITK", "vtk")
MANUAL_INSTALL = ("Check the network connection and try again, or install them from Slicer's Python console: "
                  "slicer.util.pip_install('{packages}') (PyTorch is best installed with the PyTorch extension). "
                  "The Python console shows the installer's output.")


def missing_packages(extra=(), engines: bool = True) -> list:
    """Import names the engines (unless ``engines`` is False) and the ``extra`` pip packages need that this
    Python does not have."""
    importlib.invalidate_caches()  # packages installed since the last look are found
    wanted = (("torch", *PIP_PACKAGES) if engines else ()) + tuple(extra)
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def ensure_installed(confirm, extra=(), engines: bool = True) -> None:
    """Install what is missing inside Slicer; ``confirm(message) -> bool`` asks the user first.

    ``extra``: further pip packages a task needs (the sample data needs nilearn); ``engines=False`` for a task
    that runs no network (loading the sample), so nobody is asked to install PyTorch just to see an image.
    Raises InputError when the user declines or the installation fails, so no work starts without the packages.
    """
    missing = missing_packages(extra, engines)
    if not missing:
        return
    if not confirm("This needs these Python packages, which are not installed yet: "
                   f"{', '.join(missing)}.\n\nInstall them now? This may take several minutes."):
        raise InputError(f"the packages {', '.join(missing)} are needed; install them to continue")
    import slicer

    try:
        if "torch" in missing:
            _install_torch(slicer)
        others = [name for name in (*PIP_PACKAGES, *extra) if name in missing]
        if others:
            slicer.util.pip_install(" ".join(others))
    except InputError:
        raise
    except Exception as exc:  # CalledProcessError from pip, OSError, errors inside PyTorchUtils
        raise InputError(f"installing {', '.join(missing)} failed ({type(exc).__name__}: {exc}).\n"
                         + MANUAL_INSTALL.format(packages=" ".join(missing))) from None
    still = missing_packages(extra, engines)
    if still:
        raise InputError(f"installing {', '.join(still)} did not make them importable.\n"
                         + MANUAL_INSTALL.format(packages=" ".join(still)))


def _install_torch(slicer) -> None:
    try:
        import PyTorchUtils  # the PyTorch extension
    except ImportError:
        slicer.util.pip_install("torch")
        return
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
    if torch is None:
        raise InputError("PyTorch could not be installed by the PyTorch extension. "
                         + MANUAL_INSTALL.format(packages="torch"))
