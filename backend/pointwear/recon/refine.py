"""Per-image refinement: per-vertex offsets of the template, per-vertex albedo and 9 greyscale SH
light coefficients, optimised together through the soft rasterizer (render/soft.py).

Parametrisation (V garment vertices, rest space of the fitted betas, metres):
    o        = S^k raw, S = half a step of uniform Laplacian smoothing, k = smooth_passes
    rest(o)  = template.rest + ease * template.normals + max_offset * tanh(o / max_offset)
    ease     = start_offset, blended to arm_ease_ratio * start_offset by the arms' skin weights
    posed(o) = LBS(rest(o)) + pose_correctives[body_vertex] + transl      (camera space)
so symmetry and deformation are judged in the rest pose, where the body's sagittal plane is x = 0.

Losses (weights in ReconOptions): 2 x (1 - soft IoU) of the garment's silhouette, less what the body
hides in front of it, against the clothing mask; L1 of albedo x SH shading against the image on
the visible garment; uniform Laplacian of the offsets; relative edge-length change; flatness
(1 - cos of adjacent face normals); symmetry of the offsets across x = 0; deformation |o|^2; body
penetration (clearance along the body normal of the nearest body vertex); cross-section rings
(offsets along the normal near their ring's mean, so the unseen depth swells with the seen width);
a bridged skirt's half depth (front to back) at least `skirt_depth_ratio` of its half width, per leg level;
albedo smoothness;
light prior (non-ambient SH terms small).

The image and masks are cropped to the person's box and resampled so that it is
`render_height` px tall (intrinsics adjusted), which bounds the cost whatever the photo's size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from ..body.model import BodyModel, skin_points
from ..body.regions import REGION_GROUPS, REGION_NAMES, region_weights
from ..render.rasterizer import interpolate, rasterize
from ..render.soft import SH_COUNT, SoftOptions, sh_shading, soft_silhouette, vertex_normals
from .bridge import mask_run
from .options import ReconOptions
from .perceive import Observation
from .template import Template

SH_DC = 1.0 / 0.282095      # coefficient of Y00 giving irradiance 1 (ambient white light)


@dataclass
class View:
    """The photo cropped around the person and resampled (h,w): what the loss compares against."""

    K: torch.Tensor         # (3,3) intrinsics of the crop
    image: torch.Tensor     # (h,w,3) float in [0,1]
    mask: torch.Tensor      # (h,w) float clothing coverage in [0,1]
    person: torch.Tensor    # (h,w) float person coverage
    size: tuple[int, int]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the crop in the photo (exclusive ends)
    scale: float


def crop_view(obs: Observation, height: int, device: torch.device, dtype=torch.float32) -> View:
    """Crop the photo to the person's box (+8 % margin) and resample it `height` px tall."""
    import cv2
    ys, xs = np.nonzero(obs.person | obs.mask)
    H, W = obs.size
    h0 = ys.max() - ys.min() + 1
    pad = int(round(0.08 * h0))
    x0, x1 = max(0, xs.min() - pad), min(W, xs.max() + 1 + pad)
    y0, y1 = max(0, ys.min() - pad), min(H, ys.max() + 1 + pad)
    s = height / float(y1 - y0)
    w = max(8, int(round((x1 - x0) * s)))
    size = (height, w)

    def rs(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a[y0:y1, x0:x1].astype(np.float32), (w, height), interpolation=cv2.INTER_AREA)

    K = obs.K.copy()
    K[0, 0] *= s
    K[1, 1] *= s
    K[0, 2] = s * (K[0, 2] - x0 + 0.5) - 0.5
    K[1, 2] = s * (K[1, 2] - y0 + 0.5) - 0.5
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return View(K=t(K), image=t(rs(obs.image) / 255.0), mask=t(rs(obs.mask)), person=t(rs(obs.person)),
                size=size, box=(int(x0), int(y0), int(x1), int(y1)), scale=s)


