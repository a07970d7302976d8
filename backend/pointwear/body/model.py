"""The body model: any SMPL-layout file (a user's SMPL or the free default body) behind one
batched, differentiable forward that runs through smplx, plus skinning of arbitrary points."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import smplx
import torch
import torch.nn.functional as F
from smplx.lbs import batch_rodrigues, blend_shapes, vertices2joints
from smplx.utils import Struct
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from .joints import JOINT_NAMES, NUM_JOINTS, PARENTS
from .smpl_file import read_smpl_file

DEFAULT_BODY_FILE = Path(__file__).parent / "data" / "default_body.npz"


@dataclass
class BodyOutput:
    vertices: torch.Tensor    # (B, V, 3) posed, in the space of transl / global_orient
    joints: torch.Tensor      # (B, 24, 3) posed joint locations
    transforms: torch.Tensor  # (B, 24, 4, 4) rest-to-posed joint transforms (without transl)


class BodyModel(torch.nn.Module):
    """SMPL-layout body. `forward` is smplx's SMPL; `pose_points` skins any points (clothing)
    with their own skin weights through the same joint transforms. Every tensor it keeps is a
    buffer, so `.to(device)` moves all of it; `device` None is the CPU (the caller picks the
    device: pointwear.device.pick_device)."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.source = source
        self.num_betas = int(arrays["shapedirs"].shape[-1])
        vertex_ids = _vertex_ids(arrays, int(arrays["v_template"].shape[0]))
        struct = Struct(**{k: v for k, v in arrays.items() if k in _SMPL_STRUCT_KEYS})
        self.smpl = smplx.SMPL(model_path="", data_struct=struct, num_betas=self.num_betas,
                               vertex_ids=vertex_ids, create_transl=False,
                               create_betas=False, create_global_orient=False,
                               create_body_pose=False)
        self.faces = np.asarray(arrays["f"], dtype=np.int64)
        self.weights_np = np.asarray(arrays["weights"], dtype=np.float32)
        self.parents = PARENTS.copy()
        self.parent_list = [int(p) for p in self.parents]     # host list: the chain never reads the device
        self.register_buffer("faces_t", torch.as_tensor(self.faces), persistent=False)
        self.joint_names = tuple(str(n) for n in arrays.get("joint_names", JOINT_NAMES))
        self.extras = {k: arrays[k] for k in ("vt", "ft", "license", "attribution") if k in arrays}
        self.to(torch.device("cpu") if device is None else torch.device(device))

    @property
    def device(self) -> torch.device:
        return self.smpl.v_template.device

    @property
    def num_vertices(self) -> int:
        return int(self.smpl.v_template.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.smpl.v_template.dtype

    @property
    def weights(self) -> torch.Tensor:
        return self.smpl.lbs_weights

    # -- parameters -----------------------------------------------------------------------
    def _tensor(self, x, width: int, batch: int | None = None) -> torch.Tensor:
        if x is None:
            return torch.zeros(batch or 1, width, device=self.device, dtype=self.dtype)
        t = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        return t.reshape(-1, width)

    def betas_tensor(self, betas) -> torch.Tensor:
        """Betas as (B, num_betas); shorter vectors are zero-padded (extra shape terms = 0)."""
        if betas is None:
            return torch.zeros(1, self.num_betas, device=self.device, dtype=self.dtype)
        t = torch.as_tensor(betas, dtype=self.dtype, device=self.device)
        t = t.reshape(1, -1) if t.dim() == 1 else t
        if t.shape[1] > self.num_betas:
            raise ValueError(f"betas: this body has {self.num_betas} shape coefficients, got {t.shape[1]}")
        return torch.nn.functional.pad(t, (0, self.num_betas - t.shape[1]))

    # -- forward ----------------------------------------------------------------------------
    def forward(self, betas=None, global_orient=None, body_pose=None, transl=None) -> BodyOutput:
        """Posed vertices and joints; every argument batches (B, ...) or broadcasts from 1."""
        betas = self.betas_tensor(betas)
        global_orient = self._tensor(global_orient, 3)
        body_pose = self._tensor(body_pose, 3 * (NUM_JOINTS - 1))
        batch = max(betas.shape[0], global_orient.shape[0], body_pose.shape[0])
        betas, global_orient, body_pose = (_expand(t, batch) for t in (betas, global_orient, body_pose))
        transl = _expand(self._tensor(transl, 3), batch)
        full_pose = torch.cat([global_orient, body_pose], 1)
        # smplx's SMPL linear blend skinning, with our own joint chain (see rigid_chain).
        v_shaped, joints = self.shaped(betas)
        rot = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, NUM_JOINTS, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(batch, -1)
        v_posed = v_shaped + torch.matmul(pose_feature, self.smpl.posedirs).reshape(batch, -1, 3)
        posed_joints, transforms = rigid_transform(rot, joints, self.parent_list)
        vertices = skin_points(v_posed, self.smpl.lbs_weights, transforms)
        return BodyOutput(vertices + transl[:, None], posed_joints + transl[:, None], transforms)

    def shaped(self, betas=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest-pose (T-pose) vertices and joints for the given betas: (B, V, 3), (B, 24, 3)."""
        betas = self.betas_tensor(betas)
        v = self.smpl.v_template[None] + blend_shapes(betas, self.smpl.shapedirs)
        return v, vertices2joints(self.smpl.J_regressor, v)

    def joint_transforms(self, betas: torch.Tensor, full_pose: torch.Tensor) -> torch.Tensor:
        """(B, 24, 4, 4) transforms taking rest-pose points of these betas to the posed body."""
        _, joints = self.shaped(betas)
        batch = full_pose.shape[0]
        rot = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, NUM_JOINTS, 3, 3)
        return rigid_chain(rot, _expand(joints, batch), self.parent_list)

    def pose_points(self, points: torch.Tensor, weights: torch.Tensor, betas=None,
                    global_orient=None, body_pose=None, transl=None) -> torch.Tensor:
        """Skin rest-pose points (B or 1, P, 3) with weights (P, 24) to the pose: (B, P, 3)."""
        betas = self.betas_tensor(betas)
        global_orient = self._tensor(global_orient, 3)
        body_pose = self._tensor(body_pose, 3 * (NUM_JOINTS - 1))
        batch = max(betas.shape[0], global_orient.shape[0], body_pose.shape[0], points.shape[0])
        full_pose = torch.cat([_expand(global_orient, batch), _expand(body_pose, batch)], 1)
        transforms = self.joint_transforms(_expand(betas, batch), full_pose)
        posed = skin_points(_expand(points, batch), weights, transforms)
        return posed + _expand(self._tensor(transl, 3), batch)[:, None]


def rigid_transform(rot: torch.Tensor, joints: torch.Tensor, parents: list[int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """smplx's batch_rigid_transform over a host list of parents: (posed joints (B, J, 3),
    rest-to-posed transforms (B, J, 4, 4))."""
    rel = rigid_chain(rot, joints, parents)
    return rel[..., :3, 3] + torch.matmul(rel[..., :3, :3], joints.unsqueeze(-1)).squeeze(-1), rel


def rigid_chain(rot: torch.Tensor, joints: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """(B, J, 4, 4) rest-to-posed transforms from local rotations rot (B, J, 3, 3) about rest
    joints (B, J, 3), down the kinematic tree `parents` (a host list, parents before children,
    -1 for the root): smplx's batch_rigid_transform without indexing a Python list with a
    device tensor (a host wait per joint on a GPU)."""
    rel_joints = joints.clone()
    rel_joints[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([F.pad(rot, [0, 0, 0, 1]), F.pad(rel_joints.unsqueeze(-1), [0, 0, 0, 1], value=1.0)],
                      -1)                                                                       # (B,J,4,4)
    chain = [local[:, 0]]
    for i in range(1, len(parents)):
        chain.append(torch.matmul(chain[parents[i]], local[:, i]))
    world = torch.stack(chain, 1)
    # Remove the rest joint location: transforms act on rest-pose points, not joint-local ones.
    moved = torch.matmul(world[..., :3, :3], joints.unsqueeze(-1)).squeeze(-1)
    out = world.clone()
    out[..., :3, 3] = world[..., :3, 3] - moved
    return out


def skin_points(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of (B, P, 3) points with (P, 24) or (B, P, 24) weights."""
    batch = transforms.shape[0]
    per_point = torch.matmul(weights, transforms.reshape(batch, -1, 16)).reshape(batch, -1, 4, 4)
    return torch.einsum("bpij,bpj->bpi", per_point[..., :3, :3], points) + per_point[..., :3, 3]


def skin_frames(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor,
                transl: torch.Tensor, paired: bool = False) -> torch.Tensor:
    """Linear blend skinning of C point sets into each of F frames: (C*F, P, 3), code-major
    (item c * F + f is set c in frame f), as `skin_points` of the sets repeated per frame but
    without repeating points or weights. points (C, P, 3); weights (P, 24) or (C, P, 24);
    transforms (F, 24, 4, 4) (the frames' `joint_transforms`); transl (F, 3). `paired`: the
    F point sets (F, P, 3) are each skinned into their own frame only, (F, P, 3) (a shape that
    changes from frame to frame; weights (P, 24)). The blended rows (C or 1, F, 3, 4, P) keep
    the points along the last axis, so applying them is element-wise over whole rows (a batch
    of 3 x 3 matmuls per point is slow on a CPU)."""
    C, P, _ = points.shape
    F_ = transforms.shape[0]
    rows = transforms[:, :, :3, :].permute(0, 2, 3, 1).reshape(F_ * 12, -1)      # (F*12, 24)
    blended = torch.matmul(rows, weights.transpose(-1, -2))                       # (C or 1, F*12, P)
    A = blended.view(-1, F_, 3, 4, P)
    # (C, 1, P) per coordinate; paired: (1, F, P), set f in frame f
    x, y, z = (c.unsqueeze(0) if paired else c.unsqueeze(1) for c in points.unbind(-1))
    t = transl.to(points.dtype).view(1, F_, 3, 1)
    posed = A[:, :, :, 0] * x.unsqueeze(2) + A[:, :, :, 1] * y.unsqueeze(2) + A[:, :, :, 2] * z.unsqueeze(2) \
        + A[:, :, :, 3] + t                                                       # (C, F, 3, P)
    return posed.transpose(-1, -2).reshape(-1, P, 3)


def load_body(spec: str | Path = "default", gender: str = "neutral",
              device: torch.device | str | None = None) -> BodyModel:
    """"default" -> the free body shipped with Pointwear; otherwise a user's SMPL .pkl/.npz/folder."""
    path = DEFAULT_BODY_FILE if str(spec) == "default" else Path(spec).expanduser()
    return BodyModel(read_smpl_file(path, gender=gender), source=str(spec), device=device)


_SMPL_STRUCT_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                     "kintree_table", "f")


def _expand(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"cannot broadcast a batch of {t.shape[0]} to {batch}")
    return t.expand(batch, *t.shape[1:])


def _vertex_ids(arrays: dict[str, np.ndarray], num_vertices: int) -> dict[str, int] | None:
    """Extra keypoint vertices (nose, toes, fingertips) for smplx's joint selector: the model's
    own when it ships them (the default body), smplx's SMPL ids when they fit the mesh, else
    vertex 0 (Pointwear only uses the 24 skeleton joints; the extras just must not crash)."""
    if "vertex_ids_names" in arrays:
        return {str(n): int(i) for n, i in zip(arrays["vertex_ids_names"], arrays["vertex_ids_values"])}
    smplh_ids = SMPLX_VERTEX_IDS["smplh"]
    if max(smplh_ids.values()) < num_vertices:
        return None
    return {name: 0 for name in smplh_ids}
