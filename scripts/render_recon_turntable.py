"""Turntable GIF of a reconstructed garment: `garment.glb` of a `pointwear reconstruct` result
folder imported by Blender's own glTF importer (bpy in the venv, headless), turned in front of a
fixed camera and rendered with Cycles on the CPU, frames assembled into an animated GIF.

Usage: .venv/bin/python scripts/render_recon_turntable.py RESULT_DIR --out docs/images/recon_turntable.gif
       [--frames 24] [--size 288] [--samples 8]   (the README's GIF: these defaults, ryota.png's result)
(RESULT_DIR from e.g. `.venv/bin/pointwear reconstruct ../shared/data/real/ryota.png --out RESULT_DIR`.)
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path


def build_scene(bpy, glb: Path, size: int, samples: int):
    """Import the GLB; camera, lights, Cycles settings. Returns the object to turn (an empty
    parenting the imported objects, at the garment's centre)."""
    from mathutils import Vector
    bpy.ops.wm.read_factory_settings(use_empty=True)
    before = set(bpy.data.objects)
    if bpy.ops.import_scene.gltf(filepath=str(glb)) != {"FINISHED"}:
        raise SystemExit(f"render_recon_turntable: cannot import {glb}")
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    if not meshes:
        raise SystemExit(f"render_recon_turntable: no mesh in {glb}")
    bpy.context.view_layer.update()
    corners = [o.matrix_world @ Vector(c) for o in meshes for c in o.bound_box]
    lo = Vector([min(c[i] for c in corners) for i in range(3)])
    hi = Vector([max(c[i] for c in corners) for i in range(3)])
    centre, height = (lo + hi) / 2, hi.z - lo.z
    pivot = bpy.data.objects.new("turntable", None)
    bpy.context.scene.collection.objects.link(pivot)
    pivot.location = centre
    for o in new:
        if o.parent is None:
            o.parent = pivot
            o.matrix_parent_inverse = pivot.matrix_world.inverted()
    scene = bpy.context.scene
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(cam)
    cam.data.lens = 50
    dist = 0.8 * height / (36.0 / cam.data.lens)       # the garment fills most of the frame height
    cam.location = centre + Vector((0.0, -dist, 0.1 * height))
    cam.rotation_euler = (math.radians(90 - math.degrees(math.atan2(0.1 * height, dist))), 0.0, 0.0)
    scene.camera = cam
    for name, energy, rot in (("key", 3.0, (50, 10, 30)), ("fill", 1.2, (60, -10, -120))):
        light = bpy.data.objects.new(name, bpy.data.lights.new(name, "SUN"))
        light.data.energy = energy
        light.rotation_euler = tuple(math.radians(a) for a in rot)
        scene.collection.objects.link(light)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.9, 0.9, 0.9, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    return pivot


def render_turntable(result: Path, out: Path, frames: int, size: int, samples: int) -> Path:
    import bpy
    from PIL import Image
    glb = result / "garment.glb"
    if not glb.is_file():
        raise SystemExit(f"render_recon_turntable: {glb} does not exist (run `pointwear reconstruct` first)")
    pivot = build_scene(bpy, glb, size, samples)
    scene = bpy.context.scene
    images = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(frames):
            pivot.rotation_euler = (0.0, 0.0, 2 * math.pi * k / frames)
            scene.render.filepath = str(Path(tmp) / f"{k:03d}.png")
            bpy.ops.render.render(write_still=True)
            images.append(Image.open(scene.render.filepath).convert("RGB").copy())
            print(f"frame {k + 1}/{frames}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    pal = [im.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for im in images]
    pal[0].save(out, save_all=True, append_images=pal[1:], duration=80, loop=0, optimize=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="a `pointwear reconstruct` result folder (with garment.glb)")
    ap.add_argument("--out", type=Path, default=Path("docs/images/recon_turntable.gif"))
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    if not (4 <= args.frames <= 360 and 64 <= args.size <= 2048 and 1 <= args.samples <= 4096):
        ap.error("--frames 4..360, --size 64..2048, --samples 1..4096")
    out = render_turntable(args.result, args.out, args.frames, args.size, args.samples)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
