"""Per-frame tensors a fit needs, computed once: SMPL parameters, intrinsics, the body's depth
map at the data's own resolution (for visibility) and the mask distance transforms."""
from __future__ import annotations

from dataclasses import dataclass

import torch

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

    def target(self, key: int) -> MaskTargets:
        """The clothing mask (key < 0) or one garment label's masks."""
        return self.targets if key < 0 else self.label_targets[key]

    def __len__(self) -> int:
        return len(self.ids)


def load_frames(subject: Subject, body: BodyModel, ids: list[int], device: torch.device,
                labels: list[int] | None = None) -> FrameSet:
    """`labels`: garment label ids whose masks (labels/ == id) to load as targets too; a label
    absent from a frame is an empty target there (it adds nothing to that frame's loss)."""
    t = lambda a: torch.as_tensor(a[ids], dtype=torch.float32, device=device)  # noqa: E731
    smpl = subject.smpl
    go, bp, tr, K = t(smpl.global_orient), t(smpl.body_pose), t(smpl.transl), t(subject.K)
    masks = [subject.mask(i) for i in ids]
    with torch.no_grad():
        verts = body(torch.as_tensor(smpl.betas, device=device), go, bp, tr).vertices
        depth = body_depth(verts, body.faces_t, K, subject.image_size)
        transforms = body.joint_transforms(body.betas_tensor(torch.as_tensor(smpl.betas, device=device)),
                                           torch.cat([go, bp], 1))
    label_targets = {}
    if labels:
        maps = [subject.labels(i) for i in ids]
        label_targets = {k: MaskTargets.from_masks([m == k for m in maps], device, allow_empty=True) for k in labels}
    return FrameSet(list(ids), go, bp, tr, K, depth, MaskTargets.from_masks(masks, device), masks, label_targets,
                    transforms)
