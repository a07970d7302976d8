"""What an appearance fit needs per frame, computed once at the training size: the outfit's
posed points (from the fit-outfit result's posed.npz), which of them the body does not hide, the
intrinsics, the frame and its clothing mask, and the clothing's bounding box (for the crops).

Also the check that an outfit result belongs to the subject (same frames, body, betas, poses
and cameras): appearance is learned from the outfit's points over the subject's pixels, so a
result from another subject would silently teach nonsense."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..body import BodyModel
from ..data.subject import Subject
from ..drape.redrape import load_outfit
from ..errors import InputError
from ..fileio import load_npz
from ..link.protocol import OUTFIT_NPZ, POSED_NPZ
from ..fit.visibility import body_depth, visible_points
from ..render.rasterizer import project
from .model import scale_intrinsics

__all__ = ["AppearanceFrames", "load_appearance_frames", "read_outfit_result", "training_size"]


@dataclass
class AppearanceFrames:
    ids: list[int]          # subject frame indices
    points: Tensor          # (F, P, 3) camera space
    visible: Tensor         # (F, P) bool: not hidden by the body
    K: Tensor               # (F, 3, 3) at the training size
    images: Tensor          # (F, 3, h, w) in [-1, 1]
    masks: Tensor           # (F, 1, h, w) 0 / 1
    boxes: Tensor           # (F, 4) x0, y0, x1, y1 of the clothing (mask and visible points), px
    mask_boxes: Tensor      # (F, 4) the same for the clothing mask alone

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def training_size(image_size: tuple[int, int], size: int | None) -> tuple[int, int]:
    """(h, w) of the training images: the longer side `size` (None: the frames' own size,
    at most 512), the aspect ratio kept."""
    H, W = image_size
    if size is None:
        size = min(max(H, W), 512)
    s = size / max(H, W)
    return max(16, round(H * s)), max(16, round(W * s))


def read_outfit_result(outfit_dir: str | Path, subject: Subject) -> tuple[dict, dict]:
    """outfit.npz and posed.npz of a fit-outfit result, checked against the subject: InputError
    naming the file and field when they belong to another subject or body."""
    outfit_dir = Path(outfit_dir)
    outfit = load_outfit(outfit_dir)
    outfit_file = outfit_dir / OUTFIT_NPZ
    posed_file = outfit_dir / POSED_NPZ
    if not posed_file.is_file():
        raise InputError("missing: an outfit result folder from `pointwear fit-outfit` has posed.npz",
                         file=posed_file)
    P = int(outfit["points"].shape[0])
    n = subject.num_frames
    # Bounded by what this subject and outfit can need before anything is inflated.
    posed = load_npz(posed_file, {"points": n * P * 3})
    hint = "fit the outfit on this subject first: pointwear fit-outfit SUBJECT --out OUT"
    if "points" not in posed:
        raise InputError("missing key", file=posed_file, field="points")
    pts = posed["points"]
    if pts.ndim != 3 or pts.shape[1:] != (P, 3):
        raise InputError(f"expected (N, {P}, 3) to match outfit.npz points, got {pts.shape}",
                         file=posed_file, field="points", hint=hint)
    if pts.shape[0] != n:
        raise InputError(f"has {pts.shape[0]} frames but the subject {subject.root} has {n}",
                         file=posed_file, field="points", hint=hint)
    if not np.isfinite(pts).all():
        raise InputError("contains NaN or inf", file=posed_file, field="points")
    body = str(outfit.get("body", "default"))
    want_body = str(subject.meta.get("body", "default"))
    if body != want_body:
        raise InputError(f"the outfit was fitted on body {body!r}, the subject uses {want_body!r}",
                         file=outfit_file, field="body", hint=hint)
    betas = np.asarray(outfit["betas"], np.float64).reshape(-1)
    want = np.asarray(subject.smpl.betas, np.float64).reshape(-1)
    m = max(len(betas), len(want))
    if np.abs(np.pad(betas, (0, m - len(betas))) - np.pad(want, (0, m - len(want)))).max() > 1e-4:
        raise InputError(f"betas {np.round(betas[:4], 3).tolist()}... differ from the subject's "
                         f"{np.round(want[:4], 3).tolist()}...", file=outfit_file, field="betas", hint=hint)
    smpl = subject.smpl
    for key, ours, tol in (("global_orient", smpl.global_orient, 1e-4), ("body_pose", smpl.body_pose, 1e-4),
                           ("transl", smpl.transl, 1e-4), ("K", subject.K, 1e-3)):
        if key in posed:
            theirs = np.asarray(posed[key], np.float64)
            if theirs.shape != np.shape(ours) or np.abs(theirs - ours).max() > tol * max(1.0, np.abs(ours).max()):
                raise InputError(f"differs from the subject's {key} ({subject.root}): another subject's fit?",
                                 file=posed_file, field=key, hint=hint)
    if "image_size" in posed and tuple(int(v) for v in posed["image_size"]) != tuple(subject.image_size):
        raise InputError(f"{tuple(int(v) for v in posed['image_size'])} differs from the subject's "
                         f"{tuple(subject.image_size)}", file=posed_file, field="image_size", hint=hint)
    return outfit, posed


@torch.no_grad()
def load_appearance_frames(subject: Subject, body: BodyModel, posed_points: np.ndarray, ids: list[int],
                           size: tuple[int, int], device: torch.device, threshold: float) -> AppearanceFrames:
    """Frames `ids` at the training size (h, w): images, masks, scaled K, posed points and their
    visibility against the body rasterised at that size with that K."""
    H, W = subject.image_size
    h, w = size
    t = lambda a: torch.as_tensor(np.asarray(a)[ids], dtype=torch.float32, device=device)  # noqa: E731
    smpl = subject.smpl
    K = scale_intrinsics(t(subject.K), w / W, h / H)
    points = t(posed_points)
    verts = body(torch.as_tensor(smpl.betas, device=device), t(smpl.global_orient), t(smpl.body_pose),
                 t(smpl.transl)).vertices
    depth = torch.cat([body_depth(verts[k:k + 8], body.faces_t, K[k:k + 8], (h, w)) for k in range(0, len(ids), 8)])
    visible = visible_points(points, depth, K, threshold=threshold)
    images, masks = [], []
    for i in ids:
        img = torch.as_tensor(subject.frame(i), device=device).permute(2, 0, 1).float()[None] / 127.5 - 1.0
        msk = torch.as_tensor(subject.mask(i), device=device).float()[None, None]
        if (h, w) != (H, W):
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            msk = (F.interpolate(msk, size=(h, w), mode="area" if h < H else "bilinear") > 0.5).float()
        images.append(img)
        masks.append(msk)
    images, masks = torch.cat(images), torch.cat(masks)
    uv, z = project(points, K)
    whole = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], device=device)
    box = lambda xx, yy: torch.stack([xx.min(), yy.min(), xx.max(), yy.max()]) if xx.numel() else whole  # noqa: E731
    boxes, mask_boxes = [], []
    for k in range(len(ids)):
        ys, xs = torch.nonzero(masks[k, 0], as_tuple=True)
        ok = visible[k] & (z[k] > 0) & (uv[k, :, 0] >= 0) & (uv[k, :, 0] <= w - 1) & (uv[k, :, 1] >= 0) \
            & (uv[k, :, 1] <= h - 1)
        boxes.append(box(torch.cat([xs.float(), uv[k, ok, 0]]), torch.cat([ys.float(), uv[k, ok, 1]])))
        mask_boxes.append(box(xs.float(), ys.float()))
    return AppearanceFrames(list(ids), points, visible, K, images.clamp(-1, 1), masks, torch.stack(boxes),
                            torch.stack(mask_boxes))
