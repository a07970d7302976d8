# SPDX-License-Identifier: GPL-3.0-or-later
"""Motions in SMPL's upright Y-up world, ready to key onto the armature.

Two sources: AMASS-style files (:func:`read_amass`) and the subject's own poses from a fit
result's posed.npz (:func:`subject_motion`). Both are a change of world frame: turning the world
by a rotation A (and moving it by w) about the origin turns SMPL's root as R' = A R and, since
smplx rotates the body about its rest pelvis joint J0 before adding ``transl``, moves the
translation as t' = A (J0 + t) + w - J0 (:func:`change_world`). Everything else (body_pose) is
relative to the parent joints and does not change.
"""

import os
from dataclasses import dataclass, field

import numpy as np

from ..link import arrays
from . import smpl_math
from .results import ResultFileError


@dataclass
class Motion:
    """SMPL poses per frame in the upright Y-up world (float64 arrays)."""

    global_orient: np.ndarray   # (T, 3) axis-angle of the root
    body_pose: np.ndarray       # (T, 69) axis-angle of joints 1..23
    transl: np.ndarray          # (T, 3)
    fps: float = 30.0
    source: str = ""
    # Blender frame of each pose (Blender frame k == subject frame k); default 0..T-1.
    frames: np.ndarray = field(default=None)
    # The world turn A applied so far and the rest pelvis J0 it was applied about: a body with
    # another pelvis J0' needs transl + (A - I)(J0' - J0) (see :meth:`for_pelvis`).
    world_rotation: np.ndarray = field(default=None)
    pelvis: np.ndarray = field(default=None)

    def __post_init__(self):
        count = len(self.global_orient)
        self.global_orient = np.asarray(self.global_orient, np.float64).reshape(count, 3)
        self.body_pose = np.asarray(self.body_pose, np.float64).reshape(count, 69)
        self.transl = np.asarray(self.transl, np.float64).reshape(count, 3)
        self.frames = (np.arange(count, dtype=np.int64) if self.frames is None
                       else np.asarray(self.frames, np.int64).reshape(count))
        self.fps = float(self.fps)
        self.world_rotation = (np.eye(3) if self.world_rotation is None
                               else np.asarray(self.world_rotation, np.float64).reshape(3, 3))
        self.pelvis = np.zeros(3) if self.pelvis is None else np.asarray(self.pelvis, np.float64).reshape(3)

    @property
    def num_frames(self):
        return int(len(self.global_orient))

    def full_pose(self):
        """(T, 24, 3) axis-angle: the root then the 23 body joints, in SMPL's joint order."""
        return np.concatenate([self.global_orient, self.body_pose], axis=1).reshape(-1, 24, 3)

    def pelvis_shift(self, pelvis):
        """What to add to ``transl`` when a body with rest pelvis ``pelvis`` wears this motion."""
        return (self.world_rotation - np.eye(3)) @ (np.asarray(pelvis, np.float64).reshape(3) - self.pelvis)


def change_world(motion, rotation, translation, pelvis):
    """The same movement seen in a world turned by ``rotation`` (3x3) and moved by ``translation``.

    R' = A R for the root; t' = A (J0 + t) + w - J0 with J0 = ``pelvis``, the rest pelvis joint of
    the body that will wear the motion (smplx turns the body about J0, not the origin).
    """
    a = np.asarray(rotation, np.float64).reshape(3, 3)
    w = np.zeros(3) if translation is None else np.asarray(translation, np.float64).reshape(3)
    j0 = np.asarray(pelvis, np.float64).reshape(3)
    root = a @ smpl_math.axis_angle_to_matrix(motion.global_orient)
    return Motion(
        global_orient=smpl_math.matrix_to_axis_angle(root),
        body_pose=motion.body_pose.copy(),
        transl=(motion.transl + motion.pelvis_shift(j0) + j0) @ a.T + w - j0,
        fps=motion.fps, source=motion.source, frames=motion.frames.copy(),
        world_rotation=a @ motion.world_rotation, pelvis=j0)


def read_amass(path, up="Z", pelvis=(0.0, 0.0, 0.0)):
    """An AMASS-style npz as a :class:`Motion` in SMPL's Y-up world.

    ``poses (T, 72+)``: the root then the body joints, axis-angle. SMPL files (72 columns) keep all
    24 joints; SMPL-H/SMPL-X files (156 or more) keep their 22 body joints and the two SMPL hand
    joints get no rotation (their columns 66..71 are finger joints), as the backend reads them.
    ``trans (T, 3)``, ``mocap_framerate`` (or ``mocap_frame_rate``; 30 if absent). ``up`` is the
    file's up axis, "Z" (AMASS) or "Y"; ``pelvis`` is the wearer's rest pelvis joint J0, needed to
    turn a Z-up file upright (see :func:`change_world`).
    """
    path = os.fspath(path)
    up = str(up).upper()
    if up not in ("Y", "Z"):
        raise ValueError("up must be 'Y' or 'Z', got {!r}".format(up))
    try:
        data = arrays.read_amass(path)   # the one AMASS reader, shared with the backend (bounded)
    except arrays.ArrayFileError as exc:
        raise ResultFileError(path, exc.field, exc.message) from None
    poses, trans, fps = data["poses"], data["trans"], data["fps"]
    motion = Motion(global_orient=poses[:, :3], body_pose=poses[:, 3:72], transl=trans,
                    fps=fps, source=os.path.abspath(path))
    if up == "Z":
        motion = change_world(motion, smpl_math.Z_UP_TO_Y_UP, None, pelvis)
    return motion


def subject_motion(posed, pelvis):
    """The subject's own poses from a :class:`~.results.PosedData`, in its upright world.

    posed.npz holds the poses in the subject's OpenCV camera space; ``world_from_camera`` W takes
    camera space to the upright world, so the poses change world by (W[:3, :3], W[:3, 3]) about
    the rest pelvis ``pelvis`` of the subject's body. Frames keep the subject's frame numbers.
    """
    if not posed.has_motion:
        raise ResultFileError(posed.path, "global_orient", "missing key: this posed.npz has no poses")
    w = np.asarray(posed.world_from_camera, np.float64)
    motion = Motion(global_orient=posed.global_orient, body_pose=posed.body_pose,
                    transl=posed.transl, fps=posed.fps, source=posed.path, frames=posed.frames)
    return change_world(motion, w[:3, :3], w[:3, 3], pelvis)
