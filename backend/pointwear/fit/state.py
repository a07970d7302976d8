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
from .refine import RefineOptions
from .selection import CandidateSpec

Progress = Callable[[str, int, int], None]
Preview = Callable[[np.ndarray, str, int], None]   # (H, W, 3) uint8 image, stage, step


class FitCancelled(Exception):
    """Raised when `should_stop` turns true; the last checkpoint is kept for a resume."""


@dataclass
class FitOptions:
    drape: str = "parametric"          # "parametric" | "neural" | a neural checkpoint path
    template: str | None = None        # parametric only: fix the garments ("tshirt+skirt", families.py)
    labels: str = "auto"               # "auto": fit each garment to its own label mask when labels/ exists; "off"
    outfits: tuple[str, ...] | None = None   # unlabelled selection among these outfits only (None: all)
    prune_after: int = 12              # coarse step at which the outfit candidates are pruned ...
    keep: int = 3                      # ... to this many per label (or overall without labels)
    select_codes: int = 2              # random codes per candidate while more than `keep` compete
    garment_penalty: float = 0.04      # selection: score x (1 + this per garment beyond one per mask) ...
    layer_penalty: float = 0.35        # ... with labels: a jacket over a top on one label's mask must fit it this
                                       # much better than one garment (clothsim training single tops vs layered:
                                       # 1.14-1.32 against 1.41-1.97; docs/fitting.md "Choosing the garments")
    drop_penalty: float = 0.12         # after the fine stage, with both fitted: a jacket over a top must fit its label
                                       # this much better than the jacket alone (clothsim training: jacket_4 worn
                                       # alone 1.07, jackets over tops 1.17-1.77; docs/fitting.md "Choosing the garments")
    hidden_top: str = "tshirt"         # a plain top whose sleeves a jacket hides in every frame is this family
                                       # ("" lets the masks decide; fit/selection.py hidden_top)
    hidden_margin: float = 0.03        # ... when its sleeve ends within this share of the arm past the jacket's
    frames: list[int] | None = None    # frames to fit; the rest are held out
    codes: int = 4                     # random codes per template (coarse stage)
    coarse_steps: int = 100
    coarse_size: int = 256             # the coarse stage's images: long side at most this many px (0: full size);
                                       # its many candidates are compared on smaller masks, the fine stage at full size
    select_size: int = 128             # ... and, without labels, until the prune while more candidates compete
                                       # than are kept, at most this many px (0: as the coarse stage). Not with
                                       # labels: 128 px lost a T-shirt's sleeves on a labelled 512 px subject
                                       # (docs/fitting.md "Procedure")
    fine_steps: int = 100
    cut_grid: tuple[float, ...] = (-4.0, -1.5, 0.0, 1.5, 3.0)   # logits tried for each cut parameter (families.
                                       # CUT_PARAMS, every combination within a garment) at the fine stage's start;
                                       # the training loss picks the start (empty: the middle of the range)
    refine_steps: int = 200            # free-form offsets along normals (kept if held-out improves; 0: off). 100
                                       # until 2026-12-06: walks whose held-out score still fell at 100 (docs/fitting.md)
    refine: RefineOptions = field(default_factory=RefineOptions)
    score_every: int = 20
    score_frames: str = "all"          # codes and garments compared on "all" frames or the "heldout" ones
                                       # (the refinement is always judged on the held-out frames)
    frames_per_step: int = 0           # frames sampled per step (all when fewer); 0: 4 on the CPU, 8 on CUDA
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
    """One drape model (an outfit) and the codes optimised for it; `spec` says which mask each
    of its garments is scored against (None: the whole clothing mask)."""
    drape: DrapeModel
    codes: torch.Tensor
    optimizer: torch.optim.Optimizer | None = None
    spec: CandidateSpec | None = None

    @property
    def key(self) -> str:
        return self.spec.key if self.spec is not None else self.drape.drape_id

    @property
    def targets(self) -> tuple[int, ...] | None:
        return None if self.spec is None else self.spec.targets

    @property
    def extra_garments(self) -> int:
        """Garments beyond the first per mask (the complexity penalised: a jacket over a shirt
        must explain its mask better than the jacket alone)."""
        if self.spec is None:
            return 0
        return len(self.spec.targets) - len(set(self.spec.targets))


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
    cand_best: dict = field(default_factory=dict)   # candidate key -> its best held-out score
    inferred: list = field(default_factory=list)    # garments set by a default, not by the masks (result.json)


def mask_group(key: str) -> str:
    """The masks a candidate key is scored on ("" = the clothing mask, "1" = label 1, ...)."""
    return key.partition("@")[2]


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
    final_targets: tuple[int, ...] | None   # the mask of each garment of the result (selection.UNION: all)

