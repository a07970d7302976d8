"""``pointwear.reconstruct_image``: the real add-on (built zip) in the real bpy submits the backend's
``reconstruct`` job on the real photo; the result is imported with the fit importer: armature,
body, and the garment mesh skinned to the armature, following the photo's pose."""

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
    assert {"filepath", "mask", "focal", "steps", "texture_size"} <= set(rna.properties.keys())
    assert ops.start_backend() == {"FINISHED"}

    with pytest.raises(RuntimeError, match="Not found: .*nope.png"):
        ops.reconstruct_image(filepath=str(tmp_path / "nope.png"))
    with pytest.raises(RuntimeError, match="Choose a photo"):
        ops.reconstruct_image()

    # Submitted with the backend's parameter names, then cancelled: nothing imported.
    assert ops.reconstruct_image(wait=False, filepath=str(PHOTO), focal=400.0, steps=3) == {"FINISHED"}
    job = runtime.session().current_job
    assert job.kind == P.KIND_RECONSTRUCT
    assert job.params == {"image": str(PHOTO), "focal": 400.0, "steps": 3, "texture_size": 512}
    assert ops.cancel_job() == {"FINISHED"}
    assert ops.wait_job(timeout=600) == {"CANCELLED"}
    assert not pointwear_objects(bpy, "armature")

    # To the end (blocking in background mode): imported as a skinned garment mesh.
    assert ops.reconstruct_image(filepath=str(PHOTO), steps=4, texture_size=128) == {"FINISHED"}
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
