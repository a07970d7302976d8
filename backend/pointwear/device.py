"""One place that picks the compute device: CUDA when present, else the CPU (same ops)."""
from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """Resolve "auto" | "cpu" | "cuda" to a usable device; "cuda" without a GPU is an error."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(preference)
