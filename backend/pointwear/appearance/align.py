"""Per-frame non-rigid alignment of the outfit's points to the training frames.

The fitted geometry is about 1 cm (1-1.5 px at 256 px) off the true cloth, differently in every
frame. Descriptors shared by all frames then see a fine texture (2-3 px checks) at shifting
places and the network learns a blur. `FrameAlignment` gives each *training* frame a smooth,
low-dimensional 2D offset field in image pixels (at the training size): a (g, g) grid of (du, dv)
nodes over the whole image, bilinearly interpolated at each point's projection. It is learned
jointly with the descriptors and the network (Adam, zero start) with an L2 penalty on the nodes,
so a frame moves its points only as far as its pixels ask for.

The offset is applied in 3D so the splat (and its gradients) stay as they are: a point p at depth
z moves to p + z K^-1 (du, dv, 0), which projects exactly (du, dv) pixels away from p's
projection under K. Held-out frames and `pointwear render` never use it: the neural render needs
no alignment, the field only keeps misregistered training pixels from teaching a blur.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..render.rasterizer import project

__all__ = ["FrameAlignment"]


class FrameAlignment(nn.Module):
    """(frames, 2, grid, grid) offset nodes in pixels, zero at the start."""

    def __init__(self, frames: int, grid: int) -> None:
        super().__init__()
        if int(frames) < 1 or int(grid) < 2:
            raise ValueError(f"FrameAlignment: need frames >= 1 and grid >= 2, got {frames}, {grid}")
        self.nodes = nn.Parameter(torch.zeros(int(frames), 2, int(grid), int(grid)))

    def offsets(self, idx: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, P, 2) pixel offsets of frames idx (B,) at projections uv (B, P, 2) in (h, w) images."""
        h, w = size
        grid = torch.stack([uv[..., 0] / max(w - 1, 1), uv[..., 1] / max(h - 1, 1)], -1) * 2 - 1
        grid = torch.nan_to_num(grid, nan=0.0, posinf=1.0, neginf=-1.0)   # points at z = 0: any node
        nodes = self.nodes[idx].to(uv.dtype)
        out = F.grid_sample(nodes, grid[:, None], mode="bilinear", padding_mode="border", align_corners=True)
        return out[:, :, 0].transpose(1, 2)

    def forward(self, idx: Tensor, points: Tensor, K: Tensor, size: tuple[int, int]) -> Tensor:
        """points (B, P, 3) camera space of frames idx (B,), intrinsics K (B, 3, 3) of the (h, w)
        images -> the points moved so that each projects by its frame's offset (B, P, 3)."""
        uv, _ = project(points, K)
        d = self.offsets(idx, uv.detach(), size)                         # (B, P, 2)
        d3 = torch.cat([d, torch.zeros_like(d[..., :1])], -1)           # (B, P, 3)
        shift = torch.einsum("bij,bpj->bpi", torch.linalg.inv(K), d3)  # K^-1 (du, dv, 0)
        return points + points[..., 2:3] * shift

    def penalty(self, idx: Tensor) -> Tensor:
        """Mean squared node offset (px^2) of frames idx: the L2 regulariser."""
        return self.nodes[idx].square().mean()
