"""Image-space losses for outfit fitting: 2D Chamfer through distance transforms, soft coverage.

The paper fits the outfit code with a 2D Chamfer between the projected visible clothing points
and the mask pixels (squared distances, means, coordinates / 25.6). Brute force is an N x M
distance matrix per item: 4096 visible points x ~42 000 mask pixels = 1.7e8 pairs, ~2 s per
item and step on our CPU. Here ~10 ms per item on one core (see docs/benchmarks.md):

* points -> mask: the Euclidean distance transform of the mask with nearest-pixel indices is
  computed once per frame (`MaskTarget`, scipy), over the image plus a 64 px border. A point
  looks up the nearest mask pixel of each of the 4 pixel centres around it and keeps the
  closest, q; the loss |uv - q|^2 treats q as constant, so it is differentiable in uv (gradient
  2 (uv - q)), exact at pixel centres and never more than sqrt(2) px too far elsewhere. Points
  beyond the border are looked up at the clamped border pixel, so they get the distance to a
  real mask pixel including their out-of-image offset.
* mask -> points: the nearest visible point of every mask pixel. Each point "splats" its
  squared distance and id into the pixels of a disc of radius R - 0.5 + sqrt(1/2) (R = 5)
  around its rounded position, in one int32 image per item (distance quantised to ~1e-4 px^2 in
  the high bits, point id in the low bits, so one scatter-min keeps the nearest); the images
  of all items are one tensor, so every item is searched at once. Each image covers only its
  frame's mask bbox + 2R (all the size of the frame set's largest, fixed per fit): points
  farther than R px outside the bbox go to a spare image, as they can answer no mask pixel
  within R - 0.5 px. A
  mask pixel whose nearest point lies within R - 0.5 = 4.5 px is thereby answered exactly. The
  rest (far from every point; typically a few hundred pixels per item) get their exact nearest
  point from a device search of their item's present points (matmul + argmin, chunked). Within 0.5 % of brute force
  in total on dense and sparse clouds over 512 x 512 masks (tests, benchmark).
  The pixels assigned to point j enter the loss as c_j |uv_j|^2 - 2 uv_j . S_j + Q_j (count,
  sum and sum of squares of their coordinates, exact integers), which is the per-pixel sum of
  squared distances with its exact gradient, while autograd only sees the points.

Same code on CPU and CUDA (plain PyTorch). The mask's distance transform is made once per frame
(scipy, on the CPU, outside the optimisation); a loss call reads back only the frame indices, the
number of far pixels and their split over the items (three host round-trips), plus one for the
coverage's stencil size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

__all__ = [
    "PAPER_SCALE", "MaskTarget", "MaskTargets", "chamfer_2d", "chamfer_2d_bruteforce", "mask_losses",
    "soft_coverage_loss",
]

PAPER_SCALE = 25.6          # the paper divides pixel coordinates by 512 / 20
_SPLAT_R = 5               # mask -> points is exact when the nearest point is <= R - 0.5 px away
_COARSE = 4                 # far pixels: candidates from a splat on 4 x 4 px cells ...
_COARSE_R = 3               # ... reaching this many cells; pixels beyond: exact device search
NEAREST_PAD = 64            # the mask's nearest-pixel table extends this far beyond the image
_IMAGE_PAD = 64             # per-item search images reach at most this far outside the frame


def _as_bool_mask(mask: np.ndarray | Tensor, i: int = 0) -> np.ndarray:
    """bool (H,W) from bool, float in [0,1] (> 0.5) or uint8 0/255 (>= 128)."""
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask {i}: expected a 2-D (H,W) array, got shape {m.shape}")
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.floating):
        return m > 0.5
    if m.dtype == np.uint8:
        return m >= 128
    raise ValueError(f"mask {i}: unsupported dtype {m.dtype} (use bool, float in [0,1] or uint8)")


@dataclass(eq=False)
class MaskTarget:
    """One frame's clothing mask with its distance transform, computed once per frame.

    The transform covers the image plus a border of ``pad`` px, so points slightly outside the
    image are exact too: nearest[y + pad, x + pad] = (x, y) of the mask pixel nearest to pixel
    (x, y) (image coordinates; itself on the mask); distance[y, x] = that Euclidean distance in
    px inside the image; pixels = (M,2) xy of the mask pixels in row-major order. An empty mask
    has M = 0, distance = inf and a meaningless `nearest`.
    """

    mask: np.ndarray        # (H,W) bool
    nearest: np.ndarray     # (H+2p,W+2p,2) int32, xy in image coordinates
    distance: np.ndarray    # (H,W) float32
    pixels: np.ndarray      # (M,2) int32, xy
    pad: int = 0

    @classmethod
    def from_mask(cls, mask: np.ndarray | Tensor, pad: int = NEAREST_PAD) -> "MaskTarget":
        m = _as_bool_mask(mask)
        H, W = m.shape
        ys, xs = np.nonzero(m)
        if xs.size == 0:
            return cls(m, np.zeros((H + 2 * pad, W + 2 * pad, 2), np.int32),
                       np.full((H, W), np.inf, np.float32), np.zeros((0, 2), np.int32), pad)
        free = np.pad(~m, pad, constant_values=True)
        dist, (iy, ix) = ndimage.distance_transform_edt(free, return_indices=True)
        nearest = np.stack([ix - pad, iy - pad], -1).astype(np.int32)
        return cls(m, nearest, dist[pad:pad + H, pad:pad + W].astype(np.float32),
                   np.stack([xs, ys], -1).astype(np.int32), pad)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    @property
    def area(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def empty(self) -> bool:
        return self.area == 0

    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) inclusive; (0, 0, -1, -1) for an empty mask."""
        if self.empty:
            return 0, 0, -1, -1
        lo, hi = self.pixels.min(0), self.pixels.max(0)
        return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


