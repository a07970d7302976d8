"""What the outfit fit and its outputs share, one level below both (no import cycle between
fit/outfit_fit.py and fit/outputs.py): options, per-stage state, the frame split, and the view of
a fitter that the output writers read (`FitterView`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..drape.base import DrapeModel
from ..errors import InputError

Progress = Callable[[str, int, int], None]
Preview = Callable[[np.ndarray, str, int], None]   # (H, W, 3) uint8 image, stage, step


class FitCancelled(Exception):
    """Raised when `should_stop` turns true; the last checkpoint is kept for a resume."""


@dataclass
class FitOptions:
    drape: str = "parametric"          # "parametric" | "neural" | a neural checkpoint path
    template: str | None = None        # parametric only: fix the outfit template
    frames: list[int] | None = None    # frames to fit; the rest are held out
    codes: int = 4                     # random codes per template (coarse stage)
    coarse_steps: int = 100
    fine_steps: int = 100
    refine_steps: int = 0              # free-form offsets along normals (kept if held-out improves)
    score_every: int = 20
    frames_per_step: int = 4           # frames sampled per step (all when fewer)
    lr: float | None = None            # default: 0.1 (neural, as the paper) / 0.05 (parametric)
    coverage_weight: float = 0.002     # soft IoU splats reach past the points: strong weights shrink the fit
    prior_weight: float = 1e-5        # the Chamfer is ~5e-3 at a good fit: keep the prior a tie-breaker
    visibility_threshold: float = 0.02
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 20
    threads: int = 1                   # CPU threads for torch (0: torch's default); see below


@dataclass
class Candidate:
    """One drape model (a template) and the codes optimised for it."""
    drape: DrapeModel
    codes: torch.Tensor
    optimizer: torch.optim.Optimizer | None = None


@dataclass
class Best:
    score: float = float("inf")
    drape_id: str = ""
    code: torch.Tensor | None = None
    stage: str = ""


@dataclass
class FitState:
    stage: str = "coarse"
    step: int = 0
    best: Best = field(default_factory=Best)
    history: list = field(default_factory=list)


def split_frames(n: int, frames: list[int] | None) -> tuple[list[int], list[int]]:
    """Training frames and held-out frames. Default: every fourth frame is held out."""
    if frames is not None:
        bad = [f for f in frames if not 0 <= f < n]
        if bad:
            raise InputError(f"frames {bad} out of range 0..{n - 1}", field="--frames")
        train = sorted(set(frames))
    elif n >= 4:
        train = [i for i in range(n) if i % 4 != 3]
    else:
        train = list(range(n))
    held = [i for i in range(n) if i not in train]
    return train, held


class FitterView(Protocol):
    """The parts of an OutfitFitter that fit/outputs.py reads."""
    options: FitOptions
    out: Path
    subject: Any                       # data.subject.Subject
    body: Any                          # body.BodyModel
    betas: torch.Tensor                # (1, S)
    device: torch.device
    drapes: dict[str, DrapeModel]
    snapshots: list
    train_ids: list[int]
    held_ids: list[int]

