"""UV atlas (xatlas) and the albedo texture of a reconstructed garment.

    1. xatlas cuts the rest-pose mesh into charts and packs them into [0,1]^2 (vertices split on
       seams; `vmapping` says which mesh vertex each atlas vertex is).
    2. Each texel is located on the mesh by rasterizing the atlas in UV space (our hard rasterizer
       with identity intrinsics): its face, barycentrics, posed position and normal.
    3. Visible texels (in front of the photo's z-buffer of body + garment, facing the camera, on
       the clothing mask) take the photo's colour divided by the SH shading: albedo.
    4. Hidden texels take the albedo of the visible texel nearest their mirror image across the
       body's sagittal plane (x -> -x in the rest pose), when one lies close; those still hidden
       (the back) the albedo of the seen texel nearest their image across their cross-section
       ring's coronal plane (z -> 2 c - z, c the ring's mean depth in the rest pose): the back is
       the mirrored front, as in 3D Magic Mirror.
    5. The rest are inpainted from visible neighbours: per-vertex albedo known on seen (or mirror-
       seen) vertices is diffused over the mesh graph (Jacobi sweeps), and interpolated.
    6. Chart borders are grown by a few texels so that filtering never reads the background.
UV origin at the bottom-left (result_mesh's contract): texel (row r, col c) has
uv = ((c + 0.5) / S, 1 - (r + 0.5) / S).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..render.rasterizer import interpolate, rasterize
from ..render.soft import sample_texture, sh_shading, vertex_normals
from .options import ReconOptions
from .template import vertex_adjacency

MIRROR_TEXEL_DIST = 0.015    # m: a hidden texel's mirror image must land this close to a seen texel
FRONT_BACK_DIST = 0.04       # m: ... its front/back image this close (front and back differ more)
MIN_SHADING = 0.2            # shading is floored here before dividing it out
GUTTER_TEXELS = 4


@dataclass
class Atlas:
    """vmapping (Va,) mesh vertex of each atlas vertex; faces (F,3) into the atlas vertices;
    uv (Va,2) float32 in [0,1], origin bottom-left."""

    vmapping: np.ndarray
    faces: np.ndarray
    uv: np.ndarray


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int) -> Atlas:
    """Charts and packing by xatlas for a texture of size x size texels."""
    import xatlas
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    return Atlas(vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float32))


def _texels(atlas: Atlas, size: int, device: torch.device):
    """Rasterize the atlas in UV space -> Fragments over (size,size) texels."""
    uv = torch.as_tensor(atlas.uv, device=device, dtype=torch.float64)
    verts = torch.stack([uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5, torch.ones_like(uv[:, 0])], -1)
    return rasterize(verts, torch.as_tensor(atlas.faces, device=device), torch.eye(3, dtype=torch.float64,
                                                                                  device=device), (size, size))


def photo_depth(posed: torch.Tensor, faces: torch.Tensor, body_verts: torch.Tensor, body_faces: torch.Tensor,
                K: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H,W) depth of the nearest surface (body or garment) in the photo, +inf where empty."""
    verts = torch.cat([body_verts, posed])
    return rasterize(verts, torch.cat([body_faces, faces + body_verts.shape[0]]), K, size).depth[0]


def _project(p: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return p[:, :2] / p[:, 2:3].clamp(min=1e-6) * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]


