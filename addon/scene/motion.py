# SPDX-License-Identifier: GPL-3.0-or-later
"""Keying a :class:`~..io.motion.Motion` onto the SMPL armature in bulk.

The usual add-on way (``pose_bone.keyframe_insert`` per bone per frame, as the SMPL-X add-on
does) costs a Python call and an F-curve lookup per key. Here each F-curve is created once and
filled in one go: ``keyframe_points.add(T)`` + ``foreach_set("co", ...)`` +
``foreach_set("interpolation", ...)`` + ``update()``; see scripts/bench_blender.py.

Actions: Blender 4.4 introduced slotted actions; 5.0 removed ``Action.fcurves``. F-curves go into
the channelbag of the action's slot for the armature (``action_ensure_channelbag_for_slot``,
public in 5.0; the same layer/strip steps by hand on 4.4-4.5) and straight into
``Action.fcurves`` before 4.4.
"""

import bpy
import numpy as np

from ..io import smpl_math
from ..io.motion import Motion

SLOTTED_ACTIONS = bpy.app.version >= (4, 4, 0)
# Keyframe.interpolation enum values (DNA eBezTriple_Interpolation): CONSTANT 0, LINEAR 1.
_LINEAR = 1
# Custom properties on the action: the world turn and pelvis the motion was converted with.
ROTATION_PROP = "pointwear_world_rotation"
PELVIS_PROP = "pointwear_pelvis"
SOURCE_PROP = "pointwear_motion_source"


def _ensure_channelbag(action, slot):
    from bpy_extras import anim_utils

    ensure = getattr(anim_utils, "action_ensure_channelbag_for_slot", None)
    if ensure is not None:
        return ensure(action, slot)
    # Blender 4.4-4.5: what 5.0's helper does (one layer, one keyframe strip).
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(slot, ensure=True)


def new_action(id_data, name, id_type="OBJECT"):
    """A fresh action assigned to ``id_data``; returns (action, channels), where ``channels`` has
    ``fcurves.new`` and ``groups.new`` (the slot's channelbag, or the action itself before 4.4)."""
    action = bpy.data.actions.new(name)
    anim = id_data.animation_data or id_data.animation_data_create()
    if not SLOTTED_ACTIONS:
        anim.action = action
        return action, action
    slot = action.slots.new(id_type, id_data.name)
    anim.action = action
    anim.action_slot = slot
    return action, _ensure_channelbag(action, slot)


def action_channels(id_data):
    """The F-curve container (channelbag or pre-4.4 action) of ``id_data``'s assigned action."""
    anim = id_data.animation_data
    if anim is None or anim.action is None:
        return None
    if not SLOTTED_ACTIONS:
        return anim.action
    from bpy_extras import anim_utils

    return anim_utils.action_get_channelbag_for_slot(anim.action, anim.action_slot)


def add_fcurve(channels, data_path, index, frames, values, group=None):
    """One F-curve filled with (frame, value) keys in bulk, LINEAR between keys."""
    fcurve = channels.fcurves.new(data_path, index=index)
    if group is not None:
        fcurve.group = group
    count = len(frames)
    points = fcurve.keyframe_points
    points.add(count)
    co = np.empty((count, 2), np.float32)
    co[:, 0] = frames
    co[:, 1] = values
    points.foreach_set("co", co.ravel())
    points.foreach_set("interpolation", np.full(count, _LINEAR, np.int32))
    fcurve.update()
    return fcurve


def bone_path(bone_name, prop):
    return 'pose.bones["{}"].{}'.format(bpy.utils.escape_identifier(bone_name), prop)


def set_scene_timing(scene, motion):
    """Scene frame range = the motion's frames; scene fps = the motion's (fps / fps_base)."""
    scene.frame_start = int(motion.frames[0])
    scene.frame_end = int(motion.frames[-1])
    fps = float(motion.fps)
    whole = max(1, int(round(fps)))
    if abs(fps - whole) < 1e-6:
        scene.render.fps, scene.render.fps_base = whole, 1.0
    else:
        whole = max(1, int(np.ceil(fps)))
        scene.render.fps, scene.render.fps_base = whole, whole / fps


