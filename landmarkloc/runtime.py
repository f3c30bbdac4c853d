"""Where and how networks run: device choice, seeding, torch.distributed, progress bars."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user's device choice into a torch device; 'auto' prefers cuda, then mps, then cpu."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but this torch build sees no CUDA GPU")
        return torch.device(name)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise InputError("device 'mps' was requested but Apple MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that a run can be repeated exactly."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class DistributedContext:
    """The process's place in a (possibly single-process) training run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` set up, or run as a single process.

    Uses nccl on CUDA (one GPU per local rank) and gloo on CPU, so the same
    training code scales from a laptop to many GPUs with PyTorch's own engine.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def progress(iterable=None, total=None, desc: str = "", quiet: bool = False, **kwargs):
    """A tqdm progress bar on stderr, silent with ``quiet``."""
    return tqdm(iterable, total=total, desc=desc, disable=quiet, dynamic_ncols=True, leave=False, **kwargs)
