"""One interface for every drape model: an outfit code and a body shape give clothing points in
the body's rest pose (T-pose, SMPL space) with skin weights; the body's skinning then poses them.
Differentiable in the code and batched, so fitting can optimise several codes at once."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from ..body import BodyModel


@dataclass
class DrapeOutput:
    points: torch.Tensor    # (B, P, 3) rest-pose clothing points for the given betas
    weights: torch.Tensor   # (P, 24) or (B, P, 24) skin weights, rows sum to 1


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