def _seen(p: torch.Tensor, n: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, K: torch.Tensor,
          tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which camera-space points (N,3) with normals (N,3) the photo shows; their pixel (N,2)."""
    H, W = depth.shape
    px = _project(p, K)
    pi = px.round().long()
    inside = (pi[:, 0] >= 0) & (pi[:, 0] < W) & (pi[:, 1] >= 0) & (pi[:, 1] < H)
    pc = torch.stack([pi[:, 0].clamp(0, W - 1), pi[:, 1].clamp(0, H - 1)], 1)
    z = depth[pc[:, 1], pc[:, 0]]
    facing = (n * p).sum(-1) < 0
    return inside & facing & (p[:, 2] <= z + tol) & mask[pc[:, 1], pc[:, 0]], px


def _sample_photo(image: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Bilinear colours (N,3) of the photo (H,W,3) at pixel positions (N,2)."""
    H, W = image.shape[:2]
    uv = torch.stack([(px[:, 0] + 0.5) / W, 1 - (px[:, 1] + 0.5) / H], -1)
    return sample_texture(image.permute(2, 0, 1), uv.view(1, 1, -1, 2).to(image.dtype))[0, 0]


def diffuse(values: np.ndarray, known: np.ndarray, faces: np.ndarray, iters: int) -> np.ndarray:
    """Fill unknown rows of (V,C) values from known neighbours: Jacobi sweeps of the mesh graph's
    averaging with the known rows held fixed; rows no sweep reaches keep the known mean."""
    adj = vertex_adjacency(faces, len(values))
    out = np.where(known[:, None], values, 0.0)
    weight = known.astype(np.float64)
    deg = np.maximum(np.asarray(adj.sum(1)).ravel(), 1)
    for _ in range(iters):
        s = adj @ (out * weight[:, None])
        w = adj @ weight
        fill = (~known) & (w > 0)
        out[fill] = s[fill] / w[fill, None]
        weight = np.where(known, 1.0, np.minimum(1.0, w / deg))
    reached = known | (weight > 0)
    mean = values[known].mean(0) if known.any() else np.full(values.shape[1], 0.5)
    out[~reached] = mean
    return out


def bake_texture(rest: np.ndarray, posed: np.ndarray, faces: np.ndarray, mirror: np.ndarray,
                 atlas: Atlas, image: np.ndarray, mask: np.ndarray, K: np.ndarray, sh: np.ndarray,
                 body_verts: torch.Tensor, body_faces: torch.Tensor, options: ReconOptions,
                 ring: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """-> texture (S,S,3) uint8 albedo, and counts of texels by source (seen / mirror / front-back
    / inpainted). ring (V,) cross-section ring ids (None: no front/back step)."""
    dev = body_verts.device
    S = options.texture_size
    t = lambda a, d=torch.float32: torch.as_tensor(a, dtype=d, device=dev)  # noqa: E731
    faces_t = t(faces, torch.long)
    posed_t, Kt, sh_t = t(posed), t(K), t(sh)
    normals = vertex_normals(posed_t, faces_t)
    depth = photo_depth(posed_t, faces_t, body_verts.to(posed_t.dtype), body_faces, Kt, mask.shape)
    import cv2
    k = 2 * options.texture_erode_px + 1   # colours at the mask's edge blend with the background
    inner = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    photo, mask_t = t(image) / 255.0, t(inner, torch.bool)

    def albedo_of(p: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen, px = _seen(p, n, depth, mask_t, Kt, options.visible_depth_tol)
        shade = sh_shading(F.normalize(n, dim=-1, eps=1e-8), sh_t).clamp(min=MIN_SHADING)
        return seen, (_sample_photo(photo, px) / shade[:, None]).clamp(0, 1)

    # Per mesh vertex: seen albedo, then mirror, then diffusion (the inpainting of step 5).
    v_seen, v_alb = albedo_of(posed_t, normals)
    v_seen, v_alb = v_seen.cpu().numpy(), v_alb.cpu().numpy().astype(np.float64)
    m_ok = (mirror >= 0) & ~v_seen & (v_seen[np.maximum(mirror, 0)])
    v_alb[m_ok] = v_alb[mirror[m_ok]]
    back = front_back_images(rest, ring)
    fb_ok = np.zeros_like(m_ok)
    if back is not None:
        hidden = np.nonzero(~v_seen & ~m_ok)[0]
        fb_ok[hidden], src = _nearest_seen(rest, v_seen, back[hidden], FRONT_BACK_DIST)
        v_alb[hidden[src >= 0]] = v_alb[src[src >= 0]]
    v_alb = diffuse(v_alb, v_seen | m_ok | fb_ok, faces, options.inpaint_iters)

    # Per texel.
    frags = _texels(atlas, S, dev)
    covered = frags.face_id[0] >= 0
    vm = t(atlas.vmapping, torch.long)
    af = t(atlas.faces, torch.long)
    back_v = rest if back is None else back
    attrs = torch.cat([posed_t[vm], normals[vm], t(rest)[vm], t(v_alb)[vm], t(back_v)[vm]], -1)
    tex = interpolate(frags, af, attrs.to(frags.bary.dtype))[0].to(torch.float32)[covered]   # (n,15)
    p, n, r, fallback, rb = tex[:, :3], tex[:, 3:6], tex[:, 6:9], tex[:, 9:12], tex[:, 12:15]
    seen, alb = albedo_of(p, n)
    out = fallback.clone()
    out[seen] = alb[seen]
    r_np, seen_np = r.cpu().numpy(), seen.cpu().numpy()
    mirrored = np.zeros_like(seen_np)
    if seen_np.any() and (~seen_np).any():
        d, j = cKDTree(r_np[seen_np]).query(r_np[~seen_np] * np.array([-1.0, 1.0, 1.0]))
        ok = d < MIRROR_TEXEL_DIST
        hidden = np.nonzero(~seen_np)[0]
        src = np.nonzero(seen_np)[0][j[ok]]
        out[t(hidden[ok], torch.long)] = out[t(src, torch.long)]
        mirrored[hidden[ok]] = True
    flipped = np.zeros_like(seen_np)
    if back is not None and seen_np.any():
        hidden = np.nonzero(~seen_np & ~mirrored)[0]
        flipped[hidden], src = _nearest_seen(r_np, seen_np, rb.cpu().numpy()[hidden], FRONT_BACK_DIST)
        out[t(hidden[src >= 0], torch.long)] = out[t(src[src >= 0], torch.long)]
    texture = torch.zeros(S, S, 3, device=dev)
    texture[covered] = out
    texture = _grow(texture, covered, GUTTER_TEXELS)
    stats = {"texels": int(covered.sum()), "seen": int(seen_np.sum()), "mirrored": int(mirrored.sum()),
             "front_back": int(flipped.sum()), "inpainted": int((~seen_np & ~mirrored & ~flipped).sum()),
             "vertices_seen": int(v_seen.sum()), "vertices_mirrored": int(m_ok.sum()),
             "vertices_front_back": int(fb_ok.sum())}
    return (texture.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy(), stats


def front_back_images(rest: np.ndarray, ring: np.ndarray | None) -> np.ndarray | None:
    """(V,3) each rest position reflected across its ring's coronal plane (z -> 2 c - z, c the
    ring's mean z), or None without rings."""
    if ring is None:
        return None
    c = np.bincount(ring, weights=rest[:, 2]) / np.maximum(np.bincount(ring), 1)
    out = rest.astype(np.float64).copy()
    out[:, 2] = 2 * c[ring] - out[:, 2]
    return out


def _nearest_seen(points: np.ndarray, seen: np.ndarray, queries: np.ndarray, max_dist: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each query (Q,3): (Q,) bool found and (Q,) index of the nearest seen point within
    max_dist, else -1."""
    src = np.full(len(queries), -1, np.int64)
    if not seen.any() or not len(queries):
        return src >= 0, src
    d, j = cKDTree(points[seen]).query(queries)
    ok = d < max_dist
    src[ok] = np.nonzero(seen)[0][j[ok]]
    return ok, src


def _grow(tex: torch.Tensor, filled: torch.Tensor, steps: int) -> torch.Tensor:
    """Extend the charts by `steps` texels: empty texels take the mean of filled 3x3 neighbours."""
    img = tex.permute(2, 0, 1)[None]
    w = filled.to(tex.dtype)[None, None]
    k = torch.ones(1, 1, 3, 3, dtype=tex.dtype, device=tex.device)
    for _ in range(steps):
        s = F.conv2d(img * w, k.expand(3, 1, 3, 3), padding=1, groups=3)
        c = F.conv2d(w, k, padding=1)
        new = (w == 0) & (c > 0)
        img = torch.where(new, s / c.clamp(min=1), img)
        w = torch.where(new, torch.ones_like(w), w)
    return img[0].permute(1, 2, 0)
