"""The scene builders (addon/scene) and their pure maths (addon/io) in the real bpy.

Results come from the real backend, run as a child process (conftest.py ``fit_result``); this
process never imports torch or the backend package. The key check: after importing a fit result,
Blender's own skinning at frame k puts every clothing point where the backend put it in
posed.npz, through the armature, the keyed motion and world_from_camera.
"""

from __future__ import annotations

import json

import math
import shutil
import sys

import numpy as np
import pytest
from blender_support import REPO, run_backend, run_python
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from addon.io import camera as camera_io  # noqa: E402  (pure: no bpy)
from addon.io import motion as motion_io  # noqa: E402
from addon.io import results, smpl_math  # noqa: E402

MM = 1e-3
HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- helpers ---------------------------------------------------------------------------------

def rodrigues(aa):
    """Independent reference: one axis-angle vector -> 3x3 rotation matrix."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa)
    if angle < 1e-12:
        return np.eye(3)
    k = aa / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def random_rotation(rng):
    q = rng.normal(size=4)
    return smpl_math.quaternion_to_matrix(q / np.linalg.norm(q))


def write_amass(path, frames=40, up="Z", fps=29.97, seed=0, columns=72):
    """A plausible AMASS-style clip: small joint angles, a turning root standing on the up axis."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)[:, None]
    poses = np.zeros((frames, columns))
    base = rng.normal(scale=0.25, size=(1, 69))
    poses[:, 3:72] = base + 0.3 * np.sin(2 * np.pi * t + rng.uniform(0, 6, size=(1, 69))) * rng.uniform(0, 1, (1, 69))
    yaw = 2.5 * t[:, 0] + 0.3
    stand = smpl_math.Z_UP_TO_Y_UP.T if up == "Z" else np.eye(3)  # Y-up body -> file's world
    up_axis = np.array([0.0, 0.0, 1.0]) if up == "Z" else np.array([0.0, 1.0, 0.0])
    orient = [smpl_math.matrix_to_axis_angle(rodrigues(up_axis * a) @ stand @ rodrigues([0.2 * math.sin(a), 0, 0]))
              for a in yaw]
    poses[:, :3] = orient
    if columns > 72:
        poses[:, 72:] = rng.normal(size=(frames, columns - 72))
    trans = np.cumsum(rng.normal(scale=0.02, size=(frames, 3)), 0) + 0.9 * up_axis
    np.savez(path, poses=poses, trans=trans, mocap_framerate=np.array(fps), betas=np.zeros(16))
    return path


