# SPDX-License-Identifier: GPL-3.0-or-later
"""The SMPL armature: one bone per joint, each with SMPL's own joint frame as its rest frame.

Every bone has its head at its joint and its tail straight up Blender's +Z with roll 0. Such a
bone's rest matrix is Rx(+90 deg) = C, the SMPL -> Blender change of axes, so each bone's local
frame *is* SMPL's frame at that joint: a pose bone's rotation_quaternion takes SMPL's axis-angle
for the joint unchanged, and the root's location takes ``transl`` unchanged. (Bones pointing at
their children would look nicer but need every rotation conjugated by its own rest matrix.)
Bones are not connected, so heads sit exactly on the joints.
"""

import contextlib

import bpy
import numpy as np

from ..io import smpl_math

BONE_LENGTH = 0.06  # m; display only: the tail does not take part in skinning
JOINT_NAMES_PROP = "pointwear_joint_names"


@contextlib.contextmanager
def edit_mode(context, armature):
    """Armature edit mode for the duration of the block (edit bones exist only there).

    Makes the armature active and visible for the switch, and restores the previous active object
    and visibility afterwards, also when the block raises.
    """
    view_layer = context.view_layer
    previous = view_layer.objects.active
    hidden = armature.hide_get(view_layer=view_layer)
    hidden_viewport = armature.hide_viewport
    if context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    armature.hide_viewport = False
    armature.hide_set(False, view_layer=view_layer)
    view_layer.objects.active = armature
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        yield armature.data.edit_bones
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
        view_layer.objects.active = previous
        armature.hide_set(hidden, view_layer=view_layer)
        armature.hide_viewport = hidden_viewport


def _place(edit_bone, head):
    edit_bone.head = head
    edit_bone.tail = (head[0], head[1], head[2] + BONE_LENGTH)
    edit_bone.roll = 0.0


def build_armature(context, collection, body, name):
    """A new armature object in ``collection`` from a :class:`~..io.results.BodyData`.

    Bones are named after ``body.joint_names`` and parented by ``body.parents``; the joint order is
    stored on the object (``pointwear_joint_names``) because motion data is by joint index.
    """
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    collection.objects.link(obj)
    obj.show_in_front = True
    heads = smpl_math.to_blender(body.joints)
    with edit_mode(context, obj) as edit_bones:
        bones = []
        for i, joint in enumerate(body.joint_names):
            bone = edit_bones.new(joint)
            _place(bone, heads[i])
            bone.use_connect = False
            if body.parents[i] >= 0:
                bone.parent = bones[body.parents[i]]
            bones.append(bone)
    for pose_bone in obj.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    obj[JOINT_NAMES_PROP] = list(body.joint_names)
    return obj


def joint_names(armature):
    """The armature's joints in SMPL order (motion columns map to these bones)."""
    names = armature.get(JOINT_NAMES_PROP)
    return [str(n) for n in names] if names is not None else [b.name for b in armature.data.bones]


def rest_joints(armature):
    """(J, 3) rest joint positions in SMPL space, read back from the bone heads."""
    bones = armature.data.bones
    heads = np.array([bones[n].head_local for n in joint_names(armature)], np.float64)
    return smpl_math.from_blender(heads)


def update_rest(context, armature, joints):
    """Move every bone's rest head to new SMPL-space ``joints`` (J, 3), keeping names, hierarchy
    and roll, so a re-shaped body keeps its pose bones, animation and skinned children."""
    names = joint_names(armature)
    joints = np.asarray(joints, np.float64)
    if joints.shape != (len(names), 3):
        raise ValueError("{!r} has {} joints, got {}".format(armature.name, len(names), joints.shape))
    heads = smpl_math.to_blender(joints)
    with edit_mode(context, armature) as edit_bones:
        for name, head in zip(names, heads):
            _place(edit_bones[name], head)
