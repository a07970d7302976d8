"""Artist-ready garments in real bpy: the cloth-simulation handoff, retargeting another
armature's action, outfit sliders and the live fitting preview (issue 12, parts 3-6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from blender_support import evaluated_positions as _evaluated, run_backend
from test_addon_backend import draw_all_panels
from test_scene import rest_positions as _rest


@pytest.fixture
def scene_api(bpy_clean):
    from addon.scene import armature, cloth, importer

    return {"bpy": bpy_clean, "importer": importer, "armature": armature, "cloth": cloth}


@pytest.fixture(scope="session")
def walk_y(tmp_path_factory):
    path = tmp_path_factory.mktemp("walk") / "walk.npz"
    run_backend("motion", "export", "walk", "--frames", 30, "--out", path)
    return path


def _outside_fraction(bpy, garment, body):
    """Share of the garment's evaluated vertices on the outer side of the evaluated body surface."""
    from mathutils.bvhtree import BVHTree

    dg = bpy.context.evaluated_depsgraph_get()
    tree = BVHTree.FromObject(body.evaluated_get(dg), dg)
    co = _evaluated(bpy, garment)
    outside = 0
    for p in co:
        loc, normal, _, _ = tree.find_nearest(p)
        outside += (p - np.array(loc)) @ np.array(normal) > 0
    return outside / len(co), co


def test_cloth_handoff_simulates_24_frames_outside_the_body(scene_api, fit_result, walk_y):
    bpy, importer, cloth = scene_api["bpy"], scene_api["importer"], scene_api["cloth"]
    ctx = bpy.context
    objs = importer.import_result(ctx, str(fit_result), with_camera=False, with_motion=False)
    arm, garment, body = objs["armature"], objs["clothing_mesh"], objs["body"]
    importer.load_motion(ctx, arm, str(walk_y), up="Y")
    names = scene_api["armature"].joint_names(arm)
    info = cloth.make_cloth(ctx, arm, garment, body, names, scene_api["armature"].rest_joints(arm), "COTTON")
    assert (info["frame_start"], info["frame_end"]) == (0, 29)
    assert info["shoulders"] > 20 and info["waistband"] > 20
    assert [m.type for m in garment.modifiers] == ["ARMATURE", "CLOTH"]
    assert [m.type for m in body.modifiers] == ["ARMATURE", "COLLISION"]
    mod = garment.modifiers[cloth.CLOTH_MODIFIER]
    assert mod.settings.vertex_group_mass == cloth.PIN_GROUP
    assert mod.settings.mass == pytest.approx(cloth.PRESETS["COTTON"]["mass"])
    pinned = np.zeros(len(garment.data.vertices), bool)
    group = garment.vertex_groups[cloth.PIN_GROUP].index
    for v in garment.data.vertices:
        pinned[v.index] = any(g.group == group and g.weight > 0 for g in v.groups)
    assert pinned.sum() == info["pinned"]
    for frame in range(24):
        ctx.scene.frame_set(frame)
        share, co = _outside_fraction(bpy, garment, body)
        assert share >= 0.95, (frame, share)
    # the simulation really ran: free vertices hang away from the skinned pose, pins stay on it
    mod.show_viewport = False
    skinned = _evaluated(bpy, garment)
    mod.show_viewport = True
    moved = np.linalg.norm(co - skinned, axis=1)
    assert np.median(moved[pinned]) < 0.002
    assert np.mean(moved[~pinned]) > 0.005
    # every separate piece (the legs and sleeves are tubes of their own) hangs from a pin: none
    # slides down the body, so the garment's lowest points stay near the skinned pose's
    faces = np.array([tuple(p.vertices) for p in garment.data.polygons])
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    piece = cloth._components(len(pinned), edges)
    assert all(pinned[piece == p].any() for p in np.unique(piece))
    assert info["seams"] > 0
    assert np.sort(co[:, 2])[:50].mean() > np.sort(skinned[:, 2])[:50].mean() - 0.05


def test_cloth_handoff_refuses_a_points_only_result_and_unknown_presets(scene_api, fit_result):
    bpy, importer, cloth = scene_api["bpy"], scene_api["importer"], scene_api["cloth"]
    objs = importer.import_result(bpy.context, str(fit_result), with_camera=False, with_motion=False)
    arm = objs["armature"]
    names = scene_api["armature"].joint_names(arm)
    rest = scene_api["armature"].rest_joints(arm)
    with pytest.raises(cloth.ClothError, match="no garment mesh"):
        cloth.make_cloth(bpy.context, arm, None, objs["body"], names, rest)
    with pytest.raises(cloth.ClothError, match="unknown cloth preset 'WOOL'"):
        cloth.make_cloth(bpy.context, arm, objs["clothing_mesh"], objs["body"], names, rest, "WOOL")
    assert not [m for m in objs["clothing_mesh"].modifiers if m.type == "CLOTH"]


