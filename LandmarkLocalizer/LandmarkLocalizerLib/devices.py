"""Worker side: which torch device a module's Device choice means, and the CPU fallback when CUDA runs out of memory.

Both workers run their engine through :func:`run_with_cpu_fallback`, so a GPU
too small for an image still gives a result (slower, on the CPU) with a
warning that says so, as SlicerNNUnet falls back; the device actually used is
part of every result, and the modules show it.
"""

from __future__ import annotations

DEVICE_CHOICES = ("Auto", "CPU", "CUDA", "MPS")  # what the modules offer; Auto prefers CUDA, then MPS
TORCH_DEVICES = {"Auto": "auto", "CPU": "cpu", "CUDA": "cuda", "MPS": "mps",
                 "GPU": "cuda"}  # "GPU": the CUDA choice in scenes saved before MPS was offered
CUDA_OUT_OF_MEMORY_WARNING = ("The GPU ran out of memory, so this ran on the CPU instead (slower). Close other "
                              "programs using the GPU, or choose CPU to skip the GPU attempt.")


def device_choice(saved: str) -> str:
    """The Device choice to show for a value saved with a scene: "GPU" (saved before MPS was offered) is CUDA.

    The parameter-node wrapper reads a saved value without checking it, but its combo box refuses a value that
    is not a choice, so a scene's value is mapped before the GUI is connected.
    """
    if saved in DEVICE_CHOICES:
        return saved
    return "CUDA" if saved == "GPU" else "Auto"


def update_saved_choice(parameters) -> None:
    """Map a parameter node's saved ``device`` to a current choice, before its GUI is connected."""
    if parameters.device != device_choice(parameters.device):
        parameters.device = device_choice(parameters.device)


def torch_device_name(choice: str) -> str:
    """The landmarkloc device name for a module's Device choice (names torch knows pass through)."""
    return TORCH_DEVICES.get(choice, choice)


def is_cuda_out_of_memory(exc: BaseException) -> bool:
    import torch

    out_of_memory = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, out_of_memory) or (isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc))


def run_with_cpu_fallback(run, choice: str, report) -> tuple:
    """``run(device_name) -> (result, device_used)``; on CUDA out-of-memory, run again on the CPU.

    Returns ``(result, device_used, warnings)``.
    """
    try:
        result, used = run(torch_device_name(choice))
        return result, used, []
    except Exception as exc:
        if not is_cuda_out_of_memory(exc):
            raise
    import torch

    torch.cuda.empty_cache()
    report(0.05, "The GPU ran out of memory: running on the CPU")
    result, used = run("cpu")
    return result, used, [CUDA_OUT_OF_MEMORY_WARNING]
