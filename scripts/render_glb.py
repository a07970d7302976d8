"""Render an exported garment GLB as Blender's own glTF importer reads it (bpy module, headless,
Cycles on the CPU): a few animation frames side by side, for the README.

    .venv/bin/python scripts/render_glb.py walk.glb --frames 0,12,24 --out docs/images/export_glb.png
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np


def render(glb: Path, frames: list[int], out: Path, size: int = 360, samples: int = 24) -> Path:
    import bpy
    from PIL import Image
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(glb))
    garment = next(o for o in bpy.data.objects if o.type == "MESH" and any(m.type == "ARMATURE" for m in o.modifiers))
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("World")
    world.color = (0.8, 0.8, 0.82)
    scene.world = world
    if world.node_tree is None:
        world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.75, 0.76, 0.8, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.9
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(50), 0, math.radians(30))
    scene.collection.objects.link(sun)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, frame in enumerate(frames):
            scene.frame_set(frame)
            dg = bpy.context.evaluated_depsgraph_get()
            ev = garment.evaluated_get(dg)
            mesh = ev.to_mesh()
            co = np.array([v.co for v in mesh.vertices]) @ np.array(garment.matrix_world)[:3, :3].T
            ev.to_mesh_clear()
            centre = (co.min(0) + co.max(0)) / 2
            height = float(co[:, 2].max() - co[:, 2].min())
            cam.data.lens = 50
            dist = max(height, 0.8) * 2.3
            cam.location = (centre[0] + dist * 0.35, centre[1] - dist, centre[2] + 0.1)
            direction = centre - np.array(cam.location)
            cam.rotation_euler = (math.atan2(math.hypot(direction[0], direction[1]), -direction[2]), 0,
                                  math.atan2(direction[1], direction[0]) - math.pi / 2)
            path = Path(tmp) / f"{k}.png"
            scene.render.filepath = str(path)
            bpy.ops.render.render(write_still=True)
            tiles.append(np.asarray(Image.open(path).convert("RGB")))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, 1)).save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glb", type=Path)
    ap.add_argument("--frames", default="0,12,24")
    ap.add_argument("--size", type=int, default=360)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print(render(args.glb, [int(f) for f in args.frames.split(",")], args.out, args.size))


if __name__ == "__main__":
    main()
