"""The fitted appearance of one outfit: per-point descriptors + the rendering U-Net + the settings
they were fitted with, and how they render clothing points seen by any camera.

Rendering (training, evaluation and `pointwear render` share it):

1. The posed clothing points (camera space) that the body does not hide (`visible_points` with
   the paper's appearance threshold, 2.5 x 2e-3 x 10 m = 5 cm behind the rasterised body) are
   splatted with their descriptors (`render.splat`, radius 1.5 px, 8 points per pixel): 16
   descriptor channels, the points' camera-space normals when `config.normals` (3, from the
   posed mesh), and the coverage. With `config.edges`, the midpoint of every mesh edge is a
   sample too, with a descriptor of its own (`with_midpoints`); callers always pass the outfit's
   points (P), the model adds the midpoints.
2. The U-Net (eval mode) turns that into RGB in [-1, 1] and a clothing mask in [0, 1].

Only a window around the projected points is rendered: the points' bounding box plus a margin
(`RENDER_MARGIN_PX` at the training scale), clipped to the image; outside it the mask is 0. The
network is fully convolutional and was trained on such windows (random crops around the
clothing), so this is what it knows, and it is much cheaper than the whole frame when the
clothing covers a small part of it. The predicted mask is also cut to 0 farther than
`MASK_REACH_PX` from every splatted point (a network leaves a faint haze over empty background).

Scale: the network learned descriptors splatted at the training images' pixel density (pixels
per metre at the clothing, `px_per_m` in the config). When a camera sees the clothing at a very
different density (more than 1.25x or less than 0.8x), the window is rendered at the training
density (0.25x .. 4x) and resampled to the camera's pixels, so the splats stay as dense as in
training.

`appearance.pt` (torch.save, loaded with ``weights_only=True``)::

    {"format": "pointwear-appearance", "version": 1,
     "config": {descriptor_dim, widths, radius_px, k, size [H, W], crop [H, W], px_per_m,
                visibility_threshold, num_points, edges, normals, drape, code, betas, body, gender},
     "net": RenderNet state dict, "descriptors": (P + edges, descriptor_dim) float32,
     "faces": (F, 3) int64 (the outfit mesh's; (0, 3) when neither edges nor normals)}

Files without `faces`, `edges` or `normals` (written before they existed) are the points alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..fileio import atomic_path
from ..render.rasterizer import project
from ..render.soft import vertex_normals
from ..render.splat import splat
from .descriptors import PointDescriptors
from .unet import RenderNet, network_dtype
from ..link.protocol import APPEARANCE_PT

__all__ = ["AppearanceConfig", "AppearanceModel", "mesh_edges", "with_midpoints", "APPEARANCE_VISIBILITY", "RENDER_MARGIN_PX",
           "scale_intrinsics", "load_appearance", "FORMAT"]

FORMAT = "pointwear-appearance"
VERSION = 1
# The paper's appearance rule: hidden when more than 2.5 x visibility_thr (2e-3) x the depth range
# (10 m) behind the body, i.e. 5 cm (see fit/visibility.py for the metric form).
APPEARANCE_VISIBILITY = 2.5 * 2e-3 * 10.0
RENDER_MARGIN_PX = 24     # window margin around the projected points, at the training scale
MASK_REACH_PX = 8         # the rendered mask is cut farther than this from every splatted point
SCALE_TOLERANCE = (0.8, 1.25)
SCALE_RANGE = (0.25, 4.0)


@dataclass
class AppearanceConfig:
    num_points: int
    descriptor_dim: int = 16
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    radius_px: float = 1.5
    k: int = 8
    scales: int = 1                            # splat pyramid levels fed to the U-Net (1: full resolution only)
    size: tuple[int, int] = (256, 256)        # training images (H, W)
    crop: tuple[int, int] = (128, 128)         # training windows (H, W) px
    px_per_m: float = 0.0                      # median fx / z of the clothing in training frames
    edges: int = 0                             # edge-midpoint samples added to the points (0: the points alone)
    normals: bool = False                      # camera-space normals splatted beside the descriptors
    visibility_threshold: float = APPEARANCE_VISIBILITY
    drape: str = ""
    code: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    body: str = "default"
    gender: str = "neutral"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"], d["size"], d["crop"] = list(self.widths), list(self.size), list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d: dict, file: str | Path | None = None) -> "AppearanceConfig":
        try:
            out = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
            out.widths = tuple(int(w) for w in out.widths)
            out.size = (int(out.size[0]), int(out.size[1]))
            out.crop = (int(out.crop[0]), int(out.crop[1]))
            out.num_points, out.descriptor_dim = int(out.num_points), int(out.descriptor_dim)
            out.scales, out.edges, out.normals = int(out.scales), int(out.edges), bool(out.normals)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"not an appearance config ({type(exc).__name__}: {exc})", file=file,
                             field="config") from None
        return out

    @property
    def samples(self) -> int:
        """Descriptors: one per outfit point, then one per edge midpoint."""
        return self.num_points + self.edges

    @property
    def in_channels(self) -> int:
        """The network's input: descriptors, normals (when on), coverage."""
        return self.descriptor_dim + (3 if self.normals else 0) + 1

    @property
    def needs_faces(self) -> bool:
        return bool(self.edges or self.normals)


