"""Learned, feed-forward clothing reconstruction (after 3D Magic Mirror, arXiv 2204.13096).

One forward pass of a small CNN on a 4-channel 64x128 crop (RGB with the background removed, then
the clothing mask) predicts, per image:

* camera: azimuth (as cos/sin, any angle), elevation (+-15 deg), distance and a 2-D image offset;
* shape: per-vertex offsets of the garment template (learned_template.py), which an EM step moves
  to the mean prediction every `em_every` epochs;
* texture: a texture flow, where in the input crop each texel of the UV texture is sampled (the
  template's UVs are shared by front and back, so the back is the mirrored front);
* light: 9 greyscale spherical-harmonic coefficients (the texture is shaded by them).

Training is self-supervised through the soft rasterizer (render/soft.py): 1 - mask IoU of the
soft silhouette, L1 of the shaded render on the input's mask, and the regularisers (Laplacian of
the offsets, flatness and edge lengths relative to the template, left/right symmetry, deformation
size), plus the interpolation consistency: attributes of two images are mixed with random weights
and a random camera, rendered, re-encoded, and the encoder must give back what was rendered.

API: `train(inputs, out, options)`, `load_model(path=None)`, `predict(model, rgb, mask)`.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.subject import MAX_IMAGE_PIXELS
from ..errors import InputError
from ..fileio import atomic_path
from ..render.rasterizer import interpolate, rasterize
from ..render.soft import SH_COUNT, SoftOptions, sample_texture, sh_basis, soft_silhouette, vertex_normals
from .datasets import crop_input
from .learned_template import TEMPLATE_KEYS, TemplateMesh

MODEL_FORMAT = "pointwear-recon-learned"
MODEL_VERSION = 1
DEFAULT_MODEL = Path(__file__).parent / "data" / "recon_learned.pt"
MAX_MODEL_BYTES = 256 << 20
MAX_TEMPLATE_VERTICES = 20_000
CAMERA_WIDTH = 6            # cos az, sin az, elevation (rad), distance, offset x, offset y
SH_FLAT = 1.0 / 0.282095    # first SH coefficient giving shading 1


@dataclass(frozen=True)
class LearnOptions:
    """Everything tunable about the learned path (stored in the model file)."""
    height: int = 128                  # network input, pixels (the paper's Market setting)
    width: int = 64
    texture_height: int = 128          # texture sampled at training time
    texture_width: int = 64
    channels: int = 16                 # first conv width (doubles per level, capped at 8x)
    hidden: int = 256                  # latent width
    focal: float = 1.875               # focal length / input height
    distance: float = 3.0              # metres, mean camera distance
    distance_log_range: float = 0.3    # distance = distance * exp(+-this)
    elevation_max_deg: float = 15.0
    offset_max: float = 0.3            # image offset, fraction of the half-size
    flow_max: float = 0.5              # texture flow residual, in grid units (2 = whole image)
    sigma: float = 0.5                 # soft rasterizer softness, px^2 of the silhouette image
    cutoff: float = 1e-3
    silhouette_scale: int = 2          # the soft silhouette is rendered at 1/this of the input size
    batch: int = 12
    lr: float = 1.5e-3
    steps: int = 1000
    w_iou: float = 2.0
    w_l1: float = 1.0
    w_laplacian: float = 0.01
    w_flat: float = 0.01
    w_symmetry: float = 0.1
    w_edge: float = 0.001
    w_deform: float = 0.1
    w_ic: float = 1.0
    ic_every: int = 2                  # steps between interpolation-consistency terms (it costs a pass)
    em_every: int = 2                  # epochs between template updates
    em_step: float = 0.1
    em_clip: float = 0.05              # metres per update
    em_smooth: float = 0.5
    flip: bool = True                  # random left/right flips of the input
    checkpoint_every: int = 100        # steps
    seed: int = 0

    def check(self) -> "LearnOptions":
        bad = [f.name for f in fields(self) if isinstance(getattr(self, f.name), (int, float))
               and not isinstance(getattr(self, f.name), bool) and getattr(self, f.name) < 0]
        if bad or not (16 <= self.height <= 512 and 8 <= self.width <= 512 and self.batch >= 2
                       and 8 <= self.texture_height <= 2048 and 8 <= self.texture_width <= 2048
                       and self.height % 32 == 0 and self.width % 32 == 0 and self.em_every >= 1):
            raise InputError(f"learned reconstruction options out of range ({bad or 'sizes'}): {self}")
        return self

    @property
    def focal_px(self) -> float:
        return self.focal * self.height

    def K(self, device=None, dtype=torch.float32, scale: int = 1) -> Tensor:
        """(3,3) intrinsics of the network input (divided by `scale`: a smaller image of the same view)."""
        f, w, h = self.focal_px / scale, self.width // scale, self.height // scale
        return torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], dtype=dtype, device=device)


@dataclass
class Attributes:
    """Per-image predictions: camera (B,6), offsets (B,V,3), flow (B,Ht,Wt,2) grid into the input
    crop, texture (B,3,Ht,Wt) with its sampled mask (B,1,Ht,Wt), light (B,9)."""
    camera: Tensor
    offsets: Tensor
    flow: Tensor
    texture: Tensor
    texture_mask: Tensor
    light: Tensor


# ------------------------------------------------------------------------------------------------
# Mesh topology terms


def mesh_terms(faces: Tensor, n: int) -> dict[str, Tensor]:
    """Unique edges (E,2), the degree of each vertex (V,), and the face pairs sharing an edge (P,2)."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = torch.minimum(e[:, 0], e[:, 1]) * n + torch.maximum(e[:, 0], e[:, 1])
    uniq, inv = torch.unique(key, return_inverse=True)
    edges = torch.stack([uniq // n, uniq % n], 1)
    degree = torch.zeros(n).index_add_(0, edges.reshape(-1), torch.ones(edges.numel()))
    face_of = torch.arange(len(faces)).repeat(3)
    order = torch.argsort(inv, stable=True)
    si, sf = inv[order], face_of[order]
    same = si[1:] == si[:-1]
    pairs = torch.stack([sf[:-1][same], sf[1:][same]], 1)
    return {"edges": edges, "degree": degree.clamp(min=1), "face_pairs": pairs}


def laplacian(x: Tensor, edges: Tensor, degree: Tensor) -> Tensor:
    """Uniform Laplacian (mean of neighbours minus self) of (B,V,C) per-vertex values."""
    a, b = edges[:, 0], edges[:, 1]
    s = torch.zeros_like(x).index_add(1, a, x[:, b]).index_add(1, b, x[:, a])
    return s / degree.to(x.dtype)[None, :, None] - x


def face_normals(v: Tensor, faces: Tensor) -> Tensor:
    """(B,F,3) unit face normals."""
    v0, v1, v2 = (v[:, faces[:, k]] for k in range(3))
    return F.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1, eps=1e-12)


# ------------------------------------------------------------------------------------------------
# The network


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.LeakyReLU(0.2))


