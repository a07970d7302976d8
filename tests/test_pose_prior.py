"""The shipped Gaussian pose prior and the BVH -> SMPL conversion it is built from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation as R

from pointwear.body.joints import JOINT_INDEX, JOINT_NAMES, PARENTS
from pointwear.data.bvh import Bvh, bvh_global_positions, read_bvh, write_bvh
from pointwear.data.bvh_smpl import (CMU_JOINT_MAP, BvhSmplOptions, JointSource, bvh_to_smpl,
                                     bvh_up_axis, conversion_errors, smpl_joints, to_motion)
from pointwear.data.motion import Z_UP_TO_Y_UP, read_motion, write_motion
from pointwear.errors import InputError
from pointwear.fileio import save_npz
from pointwear.perception.pose_prior import (POSE_PRIOR_FILE, load_pose_prior, pose_prior_energy,
                                             pose_prior_tensors)

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.exists():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")


@pytest.fixture(scope="module")
def prior():
    return load_pose_prior()


# -- the shipped file -------------------------------------------------------------------------------

def test_shipped_prior_loads(prior):
    assert POSE_PRIOR_FILE.stat().st_size < 100 * 1024
    assert prior["mean"].shape == (69,) and prior["mean"].dtype == np.float32
    assert prior["precision_chol"].shape == (69, 69)
    assert np.allclose(prior["precision_chol"], np.tril(prior["precision_chol"]))
    assert int(prior["frames"]) > 1000
    source = str(prior["source"])
    assert "cmu_01_01.bvh" in source and "free for all uses" in source
    assert (Path(POSE_PRIOR_FILE).parent / "README.md").is_file()


def test_precision_is_positive_definite(prior):
    chol = prior["precision_chol"].astype(np.float64)
    precision = chol @ chol.T
    eig = np.linalg.eigvalsh(precision)
    assert eig.min() > 0
    # the variance floor bounds every direction's standard deviation below by ~5 degrees
    assert 1 / np.sqrt(eig.max()) >= np.deg2rad(4.9)


def test_energy_is_zero_at_the_mean_and_quadratic_away(prior):
    mean = torch.as_tensor(prior["mean"])[None]
    assert pose_prior_energy(mean, prior).item() == pytest.approx(0.0, abs=1e-10)
    rng = np.random.default_rng(0)
    d = torch.as_tensor(rng.normal(size=(8, 69)) * 0.1, dtype=torch.float32)
    e1 = pose_prior_energy(mean + d, prior)
    e2 = pose_prior_energy(mean + 2 * d, prior)
    assert e1.shape == (8,) and (e1 > 0).all()
    torch.testing.assert_close(e2, 4 * e1, rtol=1e-4, atol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=st.lists(st.floats(-1, 1, allow_nan=False), min_size=69, max_size=69),
       t=st.floats(0.05, 0.95))
def test_energy_grows_along_any_ray(prior, d, t):
    d = torch.tensor(d, dtype=torch.float64)[None]
    mean = torch.as_tensor(prior["mean"], dtype=torch.float64)[None]
    near, far = pose_prior_energy(mean + t * d, prior), pose_prior_energy(mean + d, prior)
    assert far.dtype == torch.float64
    assert near.item() <= far.item() * t + 1e-9   # t^2 <= t


def test_energy_follows_device_dtype_and_differentiates(prior):
    pose = torch.zeros(3, 69, dtype=torch.float64, requires_grad=True)
    tensors = pose_prior_tensors(prior, pose)
    assert tensors["mean"].dtype == torch.float64
    energy = pose_prior_energy(pose, tensors)
    assert energy.dtype == torch.float64 and energy.shape == (3,)
    energy.sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 69\)"):
        pose_prior_energy(torch.zeros(69), prior)


def test_prior_knows_which_way_joints_bend(prior):
    """Knees and elbows bent the human way cost less than the same bend backwards."""
    def energy(pose):
        return pose_prior_energy(torch.as_tensor(pose)[None], prior).item()
    for joint, axis in (("left_knee", [1, 0, 0]), ("right_knee", [1, 0, 0]),
                        ("left_elbow", [0, -1, 0]), ("right_elbow", [0, 1, 0])):
        bend = np.deg2rad(60) * np.asarray(axis, np.float32)
        base = prior["mean"].copy()
        base[3 * (JOINT_INDEX[joint] - 1):3 * JOINT_INDEX[joint]] = bend
        bad = prior["mean"].copy()
        bad[3 * (JOINT_INDEX[joint] - 1):3 * JOINT_INDEX[joint]] = -bend
        assert energy(base) < energy(bad), joint


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_pose_prior(tmp_path / "missing.npz")
    path = save_npz(tmp_path / "bad.npz", mean=np.zeros(68), precision_chol=np.eye(69))
    with pytest.raises(InputError) as info:
        load_pose_prior(path)
    assert info.value.field == "mean"
    path = save_npz(tmp_path / "nan.npz", mean=np.zeros(69), precision_chol=np.eye(69) * np.nan)
    with pytest.raises(InputError, match="NaN"):
        load_pose_prior(path)


# -- BVH -> SMPL --------------------------------------------------------------------------------------

def smpl_as_bvh(body, pose: np.ndarray, trans: np.ndarray, unit: float, up: str = "y",
                orders: list[str] | None = None) -> Bvh:
    """A BVH of the body's own skeleton (joints named as SMPL's) playing `pose` (T, 24, 3) with
    `trans` (T, 3), in units of `unit` metres, Y-up or Z-up, each joint's Euler channels in
    `orders[j]` (default "ZYX")."""
    orders = orders or ["ZYX"] * 24
    with torch.no_grad():
        rest = body.shaped(None)[1][0].double().numpy()
    turn = np.eye(3) if up == "y" else Z_UP_TO_Y_UP.inv().as_matrix()   # Y-up world -> file
    offsets = np.zeros((24, 3))
    offsets[1:] = rest[1:] - rest[PARENTS[1:]]
    offsets = offsets @ turn.T / unit
    local = R.from_rotvec(pose.reshape(-1, 3)).as_matrix().reshape(len(pose), 24, 3, 3)
    local = turn @ local @ turn.T
    euler = [R.from_matrix(local[:, j]).as_euler(orders[j], degrees=True) for j in range(24)]
    root = (rest[0] + trans) @ turn.T / unit
    motion = np.concatenate([root] + euler, 1).astype(np.float32)
    channels = [tuple(f"{a}rotation" for a in order) for order in orders]
    channels[0] = ("Xposition", "Yposition", "Zposition") + channels[0]
    return Bvh(list(JOINT_NAMES), PARENTS.copy(), offsets, channels, 1 / 30, motion)


IDENTITY_MAP = {n: JointSource(((n,),), (n,), 1.0) for n in JOINT_NAMES}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), unit=st.sampled_from([0.01, 0.0254, 0.0564, 1.0]),
       up=st.sampled_from("yz"), orders=st.lists(st.permutations("XYZ").map("".join), min_size=24, max_size=24))
def test_smpl_skeleton_round_trips_exactly(default_body, tmp_path, seed, unit, up, orders):
    """A BVH made from the body's own skeleton and known poses (any units, up axis, Euler
    orders) converts back to those poses."""
    rng = np.random.default_rng(seed)
    pose = rng.normal(scale=0.3, size=(4, 24, 3))
    pose[:, 0] = R.from_euler("y", rng.uniform(-180, 180, 4), degrees=True).as_rotvec()
    trans = rng.normal(scale=0.5, size=(4, 3))
    path = write_bvh(tmp_path / "smpl.bvh", smpl_as_bvh(default_body, pose, trans, unit, up, orders))
    bvh = read_bvh(path)
    assert bvh_up_axis(bvh, IDENTITY_MAP) == up
    options = BvhSmplOptions(hinge_min_angle=None)     # up="auto" finds the file's up axis
    out = bvh_to_smpl(bvh, default_body, joint_map=IDENTITY_MAP, options=options)
    assert out["bvh_scale"] == pytest.approx(unit, rel=1e-5)
    assert out["mocap_framerate"] == pytest.approx(30)
    got = R.from_rotvec(out["poses"].reshape(-1, 3).astype(np.float64))
    angle = (got.inv() * R.from_rotvec(pose.reshape(-1, 3))).magnitude()
    assert np.degrees(angle).max() < 0.05
    np.testing.assert_allclose(out["trans"], trans, atol=1e-4)
    errors = conversion_errors(bvh, out, default_body, joint_map=IDENTITY_MAP, options=options)
    assert max(v.max() for v in errors["position"].values()) < 1e-4
    # the BVH joints themselves, scaled and turned, are the body's joints
    with torch.no_grad():
        joints = smpl_joints(default_body, torch.zeros(1, 10), torch.as_tensor(pose, dtype=torch.float32),
                             torch.as_tensor(trans, dtype=torch.float32)).double().numpy()
    turn = np.eye(3) if up == "y" else Z_UP_TO_Y_UP.as_matrix()
    order = [bvh.index(n) for n in JOINT_NAMES]          # the file lists joints depth-first
    np.testing.assert_allclose(bvh_global_positions(bvh)[:, order] @ turn.T * unit, joints, atol=1e-4)


@pytest.fixture(scope="module")
def cmu_head(default_body):
    bvh = read_bvh(CMU)
    return bvh, bvh_to_smpl(bvh, default_body, frames=slice(0, 60))


def test_cmu_conversion_errors_within_measured_bounds(default_body, cmu_head):
    """First 60 frames (120 fps) -> 15 frames at 30 fps. Measured (default body): legs 8-18 mm
    (knees, ankles, feet, pelvis), hips ~41 mm (CMU's hips are 8 cm narrower), upper body
    50-135 mm (the actor's torso is shorter relative to the legs than the body's; only legs are
    matched in position), bones 0.5-13 degrees off the mocap's directions (limbs under 2)."""
    bvh, out = cmu_head
    assert out["poses"].shape == (15, 72) and out["trans"].shape == (15, 3)
    assert out["betas"].shape == (10,) and not out["betas"].any()
    assert out["mocap_framerate"] == pytest.approx(30, rel=1e-3)
    assert out["bvh_scale"] == pytest.approx(0.0548, rel=0.01)
    errors = conversion_errors(bvh, out, default_body, frames=slice(0, 60))
    position = {k: 1000 * v.mean() for k, v in errors["position"].items()}
    for joint in ("pelvis", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_foot", "right_foot"):
        assert position[joint] < 25, (joint, position[joint])
    assert max(position["left_hip"], position["right_hip"]) < 50
    assert max(position.values()) < 160
    direction = {k: v.mean() for k, v in errors["direction"].items()}
    assert max(direction.values()) < 15
    for bone in ("left_knee->left_ankle", "right_knee->right_ankle", "left_shoulder->left_elbow",
                 "right_shoulder->right_elbow", "left_elbow->left_wrist", "right_elbow->right_wrist"):
        assert direction[bone] < 3, (bone, direction[bone])
    # Y-up, feet on the floor: CMU's floor is y = 0
    with torch.no_grad():
        joints = smpl_joints(default_body, torch.zeros(1, 10),
                             torch.as_tensor(out["poses"]).reshape(-1, 24, 3), torch.as_tensor(out["trans"]))
    assert joints[:, JOINT_INDEX["head"], 1].min() > 1.2
    assert joints[:, [JOINT_INDEX["left_ankle"], JOINT_INDEX["right_ankle"]], 1].max() < 0.2


def test_cmu_conversion_is_an_amass_style_motion(default_body, cmu_head, tmp_path):
    _, out = cmu_head
    path = write_motion(tmp_path / "cmu.npz", to_motion(out))
    motion = read_motion(path, up="y")
    assert motion.num_frames == 15 and motion.fps == pytest.approx(30, rel=1e-3)
    np.testing.assert_array_equal(motion.global_orient, out["poses"][:, :3])
    np.testing.assert_array_equal(motion.body_pose, out["poses"][:, 3:])
    np.testing.assert_array_equal(motion.transl, out["trans"])
    # the body posed by the motion file stands where the conversion put it
    with torch.no_grad():
        posed = default_body(betas=motion.betas, global_orient=motion.global_orient,
                             body_pose=motion.body_pose, transl=motion.transl).joints
        direct = smpl_joints(default_body, torch.zeros(1, 10),
                             torch.as_tensor(out["poses"]).reshape(-1, 24, 3), torch.as_tensor(out["trans"]))
    torch.testing.assert_close(posed, direct, atol=1e-5, rtol=1e-5)


def test_cmu_elbows_and_knees_are_hinges(default_body):
    """The hinge calibration turns SMPL's elbow (y) and knee (x) axes onto the mocap's."""
    bvh = read_bvh(CMU)
    out = bvh_to_smpl(bvh, default_body, frames=slice(0, 1200), options=BvhSmplOptions(iterations=0))
    pose = out["poses"].reshape(-1, 24, 3)
    for joint, axis in (("left_elbow", 1), ("right_elbow", 1), ("left_knee", 0), ("right_knee", 0)):
        rotvec = pose[:, JOINT_INDEX[joint]]
        bent = np.linalg.norm(rotvec, axis=1) > np.deg2rad(30)
        assert bent.sum() > 10, joint
        along = np.abs(rotvec[bent, axis]) / np.linalg.norm(rotvec[bent], axis=1)
        assert along.mean() > 0.97, (joint, along.mean())


def test_up_axis_of_a_lying_skeleton_is_refused(default_body):
    bvh = read_bvh(CMU)
    assert bvh_up_axis(bvh) == "y"
    lying = Bvh(bvh.names, bvh.parents, bvh.offsets[:, [1, 0, 2]], bvh.channels, bvh.frame_time,
                bvh.motion[:8], path=str(CMU))
    with pytest.raises(InputError, match="up axis") as info:
        bvh_to_smpl(lying, default_body)
    assert str(CMU) in str(info.value)
    bvh_to_smpl(lying, default_body, options=BvhSmplOptions(up="y", iterations=0))   # told: converts


def test_missing_joints_are_named(default_body, tmp_path):
    bvh = read_bvh(CMU)
    renamed = Bvh([n.replace("Leg", "Shin") for n in bvh.names], bvh.parents, bvh.offsets, bvh.channels,
                  bvh.frame_time, bvh.motion[:8], path=str(CMU))
    with pytest.raises(InputError) as info:
        bvh_to_smpl(renamed, default_body)
    assert "left_knee" in str(info.value) and info.value.field == "joint_map"
    # a user map names them; case and a namespace prefix do not matter
    user = {"left_knee": JointSource((("LEFTSHIN",),), ("mixamorig:leftshin",), 1.0),
            "right_knee": JointSource((("RightShin",),), ("RightShin",), 1.0)}
    fixed = {**CMU_JOINT_MAP, **user}
    fixed["left_hip"] = JointSource((("LeftUpShin",),), ("LeftUpShin",), 1.0)
    fixed["right_hip"] = JointSource((("RightUpShin",),), ("RightUpShin",), 1.0)
    fixed["pelvis"] = JointSource((("LeftUpShin", "RightUpShin"),), ("Hips",), 1.0)
    out = bvh_to_smpl(renamed, default_body, joint_map=fixed, options=BvhSmplOptions(iterations=0))
    assert out["poses"].shape == (2, 72)
