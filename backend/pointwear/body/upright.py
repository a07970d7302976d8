"""The fixed world-from-camera transform that stands a subject upright.

Subjects live in their camera's OpenCV space (y down, z forward), whatever way the camera was
held. Blender wants a person standing on the floor at the origin. One rigid transform W, the
same for every frame, takes camera space to an upright SMPL-style world: Y up (the mean of the
body's up axis over the frames), the person facing +Z in the first frame, the pelvis of the first
frame above the origin and the lowest body vertex of any frame on y = 0.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from .model import BodyModel


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation matrix taking unit vector a onto unit vector b."""
    axis = np.cross(a, b)
    s, c = np.linalg.norm(axis), float(np.dot(a, b))
    if s < 1e-9:
        if c > 0:
            return np.eye(3)
        # Opposite: half a turn about any axis perpendicular to a.
        perp = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return Rotation.from_rotvec(np.pi * perp / np.linalg.norm(perp)).as_matrix()
    return Rotation.from_rotvec(axis / s * np.arctan2(s, c)).as_matrix()


def upright_rotation(global_orient: np.ndarray) -> np.ndarray:
    """(3, 3): the body's mean up axis -> +Y, then its first-frame facing -> +Z about Y."""
    body_rot = Rotation.from_rotvec(np.asarray(global_orient, np.float64)).as_matrix()
    up = body_rot[:, :, 1].mean(0)
    up /= np.linalg.norm(up)
    tilt = rotation_between(up, np.array([0.0, 1.0, 0.0]))
    facing = tilt @ body_rot[0][:, 2]
    yaw = np.arctan2(facing[0], facing[2])  # angle of facing from +Z towards +X
    turn = Rotation.from_rotvec([0.0, -yaw, 0.0]).as_matrix() if np.hypot(facing[0], facing[2]) > 1e-6 else np.eye(3)
    return turn @ tilt


@torch.no_grad()
def world_from_camera(body: BodyModel, betas, global_orient: np.ndarray, body_pose: np.ndarray,
                      transl: np.ndarray) -> np.ndarray:
    """(4, 4) float64 rigid transform taking the subject's camera space to the upright world."""
    rot = upright_rotation(global_orient)
    out = body.forward(betas, torch.as_tensor(global_orient, dtype=torch.float32),
                       torch.as_tensor(body_pose, dtype=torch.float32),
                       torch.as_tensor(transl, dtype=torch.float32))
    verts = out.vertices.cpu().numpy().astype(np.float64) @ rot.T   # (N, V, 3) rotated
    pelvis = out.joints[0, 0].cpu().numpy().astype(np.float64) @ rot.T
    matrix = np.eye(4)
    matrix[:3, :3] = rot
    matrix[:3, 3] = [-pelvis[0], -verts[..., 1].min(), -pelvis[2]]
    return matrix