# -- outfit sliders (no backend: the table and the exact edit come from the CLI) -----------------

def _smpl(points_blender):
    from addon.io import smpl_math

    return smpl_math.from_blender(points_blender)


@pytest.fixture(scope="session")
def slider_files(fit_result, tmp_path_factory):
    """The result's slider table and two exact edits, by the backend CLI."""
    root = tmp_path_factory.mktemp("sliders")
    run_backend("edit", fit_result, "--table", root / "sliders.npz")
    run_backend("edit", fit_result, "--set", "top.sleeve=0.125", "--out", root / "sleeve")
    run_backend("edit", fit_result, "--set", "top.sleeve=0.125", "--set", "trousers.hem=0.9", "--out", root / "both")
    return root


def _addon_module(name):
    import importlib

    from blender_support import ADDON_MODULE

    return importlib.import_module(ADDON_MODULE + "." + name)


def test_sliders_redrape_live_match_the_exact_edit_and_undo(installed_addon, fit_result, slider_files):
    bpy = installed_addon["bpy"]
    sliders = _addon_module("scene.sliders")
    results = _addon_module("io.results")
    bpy.context.scene.pointwear.result_folder = str(fit_result)
    assert bpy.ops.pointwear.import_result() == {"FINISHED"}
    arm = bpy.context.scene.pointwear.armature
    kids = _addon_module("scene.importer").pointwear_children(arm)
    mesh, points = kids["clothing_mesh"], kids["clothing_points"]
    before = _rest(mesh)
    table = sliders.load(arm, str(slider_files / "sliders.npz"))
    assert [i.name for i in arm.pointwear_sliders] == ["top.sleeve", "top.hem", "top.neckline", "top.ease",
                                                      "trousers.hem", "trousers.waist", "trousers.ease"]
    assert table.count == 7 and np.allclose(_rest(mesh), before)            # loading moves nothing
    item = arm.pointwear_sliders["top.sleeve"]
    assert item.param == "sleeve" and item.low == 0.0 and item.high == 1.0

    bpy.ops.ed.undo_push(message="before slider")
    item.factor = 0.125                                     # a table sample (1/8 of the range): exact points
    bpy.ops.ed.undo_push(message="slider")
    exact = results.read_outfit(slider_files / "sleeve" / "outfit.npz").points
    live = _smpl(_rest(mesh))
    assert np.abs(live - exact).max() < 0.002               # float16 table differences
    assert np.allclose(_rest(points), _rest(mesh))          # points and mesh move together
    assert np.abs(live - _smpl(before)).max() > 0.1         # the sleeves really got shorter
    assert sliders.moved(arm) == {"top.sleeve": pytest.approx(0.125)}

    arm.pointwear_sliders["trousers.hem"].factor = (0.9 - 0.15) / 0.85    # between samples, with another
    both = results.read_outfit(slider_files / "both" / "outfit.npz").points
    err = np.linalg.norm(_smpl(_rest(mesh)) - both, axis=1)
    assert np.median(err) < 0.001 and err.max() < 0.02
    bpy.ops.ed.undo_push(message="second slider")
    names = arm.name, mesh.name
    bpy.ops.ed.undo()                                       # back to one slider moved ...
    arm, mesh = (bpy.data.objects[n] for n in names)
    assert sliders.moved(arm) == {"top.sleeve": pytest.approx(0.125)}
    assert np.abs(_smpl(_rest(mesh)) - exact).max() < 0.002
    bpy.ops.ed.undo()                                       # ... and to the fitted outfit
    arm, mesh = (bpy.data.objects[n] for n in names)
    assert arm.pointwear_sliders["top.sleeve"].factor == pytest.approx(arm.pointwear_sliders["top.sleeve"].rest_factor)
    assert np.allclose(_rest(mesh), before, atol=1e-6)


def test_slider_table_errors_name_the_file(installed_addon, fit_result, slider_files, tmp_path):
    bpy = installed_addon["bpy"]
    sliders = _addon_module("scene.sliders")
    results = _addon_module("io.results")
    bpy.context.scene.pointwear.result_folder = str(fit_result)
    bpy.ops.pointwear.import_result()
    arm = bpy.context.scene.pointwear.armature
    data = dict(np.load(slider_files / "sliders.npz"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**data, "base": data["base"][:-5]})
    with pytest.raises(results.ResultFileError) as info:
        sliders.load(arm, str(bad))
    assert str(bad) in str(info.value) and "deltas" in str(info.value)
    np.savez(bad, **{**data, "samples": data["samples"][:, ::-1]})
    with pytest.raises(results.ResultFileError, match="samples"):
        sliders.load(arm, str(bad))
    assert len(arm.pointwear_sliders) == 0 and sliders.TABLE_PROP not in arm


