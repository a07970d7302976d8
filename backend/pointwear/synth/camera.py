"""Camera placement for synthetic subjects: an OpenCV camera at the origin looking down +Z,
the body stood upright in front of it (SMPL's Y up becomes image-up = -y)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation as R

# SMPL (Y up, facing +Z) -> OpenCV camera (y down, z forward), body facing the camera.
SMPL_TO_CAMERA = R.from_euler("x", 180, degrees=True)


def global_orient(yaw_deg: np.ndarray) -> np.ndarray:
    """(n, 3) axis-angle: turn the body by `yaw` about its up axis, then into the camera."""
    return (SMPL_TO_CAMERA * R.from_euler("y", yaw_deg, degrees=True)).as_rotvec()


def intrinsics(size: int, distance: float, extent: float = 2.0) -> np.ndarray:
    """K for a square image in which `extent` metres at `distance` fill the frame."""
    f = size * distance / extent
    c = (size - 1) / 2.0
    return np.array([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=np.float32)


def place_body(pelvis_rest: np.ndarray, distance: float, n: int, centre_drop: float) -> np.ndarray:
    """(n, 3) transl putting the pelvis joint at depth `distance`, the body centred in view.
    smplx rotates about the pelvis joint, so the pelvis lands at pelvis_rest + transl."""
    target = np.array([0.0, -centre_drop, distance])
    return np.repeat((target - pelvis_rest)[None], n, 0).astype(np.float32)
