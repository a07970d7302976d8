"""Albedo textures for UV-mapped garment meshes, baked from a fitted appearance.

Texel space: the mesh is rasterised in UV space, so every texel inside a chart knows its face
and barycentrics, hence its 3D position and normal in any pose. For each view (the posed
garment + body seen by a camera, with the clothing points for the neural renderer) the neural
appearance renders RGB and a mask; every covered texel is projected into the view and takes the
render's colour there with weight cos(normal, view)^p x mask when it is the front surface
(depth test against the garment and the body rasterised together) and faces the camera.
Views come in tiers: the training frames first (what the network saw), then orbit views
around the rest-pose garment for texels no training frame saw; a texel's colour is the
weighted mean of the first tier with enough weight (when the predicted mask covers no texel at
all, as for a barely trained network, the mask test is dropped). Texels no view saw take the colour of the
nearest seen texel in 3D; the gutters between charts are filled with the nearest chart texel
(so bilinear and mip-mapped lookups never bleed background).

Without a network, `bake_vertex_colors` interpolates per-vertex colours (e.g. the baked point
colours) over the faces instead. Images are (H, W, 3) uint8 sRGB with row 0 at the top; UVs
have their origin at the bottom-left (the mesh block's convention). Shapes: V mesh vertices,
F faces, T texture side, P clothing points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from ..render.rasterizer import project, rasterize
from .options import DEFAULT_OPTIONS, MeshOptions


@dataclass
class BakeView:
    """One camera on the posed garment: everything in that camera's space (OpenCV, metres)."""
    K: Tensor                   # (3, 3)
    size: tuple[int, int]       # (H, W)
    points: Tensor              # (P, 3) clothing points (the appearance's point order)
    visible: Tensor             # (P,) bool: not hidden by the body
    mesh_vertices: Tensor       # (V, 3) the garment mesh posed like the points
    body_vertices: Tensor       # (Vb, 3)
    tier: int = 0               # 0: a training frame, 1: an orbit view


@dataclass
class TexelMap:
    """The texture's covered texels: their face, barycentrics and linear index."""
    size: int
    index: Tensor               # (N,) long, row-major into (T, T), row 0 = top (v = 1)
    face: Tensor                # (N,) long
    bary: Tensor                # (N, 3)

    def attribute(self, faces: Tensor, values: Tensor) -> Tensor:
        """(N, C) per-vertex values (V, C) interpolated at the covered texels."""
        corners = faces[self.face]                                          # (N, 3)
        return torch.einsum("nk,nkc->nc", self.bary.to(values.dtype), values[corners])


def texel_map(uv: np.ndarray, faces: np.ndarray, size: int) -> TexelMap:
    """Rasterise the UV layout (V,2)/(F,3) into a (size x size) texture."""
    u = torch.as_tensor(uv[:, 0], dtype=torch.float64) * size - 0.5
    v = (1.0 - torch.as_tensor(uv[:, 1], dtype=torch.float64)) * size - 0.5
    verts = torch.stack([u, v, torch.ones_like(u)], 1)
    f = torch.as_tensor(faces, dtype=torch.long)
    frag = rasterize(verts, f, torch.eye(3, dtype=torch.float64), (size, size))
    fid = frag.face_id.reshape(-1)
    index = (fid >= 0).nonzero().squeeze(1)
    return TexelMap(size, index, fid[index], frag.bary.reshape(-1, 3)[index].float())


