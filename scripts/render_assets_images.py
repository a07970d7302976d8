#!/usr/bin/env python
"""The README pictures of "Artist-ready garments", rendered with the bpy module headless (Cycles,
CPU) from real runs: a tiny parametric fit of a synthetic subject, its slider table, the walk, the
cloth handoff, ../shared/data/real/cmu_01_01.bvh through Blender's BVH importer and the
retargeting, and a fit's first live points with its preview image.

    .venv/bin/python scripts/render_assets_images.py [--out docs/images]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CMU = REPO.parent / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.is_file():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")
SIZE = 360


def backend_inputs(root: Path) -> dict:
    """A fit (with its first live points and preview image), slider table and walk."""
    from pointwear.cli import main
    from pointwear.data.subject import read_subject
    from pointwear.drape.sliders import slider_table
    from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
    assert main(["synth", str(root / "subject"), "--frames", "3", "--size", "128", "--outfit", "tshirt-shorts",
                 "--seed", "1", "--points", "2048"]) == 0
    first = {}

    def preview(image, stage, step):
        first.setdefault("image", image)

    def points(p):
        first.setdefault("points", p)

    OutfitFitter(read_subject(root / "subject"), root / "result",
                 FitOptions(template="tshirt-shorts", codes=1, coarse_steps=20, fine_steps=20),
                 preview=preview, preview_points=points).run()
    slider_table(root / "result", root / "sliders.npz")
    assert main(["motion", "export", "walk", "--frames", "30", "--out", str(root / "walk.npz")]) == 0
    return {"result": root / "result", "table": root / "sliders.npz", "walk": root / "walk.npz", **first}


def frame_objects(bpy, objects, pad=1.15):
    """(target (3,), distance) that frame the evaluated objects' world bounding box."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    corners = []
    for obj in objects:
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        if not len(mesh.vertices):                      # drawn as points: the vertices it draws
            ev.to_mesh_clear()
            ev, mesh = obj, obj.data
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        if ev is not obj:
            ev.to_mesh_clear()
        m = np.array(obj.matrix_world)
        corners.append(co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3])
    corners = np.concatenate(corners)
    lo, hi = corners.min(0), corners.max(0)
    height = max(hi[2] - lo[2], (hi[0] - lo[0]) * SIZE / SIZE)
    return (lo + hi) / 2, pad * height / (2 * np.tan(np.radians(19.8)))