def evaluated_positions(bpy, obj):
    """World positions (Blender axes) of an object's evaluated geometry at the current frame:
    the Geometry Nodes point cloud for the points (what renders), the mesh for the others."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(depsgraph)
    if obj.type == "MESH" and any(m.type == "NODES" for m in obj.modifiers):
        # Geometry Nodes output other than a mesh reaches Python as an instance of the object
        # (read while iterating: instance data is only valid then).
        found = []
        for inst in depsgraph.object_instances:
            if (inst.is_instance and inst.object.type == "POINTCLOUD" and inst.parent is not None
                    and inst.parent.original == obj):
                cloud = inst.object.data
                co = np.empty(len(cloud.points) * 3, np.float32)
                cloud.attributes["position"].data.foreach_get("vector", co)
                found.append(co)
        assert len(found) == 1, len(found)
        co = found[0]
    else:
        mesh = ev.to_mesh()
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ m[:3, :3].T + m[:3, 3]


def rest_positions(obj):
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3).astype(np.float64)


def to_smpl_world(points_blender):
    return smpl_math.from_blender(points_blender)


def camera_to_blender(points_cam, world_from_camera):
    m = smpl_math.C4 @ world_from_camera
    return np.asarray(points_cam, np.float64) @ m[:3, :3].T + m[:3, 3]


def objects_state(bpy):
    return sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections)


@pytest.fixture
def scene_api(bpy_clean):
    """The scene builders, imported from the repository (registration is tested elsewhere)."""
    from addon.scene import armature, clothing, importer, motion

    return {"bpy": bpy_clean, "importer": importer, "armature": armature, "clothing": clothing,
            "motion": motion}


@pytest.fixture(scope="session")
def amass_z(tmp_path_factory):
    return write_amass(tmp_path_factory.mktemp("motion") / "walk_z.npz", frames=40, up="Z", fps=29.97, seed=3)


@pytest.fixture(scope="session")
def redrape_result(fit_result, amass_z, tmp_path_factory):
    """``pointwear drape RESULT --betas 2.0 --motion walk_z.npz``: the outfit re-draped on a new
    shape (outfit.npz, body.npz) and posed by the AMASS clip (posed.npz, Y-up world)."""
    out = tmp_path_factory.mktemp("redrape") / "drape"
    run_backend("drape", fit_result, "--out", out, "--betas", "2.0", "--motion", amass_z, "--up", "z")
    return out


# -- pure maths (addon/io) ---------------------------------------------------------------------

axis_angles = st.lists(st.floats(-7.0, 7.0, allow_nan=False), min_size=3, max_size=3)


@given(axis_angles)
@settings(max_examples=200, deadline=None)
def test_axis_angle_quaternion_and_matrix_agree(aa):
    q = smpl_math.axis_angle_to_quaternion(aa)
    assert abs(np.linalg.norm(q) - 1) < 1e-12
    assert np.allclose(smpl_math.quaternion_to_matrix(q), rodrigues(aa), atol=1e-10)
    assert np.allclose(smpl_math.axis_angle_to_matrix(aa), rodrigues(aa), atol=1e-10)
    back = smpl_math.matrix_to_quaternion(rodrigues(aa))
    assert abs(abs(np.dot(back, q)) - 1) < 1e-9 and back[0] >= 0
    assert np.allclose(rodrigues(smpl_math.matrix_to_axis_angle(rodrigues(aa))), rodrigues(aa), atol=1e-9)


def test_tiny_and_half_turn_rotations_keep_their_axis():
    for aa in ([1e-9, 0, 0], [0, 0, 0], [math.pi, 0, 0], [0, -math.pi, 0], [1, 1, 1]):
        aa = np.array(aa, float)
        assert np.allclose(smpl_math.axis_angle_to_matrix(aa), rodrigues(aa), atol=1e-12)
        assert np.allclose(rodrigues(smpl_math.matrix_to_axis_angle(rodrigues(aa))), rodrigues(aa), atol=1e-9)


def test_batched_and_continuity():
    rng = np.random.default_rng(0)
    aa = rng.normal(scale=2, size=(50, 24, 3))
    q = smpl_math.axis_angle_to_quaternion(aa)
    assert q.shape == (50, 24, 4)
    flipped = q * rng.choice([-1.0, 1.0], size=(50, 24, 1))
    cont = smpl_math.quaternion_continuity(flipped)
    assert (np.sum(cont[1:] * cont[:-1], -1) >= 0).all() and (cont[0, :, 0] >= 0).all()
    assert np.allclose(np.abs(np.sum(cont * q, -1)), 1)  # same rotations


def test_smpl_to_blender_is_rx90():
    assert np.allclose(smpl_math.C, rodrigues([math.pi / 2, 0, 0]))
    assert np.allclose(smpl_math.to_blender([1, 2, 3]), [1, -3, 2])
    assert np.allclose(smpl_math.from_blender(smpl_math.to_blender([[1, 2, 3]])), [[1, 2, 3]])
    assert np.allclose(smpl_math.Z_UP_TO_Y_UP @ [0, 0, 1], [0, 1, 0])


@given(st.floats(30, 3000), st.floats(0.5, 2.0), st.integers(8, 4000), st.integers(8, 4000),
       st.floats(-0.3, 1.3), st.floats(-0.3, 1.3))
@settings(max_examples=200, deadline=None)
def test_camera_params_round_trip(fx, ratio, width, height, cx, cy):
    K = np.array([[fx, 0, cx * width], [0, fx * ratio, cy * height], [0, 0, 1]])
    params = camera_io.camera_params(K, (height, width))
    assert (params.resolution_x, params.resolution_y) == (width, height)
    assert min(params.pixel_aspect_x, params.pixel_aspect_y) == 1.0
    assert np.allclose(camera_io.intrinsics_from_params(params), K, rtol=1e-9, atol=1e-9)


@given(axis_angles, axis_angles, st.lists(st.floats(-2, 2), min_size=9, max_size=9))
@settings(max_examples=100, deadline=None)
def test_change_world_moves_the_root_about_the_pelvis(root, turn, numbers):
    """A point riding on the root, p = R (x - J0) + J0 + t, must land on A p + w after the change."""
    j0, t, x = (np.array(numbers[i:i + 3]) for i in (0, 3, 6))
    w = np.array([0.3, -0.2, 1.0])
    m = motion_io.Motion(np.array([root]), np.zeros((1, 69)), t[None], fps=30)
    a = rodrigues(turn)
    m2 = motion_io.change_world(m, a, w, j0)
    before = rodrigues(root) @ (x - j0) + j0 + t
    after = rodrigues(m2.global_orient[0]) @ (x - j0) + j0 + m2.transl[0]
    assert np.allclose(after, a @ before + w, atol=1e-9)
    # Worn by another body (pelvis J1): the shift keeps the same relation for that body.
    j1 = j0 + np.array([0.01, -0.05, 0.02])
    m1 = motion_io.change_world(m, a, w, j1)
    assert np.allclose(m2.transl[0] + m2.pelvis_shift(j1), m1.transl[0], atol=1e-9)


def test_read_amass_axes_and_columns(tmp_path):
    path = write_amass(tmp_path / "m.npz", frames=5, up="Z", seed=1, columns=156)
    raw = np.load(path)
    j0 = np.array([0.0, 0.1, 0.02])
    m = motion_io.read_amass(path, up="Z", pelvis=j0)
    assert m.num_frames == 5 and abs(m.fps - 29.97) < 1e-9
    assert np.allclose(m.body_pose[:, :63], raw["poses"][:, 3:66]) and (m.body_pose[:, 63:] == 0).all()
    a = smpl_math.Z_UP_TO_Y_UP
    for k in range(5):
        assert np.allclose(rodrigues(m.global_orient[k]), a @ rodrigues(raw["poses"][k, :3]), atol=1e-9)
        assert np.allclose(m.transl[k], a @ (j0 + raw["trans"][k]) - j0)
    y = motion_io.read_amass(path, up="y", pelvis=j0)
    assert np.allclose(y.global_orient, raw["poses"][:, :3]) and np.allclose(y.transl, raw["trans"])
    with pytest.raises(ValueError):
        motion_io.read_amass(path, up="X")


def test_read_amass_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, poses=np.zeros((4, 72)), trans=np.zeros((3, 3)))
    with pytest.raises(results.ResultFileError) as info:
        motion_io.read_amass(bad)
    assert str(bad) in str(info.value) and "trans" in str(info.value)
    np.savez(bad, trans=np.zeros((3, 3)))
    with pytest.raises(results.ResultFileError, match="poses"):
        motion_io.read_amass(bad)


def _rewrite(path, drop=(), **changes):
    data = dict(np.load(path))
    for key in drop:
        data.pop(key)
    data.update(changes)
    np.savez(path, **data)


@pytest.mark.parametrize("drop,changes,key", [
    (("points",), {}, "points"),
    ((), {"global_orient": np.zeros((2, 3))}, "global_orient"),
    (("transl",), {}, "transl"),
    (("K",), {}, "K"),
    ((), {"world_from_camera": np.diag([2.0, 1, 1, 1])}, "world_from_camera"),
    ((), {"image_size": np.array([96])}, "image_size"),
    ((), {"points": np.full((3, 5, 3), np.nan, np.float32)}, "points"),
])
def test_read_posed_errors_name_file_and_key(fit_result, tmp_path, drop, changes, key):
    path = tmp_path / "posed.npz"
    shutil.copy(fit_result / "posed.npz", path)
    results.read_posed(path)  # the original is fine
    _rewrite(path, drop, **changes)
    with pytest.raises(results.ResultFileError) as info:
        results.read_posed(path)
    assert info.value.file == str(path) and info.value.key == key, str(info.value)
    assert str(path) in str(info.value) and key in str(info.value)


def test_read_posed_can_leave_the_points_unread(fit_result, tmp_path):
    """Blender never needs posed.npz's N x P x 3 points: only their shape is checked then."""
    posed = results.read_posed(fit_result / "posed.npz", with_points=False)
    full = np.load(fit_result / "posed.npz")["points"]
    assert isinstance(posed.points, results.ArrayInfo) and posed.points.shape == full.shape
    assert posed.num_frames == len(full) and posed.has_motion
    path = tmp_path / "posed.npz"
    shutil.copy(fit_result / "posed.npz", path)
    _rewrite(path, points=full[..., :2])
    with pytest.raises(results.ResultFileError, match="points"):
        results.read_posed(path, with_points=False)


