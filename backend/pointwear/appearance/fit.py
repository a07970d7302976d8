"""Fitting an outfit's appearance to a subject's frames (Point-Based Clothing, stage 2): the
per-point neural descriptors and the rendering U-Net are trained together so that the splatted
descriptors of the fitted outfit's points render each frame's clothing pixels.

Per step, a batch of training frames, each as a random window around its clothing:

- input: the outfit's posed points that the body does not hide, splatted with their descriptors
  by a camera that already includes the window and a random affine (rotation, scale, shift);
- target: the frame where its clothing mask is on, a random colour elsewhere, resampled by the
  same affine; the prediction is the network's RGB composited over that colour by its mask;
- loss: L1 + (1 - SSIM) on the composites, Dice on the mask (the paper's -log form), plus the
  VGG19 perceptual loss when a local VGG19 weights file is given;
- optional (`align_grid`, off by default): each training frame's points moved by its own smooth
  2D offset field (align.py), learned jointly with an L2 penalty; held-out frames can also be
  scored after aligning their points to their clothing masks alone (`mask_align_steps`).

Every fourth frame is held out by default (`--frames` picks the training frames). A checkpoint is
written after every epoch (and when cancelled); running the same command again continues from
it. The checkpoint carries a fingerprint of the outfit it was fitted on (`outfit_fingerprint`):
a checkpoint of another outfit (another code, a re-fit, a refined result) is not resumed but kept
aside as `checkpoint-other-outfit.pt` with a warning naming it, and the fit starts afresh. Adam,
network 1e-3 and descriptors 1e-2 (the paper: 1e-4 and 1e-2 over ~80 much longer epochs) with a
cosine decay to 5 % over the run, batch 2 on the CPU (8 on CUDA), 300 epochs. On CPUs with native
bfloat16 the U-Net runs in bfloat16 mixed precision (autocast; weights, Adam and losses stay
float32): ~1.45x cheaper steps, the same loss curve within ~1 % epoch by epoch
(docs/benchmarks.md).
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..body import BodyModel, load_body
from ..data.subject import Subject, read_subject
from ..device import pick_device, scaled
from ..errors import InputError
from ..fileio import atomic_path
from ..link.protocol import CHECKPOINT_PT, OUTFIT_NPZ, POSED_NPZ
from ..fit.state import FitCancelled, split_frames
from ..render.rasterizer import project
from .frames import AppearanceFrames, load_appearance_frames, read_outfit_result, training_size
from .align import FrameAlignment, image_offsets, moved_by_pixels
from .losses import VGGPerceptual, dice_loss, ssim_loss
from .model import APPEARANCE_VISIBILITY, AppearanceConfig, AppearanceModel, mesh_edges
from .outputs import side_by_side, write_outputs, write_png
from .state import TrainState
from .unet import network_dtype

__all__ = ["AppearanceOptions", "AppearanceFitter", "fit_appearance", "FitCancelled", "dropped"]

Progress = Callable[[str, int, int], None]
Preview = Callable[[np.ndarray, str, int], None]
CHECKPOINT_FORMAT = "pointwear-appearance-checkpoint"
OTHER_OUTFIT_CHECKPOINT = "checkpoint-other-outfit.pt"   # where a checkpoint of another outfit is kept


def outfit_fingerprint(outfit: dict, posed_points: np.ndarray) -> str:
    """A short hex digest of what an appearance is fitted to: the outfit's drape, code, betas and
    rest points (P, 3), and its posed points (N, P, 3) in the subject's frames."""
    digest = hashlib.sha256()
    digest.update(str(outfit["drape"]).encode())
    for key in ("code", "betas", "points"):
        digest.update(np.ascontiguousarray(np.asarray(outfit[key], np.float32)).tobytes())
    digest.update(np.ascontiguousarray(np.asarray(posed_points, np.float32)).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class AppearanceOptions:
    epochs: int = 300                  # passes over the training frames
    size: int | None = None            # training image size (longer side); None: the frames' own, <= 512
    frames: list[int] | None = None    # training frames; the rest are held out (default: every 4th held out)
    minutes: float | None = None       # time budget for training (over resumes); None: epochs only
    batch: int = 0                     # frames per step; 0: by device (2 on the CPU, 8 on CUDA)
    lr_net: float = 1e-3
    lr_descriptors: float = 1e-2
    lr_final: float = 0.05             # cosine decay to this fraction of the learning rates
    descriptor_dim: int = 16
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    radius_px: float = 1.5
    midpoints: bool = False            # also splat a descriptor at every mesh edge's midpoint (needs the outfit's faces)
    normals: bool = True               # feed the network the points' camera-space normals (needs the outfit's faces)
    scales: int = 1                    # splat pyramid levels fed to the U-Net's encoder levels (1: full resolution only)
    crop: int | None = None            # training window side (square); None: fits the clothing (H, W)
    l1_weight: float = 1.0
    ssim_weight: float = 1.0
    dice_weight: float = 1.0
    vgg: str | None = None             # path of a local VGG19 state dict; None: no perceptual loss
    vgg_weight: float = 0.1
    augment: bool = True
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.1                 # fraction of the window
    visibility_threshold: float = APPEARANCE_VISIBILITY
    seed: int = 0
    device: str = "auto"
    threads: int = 1                   # CPU threads for torch (0: torch's default)
    precision: str = "auto"            # the U-Net's convolutions: auto (bfloat16 on CPUs that have it), float32, bfloat16
    align_grid: int = 0                # per-training-frame 2D offset field: (grid x grid) nodes over the image; 0: off
    lr_align: float = 0.05             # Adam learning rate of the offset nodes (px per step)
    align_weight: float = 1e-3         # L2 penalty on the offset nodes (per px^2)
    align_space: str = "image"         # where the offset field's nodes live: image (g x g over the image) or cloth (g^3 over the rest points)
    align_heldout: bool = True         # with align_grid: held-out frames also scored with the field interpolated in time
    point_dropout: float = 0.25        # share of the visible points hidden at random in each training item (0: off)
    jitter_px: float = 0.0             # training points moved by a random smooth offset field (std px; 0: off)
    jitter_grid: int = 4               # its nodes per side over the image
    mask_align_steps: int = 0          # held-out frames also scored with offset fields fitted to their masks only (0: off)
    mask_align_grid: int = 2           # their grid (nodes per side over the image)
    lr_mask_align: float = 0.05        # Adam learning rate of those offsets (px per step)


def dropped(visible: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """visible (B, P) bool with each point also hidden with probability p (drawn on the host by
    `generator`, then moved to visible's device): the training items' point dropout."""
    keep = torch.rand(visible.shape, generator=generator).to(visible.device) >= p
    return visible & keep


def _round_up(x: float, m: int = 16) -> int:
    return int(math.ceil(x / m) * m)


class AppearanceFitter:
    def __init__(self, subject: Subject, outfit_dir: str | Path, out: str | Path, options: AppearanceOptions,
                 progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                 preview: Preview | None = None, preview_every_s: float = 2.0,
                 body: BodyModel | None = None) -> None:
        self.subject, self.outfit_dir, self.out, self.options = subject, Path(outfit_dir), Path(out), options
        self.progress = progress or (lambda stage, i, n: None)
        self.should_stop = should_stop or (lambda: False)
        # Previews (target | render of the first training frame) go to APP/preview/latest.png after
        # the first step and then at most every `preview_every_s` seconds, and to `preview` if given.
        self.preview, self.preview_every_s, self._preview_at = preview, preview_every_s, None
        self.previews = True
        self.device = pick_device(options.device)
        if self.device.type == "cpu" and options.threads > 0:
            torch.set_num_threads(options.threads)
        if options.batch == 0:
            self.options = options = replace(options, batch=scaled(2, self.device, 8))
        try:
            self.net_dtype = network_dtype(self.device, options.precision)
        except ValueError as exc:
            raise InputError(str(exc), field="precision") from None
        if options.epochs < 0 or options.batch < 1:
            raise InputError(f"epochs must be >= 0 and batch >= 1, got {options.epochs}, {options.batch}",
                             field="--epochs")
        self.outfit, posed = read_outfit_result(self.outfit_dir, subject)
        self.fingerprint = outfit_fingerprint(self.outfit, posed["points"])
        self.body = body or load_body(subject.meta.get("body", "default"), subject.meta.get("gender", "neutral"),
                                      device=self.device)
        self.train_ids, self.held_ids = split_frames(subject.num_frames, options.frames)
        self._check_masks()
        self.size = training_size(subject.image_size, options.size)
        load = lambda ids: load_appearance_frames(subject, self.body, posed["points"], ids, self.size,  # noqa: E731
                                                  self.device, options.visibility_threshold)
        self.train = load(self.train_ids)
        self.held = load(self.held_ids) if self.held_ids else None
        self._check_points()
        self.crop = self._crop_size()
        faces = self._faces()
        self.config = AppearanceConfig(
            num_points=int(self.outfit["points"].shape[0]), descriptor_dim=options.descriptor_dim,
            widths=tuple(options.widths), radius_px=options.radius_px, scales=options.scales, size=self.size,
            crop=self.crop,
            px_per_m=self._px_per_m(), visibility_threshold=options.visibility_threshold,
            edges=len(mesh_edges(faces)) if options.midpoints else 0, normals=options.normals,
            drape=str(self.outfit["drape"]), code=[float(c) for c in np.asarray(self.outfit["code"]).reshape(-1)],
            betas=[float(b) for b in np.asarray(self.outfit["betas"]).reshape(-1)],
            body=str(self.outfit.get("body", "default")), gender=str(self.outfit.get("gender", "neutral")))
        self.rng = torch.Generator().manual_seed(options.seed)
        self._pending: list[dict] = []     # loss terms of the steps since the last read-back
        self.model = AppearanceModel(self.config, seed=options.seed, faces=faces).to(self.device)
        for name in ("align_grid", "mask_align_grid"):
            if getattr(options, name) < 0 or getattr(options, name) == 1:
                raise InputError(f"{name} must be 0 (off) or >= 2, got {getattr(options, name)}", field=name)
        if options.align_space not in ("image", "cloth"):
            raise InputError(f"align_space must be image or cloth, got {options.align_space!r}", field="align_space")
        self.align = self._make_alignment(len(self.train), options.align_grid)
        self.optimizer = self._make_optimizer()
        self.vgg = VGGPerceptual(options.vgg).to(self.device) if options.vgg else None
        self.ckpt_path = self.out / CHECKPOINT_PT

    def _faces(self) -> np.ndarray | None:
        """(F, 3) the outfit mesh's triangles when `midpoints` or `normals` need them, else None. An
        outfit without faces (a point cloud) cannot have them: InputError naming the option."""
        wanted = [name for name in ("midpoints", "normals") if getattr(self.options, name)]
        if not wanted:
            return None
        if "faces" not in self.outfit:
            raise InputError(f"{' and '.join(wanted)} need the outfit's mesh faces; this outfit is a point cloud",
                             file=self.outfit_dir / OUTFIT_NPZ, field="faces",
                             hint=f"fit without {' and '.join('--' + w for w in wanted)}")
        return np.asarray(self.outfit["faces"], np.int64)

    def _make_alignment(self, frames: int, grid: int) -> FrameAlignment | None:
        """An offset field per frame (align.py) in `align_space`; None when grid is 0."""
        if not grid:
            return None
        rest = None
        if self.options.align_space == "cloth":
            rest = torch.as_tensor(np.asarray(self.outfit["points"], np.float32), device=self.device)
        return FrameAlignment(frames, grid, rest).to(self.device)

    def _make_optimizer(self) -> torch.optim.Adam:
        """Adam over the network, the descriptors and (when on) the training frames' alignment."""
        o = self.options
        groups = [(self.model.net.parameters(), o.lr_net), (self.model.descriptors.parameters(), o.lr_descriptors)]
        if self.align is not None:
            groups.append((self.align.parameters(), o.lr_align))
        return torch.optim.Adam([{"params": p, "lr": lr, "base_lr": lr} for p, lr in groups], betas=(0.9, 0.999))

    # -- checks ---------------------------------------------------------------------------------
    def _check_masks(self) -> None:
        empty = [i for i in self.train_ids if not self.subject.mask(i).any()]
        if empty:
            raise InputError(f"clothing masks of training frames {empty} are empty: no clothing pixels to learn "
                             "the appearance from", file=self.subject.root / "masks",
                             hint="leave them out with --frames")
        held_empty = [i for i in self.held_ids if not self.subject.mask(i).any()]
        if held_empty:
            warnings.warn(f"{self.subject.root / 'masks'}: held-out frames {held_empty} have no clothing pixels; "
                          "they are left out of the held-out scores")
            self.held_ids = [i for i in self.held_ids if i not in held_empty]

    def _check_points(self) -> None:
        none = [i for k, i in enumerate(self.train.ids) if not bool(self.train.visible[k].any())]
        if none:
            raise InputError(f"no outfit point is visible in training frames {none}",
                             file=self.outfit_dir / POSED_NPZ, field="points",
                             hint="is this the outfit fitted on this subject? leave those frames out with --frames")

    def _crop_size(self) -> tuple[int, int]:
        """Training window (height, width): the largest clothing mask's height and width plus a
        16 px margin each side, multiples of 16, at most the image's (rounded up to 16). The
        U-Net's cost grows with the window's area, so it is as small as holds the clothing;
        scaled-up or rotated items may lose a few pixels at the edge (one more augmentation).
        Points outside the mask (a fitted outfit may reach past the clothing, e.g. trouser legs
        over shorts) are covered by moving the window over them (see `_affines`): the network
        must learn to give them no mask."""
        if self.options.crop:
            return _round_up(self.options.crop), _round_up(self.options.crop)
        boxes = self.train.mask_boxes
        ext = (boxes[:, 2:] - boxes[:, :2]).max(0).values + 1            # (width, height)
        h, w = self.size
        return (min(_round_up(float(ext[1]) + 32), _round_up(h)), min(_round_up(float(ext[0]) + 32), _round_up(w)))

    def _px_per_m(self) -> float:
        f = 0.5 * (self.train.K[:, 0, 0] + self.train.K[:, 1, 1])
        z = torch.stack([self.train.points[k, self.train.visible[k], 2].median() for k in range(len(self.train))])
        return float((f / z).median())

    # -- one batch ------------------------------------------------------------------------------
    def _affines(self, frames: AppearanceFrames, idx: Tensor, augment: bool) -> Tensor:
        """(B, 3, 3) pixel transforms from image to window: window centre on the clothing's
        centre, then a random rotation, scale and shift (about the window centre). When the
        clothing and its points reach beyond the window, the centre moves randomly over them."""
        B = idx.numel()
        C = torch.tensor([self.crop[1], self.crop[0]], dtype=torch.float32)    # (width, height)
        o = self.options
        g = self.rng
        box = self._host_boxes(frames)[idx]
        centre = 0.5 * (box[:, :2] + box[:, 2:])
        if augment:
            room = ((box[:, 2:] - box[:, :2]) - 0.75 * C).clamp(min=0) / 2       # (B, 2) px either way
            centre = centre + (torch.rand(B, 2, generator=g) * 2 - 1) * room
            angle = (torch.rand(B, generator=g) * 2 - 1) * math.radians(o.rotate_deg)
            scale = o.scale[0] + torch.rand(B, generator=g) * (o.scale[1] - o.scale[0])
            shift = (torch.rand(B, 2, generator=g) * 2 - 1) * o.shift * C
        else:
            angle, scale, shift = torch.zeros(B), torch.ones(B), torch.zeros(B, 2)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        A = torch.zeros(B, 3, 3)
        A[:, 0, 0], A[:, 0, 1], A[:, 1, 0], A[:, 1, 1] = cos, -sin, sin, cos
        A[:, 2, 2] = 1
        c_win = (C - 1) / 2 + shift
        A[:, :2, 2] = c_win - torch.einsum("bij,bj->bi", A[:, :2, :2], centre)
        return A.to(self.device)

    def _host_boxes(self, frames: AppearanceFrames) -> Tensor:
        """The frames' clothing boxes on the host, copied once (the windows are drawn there)."""
        cache = self.__dict__.setdefault("_boxes", {})
        if id(frames) not in cache:
            cache[id(frames)] = frames.boxes.cpu()
        return cache[id(frames)]

    def _targets(self, frames: AppearanceFrames, idx: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
        """The frames' RGB and masks resampled into the windows: (B,3,ch,cw), (B,1,ch,cw)."""
        ch, cw = self.crop
        h, w = frames.size
        inv = torch.linalg.inv(A)
        ys, xs = torch.meshgrid(torch.arange(ch, device=self.device, dtype=torch.float32),
                                torch.arange(cw, device=self.device, dtype=torch.float32), indexing="ij")
        q = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)            # (ch*cw, 3)
        p = torch.einsum("bij,nj->bni", inv, q)[..., :2]                              # image px
        grid = torch.stack([(2 * p[..., 0] + 1) / w - 1, (2 * p[..., 1] + 1) / h - 1], -1).reshape(-1, ch, cw, 2)
        src = torch.cat([frames.images[idx], frames.masks[idx]], 1)
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out[:, :3], out[:, 3:].clamp(0, 1)

    def batch_loss(self, frames: AppearanceFrames, idx: Tensor, augment: bool = True) -> tuple[Tensor, dict]:
        A = self._affines(frames, idx, augment and self.options.augment)    # idx on the host
        idx = idx.to(self.device)
        points = frames.points[idx]
        aligned = self.align is not None and frames is self.train
        if aligned:     # training frames only: each moves its points by its own smooth offset field
            points = self.align(idx, points, frames.K[idx], frames.size)
        if augment and self.options.jitter_px > 0:
            points = self._jittered(points, frames.K[idx], frames.size)
        K = A @ frames.K[idx]
        visible = frames.visible[idx]
        if augment and self.options.point_dropout > 0:
            visible = dropped(visible, self.options.point_dropout, self.rng)
        rgb, mask = self.model(points, visible, K, self.crop, self.net_dtype)
        with torch.no_grad():
            image, target_mask = self._targets(frames, idx, A)
            if augment:
                bg = torch.rand(idx.numel(), 3, 1, 1, generator=self.rng).to(self.device) * 2 - 1
            else:
                bg = torch.zeros(idx.numel(), 3, 1, 1, device=self.device)
            target = image * target_mask + bg * (1 - target_mask)
        pred = rgb * mask + bg * (1 - mask)
        o = self.options
        terms = {"l1": (pred - target).abs().mean(), "ssim": ssim_loss(pred, target),
                 "dice": dice_loss(mask, target_mask)}
        total = o.l1_weight * terms["l1"] + o.ssim_weight * terms["ssim"] + o.dice_weight * terms["dice"]
        if self.vgg is not None:
            terms["vgg"] = self.vgg(pred, target)
            total = total + o.vgg_weight * terms["vgg"]
        if aligned:
            terms["align"] = self.align.penalty(idx)
            total = total + o.align_weight * terms["align"]
        return total, {k: v.detach() for k, v in terms.items()}    # read at the epoch's end: no wait per step

    def _jittered(self, points: Tensor, K: Tensor, size: tuple[int, int]) -> Tensor:
        """points (B, P, 3) moved by a random smooth offset field per item (nodes ~ N(0, jitter_px^2)
        px on a jitter_grid^2 grid over the image): the misregistration a held-out frame has,
        so the network learns to render under it. (B, P, 3)"""
        o = self.options
        g = o.jitter_grid
        nodes = torch.randn(points.shape[0], 2, g, g, generator=self.rng).to(points) * o.jitter_px
        uv, _ = project(points, K)
        return moved_by_pixels(points, K, image_offsets(nodes, uv, size))

    def mask_aligned(self, frames: AppearanceFrames) -> AppearanceFrames:
        """The frames with their points moved by offset fields fitted to each frame's clothing mask
        alone (Dice of the predicted mask in the centred window + the L2 penalty; the network and
        descriptors frozen, in eval mode; never the frame's RGB): what a subject frame's own
        silhouette tells about the fitted geometry's misregistration there. (F, P, 3) points."""
        o = self.options
        if not o.mask_align_steps or not o.mask_align_grid:
            return frames
        align = FrameAlignment(len(frames), o.mask_align_grid).to(self.device)
        opt = torch.optim.Adam(align.parameters(), lr=o.lr_mask_align)
        idx = torch.arange(len(frames))
        A = self._affines(frames, idx, False)
        idx = idx.to(self.device)
        _, target_mask = self._targets(frames, idx, A)
        K = A @ frames.K
        was = self.model.training
        self.model.eval()
        self.model.requires_grad_(False)
        try:
            for _ in range(o.mask_align_steps):
                points = align(idx, frames.points, frames.K, frames.size)
                _, mask = self.model(points, frames.visible, K, self.crop, self.net_dtype)
                loss = dice_loss(mask, target_mask) + o.align_weight * align.penalty(idx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            self.model.requires_grad_(True)
            self.model.train(was)
        with torch.no_grad():
            points = align(idx, frames.points, frames.K, frames.size)
        self.mask_alignment = align
        return replace(frames, points=points)

    def time_aligned(self, frames: AppearanceFrames) -> AppearanceFrames:
        """The frames (held-out ones) with their points moved by the training frames' offset fields
        interpolated in time (by frame index alone, align.FrameAlignment.at_times); the frames
        unchanged when the alignment is off. (F, P, 3) points."""
        if self.align is None:
            return frames
        align = self.align.at_times(self.train.ids, frames.ids)
        idx = torch.arange(len(frames), device=self.device)
        with torch.no_grad():
            return replace(frames, points=align(idx, frames.points, frames.K, frames.size))

    # -- training -------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train) / self.options.batch))

    def _lr_factor(self, state: TrainState) -> float:
        o = self.options
        total = max(1, o.epochs * self.steps_per_epoch)
        p = state.step / total
        if o.minutes:
            p = max(p, state.elapsed / (60.0 * o.minutes))
        p = min(max(p, 0.0), 1.0)
        return o.lr_final + (1 - o.lr_final) * 0.5 * (1 + math.cos(math.pi * p))

    def _batch_ids(self, state: TrainState) -> Tensor:
        B, n = self.options.batch, len(self.train)
        idx = state.order[state.pos * B:(state.pos + 1) * B]
        if idx.numel() < B:      # the epoch's last, short batch: fill it with other frames (BatchNorm wants > 1)
            extra = torch.randint(0, n, (B - idx.numel(),), generator=self.rng)
            idx = torch.cat([idx, extra])
        return idx                # on the host: the windows are drawn there

    def _out_of_time(self, state: TrainState) -> bool:
        return self.options.minutes is not None and state.elapsed >= 60.0 * self.options.minutes

    def train_loop(self, state: TrainState) -> None:
        o = self.options
        total = o.epochs * self.steps_per_epoch
        self.model.train()
        t_last = time.monotonic()
        while state.epoch < o.epochs and not self._out_of_time(state):
            if state.order is None:
                state.order = torch.randperm(len(self.train), generator=self.rng)
            while state.pos < self.steps_per_epoch:
                if self.should_stop():
                    self.save_checkpoint(state)
                    raise FitCancelled(f"appearance fit cancelled in epoch {state.epoch + 1} at step {state.step}")
                now = time.monotonic()
                state.elapsed += now - t_last
                t_last = now
                if self._out_of_time(state):
                    break
                factor = self._lr_factor(state)
                for group in self.optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                loss, terms = self.batch_loss(self.train, self._batch_ids(state))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self._pending.append(terms | {"total": loss.detach()})
                state.pos += 1
                state.step += 1
                self.progress("train", state.step, total)
                if self.previews:
                    self._maybe_preview(state)
            now = time.monotonic()
            state.elapsed += now - t_last
            t_last = now
            self._flush_losses(state)
            if state.pos >= self.steps_per_epoch:
                state.epoch += 1
                state.pos, state.order = 0, None
                state.history.append(self._epoch_summary(state))
                state.losses = []
            self.save_checkpoint(state)

    def _flush_losses(self, state: TrainState) -> None:
        """The steps' loss terms (device tensors) into state.losses as numbers: one read back."""
        if self._pending:
            keys = list(self._pending[0])
            rows = torch.stack([torch.stack([t[k] for k in keys]) for t in self._pending]).tolist()
            state.losses.extend(dict(zip(keys, row)) for row in rows)
            self._pending = []

    def _epoch_summary(self, state: TrainState) -> dict:
        keys = state.losses[0].keys() if state.losses else []
        row = {"epoch": state.epoch, "step": state.step, "seconds": round(state.elapsed, 1)}
        row.update({k: round(float(np.mean([s[k] for s in state.losses])), 5) for k in keys})
        return row

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, state: TrainState) -> None:
        self._flush_losses(state)
        payload = {"format": CHECKPOINT_FORMAT, "model": self.model.payload(),
                   "optimizer": self.optimizer.state_dict(), "epoch": state.epoch, "step": state.step,
                   "pos": state.pos, "order": state.order, "elapsed": state.elapsed, "history": state.history,
                   "losses": state.losses, "rng": self.rng.get_state(),
                   "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()},
                   "train_ids": self.train_ids, "outfit_fingerprint": self.fingerprint,
                   "align": None if self.align is None else self.align.nodes.detach().cpu()}
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self) -> TrainState:
        state = TrainState()
        if not self.ckpt_path.exists():
            return state
        path = self.ckpt_path
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read the appearance checkpoint ({type(exc).__name__}: {exc}); delete it "
                             "to start over", file=path) from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InputError("not an appearance fit checkpoint; delete it to start over", file=path, field="format")
        saved = AppearanceModel.from_payload(ckpt["model"], path)
        other = self._other_outfit(ckpt, saved.config)
        if other:
            kept = path.with_name(OTHER_OUTFIT_CHECKPOINT)
            path.replace(kept)
            warnings.warn(f"{path}: the checkpoint was fitted on another outfit ({other}) than "
                          f"{self.outfit_dir}: not resumed; kept as {kept}, this fit starts afresh")
            return state
        for name in ("widths", "scales", "edges", "normals"):
            if getattr(saved.config, name) != getattr(self.config, name):
                raise InputError(f"network {name} {getattr(saved.config, name)} differ from this fit's "
                                 f"{getattr(self.config, name)}", file=path, field=name,
                                 hint="use the same options (midpoints, normals, scales, widths), "
                                      "or delete the checkpoint to start over")
        saved.descriptors.check(self.config.samples, self.config.descriptor_dim, file=path, field="descriptors")
        if saved.config.drape != self.config.drape or tuple(saved.config.size) != tuple(self.config.size):
            raise InputError(f"the checkpoint was fitted for drape {saved.config.drape!r} at "
                             f"{tuple(saved.config.size)} px, this fit is {self.config.drape!r} at "
                             f"{tuple(self.config.size)} px", file=path, field="config",
                             hint="use the same --outfit and --size, or delete the checkpoint to start over")
        if list(ckpt.get("train_ids", self.train_ids)) != list(self.train_ids):
            raise InputError(f"the checkpoint trained on frames {ckpt.get('train_ids')}, this fit on "
                             f"{self.train_ids}", file=path, field="train_ids",
                             hint="use the same --frames, or delete the checkpoint to start over")
        self.crop = tuple(saved.config.crop)
        self.config = saved.config
        self.model = saved.to(self.device)
        self._load_alignment(ckpt.get("align"), path)
        self.optimizer = self._make_optimizer()
        bases = [group["base_lr"] for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group, base in zip(self.optimizer.param_groups, bases):
            group["base_lr"] = base
        self.rng.set_state(ckpt["rng"])
        state = TrainState(epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), pos=int(ckpt["pos"]),
                           order=ckpt.get("order"), elapsed=float(ckpt["elapsed"]), history=list(ckpt["history"]),
                           losses=list(ckpt.get("losses") or []))
        state.resumed_from = {"epoch": state.epoch, "step": state.step, "pos": state.pos}
        return state

    def _load_alignment(self, nodes: Tensor | None, path: Path) -> None:
        """The checkpoint's alignment nodes into this fit's; InputError naming the file when the
        checkpoint was made with the alignment on and this fit has it off, or another grid."""
        want = None if self.align is None else tuple(self.align.nodes.shape)
        have = None if nodes is None else tuple(nodes.shape)
        if want != have:
            raise InputError(f"the checkpoint's frame alignment is {have or 'off'}, this fit's {want or 'off'} "
                             "(frames, 2, grid, grid)", file=path, field="align",
                             hint="use the same align_grid, or delete the checkpoint to start over")
        if nodes is not None:
            with torch.no_grad():
                self.align.nodes.copy_(nodes.to(self.align.nodes))

    def _other_outfit(self, ckpt: dict, saved: AppearanceConfig) -> str:
        """How the checkpoint's outfit differs from this fit's ("" when it is the same): by the
        stored fingerprint, or for checkpoints without one by drape, code, betas and point count."""
        stored = ckpt.get("outfit_fingerprint")
        if stored is not None:
            return "" if stored == self.fingerprint else f"fingerprint {stored}, this outfit's {self.fingerprint}"
        if saved.drape != self.config.drape:
            return f"drape {saved.drape!r}, this outfit's {self.config.drape!r}"
        if saved.num_points != self.config.num_points:
            return f"{saved.num_points} points, this outfit's {self.config.num_points}"
        for key in ("code", "betas"):
            a, b = np.asarray(getattr(saved, key), np.float64), np.asarray(getattr(self.config, key), np.float64)
            if a.shape != b.shape or np.abs(a - b).max(initial=0.0) > 1e-6:
                return f"another {key}"
        return ""

    # -- previews -------------------------------------------------------------------------------
    def _maybe_preview(self, state: TrainState) -> None:
        now = time.monotonic()
        if self._preview_at is not None and now - self._preview_at < self.preview_every_s:
            return
        self._preview_at = now
        try:
            image = self.preview_image()
            write_png(self.out / "preview" / "latest.png", image)
        except Exception as exc:  # noqa: BLE001 - a preview never stops a fit
            warnings.warn(f"appearance preview failed, previews are off: {type(exc).__name__}: {exc}")
            self.previews = False
            return
        if self.preview is not None:
            self.preview(image, "train", state.step)

    @torch.no_grad()
    def preview_image(self, k: int = 0) -> np.ndarray:
        """Target | render of training frame k over grey, cut to the clothing and enlarged to
        >= 256 px high: (h, 2w, 3) uint8."""
        f = self.train
        rgb, mask = self.model.render(f.points[k:k + 1], f.visible[k:k + 1], f.K[k:k + 1], f.size)
        return side_by_side(f.images[k], f.masks[k], rgb[0], mask[0], f.mask_boxes[k], self.crop)

    # -- the whole fit --------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.load_checkpoint()
        self.train_loop(state)
        return write_outputs(self, state, time.time() - t0)


def fit_appearance(subject_dir: str | Path, outfit_dir: str | Path, out: str | Path, options: AppearanceOptions,
                   progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                   preview: Preview | None = None) -> dict:
    """Fit the appearance of the outfit in `outfit_dir` (a fit-outfit result) to the subject's frames
    and write the result folder `out` (see outputs.py)."""
    subject = read_subject(subject_dir)
    return AppearanceFitter(subject, outfit_dir, out, options, progress, should_stop, preview).run()
