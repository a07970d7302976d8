"""Per-frame tensors a fit needs, computed once: SMPL parameters, intrinsics, the body's depth
map (for visibility) and the mask distance transforms, at the data's own resolution or at a
reduced one (`max_side`: the coarse stage compares many candidates on smaller images)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..body import BodyModel
from ..data.subject import Subject
from .losses import MaskTargets
from .visibility import body_depth


@dataclass
class FrameSet:
    ids: list[int]                  # subject frame indices
    global_orient: torch.Tensor     # (F, 3)
    body_pose: torch.Tensor         # (F, 69)
    transl: torch.Tensor            # (F, 3)
    K: torch.Tensor                 # (F, 3, 3)
    depth: torch.Tensor             # (F, H, W) body depth, +inf off the body
    targets: MaskTargets
    masks: list                     # bool (H, W) numpy masks
    label_targets: dict = None      # label id -> MaskTargets of that garment label (fits with labels)
    transforms: torch.Tensor = None  # (F, 24, 4, 4) the body's rest-to-posed joint transforms (fixed per fit)
    scale: float = 1.0              # these frames' pixels per pixel of the subject's images

    @property
    def point_stride(self) -> int:
        """Score every n-th point on these frames: as many points per pixel as at full size."""
        return max(1, int(1.0 / (self.scale * self.scale) + 1e-6))

    def target(self, key: int) -> MaskTargets:
        """The clothing mask (key < 0) or one garment label's masks."""
        return self.targets if key < 0 else self.label_targets[key]

    def __len__(self) -> int:
        return len(self.ids)


def reduced_size(image_size: tuple[int, int], max_side: int) -> tuple[int, int] | None:
    """(h, w) with the long side `max_side`, or None when the images are not larger than that
    (or `max_side` <= 0: no reduction)."""
    H, W = (int(v) for v in image_size)
    if max_side <= 0 or max(H, W) <= max_side:
        return None
    s = max_side / max(H, W)
    return max(1, round(H * s)), max(1, round(W * s))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the (H, W) bool `mask` area-averaged to `size`, kept where more than half of a
    reduced pixel was inside; exactly half on every other pixel (a checkerboard), so thin parts
    neither grow nor shrink on average."""
    m = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32)[None, None]
    a = F.interpolate(m, size=size, mode="area")[0, 0]
    checker = (torch.arange(size[0])[:, None] + torch.arange(size[1])[None]) % 2 == 0
    return ((a > 0.5) | ((a == 0.5) & checker)).numpy()


def scale_intrinsics(K: np.ndarray, image_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(..., 3, 3) intrinsics of images resized from `image_size` to `size` (both (H, W)), pixel
    centres at integers in both: u' = (u + 0.5) * w / W - 0.5, the same along v."""
    sy, sx = size[0] / image_size[0], size[1] / image_size[1]
    S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return S @ np.asarray(K, dtype=np.float64)


def load_frames(subject: Subject, body: BodyModel, ids: list[int], device: torch.device,
                labels: list[int] | None = None, max_side: int = 0) -> FrameSet:
    """`labels`: garment label ids whose masks (labels/ == id) to load as targets too; a label
    absent from a frame is an empty target there (it adds nothing to that frame's loss).
    `max_side` > 0 and smaller than the images' long side: masks, labels, intrinsics and depth
    at that reduced size (`FrameSet.scale` < 1)."""
    t = lambda a: torch.as_tensor(np.asarray(a)[ids], dtype=torch.float32, device=device)  # noqa: E731
    smpl = subject.smpl
    size = reduced_size(subject.image_size, max_side)
    shrink = (lambda m: m) if size is None else (lambda m: resize_mask(m, size))  # noqa: E731
    K = subject.K if size is None else scale_intrinsics(subject.K, subject.image_size, size)
    go, bp, tr, K = t(smpl.global_orient), t(smpl.body_pose), t(smpl.transl), t(K)
    masks = [shrink(subject.mask(i)) for i in ids]
    with torch.no_grad():
        verts = body(torch.as_tensor(smpl.betas, device=device), go, bp, tr).vertices
        depth = body_depth(verts, body.faces_t, K, size or subject.image_size)
        transforms = body.joint_transforms(body.betas_tensor(torch.as_tensor(smpl.betas, device=device)),
                                           torch.cat([go, bp], 1))
    label_targets = {}
    if labels:
        maps = [subject.labels(i) for i in ids]
        label_targets = {k: MaskTargets.from_masks([shrink(m == k) for m in maps], device, allow_empty=True)
                         for k in labels}
    scale = 1.0 if size is None else size[1] / subject.image_size[1]
    return FrameSet(list(ids), go, bp, tr, K, depth, MaskTargets.from_masks(masks, device), masks, label_targets,
                    transforms, scale)
