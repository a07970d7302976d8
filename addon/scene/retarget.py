# SPDX-License-Identifier: GPL-3.0-or-later
"""Retarget from Armature, the Blender side: sample another armature's action (for example one
Blender's own BVH importer made) into a skeleton file for the backend's ``motion_import`` job;
the retargeted motion comes back as an AMASS-style file keyed on the SMPL armature."""

import numpy as np

from ..io import skeleton


def source_action(source):
    """The action on ``source`` or a SkeletonError saying there is none."""
    anim = source.animation_data if source is not None else None
    if source is None or source.type != "ARMATURE":
        raise skeleton.SkeletonError("choose an armature to retarget from")
    if anim is None or anim.action is None:
        raise skeleton.SkeletonError("the armature {!r} has no action to retarget (animate it or import a "
                                     "BVH with Blender's importer first)".format(source.name))
    return anim.action


def frame_range(source, frame_start=0, frame_end=0):
    """The frames to sample: the action's range, cut to [frame_start, frame_end] when they are set."""
    start, end = (int(round(f)) for f in source_action(source).frame_range)
    if frame_end > 0:
        start, end = max(start, frame_start), min(end, frame_end)
    if end < start:
        raise skeleton.SkeletonError("no frames to retarget in {}-{}".format(start, end))
    return start, end


def sample_armature(scene, source, start, end):
    """The skeleton arrays (io.skeleton.skeleton_arrays) of ``source`` over frames start..end at the
    scene's fps; the scene's current frame is restored."""
    bones = source.data.bones
    names = [b.name for b in bones]
    order, parents = skeleton.bone_order(names, [b.parent.name if b.parent else None for b in bones])
    world = np.array(source.matrix_world, np.float64)
    count = len(names)
    rest = np.empty(count * 16, np.float32)
    bones.foreach_get("matrix_local", rest)
    rest = world @ np.swapaxes(rest.reshape(count, 4, 4), 1, 2)
    tails = np.empty(count * 3, np.float32)
    bones.foreach_get("tail_local", tails)
    tails = tails.reshape(count, 3) @ world[:3, :3].T + world[:3, 3]
    frames = range(start, end + 1)
    posed = np.empty((len(frames), count, 4, 4))
    buffer = np.empty(count * 16, np.float32)
    current = scene.frame_current
    try:
        for k, frame in enumerate(frames):
            scene.frame_set(frame)
            source.pose.bones.foreach_get("matrix", buffer)
            posed[k] = world @ np.swapaxes(buffer.reshape(count, 4, 4), 1, 2)
    finally:
        scene.frame_set(current)
    fps = scene.render.fps / scene.render.fps_base
    return skeleton.skeleton_arrays([names[i] for i in order], parents, rest[order], posed[:, order],
                                    tails[order], fps)
