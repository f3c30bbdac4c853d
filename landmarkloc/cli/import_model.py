"""``landmarkloc import-model``: convert a trusted PyTorch checkpoint into a safe model file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError, ModelError
from ..io.atomic import check_writable
from ..io.modelfile import model_paths, save_model
from .outputs import check_outputs_are_not_inputs, output_paths

EXAMPLE = """example:
  landmarkloc import-model colleague.pth --metadata colleague.json -o models/colleague
  (writes models/colleague.safetensors + models/colleague.json; the .json given must describe the model,
   e.g. the metadata of a model of the same kind trained with landmarkloc)
"""


def register(sub) -> None:
    p = sub.add_parser("import-model", help="convert a .pt/.pth checkpoint to .safetensors + JSON (weights only)",
                       description="Pickle checkpoints can run code when loaded, so landmarkloc refuses them. This "
                       "command reads one with torch.load(weights_only=True), which unpickles tensors only, and "
                       "writes the weights as .safetensors with the given metadata.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the .pt/.pth file (a state dict, or a dict holding one under "
                   "'state_dict' or 'model')")
    p.add_argument("--metadata", required=True, help="JSON file with the model's metadata (must contain 'kind')")
    p.add_argument("-o", "--output", required=True,
                   help="output model path (stem or .safetensors), or a folder: CHECKPOINT.safetensors in it")
    p.set_defaults(func=run)


def load_state_dict_safely(path: Path) -> dict:
    import pickle

    import torch

    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path.name} cannot be read as a weights-only checkpoint: {reason}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path.name} does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def run(args) -> int:
    output = output_paths([args.checkpoint], args.output, "")[0]  # a folder: CHECKPOINT.safetensors in it
    check_outputs_are_not_inputs([("checkpoint", args.checkpoint), ("--metadata", args.metadata)],
                                 [("-o", path) for path in model_paths(output)])
    check_writable(model_paths(output)[0])
    meta_path = Path(args.metadata)
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"metadata file not found: {meta_path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{meta_path.name} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("kind"), str):
        raise InputError(f"{meta_path.name} must be a JSON object with a 'kind'")
    for stale in ("sha256", "weights", "format_version"):
        metadata.pop(stale, None)
    tensors = load_state_dict_safely(Path(args.checkpoint))
    weights, meta = save_model(output, tensors, metadata)
    print(f"wrote {weights} and {meta} ({len(tensors)} tensors)")
    return 0