@dataclass
class MeshTerms:
    """Constant tables of the template's mesh for the regularisers (torch, on the device)."""

    faces: torch.Tensor        # (F,3)
    edges: torch.Tensor        # (E,2) unique edges
    rest_len: torch.Tensor     # (E,) template edge lengths
    face_pairs: torch.Tensor   # (P,2) faces sharing an edge
    neighbours: torch.Tensor   # (E2,2) directed edges (i, j), both ways, for Laplacians
    degree: torch.Tensor       # (V,)
    mirror: torch.Tensor       # (M,2) vertex pairs (i, mirror(i)), i < mirror(i)
    ring: torch.Tensor         # (V,) cross-section ring id
    ring_count: torch.Tensor   # (R,) vertices per ring
    normals: torch.Tensor      # (V,3) rest-pose normals of the template
    skirt: "SkirtSides"        # a bridged skirt's sides per leg level (empty off skirts)

    @classmethod
    def build(cls, t: Template, ease: np.ndarray, device: torch.device, dtype=torch.float32) -> "MeshTerms":
        """ease (V,) m: where each vertex starts along its normal (`start_ease`)."""
        f = t.faces
        e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
        face_of = np.repeat(np.arange(len(f))[None], 3, 0).reshape(-1)   # edge k of face i at k*F+i
        key = e[:, 0] * t.num_vertices + e[:, 1]
        order = np.argsort(key, kind="stable")
        ks = key[order]
        same = ks[1:] == ks[:-1]
        pairs = np.stack([face_of[order[:-1][same]], face_of[order[1:][same]]], 1)
        edges = np.unique(e, axis=0)
        nb = np.concatenate([edges, edges[:, ::-1]])
        deg = np.bincount(nb[:, 0], minlength=t.num_vertices).astype(np.float32)
        start = t.rest + ease[:, None] * t.normals
        rest_len = np.linalg.norm(start[edges[:, 0]] - start[edges[:, 1]], axis=1)
        i = np.arange(t.num_vertices)
        m = t.mirror
        mirror = np.stack([i[(m >= 0) & (i < m)], m[(m >= 0) & (i < m)]], 1)
        tt = lambda a, d=torch.long: torch.as_tensor(a, dtype=d, device=device)  # noqa: E731
        return cls(faces=tt(f), edges=tt(edges), rest_len=tt(rest_len, dtype), face_pairs=tt(pairs),
                   neighbours=tt(nb), degree=tt(np.maximum(deg, 1), dtype), mirror=tt(mirror.reshape(-1, 2)),
                   ring=tt(t.ring), ring_count=tt(np.bincount(t.ring).astype(np.float32), dtype),
                   normals=tt(t.normals, dtype), skirt=SkirtSides.build(t, device, dtype))

    def skirt_depth(self, rest: torch.Tensor, ratio: float, flare: float) -> torch.Tensor:
        """rest (V,3) -> scalar (m^2): SkirtSides.depth_deficit, 0 without a skirt."""
        return self.skirt.depth_deficit(rest, ratio, flare)

    def ring_spread(self, d: torch.Tensor) -> torch.Tensor:
        """Mean squared deviation of each vertex's offset along its normal from its ring's mean."""
        on = (d * self.normals).sum(-1)
        mean = torch.zeros_like(self.ring_count).index_add(0, self.ring, on) / self.ring_count
        return (on - mean.index_select(0, self.ring)).pow(2).mean()

    def laplacian(self, x: torch.Tensor) -> torch.Tensor:
        """(V,C) -> (V,C) uniform Laplacian: mean of the neighbours minus the vertex."""
        s = torch.zeros_like(x).index_add(0, self.neighbours[:, 0], x.index_select(0, self.neighbours[:, 1]))
        return s / self.degree.unsqueeze(1) - x


SKIRT_SIDE_COS = 0.7        # a skirt vertex is on a side when its rest normal is this close to +-x or +-z
SKIRT_SIDE_MIN = 3          # a skirt level counts when each of its four sides has this many vertices


