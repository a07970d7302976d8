# SPDX-License-Identifier: GPL-3.0-or-later
"""SMPL rotations and the one change of axes between SMPL space and Blender.

SMPL space is Y-up; Blender is Z-up. :data:`C` maps SMPL (x, y, z) to Blender (x, -z, y) and is
applied once, where data enters the scene (:func:`to_blender`), nowhere else. C is also the rest
rotation of a Blender bone pointing along +Z with roll 0 (Rx(+90 deg)), which is why such bones
take SMPL's axis-angle rotations unchanged as pose-bone quaternions.

Quaternions are (w, x, y, z), Blender's order. Every function is batched over leading axes.
"""

import numpy as np

# SMPL's 24 joints as in the smplx package: reference names and parents (-1 = root). Files carry
# their own names and parents; these are the fallback and what validation compares against.
SMPL_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
NUM_JOINTS = 24

# SMPL (Y-up) -> Blender (Z-up): (x, y, z) -> (x, -z, y), i.e. a rotation Rx(+90 deg).
C = np.array([[1.0, 0.0, 0.0],
              [0.0, 0.0, -1.0],
              [0.0, 1.0, 0.0]])
C4 = np.eye(4)
C4[:3, :3] = C

# AMASS and other Z-up motion worlds -> SMPL's Y-up world: (x, y, z) -> (x, z, -y) = Rx(-90 deg).
Z_UP_TO_Y_UP = C.T.copy()


def to_blender(points):
    """SMPL-space points (..., 3) as Blender coordinates (float64)."""
    return np.asarray(points, np.float64) @ C.T


def from_blender(points):
    """Blender coordinates (..., 3) back to SMPL space (float64)."""
    return np.asarray(points, np.float64) @ C


def _half_angle_sinc(angle):
    """sin(angle / 2) / angle, exact near 0 (Taylor) so tiny rotations keep their axis."""
    small = angle < 1e-4
    safe = np.where(small, 1.0, angle)
    return np.where(small, 0.5 - angle * angle / 48.0, np.sin(safe / 2.0) / safe)


def axis_angle_to_quaternion(axis_angle):
    """Axis-angle vectors (..., 3) -> unit quaternions (..., 4) in (w, x, y, z)."""
    aa = np.asarray(axis_angle, np.float64)
    angle = np.linalg.norm(aa, axis=-1)
    w = np.cos(angle / 2.0)
    xyz = aa * _half_angle_sinc(angle)[..., None]
    return np.concatenate([w[..., None], xyz], axis=-1)


def quaternion_to_matrix(quat):
    """Quaternions (..., 4) in (w, x, y, z) -> rotation matrices (..., 3, 3); normalised first."""
    q = np.asarray(quat, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def axis_angle_to_matrix(axis_angle):
    """Axis-angle vectors (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues, via quaternions)."""
    return quaternion_to_matrix(axis_angle_to_quaternion(axis_angle))


def matrix_to_quaternion(matrix):
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), w >= 0.

    Shepperd's method: take the largest of the four squared components as the pivot, so the
    result stays accurate for every angle (the trace-only formula fails near 180 degrees).
    """
    m = np.asarray(matrix, np.float64)
    shape = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    pivot = np.argmax(cand, axis=1)
    q = np.empty((len(m), 4))
    for k in range(4):
        sel = pivot == k
        if not sel.any():
            continue
        a = m[sel]
        if k == 0:
            s = np.sqrt(1.0 + tr[sel]) * 2.0
            q[sel] = np.stack([0.25 * s, (a[:, 2, 1] - a[:, 1, 2]) / s,
                               (a[:, 0, 2] - a[:, 2, 0]) / s, (a[:, 1, 0] - a[:, 0, 1]) / s], axis=1)
        else:
            i, j, n = (k - 1), k % 3, (k + 1) % 3
            s = np.sqrt(np.maximum(1.0 + a[:, i, i] - a[:, j, j] - a[:, n, n], 0.0)) * 2.0
            comp = np.empty((len(a), 4))
            comp[:, 0] = (a[:, n, j] - a[:, j, n]) / s
            comp[:, 1 + i] = 0.25 * s
            comp[:, 1 + j] = (a[:, j, i] + a[:, i, j]) / s
            comp[:, 1 + n] = (a[:, n, i] + a[:, i, n]) / s
            q[sel] = comp
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(shape + (4,))


def quaternion_to_axis_angle(quat):
    """Quaternions (..., 4) -> axis-angle vectors (..., 3) with angle in [0, pi]."""
    q = np.asarray(quat, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    xyz = q[..., 1:]
    s = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(s, q[..., 0])
    return xyz * _inverse_half_sinc(angle, s)[..., None]


def _inverse_half_sinc(angle, s):
    """angle / sin(angle / 2) with sin(angle / 2) = s; 2 in the limit angle -> 0."""
    small = s < 1e-8
    return np.where(small, 2.0 + angle * angle / 12.0, angle / np.where(small, 1.0, s))


def matrix_to_axis_angle(matrix):
    """Rotation matrices (..., 3, 3) -> axis-angle vectors (..., 3)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def quaternion_continuity(quats, axis=0):
    """Flip signs along ``axis`` (time) so consecutive quaternions have a non-negative dot product.

    q and -q are the same rotation, but F-curves interpolate components: a sign jump between two
    keys makes Blender swing the bone the long way round in between. The first key gets w >= 0.
    """
    q = np.moveaxis(np.array(quats, np.float64), axis, 0)
    if len(q) == 0:
        return np.moveaxis(q, 0, axis)
    first = np.where(q[:1, ..., :1] < 0, -1.0, 1.0)
    dots = np.sum(q[1:] * q[:-1], axis=-1, keepdims=True)
    steps = np.concatenate([first, np.where(dots < 0, -1.0, 1.0)], axis=0)
    return np.moveaxis(q * np.cumprod(steps, axis=0), 0, axis)
