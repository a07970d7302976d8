# SPDX-License-Identifier: GPL-3.0-or-later
"""The live fitting preview in the viewport: the running fit's current clothing points (PROGRESS
events' "points", docs/protocol.md) as a temporary point-drawn object, "Pointwear Live Fit",
standing ``OFFSET`` beside the world origin (where the result will be imported) in the body's
rest pose. Updated in place as new points arrive; removed when the job ends."""

import bpy
import numpy as np

from ..io import smpl_math
from . import clothing

OBJECT_NAME = "Pointwear Live Fit"
KIND = "live_preview"              # its pointwear_kind
OFFSET = (1.0, 0.0, 0.0)           # m, Blender world: beside the imported result
RADIUS = 0.006
COLOR = (0.95, 0.55, 0.15)


def live_object():
    """The live preview object, or None."""
    for obj in bpy.data.objects:
        if obj.get("pointwear_kind") == KIND:
            return obj
    return None


def show_points(scene, flat_metres):
    """Show a flat list of SMPL-space point coordinates (metres, 3 per point) in ``scene``."""
    points = smpl_math.to_blender(np.asarray(flat_metres, np.float64).reshape(-1, 3)).astype(np.float32)
    obj = live_object()
    if obj is not None and len(obj.data.vertices) != len(points):
        remove()
        obj = None
    if obj is None:
        mesh = bpy.data.meshes.new(OBJECT_NAME)
        mesh.vertices.add(len(points))
        obj = bpy.data.objects.new(OBJECT_NAME, mesh)
        obj["pointwear_kind"] = KIND
        obj.location = OFFSET
        scene.collection.objects.link(obj)
        clothing.add_points_modifier(obj, RADIUS)
        clothing.set_color_attribute(mesh, np.tile(COLOR, (len(points), 1)))
    obj.data.vertices.foreach_set("co", points.ravel())
    obj.data.update()
    return obj


def remove():
    """Remove the live preview object and its mesh (nothing when there is none)."""
    obj = live_object()
    while obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)
        obj = live_object()