def test_read_result_checks_files_against_each_other(fit_result, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(fit_result, folder)
    outfit = dict(np.load(folder / "outfit.npz"))
    _rewrite(folder / "outfit.npz", weights=outfit["weights"][:-1])
    with pytest.raises(results.ResultFileError) as info:
        results.read_result(folder)
    assert info.value.key == "weights" and "outfit.npz" in info.value.file and "rows" in str(info.value)
    _rewrite(folder / "outfit.npz", weights=outfit["weights"][:, :23])
    with pytest.raises(results.ResultFileError, match="joint columns"):
        results.read_result(folder)
    _rewrite(folder / "outfit.npz", weights=outfit["weights"])
    posed = dict(np.load(folder / "posed.npz"))
    _rewrite(folder / "posed.npz", points=posed["points"][:, :10])
    with pytest.raises(results.ResultFileError) as info:
        results.read_result(folder)
    assert info.value.key == "points" and info.value.file.endswith("posed.npz")
    (folder / "body.npz").unlink()
    with pytest.raises(results.ResultFileError, match="not found"):
        results.read_result(folder)


# -- import -------------------------------------------------------------------------------------

def test_import_builds_armature_clothing_body_and_camera(scene_api, fit_result):
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result)
    body_npz, outfit_npz, posed_npz = (np.load(fit_result / f) for f in ("body.npz", "outfit.npz", "posed.npz"))
    names = [str(n) for n in body_npz["joint_names"]]

    arm = out["armature"]
    assert arm.type == "ARMATURE" and np.allclose(np.array(arm.matrix_world), np.eye(4))
    assert list(arm["pointwear_joint_names"]) == names
    assert sorted(b.name for b in arm.data.bones) == sorted(names) and len(arm.data.bones) == 24
    for i, name in enumerate(names):
        bone = arm.data.bones[name]
        parent = body_npz["parents"][i]
        assert (bone.parent.name if bone.parent else None) == (names[parent] if parent >= 0 else None)
        assert np.allclose(bone.head_local, smpl_math.to_blender(body_npz["joints"][i]), atol=1e-6)
        direction = np.array(bone.tail_local) - np.array(bone.head_local)
        assert np.allclose(direction / np.linalg.norm(direction), [0, 0, 1], atol=1e-6)
        assert 0.05 <= np.linalg.norm(direction) <= 0.1
        assert np.allclose(np.array(bone.matrix_local)[:3, :3], smpl_math.C, atol=1e-6)  # roll 0
        assert not bone.use_connect
    assert all(pb.rotation_mode == "QUATERNION" for pb in arm.pose.bones)

    points = out["clothing_points"]
    mesh = points.data
    count = len(outfit_npz["points"])
    assert (len(mesh.vertices), len(mesh.edges), len(mesh.polygons)) == (count, 0, 0)
    assert np.allclose(rest_positions(points), smpl_math.to_blender(outfit_npz["points"]), atol=1e-6)
    assert [g.name for g in points.vertex_groups] == names
    assert [m.type for m in points.modifiers] == ["ARMATURE", "NODES"]
    assert points.modifiers[0].object == arm and points.parent == arm
    group = points.modifiers[1].node_group
    assert {n.bl_idname for n in group.nodes} >= {"GeometryNodeMeshToPoints", "GeometryNodeSetMaterial"}
    radius_id = next(i.identifier for i in group.interface.items_tree if getattr(i, "name", "") == "Radius")
    assert abs(points.modifiers[1][radius_id] - 0.004) < 1e-9
    attr = mesh.color_attributes["pointwear_color"]
    assert (attr.domain, attr.data_type) == ("POINT", "FLOAT_COLOR")
    mat = mesh.materials[0]
    attr_nodes = [n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeAttribute"]
    assert attr_nodes and attr_nodes[0].attribute_name == "pointwear_color"
    assert attr_nodes[0].outputs["Color"].links[0].to_socket.name == "Base Color"

    # Skin weights read back from the vertex groups equal outfit.npz's.
    weights = np.zeros((count, 24))
    index = {g.index: names.index(g.name) for g in points.vertex_groups}
    for v in mesh.vertices:
        for g in v.groups:
            weights[v.index, index[g.group]] = g.weight
    assert np.abs(weights - outfit_npz["weights"]).max() < 1e-6

    garment = out["clothing_mesh"]
    assert len(garment.data.vertices) == count and len(garment.data.polygons) == len(outfit_npz["faces"])
    assert [m.type for m in garment.modifiers] == ["ARMATURE"] and garment.parent == arm
    body = out["body"]
    assert len(body.data.vertices) == len(body_npz["vertices"]) and [m.type for m in body.modifiers] == ["ARMATURE"]
    assert len(body.vertex_groups) == 24

    scene = bpy.context.scene
    H, W = (int(v) for v in posed_npz["image_size"])
    assert (scene.render.resolution_x, scene.render.resolution_y) == (W, H)
    assert scene.camera == out["camera"] and out["camera"].type == "CAMERA"
    assert (scene.frame_start, scene.frame_end) == (0, len(posed_npz["points"]) - 1)
    assert scene.render.fps / scene.render.fps_base == pytest.approx(float(posed_npz["fps"]))

    folder = str(fit_result.resolve())
    kinds = {"armature": arm, "body": body, "clothing_points": points, "clothing_mesh": garment}
    for kind, obj in kinds.items():
        assert obj["pointwear_kind"] == kind and obj["pointwear_result"] == folder
        assert obj.users_collection[0] == out["collection"]
    assert out["collection"].name == fit_result.name
    assert list(arm["pointwear_betas"]) == pytest.approx(outfit_npz["betas"].tolist())
    assert list(arm["pointwear_code"]) == pytest.approx(outfit_npz["code"].tolist())
    assert arm["pointwear_drape"] == str(outfit_npz["drape"])
    # The Result panel's garment list: outfit.npz garment_names (older results: params' names).
    names = json.loads(str(outfit_npz["garment_names"])) if "garment_names" in outfit_npz.files else \
        [g.get("name", g["kind"]) for g in json.loads(str(outfit_npz["params"]))]
    assert arm["pointwear_garments"] == ", ".join(names) and names
    assert list(arm["pointwear_world_from_camera"]) == pytest.approx(posed_npz["world_from_camera"].ravel().tolist())
    assert arm["pointwear_body"] == str(fit_result.resolve() / "body.npz")


def test_clothing_follows_the_subject_frame_by_frame(scene_api, fit_result):
    """THE KEY CHECK: Blender frame k, mapped back by (C W)^-1, is posed.npz['points'][k]."""
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result)
    posed = np.load(fit_result / "posed.npz")
    back = np.linalg.inv(smpl_math.C4 @ posed["world_from_camera"])
    scene = bpy.context.scene
    for k in (2, 0, 1):
        scene.frame_set(k)
        for kind in ("clothing_points", "clothing_mesh"):
            got = evaluated_positions(bpy, out[kind]) @ back[:3, :3].T + back[:3, 3]
            err = np.abs(got - posed["points"][k]).max()
            assert err < MM, (kind, k, err)
        # The body moves with it: its pelvis-weighted vertices are not at rest any more.
        assert np.abs(evaluated_positions(bpy, out["body"]) - rest_positions(out["body"])).max() > 0.01


