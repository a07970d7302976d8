"""One place that picks the compute device: CUDA when present, else the CPU (same ops).
Everything else receives the device (or takes it from its inputs). Also: the clean errors of a
device that is not there or runs out of memory, and a counter of host synchronisations (the
waits a GPU would make the Python side do), usable on the CPU."""
from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """A device that cannot be used (asked-for CUDA without a GPU) or ran out of memory;
    `code` names the case for the CLI and the server ("no_cuda", "out_of_memory",
    "wrong_device"), `hint` what to change."""

    def __init__(self, message: str, code: str, hint: str = "") -> None:
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.code, self.hint = code, hint


OOM_HINT = "use fewer frames per step (--frames-per-step) or a smaller image size, or --device cpu"


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """Resolve "auto" | "cpu" | "cuda[:n]" (or None = auto) to a usable device; CUDA without a
    GPU is a DeviceError (code "no_cuda")."""
    pref = "auto" if preference is None else str(preference)
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:
        raise DeviceError(f"device must be one of {DEVICE_CHOICES}, got {pref!r}", "bad_device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {pref!r} was asked for but this machine has no usable CUDA "
                          "(torch.cuda.is_available() is False)", "no_cuda", "use --device cpu or auto")
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
        return DeviceError(f"out of memory: {str(exc).splitlines()[0][:300]}", "out_of_memory", OOM_HINT)
    text = str(exc)
    if isinstance(exc, RuntimeError) and "Expected all tensors to be on the same device" in text:
        return DeviceError(f"a model or tensor is on the wrong device: {text.splitlines()[0][:300]}",
                           "wrong_device", "load every model with the same --device")
    return None


def release_memory() -> None:
    """Give cached CUDA memory back after a job (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def scaled(cpu_value: int, device: torch.device, cuda_value: int) -> int:
    """A per-step item count: the CPU default on the CPU, the larger CUDA one on a GPU."""
    return cuda_value if torch.device(device).type == "cuda" else cpu_value


# -- host synchronisations ------------------------------------------------------------------------
_ALWAYS = {"item", "tolist", "numpy", "__array__", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "cpu", "equal",
           "allclose", "any_", "is_nonzero"}


class HostSyncCounter(TorchFunctionMode):
    """Counts the torch calls that make the host wait for the device on CUDA: values read into
    Python (.item(), .tolist(), bool(), int(), float(), .numpy()), copies to the CPU (.cpu(),
    .to("cpu"); not .to(device) with a device taken from the inputs, which is the CPU here), and ops whose output size depends on values (nonzero, boolean-mask indexing,
    unique, bincount, repeat_interleave without output_size). Works on CPU tensors, so a test
    on a machine without a GPU can hold a hot loop to a budget.

        with HostSyncCounter() as syncs:
            step()
        assert syncs.total <= 10, syncs.counts
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if _syncs(name, args, kwargs):
            self.counts[name] += 1
        return func(*args, **kwargs)


def _syncs(name: str, args: tuple, kwargs: dict) -> bool:
    if name in _ALWAYS:
        return True
    if name == "to":   # a literal "cpu" target is a copy to the host; a device taken from inputs is not
        target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
        return isinstance(target, str) and torch.device(target).type == "cpu"
    if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):
        index = args[1] if len(args) > 1 else ()
        index = index if isinstance(index, (tuple, list)) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if name == "repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
    return False
