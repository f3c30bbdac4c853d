"""The one rule for ``-o`` (and ``--rois``) of every command that writes one result per input.

* A folder — one that exists, or a name ending with ``/`` — receives one file
  per input, named after the input (its name without image, markups or model
  suffixes) plus the command's suffix: ``-o out/`` with ``IXI002.nii.gz``
  gives ``out/IXI002.mrk.json``. This holds for one input too.
* Otherwise ``-o`` is the output file itself, for one input only; it must end
  with one of the command's file suffixes, when the command has any (model
  outputs take any stem).
* Several inputs need a folder: a file name (with a file suffix) is refused; a
  name without one is taken as a folder and created.
* Two inputs of the same name are refused: their outputs would overwrite each
  other.
* No output may be an input of the same run, and no two outputs may be one
  file (:func:`check_outputs_are_not_inputs`).

``demo`` and ``bench`` write several files per run and always take a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

NAME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".bmp",
                 ".tif", ".tiff", ".mrk.json", ".fcsv", ".csv", ".json", ".safetensors", ".pth", ".pt", ".ckpt",
                 ".txt")


def input_name(path) -> str:
    """The name an input gives its output: the file (or folder) name without a known suffix."""
    name = Path(path).name
    for suffix in NAME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _ends_with(name: str, suffixes) -> bool:
    return any(name.lower().endswith(s) for s in suffixes)


def output_paths(inputs, output, suffix: str, file_suffixes=(), option: str = "-o") -> list:
    """One output path per input under the rule above; ``suffix`` names the files in a folder."""
    inputs = [Path(p) for p in inputs]
    folder = str(output).endswith(("/", os.sep)) or Path(output).is_dir()  # before Path() drops the slash
    output = Path(output)
    if not folder and len(inputs) > 1:
        if file_suffixes and _ends_with(output.name, file_suffixes):
            raise InputError(f"{option} {output}: {len(inputs)} inputs need a folder (one output per input, named "
                             "after it), not a file name")
        folder = True
    if folder:
        names = [input_name(p) for p in inputs]
        if len(set(names)) != len(names):
            raise InputError("several inputs have the same name; their outputs would overwrite each other")
        return [output / f"{n}{suffix}" for n in names]
    if file_suffixes and not _ends_with(output.name, file_suffixes):
        raise InputError(f"{option} {output.name} does not end with {' or '.join(file_suffixes)}; give such a "
                         "file name, or a folder")
    return [output]


def _same_file_key(path) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def check_outputs_are_not_inputs(inputs, outputs) -> None:
    """Refuse a run whose output is one of its inputs (a support annotation, a model, a prediction), or whose
    two outputs are one file: writing would destroy the input, or one result would replace the other.

    ``inputs`` and ``outputs`` are ``(option, path)`` pairs; paths are compared after resolving links."""
    by_key = {}
    for option, path in inputs:
        by_key.setdefault(_same_file_key(path), (option, path, "input"))
    for option, path in outputs:
        key = _same_file_key(path)
        if key in by_key:
            other, other_path, role = by_key[key]
            if role == "input":
                raise InputError(f"{option} {path} is also the input {other} {other_path}: writing it would "
                                 "overwrite that input; choose another output")
            raise InputError(f"{other} and {option} are the same file {path}: one output would overwrite the "
                             "other; choose different names")
        by_key[key] = (option, path, "output")


def model_files(option: str, model) -> list:
    """``(option, path)`` for both files of a model given by path or by a shipped model's name."""
    from ..io.modelfile import find_model, model_paths

    return [(option, path) for path in model_paths(find_model(model))]
