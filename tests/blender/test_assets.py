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
