"""Differentiable soft mesh rasterizer in plain PyTorch (DIB-R / SoftRas style), beside the hard one.

What it gives (all batched over images, on the device and dtype of the vertices):

* ``soft_silhouette``: a soft coverage map whose gradients reach the vertex positions also from
  pixels *outside* the mesh, which a hard rasterizer cannot give. As in SoftRas, each face f
  contributes at pixel p the probability ``D_f(p) = sigmoid(delta * d^2 / sigma)``, d being the
  screen-space distance (pixels) from the pixel centre to the triangle's outline, delta = +1
  inside and -1 outside; the silhouette is the probabilistic union ``A = 1 - prod_f (1 - D_f)``,
  computed as ``1 - exp(-sum_f softplus(delta d^2 / sigma))`` (stable; no products of many small
  factors). Unlike SoftRas, d is measured to the face's *outline* edges only: an edge shared with
  a face lying on its other side on screen (same winding) is interior and does not count, so the
  silhouette does not dip along the inner edges of a mesh (SoftRas gives 0.75 there). An edge is
  an outline edge when it is a mesh boundary, non-manifold, or a fold (neighbour wound the other
  way). ``delta d^2 / sigma`` is clamped to +-ln(1/cutoff).
* ``soft_rasterize``: the hard rasterizer's face-index map, perspective-correct barycentrics
  (differentiable w.r.t. the vertices, so colours and normals carry gradients inside the mesh) and
  depth, plus the soft silhouette as ``alpha`` (gradients at the boundary), as DIB-R combines them.
  The result is a `Fragments`, so `interpolate` interpolates any per-vertex attribute on it.
* ``sample_texture``: bilinear look-up of a texture by interpolated UVs (origin bottom-left, as
  the result mesh contract says), differentiable w.r.t. both the texture and the UVs.
* ``vertex_normals``, ``sh_basis`` and ``sh_shading``: area-weighted normals and 9-coefficient
  (order 2) real spherical-harmonic shading, for lit renders whose texture is albedo.
* ``render_textured``: all of the above together: a UV-textured, SH-lit mesh, optionally hidden
  by an opaque occluder (the body), as colour, hard visibility and soft silhouette.

Memory: a face only reaches the pixels of its bounding box, grown (for faces with an outline edge
only) by the distance at which its contribution falls below ``cutoff``
(``sqrt(sigma * ln(1/cutoff))`` px). The (face, pixel) pairs of
all boxes are enumerated exactly (no padding) and processed in chunks of at most ``max_pairs``;
under autograd each chunk is checkpointed (recomputed in the backward pass), so the memory held
for the backward pass is one dense (B*H*W) sum per chunk, independent of the number of pairs.
The only host synchronisation per call is reading the total pair count to plan the chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .rasterizer import Fragments, _as_batch, _check_faces, _check_size, interpolate, project, rasterize

__all__ = ["SoftOptions", "SoftFragments", "soft_silhouette", "soft_rasterize", "sample_texture",
           "vertex_normals", "sh_basis", "sh_shading", "render_textured", "SH_COUNT"]

SH_COUNT = 9


@dataclass(frozen=True)
class SoftOptions:
    """Tuning of the soft silhouette.

    sigma:     softness in pixels squared (SoftRas' sigma, in pixel units): the silhouette is 0.5
               on the boundary and ~0.27 / 0.12 at 1 / 1.5 px outside it for sigma = 1.
    cutoff:    contributions below this are dropped (sets how far a face reaches beyond its box).
    max_pairs: (face, pixel) pairs held at once; results do not depend on it.
    znear:     faces with a vertex at camera z <= znear are dropped (no clipping).
    """

    sigma: float = 1.0
    cutoff: float = 1e-10
    max_pairs: int = 262_144
    znear: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.sigma > 0 and 0 < self.cutoff < 0.5 and self.max_pairs >= 1 and self.znear > 0):
            raise ValueError(f"SoftOptions out of range: {self}")

    @property
    def reach(self) -> float:
        """Pixels beyond the triangle where the contribution softplus(-d^2/sigma) < cutoff."""
        return math.sqrt(self.sigma * math.log(1.0 / self.cutoff))


@dataclass
class SoftFragments(Fragments):
    """`Fragments` (face_id, bary, depth of the nearest face) plus alpha: (B,H,W) soft silhouette."""

    alpha: Tensor | None = None


def _screen(verts: Tensor, faces: Tensor, K: Tensor, znear: float) -> tuple[Tensor, Tensor]:
    """Projected face corners (B,F,3,2) with autograd, and (B,F) bool: every corner in front."""
    z = verts[..., 2]
    ok = torch.isfinite(verts).all(-1) & (z > znear)
    safe = torch.where(ok.unsqueeze(-1), verts, torch.ones_like(verts))  # no NaN gradients
    uv, _ = project(safe, K)
    ok = ok & torch.isfinite(uv).all(-1)
    uv = torch.where(ok.unsqueeze(-1), uv, torch.zeros_like(uv))
    B, F_ = verts.shape[0], faces.shape[0]
    tri = uv[:, faces.reshape(-1)].view(B, F_, 3, 2)
    return tri, ok[:, faces.reshape(-1)].view(B, F_, 3).all(-1)


def _boxes(tri: Tensor, ok: Tensor, reach: Tensor, H: int, W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per (b,f), flattened: first pixel column/row and box width/height (0 for dropped faces);
    reach (B,F) px the box grows by."""
    t = tri.detach()
    lo, hi = t.amin(2), t.amax(2)                                   # (B,F,2)
    x0 = torch.ceil(lo[..., 0] - reach).clamp(0, W).to(torch.int64)
    y0 = torch.ceil(lo[..., 1] - reach).clamp(0, H).to(torch.int64)
    x1 = torch.floor(hi[..., 0] + reach).clamp(-1, W - 1).to(torch.int64)
    y1 = torch.floor(hi[..., 1] + reach).clamp(-1, H - 1).to(torch.int64)
    w = torch.where(ok, (x1 - x0 + 1).clamp(min=0), torch.zeros_like(x0))
    h = torch.where(ok, (y1 - y0 + 1).clamp(min=0), torch.zeros_like(y0))
    return x0.reshape(-1), y0.reshape(-1), w.reshape(-1), h.reshape(-1)


def _seg_dist2(q: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Squared distance (n,) from points q (n,2) to segments a-b (n,2)."""
    ab, aq = b - a, q - a
    den = (ab * ab).sum(-1)
    t = ((aq * ab).sum(-1) / torch.where(den > 0, den, torch.ones_like(den))).clamp(0.0, 1.0)
    d = aq - t.unsqueeze(-1) * ab
    return (d * d).sum(-1)


def _edge_mates(faces: Tensor, n_verts: int) -> Tensor:
    """(F,3) flat index f*3+j of the other face-edge sharing edge k (corners k, k+1) of face f,
    or -1 on a boundary or non-manifold edge."""
    a, b = faces, faces.roll(-1, dims=1)
    key = (torch.minimum(a, b) * n_verts + torch.maximum(a, b)).reshape(-1)
    order = torch.argsort(key, stable=True)
    k = key.index_select(0, order)
    _, inv, counts = torch.unique_consecutive(k, return_inverse=True, return_counts=True)
    pair = counts.index_select(0, inv) == 2
    first = torch.ones_like(pair)
    first[1:] = k[1:] != k[:-1]
    none = torch.full_like(order, -1)
    mate_sorted = torch.where(pair & first, order.roll(-1), torch.where(pair & ~first, order.roll(1), none))
    return torch.empty_like(order).scatter_(0, order, mate_sorted).view_as(faces)


def _outline_edges(tri: Tensor, mates: Tensor) -> Tensor:
    """(B,F,3) bool: edge k (corners k, k+1) of each face is part of the screen outline."""
    t = tri.detach()
    a, b, c = t.unbind(2)
    area = (b - a)[..., 0] * (c - a)[..., 1] - (b - a)[..., 1] * (c - a)[..., 0]   # (B,F)
    s = torch.sign(area).reshape(t.shape[0], -1)
    flat = mates.reshape(-1)
    mate_sign = s.index_select(1, flat.clamp(min=0) // 3).view(t.shape[0], *mates.shape)
    return (mates < 0).unsqueeze(0) | (mate_sign != s.unsqueeze(-1)) | (s.unsqueeze(-1) == 0)


def _pair_energy(tri: Tensor, outline: Tensor, q: Tensor, sigma: float, limit: float) -> Tensor:
    """-log(1 - D) = softplus(delta d^2 / sigma) of each pair: tri (n,3,2) corners, outline (n,3)
    edge flags, q (n,2) pixel; delta d^2 / sigma clamped to +-limit."""
    a, b, c = tri.unbind(1)

    def cross(u: Tensor, v: Tensor) -> Tensor:
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    area = cross(b - a, c - a)
    e0, e1, e2 = cross(c - b, q - b), cross(a - c, q - c), cross(b - a, q - a)
    s = torch.sign(area)
    inside = (area != 0) & (e0 * s >= 0) & (e1 * s >= 0) & (e2 * s >= 0)
    far = torch.full_like(area, limit * sigma)
    d2 = [torch.where(outline[:, k], _seg_dist2(q, p0, p1), far)
          for k, (p0, p1) in enumerate(((a, b), (b, c), (c, a)))]
    d2 = torch.minimum(torch.minimum(d2[0], d2[1]), d2[2])
    return F.softplus((torch.where(inside, d2, -d2) / sigma).clamp(-limit, limit))


def _chunk_sum(tri_flat: Tensor, outline: Tensor, x0: Tensor, y0: Tensor, w: Tensor, starts: Tensor, ends: Tensor,
               lo: int, hi: int, F_: int, H: int, W: int, sigma: float, limit: float, size: int) -> Tensor:
    """Dense (size,) sum of pair energies for pair slots [lo, hi) of the exact enumeration."""
    dev = tri_flat.device
    slot = torch.arange(lo, hi, device=dev)
    item = torch.searchsorted(ends, slot, right=True)               # flat (b,f) of each slot
    local = slot - starts.index_select(0, item)
    ww = w.index_select(0, item)
    row = torch.div(local, ww, rounding_mode="floor")
    col = local - row * ww
    px, py = x0.index_select(0, item) + col, y0.index_select(0, item) + row
    b = torch.div(item, F_, rounding_mode="floor")
    q = torch.stack([px, py], -1).to(tri_flat.dtype)
    energy = _pair_energy(tri_flat.index_select(0, item), outline.index_select(0, item), q, sigma, limit)
    pix = b * (H * W) + py * W + px
    return torch.zeros(size, dtype=energy.dtype, device=dev).index_add(0, pix, energy)


def soft_silhouette(verts: Tensor, faces: Tensor, K: Tensor, image_size: tuple[int, int],
                    options: SoftOptions = SoftOptions()) -> Tensor:
    """Soft coverage (B,H,W) in [0,1) of a mesh seen by a pinhole camera at the origin (OpenCV axes).

    verts (V,3) or (B,V,3) camera space; faces (F,3) shared; K (3,3) or (B,3,3); image_size (H,W).
    Differentiable w.r.t. verts (and K) everywhere a face reaches, inside and outside the mesh.
    """
    verts, K = _as_batch(verts, K)
    H, W = _check_size(image_size)
    B, V, _ = verts.shape
    faces = _check_faces(faces, V, verts.device)
    F_ = faces.shape[0]
    tri, ok = _screen(verts, faces, K, options.znear)
    outline = _outline_edges(tri, _edge_mates(faces, V))                    # (B,F,3)
    # A face with no outline edge reaches no pixel outside itself (its contribution there is the
    # clamped cutoff): only outline faces need the margin, which keeps the pair count low.
    reach = outline.any(-1).to(tri.dtype) * options.reach
    x0, y0, w, h = _boxes(tri, ok, reach, H, W)
    counts = w * h
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    total = int(ends[-1]) if ends.numel() else 0                    # the one host sync
    tri_flat = tri.reshape(B * F_, 3, 2)
    outline = outline.reshape(B * F_, 3)
    limit = math.log(1.0 / options.cutoff)
    size = B * H * W
    acc = torch.zeros(size, dtype=verts.dtype, device=verts.device)
    step = options.max_pairs
    for lo in range(0, total, step):
        args = (tri_flat, outline, x0, y0, w, starts, ends, lo, min(lo + step, total), F_, H, W,
                options.sigma, limit, size)
        if torch.is_grad_enabled() and tri_flat.requires_grad:
            acc = acc + checkpoint(_chunk_sum, *args, use_reentrant=False)
        else:
            acc += _chunk_sum(*args)
    return (-torch.expm1(-acc)).view(B, H, W)


def soft_rasterize(verts: Tensor, faces: Tensor, K: Tensor, image_size: tuple[int, int],
                   options: SoftOptions = SoftOptions(), cull_backfaces: bool = False) -> SoftFragments:
    """Hard visibility (face-index map, differentiable barycentrics, depth) plus the soft silhouette.

    Same inputs as `soft_silhouette`. face_id/bary/depth are exactly `rasterize`'s (same call);
    alpha is `soft_silhouette` (always both faces of every triangle: culling would open holes).
    """
    frags = rasterize(verts, faces, K, image_size, cull_backfaces=cull_backfaces, znear=options.znear)
    alpha = soft_silhouette(verts, faces, K, image_size, options)
    return SoftFragments(face_id=frags.face_id, bary=frags.bary, depth=frags.depth, alpha=alpha)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture look-up: texture (C,Ht,Wt) or (B,C,Ht,Wt) with row 0 at the image's top;
    uv (B,H,W,2) in [0,1] with the origin at the bottom-left (OBJ / Blender). Returns (B,H,W,C);
    out-of-range UVs clamp to the border. Differentiable w.r.t. texture and uv."""
    if texture.dim() == 3:
        texture = texture.unsqueeze(0)
    if texture.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
        raise ValueError(f"sample_texture: texture (B,C,H,W) and uv (B,H,W,2), got "
                         f"{tuple(texture.shape)} and {tuple(uv.shape)}")
    B = uv.shape[0]
    if texture.shape[0] not in (1, B):
        raise ValueError(f"sample_texture: {texture.shape[0]} textures for {B} images")
    texture = texture.expand(B, -1, -1, -1)
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], -1).to(texture.dtype)
    out = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals of (V,3) or (B,V,3) vertices; faces (F,3) CCW outside;
    (0, 0, 0) at vertices in no face or with faces of no area."""
    faces = faces.to(device=verts.device, dtype=torch.long)
    V = verts.shape[-2]
    v = verts.reshape(-1, V, 3)                                                 # (B, V, 3)
    B = v.shape[0]
    v0, v1, v2 = (v[:, faces[:, k]] for k in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)                                  # (B, F, 3), twice the area
    # One index_add over the flat (B * V) rows: ~10x faster on the CPU than index_add along dim -2.
    rows = (torch.arange(B, device=v.device)[:, None] * V + faces.t().reshape(1, -1)).reshape(-1)
    vn = v.new_zeros(B * V, 3).index_add(0, rows, fn.repeat(1, 3, 1).reshape(-1, 3))
    return F.normalize(vn.view(verts.shape), dim=-1, eps=1e-12)


# Real SH basis of order 2 (Ramamoorthi & Hanrahan's constants), in the order
# Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z^2-1), Y21 (xz), Y22 (x^2-y^2).
_SH_C = (0.282095, 0.488603, 1.092548, 0.315392, 0.546274)


def sh_basis(normals: Tensor) -> Tensor:
    """(...,3) unit normals -> (...,9) real spherical-harmonic basis values."""
    x, y, z = normals.unbind(-1)
    c0, c1, c2, c3, c4 = _SH_C
    return torch.stack([torch.full_like(x, c0), c1 * y, c1 * z, c1 * x, c2 * x * y, c2 * y * z,
                        c3 * (3 * z * z - 1), c2 * x * z, c4 * (x * x - y * y)], -1)


def sh_shading(normals: Tensor, coeffs: Tensor) -> Tensor:
    """Greyscale irradiance (...) of unit normals (B,...,3) under 9 SH coefficients (9,) or (B,9)."""
    basis = sh_basis(normals)
    if coeffs.dim() == 2:
        coeffs = coeffs.view(coeffs.shape[0], *([1] * (basis.dim() - 2)), SH_COUNT)
    return (basis * coeffs.to(basis.dtype)).sum(-1)


def render_textured(verts: Tensor, faces: Tensor, uv: Tensor, texture: Tensor, K: Tensor,
                    image_size: tuple[int, int], sh: Tensor | None = None,
                    occluder: tuple[Tensor, Tensor] | None = None,
                    options: SoftOptions = SoftOptions()) -> tuple[Tensor, Tensor, Tensor]:
    """Render a UV-textured mesh, lit by greyscale SH, as the soft rasterizer sees it.

    verts (V,3) or (B,V,3) camera space; faces (F,3); uv (V,2) origin bottom-left; texture
    (C,Ht,Wt) or (B,C,Ht,Wt) albedo; sh (9,) or (B,9) (None: unlit); occluder (verts, faces) of
    an opaque surface (e.g. the body) that hides the mesh where it is nearer. Returns colour
    (B,H,W,C) (zero where the mesh is not visible), the hard visibility (B,H,W) bool and the soft
    silhouette (B,H,W) with the pixels where the occluder is nearer removed.
    """
    frags = soft_rasterize(verts, faces, K, image_size, options)
    visible = frags.mask
    if occluder is not None:
        over = rasterize(occluder[0], occluder[1], K, image_size, znear=options.znear)
        hidden = over.depth < frags.depth
        visible = visible & ~hidden
        alpha = frags.alpha * ~hidden
    else:
        alpha = frags.alpha
    tex_uv = interpolate(frags, faces, uv.to(frags.bary.dtype))
    colour = sample_texture(texture.to(verts.dtype), tex_uv)
    if sh is not None:
        v3 = verts if verts.dim() == 3 else verts.unsqueeze(0)
        n = interpolate(frags, faces, vertex_normals(v3, faces).to(frags.bary.dtype))
        colour = colour * sh_shading(F.normalize(n, dim=-1, eps=1e-8), sh).clamp(min=0).unsqueeze(-1)
    return colour * visible.unsqueeze(-1), visible, alpha