def test_quantised_weights_stay_within_a_millimetre(scene_api, fit_result):
    """The optional 1/4096 weight quantisation (fewer VertexGroup.add calls) keeps the key check."""
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    from addon.scene import skin

    out = importer.import_result(bpy.context, fit_result, with_camera=False)
    outfit = results.read_outfit(fit_result / "outfit.npz")
    names = list(out["armature"]["pointwear_joint_names"])
    exact = skin.set_vertex_weights(out["clothing_points"], outfit.weights, names)
    calls = skin.set_vertex_weights(out["clothing_points"], outfit.weights, names, quantum=1 / 4096)
    assert calls <= exact
    posed = np.load(fit_result / "posed.npz")
    back = np.linalg.inv(smpl_math.C4 @ posed["world_from_camera"])
    for k in range(len(posed["points"])):
        bpy.context.scene.frame_set(k)
        got = evaluated_positions(bpy, out["clothing_points"]) @ back[:3, :3].T + back[:3, 3]
        assert np.abs(got - posed["points"][k]).max() < MM


def test_camera_projects_like_the_subject_camera(scene_api, fit_result):
    """Rendering frame k lines up with subject frame k: Blender's camera projection of the posed
    clothing equals the OpenCV projection of posed.npz with K, to a small fraction of a pixel."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result)
    posed = np.load(fit_result / "posed.npz")
    H, W = (int(v) for v in posed["image_size"])
    scene = bpy.context.scene
    for k in range(len(posed["points"])):
        scene.frame_set(k)
        world = evaluated_positions(bpy, out["clothing_points"])[::97]
        want = camera_io.project(posed["K"][k], posed["points"][k][::97])
        got = np.array([tuple(world_to_camera_view(scene, out["camera"], Vector(p)))[:2] for p in world])
        got = np.stack([got[:, 0] * W - 0.5, (1 - got[:, 1]) * H - 0.5], 1)
        assert np.abs(got - want).max() < 0.01, np.abs(got - want).max()


@given(fx=st.floats(40, 3000), ratio=st.floats(0.6, 1.6), width=st.integers(16, 2000),
       height=st.integers(16, 2000), cx=st.floats(-0.2, 1.2), cy=st.floats(-0.2, 1.2),
       quat=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1),
       shift=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
       seed=st.integers(0, 2 ** 16))
@HYPO
def test_camera_conversion_matches_world_to_camera_view(scene_api, fx, ratio, width, height, cx, cy,
                                                        quat, shift, seed):
    """A world point projected with K through world_from_camera equals Blender's projection
    (``world_to_camera_view``) through the built camera, for any K, image size and placement."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    from addon.scene import camera as camera_scene

    bpy = scene_api["bpy"]
    K = np.array([[fx, 0, cx * width], [0, fx * ratio, cy * height], [0, 0, 1.0]])
    wfc = np.eye(4)
    wfc[:3, :3] = smpl_math.quaternion_to_matrix(quat)
    wfc[:3, 3] = shift
    posed = results.PosedData(path="mem", points=np.zeros((1, 1, 3), np.float32), frames=np.array([0]), K=K[None],
                              image_size=(height, width), world_from_camera=wfc, camera_space=True)
    scene = bpy.context.scene
    cam = camera_scene.build_camera(scene.collection, scene, posed, "Cam")
    try:
        rng = np.random.default_rng(seed)
        z = rng.uniform(0.5, 20, 16)
        uv = np.stack([rng.uniform(-0.5, 1.5, 16) * width, rng.uniform(-0.5, 1.5, 16) * height], 1)
        cam_pts = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], 1)
        assert np.allclose(camera_io.project(K, cam_pts), uv)
        world = camera_to_blender(cam_pts, wfc)
        got = np.array([tuple(world_to_camera_view(scene, cam, Vector(p))) for p in world])
        assert np.allclose(got[:, 2], z, rtol=1e-4)  # depth along the view axis
        got = np.stack([got[:, 0] * width - 0.5, (1 - got[:, 1]) * height - 0.5], 1)
        # Blender projects in float32: allow ~1e-5 of the image size (0.02 px at 2000 px) plus
        # float32 rounding of the world coordinates, magnified by focal length / depth.
        scale = np.abs(world).max() + np.abs(shift).max() + 1
        tol = (1e-3 + 1e-5 * max(width, height) * (1 + np.abs(uv / [width, height]).max(1))
               + 1e-6 * max(K[0, 0], K[1, 1]) * scale / z)
        assert (np.abs(got - uv).max(1) < tol).all(), (np.abs(got - uv).max(1), tol)
    finally:
        data = cam.data
        bpy.data.objects.remove(cam)
        bpy.data.cameras.remove(data)