# -- with the real backend: live fit points, slider table + Apply, Retarget from Armature ---------

CMU = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.is_file():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")


@pytest.fixture
def live_addon(installed_addon, tmp_path):
    """The installed add-on with its preferences pointing at the backend Python (CPU, a work
    folder of this test); the backend is stopped afterwards whatever happened."""
    from blender_support import ADDON_MODULE, backend_python

    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.backend_python = str(backend_python())
    prefs.work_folder = str(tmp_path / "work")
    prefs.device = "CPU"
    runtime = _addon_module("operators.runtime")
    yield bpy, runtime
    if runtime._session is not None:
        runtime._session.stop(timeout=5.0)


def _heads(bpy, arm, names):
    world = np.array(arm.matrix_world)
    return np.array([(world @ np.append(np.array(arm.pose.bones[n].head), 1.0))[:3] for n in names])


def test_live_points_sliders_apply_and_retarget_with_the_backend(live_addon, fit_result, tmp_path):
    bpy, runtime = live_addon
    ops, props = bpy.ops.pointwear, bpy.context.scene.pointwear
    live = _addon_module("scene.live")
    protocol = _addon_module("link.protocol")
    assert ops.start_backend() == {"FINISHED"}

    # 1. Live fitting preview: the fit's points appear as a temporary object, gone at the end.
    props.subject_folder = str(fit_result.parent / "subject")
    props.fit_drape, props.fit_template = "PARAMETRIC", "TSHIRT_SHORTS"
    props.fit_codes, props.fit_coarse_steps, props.fit_fine_steps = 1, 12, 4
    assert ops.fit_outfit(wait=False) == {"FINISHED"}
    job = runtime.session().current_job
    seen = None
    deadline = time.monotonic() + 300
    while not job.handled and time.monotonic() < deadline:    # the pump finishes (imports) it
        runtime.pump()
        obj = live.live_object()
        if obj is not None and seen is None:
            seen = (obj.name, len(obj.data.vertices), tuple(obj.location), _rest(obj))
        time.sleep(0.05)
    assert seen is not None, "no live points arrived during the fit"
    name, count, location, rest = seen
    assert name == live.OBJECT_NAME and 100 < count <= protocol.PREVIEW_POINTS_MAX
    assert location == pytest.approx(live.OFFSET)
    assert 1.0 < np.ptp(rest[:, 2]) < 2.0          # a garment's height in the body's rest pose
    assert job.state == protocol.STATE_DONE and props.job_state == protocol.STATE_DONE
    assert live.live_object() is None and name not in bpy.data.meshes
    arm = props.armature
    assert arm is not None and arm.get("pointwear_result")

    # 2. Outfit sliders from the backend's table; Apply drapes them exactly into a new result.
    assert ops.load_sliders() == {"FINISHED"}
    assert len(arm.pointwear_sliders) == 7
    layout = draw_all_panels(bpy)                       # the Result panel shows them, grouped
    assert {"top", "trousers"} <= set(layout.texts()) and any(t.startswith("sleeve 0.") for t in layout.texts())
    assert {"pointwear.apply_sliders", "pointwear.reset_sliders", "pointwear.retarget_armature"} <= set(
        layout.operators())
    kids = _addon_module("scene.importer").pointwear_children(arm)
    arm.pointwear_sliders["top.sleeve"].factor = 0.25
    live_rest = _smpl(_rest(kids["clothing_mesh"]))
    old = arm["pointwear_result"]
    assert ops.apply_sliders() == {"FINISHED"}
    new = Path(arm["pointwear_result"])
    assert str(new) != old and props.result_folder == str(new)
    outfit = _addon_module("io.results").read_outfit(new / "outfit.npz")
    assert json.loads((new / "result.json").read_text())["set"] == {"top.sleeve": 0.25}
    assert np.abs(_smpl(_rest(kids["clothing_mesh"])) - outfit.points).max() < 1e-5
    assert np.abs(live_rest - outfit.points).max() < 0.002     # what the slider showed is what Apply made
    assert len(arm.pointwear_sliders) == 0

    # 3. Retarget from Armature: the CMU take through Blender's own BVH importer.
    target = arm.name
    assert bpy.ops.import_anim.bvh(filepath=str(CMU), update_scene_fps=True) == {"FINISHED"}
    source = bpy.context.active_object
    props.retarget_source = source
    assert ops.retarget_armature(frame_start=1, frame_end=240) == {"FINISHED"}
    arm = bpy.data.objects[target]
    action = arm.animation_data.action
    report = json.loads(action["pointwear_retarget_report"])
    assert report["up"] == "z" and report["units"].startswith("CMU units")
    assert report["root_and_legs_error_cm"] < 3.0
    assert report["foot_skating_cm_s"] < report["source_foot_skating_cm_s"] + 5.0
    assert tuple(action.frame_range) == (1.0, 240.0)          # the source's frames, at its 120 fps
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (1, 240)
    legs_smpl = ["left_knee", "right_knee", "left_ankle", "right_ankle"]
    legs_cmu = ["LeftLeg", "RightLeg", "LeftFoot", "RightFoot"]
    job_folder = runtime.session().jobs[props.job_id].folder
    scale = json.loads((Path(job_folder) / "motion.json").read_text())["metres_per_unit"]
    errors = []
    for k in (1, 80, 160, 240):
        bpy.context.scene.frame_set(k)
        smpl, cmu = _heads(bpy, arm, legs_smpl), _heads(bpy, source, legs_cmu) * scale
        errors.append(np.linalg.norm(smpl - cmu, axis=1))
    assert np.mean(errors) < 0.05, np.round(errors, 3)

    # An armature without an action: a clear message, nothing submitted.
    still = bpy.data.objects.new("Still", bpy.data.armatures.new("Still"))
    bpy.context.scene.collection.objects.link(still)
    props.retarget_source = still
    jobs_before = len(runtime.session().jobs)
    with pytest.raises(RuntimeError, match="has no action to retarget"):
        ops.retarget_armature()
    assert len(runtime.session().jobs) == jobs_before


