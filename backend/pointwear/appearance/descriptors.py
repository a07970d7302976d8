"""Learned neural descriptors, one per outfit point (Point-Based Clothing's "neural texture").

Row i belongs to point i of the outfit's canonical point cloud, in the same order as
``points`` in outfit.npz, so the descriptors move with their points through draping and
skinning. They are trained together with the rendering network (the paper: Adam, lr 1e-2 for
the descriptors, 1e-4 for the network).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import InputError

__all__ = ["PointDescriptors"]


class PointDescriptors(nn.Module):
    """A (num_points, dim) parameter; ``forward()`` returns it as (1, P, dim) for `splat`.

    init_std: the initial values are drawn from N(0, init_std^2). The paper's code uses
    ``torch.randn`` (std 1); NPBG initialised its point textures to zeros or small uniform
    noise. std 1 makes the splatted input non-degenerate from the first step.
    """

    def __init__(self, num_points: int, dim: int = 16, *, init_std: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if int(num_points) < 1 or int(dim) < 1:
            raise ValueError(f"PointDescriptors: num_points and dim must be >= 1, got "
                             f"{num_points}, {dim}")
        init = torch.randn(int(num_points), int(dim), generator=generator) * float(init_std)
        self.descriptors = nn.Parameter(init)

    @property
    def num_points(self) -> int:
        return self.descriptors.shape[0]

    @property
    def dim(self) -> int:
        return self.descriptors.shape[1]

    def forward(self) -> Tensor:
        """(1, P, dim): shared by every item of a batch."""
        return self.descriptors.unsqueeze(0)

    def check(self, num_points: int, dim: int | None = None,
              file: str | Path | None = None, field: str = "descriptors") -> None:
        """Raise InputError (naming ``file`` and ``field``) unless these descriptors fit an
        outfit of ``num_points`` points (and ``dim`` channels when given).

        Use it after loading a checkpoint: "checkpoint has 16-D descriptors for 8192 points,
        the outfit has 8000".
        """
        n, d = self.num_points, self.dim
        if n == int(num_points) and (dim is None or d == int(dim)):
            return
        want = f"{int(dim)}-D descriptors for {int(num_points)} points" if dim is not None \
            else f"{int(num_points)} points"
        have_outfit = (f"the outfit has {int(num_points)}" if dim is None or d == int(dim)
                       else f"the outfit needs {want}")
        raise InputError(
            f"checkpoint has {d}-D descriptors for {n} points, {have_outfit}",
            file=file, field=field,
            hint="descriptors belong to one outfit's points (same count and order as "
                 "outfit.npz 'points'); refit the appearance for this outfit")

    @classmethod
    def from_tensor(cls, values: Tensor, *, file: str | Path | None = None,
                    field: str = "descriptors") -> "PointDescriptors":
        """Wrap stored (P, dim) values (e.g. outfit.npz 'descriptors' or a checkpoint's)."""
        values = torch.as_tensor(values)
        if values.dim() != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise InputError(f"descriptors must be a (P, dim) array, got shape "
                             f"{tuple(values.shape)}", file=file, field=field)
        if not values.is_floating_point() or not torch.isfinite(values).all():
            raise InputError("descriptors must be finite floating-point values",
                             file=file, field=field)
        out = cls(values.shape[0], values.shape[1], init_std=0.0)
        with torch.no_grad():
            out.descriptors.copy_(values.to(out.descriptors.dtype))
        return out