def test_camera_keys_intrinsics_when_k_changes(scene_api):
    from addon.scene import camera as camera_scene

    bpy = scene_api["bpy"]
    K = np.array([[[100.0, 0, 50], [0, 100, 40], [0, 0, 1]], [[140.0, 0, 55], [0, 140, 38], [0, 0, 1]]])
    posed = results.PosedData(path="mem", points=np.zeros((2, 1, 3), np.float32), frames=np.array([0, 1]), K=K,
                              image_size=(80, 100), world_from_camera=np.eye(4), camera_space=True)
    scene = bpy.context.scene
    cam = camera_scene.build_camera(scene.collection, scene, posed, "Cam")
    for k in (0, 1):
        scene.frame_set(k)
        params = camera_io.camera_params(K[k], (80, 100))
        assert cam.data.lens == pytest.approx(params.lens, rel=1e-6)
        assert cam.data.shift_x == pytest.approx(params.shift_x, abs=1e-6)
        assert cam.data.shift_y == pytest.approx(params.shift_y, abs=1e-6)


def test_import_options_and_point_radius(scene_api, fit_result):
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result, point_radius=0.01, with_camera=False,
                                 with_motion=False, collection_name="Plain")
    assert out["camera"] is None and out["action"] is None and out["collection"].name == "Plain"
    assert out["armature"].animation_data is None
    assert bpy.context.scene.camera is None
    wfc = np.load(fit_result / "posed.npz")["world_from_camera"]
    assert list(out["armature"]["pointwear_world_from_camera"]) == pytest.approx(wfc.ravel().tolist())
    mod = out["clothing_points"].modifiers[1]
    radius_id = next(i.identifier for i in mod.node_group.interface.items_tree if getattr(i, "name", "") == "Radius")
    assert mod[radius_id] == pytest.approx(0.01)
    # A second import gets its own objects; the node group and material are shared.
    again = importer.import_result(bpy.context, fit_result, with_camera=False, with_motion=False,
                                   collection_name="Plain")
    assert again["armature"] != out["armature"]
    assert again["clothing_points"].modifiers[1].node_group == mod.node_group
    assert len(bpy.data.node_groups) == 1


