"""Artist-ready garments in real bpy: the cloth-simulation handoff, retargeting another
armature's action, outfit sliders and the live fitting preview (issue 12, parts 3-6)."""

from __future__ import annotations

import numpy as np
import pytest

from blender_support import run_backend


@pytest.fixture
def scene_api(bpy_clean):
    from addon.scene import armature, cloth, importer

    return {"bpy": bpy_clean, "importer": importer, "armature": armature, "cloth": cloth}


@pytest.fixture(scope="session")
def walk_y(tmp_path_factory):
    path = tmp_path_factory.mktemp("walk") / "walk.npz"
    run_backend("motion", "export", "walk", "--frames", 30, "--out", path)
    return path


def _evaluated(bpy, obj):
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    return co.reshape(-1, 3).astype(np.float64)


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

def _rest(obj):
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3).astype(np.float64)


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
