"""The camera file of `pointwear render` (and the `render` job): one reader, one writer.

``camera.npz``::

    K                  (3, 3) or (T, 3, 3) float   OpenCV pinhole intrinsics in pixels; pixel
                                                    centres at integer coordinates, so a centred
                                                    principal point is ((W - 1) / 2, (H - 1) / 2);
                                                    last row (0, 0, 1), fx, fy > 0, no skew
    image_size         (2,) int                     (H, W) of the rendered images
    camera_from_world  (4, 4) or (T, 4, 4) float   rigid transform (rotation + translation, no
                                                    scale) taking points of the motion's Y-up SMPL
                                                    world (metres) to the OpenCV camera (x right,
                                                    y down, z forward; the camera at the origin)

One matrix (or one K) is a fixed camera; T of them give one per motion frame, and T must then
equal the motion's frame count. The world is the one `pointwear drape` poses motions in: SMPL's
Y-up space after the motion's up-axis turn (AMASS files are Z-up and are turned to Y-up), the
body placed by the motion's `trans`.

From a Blender camera (Z-up world, camera looking down its -Z with +Y up), with ``M`` the
camera's ``matrix_world``::

    blender_from_smpl = [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
                                                    # SMPL (x, y, z) -> Blender (x, -z, y)
    cv_from_blender_camera = diag(1, -1, -1, 1)     # flip Y and Z
    camera_from_world = cv_from_blender_camera @ inverse(M) @ blender_from_smpl

and, for a perspective camera with sensor fit AUTO/HORIZONTAL on a W >= H image (render size
times the resolution percentage), fx = fy = lens_mm / sensor_width_mm * W,
cx = (W - 1) / 2 - shift_x * W, cy = (H - 1) / 2 + shift_y * W.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import load_npz, save_npz

__all__ = ["Camera", "read_camera", "write_camera", "look_at", "intrinsics"]

MAX_SIDE = 8192
MAX_CAMERA_FRAMES = 100_000


@dataclass
class Camera:
    K: np.ndarray                   # (T, 3, 3) float64 (T = 1 for a fixed camera)
    image_size: tuple[int, int]     # (H, W)
    camera_from_world: np.ndarray   # (T, 4, 4) float64

    @property
    def num_frames(self) -> int:
        return max(self.K.shape[0], self.camera_from_world.shape[0])

    def at(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(K (3,3), camera_from_world (4,4)) for motion frame t (a fixed camera for every t)."""
        k = self.K[t if self.K.shape[0] > 1 else 0]
        m = self.camera_from_world[t if self.camera_from_world.shape[0] > 1 else 0]
        return k, m

    def check_frames(self, n: int, file: str | Path | None = None) -> None:
        """A camera with per-frame arrays must have one per motion frame."""
        for name, arr in (("K", self.K), ("camera_from_world", self.camera_from_world)):
            if arr.shape[0] not in (1, n):
                raise InputError(f"has {arr.shape[0]} per-frame entries but the motion has {n} frames",
                                 file=file, field=name,
                                 hint="give one (fixed camera) or one per motion frame")


def read_camera(path: str | Path) -> Camera:
    """Read and check a camera file; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise InputError("camera file not found", file=path)
    # Bounded before anything is inflated: one K and one pose per frame at most.
    arrays = load_npz(path, {"K": MAX_CAMERA_FRAMES * 9, "camera_from_world": MAX_CAMERA_FRAMES * 16,
                             "image_size": 2}, keys=("K", "camera_from_world", "image_size"))
    for key in ("K", "image_size", "camera_from_world"):
        if key not in arrays:
            raise InputError(f"missing; the file has {sorted(arrays)}", file=path, field=key)
    K = _float_array(arrays["K"], path, "K")
    if K.ndim == 2:
        K = K[None]
    if K.ndim != 3 or K.shape[1:] != (3, 3) or K.shape[0] < 1:
        raise InputError(f"expected (3, 3) or (T, 3, 3), got {arrays['K'].shape}", file=path, field="K")
    if (np.abs(K[:, 2] - [0.0, 0.0, 1.0]).max() > 1e-6 or (K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any()
            or np.abs(K[:, 1, 0]).max() > 1e-9):
        raise InputError("expected intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0",
                         file=path, field="K")
    if np.abs(K[:, 0, 1]).max() > 1e-4 * K[:, 0, 0].min():
        raise InputError("skew is not supported (K[0, 1] must be 0)", file=path, field="K")
    size = np.asarray(arrays["image_size"])
    if size.shape != (2,) or not np.issubdtype(size.dtype, np.number) or not np.isfinite(size).all() \
            or (np.round(size) != size).any() or size.min() < 1 or size.max() > MAX_SIDE:
        raise InputError(f"expected (H, W), two integers in 1..{MAX_SIDE}, got {size.tolist()}",
                         file=path, field="image_size")
    M = _float_array(arrays["camera_from_world"], path, "camera_from_world")
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3 or M.shape[1:] != (4, 4) or M.shape[0] < 1:
        raise InputError(f"expected (4, 4) or (T, 4, 4), got {arrays['camera_from_world'].shape}",
                         file=path, field="camera_from_world")
    R = M[:, :3, :3]
    orth = np.abs(np.einsum("tij,tkj->tik", R, R) - np.eye(3)).max()
    if np.abs(M[:, 3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-6 or orth > 1e-3 or (np.linalg.det(R) < 0).any():
        raise InputError("expected rigid transforms: an orthonormal rotation (det +1, no scale) and a "
                         "translation, last row (0, 0, 0, 1)", file=path, field="camera_from_world",
                         hint="OpenCV camera from the Y-up SMPL world; see docs/appearance.md")
    if K.shape[0] > 1 and M.shape[0] > 1 and K.shape[0] != M.shape[0]:
        raise InputError(f"{K.shape[0]} intrinsics but {M.shape[0]} camera_from_world matrices",
                         file=path, field="K")
    return Camera(K, (int(size[0]), int(size[1])), M)


def _float_array(a: np.ndarray, path: Path, field: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"expected numbers, got {a.dtype}", file=path, field=field)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("contains NaN or inf", file=path, field=field)
    return a


def write_camera(path: str | Path, K: np.ndarray, image_size: tuple[int, int],
                 camera_from_world: np.ndarray) -> Path:
    """Write a camera file (checked by reading it back)."""
    path = save_npz(path, K=np.asarray(K, np.float64), image_size=np.asarray(image_size, np.int32),
                    camera_from_world=np.asarray(camera_from_world, np.float64))
    read_camera(path)
    return path


def intrinsics(image_size: tuple[int, int], fov_deg: float) -> np.ndarray:
    """(3, 3) K with a centred principal point and the horizontal field of view fov_deg."""
    H, W = image_size
    f = 0.5 * W / np.tan(np.deg2rad(fov_deg) / 2)
    return np.array([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """(4, 4) camera_from_world of an OpenCV camera at `eye` looking at `target` (world Y up)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)          # x = y x z with y (image down) along -up
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: the view direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])      # rows: camera axes in world coordinates
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M
