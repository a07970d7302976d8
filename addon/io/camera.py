# SPDX-License-Identifier: GPL-3.0-or-later
"""OpenCV pinhole cameras as Blender cameras.

Intrinsics. Blender builds its view window from the sensor fit: with the fit along an axis of
``viewfac`` pixels (W for HORIZONTAL; ycor * H for VERTICAL, ycor = pixel_aspect_y /
pixel_aspect_x), a pixel is ``sensor / (lens * viewfac)`` wide at unit depth and ``ycor`` times
that tall, and the window is offset by ``shift * viewfac`` pixels (x right, y up). Matching an
OpenCV K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] for an image (H, W) therefore takes

    ycor    = fx / fy                      (non-square pixels -> render pixel aspect)
    lens    = fx * sensor / viewfac
    shift_x = (W / 2 - (cx + 0.5)) / viewfac
    shift_y = ycor * ((cy + 0.5) - H / 2) / viewfac

where the 0.5 is OpenCV's convention of pixel centres at integer coordinates (Blender's window
starts at the edge of the first pixel) and the sign flip of y is OpenCV's y-down. Skew is
ignored (Blender has none). The fit follows Blender's AUTO rule (the wider side of the image,
pixel aspect included), so the camera looks as expected in the viewport.

Extrinsics. OpenCV camera axes are x right, y down, z forward; a Blender camera looks down its
-Z with y up, so a Blender-camera point is (x, -y, -z) in OpenCV axes (F = diag(1, -1, -1)).
With W = world_from_camera (camera -> upright SMPL world) and C the SMPL -> Blender change of
axes, the Blender camera's world matrix is C4 @ W @ F4.
"""

from dataclasses import dataclass

import numpy as np

from .smpl_math import C4

SENSOR_SIZE = 36.0  # mm: Blender's default sensor width; any value works with a matching lens
MIN_LENS = 2.0      # mm: keep clear of Blender's 1 mm minimum focal length
# Blender camera axes -> OpenCV camera axes.
F4 = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class CameraParams:
    """Blender camera data and render settings reproducing one OpenCV camera."""

    lens: float
    sensor_width: float
    sensor_height: float
    sensor_fit: str          # 'HORIZONTAL' or 'VERTICAL'
    shift_x: float
    shift_y: float
    resolution_x: int        # W
    resolution_y: int        # H
    pixel_aspect_x: float    # >= 1, Blender's rule: one of the two is 1
    pixel_aspect_y: float


def camera_params(K, image_size, sensor=SENSOR_SIZE):
    """One 3x3 K and the image size (H, W) -> :class:`CameraParams` (see the module docstring)."""
    k = np.asarray(K, np.float64).reshape(3, 3)
    height, width = (int(v) for v in image_size)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if fx <= 0 or fy <= 0 or width <= 0 or height <= 0:
        raise ValueError("camera_params: need fx, fy > 0 and an image size > 0, got K={} size={}".format(
            k.tolist(), (height, width)))
    ycor = fx / fy
    aspect_x, aspect_y = (1.0, ycor) if ycor >= 1.0 else (1.0 / ycor, 1.0)
    fit = "HORIZONTAL" if aspect_x * width >= aspect_y * height else "VERTICAL"
    if max(aspect_x, aspect_y) > 200:
        raise ValueError("camera_params: fx / fy = {:.4g} is beyond Blender's pixel aspect range".format(ycor))
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    # Blender's lens is at least 1 mm: a very wide view gets a bigger sensor instead.
    sensor = max(float(sensor), MIN_LENS * viewfac / fx)
    return CameraParams(
        lens=float(fx * sensor / viewfac), sensor_width=float(sensor), sensor_height=float(sensor),
        sensor_fit=fit,
        shift_x=float((width / 2.0 - (cx + 0.5)) / viewfac),
        shift_y=float(ycor * ((cy + 0.5) - height / 2.0) / viewfac),
        resolution_x=width, resolution_y=height,
        pixel_aspect_x=float(aspect_x), pixel_aspect_y=float(aspect_y))


def intrinsics_from_params(params):
    """The inverse of :func:`camera_params`: the K (3x3) a Blender camera reproduces."""
    width, height = params.resolution_x, params.resolution_y
    ycor = params.pixel_aspect_y / params.pixel_aspect_x
    viewfac = width if params.sensor_fit == "HORIZONTAL" else ycor * height
    sensor = params.sensor_width if params.sensor_fit == "HORIZONTAL" else params.sensor_height
    fx = params.lens * viewfac / sensor
    cx = width / 2.0 - params.shift_x * viewfac - 0.5
    cy = height / 2.0 + params.shift_y * viewfac / ycor - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fx / ycor, cy], [0.0, 0.0, 1.0]])


def camera_matrix_world(world_from_camera):
    """The Blender camera object's world matrix (4x4) for a camera placed by world_from_camera."""
    return C4 @ np.asarray(world_from_camera, np.float64).reshape(4, 4) @ F4


def project(K, points):
    """OpenCV projection of camera-space points (..., 3) -> pixels (..., 2), centres at integers."""
    p = np.asarray(points, np.float64)
    k = np.asarray(K, np.float64).reshape(3, 3)
    z = p[..., 2]
    return np.stack([k[0, 0] * p[..., 0] / z + k[0, 1] * p[..., 1] / z + k[0, 2],
                     k[1, 1] * p[..., 1] / z + k[1, 2]], axis=-1)
