"""The ``landmarkloc`` command: one subcommand per module in this package.

User errors (``LandmarkLocError``) end with a one-line message on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings

from .. import __version__
from ..errors import InputError, InputWarning, LandmarkLocError
from ..runtime import DEVICE_CHOICES

# Subcommands; each is the module of that name (dashes as underscores) with register(subparsers) and run(args).
SUBCOMMANDS = [
    "demo", "derive", "evaluate", "train-fcn", "localize", "calibrate", "train-rpr", "oneshot", "import-model", "bench",
    "web",
]

EXIT_USER_ERROR = 2


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="where the network runs (auto: cuda, then mps, then cpu; default: auto)")


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress messages")


def model_help(what: str, kinds) -> str:
    """``--model`` help that lists the shipped models of these kinds (usable by name from any folder)."""
    from ..io.modelfile import shipped_model_names

    names = ", ".join(shipped_model_names(kinds)) or "none found"
    return f"{what}: a .safetensors/.json path, or the name of a shipped model ({names}); an existing path wins"


SPACING_HELP = ("pixel size in mm of 2D picture inputs (PNG, JPEG, BMP, TIFF), one value or one per axis, e.g. 0.1; "
                "never replaces the spacing an image stores (refused when no input is a 2D picture)")


def add_spacing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spacing", help=SPACING_HELP)


def parse_spacing(text):
    """``--spacing`` as a list of mm, or None when not given."""
    return parse_floats(text, "--spacing") if text else None


def parse_floats(text: str, what: str) -> list:
    """Comma-separated numbers from the command line, with a clear error."""
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


@contextlib.contextmanager
def about(path):
    """Name the input file in a user error's message when the message does not already name it."""
    try:
        yield
    except InputError as exc:
        name = str(getattr(path, "name", path)).rstrip("/")
        if name and name not in str(exc):
            raise InputError(f"{path}: {exc}") from None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="landmarkloc",
        description="Automatic anatomical landmark and organ-box localization (LPS millimetres throughout).",
        epilog="Run 'landmarkloc COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"landmarkloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(sub)
    return parser


def add_series_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--series", metavar="UID",
                        help="the DICOM series to read from a folder that holds several (its SeriesInstanceUID; "
                        "the error for such a folder lists them)")


def _print_input_warnings(command: str):
    """``warnings.showwarning`` that prints an InputWarning as one ``landmarkloc COMMAND: warning:`` line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"landmarkloc {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, ``kill``), raised like Ctrl-C so that every ``finally`` runs and no
    temporary file is left behind."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM unwinds the command as SIGINT does (main thread only; the previous handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..io.image import without_itk_warnings  # ITK (resampling, registration) speaks through our lines only

    with warnings.catch_warnings(), _terminate_cleanly(), without_itk_warnings():
        warnings.simplefilter("always", InputWarning)  # every input's warning, not only the first
        warnings.showwarning = _print_input_warnings(args.command)
        try:
            return int(args.func(args) or 0)
        except LandmarkLocError as exc:
            print(f"landmarkloc {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"landmarkloc {args.command}: interrupted", file=sys.stderr)
            return 130
        except Terminated:
            print(f"landmarkloc {args.command}: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
