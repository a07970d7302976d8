"""Per-point colours baked from a fitted appearance, and the baked-colour baseline renderer.

Baking: the network renders each training frame; every point that is visible there (not hidden
by the body, the front-most clothing at its pixel, inside the predicted mask) takes the rendered
RGB at its projected pixel (bilinear); a point's colour is the mean over the frames that saw it.
Points no frame saw take the colour of their nearest seen neighbour in the rest pose
(scipy cKDTree). Colours are sRGB in 0..1, like the frames.

Baseline: the same points with those colours through the same splatter (radius, k, visibility),
composited over the background by the splat's coverage -- no network."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from ..render.rasterizer import project
from ..render.splat import splat
from .model import AppearanceModel

__all__ = ["bake_colors", "baseline_render", "front_most"]

FRONT_TOLERANCE_M = 0.02   # a point within 2 cm of the front clothing surface at its pixel is "on" it


@torch.no_grad()
def front_most(points: Tensor, visible: Tensor, K: Tensor, size: tuple[int, int], radius_px: float,
               k: int, tolerance: float = FRONT_TOLERANCE_M) -> Tensor:
    """(B, P) bool: visible points at most `tolerance` m behind the splatted clothing depth at their
    pixel (clothing hiding other clothing, e.g. a far sleeve behind the torso, is left out)."""
    z = points[..., 2:]
    s = splat(points, z, K, size, radius_px=radius_px, k=k, visible=visible)
    depth = s[:, :1] / s[:, 1:].clamp(min=1e-6)                       # (B,1,H,W) coverage-normalised
    depth = torch.where(s[:, 1:] > 1e-3, depth, torch.full_like(depth, float("inf")))
    sampled = _sample(depth, points, K, size, mode="nearest")[..., 0]   # (B,P)
    return visible & (points[..., 2] <= sampled + tolerance)


def _sample(image: Tensor, points: Tensor, K: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """(B, P, C): image (B,C,H,W) at the points' projections (pixel centres at integers);
    points projecting outside read +inf for depth maps / 0 for colours via padding."""
    H, W = size
    uv, _ = project(points, K)
    grid = torch.stack([(2 * uv[..., 0] + 1) / W - 1, (2 * uv[..., 1] + 1) / H - 1], -1)[:, :, None]  # (B,P,1,2)
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0)
    finite = torch.isfinite(image)
    safe = torch.where(finite, image, torch.zeros_like(image))
    out = F.grid_sample(safe, grid, mode=mode, padding_mode="zeros", align_corners=False)[..., 0]
    if not bool(finite.all()):
        bad = F.grid_sample((~finite).float(), grid, mode="nearest", padding_mode="border", align_corners=False)[..., 0]
        out = torch.where(bad > 0, torch.full_like(out, float("inf")), out)
    return out.permute(0, 2, 1)


@torch.no_grad()
def bake_colors(model: AppearanceModel, points: Tensor, visible: Tensor, K: Tensor, size: tuple[int, int],
                rest_points: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Colours (P, 3) float32 in 0..1 and how many frames saw each point (P,) int, from the
    network's renders of the frames (points (F,P,3), visible (F,P), K (F,3,3), size (h, w))."""
    c = model.config
    P = points.shape[1]
    total = torch.zeros(P, 3, dtype=torch.float64, device=points.device)
    count = torch.zeros(P, dtype=torch.float64, device=points.device)
    # Without the predicted-mask test: used only when the network's mask covers no point at all
    # (a barely trained network), so a short fit still bakes its colours instead of flat grey.
    total_any, count_any = torch.zeros_like(total), torch.zeros_like(count)
    H, W = size
    for s in range(0, points.shape[0], chunk):
        pts, vis, k = points[s:s + chunk], visible[s:s + chunk], K[s:s + chunk]
        rgb, mask = model.render(pts, vis, k, size)
        front = front_most(pts, vis, k, size, c.radius_px, c.k)
        uv, z = project(pts, k)
        inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
        on = _sample(mask, pts, k, size, mode="nearest")[..., 0] > 0.5
        use = front & inside & on                                            # (B,P)
        col = _sample(rgb, pts, k, size)                                     # (B,P,3) in [-1,1]
        total += (col.double() * use[..., None]).sum(0)
        count += use.double().sum(0)
        seen_any = front & inside
        total_any += (col.double() * seen_any[..., None]).sum(0)
        count_any += seen_any.double().sum(0)
    if not bool((count > 0).any()):
        total, count = total_any, count_any
    seen = count > 0
    colors = np.full((P, 3), 0.5, np.float32)
    if bool(seen.any()):
        mean = (total[seen] / count[seen, None]).cpu().numpy()
        colors[seen.cpu().numpy()] = ((mean + 1.0) / 2.0).clip(0, 1)
        unseen = (~seen).cpu().numpy()
        if unseen.any():
            seen_np = seen.cpu().numpy()
            _, idx = cKDTree(rest_points[seen_np]).query(rest_points[unseen], k=1)
            colors[unseen] = colors[seen_np][idx]
    return colors, count.round().long().cpu().numpy()


@torch.no_grad()
def baseline_render(colors: np.ndarray | Tensor, points: Tensor, visible: Tensor, K: Tensor,
                    size: tuple[int, int], radius_px: float, k: int) -> tuple[Tensor, Tensor]:
    """The baked colours splatted: premultiplied RGB (B,3,H,W) in [-1,1]-space and coverage
    (B,1,H,W). Composite over a background bg as ``rgb + (1 - coverage) * bg``."""
    col = torch.as_tensor(colors, dtype=points.dtype, device=points.device) * 2.0 - 1.0
    s = splat(points, col[None], K, size, radius_px=radius_px, k=k, visible=visible)
    return s[:, :3], s[:, 3:]
