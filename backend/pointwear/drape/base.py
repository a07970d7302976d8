"""One interface for every drape model: an outfit code and a body shape give clothing points in
the body's rest pose (T-pose, SMPL space) with skin weights; the body's skinning then poses them.
Differentiable in the code and batched, so fitting can optimise several codes at once."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..body import BodyModel


@dataclass
class DrapeOutput:
    points: torch.Tensor    # (B, P, 3) rest-pose clothing points for the given betas
    weights: torch.Tensor   # (P, 24) or (B, P, 24) skin weights, rows sum to 1
    presence: torch.Tensor | None = None   # (B, P) 0..1 how much each point exists (None: all)


def present_points(out: DrapeOutput, item: int = 0) -> torch.Tensor | None:
    """(P,) bool: the points of item `item` whose piece exists (presence >= 0.5), or None when
    every point does. Results keep only these, so a sleeveless fit has no sleeve stubs; the mask
    depends on the code alone, so re-draping the code for another body keeps the same points."""
    if out.presence is None:
        return None
    keep = out.presence[item] >= 0.5
    return None if bool(keep.all()) else keep


def keep_faces(faces: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(F', 3) the faces whose three vertices are all kept, renumbered to the kept vertices."""
    index = np.cumsum(keep) - 1
    whole = keep[faces].all(1)
    return index[faces[whole]].astype(faces.dtype)


class DrapeModel(torch.nn.Module):
    """Subclasses set `drape_id` and `code_dim` and implement `random_codes` and `forward`."""

    drape_id: str = "base"
    code_dim: int = 0

    def __init__(self, body: BodyModel) -> None:
        super().__init__()
        self.body = body

    @abstractmethod
    def random_codes(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, code_dim) starting codes for fitting, drawn from the model's prior."""

    def constrain(self, code: torch.Tensor) -> torch.Tensor:
        """Map a free optimisation variable onto the valid code space (e.g. the unit ball)."""
        return code

    @abstractmethod
    def forward(self, code: torch.Tensor, betas: torch.Tensor, refresh_weights: bool = True) -> DrapeOutput:
        """Rest-pose clothing points for (B, code_dim) codes on (B or 1, S) body shapes.
        `refresh_weights=False` lets a model whose skin weights depend on the code reuse the
        last ones (fitting moves points little between steps); others ignore it."""

    def posed(self, code: torch.Tensor, betas: torch.Tensor, global_orient: torch.Tensor,
              body_pose: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """(B, P, 3) clothing points posed like the body (B codes/frames broadcast together)."""
        out = self(code, betas)
        return self.body.pose_points(out.points, out.weights, betas, global_orient, body_pose, transl)
