"""Render one synthetic frame: body and clothing through our rasterizer, solid-textured cloth,
skin with simple hair, Lambert shading, over a backdrop; supersampled, then reduced to RGB, a
clothing mask and a per-garment label map that agree pixel for pixel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..render.rasterizer import interpolate, rasterize
from ..render.soft import vertex_normals
from .texture import Texture


@dataclass
class SceneAssets:
    body_faces: torch.Tensor      # (Fb, 3)
    body_albedo: torch.Tensor     # (Vb, 3)
    cloth_faces: torch.Tensor     # (Fg, 3), indices into the cloth vertices
    cloth_rest: torch.Tensor      # (Vg, 3) rest positions (texture coordinates)
    face_garment: torch.Tensor    # (Fg,) garment index of each cloth face
    textures: list[Texture]
    background: np.ndarray        # (H, W, 3) float in [0, 1]


def supersampled_K(K: np.ndarray, factor: int) -> np.ndarray:
    """Intrinsics for an image `factor` times larger with pixel centres at integer coordinates."""
    Ks = np.array(K, dtype=np.float64).copy()
    Ks[:2, :2] *= factor
    Ks[:2, 2] = Ks[:2, 2] * factor + (factor - 1) / 2.0
    return Ks.astype(np.float32)


@torch.no_grad()
def render_frame(body_verts: torch.Tensor, cloth_verts: torch.Tensor, assets: SceneAssets,
                 K: np.ndarray, size: tuple[int, int], ssaa: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> RGB uint8 (H, W, 3), clothing mask bool (H, W), labels uint8 (H, W) (0 none, g+1)."""
    h, w = size
    nb = body_verts.shape[0]
    verts = torch.cat([body_verts, cloth_verts])
    faces = torch.cat([assets.body_faces, assets.cloth_faces + nb])
    frags = rasterize(verts, faces, torch.as_tensor(supersampled_K(K, ssaa)), (h * ssaa, w * ssaa))
    normals = torch.cat([vertex_normals(body_verts, assets.body_faces),
                         vertex_normals(cloth_verts, assets.cloth_faces)])
    rest = torch.cat([torch.zeros_like(body_verts), assets.cloth_rest])
    albedo = torch.cat([assets.body_albedo, torch.zeros_like(cloth_verts)])
    attrs = interpolate(frags, faces, torch.cat([normals, rest, albedo], -1))[0]
    face_id = frags.face_id[0]
    # Material per pixel: -1 background, 0 skin, g + 1 garment g.
    n_body_faces = assets.body_faces.shape[0]
    material = torch.full_like(face_id, -1)
    material[(face_id >= 0) & (face_id < n_body_faces)] = 0
    cloth_px = face_id >= n_body_faces
    material[cloth_px] = assets.face_garment[face_id[cloth_px] - n_body_faces] + 1

    color = attrs[..., 6:9].clone()
    for g, texture in enumerate(assets.textures):
        sel = material == g + 1
        if sel.any():
            color[sel] = texture(attrs[..., 3:6][sel])
    light = F.normalize(torch.tensor([-0.35, -0.55, -1.0]), dim=0)
    n = F.normalize(attrs[..., :3], dim=-1, eps=1e-12)
    shade = 0.35 + 0.65 * (n @ light).abs()
    bg = torch.as_tensor(np.repeat(np.repeat(assets.background, ssaa, 0), ssaa, 1))
    image = torch.where((material >= 0)[..., None], color * shade[..., None], bg)

    rgb = F.avg_pool2d(image.permute(2, 0, 1)[None], ssaa)[0].permute(1, 2, 0)
    n_labels = len(assets.textures) + 2
    onehot = F.one_hot(material + 1, n_labels).permute(2, 0, 1)[None].float()
    share = F.avg_pool2d(onehot, ssaa)[0]                      # (labels, H, W): bg, skin, garments
    cloth_share = share[2:].sum(0)
    mask = cloth_share > 0.5
    labels = torch.where(mask, share[2:].argmax(0) + 1, torch.zeros_like(mask, dtype=torch.long))
    rgb8 = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return rgb8, mask.cpu().numpy(), labels.to(torch.uint8).cpu().numpy()
