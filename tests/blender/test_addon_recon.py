"""``pointwear.reconstruct_image``: the real add-on (built zip) in the real bpy submits the backend's
``reconstruct`` job on the real photo; the result is imported with the fit importer: armature,
body, and the garment mesh skinned to the armature, following the photo's pose. And the
``garment.glb`` that ``pointwear reconstruct`` writes goes through Blender's own glTF importer as a
textured mesh skinned to the SMPL armature that follows a keyed motion (in a child bpy, as
test_garment_gltf's checks: both lanes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_addon_backend import addon, draw_all_panels, poll_message, pointwear_objects  # noqa: F401

PHOTO = Path("/work/shared/data/real/ryota.png")


def test_reconstruct_from_image(addon, tmp_path):  # noqa: F811
    bpy, props, ops, runtime = addon.bpy, addon.props, addon.bpy.ops.pointwear, addon.runtime
    P = runtime.protocol
    assert poll_message(ops.reconstruct_image).endswith("Start the backend first")
    assert "pointwear.reconstruct_image" in draw_all_panels(bpy).operators()
    rna = ops.reconstruct_image.get_rna_type()
    assert rna.name == "Reconstruct from Image"
    assert {"filepath", "mask", "focal", "steps", "texture_size", "fast", "refine"} <= set(rna.properties.keys())
    assert ops.start_backend() == {"FINISHED"}

    with pytest.raises(RuntimeError, match="Not found: .*nope.png"):
        ops.reconstruct_image(filepath=str(tmp_path / "nope.png"))
    with pytest.raises(RuntimeError, match="Choose a photo"):
        ops.reconstruct_image()

    # Submitted with the backend's parameter names, then cancelled: nothing imported.
    assert ops.reconstruct_image(wait=False, filepath=str(PHOTO), focal=400.0, steps=3, fast=True,
                                 refine=True) == {"FINISHED"}
    job = runtime.session().current_job
    assert job.kind == P.KIND_RECONSTRUCT
    assert job.params == {"image": str(PHOTO), "focal": 400.0, "steps": 3, "texture_size": 512, "fast": True,
                          "refine": True}
    assert ops.cancel_job() == {"FINISHED"}
    assert ops.wait_job(timeout=600) == {"CANCELLED"}
    assert not pointwear_objects(bpy, "armature")

    # To the end (blocking in background mode): imported as a skinned garment mesh.
    assert ops.reconstruct_image(filepath=str(PHOTO), steps=20, texture_size=128) == {"FINISHED"}
    job = runtime.session().jobs[props.job_id]
    assert job.kind == P.KIND_RECONSTRUCT and props.job_state == P.STATE_DONE
    folder = Path(job.folder)
    assert Path(props.result_folder) == folder and (folder / "texture.png").is_file()
    arm = pointwear_objects(bpy, "armature")[0]
    garment = pointwear_objects(bpy, "garment_mesh")[0]          # the textured mesh block
    outfit = np.load(folder / "outfit.npz")
    assert len(garment.data.vertices) == len(outfit["mesh_vertices"])
    assert len(garment.data.polygons) == len(outfit["mesh_faces"])
    assert garment.data.uv_layers and any(n.type == "TEX_IMAGE" for n in garment.active_material.node_tree.nodes)
    assert any(m.type == "ARMATURE" and m.object == arm for m in garment.modifiers)
    assert len(garment.vertex_groups) >= 20                      # SMPL skin weights
    result = json.loads((folder / "result.json").read_text())
    assert result["drape"] == "recon:single-image" and result["metrics"]["input_iou"] > 0.7


# -- the GLB `reconstruct` writes, through Blender's own glTF importer ------------------------------

@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory):
    """One short reconstruction of the real photo by the backend CLI, shared by this module's
    GLB checks (the add-on test above runs its own through the job server)."""
    from blender_support import run_backend
    out = tmp_path_factory.mktemp("recon") / "R"
    run_backend("reconstruct", PHOTO, "--out", out, "--steps", 3, "--texture-size", 128, timeout=900)
    return out


def test_reconstructed_glb_imports_textured_skinned_and_follows_a_motion(reconstructed, tmp_path):
    from test_garment_gltf import _in_child
    _in_child("import test_addon_recon as r; r.check_recon_glb(bpy, {!r})".format(str(reconstructed)), tmp_path)


def check_recon_glb(bpy, folder):
    """garment.glb imports as one textured mesh skinned to a 24-bone SMPL armature; keying a bone
    at two frames moves the vertices it carries and leaves the others."""
    from test_garment_gltf import _base_color_image, _evaluated, _gltf_garment, _rest, _weights
    folder = Path(folder)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh_obj, arm = _gltf_garment(bpy, folder / "garment.glb")
    outfit = np.load(folder / "outfit.npz")
    assert len(mesh_obj.data.polygons) == len(outfit["mesh_faces"])
    assert tuple(_base_color_image(mesh_obj.data.materials[0]).size) == (128, 128)
    assert mesh_obj.data.uv_layers
    assert any(m.type == "ARMATURE" and m.object == arm for m in mesh_obj.modifiers)
    bones = {b.name for b in arm.data.bones}
    assert len(bones) == 24 and {"pelvis", "left_shoulder", "left_elbow", "spine1"} <= bones, sorted(bones)
    names, w = _weights(mesh_obj)
    assert np.allclose(w.sum(1), 1, atol=1e-3)
    # A motion: the spine bends forward between frame 1 and frame 10.
    bone = "spine1"
    moving = w[:, [i for i, n in enumerate(names) if n in _below(arm, bone)]].sum(1)
    assert (moving > 0.99).sum() > 100 and (moving < 1e-6).sum() > 100
    pb = arm.pose.bones[bone]
    pb.rotation_mode = "XYZ"
    scene = bpy.context.scene
    for frame, angle in ((1, 0.0), (10, 0.6)):
        pb.rotation_euler = (angle, 0.0, 0.0)
        pb.keyframe_insert("rotation_euler", frame=frame)
    scene.frame_set(1)
    at1 = _evaluated(bpy, mesh_obj)
    assert np.abs(at1 - _rest(mesh_obj)).max() < 1e-4          # frame 1: the rest pose
    scene.frame_set(10)
    moved = np.linalg.norm(_evaluated(bpy, mesh_obj) - at1, axis=1)
    assert np.median(moved[moving > 0.99]) > 0.05, np.median(moved[moving > 0.99])
    assert moved[moving < 1e-6].max() < 1e-4


def _below(arm, name):
    """The bone `name` and every bone under it."""
    out, todo = set(), [arm.data.bones[name]]
    while todo:
        b = todo.pop()
        out.add(b.name)
        todo.extend(b.children)
    return out
