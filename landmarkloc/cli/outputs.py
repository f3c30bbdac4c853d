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
    output = Path(output)
    folder = output.is_dir() or str(output).endswith(("/", os.sep))
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