class ReconNet(nn.Module):
    """Shared conv encoder + camera, shape, texture-flow and light heads; the template (EM-updated)
    and its topology are buffers, so a model file is self-contained."""

    def __init__(self, template: dict[str, Tensor], options: LearnOptions) -> None:
        super().__init__()
        self.options = o = options
        for k in TEMPLATE_KEYS:
            self.register_buffer(k, template[k].clone())
        for k, v in mesh_terms(self.faces, len(self.posed)).items():
            self.register_buffer(k, v, persistent=False)
        self.register_buffer("flow_base", self._flow_base(), persistent=False)
        c = o.channels
        widths = [c, 2 * c, 4 * c, 8 * c, 8 * c]
        layers, cin = [], 4
        for w in widths:
            layers.append(_block(cin, w))
            cin = w
        self.backbone = nn.Sequential(*layers)
        cells = (o.height // 32) * (o.width // 32)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(cin * cells, o.hidden), nn.LeakyReLU(0.2),
                                nn.Linear(o.hidden, o.hidden), nn.LeakyReLU(0.2))
        V = len(self.posed)
        self.camera_head = nn.Linear(o.hidden, CAMERA_WIDTH)
        self.shape_head = nn.Linear(o.hidden, V * 3)
        self.light_head = nn.Linear(o.hidden, SH_COUNT)
        self.flow_fc = nn.Linear(o.hidden, 4 * c * (o.height // 32) * (o.width // 32))
        self.flow_dec = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(4 * c, 2 * c, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(2 * c, c, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(c, 2, 3, 1, 1))
        for head in (self.camera_head, self.shape_head, self.light_head, self.flow_dec[-1]):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.camera_head.bias[0] = 1.0

    def _flow_base(self) -> Tensor:
        """(Ht,Wt,2) grid: where each texel of the planar UV map lands in the input crop when the
        template is seen from the front at the mean distance (the flow at initialisation)."""
        o = self.options
        Ht, Wt = o.texture_height, o.texture_width
        lo, hi = self.posed[:, :2].amin(0), self.posed[:, :2].amax(0)
        u = (torch.arange(Wt) + 0.5) / Wt
        v = 1 - (torch.arange(Ht) + 0.5) / Ht
        x = lo[0] + u * (hi[0] - lo[0])
        y = lo[1] + v * (hi[1] - lo[1])
        f = o.focal_px
        px = (o.width - 1) / 2 + f * x / o.distance
        py = (o.height - 1) / 2 - f * y / o.distance
        gx, gy = (px + 0.5) / o.width * 2 - 1, (py + 0.5) / o.height * 2 - 1
        return torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1).float()

    def camera(self, raw: Tensor) -> Tensor:
        """(B,6) raw head output -> (cos az, sin az, elevation, distance, offset x, offset y)."""
        o = self.options
        cs = F.normalize(raw[:, :2] + torch.tensor([1e-3, 0.0], device=raw.device, dtype=raw.dtype), dim=1)
        elev = math.radians(o.elevation_max_deg) * torch.tanh(raw[:, 2:3])
        dist = o.distance * torch.exp(o.distance_log_range * torch.tanh(raw[:, 3:4]))
        off = o.offset_max * torch.tanh(raw[:, 4:6])
        return torch.cat([cs, elev, dist, off], 1)

    def forward(self, x: Tensor) -> Attributes:
        """x (B,4,H,W) in [0,1] -> Attributes."""
        o = self.options
        h = self.fc(self.backbone(x))
        B = x.shape[0]
        offsets = self.shape_head(h).view(B, -1, 3)
        light = self.light_head(h) + torch.tensor([SH_FLAT] + [0.0] * (SH_COUNT - 1), device=x.device,
                                                  dtype=x.dtype)
        coarse = self.flow_fc(h).view(B, 4 * o.channels, o.height // 32, o.width // 32)
        res = self.flow_dec(coarse)
        res = F.interpolate(res, size=(o.texture_height, o.texture_width), mode="bilinear", align_corners=False)
        flow = self.flow_base.to(x.dtype)[None] + o.flow_max * torch.tanh(res).permute(0, 2, 3, 1)
        tex = F.grid_sample(x, flow, mode="bilinear", padding_mode="zeros", align_corners=False)
        return Attributes(self.camera(self.camera_head(h)), offsets, flow, tex[:, :3], tex[:, 3:], light)

    def vertices(self, offsets: Tensor) -> Tensor:
        """(B,V,3) object-space vertices of the template plus offsets."""
        return self.posed.to(offsets.dtype)[None] + offsets


# ------------------------------------------------------------------------------------------------
# Camera and rendering


def camera_pose(camera: Tensor, options: LearnOptions) -> tuple[Tensor, Tensor]:
    """(B,6) camera -> rotation (B,3,3) and translation (B,3) from object space (SMPL axes) to the
    OpenCV camera of the network input: turn by the azimuth about Y, tilt by the elevation about
    X, flip to y down / z forward, move to the distance and the image offset."""
    c, s, e, d, bx, by = camera.unbind(1)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    ce, se = torch.cos(e), torch.sin(e)
    ry = torch.stack([c, zero, s, zero, one, zero, -s, zero, c], 1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, ce, -se, zero, se, ce], 1).view(-1, 3, 3)
    flip = torch.tensor([1.0, -1.0, -1.0], device=camera.device, dtype=camera.dtype)
    rot = flip[None, :, None] * (rx @ ry)
    f = options.focal_px
    t = torch.stack([bx * d * (options.width / 2) / f, by * d * (options.height / 2) / f, d], 1)
    return rot, t


def to_camera(verts: Tensor, camera: Tensor, options: LearnOptions) -> Tensor:
    """(B,V,3) object space -> camera space."""
    rot, t = camera_pose(camera, options)
    return verts @ rot.transpose(1, 2) + t[:, None]


def shade(frags, faces: Tensor, verts_cam: Tensor, uv: Tensor, texture: Tensor, light: Tensor) -> Tensor:
    """(B,3,H,W) textured, SH-shaded colours on the fragments (zero where empty)."""
    tex_uv = interpolate(frags, faces, uv)                                      # (B,H,W,2)
    colour = sample_texture(texture, tex_uv)                                    # (B,H,W,3)
    normals = F.normalize(interpolate(frags, faces, vertex_normals(verts_cam, faces)), dim=-1, eps=1e-12)
    # Camera axes are y down, z forward: the SH basis is evaluated in the object-like frame
    # (x right, y up, z towards the camera) so the light does not depend on the camera flip.
    n_view = normals * torch.tensor([1.0, -1.0, -1.0], device=normals.device, dtype=normals.dtype)
    shading = (sh_basis(n_view) * light[:, None, None, :]).sum(-1, keepdim=True)
    hit = frags.mask[..., None].to(colour.dtype)
    return (colour * shading * hit).permute(0, 3, 1, 2)


def render(model: ReconNet, verts: Tensor, camera: Tensor, texture: Tensor, light: Tensor,
           soft: bool = True) -> tuple[Tensor, Tensor]:
    """Render object-space vertices (B,V,3) in the network's view: colour (B,3,H,W) (hard
    visibility, differentiable barycentrics) and the silhouette: soft, with gradients outside the
    mesh, at 1/silhouette_scale of the size when `soft` (the soft rasterizer's cost grows with the
    pixels each face reaches), else the hard coverage (B,H,W)."""
    o = model.options
    vc = to_camera(verts, camera, o)
    frags = rasterize(vc, model.faces, o.K(verts.device, verts.dtype), (o.height, o.width))
    rgb = shade(frags, model.faces, vc, model.uv, texture, light)
    if not soft:
        return rgb, frags.mask.to(verts.dtype)
    k = o.silhouette_scale
    alpha = soft_silhouette(vc, model.faces, o.K(verts.device, verts.dtype, k), (o.height // k, o.width // k),
                            SoftOptions(sigma=o.sigma, cutoff=o.cutoff))
    return rgb, alpha


# ------------------------------------------------------------------------------------------------
# Losses


def mask_iou_loss(alpha: Tensor, mask: Tensor) -> Tensor:
    """1 - soft IoU, mean over the batch; alpha, mask (B,H,W)."""
    inter = (alpha * mask).flatten(1).sum(1)
    union = (alpha + mask - alpha * mask).flatten(1).sum(1)
    return (1 - inter / union.clamp(min=1e-6)).mean()


def regularisers(model: ReconNet, offsets: Tensor) -> dict[str, Tensor]:
    """Laplacian, flatness, symmetry, edge and deformation terms of (B,V,3) offsets."""
    verts = model.vertices(offsets)
    base = model.posed.to(offsets.dtype)[None]
    a, b = model.edges[:, 0], model.edges[:, 1]
    length = (verts[:, a] - verts[:, b]).norm(dim=-1)
    length0 = (base[:, a] - base[:, b]).norm(dim=-1)
    p, q = model.face_pairs[:, 0], model.face_pairs[:, 1]
    n, n0 = face_normals(verts, model.faces), face_normals(base, model.faces)
    cos, cos0 = (n[:, p] * n[:, q]).sum(-1), (n0[:, p] * n0[:, q]).sum(-1)
    mirrored = offsets[:, model.mirror] * torch.tensor([-1.0, 1.0, 1.0], device=offsets.device, dtype=offsets.dtype)
    return {
        "laplacian": laplacian(offsets, model.edges, model.degree).square().sum(-1).mean(),
        "flat": (cos - cos0).square().mean(),
        "symmetry": (offsets - mirrored).square().sum(-1).mean(),
        "edge": ((length - length0) / length0.clamp(min=1e-6)).square().mean(),
        "deform": offsets.square().sum(-1).mean(),
    }


def random_cameras(B: int, options: LearnOptions, like: Tensor) -> Tensor:
    """(B,6) cameras drawn uniformly from the ranges the camera head can give."""
    r = torch.rand(B, 5, device=like.device, dtype=like.dtype)
    az = (r[:, 0] * 2 - 1) * math.pi
    elev = (r[:, 1] * 2 - 1) * math.radians(options.elevation_max_deg)
    dist = options.distance * torch.exp((r[:, 2] * 2 - 1) * options.distance_log_range)
    off = (r[:, 3:5] * 2 - 1) * options.offset_max * 0.5
    return torch.cat([torch.stack([torch.cos(az), torch.sin(az), elev, dist], 1), off], 1)


def interpolation_consistency(model: ReconNet, att: Attributes) -> Tensor:
    """Mix the attributes of image i and i+1 with random weights, render them from a random
    camera (no gradient through the render), re-encode: the encoder must return the mix."""
    o = model.options
    B = att.offsets.shape[0]
    with torch.no_grad():
        w = torch.rand(B, 3, device=att.offsets.device, dtype=att.offsets.dtype)
        mix = lambda t, k: w[:, k].view(-1, *[1] * (t.dim() - 1)) * t + (1 - w[:, k].view(-1, *[1] * (t.dim() - 1))) * t.roll(1, 0)  # noqa: E731
        offsets, texture, light = mix(att.offsets, 0), mix(att.texture, 1), mix(att.light, 2)
        camera = random_cameras(B, o, att.offsets)
        rgb, alpha = render(model, model.vertices(offsets), camera, texture, light, soft=False)
        x = torch.cat([rgb.clamp(0, 1), alpha[:, None]], 1)
    again = model(x)
    seen = again.texture_mask
    cam_err = (again.camera - camera).abs()
    cam_err = cam_err * torch.tensor([1, 1, 1, 1 / o.distance, 1, 1], device=x.device, dtype=x.dtype)
    return (cam_err.mean() + (again.offsets - offsets).abs().mean() + (again.light - light).abs().mean()
            + ((again.texture - texture).abs() * seen).sum() / (3 * seen.sum()).clamp(min=1.0))


def step_loss(model: ReconNet, x: Tensor, with_ic: bool = True) -> tuple[Tensor, dict[str, Tensor], Attributes]:
    """Total loss of a batch x (B,4,H,W) and its terms (detached tensors, no host sync); the
    interpolation consistency only `with_ic`."""
    o = model.options
    att = model(x)
    rgb, alpha = render(model, model.vertices(att.offsets), att.camera, att.texture, att.light)
    mask = x[:, 3]
    k = o.silhouette_scale
    terms = {"iou": mask_iou_loss(alpha, F.avg_pool2d(mask[:, None], k)[:, 0] if k > 1 else mask),
             "l1": ((rgb - x[:, :3]).abs().sum(1) * mask).flatten(1).sum(1).div(mask.flatten(1).sum(1).clamp(min=1)).mean() / 3}
    terms.update(regularisers(model, att.offsets))
    if o.w_ic > 0 and with_ic:
        terms["ic"] = interpolation_consistency(model, att)
    weights = {"iou": o.w_iou, "l1": o.w_l1, "laplacian": o.w_laplacian, "flat": o.w_flat, "symmetry": o.w_symmetry,
               "edge": o.w_edge, "deform": o.w_deform, "ic": o.w_ic}
    total = sum(weights[k] * v for k, v in terms.items())
    return total, {k: v.detach() for k, v in terms.items()}, att


# ------------------------------------------------------------------------------------------------
# EM template update


class TemplateEM:
    """Running mean of the predicted offsets (on the device, no sync) and the template update."""

    def __init__(self, model: ReconNet, step: float) -> None:
        self.sum = torch.zeros_like(model.posed)
        self.count = 0
        self.step = step

    def add(self, offsets: Tensor) -> None:
        self.sum += offsets.detach().sum(0)
        self.count += offsets.shape[0]

    def update(self, model: ReconNet) -> None:
        """Move the template by em_step * the smoothed, symmetric, clipped mean offset and take the
        same amount off the shape head's bias, so predictions are unchanged and the deformation
        terms measure the distance from the moved template."""
        if self.count == 0:
            return
        o = model.options
        with torch.no_grad():
            d = self.sum / self.count
            d = d + o.em_smooth * laplacian(d[None], model.edges, model.degree)[0]
            flip = torch.tensor([-1.0, 1.0, 1.0], device=d.device, dtype=d.dtype)
            d = 0.5 * (d + d[model.mirror] * flip)
            d = self.step * d.clamp(-o.em_clip, o.em_clip)
            model.posed += d
            model.shape_head.bias -= d.reshape(-1)
        self.sum.zero_()
        self.count = 0
        self.step *= 0.99


# ------------------------------------------------------------------------------------------------
# Model files


def _template_from(model: ReconNet) -> dict[str, Tensor]:
    return {k: getattr(model, k).detach().cpu() for k in TEMPLATE_KEYS}


def save_checkpoint(path: Path, model: ReconNet, extra: dict | None = None, half: bool = False) -> Path:
    """Write a model file atomically: format, options, template, weights (+ training state)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in TEMPLATE_KEYS}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    blob = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "options": asdict(model.options),
            "template": _template_from(model), "state": state}
    blob.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def _read_blob(path: Path) -> dict:
    if not path.is_file():
        raise InputError("model file does not exist", file=path, field="model")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise InputError(f"model file is {size} bytes, over {MAX_MODEL_BYTES}", file=path, field="model")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated / foreign file
        raise InputError(f"cannot read model file ({type(exc).__name__}: {str(exc)[:200]})", file=path,
                         field="model", hint="train it again with `pointwear train-recon` or reinstall") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise InputError(f"not a {MODEL_FORMAT} model file", file=path, field="format")
    if blob.get("version") != MODEL_VERSION:
        raise InputError(f"model file version {blob.get('version')!r}, expected {MODEL_VERSION}", file=path,
                         field="version")
    return blob


def _model_from_blob(blob: dict, path: Path, device: torch.device | str) -> ReconNet:
    try:
        known = {f.name for f in fields(LearnOptions)}
        options = LearnOptions(**{k: v for k, v in dict(blob["options"]).items() if k in known}).check()
        template = {k: blob["template"][k] for k in TEMPLATE_KEYS}
        V = len(template["posed"])
        if not 3 <= V <= MAX_TEMPLATE_VERTICES or template["faces"].dim() != 2 or template["faces"].shape[1] != 3:
            raise ValueError(f"template of {V} vertices")
        if int(template["faces"].min()) < 0 or int(template["faces"].max()) >= V:
            raise ValueError("template faces index outside its vertices")
        model = ReconNet(template, options)
        state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()}
        model.load_state_dict({**state, **template}, strict=True)
    except InputError as exc:
        raise InputError(exc.message, file=path, field="options") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise InputError(f"model file is malformed ({type(exc).__name__}: {str(exc)[:200]})", file=path,
                         field="model", hint="train it again with `pointwear train-recon` or reinstall") from None
    return model.to(device).eval()


def load_model(path: str | Path | None = None, device: torch.device | str = "cpu") -> ReconNet:
    """The learned reconstruction model from `path` (default: the weights shipped in the package).
    InputError naming the file when it is missing, truncated, foreign or inconsistent."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    return _model_from_blob(_read_blob(path), path, device)


# ------------------------------------------------------------------------------------------------
# Training


def _batches(n: int, batch: int, generator: torch.Generator):
    """Endless (epoch, index tensor) of shuffled batches; the last short batch of an epoch is dropped."""
    epoch = 0
    while True:
        perm = torch.randperm(n, generator=generator)
        for k in range(0, n - batch + 1, batch):
            yield epoch, perm[k:k + batch]
        epoch += 1


def _augment(x: Tensor, flip: bool) -> Tensor:
    """Random left/right flips, decided on the device (no host sync)."""
    if not flip:
        return x
    pick = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(pick, x.flip(-1), x)


def train(inputs: Tensor, out: str | Path, options: LearnOptions, template: TemplateMesh | None = None,
          device: torch.device | str = "cpu", resume: bool = True,
          progress: Callable[[str, int, int], None] | None = None,
          log: Callable[[int, dict[str, float]], None] | None = None, max_seconds: float | None = None) -> dict:
    """Train on (N,4,H,W) uint8 inputs (datasets.build_inputs) up to options.steps steps (or until
    max_seconds have passed), writing the checkpoint `out` every options.checkpoint_every steps and
    at the end. With `resume` an existing `out` is continued (its options win, but for `steps` and `lr`).
    Returns a report with the loss history."""
    out = Path(out)
    options = options.check()
    if inputs.dim() != 4 or inputs.shape[1] != 4 or tuple(inputs.shape[2:]) != (options.height, options.width):
        raise InputError(f"inputs must be (N,4,{options.height},{options.width}), got {tuple(inputs.shape)}")
    if inputs.shape[0] < options.batch:
        raise InputError(f"{inputs.shape[0]} training images, fewer than one batch of {options.batch}", field="data")
    torch.manual_seed(options.seed)
    start, em_step, opt_state, history = 0, options.em_step, None, []
    if resume and out.exists():
        blob = _read_blob(out)
        model = _model_from_blob(blob, out, device).train()
        options = LearnOptions(**{**asdict(model.options), "steps": options.steps, "lr": options.lr})
        model.options = options
        start, em_step = int(blob.get("step", 0)), float(blob.get("em_step", options.em_step))
        opt_state, history = blob.get("optimizer"), list(blob.get("history", []))
    else:
        if template is None:
            from .learned_template import build_template
            template = build_template()
        model = ReconNet(template.arrays(), options).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=options.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
        for group in opt.param_groups:
            group["lr"] = options.lr
    em = TemplateEM(model, em_step)
    gen = torch.Generator().manual_seed(options.seed + start)
    n = inputs.shape[0]
    per_epoch = n // options.batch
    batches = _batches(n, options.batch, gen)
    last_epoch = start // per_epoch
    running: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        save_checkpoint(out, model, {"step": step, "em_step": em.step, "optimizer": opt.state_dict(),
                                     "history": history})

    for step in range(start, options.steps):
        epoch, idx = next(batches)
        epoch += start // per_epoch
        if epoch != last_epoch:
            if epoch % options.em_every == 0:
                em.update(model)
            last_epoch = epoch
        x = _augment(inputs.index_select(0, idx).to(device=device, dtype=torch.float32) / 255.0, options.flip)
        total, terms, att = step_loss(model, x, with_ic=step % options.ic_every == 0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        em.add(att.offsets)
        for k, v in {"total": total.detach(), **terms}.items():
            running[k] = running.get(k, 0) + v
            counts[k] = counts.get(k, 0) + 1
        done = step + 1
        out_of_time = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        if done % options.checkpoint_every == 0 or done == options.steps or out_of_time:
            row = {"step": done, "epoch": epoch, "seconds": round(time.perf_counter() - t0, 1),
                   **{name: round(float(v) / counts[name], 5) for name, v in running.items()}}
            history.append(row)
            running, counts = {}, {}
            if log:
                log(done, row)
            checkpoint(done)
        if progress:
            progress("train", done, options.steps)
        if out_of_time:
            break
    if start >= options.steps and not out.exists():
        checkpoint(start)
    return {"steps": history[-1]["step"] if history else start, "started_at": start, "images": n, "history": history,
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    """A shippable model file from a training checkpoint: no optimizer, float16 weights."""
    model = load_model(checkpoint)
    return save_checkpoint(Path(out), model, half=True)


# ------------------------------------------------------------------------------------------------
# Inference


@dataclass
class Camera:
    """The predicted camera for the *original* image: x_cam = R @ v + t for object-space v (SMPL
    axes, metres), pixels = K @ x_cam (OpenCV, pixel centres at integers)."""
    R: np.ndarray
    t: np.ndarray
    K: np.ndarray
    azimuth_deg: float
    elevation_deg: float
    distance: float


@dataclass
class Prediction:
    """One image's reconstruction. vertices (V,3) object space (the template's A-pose, centred,
    SMPL axes, metres); faces (F,3) CCW outside; uv (V,2) bottom-left origin; texture (Ht,Wt,3)
    uint8 (row 0 = top) sampled from the input image; camera; light (9,) SH coefficients;
    rest_vertices (V,3) the same mesh un-posed to SMPL rest space; weights (V,24) skin weights."""
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    texture: np.ndarray
    camera: Camera
    light: np.ndarray
    rest_vertices: np.ndarray
    weights: np.ndarray


def _image_camera(model: ReconNet, camera: Tensor, box: tuple[float, float, float, float]) -> Camera:
    """The camera of the crop window `box` expressed in the original image's pixels."""
    o = model.options
    rot, t = camera_pose(camera, o)
    s = box[3] / o.height
    Kc = o.K().double().numpy()
    K = np.array([[s * Kc[0, 0], 0, box[0] - 0.5 + (Kc[0, 2] + 0.5) * s],
                  [0, s * Kc[1, 1], box[1] - 0.5 + (Kc[1, 2] + 0.5) * s], [0, 0, 1]])
    c = camera[0].detach().cpu().double().numpy()
    return Camera(R=rot[0].detach().cpu().numpy().astype(np.float64), t=t[0].detach().cpu().numpy().astype(np.float64),
                  K=K, azimuth_deg=math.degrees(math.atan2(c[1], c[0])), elevation_deg=math.degrees(c[2]),
                  distance=float(c[3]))


def predict(model: ReconNet, rgb: np.ndarray, mask: np.ndarray, texture_size: tuple[int, int] = (512, 256)
            ) -> Prediction:
    """One forward pass on an image (H,W,3) uint8 and its clothing mask (H,W) bool; the texture is
    sampled from the full-resolution image at texture_size (height, width)."""
    rgb, mask = np.asarray(rgb), np.asarray(mask).astype(bool)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or mask.shape != rgb.shape[:2]:
        raise InputError(f"predict: rgb must be (H,W,3) uint8 and mask (H,W), got {rgb.shape} {rgb.dtype} and "
                         f"{mask.shape}", field="image")
    if rgb.shape[0] * rgb.shape[1] > MAX_IMAGE_PIXELS or not 1 <= min(texture_size) <= max(texture_size) <= 4096:
        raise InputError(f"predict: image {rgb.shape[1]}x{rgb.shape[0]} over {MAX_IMAGE_PIXELS} pixels or texture "
                         f"size {texture_size} outside 1..4096", field="image")
    o = model.options
    got = crop_input(rgb, mask, (o.height, o.width))
    if got is None:
        raise InputError("the clothing mask is empty", field="mask")
    x, box = got
    dev = next(model.parameters()).device
    with torch.no_grad():
        att = model(x[None].to(dev))
        verts = model.vertices(att.offsets)
        th, tw = texture_size
        # The flow addresses the crop window; read the same window of the full image at texture size.
        full = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div(255)[None].to(dev)
        m = torch.from_numpy(mask).float()[None, None].to(dev)
        flow = F.interpolate(att.flow.permute(0, 3, 1, 2), size=(th, tw), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
        x0, y0, w, h = box
        H, W = rgb.shape[:2]
        img_grid = torch.stack([((flow[..., 0] + 1) / 2 * w + x0) / W * 2 - 1,
                                ((flow[..., 1] + 1) / 2 * h + y0) / H * 2 - 1], -1)
        tex = F.grid_sample(full * m, img_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        unpose = model.unpose.to(verts.dtype)
        rest = torch.einsum("vab,vb->va", unpose[:, :3, :3], verts[0]) + unpose[:, :3, 3]
    return Prediction(
        vertices=verts[0].cpu().numpy().astype(np.float32), faces=model.faces.cpu().numpy().astype(np.int32),
        uv=model.uv.cpu().numpy().astype(np.float32),
        texture=(tex[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy(),
        camera=_image_camera(model, att.camera, box), light=att.light[0].cpu().numpy().astype(np.float32),
        rest_vertices=rest.cpu().numpy().astype(np.float32), weights=model.weights.cpu().numpy().astype(np.float32))


def render_prediction(model: ReconNet, pred: Prediction, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Re-render a prediction in its input view at image_hw: (rgb float (H,W,3) in [0,1], mask bool)."""
    v = torch.from_numpy(pred.vertices)[None]
    vc = v @ torch.from_numpy(pred.camera.R).float().T + torch.from_numpy(pred.camera.t).float()
    K = torch.from_numpy(pred.camera.K).float()
    faces = torch.from_numpy(pred.faces.astype(np.int64))
    frags = rasterize(vc, faces, K, image_hw)
    tex = torch.from_numpy(pred.texture).permute(2, 0, 1).float().div(255)
    rgb = shade(frags, faces, vc, torch.from_numpy(pred.uv), tex, torch.from_numpy(pred.light)[None])
    return rgb[0].permute(1, 2, 0).clamp(0, 1).numpy(), frags.mask[0].numpy()


__all__ = ["LearnOptions", "ReconNet", "Attributes", "Prediction", "Camera", "train", "load_model", "predict",
           "render_prediction", "export_model", "save_checkpoint", "DEFAULT_MODEL"]
