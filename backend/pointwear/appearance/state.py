"""What the appearance fit and its outputs share, one level below both (no import cycle between
appearance/fit.py and appearance/outputs.py): the training state and the view of a fitter that the
output writers read (`FitterView`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from torch import Tensor

@dataclass
class TrainState:
    epoch: int = 0                     # completed epochs
    step: int = 0                      # optimiser steps so far
    pos: int = 0                       # steps done in the current epoch
    order: Tensor | None = None        # the current epoch's frame order
    elapsed: float = 0.0               # training seconds so far (over resumes)
    history: list = field(default_factory=list)
    resumed_from: dict | None = None
    losses: list = field(default_factory=list)   # this epoch's step losses


class FitterView(Protocol):
    """The parts of an AppearanceFitter that appearance/outputs.py reads."""
    options: Any                       # fit.AppearanceOptions
    out: Path
    outfit_dir: Path
    outfit: dict
    subject: Any                       # data.subject.Subject
    model: Any                         # model.AppearanceModel
    align: Any                         # align.FrameAlignment of the training frames, or None
    train: Any                         # frames.AppearanceFrames
    held: Any
    train_ids: list[int]
    held_ids: list[int]
    crop: Any
    progress: Callable[[str, int, int], None]
    should_stop: Callable[[], bool]
    mask_aligned: Callable[[Any], Any]  # frames -> the frames with points aligned to their masks
    time_aligned: Callable[[Any], Any]  # frames -> the frames with the training alignment interpolated in time

