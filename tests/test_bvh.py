"""BVH reader, writer and forward kinematics: properties on random skeletons and the real CMU file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation as R

from pointwear.data.bvh import (Bvh, ROTATION_CHANNELS, POSITION_CHANNELS, bvh_end_positions,
                                bvh_global_positions, bvh_global_transforms, bvh_text, read_bvh,
                                write_bvh)
from pointwear.errors import InputError

CMU = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.exists():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")

floats = st.floats(-1e3, 1e3, allow_nan=False, width=64)
angles = st.floats(-360, 360, allow_nan=False, width=32)
names = st.text("abcdefghijklmnopqrstuvwxyzABCXYZ_0123456789:.-", min_size=1, max_size=12)


@st.composite
def skeletons(draw, max_joints: int = 8, max_frames: int = 5) -> Bvh:
    """A random skeleton in depth-first order (as a file lists it) with random channel layouts,
    End Sites and motion."""
    num = draw(st.integers(1, max_joints))
    parents = [-1]
    chain = [0]                       # ancestors of the last joint, inclusive
    for j in range(1, num):
        depth = draw(st.integers(0, len(chain) - 1))
        chain = chain[:depth + 1]
        parents.append(chain[-1])
        chain.append(j)
    joint_names = draw(st.lists(names, min_size=num, max_size=num, unique=True))
    offsets = np.array(draw(st.lists(st.tuples(floats, floats, floats), min_size=num, max_size=num)))
    channels = []
    for j in range(num):
        pool = list(ROTATION_CHANNELS + POSITION_CHANNELS)
        chans = draw(st.permutations(pool))[:draw(st.integers(1 if j == 0 else 0, 6))]
        channels.append(tuple(chans))
    end_sites = []
    for j in range(num):
        for _ in range(draw(st.integers(0, 2))):
            end_sites.append((j, np.array(draw(st.tuples(floats, floats, floats)))))
    frames = draw(st.integers(0, max_frames))
    width = sum(len(c) for c in channels)
    motion = np.array(draw(st.lists(angles, min_size=frames * width, max_size=frames * width)),
                      np.float32).reshape(frames, width)
    frame_time = draw(st.floats(1e-4, 1.0, allow_nan=False))
    return Bvh(joint_names, np.array(parents), offsets, channels, frame_time, motion, end_sites)


def _post_order_end_sites(bvh: Bvh) -> list[tuple[int, list[float]]]:
    return sorted((j, o.tolist()) for j, o in bvh.end_sites)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bvh=skeletons())
def test_write_read_round_trip_is_exact(tmp_path, bvh):
    path = write_bvh(tmp_path / "random.bvh", bvh)
    back = read_bvh(path)
    assert back.names == bvh.names
    np.testing.assert_array_equal(back.parents, bvh.parents)
    np.testing.assert_array_equal(back.offsets, bvh.offsets)          # bit-exact
    assert back.channels == [tuple(c) for c in bvh.channels]
    assert back.frame_time == bvh.frame_time
    assert back.motion.dtype == np.float32 and back.motion.shape == bvh.motion.shape
    np.testing.assert_array_equal(back.motion, bvh.motion)             # bit-exact
    assert _post_order_end_sites(back) == _post_order_end_sites(bvh)
    assert bvh_text(back) == bvh_text(bvh)


def _cumulative_offsets(bvh: Bvh) -> np.ndarray:
    out = np.zeros_like(bvh.offsets)
    for j, p in enumerate(bvh.parents):
        out[j] = bvh.offsets[j] + (out[p] if p >= 0 else 0)
    return out


@settings(max_examples=60, deadline=None)
@given(bvh=skeletons(max_frames=3))
def test_fk_of_rest_motion_is_cumulative_offsets(bvh):
    """Zero rotations, position channels holding the offsets (the rest pose) -> joints sit at the
    sums of the offsets along their chains, in every frame."""
    motion = np.zeros((2, bvh.num_channels), np.float32)
    for j, (chans, start) in enumerate(zip(bvh.channels, bvh.channel_start)):
        for k, c in enumerate(chans):
            if c.endswith("position"):
                motion[:, start + k] = bvh.offsets[j, "XYZ".index(c[0])]
    bvh.offsets = bvh.offsets.astype(np.float32).astype(np.float64)   # what the channels can hold
    rest = Bvh(bvh.names, bvh.parents, bvh.offsets, bvh.channels, 0.1, motion, bvh.end_sites)
    positions = bvh_global_positions(rest)
    assert positions.shape == (2, bvh.num_joints, 3)
    np.testing.assert_allclose(positions, np.broadcast_to(_cumulative_offsets(bvh), positions.shape),
                               atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(order=st.permutations("XYZ"), count=st.integers(1, 3),
       a=st.lists(angles, min_size=3, max_size=3),
       pos=st.tuples(floats, floats, floats), child=st.tuples(floats, floats, floats),
       position_first=st.booleans())
def test_rotation_order_matches_scipy_intrinsic(order, count, a, pos, child, position_first):
    order = "".join(order[:count])
    rot_chans = tuple(f"{axis}rotation" for axis in order)
    chans = (POSITION_CHANNELS + rot_chans) if position_first else (rot_chans + POSITION_CHANNELS)
    values = dict(zip(rot_chans, a)) | dict(zip(POSITION_CHANNELS, pos))
    motion = np.array([[values[c] for c in chans]], np.float32)
    bvh = Bvh(["root", "child"], np.array([-1, 0]), np.array([[5.0, 6, 7], child]),
              [chans, ()], 1 / 30, motion, [(1, np.array([0.0, 1, 0]))])
    assert bvh.rotation_order(0) == order
    expected = R.from_euler(order, np.asarray(motion[0, [chans.index(c) for c in rot_chans]], np.float64),
                            degrees=True)
    grot, gpos = bvh_global_transforms(bvh)
    root = np.asarray(motion[0, [chans.index(c) for c in POSITION_CHANNELS]], np.float64)
    np.testing.assert_allclose(grot[0, 0], expected.as_matrix().reshape(3, 3), atol=1e-12)
    np.testing.assert_allclose(gpos[0, 0], root, atol=1e-9)
    np.testing.assert_allclose(gpos[0, 1], root + expected.apply(child).reshape(3), atol=1e-9 * (1 + np.abs(child).max()))
    np.testing.assert_allclose(bvh_end_positions(bvh)[0, 0], gpos[0, 1] + expected.apply([0, 1, 0]).reshape(3), atol=1e-8)


def test_chain_rotations_compose_parent_first():
    """Two rotating joints: world rotation of the child is parent @ child."""
    motion = np.array([[30, 0, 0, 0, 45, 0]], np.float32)
    chans = ("Zrotation", "Yrotation", "Xrotation")
    bvh = Bvh(["a", "b", "c"], np.array([-1, 0, 1]), np.array([[0.0, 0, 0], [1, 0, 0], [1, 0, 0]]),
              [chans, chans, ()], 0.1, motion)
    grot, gpos = bvh_global_transforms(bvh)
    first, second = R.from_euler("z", 30, degrees=True), R.from_euler("y", 45, degrees=True)
    np.testing.assert_allclose(grot[0, 1], (first * second).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(gpos[0, 2], first.apply([1, 0, 0]) + (first * second).apply([1, 0, 0]),
                               atol=1e-12)


def test_writer_lists_joints_depth_first(tmp_path):
    """Joints kept breadth-first come back depth-first, each with its own channels' values."""
    chans = ("Zrotation", "Xrotation")
    bvh = Bvh(["root", "a", "b", "a1", "b1"], np.array([-1, 0, 0, 1, 2]),
              np.array([[0.0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]),
              [chans] * 5, 0.5, np.arange(10, dtype=np.float32)[None] * 7)
    back = read_bvh(write_bvh(tmp_path / "bfs.bvh", bvh))
    assert back.names == ["root", "a", "a1", "b", "b1"]
    np.testing.assert_array_equal(back.parents, [-1, 0, 1, 0, 3])
    order = [bvh.names.index(n) for n in back.names]
    np.testing.assert_allclose(bvh_global_positions(back), bvh_global_positions(bvh)[:, order], atol=1e-12)
    np.testing.assert_array_equal(back.motion.reshape(5, 2), bvh.motion.reshape(5, 2)[order])


# -- the real file -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cmu() -> Bvh:
    return read_bvh(CMU)


def test_real_cmu_file(cmu):
    assert cmu.num_joints == 31 and cmu.num_frames == 2752 and cmu.num_channels == 96
    assert cmu.fps == pytest.approx(120, rel=1e-4)
    assert cmu.names[:3] == ["Hips", "LHipJoint", "LeftUpLeg"]
    for name in ("Spine1", "Neck1", "Head", "LeftArm", "LeftForeArm", "LeftHand", "RightFoot"):
        assert name in cmu.names
    assert cmu.channels[0] == POSITION_CHANNELS + ("Zrotation", "Yrotation", "Xrotation")
    assert all(cmu.rotation_order(j) == "ZYX" for j in range(cmu.num_joints))
    assert cmu.motion.shape == (2752, 96) and cmu.motion.dtype == np.float32
    np.testing.assert_allclose(cmu.motion[0, :3], [9.3722, 17.8693, -17.3198], atol=1e-5)
    positions = bvh_global_positions(cmu)
    assert positions.shape == (2752, 31, 3) and np.isfinite(positions).all()
    np.testing.assert_allclose(positions[:, 0], cmu.motion[:, :3], atol=1e-5)
    # rigid bones: every joint keeps its offset's distance from its parent in every frame
    child = np.arange(1, 31)
    lengths = np.linalg.norm(positions[:, child] - positions[:, cmu.parents[child]], axis=-1)
    np.testing.assert_allclose(lengths, np.broadcast_to(np.linalg.norm(cmu.offsets[child], axis=1),
                                                        lengths.shape), atol=1e-5)
    # Y is up: the head stays above the feet
    head, foot = cmu.index("Head"), cmu.index("LeftFoot")
    assert (positions[:, head, 1] > positions[:, foot, 1] + 10).all()
    # a subset of frames is the same as slicing the full result
    np.testing.assert_allclose(bvh_global_positions(cmu, slice(100, 110)), positions[100:110])


def test_real_file_round_trips(cmu, tmp_path):
    back = read_bvh(write_bvh(tmp_path / "cmu.bvh", cmu))
    assert back.names == cmu.names
    np.testing.assert_array_equal(back.motion, cmu.motion)
    np.testing.assert_array_equal(back.offsets, cmu.offsets)
    assert len(back.end_sites) == len(cmu.end_sites) == 7


# -- bad input --------------------------------------------------------------------------------------

GOOD = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Leg
  {
    OFFSET 0 -1 0
    CHANNELS 3 Zrotation Yrotation Xrotation
    End Site
    {
      OFFSET 0 -1 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0333
0 1 0 0 0 0 10 0 0
0 1 0 0 0 0 20 0 0
"""


def _error(tmp_path, text: str, **kw) -> InputError:
    path = tmp_path / "bad.bvh"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_bvh(path, **kw)
    assert str(path) in str(info.value)
    return info.value


def test_good_sample_reads(tmp_path):
    path = tmp_path / "good.bvh"
    path.write_text(GOOD.replace("\n", "\r\n"))
    bvh = read_bvh(path)
    assert bvh.names == ["Hips", "Leg"] and bvh.num_frames == 2
    np.testing.assert_allclose(bvh_global_positions(bvh)[1], [[0, 1, 0], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(bvh_end_positions(bvh)[1, 0], [np.sin(np.deg2rad(20)), -np.cos(np.deg2rad(20)), 0],
                               atol=1e-6)


@pytest.mark.parametrize("mutate, line, words", [
    (lambda t: t.replace("Frames: 2", "Frames: 3"), 17, "3' but 2 frame rows"),
    (lambda t: t.replace("Frames: 2", "Frames: 1"), 20, "1' but 2 frame rows"),
    (lambda t: t.replace("0 1 0 0 0 0 20 0 0", "0 1 0 0 0 0 20 0"), 20, "8 values"),
    (lambda t: t.replace("0 1 0 0 0 0 20 0 0", "0 1 0 0 0 0 x 0 0"), 20, "'x'"),
    (lambda t: t.replace("0 1 0 0 0 0 20 0 0", "0 1 0 0 0 0 nan 0 0"), 20, "'nan'"),
    (lambda t: t.replace("OFFSET 0 -1 0\n    CHANNELS", "OFFSET 0 -one 0\n    CHANNELS"), 8, "'-one'"),
    (lambda t: t.replace("CHANNELS 3 Zrotation", "CHANNELS 3 Wrotation"), 9, "unknown channel"),
    (lambda t: t.replace("CHANNELS 3 Zrotation", "CHANNELS 9 Zrotation"), 9, "count 0..6"),
    (lambda t: t.replace("JOINT Leg", "JOINT Hips"), 6, "used twice"),
    (lambda t: t.replace("Frame Time: 0.0333", "Frame Time: 0"), 18, "t > 0"),
    (lambda t: t.replace("HIERARCHY", "HIERARCHIE"), 1, "HIERARCHY"),
    (lambda t: t.replace("End Site", "End Sight"), 10, "'End Sight'"),
    (lambda t: t[:t.index("MOTION")], 15, "MOTION"),
    (lambda t: t.replace("  }\n}\nMOTION", "  }\nMOTION"), 15, "'}' is missing"),
    (lambda t: t.replace("}\nMOTION", "}\nROOT Other\nMOTION"), 16, "only one ROOT"),
])
def test_bad_files_name_the_line(tmp_path, mutate, line, words):
    err = _error(tmp_path, mutate(GOOD))
    assert err.field == f"line {line}", str(err)
    assert words in str(err)


def test_bounds(tmp_path):
    err = _error(tmp_path, GOOD, max_bytes=100)
    assert "limit" in str(err)
    err = _error(tmp_path, GOOD, max_joints=1)
    assert "more than 1 joints" in str(err) and err.field == "line 6"
    with pytest.raises(InputError, match="not found"):
        read_bvh(tmp_path / "missing.bvh")
    (tmp_path / "empty.bvh").write_text("")
    with pytest.raises(InputError, match="HIERARCHY"):
        read_bvh(tmp_path / "empty.bvh")
