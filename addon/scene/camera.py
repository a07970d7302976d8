# SPDX-License-Identifier: GPL-3.0-or-later
"""A Blender camera that sees what the subject's camera saw: rendering frame k lines up with
subject frame k. Intrinsics and placement come from :mod:`..io.camera` (pure maths)."""

import bpy
import numpy as np
from mathutils import Matrix

from ..io import camera as camera_io
from . import motion as motion_keys


def apply_params(cam_data, scene, params):
    """Camera data and the scene's render size/pixel aspect from a :class:`CameraParams`."""
    cam_data.type = "PERSP"
    cam_data.sensor_fit = params.sensor_fit
    cam_data.sensor_width = params.sensor_width
    cam_data.sensor_height = params.sensor_height
    cam_data.lens = params.lens
    cam_data.shift_x = params.shift_x
    cam_data.shift_y = params.shift_y
    render = scene.render
    render.resolution_x = params.resolution_x
    render.resolution_y = params.resolution_y
    render.resolution_percentage = 100
    render.pixel_aspect_x = params.pixel_aspect_x
    render.pixel_aspect_y = params.pixel_aspect_y


def build_camera(collection, scene, posed, name):
    """The subject's camera from a camera-space :class:`~..io.results.PosedData`, made the scene
    camera. When K changes over the frames, lens and shift are keyed per frame (one pixel aspect
    and image size for the whole clip, from the first frame)."""
    K = np.asarray(posed.K)
    params = [camera_io.camera_params(k, posed.image_size) for k in K]
    data = bpy.data.cameras.new(name)
    data.clip_start = 0.01
    data.clip_end = 1000.0
    apply_params(data, scene, params[0])
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    obj.matrix_world = Matrix(camera_io.camera_matrix_world(posed.world_from_camera).tolist())
    if len(K) > 1 and np.abs(K - K[:1]).max() > 1e-9:
        _key_intrinsics(data, posed.frames, params)
    scene.camera = obj
    return obj


def _key_intrinsics(cam_data, frames, params):
    _, channels = motion_keys.new_action(cam_data, cam_data.name + " intrinsics", id_type="CAMERA")
    for prop in ("lens", "shift_x", "shift_y"):
        values = [getattr(p, prop) for p in params]
        motion_keys.add_fcurve(channels, prop, 0, np.asarray(frames, np.float64), values)
