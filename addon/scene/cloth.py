# SPDX-License-Identifier: GPL-3.0-or-later
"""Cloth-simulation handoff: the garment mesh gets Blender's Cloth modifier, pinned where a real
garment holds on (the waistband of a lower garment, the shoulders of a top or a one-piece), and
the body becomes a Collision object; the simulation covers the armature's motion.

Pins come from the skin weights: the shoulders are the vertices weighted to the collars and the
neck (``SHOULDER_JOINTS``, at least ``SHOULDER_WEIGHT``); a waistband is the top band
(``WAISTBAND_DEPTH``) of every garment whose top edge lies below the spine3 joint (a lower
garment: shorts, trousers, a skirt). Three vertex groups are written, ``pointwear_pin_shoulders``,
``pointwear_pin_waistband`` and their union ``pointwear_pin`` (the Cloth modifier's pin group),
so an artist can repaint them. A garment made of separate pieces (the parametric garments' legs
and sleeves are tubes of their own) would lose a piece that neither rule pins: such a piece is
pinned along its open edge nearest the pelvis or the neck (a trouser leg at the crotch, a sleeve
at the shoulder), ``pointwear_pin_seams``.

Modifier order matters: the Armature modifier stays first (pinned vertices follow the skinned
pose), Cloth after it; on the body, Collision after its Armature modifier (a deforming collider).
"""

import os

import numpy as np

from ..io import results, smpl_math

PIN_GROUP = "pointwear_pin"
SHOULDER_GROUP = "pointwear_pin_shoulders"
WAISTBAND_GROUP = "pointwear_pin_waistband"
SEAM_GROUP = "pointwear_pin_seams"
CLOTH_MODIFIER = "Pointwear Cloth"
COLLISION_MODIFIER = "Pointwear Collision"
SHOULDER_JOINTS = ("left_collar", "right_collar", "neck")
SHOULDER_WEIGHT = 0.3          # summed skin weight of SHOULDER_JOINTS that pins a vertex
WAISTBAND_DEPTH = 0.04         # m below a lower garment's top edge that is its waistband
WAIST_JOINT = "spine3"         # a garment whose top edge is below this joint is a lower garment
SEAM_JOINTS = ("pelvis", "neck")   # a loose piece hangs from its open edge nearest one of these
SEAM_DEPTH = 0.025             # m around that edge that is pinned
COLLISION_DISTANCE = 0.006     # m: cloth keeps this far from the body
BODY_THICKNESS = 0.004         # m: the body's outer collision shell

# Blender's own cloth presets (scripts/presets/cloth/*.py), with Pointwear's quality.
PRESETS = {
    "COTTON": {"quality": 5, "mass": 0.3, "tension_stiffness": 15.0, "compression_stiffness": 15.0,
               "shear_stiffness": 15.0, "bending_stiffness": 0.5, "tension_damping": 5.0,
               "compression_damping": 5.0, "shear_damping": 5.0, "air_damping": 1.0, "bending_damping": 0.5},
    "DENIM": {"quality": 12, "mass": 1.0, "tension_stiffness": 40.0, "compression_stiffness": 40.0,
              "shear_stiffness": 40.0, "bending_stiffness": 10.0, "tension_damping": 25.0,
              "compression_damping": 25.0, "shear_damping": 25.0, "air_damping": 1.0, "bending_damping": 0.5},
    "SILK": {"quality": 5, "mass": 0.15, "tension_stiffness": 5.0, "compression_stiffness": 5.0,
             "shear_stiffness": 5.0, "bending_stiffness": 0.05, "tension_damping": 0.0,
             "compression_damping": 0.0, "shear_damping": 0.0, "air_damping": 1.0, "bending_damping": 0.5},
    "LEATHER": {"quality": 15, "mass": 0.4, "tension_stiffness": 80.0, "compression_stiffness": 80.0,
                "shear_stiffness": 80.0, "bending_stiffness": 150.0, "tension_damping": 25.0,
                "compression_damping": 25.0, "shear_damping": 25.0, "air_damping": 1.0, "bending_damping": 0.5},
}
PRESET_ITEMS = tuple((key, key.capitalize(), "Blender's {} cloth preset".format(key.lower())) for key in PRESETS)