def mesh_edges(faces: np.ndarray) -> np.ndarray:
    """The unique undirected edges (E, 2) int64, lower index first, sorted, of triangles (F, 3)."""
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    return np.unique(e, axis=0)


def with_midpoints(points: Tensor, visible: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """Points (B, P, 3) and visibility (B, P) followed by their edges' (E, 2) midpoints:
    (B, P + E, 3), (B, P + E); a midpoint is visible when both its ends are. The samples lie on
    the posed mesh's edges, so they move with it and need no skinning of their own."""
    if edges.numel() == 0:
        return points, visible
    mid = 0.5 * (points[:, edges[:, 0]] + points[:, edges[:, 1]])
    return torch.cat([points, mid], 1), torch.cat([visible, visible[:, edges[:, 0]] & visible[:, edges[:, 1]]], 1)


def scale_intrinsics(K: Tensor, sx: float, sy: float | None = None) -> Tensor:
    """K for an image resized by (sx, sy), pixel centres at integer coordinates:
    u' = sx (u + 0.5) - 0.5."""
    sy = sx if sy is None else sy
    S = torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]],
                     dtype=K.dtype, device=K.device)
    return S @ K


def shift_intrinsics(K: Tensor, x0: float, y0: float) -> Tensor:
    """K of the window whose top-left pixel is (x0, y0) of the image."""
    K = K.clone()
    K[..., 0, 2] -= x0
    K[..., 1, 2] -= y0
    return K


