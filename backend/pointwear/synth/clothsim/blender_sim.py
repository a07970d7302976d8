"""The bpy part of clothsim: one Blender scene per subject with the posed body as a collision
object (one shape key per simulation frame), each garment as a cloth object (pins follow the
garment skinned to the body, sewing springs close the sewn seams, inner layers collide with
outer ones), stepped frame by frame with `scene.frame_set` (timers never fire in background
mode) and rendered with Cycles on the CPU at the output frames.

Blender world = the body's own SMPL frame turned Z-up: (x, y, z)_blender = (x, -z, y)_smpl.
Only this module imports bpy.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix
from PIL import Image

from .patterns import Pattern
from .plan import SMPL_TO_BLENDER, ClothsimOptions, Look


def to_blender(points: np.ndarray) -> np.ndarray:
    """(..., 3) SMPL-frame points -> Blender world."""
    return points @ SMPL_TO_BLENDER.T


def from_blender(points: np.ndarray) -> np.ndarray:
    return points @ SMPL_TO_BLENDER


@dataclass
class GarmentInput:
    """pattern in the SMPL rest (T-pose) frame: its placement gives the springs' rest lengths;
    start (V, 3) the placement skinned to the first simulation pose (where the cloth starts);
    goals (T, V, 3) the placement skinned per simulation frame (pins follow it), or None."""
    pattern: Pattern
    start: np.ndarray
    goals: np.ndarray | None
    name: str
    layer: int = 0


@dataclass
class SceneInput:
    """body_frames (T, Vb, 3) SMPL frame per simulation frame; body_faces (Fb, 3); body_albedo
    (Vb, 3); cameras: per output frame a (4, 4) Blender camera matrix_world; lens_mm with a
    36 mm sensor; output_frames (n,) simulation frame indices (0-based); substeps simulation
    frames per output frame (the scene runs at fps * substeps)."""
    body_frames: np.ndarray
    body_faces: np.ndarray
    body_albedo: np.ndarray
    garments: list[GarmentInput]
    cameras: np.ndarray
    lens_mm: float
    output_frames: np.ndarray
    look: Look
    substeps: int


def simulate_and_render(scene_in: SceneInput, options: ClothsimOptions, render_dir: Path
                        ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, float]]:
    """Step the simulation to the last output frame, rendering each output frame.
    -> per garment (n, V, 3) SMPL-frame cloth vertices, per output frame an RGBA uint8
    (H, W, 4) Cycles render (transparent background), and seconds spent {"simulate", "render"}."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    total = len(scene_in.body_frames)
    scene.frame_start, scene.frame_end = 1, total
    scene.render.fps = max(1, int(round(options.fps * scene_in.substeps)))
    scene.gravity = (0.0, 0.0, -9.81)
    body = _body_object(scene_in)
    _add_collision(body, outer=0.004)
    cloths = [_cloth_object(g, i, scene_in, options) for i, g in enumerate(scene_in.garments)]
    _collision_groups(scene, body, cloths, scene_in.garments)
    camera = _camera(scene, scene_in.lens_mm)
    _lights(scene, scene_in.look)
    _render_settings(scene, options)

    out_at = {int(f): k for k, f in enumerate(scene_in.output_frames)}
    cloth_frames: list[list[np.ndarray]] = [[] for _ in cloths]
    images: list[np.ndarray] = []
    render_dir.mkdir(parents=True, exist_ok=True)
    seconds = {"simulate": 0.0, "render": 0.0}
    for f in range(total):
        t0 = time.perf_counter()
        scene.frame_set(f + 1)
        seconds["simulate"] += time.perf_counter() - t0
        if f not in out_at:
            continue
        t0 = time.perf_counter()
        k = out_at[f]
        depsgraph = bpy.context.evaluated_depsgraph_get()
        for i, obj in enumerate(cloths):
            cloth_frames[i].append(from_blender(_evaluated_vertices(obj, depsgraph)))
        camera.matrix_world = Matrix(scene_in.cameras[k].tolist())
        path = render_dir / f"{k:06d}.png"
        scene.render.filepath = str(path)
        with _quiet():
            bpy.ops.render.render(write_still=True)
        with Image.open(path) as img:
            images.append(np.asarray(img.convert("RGBA")).copy())
        seconds["render"] += time.perf_counter() - t0
    return [np.stack(c) for c in cloth_frames], images, seconds