class ClothError(ValueError):
    """Why the cloth handoff cannot be made (nothing in the scene was changed)."""


def _group_weights(obj, names):
    """(V, len(names)) weights of the named vertex groups (0 where a vertex is not in one)."""
    out = np.zeros((len(obj.data.vertices), len(names)), np.float32)
    index = {obj.vertex_groups[n].index: k for k, n in enumerate(names) if n in obj.vertex_groups}
    for v in obj.data.vertices:
        for g in v.groups:
            k = index.get(g.group)
            if k is not None:
                out[v.index, k] = g.weight
    return out


def garment_index(garment_obj, result_folder):
    """(V,) garment of each vertex: from the result's outfit.npz when it matches the mesh, else 0."""
    count = len(garment_obj.data.vertices)
    path = os.path.join(result_folder, results.OUTFIT_FILE) if result_folder else ""
    if path and os.path.isfile(path):
        outfit = results.read_outfit(path)
        if outfit.garment is not None and len(outfit.garment) == count:
            return np.asarray(outfit.garment, np.int64)
    return np.zeros(count, np.int64)


def pin_weights(rest_smpl, skin, joint_names, garment, waist_height):
    """Pin weights (V,) in {0, 1} and which pins (shoulders (V,) bool, waistband (V,) bool) from
    rest-pose SMPL-space vertices (V, 3), skin weights (V, 24) named by ``joint_names``, each
    vertex's garment (V,) and the height (SMPL y) of the waist joint."""
    cols = [joint_names.index(n) for n in SHOULDER_JOINTS]
    shoulders = skin[:, cols].sum(1) >= SHOULDER_WEIGHT
    waistband = np.zeros(len(rest_smpl), bool)
    for g in np.unique(garment):
        mine = garment == g
        top = rest_smpl[mine, 1].max()
        if top < waist_height:
            waistband |= mine & (rest_smpl[:, 1] >= top - WAISTBAND_DEPTH)
    return (shoulders | waistband).astype(np.float32), shoulders, waistband


def _components(count, edges):
    """(count,) connected-component label of every vertex over (E, 2) edges (label propagation)."""
    label = np.arange(count)
    while True:
        low = np.minimum(label[edges[:, 0]], label[edges[:, 1]])
        new = label.copy()
        np.minimum.at(new, edges[:, 0], low)
        np.minimum.at(new, edges[:, 1], low)
        new = new[new]                                  # jump along chains
        if np.array_equal(new, label):
            return label
        label = new


def seam_pins(rest_smpl, faces, pinned, anchors):
    """(V,) bool: for every piece (connected component of the triangles (F, 3)) with no vertex in
    ``pinned``, the vertices within SEAM_DEPTH of its open edge (boundary loop) nearest the
    ``anchors`` (K, 3) (SMPL space)."""
    count = len(rest_smpl)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, uses = np.unique(edges, axis=0, return_counts=True)
    piece = _components(count, uniq)
    boundary = uniq[uses == 1]
    loop = _components(count, boundary) if len(boundary) else np.arange(count)
    on_boundary = np.zeros(count, bool)
    on_boundary[boundary.ravel()] = True
    out = np.zeros(count, bool)
    for p in np.unique(piece):
        mine = piece == p
        if (pinned & mine).any():
            continue
        loops = np.unique(loop[mine & on_boundary])
        if not len(loops):
            continue                                     # a closed piece: nothing hangs from it
        dist = [np.linalg.norm(rest_smpl[loop == lp].mean(0) - anchors, axis=1).min() for lp in loops]
        edge = rest_smpl[loop == loops[int(np.argmin(dist))]]
        idx = np.flatnonzero(mine)
        near = np.linalg.norm(rest_smpl[idx, None] - edge[None], axis=-1).min(1) <= SEAM_DEPTH
        out[idx[near]] = True
    return out


def _set_group(obj, name, weights):
    group = obj.vertex_groups.get(name) or obj.vertex_groups.new(name=name)
    group.remove(list(range(len(obj.data.vertices))))
    idx = np.flatnonzero(weights > 0).tolist()
    if idx:
        group.add(idx, 1.0, "REPLACE")
    return group