def test_bad_files_change_nothing_in_the_scene(scene_api, fit_result, tmp_path):
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    folder = tmp_path / "bad"
    shutil.copytree(fit_result, folder)
    _rewrite(folder / "posed.npz", drop=("body_pose",))
    before = objects_state(bpy)
    with pytest.raises(results.ResultFileError) as info:
        importer.import_result(bpy.context, folder)
    assert str(folder / "posed.npz") in str(info.value) and "body_pose" in str(info.value)
    assert objects_state(bpy) == before
    shutil.copy(fit_result / "posed.npz", folder / "posed.npz")
    _rewrite(folder / "posed.npz", transl=np.zeros((7, 3)))
    with pytest.raises(results.ResultFileError) as info:
        importer.import_result(bpy.context, folder)
    assert info.value.key == "transl" and "(3, 3)" in str(info.value), str(info.value)
    assert objects_state(bpy) == before


# -- motion ---------------------------------------------------------------------------------------

def _pose_quaternion(pose_bone):
    return np.array(pose_bone.rotation_quaternion)


@pytest.mark.parametrize("up,fps", [("Z", 29.97), ("Y", 60.0)])
def test_load_motion_keys_the_file_in_bulk(scene_api, fit_result, tmp_path, up, fps):
    from mathutils import Matrix, Quaternion, Vector

    bpy, importer, motion = scene_api["bpy"], scene_api["importer"], scene_api["motion"]
    out = importer.import_result(bpy.context, fit_result, with_camera=False)
    arm = out["armature"]
    path = write_amass(tmp_path / "clip.npz", frames=25, up=up, fps=fps, seed=7)
    loaded = importer.load_motion(bpy.context, arm, path, up=up)
    action = loaded["action"]
    assert (loaded["frames"], loaded["frame_start"], loaded["frame_end"]) == (25, 0, 24)
    raw = np.load(path)
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (0, 24)
    assert scene.render.fps / scene.render.fps_base == pytest.approx(fps, rel=1e-9)
    assert scene.render.fps == math.ceil(fps)
    assert arm.animation_data.action == action

    # Layout: one F-curve per quaternion component per bone + the root location, T keys each, LINEAR.
    channels = motion.action_channels(arm)
    if bpy.app.version >= (4, 4, 0):
        assert channels is not None and channels != action and len(action.slots) == 1
        assert arm.animation_data.action_slot == action.slots[0]
    fcurves = list(channels.fcurves)
    assert len(fcurves) == 24 * 4 + 3
    for fc in fcurves:
        assert len(fc.keyframe_points) == 25
        assert {kp.interpolation for kp in fc.keyframe_points} == {"LINEAR"}
        assert fc.keyframe_points[0].co[0] == 0 and fc.keyframe_points[-1].co[0] == 24

    # Values: an independent reference with mathutils (axis-angle -> quaternion; the world turn).
    names = list(arm["pointwear_joint_names"])
    j0 = Vector(np.load(fit_result / "body.npz")["joints"][0].tolist())
    turn = Matrix.Rotation(-math.pi / 2, 3, "X") if up == "Z" else Matrix.Identity(3)
    previous = None
    for k in range(25):
        scene.frame_set(k)
        quats = []
        for j, name in enumerate(names):
            aa = Vector(raw["poses"][k, 3 * j:3 * j + 3].tolist())
            ref = Quaternion(aa.normalized(), aa.length) if aa.length > 0 else Quaternion()
            if j == 0:
                ref = (turn @ ref.to_matrix()).to_quaternion()
            got = _pose_quaternion(arm.pose.bones[name])
            assert abs(abs(np.dot(got, np.array(ref))) - 1) < 1e-5, (k, name)
            quats.append(got)
        loc = turn @ (j0 + Vector(raw["trans"][k].tolist())) - j0
        assert np.allclose(arm.pose.bones[names[0]].location, loc, atol=1e-5)
        if previous is not None:  # sign continuity: no key-to-key flips
            assert (np.sum(np.array(quats) * previous, 1) >= 0).all()
        previous = np.array(quats)