def setup_scene(bpy, target=(0.0, 0.0, 0.9), distance=3.4, width=SIZE):
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 24
    scene.render.resolution_x, scene.render.resolution_y = width, SIZE
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("w")
    world.color = (0.8, 0.8, 0.82)
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.75, 0.76, 0.8, 1)
    scene.world = world
    light = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    light.data.energy = 3.0
    light.rotation_euler = (0.6, 0.2, 0.5)
    scene.collection.objects.link(light)
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.location = (target[0], target[1] - distance, target[2])
    cam.rotation_euler = (np.radians(90), 0, 0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return scene


def render(bpy, path: Path) -> np.ndarray:
    import imageio.v3 as iio
    bpy.context.scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return iio.imread(path)[..., :3]


def fresh(bpy):
    from addon import properties
    bpy.ops.wm.read_factory_settings(use_empty=True)
    for cls in properties.CLASSES:
        if not getattr(cls, "is_registered", False):
            bpy.utils.register_class(cls)
    properties.register_extra()


def side_by_side(*images) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    out = []
    for im in images:
        if im.shape[0] != h:
            idx = (np.arange(h) * im.shape[0] / h).astype(int)
            im = im[idx][:, (np.arange(int(im.shape[1] * h / im.shape[0])) * im.shape[0] / h).astype(int)]
        out.append(im[..., :3])
    return np.concatenate(out, 1)


def sliders_image(bpy, inputs, out: Path, tmp: Path) -> None:
    import imageio.v3 as iio

    from addon.scene import importer, sliders
    fresh(bpy)
    objs = importer.import_result(bpy.context, str(inputs["result"]), with_camera=False, with_motion=False)
    objs["clothing_points"].hide_render = True
    arm = objs["armature"]
    setup_scene(bpy, *frame_objects(bpy, [objs["body"], objs["clothing_mesh"]]))
    before = render(bpy, tmp / "s0.png")
    sliders.load(arm, str(inputs["table"]))
    for name, factor in (("top.sleeve", 1.0), ("top.hem", 1.0), ("trousers.hem", 1.0), ("trousers.ease", 0.9)):
        arm.pointwear_sliders[name].factor = factor
    after = render(bpy, tmp / "s1.png")
    iio.imwrite(out, side_by_side(before, after))


def cloth_image(bpy, inputs, out: Path, tmp: Path) -> None:
    import imageio.v3 as iio

    from addon.scene import armature as armature_builder
    from addon.scene import cloth, importer
    fresh(bpy)
    ctx = bpy.context
    objs = importer.import_result(ctx, str(inputs["result"]), with_camera=False, with_motion=False)
    objs["clothing_points"].hide_render = True
    arm = objs["armature"]
    importer.load_motion(ctx, arm, str(inputs["walk"]), up="Y")
    cloth.make_cloth(ctx, arm, objs["clothing_mesh"], objs["body"], armature_builder.joint_names(arm),
                     armature_builder.rest_joints(arm), "COTTON")
    for frame in range(0, 21):
        ctx.scene.frame_set(frame)
    ctx.scene.frame_set(20)
    setup_scene(bpy, *frame_objects(bpy, [objs["body"]], pad=1.3))
    iio.imwrite(out, render(bpy, tmp / "c.png"))


def retarget_image(bpy, inputs, out: Path, tmp: Path) -> None:
    """The fitted clothing on the CMU take retargeted from Blender's own BVH import: three frames."""
    import imageio.v3 as iio

    from addon.scene import importer, motion, retarget
    from pointwear.body import load_body
    from pointwear.data.retarget import RetargetOptions, retarget_bvh
    fresh(bpy)
    ctx = bpy.context
    objs = importer.import_result(ctx, str(inputs["result"]), with_camera=False, with_motion=False)
    objs["clothing_points"].hide_render = True
    arm = objs["armature"]
    bpy.ops.import_anim.bvh(filepath=str(CMU), update_scene_fps=True)
    source = ctx.active_object
    arrays = retarget.sample_armature(ctx.scene, source, 1, 480)
    source.hide_render = True
    np.savez(tmp / "skeleton.npz", **arrays)
    retarget_bvh(tmp / "skeleton.npz", tmp / "m.npz", load_body("default", device="cpu"),
                 options=RetargetOptions(fps=float(arrays["fps"]), iterations=30))
    importer.load_motion(ctx, arm, str(tmp / "m.npz"), up="Y")
    motion.shift_keys(arm, 1)
    images = []
    for k, frame in enumerate((120, 300, 460)):
        ctx.scene.frame_set(frame)
        if k == 0:
            setup_scene(bpy, *frame_objects(bpy, [objs["body"]], pad=1.3))
        else:
            target, distance = frame_objects(bpy, [objs["body"]], pad=1.3)
            ctx.scene.camera.location = (target[0], target[1] - distance, target[2])
        images.append(render(bpy, tmp / f"r{k}.png"))
    iio.imwrite(out, side_by_side(*images))


def live_image(bpy, inputs, out: Path, tmp: Path) -> None:
    import imageio.v3 as iio

    from addon.link import protocol
    from addon.scene import live
    fresh(bpy)
    flat = (np.round(inputs["points"][::max(1, len(inputs["points"]) // protocol.PREVIEW_POINTS_MAX + 1)]
                     / protocol.PREVIEW_POINTS_UNIT)).astype(int).ravel().tolist()
    obj = live.show_points(bpy.context.scene, protocol.decode_points(flat))
    setup_scene(bpy, *frame_objects(bpy, [obj]))
    iio.imwrite(out, side_by_side(inputs["image"], render(bpy, tmp / "l.png")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("--only", default=None, help="comma-separated: sliders,cloth,retarget,live")
    args = ap.parse_args()
    import bpy
    tmp = Path(tempfile.mkdtemp(prefix="assets_images_"))
    inputs = backend_inputs(tmp)
    todo = {"sliders": sliders_image, "cloth": cloth_image, "retarget": retarget_image, "live": live_image}
    for name, fn in todo.items():
        if args.only and name not in args.only.split(","):
            continue
        fn(bpy, inputs, args.out / f"assets_{name}.png", tmp)
        print("wrote", args.out / f"assets_{name}.png")


if __name__ == "__main__":
    main()
    # bpy and torch in one process can hang at interpreter exit (seen with bpy 4.5 after Cycles
    # renders and cloth bakes): everything is written and flushed by now, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