def make_cloth(context, armature, garment_obj, body_obj, joint_names, rest_joints_smpl, preset="COTTON"):
    """Cloth on ``garment_obj`` (pinned, ``preset``), Collision on ``body_obj``, the cache over the
    armature's action frames (else the scene's). Returns {"cloth", "collision", "pinned" (count),
    "shoulders", "waistband", "seams" (counts), "frame_start", "frame_end"}. Raises ClothError."""
    if preset not in PRESETS:
        raise ClothError("unknown cloth preset {!r} (one of {})".format(preset, ", ".join(PRESETS)))
    if garment_obj is None or not len(garment_obj.data.polygons):
        raise ClothError("{} has no garment mesh to simulate (a points-only result): export or build a "
                         "garment mesh first".format(armature.name))
    if body_obj is None:
        raise ClothError("{} has no body to collide with".format(armature.name))
    missing = [n for n in SHOULDER_JOINTS + (WAIST_JOINT,) if n not in joint_names]
    if missing:
        raise ClothError("the armature has no joints {}".format(", ".join(missing)))
    co = np.empty(len(garment_obj.data.vertices) * 3, np.float32)
    garment_obj.data.vertices.foreach_get("co", co)
    rest = smpl_math.from_blender(co.reshape(-1, 3).astype(np.float64))
    skin = _group_weights(garment_obj, list(joint_names))
    garment = garment_index(garment_obj, armature.get("pointwear_result", ""))
    waist = float(rest_joints_smpl[joint_names.index(WAIST_JOINT)][1])
    pins, shoulders, waistband = pin_weights(rest, skin, list(joint_names), garment, waist)
    faces = np.empty(len(garment_obj.data.polygons) * 3, np.int32)
    if any(len(p.vertices) != 3 for p in garment_obj.data.polygons):
        raise ClothError("{}: the garment mesh must be triangles".format(garment_obj.name))
    garment_obj.data.polygons.foreach_get("vertices", faces)
    anchors = np.array([rest_joints_smpl[joint_names.index(n)] for n in SEAM_JOINTS], np.float64)
    seams = seam_pins(rest, faces.reshape(-1, 3), pins > 0, anchors)
    pins = np.maximum(pins, seams.astype(np.float32))
    if not pins.any():
        raise ClothError("no vertex of {} lies at the shoulders or a waistband: nothing to pin".format(
            garment_obj.name))

    _set_group(garment_obj, SHOULDER_GROUP, shoulders)
    _set_group(garment_obj, WAISTBAND_GROUP, waistband)
    _set_group(garment_obj, SEAM_GROUP, seams)
    _set_group(garment_obj, PIN_GROUP, pins)
    for obj, kind in ((garment_obj, "CLOTH"), (body_obj, "COLLISION")):
        for mod in [m for m in obj.modifiers if m.type == kind]:
            obj.modifiers.remove(mod)
    cloth = garment_obj.modifiers.new(CLOTH_MODIFIER, "CLOTH")
    settings = cloth.settings
    for key, value in PRESETS[preset].items():
        setattr(settings, key, value)
    settings.vertex_group_mass = PIN_GROUP
    settings.pin_stiffness = 1.0
    coll = cloth.collision_settings
    coll.use_collision = True
    coll.use_self_collision = False
    coll.distance_min = COLLISION_DISTANCE
    coll.collision_quality = 2
    collision = body_obj.modifiers.new(COLLISION_MODIFIER, "COLLISION")
    body_obj.collision.thickness_outer = BODY_THICKNESS
    body_obj.collision.cloth_friction = 5.0

    start, end = _frame_range(context.scene, armature)
    cloth.point_cache.frame_start = start
    cloth.point_cache.frame_end = end
    garment_obj["pointwear_cloth_preset"] = preset
    return {"cloth": cloth, "collision": collision, "pinned": int(pins.sum()), "shoulders": int(shoulders.sum()),
            "waistband": int(waistband.sum()), "seams": int(seams.sum()), "frame_start": start, "frame_end": end}


def _frame_range(scene, armature):
    anim = armature.animation_data
    action = anim.action if anim is not None else None
    if action is not None:
        start, end = action.frame_range
        return int(np.floor(start)), int(np.ceil(end))
    return int(scene.frame_start), int(scene.frame_end)
