"""AMASS-style motion files: read, converted to Y-up, and refused clearly when malformed."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation as R

from pointwear.data.motion import read_motion
from pointwear.errors import InputError


def test_smplh_poses_keep_body_joints_and_turn_to_y_up(tmp_path):
    poses = np.random.default_rng(0).normal(0, 0.2, (5, 156)).astype(np.float32)
    trans = np.tile([[0.0, 0.0, 1.0]], (5, 1)).astype(np.float32)   # 1 m up in a Z-up file
    np.savez(tmp_path / "m.npz", poses=poses, trans=trans, mocap_framerate=120.0)
    m = read_motion(tmp_path / "m.npz", up="z")
    assert m.body_pose.shape == (5, 69) and m.fps == 120.0
    np.testing.assert_allclose(m.body_pose[:, :63], poses[:, 3:66], atol=1e-6)
    np.testing.assert_array_equal(m.body_pose[:, 63:], 0)
    np.testing.assert_allclose(m.transl[0], [0, 1, 0], atol=1e-6)       # now Y-up
    up = R.from_rotvec(m.global_orient[0]).inv().apply([0, 1, 0])
    np.testing.assert_allclose(up, R.from_rotvec(poses[0, :3]).inv().apply([0, 0, 1]), atol=1e-5)


@pytest.mark.parametrize("arrays, field", [
    ({"trans": np.zeros((2, 3))}, "poses"),
    ({"poses": np.zeros((2, 72))}, "trans"),
    ({"poses": np.zeros((2, 10)), "trans": np.zeros((2, 3))}, "poses"),
    ({"poses": np.zeros((2, 72)), "trans": np.zeros((3, 3))}, "trans"),
    ({"poses": np.full((2, 72), np.nan), "trans": np.zeros((2, 3))}, "poses"),
])
def test_bad_motion_files_name_the_field(tmp_path, arrays, field):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=field):
        read_motion(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not found"):
        read_motion(tmp_path / "missing.npz")


def test_walking_motion_round_trips_through_an_amass_style_file(tmp_path):
    from pointwear.data.motion import read_motion, walking_motion, write_motion
    motion = walking_motion(30, fps=25.0, speed=1.2)
    back = read_motion(write_motion(tmp_path / "walk.npz", motion), up="y")
    np.testing.assert_allclose(back.global_orient, motion.global_orient, atol=1e-6)
    np.testing.assert_allclose(back.body_pose, motion.body_pose, atol=1e-6)
    np.testing.assert_allclose(back.transl, motion.transl, atol=1e-6)
    assert back.fps == 25.0
    # It travels: about speed x duration along the ground, none of it vertical.
    path = np.linalg.norm(np.diff(motion.transl, axis=0), axis=1).sum()
    assert abs(path - 1.2 * 29 / 25.0) < 1e-3 and np.abs(motion.transl[:, 1]).max() == 0