# -- Export... ------------------------------------------------------------------------------------

def _glb_json(path):
    """The JSON chunk of a .glb (numpy-free: the bpy 5 lane has no backend to read it with)."""
    import struct
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    chunk_length, chunk_type = struct.unpack("<II", data[12:20])
    assert magic == b"glTF" and version == 2 and length == len(data) and chunk_type == 0x4E4F534A
    return json.loads(data[20:20 + chunk_length])


def test_export_button_runs_the_export_job_with_the_current_motion(live_addon, fit_result, walk_y, tmp_path):
    """Result panel > Export...: the backend's export job through the add-on's job client, the
    armature's current motion file as the animation, the files put at the chosen path; its warning
    (no appearance: untextured) and a failing job shown as the add-on shows every job's."""
    bpy, runtime = live_addon
    ops, props = bpy.ops.pointwear, bpy.context.scene.pointwear
    assets = _addon_module("operators.assets")
    protocol = _addon_module("link.protocol")
    props.result_folder = str(fit_result)
    props.import_motion = False
    assert ops.import_result() == {"FINISHED"}
    arm = props.armature
    assert ops.load_motion(filepath=str(walk_y), up="Y") == {"FINISHED"}
    assert assets.export_source(bpy.context) == str(fit_result)
    assert assets.current_motion(arm) == (str(walk_y), "Y")
    assert "pointwear.export_result" in draw_all_panels(bpy).operators()
    assert ops.export_result.poll() is False                    # no backend yet
    assert ops.start_backend() == {"FINISHED"}

    # glTF with the armature's current motion (30 frames), untextured with the backend's warning
    assert ops.export_result(filepath=str(tmp_path / "walk"), format="GLB") == {"FINISHED"}
    job = runtime.session().jobs[props.job_id]
    assert job.kind == "export" and job.params["motion"] == str(walk_y) and job.params["up"] == "y"
    assert props.job_state == protocol.STATE_DONE and props.job_message.startswith("Warning: ") and "untextured" in props.job_message
    doc = _glb_json(tmp_path / "walk.glb")
    assert doc["skins"] and "images" not in doc
    sampler = doc["animations"][0]["samplers"][0]
    assert doc["accessors"][sampler["input"]]["count"] == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no temporary files left

    # OBJ: the three names follow the chosen one, and the OBJ names its own MTL
    assert ops.export_result(filepath=str(tmp_path / "shirt.obj"), format="OBJ") == {"FINISHED"}
    assert (tmp_path / "shirt.mtl").is_file() and not (tmp_path / "shirt.png").exists()
    head = (tmp_path / "shirt.obj").read_text().splitlines()[:3]
    assert "mtllib shirt.mtl" in head
    assert sum(1 for line in (tmp_path / "shirt.obj").open() if line.startswith("v ")) > 1000

    # a bad motion file: the job fails naming it, as every job error is shown; nothing written
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="bad.npz"):
        ops.export_result(filepath=str(tmp_path / "bad.glb"), format="GLB", motion=str(bad))
    assert props.job_state == protocol.FAILED and "bad.npz" in props.job_message
    assert not (tmp_path / "bad.glb").exists()
    # a folder that does not exist: refused before anything is submitted
    jobs_before = len(runtime.session().jobs)
    with pytest.raises(RuntimeError, match="does not exist"):
        ops.export_result(filepath=str(tmp_path / "nowhere" / "x.glb"))
    assert len(runtime.session().jobs) == jobs_before