def face_normals_at_vertices(vertices: Tensor, faces: Tensor) -> Tensor:
    """(V, 3) area-weighted unit vertex normals."""
    tri = vertices[faces]
    fn = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    vn = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return vn / vn.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _sample(image: Tensor, uv: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C) bilinear samples of image (C, H, W) at pixel coordinates uv (N, 2) (centres at
    integers); zeros outside."""
    H, W = size
    grid = torch.stack([(2 * uv[:, 0] + 1) / W - 1, (2 * uv[:, 1] + 1) / H - 1], -1)[None, None]
    grid = torch.nan_to_num(grid.to(image.dtype), nan=-2.0, posinf=-2.0, neginf=-2.0)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0].T


def front_depth(view: BakeView, mesh_faces: Tensor, body_faces: Tensor) -> Tensor:
    """(H, W) depth of the nearest surface (garment or body), +inf where none."""
    verts = torch.cat([view.mesh_vertices, view.body_vertices]).float()
    faces = torch.cat([mesh_faces, body_faces + len(view.mesh_vertices)])
    return rasterize(verts, faces, view.K.float(), view.size).depth[0]


@torch.no_grad()
def project_view(view: BakeView, texels: TexelMap, mesh_faces: Tensor, body_faces: Tensor, rgb: Tensor,
                 mask: Tensor, options: MeshOptions) -> tuple[Tensor, Tensor, Tensor]:
    """Colours (N, 3) in 0..1 and weights (N,) of the covered texels seen in one view, given the
    view's render rgb (3, H, W) in [-1, 1] and mask (1, H, W); and the weights without the
    predicted-mask test (used only when the mask covers nothing at all)."""
    pos = texels.attribute(mesh_faces, view.mesh_vertices.float())                          # (N, 3)
    nrm = texels.attribute(mesh_faces, face_normals_at_vertices(view.mesh_vertices.float(), mesh_faces))
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    to_cam = -pos / pos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (nrm * to_cam).sum(-1)
    uv, z = project(pos[None], view.K.float()[None])
    uv, z = uv[0], z[0]
    H, W = view.size
    depth = front_depth(view, mesh_faces, body_faces)
    px = uv.round().long()
    inside = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)
    d = depth[px[:, 1].clamp(0, H - 1), px[:, 0].clamp(0, W - 1)]
    front = inside & (z <= d + options.depth_tolerance_m) & (cos > 0)
    m = _sample(mask, uv, view.size)[:, 0]
    geometric = torch.where(front, cos.clamp(0, 1) ** options.cos_power, torch.zeros_like(m))
    weight = torch.where(m > options.mask_threshold, geometric * m, torch.zeros_like(m))
    colour = (_sample(rgb, uv, view.size) + 1) / 2
    return colour.clamp(0, 1), weight, geometric


@torch.no_grad()
def bake_texture(model, views: list[BakeView], uv: np.ndarray, faces: np.ndarray, rest_vertices: np.ndarray,
                 body_faces: np.ndarray, options: MeshOptions = DEFAULT_OPTIONS,
                 progress=None) -> tuple[np.ndarray, dict]:
    """(T, T, 3) uint8 albedo from the neural appearance `model` seen in `views`, and stats
    (share of covered texels seen per tier, filled)."""
    T = int(options.texture_size)
    texels = texel_map(uv, faces, T)
    mf = torch.as_tensor(faces, dtype=torch.long)
    bf = torch.as_tensor(body_faces, dtype=torch.long)
    tiers = sorted({v.tier for v in views})
    N = len(texels.index)
    zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
    sums = {t: (zeros(N, 3), zeros(N)) for t in tiers}
    loose = {t: (zeros(N, 3), zeros(N)) for t in tiers}   # without the mask test: a barely trained network
    for i, view in enumerate(views):
        rgb, mask = model.render(view.points[None].float(), view.visible[None], view.K.float()[None], view.size)
        colour, weight, geometric = project_view(view, texels, mf, bf, rgb[0], mask[0], options)
        for acc, w in ((sums, weight), (loose, geometric)):
            acc[view.tier][0].add_((colour * w[:, None]).double())
            acc[view.tier][1].add_(w.double())
        if progress:
            progress("bake", i + 1, len(views))
    if not any(bool((w > options.min_weight).any()) for _, w in sums.values()):
        sums = loose
    colours = torch.full((len(texels.index), 3), 0.5, dtype=torch.float64)
    done = torch.zeros(len(texels.index), dtype=torch.bool)
    stats = {"texels": int(len(texels.index))}
    for t in tiers:
        acc_c, acc_w = sums[t]
        take = (~done) & (acc_w > options.min_weight)
        colours[take] = acc_c[take] / acc_w[take, None]
        done |= take
        stats[f"seen_tier{t}"] = round(float(take.double().mean()), 4)
    return fill_texture(colours.float().numpy(), done.numpy(), texels, faces, rest_vertices), stats | {
        "filled": round(float((~done).double().mean()), 4)}


def bake_vertex_colors(colors: np.ndarray, uv: np.ndarray, faces: np.ndarray,
                       options: MeshOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(T, T, 3) uint8 texture of per-vertex colours (V, 3) in 0..1 interpolated over the faces."""
    T = int(options.texture_size)
    texels = texel_map(uv, faces, T)
    col = texels.attribute(torch.as_tensor(faces, dtype=torch.long), torch.as_tensor(colors, dtype=torch.float32))
    return fill_texture(col.numpy(), np.ones(len(col), bool), texels, faces, None)


