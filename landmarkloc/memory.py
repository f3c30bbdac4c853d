"""How much memory an image may take, so that a huge input is refused with its size, not a crash."""

from __future__ import annotations

import os

from .errors import InputError

# Working copies of an image held at once (file pixels, float32, resampled): budget this many per voxel.
COPIES_IN_MEMORY = 3
MEMORY_LIMIT_ENV = "LANDMARKLOC_MAX_MEMORY_GB"


def memory_budget_bytes() -> int:
    """``$LANDMARKLOC_MAX_MEMORY_GB`` if set, else 80 % of the memory available now."""
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override:
        try:
            return int(float(override) * 1e9)
        except ValueError:
            raise InputError(f"{MEMORY_LIMIT_ENV} must be a number of GB, got {override!r}") from None
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 10**9
    return int(0.8 * available)


def sizes_text(values) -> str:
    return " x ".join(str(int(v)) for v in values)


def check_fits_in_memory(nbytes: float, what: str) -> None:
    """Refuse work whose arrays would not fit in memory, naming the size, instead of crashing the machine."""
    budget = memory_budget_bytes()
    if nbytes > budget:
        raise InputError(f"{what} needs about {nbytes / 1e9:.1f} GB of memory, more than the "
                         f"{budget / 1e9:.1f} GB available; crop it or lower its resolution first")