@dataclass
class SkirtSides:
    """A bridged skirt's four sides per leg level (rest pose): the outer sides (normal +-x: the
    width the photo shows) and the front and back lines (normal +-z: the depth it hides). K
    vertices on a side, L levels that have all four."""

    vertex: torch.Tensor       # (K,) template vertex
    slot: torch.Tensor         # (K,) level * 4 + side (0 left +x, 1 right -x, 2 front +z, 3 back -z)
    axis: torch.Tensor         # (K,) bool: True where the side is read along z
    count: torch.Tensor        # (L*4,) vertices per slot

    @classmethod
    def build(cls, t: Template, device: torch.device, dtype=torch.float32) -> "SkirtSides":
        lv = t.skirt_level if t.skirt_level is not None else np.full(t.num_vertices, -1)
        n = t.normals
        side = np.select([n[:, 0] > SKIRT_SIDE_COS, n[:, 0] < -SKIRT_SIDE_COS,
                          n[:, 2] > SKIRT_SIDE_COS, n[:, 2] < -SKIRT_SIDE_COS], [0, 1, 2, 3], -1)
        on = (lv >= 0) & (side >= 0)
        levels, level = np.unique(lv[on], return_inverse=True)
        count = np.bincount(level * 4 + side[on], minlength=4 * len(levels)).reshape(-1, 4)
        full = (count >= SKIRT_SIDE_MIN).all(1)        # levels with all four sides
        keep = full[level]
        renum = np.cumsum(full) - 1
        slot = renum[level[keep]] * 4 + side[on][keep]
        tt = lambda a, d=torch.long: torch.as_tensor(a, dtype=d, device=device)  # noqa: E731
        return cls(vertex=tt(np.nonzero(on)[0][keep]), slot=tt(slot), axis=tt(side[on][keep] >= 2, torch.bool),
                   count=tt(count[full].reshape(-1), dtype))

    def extent(self, rest: torch.Tensor) -> torch.Tensor:
        """rest (V,3) -> (L,2): per level the half width (mean x of the left side - mean x of the
        right, / 2) and the half depth (likewise from the front and back lines' z)."""
        p = rest.index_select(0, self.vertex)
        c = torch.where(self.axis, p[:, 2], p[:, 0])
        mean = (torch.zeros_like(self.count).index_add(0, self.slot, c) / self.count.clamp(min=1)).view(-1, 4)
        return torch.stack([mean[:, 0] - mean[:, 1], mean[:, 2] - mean[:, 3]], 1) / 2

    def depth_deficit(self, rest: torch.Tensor, ratio: float, flare: float = 0.0) -> torch.Tensor:
        """rest (V,3) -> scalar (m^2): mean over levels of relu(want - half depth)^2, where a
        level's wanted half depth is `ratio` x its half width, and where it is wider than the
        hips (the median half width of the upper half of the levels) and `flare` > `ratio`,
        `ratio` x the hips' plus `flare` x the width it gains over them: a hanging skirt is about
        as deep as it is wide and flares out nearly alike all round (tuning truth: the depth gains
        0.6-0.85 of the width below the hips), while the legs' stadium the template starts from
        is half as deep. The width is the photo's to set (detached): only the hidden front and
        back lines move."""
        if self.vertex.numel() == 0:
            return rest.new_zeros(())
        half = self.extent(rest)
        width = half[:, 0].detach()
        hips = width[width.shape[0] // 2:].quantile(0.5)   # the upper half's median width
        want = ratio * width + max(flare - ratio, 0.0) * F.relu(width - hips)
        return F.relu(want - half[:, 1]).pow(2).mean()


ARM_REGIONS = tuple(r for group in ("upper_arms", "lower_arms", "hands") for r in REGION_GROUPS[group])


def start_ease(t: Template, o: ReconOptions) -> np.ndarray:
    """(V,) float32 m: the constant ease each template vertex starts at along its normal:
    `start_offset` (`skirt_start_offset` on a template whose legs are bridged: a skirt or dress,
    whose stadium between the legs already adds the volume), blended towards `arm_ease_ratio` x
    that on the arms by the share of the vertex's skin weight on the arm bones (shoulder, elbow,
    wrist, hand joints: no step at the armhole). Sleeves sit closer to the arm than a top to the
    torso (tuning truth: 1-4 cm against 2-6 cm)."""
    arm = region_weights(t.weights)[:, [REGION_NAMES.index(r) for r in ARM_REGIONS]].sum(1)
    ratio = 1.0 + (o.arm_ease_ratio - 1.0) * np.clip(arm, 0.0, 1.0)
    base = o.skirt_start_offset if t.midline is not None else o.start_offset
    return (base * ratio).astype(np.float32)


def skirt_flare_ease(level: np.ndarray, posed: np.ndarray, mask: np.ndarray, K: np.ndarray,
                     reach: float, cap: float) -> np.ndarray:
    """(V,) float32 m of ease added per leg level of a bridged skirt whose outline in the photo
    lies further out than the refinement's offsets move on their own: a flared skirt or dress
    seen from the side stands 20 cm and more in front of and behind the legs.

    level (V,) the template's skirt_level (-1 off the skirt); posed (V,3) camera-space start
    positions; mask (H,W) bool clothing in the view with intrinsics K (3,3); reach, cap m. Per
    level, on the image row through its vertices, the run of clothing pixels holding the level's
    centre reaches past the level's projected extent by e_left and e_right px; the level starts
    mean(e_left, e_right) (m at the level's depth) less `reach` further out, at most `cap`, all
    round (the refinement swells a cross-section evenly). A level whose row leaves the image or
    whose centre is not clothing keeps its ease.
    """
    extra = np.zeros(len(level), np.float32)
    for lv in np.unique(level[level >= 0]):
        idx = np.nonzero(level == lv)[0]
        p = posed[idx]
        if (p[:, 2] <= 0).any():
            continue
        u = p[:, 0] / p[:, 2] * K[0, 0] + K[0, 2]
        y = int(round(float((p[:, 1] / p[:, 2] * K[1, 1] + K[1, 2]).mean())))
        x0, x1 = float(u.min()), float(u.max())
        run = mask_run(mask, int(round(0.5 * (x0 + x1))), y)   # the clothing run holding the centre
        if run is None:
            continue
        a, b = run
        px = 0.5 * (max(0.0, x0 - a) + max(0.0, b - x1))
        extra[idx] = float(np.clip(px * float(p[:, 2].mean()) / K[0, 0] - reach, 0.0, cap))
    return extra


@dataclass
class Refined:
    """What refinement found: rest-pose vertices, camera-space vertices, albedo, light."""

    rest: np.ndarray          # (V,3) float32
    posed: np.ndarray         # (V,3) float32 camera space of the photo
    albedo: np.ndarray        # (V,3) float32 in [0,1]
    sh: np.ndarray            # (9,) float32
    offsets: np.ndarray       # (V,3) float32 rest-space offsets from the template start
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class _Problem:
    """Everything a refinement step needs, on one device (no host syncs inside `loss`)."""

    def __init__(self, obs: Observation, body: BodyModel, t: Template, view: View, o: ReconOptions) -> None:
        dev, dt = view.K.device, view.K.dtype
        self.o, self.view = o, view
        betas, go, bp, tr = obs.pose_tensors(dev)
        with torch.no_grad():
            out = body.forward(betas, go, bp, tr)
            self.transforms = body.joint_transforms(betas, torch.cat([go, bp], 1))
            rest_body = body.shaped(betas)[0]
            lbs_only = skin_points(rest_body, body.weights, self.transforms) + tr[:, None]
            bv = torch.as_tensor(t.body_vertex, device=dev)
            self.correctives = (out.vertices - lbs_only)[0].index_select(0, bv)
            self.body_verts = out.vertices[0]
            self.body_faces = body.faces_t.to(dev)
            self.body_normals = vertex_normals(self.body_verts, self.body_faces)
        self.transl = tr
        self.weights = torch.as_tensor(t.weights, device=dev, dtype=dt)
        ease = start_ease(t, o)
        start = lambda e: torch.as_tensor(t.rest + e[:, None] * t.normals, device=dev, dtype=dt)  # noqa: E731
        if t.skirt_level is not None and o.skirt_flare_max > 0:     # once, before the steps
            with torch.no_grad():
                posed = self.posed(start(ease))
            ease = ease + skirt_flare_ease(t.skirt_level, posed.cpu().numpy(), view.mask.cpu().numpy() > 0.5,
                                           view.K.cpu().numpy(), o.skirt_flare_reach, o.skirt_flare_max)
        self.terms = MeshTerms.build(t, ease, dev, dt)
        self.start = start(ease)
        self.nearest = bv.clone()
        # (V,3) 0 where an offset may not move (x of the midline vertices of a bridged skirt)
        self.free = torch.ones(t.num_vertices, 3, device=dev, dtype=dt)
        if t.midline is not None:
            self.free[torch.as_tensor(t.midline, device=dev), 0] = 0.0
        self.soft = SoftOptions(sigma=o.sigma, cutoff=1e-6)
        self.occluded = torch.zeros(view.size, device=dev, dtype=dt)

    def anneal(self, i: int, n: int) -> None:
        """Soft silhouette sharpness of step i of n: sigma -> sigma_final geometrically."""
        f = i / max(1, n - 1)
        self.soft = SoftOptions(sigma=self.o.sigma * (self.o.sigma_final / self.o.sigma) ** f, cutoff=1e-6)

    def rest(self, raw: torch.Tensor) -> torch.Tensor:
        """Rest positions from the raw parameters: smoothed on the mesh (a preconditioner: one
        step moves a neighbourhood, not a lone vertex), then bounded."""
        d = raw
        for _ in range(self.o.smooth_passes):
            d = d + 0.5 * self.terms.laplacian(d)
        d = d * self.free
        m = self.o.max_offset
        return self.start + m * torch.tanh(d / m)

    def posed(self, rest: torch.Tensor) -> torch.Tensor:
        return skin_points(rest[None], self.weights, self.transforms)[0] + self.correctives + self.transl[0]

    @torch.no_grad()
    def update(self, posed: torch.Tensor) -> None:
        """Refresh what the body hides in front of the garment and each vertex's nearest body vertex."""
        view, nb = self.view, self.body_verts.shape[0]
        verts = torch.cat([self.body_verts, posed])
        faces = torch.cat([self.body_faces, self.terms.faces + nb])
        both = rasterize(verts, faces, view.K, view.size).face_id[0]
        garment = rasterize(posed, self.terms.faces, view.K, view.size).mask[0]
        self.occluded = ((both >= 0) & (both < self.body_faces.shape[0]) & garment).to(self.occluded.dtype)
        tree = cKDTree(self.body_verts.cpu().numpy())
        self.nearest = torch.as_tensor(tree.query(posed.cpu().numpy())[1], device=posed.device)

    def loss(self, raw: torch.Tensor, albedo: torch.Tensor, sh: torch.Tensor) -> tuple[torch.Tensor, dict]:
        o, view, T = self.o, self.view, self.terms
        rest = self.rest(raw)
        posed = self.posed(rest)
        alpha = soft_silhouette(posed, T.faces, view.K, view.size, self.soft)[0] * (1 - self.occluded)
        inter = (alpha * view.mask).sum()
        iou = inter / (alpha.sum() + view.mask.sum() - inter).clamp(min=1e-6)

        frags = rasterize(posed, T.faces, view.K, view.size)
        normals = vertex_normals(posed, T.faces)
        attrs = interpolate(frags, T.faces, torch.cat([albedo.clamp(0, 1), normals], -1))[0]
        n = F.normalize(attrs[..., 3:], dim=-1, eps=1e-8)
        colour = attrs[..., :3] * sh_shading(n, sh).clamp(min=0).unsqueeze(-1)
        seen = frags.mask[0].to(alpha.dtype) * (1 - self.occluded) * view.mask
        l1 = ((colour - view.image).abs().sum(-1) * seen).sum() / seen.sum().clamp(min=1.0) / 3

        d = rest - self.start
        lap = T.laplacian(d).pow(2).sum(-1).mean()
        e = rest.index_select(0, T.edges[:, 0]) - rest.index_select(0, T.edges[:, 1])
        edge = ((e.norm(dim=-1) - T.rest_len) / T.rest_len.clamp(min=1e-4)).pow(2).mean()
        fn = _face_normals(rest, T.faces)
        flat = (1 - (fn.index_select(0, T.face_pairs[:, 0]) * fn.index_select(0, T.face_pairs[:, 1])).sum(-1)).mean()
        flip = torch.tensor([-1.0, 1.0, 1.0], dtype=d.dtype, device=d.device)
        sym = (d.index_select(0, T.mirror[:, 0]) - d.index_select(0, T.mirror[:, 1]) * flip).pow(2).sum(-1)
        sym = sym.mean() if T.mirror.shape[0] else d.new_zeros(())
        deform = d.pow(2).sum(-1).mean()
        ring = T.ring_spread(d)
        skirt = T.skirt_depth(rest, o.skirt_depth_ratio, o.skirt_flare_depth)
        bn = self.body_normals.index_select(0, self.nearest)
        gap = ((posed - self.body_verts.index_select(0, self.nearest)) * bn).sum(-1)
        pen = F.relu(o.clearance - gap).pow(2).mean()
        a_smooth = T.laplacian(albedo).abs().sum(-1).mean()
        light = sh[1:].pow(2).sum() + (sh[0] - SH_DC).pow(2) * 0.1
        total = (o.w_iou * (1 - iou) + o.w_l1 * l1 + o.w_laplacian * lap + o.w_edge * edge + o.w_flat * flat
                 + o.w_symmetry * sym + o.w_deform * deform + o.w_penetration * pen + o.w_ring * ring
                 + o.w_skirt_depth * skirt + o.w_albedo_smooth * a_smooth + o.w_light_prior * light)
        parts = {"total": total, "iou": iou, "l1": l1, "laplacian": lap, "edge": edge, "flat": flat,
                 "symmetry": sym, "deform": deform, "penetration": pen, "ring": ring,
                 "skirt_depth": skirt}
        return total, {"posed": posed, "rest": rest, "parts": parts}


def _face_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    a, b, c = (v.index_select(0, faces[:, k]) for k in range(3))
    return F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1, eps=1e-12)