@contextmanager
def _quiet():
    """Blender prints a progress line per render tile to the C stdout: send it to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


# ------------------------------------------------------------------------------------------
# Objects


def _mesh_object(name: str, vertices: np.ndarray, faces: np.ndarray, edges=()) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(to_blender(vertices).tolist(), [tuple(map(int, e)) for e in edges],
                     faces.tolist())
    mesh.validate(clean_customdata=False)
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _frame_keys(obj: bpy.types.Object, frames: np.ndarray) -> None:
    """One shape key per simulation frame, fully on at its frame only (constant between)."""
    if obj.data.shape_keys is None:
        obj.shape_key_add(name="Basis")
    keys = obj.data.shape_keys
    for f, verts in enumerate(frames):
        key = obj.shape_key_add(name=f"f{f:04d}", from_mix=False)
        key.data.foreach_set("co", to_blender(verts).astype(np.float32).ravel())
        for frame, value in ((f, 0.0), (f + 1, 1.0), (f + 2, 0.0)):
            if 1 <= frame <= len(frames) or value > 0:
                key.value = value
                key.keyframe_insert("value", frame=frame)
    for fc in keys.animation_data.action.fcurves if keys.animation_data and keys.animation_data.action else []:
        for kp in fc.keyframe_points:
            kp.interpolation = "CONSTANT"


def _body_object(scene_in: SceneInput) -> bpy.types.Object:
    obj = _mesh_object("body", scene_in.body_frames[0], scene_in.body_faces)
    _frame_keys(obj, scene_in.body_frames)
    attr = obj.data.color_attributes.new("albedo", "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([scene_in.body_albedo, np.ones((len(scene_in.body_albedo), 1))], 1)
    attr.data.foreach_set("color", rgba.astype(np.float32).ravel())
    obj.data.polygons.foreach_set("use_smooth", np.ones(len(obj.data.polygons), bool))
    obj.data.materials.append(_skin_material())
    return obj


def _add_collision(obj: bpy.types.Object, outer: float) -> None:
    obj.modifiers.new("collision", "COLLISION")
    c = obj.collision
    c.thickness_outer = outer
    c.thickness_inner = 0.01
    c.cloth_friction = 5.0
    c.damping = 0.2


def _cloth_object(g: GarmentInput, index: int, scene_in: SceneInput, options: ClothsimOptions) -> bpy.types.Object:
    p = g.pattern
    obj = _mesh_object(g.name, g.start, p.faces, edges=p.sew)
    uv = obj.data.uv_layers.new(name="pattern")
    # Loops follow the polygons in order; from_pydata keeps our face order and corner order.
    uv.data.foreach_set("uv", p.uv.reshape(-1, 2).astype(np.float32).ravel())
    obj.data.polygons.foreach_set("use_smooth", np.ones(len(obj.data.polygons), bool))
    obj.data.materials.append(_cloth_material(scene_in.look, index))
    mod = obj.modifiers.new("cloth", "CLOTH")
    s = mod.settings
    stiff = 3.0 if p.kind == "jacket" else 1.0
    s.quality = options.quality
    s.mass = 0.25 * stiff
    s.air_damping = 1.0
    s.tension_stiffness = s.compression_stiffness = 15.0 * stiff
    s.shear_stiffness = 5.0 * stiff
    s.bending_stiffness = 0.5 * stiff
    s.tension_damping = s.compression_damping = s.shear_damping = 5.0
    if len(p.sew):
        s.use_sewing_springs = True
        s.sewing_force_max = 2.0
    obj.shape_key_add(name="Basis")
    pattern = obj.shape_key_add(name="pattern", from_mix=False)
    pattern.data.foreach_set("co", to_blender(p.vertices).astype(np.float32).ravel())
    s.rest_shape_key = pattern          # spring rest lengths from the pattern, value stays 0
    if g.goals is not None and p.pinned.any():
        group = obj.vertex_groups.new(name="pin")
        group.add(np.flatnonzero(p.pinned).tolist(), 1.0, "REPLACE")
        s.vertex_group_mass = "pin"
        s.pin_stiffness = 5.0
        _frame_keys(obj, g.goals)
    cs = mod.collision_settings
    cs.distance_min = 0.004
    cs.collision_quality = options.collision_quality
    cs.use_self_collision = False
    mod.point_cache.frame_start = 1
    mod.point_cache.frame_end = len(scene_in.body_frames)
    if any(other.layer > g.layer for other in scene_in.garments):   # outer layers collide with it
        _add_collision(obj, outer=0.003)
    return obj


def _collision_groups(scene, body: bpy.types.Object, cloths: list[bpy.types.Object],
                      garments: list[GarmentInput]) -> None:
    """Each garment collides with the body and the layers under it only: were an inner layer to
    collide with an outer one too, the two simulations would depend on each other (a cycle)."""
    for obj, g in zip(cloths, garments):
        group = bpy.data.collections.new(f"colliders_{obj.name}")
        scene.collection.children.link(group)
        group.objects.link(body)
        for other, og in zip(cloths, garments):
            if og.layer < g.layer:
                group.objects.link(other)
        obj.modifiers["cloth"].collision_settings.collection = group


def _evaluated_vertices(obj: bpy.types.Object, depsgraph) -> np.ndarray:
    ev = obj.evaluated_get(depsgraph)
    mesh = ev.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    m = np.array(obj.matrix_world)
    return co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]


# ------------------------------------------------------------------------------------------
# Materials, camera, light, render settings


def _skin_material() -> bpy.types.Material:
    mat = bpy.data.materials.new("skin")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_name = "albedo"
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.55
    return mat


def _cloth_material(look: Look, g: int) -> bpy.types.Material:
    """A fabric on the pattern's UVs (metres): solid, stripes, checks or a three-colour print."""
    mat = bpy.data.materials.new(f"cloth{g}")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = 0.85
    if "Sheen Weight" in bsdf.inputs:
        bsdf.inputs["Sheen Weight"].default_value = 0.3
    colors = [tuple(c) + (1.0,) for c in look.colors[g]]
    pattern, period = look.patterns[g], look.periods[g]
    if pattern == "solid":
        bsdf.inputs["Base Color"].default_value = colors[0]
        return mat
    uv = nodes.new("ShaderNodeUVMap")
    uv.uv_map = "pattern"
    sep = nodes.new("ShaderNodeSeparateXYZ")
    links.new(uv.outputs["UV"], sep.inputs["Vector"])

    def math(op, a, b=None):
        n = nodes.new("ShaderNodeMath")
        n.operation = op
        for i, x in enumerate((a, b)):
            if x is None:
                continue
            if isinstance(x, (int, float)):
                n.inputs[i].default_value = x
            else:
                links.new(x, n.inputs[i])
        return n.outputs[0]

    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.inputs["A"].default_value = colors[0]
    mix.inputs["B"].default_value = colors[1]
    u, v = sep.outputs["X"], sep.outputs["Y"]
    if pattern == "stripes":
        d = look.directions[g]
        coord = u if d == 0 else v if d == 1 else math("ADD", u, v)
        factor = math("GREATER_THAN", math("SINE", math("MULTIPLY", coord, 2 * np.pi / period)), 0.0)
    elif pattern == "checks":
        cu = math("FLOOR", math("DIVIDE", u, period))
        cv = math("FLOOR", math("DIVIDE", v, period))
        factor = math("FLOORED_MODULO", math("ADD", cu, cv), 2.0)
    else:
        noise = nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = 1.0 / period
        links.new(uv.outputs["UV"], noise.inputs["Vector"])
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.interpolation = "CONSTANT"
        ramp.color_ramp.elements[0].color = colors[0]
        ramp.color_ramp.elements[1].position = 0.45
        ramp.color_ramp.elements[1].color = colors[1]
        el = ramp.color_ramp.elements.new(0.58)
        el.color = colors[2]
        links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
        links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
        return mat
    links.new(factor, mix.inputs["Factor"])
    links.new(mix.outputs["Result"], bsdf.inputs["Base Color"])
    return mat


def _camera(scene, lens_mm: float) -> bpy.types.Object:
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = lens_mm
    data.clip_start, data.clip_end = 0.05, 100.0
    obj = bpy.data.objects.new("camera", data)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return obj


def _lights(scene, look: Look) -> None:
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    bg.inputs["Strength"].default_value = look.ambient
    scene.world = world
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = look.sun_strength
    sun.angle = 0.2
    obj = bpy.data.objects.new("sun", sun)
    d = look.sun / np.linalg.norm(look.sun)
    # A sun shines along its local -Z: point local +Z at the light's direction.
    z = d
    x = np.cross([0.0, 0.0, 1.0], z) if abs(z[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], 1)
    obj.matrix_world = Matrix(m.tolist())
    scene.collection.objects.link(obj)


def _render_settings(scene, options: ClothsimOptions) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = options.samples
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = True
    try:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    except TypeError:
        scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 4
    scene.render.threads_mode = "FIXED"
    scene.render.threads = options.threads
    scene.render.resolution_x = scene.render.resolution_y = options.size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    scene.render.use_persistent_data = True
