"""Per-frame non-rigid alignment of the outfit's points to the training frames.

The fitted geometry is about 1 cm (1-1.5 px at 256 px) off the true cloth, differently in every
frame. Descriptors shared by all frames then see a fine texture (2-3 px checks) at shifting
places and the network learns a blur. `FrameAlignment` gives each *training* frame a smooth,
low-dimensional 2D offset field in image pixels (at the training size), learned jointly with the
descriptors and the network (Adam, zero start) with an L2 penalty on the nodes, so a frame moves
its points only as far as its pixels ask for. The field lives either

- in the image (`rest=None`): a (g, g) grid of (du, dv) nodes over the whole image, bilinearly
  interpolated at each point's projection; or
- on the cloth (`rest` = the outfit's rest points (P, 3)): a (g, g, g) grid of (du, dv) nodes over
  the rest points' bounding box, trilinearly interpolated at each point's *rest* position, so a
  node follows the same piece of cloth through every pose.

The offset is applied in 3D so the splat (and its gradients) stay as they are: a point p at depth
z moves to p + z K^-1 (du, dv, 0), which projects exactly (du, dv) pixels away from p's
projection under K. Frames the field was not learned on (held-out frames) can take the field
interpolated in time between their nearest training frames (`at_times`): the misregistration
of the fitted geometry changes smoothly with the motion, and only the frame's index is used.
`pointwear render` (new motions) never uses it.
"""
from __future__ import annotations

import bisect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..render.rasterizer import project

__all__ = ["FrameAlignment", "time_weights", "image_offsets", "moved_by_pixels"]


def image_offsets(nodes: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, P, 2) offsets at projections uv (B, P, 2) in (h, w) images of (B, 2, g, g) nodes spread
    over the image corner to corner, bilinear between them."""
    h, w = size
    grid = torch.stack([uv[..., 0] / max(w - 1, 1), uv[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    grid = torch.nan_to_num(grid, nan=0.0, posinf=1.0, neginf=-1.0)   # points at z = 0: any node
    out = F.grid_sample(nodes.to(uv.dtype), grid[:, None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, 0].transpose(1, 2)


def moved_by_pixels(points: Tensor, K: Tensor, d: Tensor) -> Tensor:
    """points (B, P, 3) in camera space moved across the view so that each projects by its
    offset d (B, P, 2) px under K (B, 3, 3): p + z K^-1 (du, dv, 0). (B, P, 3)"""
    d3 = torch.cat([d, torch.zeros_like(d[..., :1])], -1)
    shift = torch.einsum("bij,bpj->bpi", torch.linalg.inv(K), d3)
    return points + points[..., 2:3] * shift


def time_weights(known: list[int], ids: list[int]) -> tuple[list[int], list[int], list[float]]:
    """For each frame index in ids, the positions (lo, hi) in the sorted `known` indices of its
    nearest known frames before and after it and the weight of hi (linear in the frame index);
    a frame before the first or after the last known one takes that one (weight 0)."""
    if not known:
        raise ValueError("time_weights: no known frames")
    order = sorted(range(len(known)), key=lambda k: known[k])
    keys = [known[k] for k in order]
    lo, hi, w = [], [], []
    for t in ids:
        j = bisect.bisect_left(keys, t)
        if j < len(keys) and keys[j] == t:
            a = b = j
        else:
            a, b = max(j - 1, 0), min(j, len(keys) - 1)
        lo.append(order[a])
        hi.append(order[b])
        w.append(0.0 if keys[a] == keys[b] else (t - keys[a]) / (keys[b] - keys[a]))
    return lo, hi, w


class FrameAlignment(nn.Module):
    """(frames, 2, grid, grid) offset nodes in pixels over the image, or (frames, 2, grid, grid,
    grid) over the rest points' box when `rest` (P, 3) is given; zero at the start."""

    def __init__(self, frames: int, grid: int, rest: Tensor | None = None) -> None:
        super().__init__()
        if int(frames) < 1 or int(grid) < 2:
            raise ValueError(f"FrameAlignment: need frames >= 1 and grid >= 2, got {frames}, {grid}")
        dims = (int(grid),) * (2 if rest is None else 3)
        self.nodes = nn.Parameter(torch.zeros(int(frames), 2, *dims))
        self.register_buffer("rest_grid", None)     # (P, 3) rest positions in [-1, 1] (cloth field)
        if rest is not None:
            lo, hi = rest.amin(0), rest.amax(0)
            self.rest_grid = ((rest - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1).float()

    @property
    def canonical(self) -> bool:
        return self.rest_grid is not None

    def offsets(self, idx: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, P, 2) pixel offsets of frames idx (B,) for points projecting to uv (B, P, 2) in
        (h, w) images (image field) or at their rest positions (cloth field; uv then unused)."""
        nodes = self.nodes[idx].to(uv.dtype)
        if not self.canonical:
            return image_offsets(nodes, uv, size)
        grid = self.rest_grid.to(uv.dtype)[None, :, None, None].expand(idx.numel(), -1, -1, -1, -1)
        out = F.grid_sample(nodes, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[:, :, :, 0, 0].transpose(1, 2)

    def forward(self, idx: Tensor, points: Tensor, K: Tensor, size: tuple[int, int]) -> Tensor:
        """points (B, P, 3) camera space of frames idx (B,), intrinsics K (B, 3, 3) of the (h, w)
        images -> the points moved so that each projects by its frame's offset (B, P, 3)."""
        uv, _ = project(points, K)
        return moved_by_pixels(points, K, self.offsets(idx, uv.detach(), size))

    def penalty(self, idx: Tensor) -> Tensor:
        """Mean squared node offset (px^2) of frames idx: the L2 regulariser."""
        return self.nodes[idx].square().mean()

    @torch.no_grad()
    def at_times(self, known: list[int], ids: list[int]) -> "FrameAlignment":
        """A new alignment of the frames `ids` (subject frame indices): each frame's nodes
        interpolated linearly in the frame index between those of its nearest frames among
        `known` (the frame indices of this alignment's frames, in its order)."""
        if len(known) != self.nodes.shape[0]:
            raise ValueError(f"FrameAlignment.at_times: {len(known)} frame indices for {self.nodes.shape[0]} frames")
        lo, hi, w = time_weights(list(known), list(ids))
        dev = self.nodes.device
        w = torch.tensor(w, device=dev, dtype=self.nodes.dtype).view(-1, *([1] * (self.nodes.dim() - 1)))
        out = FrameAlignment(len(ids), self.nodes.shape[-1]).to(dev)
        out.nodes = nn.Parameter(torch.lerp(self.nodes[lo], self.nodes[hi], w), requires_grad=False)
        out.rest_grid = self.rest_grid
        return out
