"""One place that picks the compute device: CUDA when present, else the CPU (same ops).
Everything else receives the device (or takes it from its inputs). Also: the clean errors of a
device that is not there or runs out of memory, and a counter of host synchronisations (the
waits a GPU would make the Python side do), usable on the CPU."""
from __future__ import annotations

import importlib
import sys
import threading

import torch

from .errors import PointwearError
from .link import protocol as P
from .syncs import HostSyncCounter  # noqa: F401 - callers take it from here

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(PointwearError):
    """A device that cannot be used (asked-for CUDA without a GPU), ran out of memory, or a
    model on another device; `code` names the case for the CLI (exit 2) and the server (job
    ERROR): protocol's E_NO_CUDA, E_OUT_OF_MEMORY, E_WRONG_DEVICE; `hint` what to change."""

    def __init__(self, message: str, code: str, hint: str = "") -> None:
        super().__init__(message, hint=hint or None)
        self.code = code


OOM_HINT = ("use fewer frames per step (FitOptions.frames_per_step) or a smaller image size, or device cpu; "
            "a fit's checkpoint is kept: run it again to resume")


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve "auto" | "cpu" | "cuda[:n]" (or None = auto) to a usable device; CUDA without a
    GPU is a DeviceError (code "no_cuda")."""
    pref = "auto" if preference is None else str(preference)
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got {pref!r}", P.E_BAD_PARAMS) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {pref!r} was asked for but this machine has no usable CUDA "
                          "(torch.cuda.is_available() is False)", P.E_NO_CUDA, "use device cpu or auto")
    return dev


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA (or CPU allocator) out-of-memory errors."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def device_error(exc: BaseException) -> DeviceError | None:
    """The DeviceError an exception of a run stands for (out of memory, tensors on two
    devices), or None when it is something else."""
    if isinstance(exc, DeviceError):
        return exc
    if is_out_of_memory(exc):
        return DeviceError(f"out of memory: {str(exc).splitlines()[0][:300]}", P.E_OUT_OF_MEMORY, OOM_HINT)
    text = str(exc)
    if isinstance(exc, RuntimeError) and "Expected all tensors to be on the same device" in text:
        return DeviceError(f"a model or tensor is on the wrong device: {text.splitlines()[0][:300]}",
                           P.E_WRONG_DEVICE, "load every model with the same device")
    return None


def release_memory() -> None:
    """Give cached CUDA memory back after a job (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def scaled(cpu_value: int, device: torch.device, cuda_value: int) -> int:
    """A per-step item count: the CPU default on the CPU, the larger CUDA one on a GPU."""
    return cuda_value if torch.device(device).type == "cuda" else cpu_value



_OPTIM_IMPORT: threading.Thread | None = None


def preload_optimizer_imports() -> None:
    """Import torch._dynamo in a background thread. torch.optim's first optimizer imports it (its
    param groups are wrapped in dynamo's disable), ~3 s of Python on this CPU, which would stall
    the first step; started when a fit begins reading its frames, it overlaps that I/O. Idempotent;
    the import lock makes an optimizer made meanwhile wait for the same import, never repeat it."""
    global _OPTIM_IMPORT
    if _OPTIM_IMPORT is None and "torch._dynamo" not in sys.modules:
        _OPTIM_IMPORT = threading.Thread(target=importlib.import_module, args=("torch._dynamo",),
                                         name="pointwear-preload-dynamo", daemon=True)
        _OPTIM_IMPORT.start()