def motion_quaternions(motion):
    """(T, 24, 4) pose-bone quaternions (w, x, y, z): SMPL axis-angle unchanged (bone frames are
    SMPL's), signs made continuous over time so LINEAR keys never take the long way round."""
    return smpl_math.quaternion_continuity(smpl_math.axis_angle_to_quaternion(motion.full_pose()))


def key_motion(armature, motion, joint_names, name=None):
    """Key ``motion`` on ``armature`` in a new action: rotation_quaternion for every joint and
    location for the root (= ``transl``: the root bone's local frame is SMPL's). Keys sit on the
    motion's frames (Blender frame k == subject frame k). Returns the action."""
    if len(joint_names) != 24:
        raise ValueError("the motion has 24 SMPL joints, the armature {}".format(len(joint_names)))
    if motion.num_frames == 0:
        raise ValueError("the motion has no frames")
    action, channels = new_action(armature, name or armature.name + " motion")
    frames = motion.frames.astype(np.float64)
    quats = motion_quaternions(motion)
    for j, bone in enumerate(joint_names):
        group = channels.groups.new(bone)
        path = bone_path(bone, "rotation_quaternion")
        for c in range(4):
            add_fcurve(channels, path, c, frames, quats[:, j, c], group)
        if j == 0:
            for c in range(3):
                add_fcurve(channels, bone_path(bone, "location"), c, frames, motion.transl[:, c], group)
    for pose_bone in armature.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    action[ROTATION_PROP] = [float(v) for v in motion.world_rotation.ravel()]
    action[PELVIS_PROP] = [float(v) for v in motion.pelvis]
    action[SOURCE_PROP] = str(motion.source)
    return action


def shift_root_keys(armature, pelvis):
    """After a re-shape, move the root location keys for the new rest pelvis (SMPL space).

    A motion converted to the upright world about rest pelvis J0 needs transl + (A - I)(J0' - J0)
    on a body with pelvis J0' (see :meth:`~..io.motion.Motion.pelvis_shift`); without it a turned
    motion (AMASS Z-up, the subject's camera) would float or sink by a few millimetres.
    """
    anim = armature.animation_data
    action = anim.action if anim is not None else None
    if action is None or ROTATION_PROP not in action or PELVIS_PROP not in action:
        return None
    ref = Motion(np.zeros((0, 3)), np.zeros((0, 69)), np.zeros((0, 3)),
                 world_rotation=list(action[ROTATION_PROP]), pelvis=list(action[PELVIS_PROP]))
    shift = ref.pelvis_shift(pelvis)
    channels = action_channels(armature)
    root = armature.get("pointwear_joint_names", [armature.data.bones[0].name])[0]
    path = bone_path(root, "location")
    for c in range(3):
        fcurve = channels.fcurves.find(path, index=c)
        if fcurve is None:
            continue
        points = fcurve.keyframe_points
        co = np.empty(2 * len(points), np.float32)
        points.foreach_get("co", co)
        co[1::2] += shift[c]
        points.foreach_set("co", co)
        fcurve.update()
    action[PELVIS_PROP] = [float(v) for v in np.asarray(pelvis, np.float64).reshape(3)]
    return shift


def shift_keys(armature, offset):
    """Move every key of the armature's action by ``offset`` frames (a motion keyed from frame 0
    that belongs at another frame)."""
    channels = action_channels(armature)
    if channels is None or not offset:
        return
    for fcurve in channels.fcurves:
        points = fcurve.keyframe_points
        co = np.empty(2 * len(points), np.float32)
        points.foreach_get("co", co)
        co[0::2] += offset
        points.foreach_set("co", co)
        fcurve.update()