@dataclass(eq=False)
class MaskTargets:
    """Many frames' `MaskTarget`s stacked on one device (all frames share one image size).

    Loss functions take `frame_index` (B,) to say which frame each batch item is compared with,
    so 4 codes x 8 frames is a batch of 32 items over 8 targets.
    """

    masks: Tensor           # (F,H,W) bool
    nearest: Tensor         # (F,H+2p,W+2p,2) float32, xy of the nearest mask pixel
    distance: Tensor        # (F,H,W) float32 px
    pixels: Tensor          # (M_total,2) float32 xy, frames concatenated
    pixels_long: Tensor     # (M_total,2) int64 xy (the same pixels, for exact index maths)
    pixels_sq: Tensor       # (M_total,) int64 x^2 + y^2
    offsets: Tensor         # (F+1,) long: frame f's pixels are pixels[offsets[f]:offsets[f+1]]
    bboxes: Tensor          # (F,4) long mask bbox x0,y0,x1,y1 (inclusive; empty: 0,0,-1,-1)
    offsets_host: tuple[int, ...] = ()   # `offsets` on the host: pixel counts without a round-trip
    bboxes_host: tuple[tuple[int, int, int, int], ...] = ()   # `bboxes` on the host
    _coverage: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)
    _windows: dict[int, tuple[int, int, Tensor]] = field(default_factory=dict, repr=False)
    _moments: list[Tensor] = field(default_factory=list, repr=False)

    @classmethod
    def from_masks(cls, masks: Sequence[np.ndarray | Tensor] | Sequence[MaskTarget],
                   device: torch.device | str | None = None, *,
                   allow_empty: bool = False) -> "MaskTargets":
        """Precompute every frame. Masks are bool (H,W), float in [0,1] or uint8 0/255.

        An empty mask is a ValueError naming the frame unless ``allow_empty``; then that frame
        contributes 0 to the losses (nothing to match) and the caller should warn.
        """
        if len(masks) == 0:
            raise ValueError("MaskTargets.from_masks: no masks given")
        targets = [m if isinstance(m, MaskTarget) else MaskTarget.from_mask(_as_bool_mask(m, i))
                   for i, m in enumerate(masks)]
        size, pad = targets[0].image_size, targets[0].pad
        for i, t in enumerate(targets):
            if t.image_size != size:
                raise ValueError(f"mask {i}: size {t.image_size} differs from mask 0's {size}")
            if t.pad != pad:
                raise ValueError(f"mask {i}: transform border {t.pad} differs from mask 0's {pad}")
            if t.empty and not allow_empty:
                raise ValueError(f"mask {i} is empty (no clothing pixel); "
                                 "pass allow_empty=True to fit without that frame's mask")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        pix = torch.from_numpy(np.concatenate([t.pixels for t in targets])).long()
        counts = [t.area for t in targets]
        offsets = torch.tensor([0] + list(np.cumsum(counts)), dtype=torch.long)

        def stack(arrs: list[np.ndarray], dtype: torch.dtype) -> Tensor:
            return torch.from_numpy(np.stack(arrs)).to(device=dev, dtype=dtype)

        bboxes = [t.bbox() for t in targets]
        return cls(
            masks=stack([t.mask for t in targets], torch.bool),
            nearest=stack([t.nearest for t in targets], torch.float32),
            distance=stack([t.distance for t in targets], torch.float32),
            pixels=torch.from_numpy(np.concatenate([t.pixels for t in targets])).to(
                device=dev, dtype=torch.float32),
            pixels_long=pix.to(dev),
            pixels_sq=pix.square().sum(1).to(dev),
            offsets=offsets.to(dev),
            bboxes=torch.tensor(bboxes, dtype=torch.long, device=dev),
            offsets_host=tuple(int(o) for o in offsets),
            bboxes_host=tuple(bboxes),
        )

    @property
    def num_frames(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def device(self) -> torch.device:
        return self.masks.device

    @property
    def pad(self) -> int:
        """Border (px) of the nearest-pixel table around the image."""
        return (int(self.nearest.shape[1]) - int(self.masks.shape[1])) // 2

    @property
    def counts(self) -> Tensor:
        """(F,) number of mask pixels per frame."""
        return self.offsets[1:] - self.offsets[:-1]

    def frame_pixels(self, f: int) -> Tensor:
        """(M_f,2) float32 xy of frame f's mask pixels."""
        return self.pixels[self.offsets_host[f]:self.offsets_host[f + 1]]

    def to(self, device: torch.device | str) -> "MaskTargets":
        dev = torch.device(device)
        return MaskTargets(self.masks.to(dev), self.nearest.to(dev), self.distance.to(dev),
                           self.pixels.to(dev), self.pixels_long.to(dev),
                           self.pixels_sq.to(dev), self.offsets.to(dev), self.bboxes.to(dev),
                           self.offsets_host, self.bboxes_host)

    def pixel_moments(self) -> Tensor:
        """(4,M_total) float64 columns (1, x, y, x^2 + y^2) of the mask pixels (exact integers),
        made once: the per-point sums of the mask -> points loss add these up. Four rows, not
        four columns: a sum over pixels into points along the last axis is several times faster
        on a CPU than along the first."""
        if not self._moments:
            self._moments.append(torch.stack([torch.ones_like(self.pixels_sq), self.pixels_long[:, 0],
                                              self.pixels_long[:, 1], self.pixels_sq]).double())
        return self._moments[0]

    def splat_window(self, margin: int) -> tuple[int, int, Tensor]:
        """(h, w, origin (F,2) long xy): one window of h x w px per frame, the frame's mask bbox
        grown by ``margin`` px on every side and all windows the size of the largest, so images
        of many items share one row stride. Pixel (x, y) of frame f is (x, y) - origin[f] in
        its window. Made once per margin from the host bboxes (no round-trip); without them
        (a hand-made target) the window is the whole frame grown by ``margin``."""
        if margin not in self._windows:
            H, W = self.image_size
            boxes = self.bboxes_host or ((0, 0, W - 1, H - 1),) * self.num_frames
            w = max(x1 - x0 + 1 for x0, _, x1, _ in boxes) + 2 * margin
            h = max(y1 - y0 + 1 for _, y0, _, y1 in boxes) + 2 * margin
            origin = torch.tensor([[x0 - margin, y0 - margin] for x0, y0, _, _ in boxes],
                                  dtype=torch.long, device=self.device)
            self._windows[margin] = (h, w, origin)
        return self._windows[margin]

    def coverage_target(self, h: int, w: int) -> Tensor:
        """(F,h,w) float: the masks area-averaged down to (h,w) (fraction of covered pixels)."""
        key = (int(h), int(w))
        if key not in self._coverage:
            self._coverage[key] = F.adaptive_avg_pool2d(self.masks.float().unsqueeze(1),
                                                        key).squeeze(1)
        return self._coverage[key]


# ----------------------------------------------------------------------------- input checks


@dataclass
class _Prepared:
    """A loss call's checked inputs, shared by the Chamfer and the coverage of one step."""
    uv: Tensor          # (B,N,2) non-finite coordinates replaced by 0
    w: Tensor           # (B,N) float weights, 0 where uv was not finite
    fi: Tensor          # (B,) long frame of each item, on the device
    fi_l: list[int]     # the same on the host
    sel: Tensor         # (K,) rows of uv.reshape(-1, 2) with weight > 0, item-major
    pb: Tensor          # (K,) their items


def _prepare(uv: Tensor, valid: Tensor, target: MaskTargets, frame_index: Tensor) -> _Prepared:
    """Shapes checked; weights float (0 for non-finite uv, which is replaced by 0); the frame
    indices on the device and as a host list (one round-trip, none when given on the host);
    the present points (one round-trip)."""
    if uv.dim() != 3 or uv.shape[-1] != 2:
        raise ValueError(f"uv must be (B,N,2), got {tuple(uv.shape)}")
    B, N, _ = uv.shape
    if valid.shape != (B, N):
        raise ValueError(f"valid must be (B,N) = {(B, N)}, got {tuple(valid.shape)}")
    fi_l = [int(i) for i in np.asarray(frame_index).reshape(-1)] if not isinstance(frame_index, Tensor) \
        else frame_index.reshape(-1).tolist()
    if len(fi_l) != B:
        raise ValueError(f"frame_index must be (B,) = ({B},), got {len(fi_l)} entries")
    if B and (min(fi_l) < 0 or max(fi_l) >= target.num_frames):
        raise ValueError(f"frame_index outside [0, {target.num_frames})")
    fi = torch.as_tensor(frame_index, device=uv.device).long().reshape(-1)
    if target.device != uv.device:
        raise ValueError(f"target is on {target.device} but uv on {uv.device}; use target.to()")
    x, y = uv.unbind(-1)
    finite = torch.isfinite(x) & torch.isfinite(y)          # not .all(-1): slow over an axis of 2
    w = valid.to(device=uv.device, dtype=uv.dtype) * finite
    # A point with a non-finite coordinate has weight 0; its finite coordinate, kept, enters no
    # loss term (no mask pixel is assigned to it), so zeroing the non-finite ones is enough.
    uv = uv.nan_to_num(0.0, 0.0, 0.0)
    sel = (w.reshape(-1) > 0).nonzero().squeeze(1)          # present points (one round-trip)
    return _Prepared(uv, w, fi, fi_l, sel, torch.div(sel, N, rounding_mode="floor"))


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


# ----------------------------------------------------------------------------- points -> mask


def _sq_norm(v: Tensor) -> Tensor:
    """(...,) |v|^2 of v (...,2) as x * x + y * y: the same value as v.square().sum(-1), whose
    reduction over an axis of 2 costs several times more on a CPU."""
    x, y = v.unbind(-1)
    return x * x + y * y


def _points_to_mask_sq(X: Tensor, frame: Tensor, target: MaskTargets) -> Tensor:
    """(K,) squared px distance of points X (K,2) to the nearest mask pixel of their frame.

    The nearest mask pixel q of each of the 4 pixel centres around the point comes from the
    precomputed table; the closest of those is kept, constant, and |X - q|^2 is differentiable.
    """
    H, W = target.image_size
    p = target.pad
    Hp, Wp = H + 2 * p, W + 2 * p
    with torch.no_grad():
        x = X.detach()
        u0 = x[:, 0].clamp(-p - 1.0, W + p).floor().long() + p       # padded-table coordinates
        v0 = x[:, 1].clamp(-p - 1.0, H + p).floor().long() + p
        base = frame * (Hp * Wp)
        table = target.nearest.view(-1, 2)
        # One corner at a time over (K,) rows (a (K,4) layout broadcasts and reduces over a
        # tiny trailing axis: slow on a CPU); a later corner wins only if strictly closer, as
        # argmin's first minimum.
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            lin = base + (v0 + dy).clamp_(0, Hp - 1) * Wp + (u0 + dx).clamp_(0, Wp - 1)
            qx, qy = table.index_select(0, lin).to(X.dtype).unbind(1)
            d = (qx - x[:, 0]).square() + (qy - x[:, 1]).square()
            if dx == 0 and dy == 0:
                best, bx, by = d, qx, qy
            else:
                closer = d < best
                best, bx, by = torch.where(closer, d, best), torch.where(closer, qx, bx), torch.where(closer, qy, by)
        q = torch.stack([bx, by], 1)
    return _sq_norm(X - q)


# ----------------------------------------------------------------------------- mask -> points


def _disc_offsets(radius: float) -> list[tuple[int, int]]:
    """Integer offsets (tx, ty) with tx^2 + ty^2 <= radius^2."""
    r = int(math.floor(radius))
    return [(tx, ty) for ty in range(-r, r + 1) for tx in range(-r, r + 1)
            if tx * tx + ty * ty <= radius * radius]


_EMPTY32 = torch.iinfo(torch.int32).max
_SPLAT_BATCH = 1 << 18      # taps x points up to this: one scatter for all taps (`_splat_min_batched`)


@dataclass
class _MaskToPoints:
    sq_sum: Tensor     # (B,) sum over the item's mask pixels of the squared px distance (autograd)
    px_sum: Tensor     # (B,) sum of the px distances (detached, float32 search precision)


def _item_pixels(target: MaskTargets, fi: Tensor, fi_l: list[int]) -> tuple[Tensor, Tensor]:
    """The mask pixels of every item, items one after the other, without a host round-trip
    (the per-frame pixel counts are known on the host): (M,) item of each pixel and (M,)
    its row in target.pixels."""
    offs = target.offsets_host
    counts = [offs[f + 1] - offs[f] for f in fi_l]
    total = sum(counts)
    dev = fi.device
    n = torch.tensor(counts, device=dev)
    item = torch.repeat_interleave(torch.arange(len(fi_l), device=dev), n, output_size=total)
    start = torch.cumsum(n, 0) - n
    rows = target.offsets.index_select(0, fi).index_select(0, item) + torch.arange(total, device=dev) \
        - start.index_select(0, item)
    return item, rows


def _window_cells(target: MaskTargets, fi: Tensor, pr: Tensor, item_of: Tensor, B: int
                  ) -> tuple[Tensor, tuple[int, int], Tensor]:
    """Where the fine splat writes: one image per item, its frame's mask bbox grown by 2R
    (`MaskTargets.splat_window`), instead of the whole frame. pr (K,2) long rounded point
    positions, item_of (K,) their items, fi (B,) the items' frames. Returns (K,) the point's
    cell in B + 1 images of (h, w) = the window size, and (B,2) the items' window origins.

    A point whose cell is within R of its window's edge, or outside, goes to the centre of the
    spare image B instead: its cell is more than R px outside the bbox on some axis, so it is
    more than R + 0.5 px from every mask pixel and can only be the splat's answer for a pixel
    farther than R - 0.5 px from all points, which the coarse search answers anyway. Inside,
    its disc (radius < R + 1) stays in its window. The mask pixels' answers are unchanged."""
    R = _SPLAT_R
    h, w, origin = target.splat_window(2 * R)
    org = origin.index_select(0, fi)                                           # (B,2)
    loc = pr - org.index_select(0, item_of)                                    # (K,2)
    inside = (loc[:, 0] >= R) & (loc[:, 0] < w - R) & (loc[:, 1] >= R) & (loc[:, 1] < h - R)
    cell = torch.where(inside, item_of * (h * w) + loc[:, 1] * w + loc[:, 0], B * h * w + R * w + R)
    return cell, (h, w), org


def _mask_to_points(X: Tensor, w: Tensor, sel: Tensor, target: MaskTargets, fi: Tensor, fi_l: list[int],
                    dtype: torch.dtype) -> _MaskToPoints:
    """For every mask pixel of every item, its nearest point (see the module doc), all items
    at once on the device.

    X (B,N,2) the points (autograd); w (B,N) their weights (> 0: present), sel (K,) the present
    ones' rows of X.reshape(-1, 2). The search runs
    without autograd and assigns each mask pixel p a point j(p). The loss is then assembled
    per point: its pixels contribute sum_p |p - X_j|^2 = c_j |X_j|^2 - 2 X_j . S_j + Q_j with
    c_j pixels, S_j = sum p and Q_j = sum |p|^2 (integers, summed exactly in int64), so autograd
    only sees the points and value and gradient equal those of the per-pixel sum (float64).
    Host round-trips: one or two (the far pixels' count; those no coarse cell reaches).
    """
    H, W = target.image_size
    dev = X.device
    B, N, _ = X.shape
    R = _SPLAT_R
    diag2 = float(H * H + W * W)
    P = X.detach().float().reshape(-1, 2)                                      # (B*N,2)
    has_points = (w > 0).any(1)                                                # (B,)
    Ps = P.index_select(0, sel)                                                # (K,2)

    # Rounded point positions, clamped to the frame +- _IMAGE_PAD (the coarse grid's extent).
    border = _IMAGE_PAD + R
    lim = 4.0 * max(H, W)
    pr = torch.round(Ps.clamp(-lim, lim)).long()
    pr = torch.stack([pr[:, 0].clamp(-_IMAGE_PAD, W - 1 + _IMAGE_PAD),
                      pr[:, 1].clamp(-_IMAGE_PAD, H - 1 + _IMAGE_PAD)], 1)
    item_of = torch.div(sel, N, rounding_mode="floor")
    local = sel - item_of * N
    cell, (gh, gw), origin = _window_cells(target, fi, pr, item_of, B)
    size = gh * gw

    # Splat: every point writes (quantised distance^2, id within its item) into the pixels of a
    # disc of radius R - 0.5 + sqrt(1/2) around its rounded pixel; an int32 min keeps the
    # nearest. A mask pixel then holds its nearest point whenever that lies within R - 0.5 px.
    # The images are the items' mask windows (`_window_cells`) plus one spare image at the end
    # that takes the points too far from their mask to matter.
    id_bits = max(1, int(N).bit_length())
    if id_bits > 19:
        raise ValueError(f"chamfer_2d: at most 2^19 - 1 points per item, got N = {N}")
    q_max = (1 << (31 - id_bits)) - 1
    r_disc = R - 0.5 + math.sqrt(0.5)
    d_max = (r_disc + math.sqrt(0.5)) ** 2
    margin = R * (gw + 1)
    n_img = (B + 1) * size
    img_pad = torch.full((n_img + 2 * margin,), _EMPTY32, dtype=torch.int32, device=dev)
    _splat_min(img_pad, margin, n_img, gw, cell, (pr - Ps).float(), _disc_offsets(r_disc), 1,
               d_max, id_bits, local.int())
    img = img_pad.narrow(0, margin, n_img)
    id_mask = (1 << id_bits) - 1

    # Every mask pixel of every item looks its nearest point up.
    item, rows = _item_pixels(target, fi, fi_l)                                # (M,)
    pf = target.pixels_long.index_select(0, rows)                              # (M,2) xy
    org = origin.index_select(0, item)
    pos = item * size + (pf[:, 1] - org[:, 1]) * gw + (pf[:, 0] - org[:, 0])
    got = img.index_select(0, pos)
    j = (got & id_mask).long()
    d = (got >> id_bits).float() * (d_max / q_max)
    d = torch.where(got == _EMPTY32, math.inf, d)
    usable = has_points.index_select(0, item)
    far = ((d > (R - 0.5) ** 2) & usable).nonzero().squeeze(1)                 # round-trip
    if far.numel():
        d, j = _coarse_nearest(P, Ps, local, item_of, pr, N, pf, item, far, d, j,
                               (H + 2 * border, W + 2 * border), border)
        rest = far.index_select(0, (~torch.isfinite(d.index_select(0, far))).nonzero().squeeze(1))  # round-trip
        if rest.numel():
            d, j = _far_pixels(Ps, local, item_of, B, pf, item, rest, d, j)

    # Per point sums of its pixels (exact integers in float64), then the differentiable
    # quadratic in float64. Pixels without a point add into a spare row B * N.
    found = usable & torch.isfinite(d)
    g = torch.where(found, item * N + j, B * N)
    # count, sum x, sum y, sum |p|^2 per point in one float64 sum (integers below 2^53: exact)
    sums = torch.zeros(4, B * N + 1, dtype=torch.float64, device=dev).index_add_(
        1, g, target.pixel_moments().index_select(1, rows))[:, :B * N]
    c, Sx, Sy, Q = sums.unbind(0)
    Xd = X.reshape(-1, 2).double()
    x, y = Xd.unbind(1)
    per_point = c * _sq_norm(Xd) - 2 * (x * Sx + y * Sy) + Q
    # Constant costs (no gradient): items without points, pixels nothing reached.
    missing = torch.zeros(B, dtype=torch.float64, device=dev).index_add_(0, item, (~found).double())
    sq = per_point.view(B, N).sum(1) + missing * diag2
    dist = torch.where(found, d.clamp(min=0).sqrt(), math.sqrt(diag2))
    px = torch.zeros(B, dtype=torch.float32, device=dev).index_add_(0, item, dist)
    return _MaskToPoints(sq_sum=sq.to(dtype), px_sum=px.to(dtype))


def _splat_min(img_pad: Tensor, margin: int, n_img: int, stride: int, cell: Tensor, e: Tensor,
               taps: list[tuple[int, int]], scale: float, d_max: float, id_bits: int, ids: Tensor) -> None:
    """Scatter-min into img_pad (images of row stride `stride`, `margin` cells of padding both
    sides) of key = (squared distance quantised to 31 - id_bits bits over [0, d_max], id) of
    each point (K,) at its cell + each tap: distance^2 = |scale * tap + e|^2 with e (K,2).
    Few points (taps x K up to `_SPLAT_BATCH`): all taps at once; many: one tap at a time."""
    splat = _splat_min_batched if len(taps) * cell.shape[0] <= _SPLAT_BATCH else _splat_min_per_tap
    splat(img_pad, margin, n_img, stride, cell, e, taps, scale, d_max, id_bits, ids)


def _splat_min_per_tap(img_pad: Tensor, margin: int, n_img: int, stride: int, cell: Tensor, e: Tensor,
                       taps: list[tuple[int, int]], scale: float, d_max: float, id_bits: int, ids: Tensor) -> None:
    """`_splat_min` one tap at a time (the (taps x K) keys never exist at once: faster on a
    CPU's caches for many points), in three (K,) buffers made once per call: a fresh tensor per
    operation and tap costs more than the arithmetic on a CPU (its allocator returns big blocks
    to the OS)."""
    q = ((1 << (31 - id_bits)) - 1) / d_max
    ex, ey = e[:, 0].contiguous(), e[:, 1].contiguous()
    d2, dy = torch.empty_like(ex), torch.empty_like(ey)
    key = torch.empty(ex.shape, dtype=torch.int32, device=ex.device)
    row = None
    for tx, ty in taps:
        if ty != row:        # the taps come row by row: one (ey + ty)^2 per row
            torch.add(ey, scale * ty, out=dy).square_()
            row = ty
        torch.add(ex, scale * tx, out=d2).square_().add_(dy)
        key.copy_(d2.clamp_(0.0, d_max).mul_(q).round_()).bitwise_left_shift_(id_bits).bitwise_or_(ids)
        img_pad.narrow(0, margin + tx + ty * stride, n_img).scatter_reduce_(0, cell, key, "amin")


def _splat_min_batched(img_pad: Tensor, margin: int, n_img: int, stride: int, cell: Tensor, e: Tensor,
                       taps: list[tuple[int, int]], scale: float, d_max: float, id_bits: int, ids: Tensor) -> None:
    """`_splat_min` for few points: every tap at once, (T, K) keys in one scatter. The same
    float32 operations in the same order as `_splat_min_per_tap`, so the same keys, and a min
    does not depend on the order of its writes: the same images. With few points (the coarse
    stage's reduced frames) the per-tap loop's ten small operations per tap cost more than
    their arithmetic."""
    q = ((1 << (31 - id_bits)) - 1) / d_max
    t = _tap_table(tuple(taps), stride, e.device, e.dtype)
    tx, ty, shift = t.tx, t.ty, t.shift                                        # (T,1) each
    d2 = (e[:, 0] + scale * tx).square_().add_((e[:, 1] + scale * ty).square_())   # (T,K)
    key = d2.clamp_(0.0, d_max).mul_(q).round_().to(torch.int32).bitwise_left_shift_(id_bits).bitwise_or_(ids)
    img_pad.scatter_reduce_(0, (cell + (margin + shift)).reshape(-1), key.reshape(-1), "amin")


@dataclass(frozen=True)
class _Taps:
    tx: Tensor      # (T,1) float: the taps' x offsets
    ty: Tensor      # (T,1) float: their y offsets
    shift: Tensor   # (T,1) int64: their offsets in a flat image of the given row stride


_TAP_TABLES: dict[tuple, _Taps] = {}


def _tap_table(taps: tuple[tuple[int, int], ...], stride: int, device: torch.device, dtype: torch.dtype) -> _Taps:
    """The taps as device tensors, made once per (taps, stride, device, dtype)."""
    key = (taps, stride, device, dtype)
    if key not in _TAP_TABLES:
        xy = torch.tensor(taps, dtype=torch.int64).reshape(-1, 2)
        _TAP_TABLES[key] = _Taps(xy[:, :1].to(device=device, dtype=dtype), xy[:, 1:].to(device=device, dtype=dtype),
                                 (xy[:, :1] + xy[:, 1:] * stride).to(device))
    return _TAP_TABLES[key]


@torch.no_grad()
def _coarse_nearest(P: Tensor, Ps: Tensor, local: Tensor, item_of: Tensor, pr: Tensor, N: int,
                    pf: Tensor, item: Tensor, far: Tensor, d: Tensor, j: Tensor, shape: tuple[int, int],
                    border: int) -> tuple[Tensor, Tensor]:
    """Far mask pixels (beyond R - 0.5 px from every point): a second splat on a grid of
    _COARSE x _COARSE px cells, each cell keeping the point nearest its centre (within
    _COARSE_R cells), then each far pixel takes the nearest of the points kept in the 5 x 5
    cells around its own. P (B*N,2) all points; Ps (K,2) the present ones, local / item_of (K,)
    their id in / their item, pr (K,2) their clamped pixels; far (Q,) rows of pf / item / d /
    j. Pixels no kept point reaches stay inf in d."""
    s, Rc = _COARSE, _COARSE_R
    dev = P.device
    B = P.shape[0] // N
    ch, cw = -(-shape[0] // s), -(-shape[1] // s)
    size = ch * cw
    cx = torch.div(pr[:, 0] + border, s, rounding_mode="floor")
    cy = torch.div(pr[:, 1] + border, s, rounding_mode="floor")
    cell = item_of * size + cy * cw + cx
    # distance^2 (px) from the point to the centre of the cell at each tap
    e = torch.stack([cx, cy], 1).float() * s + (s - 1) / 2 - border - Ps       # (K,2)
    id_bits = max(1, int(N).bit_length())
    margin = (Rc + 2) * (cw + 1)
    img_pad = torch.full((B * size + 2 * margin,), _EMPTY32, dtype=torch.int32, device=dev)
    _splat_min(img_pad, margin, B * size, cw, cell, e, _disc_offsets(Rc + 0.5), s, (s * (Rc + 1.5)) ** 2,
               id_bits, local.int())
    q = pf.index_select(0, far)                                                # (Q,2)
    qi = item.index_select(0, far)
    home = (qi * size + torch.div(q[:, 1] + border, s, rounding_mode="floor") * cw
            + torch.div(q[:, 0] + border, s, rounding_mode="floor"))
    a = torch.arange(-2, 3, device=dev)
    got = img_pad.index_select(0, (margin + home.unsqueeze(1) + (a.view(-1, 1) * cw + a).view(-1)).view(-1))
    got = got.view(-1, 25)                                                     # (Q,25)
    ok = got != _EMPTY32
    cj = torch.where(ok, got & ((1 << id_bits) - 1), 0).long()
    cand = P.index_select(0, (qi.unsqueeze(1) * N + cj).view(-1)).view(-1, 25, 2)
    dc = _sq_norm(cand - q.float().unsqueeze(1)).masked_fill_(~ok, math.inf)
    v, k = dc.min(1)
    return d.index_copy(0, far, v), j.index_copy(0, far, cj.gather(1, k.unsqueeze(1)).squeeze(1))


@torch.no_grad()
def _far_pixels(Ps: Tensor, local: Tensor, item_of: Tensor, B: int, pf: Tensor, item: Tensor, far: Tensor,
                d: Tensor, j: Tensor, max_chunk: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Mask pixels farther than R - 0.5 px from every point of their item: their nearest
    present point, exact up to float32 rounding of near ties, by one matmul per chunk against
    the item's present points only (argmin |p|^2 - 2 q . p, coordinates centred on the points;
    at most ``max_chunk`` scores at once). Ps (K,2) the present points, item-major, local /
    item_of (K,) their ids in / their items; far (Q,) rows of pf / item / d / j, item-major.
    Returns d, j with the far rows replaced. One host round-trip (the splits over the items)."""
    steps = torch.arange(B + 1, device=Ps.device)
    bounds = torch.cat([torch.searchsorted(item.index_select(0, far), steps),
                        torch.searchsorted(item_of, steps)]).tolist()                       # round-trip 3
    d, j = d.clone(), j.clone()
    for b in range(B):
        lo, hi, p0, p1 = bounds[b], bounds[b + 1], bounds[B + 1 + b], bounds[B + 2 + b]
        if lo == hi or p0 == p1:
            continue
        own, ids = Ps[p0:p1], local[p0:p1]
        centre = own.mean(0)
        pts = own - centre
        sq = _sq_norm(pts).unsqueeze(0)                                        # (1,K_b)
        rows = max(1, max_chunk // (p1 - p0))
        for s in range(lo, hi, rows):
            idx = far[s:min(hi, s + rows)]
            q = pf.index_select(0, idx).float()
            k = torch.addmm(sq, q - centre, pts.T, alpha=-2.0).argmin(1)
            d.index_copy_(0, idx, _sq_norm(own.index_select(0, k) - q))
            j.index_copy_(0, idx, ids.index_select(0, k))
    return d, j


# ----------------------------------------------------------------------------- Chamfer


def chamfer_2d(uv: Tensor, valid: Tensor, target: MaskTargets, frame_index: Tensor, *,
               scale: float = PAPER_SCALE, both: bool = True, reduction: str = "mean"
               ) -> dict[str, Tensor]:
    """2D Chamfer between projected visible points and mask pixels, via distance transforms.

    uv (B,N,2) pixel coordinates (pixel centres at integers); valid (B,N) bool or float weights
    (visibility; weights > 0 count as present for mask -> points, and weight the points -> mask
    mean); item b is compared with frame ``frame_index[b]`` of ``target``.
    Squared distances of coordinates divided by ``scale``, means as in the paper:
      points_to_mask = sum_j w_j min_p |uv_j - p|^2 / sum_j w_j
      mask_to_points = mean_p min_{j: w_j > 0} |p - uv_j|^2
      total = points_to_mask + mask_to_points (or points_to_mask alone if not ``both``).
    Also (detached, plain pixels, for logs and metrics): points_to_mask_px, mask_to_points_px
    (mean Euclidean distances) and n_points (sum of weights). An item with no valid point has
    points_to_mask 0 and mask_to_points = squared image diagonal (no gradient); an empty frame
    (allow_empty) contributes 0. reduction: "mean" | "sum" over the batch, or "none" -> (B,).
    """
    prep = _prepare(uv, valid, target, frame_index)
    return {k: _reduce(v, reduction) for k, v in _chamfer(prep, target, scale, both).items()}


def mask_losses(uv: Tensor, valid: Tensor, target: MaskTargets, frame_index: Tensor, *,
                scale: float = PAPER_SCALE, resolution: int = 128) -> tuple[dict[str, Tensor], Tensor]:
    """`chamfer_2d` (reduction "none") and `soft_coverage_loss` (reduction "none", default
    radius) of the same points in one call: the inputs are checked and the present points
    found once (one host round-trip fewer than the two calls)."""
    prep = _prepare(uv, valid, target, frame_index)
    return _chamfer(prep, target, scale, True), _coverage(prep, target, resolution, None)


def _chamfer(prep: _Prepared, target: MaskTargets, scale: float, both: bool) -> dict[str, Tensor]:
    """`chamfer_2d`'s (B,) values of prepared inputs."""
    uv, w, fi, fi_l, sel, pb = prep.uv, prep.w, prep.fi, prep.fi_l, prep.sel, prep.pb
    B = uv.shape[0]
    inv = 1.0 / (scale * scale)
    count = target.counts[fi]
    has_mask = (count > 0).to(uv.dtype)
    X = uv.reshape(-1, 2).index_select(0, sel)
    ws = w.reshape(-1).index_select(0, sel)
    wsum = w.sum(1)
    d_p = _points_to_mask_sq(X, fi.index_select(0, pb), target)
    zeros = torch.zeros(B, dtype=uv.dtype, device=uv.device)
    norm = has_mask / wsum.clamp(min=1e-12)
    p2m = zeros.index_add(0, pb, ws * d_p) * norm
    p2m_px = zeros.index_add(0, pb, ws * d_p.detach().sqrt()) * norm
    out = {"points_to_mask": p2m * inv, "points_to_mask_px": p2m_px, "n_points": wsum.detach()}
    if both:
        m = _mask_to_points(uv, w, sel, target, fi, fi_l, uv.dtype)
        n = count.clamp(min=1).to(uv.dtype)
        out["mask_to_points"] = m.sq_sum / n * inv
        out["mask_to_points_px"] = m.px_sum / n
        out["total"] = out["points_to_mask"] + out["mask_to_points"]
    else:
        out["total"] = out["points_to_mask"]
    return out


def chamfer_2d_bruteforce(uv: Tensor, valid: Tensor, target: MaskTargets, frame_index: Tensor, *,
                          scale: float = PAPER_SCALE, both: bool = True, reduction: str = "mean",
                          max_chunk: int = 1 << 24) -> dict[str, Tensor]:
    """The exact N x M reference of `chamfer_2d` (same definitions and outputs).

    Nearest neighbours from chunked torch.cdist (at most ``max_chunk`` distances in memory) on
    coordinates centred on the mask, under no_grad; the chosen pairs' distances are then
    recomputed with autograd, so forward and backward equal those of the full distance matrix.
    In float32, cdist's matmul path may pick a neighbour whose squared distance is within ~1e-3
    px^2 of the true nearest; use float64 inputs for an exact reference.
    """
    prep = _prepare(uv, valid, target, frame_index)
    uv, w, fi_l = prep.uv, prep.w, prep.fi_l
    B = uv.shape[0]
    H, W = target.image_size
    inv = 1.0 / (scale * scale)
    keys = ["points_to_mask", "points_to_mask_px", "n_points"]
    if both:
        keys += ["mask_to_points", "mask_to_points_px"]
    rows: dict[str, list[Tensor]] = {k: [] for k in keys}
    zero = uv.new_zeros(())
    for b in range(B):
        f = fi_l[b]
        M = target.frame_pixels(f).to(uv.dtype)
        keep = (w[b] > 0).nonzero().squeeze(1)
        Pb, wb = uv[b].index_select(0, keep), w[b].index_select(0, keep)
        rows["n_points"].append(w[b].sum().detach())
        if M.shape[0] == 0 or Pb.shape[0] == 0:
            rows["points_to_mask"].append(zero)
            rows["points_to_mask_px"].append(zero)
            if both:
                val = zero if M.shape[0] == 0 else zero + float(H * H + W * W)
                rows["mask_to_points"].append(val)
                rows["mask_to_points_px"].append(val.sqrt())
            continue
        nn_p, nn_m = _nearest_bruteforce(Pb.detach(), M, max_chunk)
        d_p = (Pb - M[nn_p]).square().sum(-1)
        rows["points_to_mask"].append((wb * d_p).sum() / wb.sum())
        rows["points_to_mask_px"].append((wb * d_p.detach().sqrt()).sum() / wb.sum())
        if both:
            d_m = (M - Pb[nn_m]).square().sum(-1)
            rows["mask_to_points"].append(d_m.mean())
            rows["mask_to_points_px"].append(d_m.detach().sqrt().mean())
    out = {k: torch.stack(v) for k, v in rows.items()}
    out["points_to_mask"] = out["points_to_mask"] * inv
    if both:
        out["mask_to_points"] = out["mask_to_points"] * inv
        out["total"] = out["points_to_mask"] + out["mask_to_points"]
    else:
        out["total"] = out["points_to_mask"]
    return {k: _reduce(v, reduction) for k, v in out.items()}


@torch.no_grad()
def _nearest_bruteforce(P: Tensor, M: Tensor, max_chunk: int) -> tuple[Tensor, Tensor]:
    """(for each point its nearest mask pixel, for each mask pixel its nearest point)."""
    c = M.mean(0)
    P, M = P - c, M - c
    rows = max(1, max_chunk // P.shape[0])
    best_p = torch.full((P.shape[0],), math.inf, dtype=P.dtype, device=P.device)
    nn_p = torch.zeros(P.shape[0], dtype=torch.long, device=P.device)
    nn_m = []
    for s in range(0, M.shape[0], rows):
        D = torch.cdist(M[s:s + rows], P)                            # (m, K)
        nn_m.append(D.argmin(1))
        v, i = D.min(0)
        better = v < best_p
        best_p = torch.where(better, v, best_p)
        nn_p = torch.where(better, i + s, nn_p)
    return nn_p, torch.cat(nn_m)


# ----------------------------------------------------------------------------- coverage


def soft_coverage_loss(uv: Tensor, valid: Tensor, target: MaskTargets, frame_index: Tensor, *,
                       resolution: int = 128, radius_px: float | Tensor | None = None,
                       reduction: str = "mean") -> Tensor:
    """1 - soft IoU between splatted points and the mask, at low resolution (cheap).

    Chamfer is blind to how densely the points fill the mask; this term rewards covering all of
    it and nothing else. Each visible point adds a Gaussian exp(-d^2 / 2 sigma^2) (times its
    weight) to a density image whose long side is ``resolution`` px; coverage = 1 - exp(-density)
    (a soft union), compared with the area-averaged mask. ``radius_px`` is sigma in full-res
    pixels; by default 0.7 x the mean point spacing sqrt(mask area / number of visible points),
    which makes a uniformly covered mask read ~0.95 inside. Differentiable w.r.t. uv (and the
    weights). Returns (B,) for reduction "none".
    """
    return _reduce(_coverage(_prepare(uv, valid, target, frame_index), target, resolution, radius_px), reduction)


def _coverage(prep: _Prepared, target: MaskTargets, resolution: int, radius_px: float | Tensor | None) -> Tensor:
    """`soft_coverage_loss`'s (B,) values of prepared inputs."""
    uv, w, fi, sel, pb = prep.uv, prep.w, prep.fi, prep.sel, prep.pb
    B = uv.shape[0]
    H, W = target.image_size
    f = resolution / max(H, W)
    h, wl = max(1, round(H * f)), max(1, round(W * f))
    kx, ky = W / wl, H / h
    tgt = target.coverage_target(h, wl).to(uv.dtype)[fi]                # (B,h,wl)
    if radius_px is None:
        n_vis = (w > 0).sum(1).clamp(min=1).to(uv.dtype)
        radius = 0.7 * (target.counts[fi].to(uv.dtype).clamp(min=1) / n_vis).sqrt()
    else:
        radius = torch.as_tensor(radius_px, dtype=uv.dtype, device=uv.device).expand(B)
    sigma = (radius / math.sqrt(kx * ky)).clamp(min=0.5)                 # low-res px
    r = int(min(4, math.ceil(3 * float(sigma.max())))) if B else 1    # stencil: 2r x 2r taps
    X = uv.reshape(-1, 2).index_select(0, sel)
    x = (X[:, 0] + 0.5) / kx - 0.5                                   # low-res pixel coordinates
    y = (X[:, 1] + 0.5) / ky - 0.5
    # Taps floor - r + 1 ... floor + r in density images padded by 3r and cropped afterwards.
    # A point more than 2r outside has no tap in the image; it is clamped to 2r outside, where
    # its taps still all land in the padding.
    pad = 3 * r
    hp, wp = h + 2 * pad, wl + 2 * pad
    x0 = x.detach().floor().clamp(-2 * r, wl - 1 + 2 * r).long() - r + 1   # first tap column
    y0 = y.detach().floor().clamp(-2 * r, h - 1 + 2 * r).long() - r + 1
    # Taps on the leading axes, points along the last (contiguous): broadcasting and the
    # backward's sums then run along whole rows, several times faster on a CPU than (K, 2r) rows.
    a = torch.arange(2 * r, device=uv.device, dtype=uv.dtype).unsqueeze(1)      # (2r,1)
    inv2s2 = (0.5 / sigma.square()).index_select(0, pb)                          # (K,)
    gx = torch.exp(-((x0.to(uv.dtype) + a) - x).square() * inv2s2)               # (2r,K)
    gy = torch.exp(-((y0.to(uv.dtype) + a) - y).square() * inv2s2)
    gy = gy * w.reshape(-1).index_select(0, sel)
    g = (gy.unsqueeze(1) * gx.unsqueeze(0)).reshape(-1)                          # (2r*2r*K,) rows y, x
    start = pb * (hp * wp) + (y0 + pad) * wp + (x0 + pad)                        # (K,)
    idx = torch.empty(2 * r, 2 * r, start.shape[0], dtype=start.dtype, device=start.device)
    for ty in range(2 * r):          # one add per tap: a broadcast add of int64 (2r,2r,1) + (K,) is slow
        for tx in range(2 * r):
            torch.add(start, ty * wp + tx, out=idx[ty, tx])
    idx = idx.view(-1)
    dens = torch.zeros(B * hp * wp, dtype=uv.dtype, device=uv.device).index_add_(0, idx, g)
    dens = dens.view(B, hp, wp)[:, pad:pad + h, pad:pad + wl]
    cov = 1.0 - torch.exp(-dens)
    inter = (cov * tgt).sum((1, 2))
    union = (cov + tgt - cov * tgt).sum((1, 2))
    return 1.0 - inter / union.clamp(min=1e-12)