def test_redrape_in_place_then_new_motion_matches_the_backend(scene_api, fit_result, redrape_result, amass_z):
    """apply_redrape(betas 2.0): same objects and point order, rest = the new outfit.npz, joints
    moved; with the AMASS clip loaded, Blender poses the clothing where the backend's own drape
    job did (its posed.npz, Y-up world)."""
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result)
    arm = out["armature"]
    names_before = {k: o.name for k, o in out.items() if k in importer.CHILD_KINDS + ("armature",) and o is not None}
    names = list(arm["pointwear_joint_names"])
    old_joints = np.array([arm.data.bones[n].head_local for n in names])
    mods_before = [m.name for m in out["clothing_points"].modifiers]

    new = importer.apply_redrape(bpy.context, arm, redrape_result, with_motion=False)
    assert new["action"] is None
    outfit = np.load(redrape_result / "outfit.npz")
    body = np.load(redrape_result / "body.npz")
    assert {k: new[k].name for k in names_before} == names_before
    assert all(new[k] == out[k] for k in names_before)
    for kind in ("clothing_points", "clothing_mesh"):
        obj = new[kind]
        assert len(obj.data.vertices) == len(outfit["points"])
        assert np.allclose(rest_positions(obj), smpl_math.to_blender(outfit["points"]), atol=1e-6)
    assert [m.name for m in new["clothing_points"].modifiers] == mods_before
    assert np.allclose(rest_positions(new["body"]), smpl_math.to_blender(body["vertices"]), atol=1e-6)
    joints = np.array([arm.data.bones[n].head_local for n in names])
    assert np.allclose(joints, smpl_math.to_blender(body["joints"]), atol=1e-6)
    assert np.abs(joints - old_joints).max() > 0.01
    assert list(arm["pointwear_betas"]) == pytest.approx(outfit["betas"].tolist())
    assert arm["pointwear_betas"][0] == pytest.approx(2.0)

    # The subject's motion stays keyed; its root keys follow the new pelvis.
    posed = results.read_posed(fit_result / "posed.npz")
    want = motion_io.subject_motion(posed, body["joints"][0])
    scene = bpy.context.scene
    for k in range(posed.num_frames):
        scene.frame_set(k)
        assert np.allclose(arm.pose.bones["pelvis"].location, want.transl[k], atol=1e-5)

    importer.load_motion(bpy.context, arm, amass_z, up="Z")
    backend = np.load(redrape_result / "posed.npz")["points"]
    for k in (0, 17, len(backend) - 1):
        scene.frame_set(k)
        for kind in ("clothing_points", "clothing_mesh"):
            got = to_smpl_world(evaluated_positions(bpy, new[kind]))
            err = np.abs(got - backend[k]).max()
            assert err < MM, (kind, k, err)


