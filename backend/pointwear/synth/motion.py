"""Procedural motions for synthetic subjects, as SMPL axis-angle poses in the body's own frame
(Y up, facing +Z). The camera placement lives in `camera.py`; here only the body moves."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation as R

from ..body.joints import JOINT_INDEX, NUM_JOINTS

MOTIONS = ("turntable", "walk")


def _set(pose: np.ndarray, joint: str, rot: R) -> None:
    pose[:, JOINT_INDEX[joint]] = rot.as_rotvec()


def _rx(deg) -> R:
    return R.from_euler("x", np.atleast_1d(deg), degrees=True)


def _rz(deg) -> R:
    return R.from_euler("z", np.atleast_1d(deg), degrees=True)


def relaxed_pose(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 24, 3) an A-pose: arms lowered to the sides, elbows a little bent."""
    pose = np.zeros((n, NUM_JOINTS, 3))
    lower = rng.uniform(50, 65)
    _set(pose, "left_shoulder", _rz(np.full(n, -lower)))
    _set(pose, "right_shoulder", _rz(np.full(n, lower)))
    bend = rng.uniform(5, 20)
    _set(pose, "left_elbow", R.from_euler("y", np.full(n, -bend), degrees=True))
    _set(pose, "right_elbow", R.from_euler("y", np.full(n, bend), degrees=True))
    return pose


def turntable(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The subject turns once around on the spot: (yaw degrees (n,), pose (n, 24, 3))."""
    yaw = rng.uniform(0, 360) + np.arange(n) * 360.0 / n
    return yaw, relaxed_pose(n, rng)


def walk(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Walking on the spot (one to two gait cycles) while turning slowly past the camera."""
    cycles = rng.uniform(1.0, 2.0)
    phase = 2 * np.pi * cycles * np.arange(n) / max(n, 1) + rng.uniform(0, 2 * np.pi)
    pose = relaxed_pose(n, rng)
    hip, knee, arm = rng.uniform(20, 30), rng.uniform(35, 55), rng.uniform(15, 30)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        swing = sign * np.sin(phase)
        _set(pose, f"{side}_hip", _rx(-hip * swing))
        _set(pose, f"{side}_knee", _rx(knee * np.clip(np.sin(phase + sign * np.pi / 2 + np.pi), 0, None) + 5))
        _set(pose, f"{side}_ankle", _rx(-8 * swing))
        lower = R.from_rotvec(pose[:, JOINT_INDEX[f"{side}_shoulder"]])
        _set(pose, f"{side}_shoulder", _rx(arm * swing) * lower)
    _set(pose, "spine1", R.from_euler("y", 6 * np.sin(phase), degrees=True))
    yaw = rng.uniform(-30, 30) + np.linspace(-60, 60, n) * rng.choice([-1, 1])
    return yaw, pose


def make_motion(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "turntable":
        return turntable(n, rng)
    if kind == "walk":
        return walk(n, rng)
    raise ValueError(f"motion must be one of {MOTIONS}, got {kind!r}")