def fill_texture(colours: np.ndarray, seen: np.ndarray, texels: TexelMap, faces: np.ndarray,
                 rest_vertices: np.ndarray | None) -> np.ndarray:
    """(T, T, 3) uint8 from colours (N, 3) of the covered texels, of which `seen` (N,) are
    measured: unseen ones take the nearest seen texel in 3D (rest pose), then every texel
    outside the charts the nearest covered texel's colour."""
    T = texels.size
    colours = colours.copy()
    if (~seen).any() and seen.any() and rest_vertices is not None:
        pos = texels.attribute(torch.as_tensor(faces, dtype=torch.long),
                               torch.as_tensor(rest_vertices, dtype=torch.float32)).numpy()
        _, nearest = cKDTree(pos[seen]).query(pos[~seen], k=1)
        colours[~seen] = colours[seen][nearest]
    image = np.zeros((T * T, 3), np.float32)
    covered = np.zeros(T * T, bool)
    idx = texels.index.numpy()
    image[idx] = colours
    covered[idx] = True
    if covered.any():
        _, (iy, ix) = ndimage.distance_transform_edt(~covered.reshape(T, T), return_indices=True)
        image = image.reshape(T, T, 3)[iy, ix]
    return np.round(np.clip(image.reshape(T, T, 3), 0, 1) * 255).astype(np.uint8)


@torch.no_grad()
def texture_psnr(model, views: list[BakeView], uv: np.ndarray, faces: np.ndarray, body_faces: np.ndarray,
                 texture: np.ndarray, options: MeshOptions = DEFAULT_OPTIONS) -> list[dict]:
    """Per view: PSNR (dB, peak 1 on 0..1 colours) of the textured mesh against the neural
    render, over the pixels where the garment mesh is the front surface and the neural mask is
    on, and how many pixels that is."""
    tex = torch.as_tensor(texture[..., :3], dtype=torch.float32).permute(2, 0, 1) / 255.0
    mf = torch.as_tensor(faces, dtype=torch.long)
    bf = torch.as_tensor(body_faces, dtype=torch.long)
    uvt = torch.as_tensor(uv, dtype=torch.float32)
    rows = []
    for view in views:
        rgb, mask = model.render(view.points[None].float(), view.visible[None], view.K.float()[None], view.size)
        verts = torch.cat([view.mesh_vertices, view.body_vertices]).float()
        allf = torch.cat([mf, bf + len(view.mesh_vertices)])
        frag = rasterize(verts, allf, view.K.float(), view.size)
        fid = frag.face_id[0].reshape(-1)
        on = (fid >= 0) & (fid < len(mf)) & (mask[0, 0].reshape(-1) > options.mask_threshold)
        idx = on.nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        b = frag.bary[0].reshape(-1, 3)[idx].float()
        tuv = torch.einsum("nk,nkc->nc", b, uvt[mf[fid[idx]]])
        T = texture.shape[0]
        texel_px = torch.stack([tuv[:, 0] * T - 0.5, (1 - tuv[:, 1]) * T - 0.5], 1)
        baked = _sample(tex, texel_px, (T, T))
        neural = ((rgb[0].reshape(3, -1)[:, idx].T + 1) / 2).clamp(0, 1)
        mse = float(((baked - neural) ** 2).mean())
        rows.append({"pixels": int(len(idx)), "psnr": round(10 * math.log10(1.0 / max(mse, 1e-10)), 3)})
    return rows
