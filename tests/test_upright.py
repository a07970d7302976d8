"""The upright world transform: any camera convention ends with the person standing on y = 0."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from pointwear.body.upright import world_from_camera
from pointwear.synth.camera import global_orient as synth_orient


def _subject(frames: int = 3):
    rng = np.random.default_rng(0)
    orient = synth_orient(np.linspace(0, 90, frames))
    body_pose = rng.normal(0, 0.1, (frames, 69)).astype(np.float32)
    transl = np.tile([0.0, 0.2, 3.0], (frames, 1)).astype(np.float32)
    return orient.astype(np.float32), body_pose, transl


def _to_world(body, W, orient, body_pose, transl):
    out = body.forward(None, torch.as_tensor(orient), torch.as_tensor(body_pose), torch.as_tensor(transl))
    v = out.vertices.numpy().astype(np.float64) @ W[:3, :3].T + W[:3, 3]
    j = out.joints.numpy().astype(np.float64) @ W[:3, :3].T + W[:3, 3]
    return v, j


def test_synthetic_subject_stands_upright_on_the_floor(default_body):
    orient, body_pose, transl = _subject()
    W = world_from_camera(default_body, None, orient, body_pose, transl)
    assert np.allclose(W[:3, :3] @ W[:3, :3].T, np.eye(3), atol=1e-9)
    v, j = _to_world(default_body, W, orient, body_pose, transl)
    assert abs(v[..., 1].min()) < 1e-5                       # lowest vertex on the floor
    assert np.allclose(j[0, 0, [0, 2]], 0, atol=1e-5)        # first pelvis above the origin
    head = 15
    assert (j[:, head, 1] - j[:, 0, 1] > 0.3).all()          # head well above the pelvis: upright
    # Facing +Z in the first frame: the left hip (joint 1) is on +X in SMPL's own frame.
    assert j[0, 1, 0] > j[0, 2, 0]


@settings(max_examples=8, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3), st.floats(-1.0, 1.0))
def test_any_camera_rotation_gives_the_same_upright_world(default_body, rotvec, shift):
    """Re-shooting the same motion with a rotated, moved camera changes nothing upright."""
    orient, body_pose, transl = _subject()
    W = world_from_camera(default_body, None, orient, body_pose, transl)
    v_ref, _ = _to_world(default_body, W, orient, body_pose, transl)

    Q = Rotation.from_rotvec(rotvec)
    offset = np.array([shift, -shift, 0.5 * shift])
    pelvis = default_body.shaped(None)[1][0, 0].numpy().astype(np.float64)
    orient2 = (Q * Rotation.from_rotvec(orient)).as_rotvec().astype(np.float32)
    # The pelvis sits at J0 + transl; move it with the camera: Q (J0 + t) + offset - J0.
    transl2 = ((pelvis + transl) @ Q.as_matrix().T + offset - pelvis).astype(np.float32)
    W2 = world_from_camera(default_body, None, orient2, body_pose, transl2)
    v2, _ = _to_world(default_body, W2, orient2, body_pose, transl2)
    assert np.abs(v2 - v_ref).max() < 1e-4
