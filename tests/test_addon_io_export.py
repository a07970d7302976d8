"""addon/io/export.py (pure: no bpy): camera.npz and AMASS-style motion arrays for the render job."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from addon.io import camera as camera_io  # noqa: E402  (pure: no bpy)
from addon.io import export, smpl_math  # noqa: E402
from addon.io import motion as motion_io  # noqa: E402

HYPO = settings(max_examples=80, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_rigid(rng):
    m = np.eye(4)
    m[:3, :3] = random_rotation(rng)
    m[:3, 3] = rng.uniform(-5, 5, 3)
    return m


@HYPO
@given(seeds, st.integers(1, 5))
def test_camera_from_world_inverts_the_importers_camera(seed, frames):
    """A Blender camera placed from world_from_camera W (as the importer does) exports
    camera_from_world = W^-1: the round trip through Blender axes is exact."""
    rng = np.random.default_rng(seed)
    w = np.stack([random_rigid(rng) for _ in range(frames)])
    m = np.stack([camera_io.camera_matrix_world(wi) for wi in w])
    k = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    arrays = export.camera_file_arrays(k, (480, 640), m)
    assert arrays["camera_from_world"].shape == (frames, 4, 4)
    np.testing.assert_allclose(arrays["camera_from_world"], np.linalg.inv(w), atol=1e-9)
    assert arrays["image_size"].dtype.kind == "i" and arrays["image_size"].tolist() == [480, 640]


@HYPO
@given(seeds, st.floats(0.2, 5.0))
def test_camera_formula_and_projection(seed, scale):
    """The documented formula, and a point in front of a Blender camera projects in front
    (z > 0) with OpenCV's y down; camera scale is dropped."""
    rng = np.random.default_rng(seed)
    m = random_rigid(rng)
    scaled = m.copy()
    scaled[:3, :3] *= scale
    cfw = export.camera_file_arrays(np.eye(3), (4, 4), scaled)["camera_from_world"]
    blender_from_smpl = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]])
    expected = np.diag([1.0, -1, -1, 1]) @ np.linalg.inv(m) @ blender_from_smpl
    np.testing.assert_allclose(cfw, expected, atol=1e-9)
    np.testing.assert_allclose(cfw[:3, :3] @ cfw[:3, :3].T, np.eye(3), atol=1e-9)
    # 2 m in front of the camera, 0.5 m up in the camera's view: OpenCV z = 2, y = -0.5.
    p_blender = m @ np.array([0.0, 0.5, -2.0, 1.0])
    p_smpl = np.linalg.inv(blender_from_smpl) @ p_blender
    np.testing.assert_allclose(cfw @ p_smpl, [0.0, -0.5, 2.0, 1.0], atol=1e-9)


@HYPO
@given(st.floats(100, 3000), st.integers(16, 2000), st.integers(16, 2000),
       st.floats(-0.3, 0.3), st.floats(-0.3, 0.3))
def test_intrinsics_round_trip_with_the_importer(f, width, height, dx, dy):
    """K -> Blender camera settings (addon.io.camera.camera_params) -> K back."""
    k = np.array([[f, 0, (width - 1) / 2 + dx * width], [0, f, (height - 1) / 2 + dy * height], [0, 0, 1]])
    p = camera_io.camera_params(k, (height, width))
    k2, size = export.camera_intrinsics(p.lens, p.sensor_width, p.sensor_height, "AUTO", p.shift_x,
                                        p.shift_y, p.resolution_x, p.resolution_y)
    assert size.tolist() == [height, width]
    np.testing.assert_allclose(k2, k, rtol=1e-9, atol=1e-6)


def test_intrinsics_documented_formula():
    """docs/appearance.md: fx = lens / sensor_width * W, cx = (W-1)/2 - shift_x W, cy = (H-1)/2 +
    shift_y W (AUTO fit, W >= H); the render percentage scales the image."""
    k, size = export.camera_intrinsics(50.0, 36.0, 24.0, "AUTO", 0.1, -0.05, 1920, 1080, percentage=50)
    w, h = 960, 540
    assert size.tolist() == [h, w]
    np.testing.assert_allclose(k, [[50 / 36 * w, 0, (w - 1) / 2 - 0.1 * w],
                                   [0, 50 / 36 * w, (h - 1) / 2 - 0.05 * w], [0, 0, 1]])
    # Portrait, AUTO: the sensor width spans the height.
    k, size = export.camera_intrinsics(50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 600, 800)
    np.testing.assert_allclose(k[0, 0], 50 / 36 * 800)


@HYPO
@given(seeds, st.integers(1, 6), st.floats(1.0, 120.0))
def test_motion_arrays_round_trip(seed, frames, fps):
    """Pose-bone quaternions (any sign, any norm) -> poses that give back the same rotations, and
    the file reads back through the add-on's own AMASS reader (up Y) as the same motion."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(frames, 24, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    aa = axis * rng.uniform(0.0, np.pi - 1e-3, (frames, 24, 1))
    q = smpl_math.axis_angle_to_quaternion(aa)
    q = q * rng.choice([-1.0, 1.0], (frames, 24, 1)) * rng.uniform(0.5, 2.0, (frames, 24, 1))
    trans = rng.uniform(-2, 2, (frames, 3))
    arrays = export.motion_arrays(q, trans, fps)
    assert arrays["poses"].shape == (frames, 72)
    np.testing.assert_allclose(smpl_math.axis_angle_to_matrix(arrays["poses"].reshape(frames, 24, 3)),
                               smpl_math.axis_angle_to_matrix(aa), atol=1e-9)
    np.testing.assert_allclose(arrays["trans"], trans)
    assert float(arrays["mocap_framerate"]) == fps


def test_motion_file_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    aa = rng.uniform(-1, 1, (4, 24, 3))
    trans = rng.uniform(-1, 1, (4, 3))
    arrays = export.motion_arrays(smpl_math.axis_angle_to_quaternion(aa), trans, 25.0)
    np.savez(tmp_path / "m.npz", **arrays)
    motion = motion_io.read_amass(tmp_path / "m.npz", up="Y", pelvis=(0.0, 0.2, 0.0))
    np.testing.assert_allclose(motion.full_pose(), aa, atol=1e-9)
    np.testing.assert_allclose(motion.transl, trans, atol=1e-12)
    assert motion.fps == 25.0


def test_bad_inputs_raise():
    import pytest

    with pytest.raises(ValueError):
        export.motion_arrays(np.zeros((2, 24, 4)), np.zeros((2, 3)), 30)
    with pytest.raises(ValueError):
        export.motion_arrays(np.ones((2, 23, 4)), np.zeros((2, 3)), 30)
    with pytest.raises(ValueError):
        export.camera_file_arrays(np.eye(3), (0, 5), np.eye(4))
    with pytest.raises(ValueError):
        export.camera_file_arrays(np.eye(3), (4, 4), np.diag([-1.0, 1, 1, 1]))