class AppearanceModel(nn.Module):
    """Descriptors + network + config. `forward` is the training path (splat + net on given
    cameras and window sizes); `render` the inference path (windows, eval mode, no grad)."""

    def __init__(self, config: AppearanceConfig, seed: int | None = None, faces: Tensor | np.ndarray | None = None
                 ) -> None:
        """seed: the descriptors' and the network's initial values (None: torch's global RNG);
        faces: (F, 3) the outfit mesh's triangles, needed when `config.needs_faces` (its edges'
        midpoints are splatted too, its normals feed the network)."""
        super().__init__()
        self.config = config
        faces = torch.zeros(0, 3, dtype=torch.int64) if faces is None else torch.as_tensor(np.asarray(faces), dtype=torch.int64)
        if config.needs_faces and not faces.numel():
            raise ValueError("AppearanceModel: midpoints and normals need the outfit's faces")
        edges = torch.as_tensor(mesh_edges(faces.numpy()) if config.edges else np.zeros((0, 2), np.int64))
        if edges.shape != (config.edges, 2):
            raise ValueError(f"AppearanceModel: config.edges is {config.edges}, the faces have {len(edges)} edges")
        self.register_buffer("faces", faces if config.needs_faces else faces[:0], persistent=False)
        self.register_buffer("edges", edges, persistent=False)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.descriptors = PointDescriptors(config.samples, config.descriptor_dim)
            self.net = RenderNet(config.in_channels, config.widths, config.scales)

    # -- training path --------------------------------------------------------------------------
    def splat_input(self, points: Tensor, visible: Tensor, K: Tensor, size: tuple[int, int]
                    ) -> tuple[Tensor, list[Tensor]]:
        """Descriptors splatted by cameras K (B,3,3) into (h, w) images, (B, dim + 1, h, w), and
        the coarser levels of the pyramid (config.scales - 1 of them): level l at
        (ceil(h / 2^l), ceil(w / 2^l)) with K scaled by 1 / 2^l, the same radius in pixels."""
        c = self.config
        feats = self.descriptors()
        if c.normals:
            normals = vertex_normals(points, self.faces)
            if c.edges:
                normals, _ = with_midpoints(normals, visible, self.edges)
                normals = F.normalize(normals, dim=-1, eps=1e-12)
            feats = torch.cat([feats.expand(points.shape[0], -1, -1).to(points.dtype), normals], -1)
        points, visible = with_midpoints(points, visible, self.edges)
        h, w = size
        levels = []
        for level in range(c.scales):
            f = 0.5 ** level
            levels.append(splat(points, feats, scale_intrinsics(K, f) if level else K,
                                (-(-h // 2 ** level), -(-w // 2 ** level)), radius_px=c.radius_px, k=c.k,
                                visible=visible))
        return levels[0], levels[1:]

    def forward(self, points: Tensor, visible: Tensor, K: Tensor, size: tuple[int, int],
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """RGB (B,3,h,w) and mask (B,1,h,w) in the points' dtype; `dtype`: the network's
        convolutions (bfloat16: mixed precision under autocast, the weights stay float32)."""
        x, coarse = self.splat_input(points, visible, K, size)
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            rgb, mask = self.net(x, coarse)
        return rgb.to(points.dtype), mask.to(points.dtype)

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, points: Tensor, visible: Tensor, K: Tensor, image_size: tuple[int, int],
               margin: int = RENDER_MARGIN_PX, rescale: bool = True, precision: str = "auto"
               ) -> tuple[Tensor, Tensor]:
        """RGB (B,3,H,W) in [-1,1] (0 outside the window) and mask (B,1,H,W) for posed points
        (B,P,3) in camera space, visibility (B,P) bool and intrinsics K (B,3,3) or (3,3).
        The network runs in eval mode (its BatchNorms folded into the convs) and in
        `network_dtype(device, precision)` (`RenderNet.inference_net`); the outputs have the
        points' dtype. The network's own train/eval mode is left as it was."""
        net = self.net.inference_net(network_dtype(points.device, precision))
        B = points.shape[0]
        K = K.to(points).expand(B, 3, 3)
        H, W = (int(s) for s in image_size)
        rgb = points.new_zeros(B, 3, H, W)
        mask = points.new_zeros(B, 1, H, W)
        # Every item's scale, then its window, each read back once for the whole batch.
        scales = self.render_scales(points, visible, K) if rescale else [1.0] * B
        sizes = [(max(1, round(H * r)), max(1, round(W * r))) for r in scales]
        Ks = torch.stack([scale_intrinsics(K[b], w / W, h / H) if r != 1.0 else K[b]
                          for b, (r, (h, w)) in enumerate(zip(scales, sizes))])
        windows = _windows(points, visible, Ks, sizes, margin)
        for b in range(B):
            if windows[b] is not None:
                self._render_one(net, points[b], visible[b], Ks[b], (H, W), scales[b], sizes[b],
                                 windows[b], rgb[b], mask[b])
        return rgb, mask

    def render_scale(self, points: Tensor, visible: Tensor, K: Tensor) -> float:
        """Factor to bring this view (points (P,3), visible (P,), K (3,3)) to the training pixel
        density (1 when close enough)."""
        return self.render_scales(points[None], visible[None], K[None])[0]

    def render_scales(self, points: Tensor, visible: Tensor, K: Tensor) -> list[float]:
        """`render_scale` of B views (B,P,3), (B,P), (B,3,3), read back from the device once."""
        target = float(self.config.px_per_m)
        ok = visible & (points[..., 2] > 1e-3)
        z = torch.where(ok, points[..., 2], torch.full_like(points[..., 2], math.nan))
        stats = torch.stack([ok.sum(1).to(z.dtype), 0.5 * (K[:, 0, 0] + K[:, 1, 1]), z.nanmedian(1).values], 1)
        out = []
        for n, focal, median in stats.tolist():
            if not (target > 0 and math.isfinite(target) and n > 0):
                out.append(1.0)
                continue
            r = target / (focal / median)
            out.append(1.0 if SCALE_TOLERANCE[0] <= r <= SCALE_TOLERANCE[1]
                       else float(min(max(r, SCALE_RANGE[0]), SCALE_RANGE[1])))
        return out

    def _render_one(self, net: RenderNet, pts: Tensor, vis: Tensor, Ks: Tensor,
                    size: tuple[int, int], r: float, scaled: tuple[int, int], window: tuple[int, int, int, int],
                    rgb_out: Tensor, mask_out: Tensor) -> None:
        """One view: Ks its intrinsics at scale r (image `scaled` = (h, w)), `window` in there;
        `net` the inference network (`RenderNet.inference_net`)."""
        H, W = size
        h, w = scaled
        x0, y0, x1, y1 = window
        x, coarse = self.splat_input(pts[None], vis[None], shift_intrinsics(Ks, x0, y0)[None], (y1 - y0, x1 - x0))
        c_rgb, c_mask = (t.to(pts.dtype) for t in net(x, coarse))
        c_mask = c_mask * near_points(x[:, -1:])
        if r == 1.0:
            rgb_out[:, y0:y1, x0:x1] = c_rgb[0]
            mask_out[:, y0:y1, x0:x1] = c_mask[0]
            return
        # Paste into the training-density canvas, then resample that canvas to the camera's pixels.
        canvas = pts.new_zeros(1, 4, h, w)
        canvas[0, :3, y0:y1, x0:x1] = c_rgb[0] * c_mask[0]        # premultiplied: clean edges
        canvas[0, 3:, y0:y1, x0:x1] = c_mask[0]
        mode = "area" if r > 1.0 else "bilinear"
        out = F.interpolate(canvas, size=(H, W), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        m = out[0, 3:].clamp(0, 1)
        mask_out.copy_(m)
        rgb_out.copy_(torch.where(m > 1e-4, out[0, :3] / m.clamp(min=1e-4), torch.zeros_like(out[0, :3])).clamp(-1, 1))

    # -- files ----------------------------------------------------------------------------------
    def payload(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "descriptors": self.descriptors.descriptors.detach().cpu().clone(),
                "faces": self.faces.detach().cpu().clone()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.payload(), tmp)
        return path

    @classmethod
    def from_payload(cls, payload: dict, file: str | Path | None = None,
                     device: torch.device | str = "cpu") -> "AppearanceModel":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError("not a Pointwear appearance checkpoint (no 'format': "
                             f"'{FORMAT}')", file=file, field="format")
        config = AppearanceConfig.from_dict(payload.get("config") or {}, file)
        desc = payload.get("descriptors")
        if not isinstance(desc, Tensor):
            raise InputError("missing descriptors", file=file, field="descriptors")
        loaded = PointDescriptors.from_tensor(desc, file=file, field="descriptors")
        # The config and the stored descriptors must agree (a hand-edited or mixed-up file).
        loaded.check(config.samples, config.descriptor_dim, file=file, field="descriptors")
        faces = payload.get("faces", torch.zeros(0, 3, dtype=torch.int64))
        bad = (not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.dtype != torch.int64
               or (faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= config.num_points))
               or bool(config.needs_faces) != bool(faces.numel()))
        try:
            model = None if bad else cls(config, faces=faces)       # checks the faces' edge count
        except ValueError:
            model = None
        if model is None:
            raise InputError(f"the faces do not fit the config ({config.num_points} points, {config.edges} edges, "
                             f"normals {config.normals})", file=file, field="faces")
        model.descriptors = loaded
        try:
            model.net.load_state_dict(payload["net"])
        except (KeyError, RuntimeError) as exc:
            raise InputError(f"network weights do not fit the configured network "
                             f"(in_channels {config.in_channels}, widths {list(config.widths)}): "
                             f"{str(exc).splitlines()[0]}", file=file, field="net") from None
        return model.to(device)


def near_points(coverage: Tensor, reach: int = MASK_REACH_PX) -> Tensor:
    """(B,1,h,w) 1 within `reach` px (Chebyshev) of a splatted point, else 0: the mask is cut
    there, so the faint haze a network leaves over empty background never shows in a render."""
    k = 2 * reach + 1
    near = F.max_pool2d(coverage, (1, k), stride=1, padding=(0, reach))        # the square window's max
    near = F.max_pool2d(near, (k, 1), stride=1, padding=(reach, 0))            # as rows, then columns
    return (near > 1e-3).to(coverage.dtype)


def rescale_possible(target: float, z: Tensor) -> bool:
    return target > 0 and math.isfinite(target) and z.numel() > 0


def _windows(pts: Tensor, vis: Tensor, K: Tensor, sizes: list[tuple[int, int]], margin: int
             ) -> list[tuple[int, int, int, int] | None]:
    """`_window` of B views (B,P,3), (B,P), (B,3,3) with image sizes [(h, w)] * B, read back
    from the device once."""
    ok = vis & (pts[..., 2] > 1e-3)
    uv, _ = project(torch.where(ok[..., None], pts, torch.ones_like(pts)), K)          # (B,P,2)
    hw = torch.tensor(sizes, dtype=uv.dtype, device=uv.device)                          # (B,2) h, w
    Wb, Hb = hw[:, 1:2], hw[:, 0:1]
    inside = ok & (uv[..., 0] > -margin) & (uv[..., 0] < Wb - 1 + margin) & (uv[..., 1] > -margin) \
        & (uv[..., 1] < Hb - 1 + margin)
    big = torch.full_like(uv, math.inf)
    lo = torch.floor(torch.where(inside[..., None], uv, big).amin(1)) - margin
    hi = torch.ceil(torch.where(inside[..., None], uv, -big).amax(1)) + margin + 1
    rows = torch.cat([inside.any(1, keepdim=True).to(uv.dtype), lo, hi], 1).tolist()
    out = []
    for (any_in, lx, ly, hx, hy), (H, W) in zip(rows, sizes):
        if not any_in:
            out.append(None)
            continue
        x0, y0, x1, y1 = max(0, int(lx)), max(0, int(ly)), min(W, int(hx)), min(H, int(hy))
        out.append(None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1))
    return out


def load_appearance(path: str | Path, device: torch.device | str = "cpu") -> AppearanceModel:
    """Read `appearance.pt` (weights_only=True) into an AppearanceModel."""
    path = Path(path)
    if path.is_dir():
        path = path / APPEARANCE_PT
    if not path.is_file():
        raise InputError("no appearance.pt here: is this a finished fit-appearance result folder?", file=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read the appearance checkpoint ({type(exc).__name__}: {exc})", file=path) from None
    return AppearanceModel.from_payload(payload, path, device)


def to_uint8(rgb: Tensor) -> np.ndarray:
    """(3,H,W) in [-1,1] -> (H,W,3) uint8."""
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def rgba_uint8(rgb: Tensor, mask: Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1,1] and (..., 1, H, W) in [0,1] -> (..., H, W, 4) uint8, straight (not
    premultiplied) alpha; one copy to the host for the whole batch."""
    c = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte()
    a = (mask.clamp(0, 1) * 255).round().byte()
    return torch.cat([c, a], -3).movedim(-3, -1).cpu().numpy()
