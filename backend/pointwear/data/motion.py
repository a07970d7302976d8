"""AMASS-style motion files: `poses (T, 72+)` axis-angle, `trans (T, 3)`, optional `betas`,
`mocap_framerate`. Read into SMPL's 24-joint layout and Pointwear's Y-up SMPL world."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation as R

from ..errors import InputError

Z_UP_TO_Y_UP = R.from_euler("x", -90, degrees=True)   # (x, y, z) -> (x, z, -y)


@dataclass
class Motion:
    global_orient: np.ndarray   # (T, 3)
    body_pose: np.ndarray       # (T, 69)
    transl: np.ndarray          # (T, 3)
    fps: float
    betas: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.global_orient.shape[0])


def read_motion(path: str | Path, up: str = "z") -> Motion:
    """Read an AMASS-style npz. SMPL-H/SMPL-X poses keep their 22 body joints (the two SMPL hand
    joints get zero rotation). `up` is the file's up axis: AMASS is Z-up; "y" leaves it as is.
    The Z-up -> Y-up turn is applied to the root orientation; `transl` is turned too, and
    `to_y_up` needs the body's pelvis to finish the job (rotation is about the pelvis)."""
    from ..link.arrays import ArrayFileError, read_amass
    path = Path(path)
    try:
        data = read_amass(path)       # the one AMASS reader, shared with the add-on (bounded)
    except ArrayFileError as exc:
        raise InputError(exc.message, file=exc.file, field=exc.field) from None
    poses, trans, fps, betas = data["poses"], data["trans"], data["fps"], data["betas"]
    if up not in ("y", "z"):
        raise InputError(f"up must be 'y' or 'z', got {up!r}", field="up")
    orient = poses[:, :3]
    if up == "z":
        orient = (Z_UP_TO_Y_UP * R.from_rotvec(orient)).as_rotvec()
        trans = Z_UP_TO_Y_UP.apply(trans)
    return Motion(orient.astype(np.float32), poses[:, 3:72].astype(np.float32), trans.astype(np.float32), fps, betas)


def motion_up(path: str | Path, up: str = "auto") -> str:
    """The up axis to read the motion file at `path` with: `up` itself ("y" or "z"), or for
    "auto" the file's own `up` hint (`write_motion` stores one: Pointwear's walks and retargeted
    BVHs are Y-up), else "z" (AMASS)."""
    if up in ("y", "z"):
        return up
    if up != "auto":
        raise InputError(f"up must be 'auto', 'y' or 'z', got {up!r}", field="up")
    from ..fileio import load_npz
    hint = load_npz(path, {"up": 8}, keys=("up",)).get("up")
    if hint is None:
        return "z"
    value = str(np.asarray(hint).reshape(-1)[0]).lower() if np.asarray(hint).size == 1 else ""
    if value not in ("y", "z"):
        raise InputError(f"the up hint must be 'y' or 'z', got {value or np.asarray(hint).tolist()!r}",
                         file=path, field="up")
    return value


def pelvis_fix(transl: np.ndarray, pelvis: np.ndarray, up: str) -> np.ndarray:
    """smplx rotates about the pelvis joint J0, so turning a Z-up motion needs t' = C J0 + C t - J0
    (read_motion applied C t): add C J0 - J0 for this body's pelvis."""
    if up != "z":
        return transl
    return (transl + Z_UP_TO_Y_UP.apply(pelvis) - pelvis).astype(np.float32)


def write_motion(path: str | Path, motion: Motion, up: str = "y") -> Path:
    """An AMASS-style npz (`poses (T, 72)`, `trans`, `mocap_framerate`, `betas`) of a motion in
    the Y-up SMPL world; `up` is stored as a hint for readers that take it (AMASS has none)."""
    from ..fileio import save_npz
    poses = np.concatenate([motion.global_orient, motion.body_pose], 1).astype(np.float32)
    betas = np.zeros(10, np.float32) if motion.betas is None else motion.betas
    return save_npz(path, poses=poses, trans=motion.transl.astype(np.float32),
                    mocap_framerate=np.array(float(motion.fps)), betas=betas, up=np.array(up))


def walking_motion(frames: int, fps: float = 24.0, speed: float = 1.0, seed: int = 0) -> Motion:
    """A procedural walk that travels: the synthetic subjects' gait, turning slowly, moved along
    the direction it faces at `speed` m/s. Y-up, starting at the origin."""
    from ..synth.motion import walk
    yaw_deg, pose = walk(frames, np.random.default_rng(seed))
    yaw = np.deg2rad(yaw_deg - yaw_deg[0])
    step = speed / fps * np.stack([np.sin(yaw), np.zeros_like(yaw), np.cos(yaw)], 1)
    transl = np.cumsum(step, 0) - step[0]
    orient = R.from_euler("y", yaw).as_rotvec()
    return Motion(orient.astype(np.float32), pose[:, 1:].reshape(frames, 69).astype(np.float32),
                  transl.astype(np.float32), float(fps))
