"""Errors the user can act on.

Anything raised as a :class:`LandmarkLocError` is a problem with the user's
input (files, options, models), not a bug: the CLI prints its message on one
line and exits with code 2; the Slicer modules show it in a message box.
"""


class LandmarkLocError(Exception):
    """Base class of all user-facing errors of this package."""


class InputError(LandmarkLocError):
    """An input image, markups file, option or path cannot be used."""


class ModelError(LandmarkLocError):
    """A model file is missing, damaged, tampered with or does not fit the input."""


class InputWarning(UserWarning):
    """A valid input that was changed or may mislead (issued with :func:`warnings.warn`): the CLI prints it as
    one ``landmarkloc COMMAND: warning: ...`` line; the command goes on."""