@torch.no_grad()
def initial_albedo(posed: torch.Tensor, faces: torch.Tensor, view: View) -> torch.Tensor:
    """(V,3) image colour at each vertex seen in the crop; the mean seen colour elsewhere."""
    frags = rasterize(posed, faces, view.K, view.size)
    uv = (posed[:, :2] / posed[:, 2:3]) * torch.stack([view.K[0, 0], view.K[1, 1]]) + view.K[:2, 2]
    h, w = view.size
    px = uv.round().long()
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    pxc = torch.stack([px[:, 0].clamp(0, w - 1), px[:, 1].clamp(0, h - 1)], 1)
    depth = frags.depth[0][pxc[:, 1], pxc[:, 0]]
    seen = inside & (posed[:, 2] <= depth + 0.01) & (view.mask[pxc[:, 1], pxc[:, 0]] > 0.5)
    col = view.image[pxc[:, 1], pxc[:, 0]]
    mean = (col * seen[:, None]).sum(0) / seen.sum().clamp(min=1)
    return torch.where(seen[:, None], col, mean.expand_as(col)).clone()


def refine(obs: Observation, body: BodyModel, template: Template, options: ReconOptions,
           step: Callable[[int, int], None] | None = None,
           preview: Callable[[np.ndarray], object] | None = None) -> Refined:
    """Optimise offsets, albedo and light (Adam, `options.steps` steps). `step(i, n)` is called
    before each step (it may raise to cancel); `preview(rgb)` gets a render now and then."""
    t0 = time.perf_counter()
    torch.manual_seed(options.seed)
    dev = body.device
    view = crop_view(obs, options.render_height, dev)
    prob = _Problem(obs, body, template, view, options)
    raw = torch.zeros(template.num_vertices, 3, device=dev, requires_grad=True)
    with torch.no_grad():
        posed0 = prob.posed(prob.rest(raw))
    albedo = initial_albedo(posed0, prob.terms.faces, view).requires_grad_(True)
    sh = torch.zeros(SH_COUNT, device=dev)
    sh[0] = SH_DC
    sh.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [raw], "lr": options.lr_offsets},
                            {"params": [albedo], "lr": options.lr_albedo},
                            {"params": [sh], "lr": options.lr_light}])
    history: list[dict] = []
    posed = posed0
    for i in range(options.steps):
        if step is not None:
            step(i, options.steps)
        prob.anneal(i, options.steps)
        if i % options.occlusion_every == 0:
            prob.update(posed.detach())
        opt.zero_grad(set_to_none=True)
        total, aux = prob.loss(raw, albedo, sh)
        total.backward()
        opt.step()
        posed = aux["posed"]
        if i % options.occlusion_every == 0 or i == options.steps - 1:
            history.append({"step": i, **{k: round(float(v.detach()), 5) for k, v in aux["parts"].items()}})
            if preview is not None:
                preview(render_preview(view, posed.detach(), prob.terms.faces))
    with torch.no_grad():
        rest = prob.rest(raw)
        posed = prob.posed(rest)
    return Refined(rest=rest.cpu().numpy().astype(np.float32), posed=posed.cpu().numpy().astype(np.float32),
                   albedo=albedo.detach().clamp(0, 1).cpu().numpy().astype(np.float32),
                   sh=sh.detach().cpu().numpy().astype(np.float32),
                   offsets=(rest - prob.start).cpu().numpy().astype(np.float32),
                   history=history, seconds=time.perf_counter() - t0)


@torch.no_grad()
def render_preview(view: View, posed: torch.Tensor, faces: torch.Tensor) -> np.ndarray:
    """(h,w,3) uint8: the crop, dimmed, with the garment's silhouette tinted green."""
    m = rasterize(posed, faces, view.K, view.size).mask[0, ..., None].to(view.image.dtype)
    tint = torch.tensor([0.2, 0.9, 0.3], device=view.image.device, dtype=view.image.dtype)
    img = view.image * (1 - 0.5 * m) + 0.5 * m * tint
    return (img.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
