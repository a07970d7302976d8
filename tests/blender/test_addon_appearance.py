"""Appearance in the add-on: ``pointwear.fit_appearance`` and ``pointwear.neural_render``, the real
add-on (built zip) in the real bpy talking to the real backend child process, plus re-draping
keeping the fitted colours. Kept tiny (20 epochs of 2 frames at 64 px, 3 frames at the subject's 96 px)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_addon_backend import addon, draw_all_panels, poll_message, pointwear_objects  # noqa: F401

COLOR = "pointwear_color"


def point_colors(obj) -> np.ndarray:
    attr = obj.data.color_attributes[COLOR]
    rgba = np.empty(len(obj.data.vertices) * 4, np.float32)
    attr.data.foreach_get("color", rgba)
    return rgba.reshape(-1, 4)


def png_channel(bpy, path, channel) -> np.ndarray:
    """One channel of a PNG as read by Blender (rows bottom-up), 0..1."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = image.size
        px = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(px)
        return px.reshape(h, w, 4)[..., channel]
    finally:
        bpy.data.images.remove(image)


def srgb_to_linear(c):
    c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def test_fit_appearance_neural_render_redrape(addon, fit_result):  # noqa: F811
    bpy, props, ops, runtime = addon.bpy, addon.props, addon.bpy.ops.pointwear, addon.runtime
    P = addon.protocol
    scene = bpy.context.scene

    # Buttons say why they are disabled: no backend, no subject, no outfit, no appearance.
    assert poll_message(ops.fit_appearance).endswith("Start the backend first")
    assert poll_message(ops.neural_render).endswith("Start the backend first")
    assert ops.start_backend() == {"FINISHED"}
    assert poll_message(ops.fit_appearance).endswith("Set a subject folder")
    props.subject_folder = str(fit_result.parent / "subject")
    assert poll_message(ops.fit_appearance).endswith("Fit an outfit first")
    assert poll_message(ops.neural_render).endswith("Fit an outfit first")
    props.result_folder = str(fit_result)
    assert ops.import_result() == {"FINISHED"}
    armature = pointwear_objects(bpy, "armature")[0]
    assert "pointwear_appearance" not in armature  # a plain outfit fit
    assert poll_message(ops.neural_render).endswith("Fit appearance first")
    points = pointwear_objects(bpy, "clothing_points")[0]
    garment = pointwear_objects(bpy, "clothing_mesh")
    before_fit = point_colors(points)

    # Fit (blocking): the armature from that outfit gets the baked colours in place.
    # Epochs enough for the net's mask to cover the clothing (else every baked colour is 0.5).
    props.app_epochs, props.app_size = 20, 64
    names = sorted(o.name for o in scene.objects)
    assert ops.fit_appearance() == {"FINISHED"}
    job = runtime.session().jobs[props.job_id]
    assert job.kind == P.KIND_FIT_APPEARANCE and props.job_state == P.STATE_DONE
    assert job.params == {"subject": str(fit_result.parent / "subject"), "outfit": str(fit_result),
                          "epochs": 20, "size": 64, "seed": 0}
    app = Path(armature["pointwear_appearance"])
    assert (app / "appearance.pt").is_file() and app == Path(job.folder)
    assert sorted(o.name for o in scene.objects) == names  # nothing new imported
    colors = np.load(app / "outfit.npz")["colors"]
    rgba = point_colors(points)
    assert rgba[:, :3].std(axis=0).max() > 1e-3  # not one flat colour
    assert np.abs(rgba - before_fit).max() > 1e-3
    np.testing.assert_allclose(rgba[:, :3], srgb_to_linear(colors), atol=1e-5)
    for obj in garment:
        np.testing.assert_allclose(point_colors(obj), rgba, atol=1e-6)

    # Panels draw, with the appearance buttons.
    layout = draw_all_panels(bpy)
    assert {"pointwear.fit_appearance", "pointwear.neural_render"} <= set(layout.operators())

    # Neural render over 3 frames at the subject camera's 96 px, composited.
    camera, scene.camera = scene.camera, None
    assert poll_message(ops.neural_render).endswith("Set a scene camera")
    scene.camera = camera
    assert camera is not None
    scene.frame_start, scene.frame_end = 0, 2
    scene.frame_set(1)
    props.neural_composite = True
    assert ops.neural_render() == {"FINISHED"}
    job = runtime.session().jobs[props.job_id]
    assert job.kind == "render" and job.params["up"] == "y"
    assert job.params["app"] == str(app)
    assert job.params["betas"] == pytest.approx(list(armature["pointwear_betas"]))
    cam = np.load(job.params["camera"])
    assert cam["camera_from_world"].shape == (3, 4, 4) and cam["K"].shape == (3, 3, 3)
    assert cam["image_size"].tolist() == [scene.render.resolution_y, scene.render.resolution_x]
    motion = np.load(job.params["motion"])
    assert motion["poses"].shape == (3, 72) and motion["trans"].shape == (3, 3)
    assert scene.frame_current == 1  # the frame is put back
    frames = Path(props.neural_output)
    pngs = sorted(p.name for p in frames.glob("*.png"))
    assert pngs == ["000000.png", "000001.png", "000002.png"]
    # The subject's own camera and motion: the rendered clothing covers the subject's clothing
    # pixels (checks camera.npz and motion.npz against the backend's conventions end to end).
    for k in range(3):
        alpha = png_channel(bpy, frames / "{:06d}.png".format(k), 3) > 0.5
        cloth = png_channel(bpy, fit_result.parent / "subject" / "labels" / "{:06d}.png".format(k), 0) > 0
        assert (alpha & cloth).sum() / (alpha | cloth).sum() > 0.5, k
    image = bpy.data.images["Pointwear Neural Render"]
    assert image.source == "SEQUENCE" and image.channels == 4
    assert tuple(image.size) == (scene.render.resolution_x, scene.render.resolution_y)
    if bpy.app.version >= (5, 0, 0):
        tree = scene.compositing_node_group
    else:
        tree = scene.node_tree
    sources = [n for n in tree.nodes if n.bl_idname == "CompositorNodeImage"]
    assert len(sources) == 1 and sources[0].image == image
    over = next(n for n in tree.nodes if n.bl_idname == "CompositorNodeAlphaOver")
    assert over.outputs[0].is_linked and all(s.is_linked for s in over.inputs if s.type == "RGBA")
    # Again: the composite is replaced, not stacked.
    assert ops.neural_render() == {"FINISHED"}
    assert len([n for n in tree.nodes if n.bl_idname == "CompositorNodeImage"]) == 1

    # Re-drape on a new shape: the points move, keep their order and their fitted colours.
    coords = np.empty(len(points.data.vertices) * 3, np.float32)
    points.data.vertices.foreach_get("co", coords)
    props.redrape_betas = (1.5, -1.0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ops.redrape() == {"FINISHED"}
    moved = np.empty_like(coords)
    points.data.vertices.foreach_get("co", moved)
    assert np.abs(moved - coords).max() > 1e-3
    np.testing.assert_allclose(point_colors(points), rgba, atol=1e-6)
    assert armature["pointwear_appearance"] == str(app)
    assert ops.neural_render.poll() is True

    # Importing the appearance result folder itself: its armature knows its appearance and its
    # clothing has the fitted colours.
    props.result_folder = str(app)
    assert ops.import_result() == {"FINISHED"}
    other = props.armature
    assert other != armature and Path(other["pointwear_appearance"]) == app
    other_points = next(o for o in other.children if o.get("pointwear_kind") == "clothing_points")
    np.testing.assert_allclose(point_colors(other_points), rgba, atol=1e-6)

