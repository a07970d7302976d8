"""Measurements for result.json and evaluation (no gradients): mask IoU of splatted points and
of a rasterised mesh's silhouette, 2D Chamfer in pixels, 3D Chamfer in cm with F-score against
the truth clothing."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .losses import MaskTargets, chamfer_2d

__all__ = ["splat_mask", "mesh_mask", "mask_iou", "chamfer_2d_pixels", "chamfer_3d"]


@torch.no_grad()
def splat_mask(uv: Tensor, valid: Tensor | None, image_size: tuple[int, int],
               radius_px: float = 1.5) -> Tensor:
    """Bool mask of the pixels whose centre lies within `radius_px` of a valid point.

    uv (N,2) or (B,N,2) pixels; valid (N,)/(B,N) bool or weights (> 0) or None (all). Returns
    (H,W) or (B,H,W). The paper splats points with radius 1.5 px at 512 x 512.
    """
    single = uv.dim() == 2
    uv = uv.detach().unsqueeze(0) if single else uv.detach()
    B, N, _ = uv.shape
    H, W = (int(s) for s in image_size)
    keep = torch.isfinite(uv).all(-1)
    if valid is not None:
        keep &= (valid.reshape(B, N) > 0).to(uv.device)
    r = int(math.floor(radius_px))
    a = torch.arange(-r - 1, r + 2, device=uv.device)
    dy, dx = (t.reshape(-1) for t in torch.meshgrid(a, a, indexing="ij"))
    b, j = keep.nonzero(as_tuple=True)
    p = uv[b, j].clamp(-2.0 * (H + W), 2.0 * (H + W))                   # (K,2)
    px = p[:, :1].round() + dx                                          # (K,T)
    py = p[:, 1:].round() + dy
    near = (px - p[:, :1]).square() + (py - p[:, 1:]).square() <= radius_px * radius_px
    ok = near & (px >= 0) & (px < W) & (py >= 0) & (py < H)
    lin = b.unsqueeze(1) * (H * W) + py.long() * W + px.long()
    out = torch.zeros(B * H * W, dtype=torch.bool, device=uv.device)
    out[lin[ok]] = True
    out = out.view(B, H, W)
    return out[0] if single else out


@torch.no_grad()
def mesh_mask(vertices: Tensor, faces: Tensor | np.ndarray, K: Tensor, body_depth: Tensor,
              threshold: float = 0.02) -> Tensor:
    """(B,H,W) bool: the pixels where a mesh is seen, its nearest surface no more than
    `threshold` m behind the body's (`visibility.body_depth`, +inf off the body), as the
    points' visibility test. vertices (B,V,3) camera space; faces (F,3); K (B,3,3); body_depth
    (B,H,W). A garment's silhouette as a renderer draws it: no splat band along its outline, no
    holes between its points (the truth clothing's own mesh scores ~0.98 IoU against its
    Cycles-rendered masks, its points splatted ~0.88)."""
    from ..render.rasterizer import depth_map
    faces = torch.as_tensor(np.asarray(faces), device=vertices.device).long()
    depth = depth_map(vertices, faces, K.to(vertices.device, vertices.dtype), tuple(body_depth.shape[-2:]))
    return torch.isfinite(depth) & (depth <= body_depth.to(depth.device, depth.dtype) + threshold)


def mask_iou(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> Tensor:
    """Intersection over union of bool masks (H,W) or (B,H,W) -> scalar or (B,). Two empty
    masks agree perfectly (IoU 1)."""
    a = torch.as_tensor(a).bool()
    b = torch.as_tensor(b, device=a.device).bool()
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    inter = (a & b).flatten(-2).sum(-1).double()
    union = (a | b).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def chamfer_2d_pixels(uv: Tensor, valid: Tensor, target: MaskTargets,
                      frame_index: Tensor) -> Tensor:
    """(B,) symmetric 2D Chamfer in pixels: the mean of the two directed mean Euclidean
    distances (visible points -> nearest mask pixel, mask pixels -> nearest visible point)."""
    out = chamfer_2d(uv.detach(), valid, target, frame_index, reduction="none")
    return 0.5 * (out["points_to_mask_px"] + out["mask_to_points_px"])


def chamfer_3d(a: np.ndarray | Tensor, b: np.ndarray | Tensor, *,
               threshold: float = 0.01) -> tuple[float, float]:
    """(Chamfer in cm, F-score at `threshold` m) between point clouds a (N,3) and b (M,3), metres.

    Chamfer = mean of the two directed mean Euclidean nearest-neighbour distances, x 100.
    F-score = 2 P R / (P + R) with precision P = share of a within `threshold` of b and recall
    R = share of b within `threshold` of a (a = prediction, b = truth). KD-trees (scipy).
    """
    A = _np3(a, "a")
    Bm = _np3(b, "b")
    if len(A) == 0 or len(Bm) == 0:
        raise ValueError(f"chamfer_3d: empty point cloud (a has {len(A)}, b has {len(Bm)} points)")
    d_ab, _ = cKDTree(Bm).query(A, k=1)
    d_ba, _ = cKDTree(A).query(Bm, k=1)
    cm = 100.0 * 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))
    p, r = float((d_ab <= threshold).mean()), float((d_ba <= threshold).mean())
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return cm, f


def _np3(x: np.ndarray | Tensor, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"chamfer_3d: {name} must be (N,3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"chamfer_3d: {name} has non-finite coordinates")
    return arr
