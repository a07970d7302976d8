# SPDX-License-Identifier: GPL-3.0-or-later
"""Files the add-on writes for the backend's ``render`` job (pure numpy, no bpy).

- :func:`camera_file_arrays`: ``camera.npz`` (docs/appearance.md, "Camera file"): OpenCV K,
  image size (H, W) and ``camera_from_world`` from the Y-up SMPL world, per frame::

      camera_from_world = diag(1, -1, -1, 1) @ inverse(M) @ blender_from_smpl

  with M the Blender camera's ``matrix_world`` and blender_from_smpl = C4 (SMPL (x, y, z) ->
  Blender (x, -z, y)).
- :func:`motion_arrays`: an AMASS-style motion (``poses (T, 72)`` axis-angle, ``trans (T, 3)``,
  ``mocap_framerate``) in the Y-up SMPL world (render it with ``up="y"``) from the armature's pose:
  each pose bone's ``rotation_quaternion`` is the SMPL joint rotation and the pelvis bone's
  ``location`` is SMPL ``transl`` (see addon/scene/motion.py).
- :func:`camera_intrinsics`: K from Blender camera settings (resolution x percentage, lens,
  sensor, sensor fit, shift, pixel aspect), the inverse of :func:`.camera.camera_params`.
"""

import numpy as np

from . import smpl_math
from .camera import CameraParams, intrinsics_from_params
from .smpl_math import C4

# Blender camera axes -> OpenCV camera axes (flip y and z).
CV_FROM_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])


def camera_intrinsics(lens, sensor_width, sensor_height, sensor_fit, shift_x, shift_y,
                      resolution_x, resolution_y, percentage=100, pixel_aspect_x=1.0,
                      pixel_aspect_y=1.0):
    """(K (3, 3), image_size (H, W)) of a perspective Blender camera rendered at
    ``resolution * percentage / 100``. ``sensor_fit`` 'AUTO' uses the sensor width along the
    wider side (pixel aspect included), as Blender does."""
    width = max(1, int(resolution_x * percentage // 100))
    height = max(1, int(resolution_y * percentage // 100))
    aspect_x, aspect_y = float(pixel_aspect_x), float(pixel_aspect_y)
    if sensor_fit == "AUTO":
        fit = "HORIZONTAL" if aspect_x * width >= aspect_y * height else "VERTICAL"
        sensor_height = sensor_width
    else:
        fit = sensor_fit
    params = CameraParams(lens=float(lens), sensor_width=float(sensor_width),
                          sensor_height=float(sensor_height), sensor_fit=fit,
                          shift_x=float(shift_x), shift_y=float(shift_y),
                          resolution_x=width, resolution_y=height,
                          pixel_aspect_x=aspect_x, pixel_aspect_y=aspect_y)
    return intrinsics_from_params(params), np.array([height, width], np.int64)


def camera_from_world(matrix_world):
    """(..., 4, 4) Blender camera world matrices -> OpenCV camera_from_world (Y-up SMPL world)."""
    m = np.asarray(matrix_world, np.float64)
    return CV_FROM_BLENDER_CAMERA @ np.linalg.inv(m) @ C4


def camera_file_arrays(K, image_size, matrix_world_per_frame):
    """The arrays of ``camera.npz``: {"K", "image_size", "camera_from_world"}.

    ``K`` (3, 3) or (T, 3, 3); ``image_size`` (H, W); ``matrix_world_per_frame`` (T, 4, 4) (or one
    (4, 4)). Camera scale is removed from the rotation (the file needs a rigid transform)."""
    k = np.asarray(K, np.float64)
    if k.shape[-2:] != (3, 3) or k.ndim not in (2, 3):
        raise ValueError("K: expected (3, 3) or (T, 3, 3), got {}".format(k.shape))
    size = np.asarray(image_size).reshape(-1)
    if size.shape != (2,) or np.any(size < 1):
        raise ValueError("image_size: expected (H, W) >= 1, got {}".format(size.tolist()))
    m = np.asarray(matrix_world_per_frame, np.float64)
    if m.shape[-2:] != (4, 4) or m.ndim not in (2, 3):
        raise ValueError("matrix_world: expected (4, 4) or (T, 4, 4), got {}".format(m.shape))
    m = _rigid(m)
    cfw = camera_from_world(m)
    cfw[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
    return {"K": k, "image_size": size.astype(np.int64), "camera_from_world": cfw}


def _rigid(m):
    """Drop scale / shear from world matrices: rotation from the polar decomposition."""
    m = m.copy()
    u, _s, vt = np.linalg.svd(m[..., :3, :3])
    r = u @ vt
    if np.any(np.linalg.det(r) < 0):
        raise ValueError("matrix_world: the camera is mirrored (negative scale)")
    m[..., :3, :3] = r
    m[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
    return m


def motion_arrays(quaternions, pelvis_location, fps):
    """AMASS-style motion arrays (Y-up SMPL world) from pose-bone values.

    ``quaternions`` (T, 24, 4) wxyz (any norm, any sign) in SMPL joint order; ``pelvis_location``
    (T, 3) = SMPL transl; ``fps`` frames per second. Returns {"poses" (T, 72), "trans" (T, 3),
    "mocap_framerate"}."""
    q = np.asarray(quaternions, np.float64)
    if q.ndim != 3 or q.shape[1:] != (24, 4) or q.shape[0] < 1:
        raise ValueError("quaternions: expected (T, 24, 4), got {}".format(q.shape))
    t = np.asarray(pelvis_location, np.float64)
    if t.shape != (q.shape[0], 3):
        raise ValueError("pelvis_location: expected ({}, 3), got {}".format(q.shape[0], t.shape))
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quaternions: a zero quaternion")
    aa = smpl_math.quaternion_to_axis_angle(q / norm)
    fps = float(fps)
    if not fps > 0:
        raise ValueError("fps must be > 0, got {}".format(fps))
    return {"poses": aa.reshape(q.shape[0], 72), "trans": t.copy(),
            "mocap_framerate": np.float64(fps)}
