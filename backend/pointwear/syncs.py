"""A counter of host synchronisations (the waits a GPU would make the Python side do), usable
on the CPU. Standalone (torch only), so a benchmark can count an older revision's code too."""
from __future__ import annotations

import os
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

_ALWAYS = {"item", "tolist", "numpy", "__array__", "__bool__", "__int__", "__float__", "__index__", "nonzero",
           "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "cpu", "equal",
           "allclose", "any_", "is_nonzero"}


class HostSyncCounter(TorchFunctionMode):
    """Counts the torch calls that make the host wait for the device on CUDA: values read into
    Python (.item(), .tolist(), bool(), int(), float(), .numpy()), copies to the CPU (.cpu(),
    .to("cpu"); not .to(device) with a device taken from the inputs, which is the CPU here), and ops whose output size depends on values (nonzero, boolean-mask indexing,
    unique, bincount, repeat_interleave without output_size); not torch.optim's reads of its
    host-side step counters. Works on CPU tensors, so a test
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
        if _syncs(name, args, kwargs) and not _in_optimizer(sys._getframe(1)):
            self.counts[name] += 1
        return func(*args, **kwargs)


def _in_optimizer(frame) -> bool:
    """torch.optim reads its step counters with .item(); they stay on the host by design (no
    device wait on a GPU), so those calls are not counted."""
    return frame is not None and f"{os.sep}torch{os.sep}optim{os.sep}" in frame.f_code.co_filename


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