def test_redrape_keys_the_drape_jobs_own_motion(scene_api, fit_result, redrape_result):
    """A drape job run with --motion leaves posed.npz with its poses: apply_redrape keys them, and
    Blender then poses the clothing exactly where the backend did, frame for frame."""
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result, with_camera=False)
    new = importer.apply_redrape(bpy.context, out["armature"], redrape_result)
    assert new["action"] is not None and out["armature"].animation_data.action == new["action"]
    backend = np.load(redrape_result / "posed.npz")
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (0, len(backend["points"]) - 1)
    assert scene.render.fps / scene.render.fps_base == pytest.approx(float(backend["fps"]), rel=1e-6)
    for k in (0, 9, len(backend["points"]) - 1):
        scene.frame_set(k)
        got = to_smpl_world(evaluated_positions(bpy, new["clothing_points"]))
        assert np.abs(got - backend["points"][k]).max() < MM


def test_redrape_refuses_a_mismatched_outfit(scene_api, fit_result, redrape_result, tmp_path):
    bpy, importer = scene_api["bpy"], scene_api["importer"]
    out = importer.import_result(bpy.context, fit_result, with_camera=False, with_motion=False)
    folder = tmp_path / "short"
    shutil.copytree(redrape_result, folder)
    outfit = dict(np.load(folder / "outfit.npz"))
    keep = len(outfit["points"]) - 5
    outfit.update(points=outfit["points"][:keep], weights=outfit["weights"][:keep], garment=outfit["garment"][:keep])
    outfit["faces"] = outfit["faces"][(outfit["faces"] < keep).all(1)]
    np.savez(folder / "outfit.npz", **outfit)
    rest = rest_positions(out["clothing_points"])
    with pytest.raises(results.ResultFileError) as info:
        importer.apply_redrape(bpy.context, out["armature"], folder)
    assert info.value.key == "points" and str(folder / "outfit.npz") in str(info.value)
    assert np.array_equal(rest_positions(out["clothing_points"]), rest)


def test_io_package_imports_without_bpy():
    """addon/io is pure: numpy and the standard library (the scene builders' maths is testable and
    reusable without Blender, and never drags bpy, torch or the backend in)."""
    run_python(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import addon.io.smpl_math, addon.io.results, addon.io.motion, addon.io.camera
        loaded = sorted(m for m in ("bpy", "mathutils", "torch", "pointwear") if m in sys.modules)
        assert not loaded, loaded
    """)
