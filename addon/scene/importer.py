# SPDX-License-Identifier: GPL-3.0-or-later
"""The three things the operators do with backend results: import a fit result, key a new
motion, re-drape in place. Each reads and checks every file before touching the scene, so a bad
file leaves the scene as it was.

Object roles are recorded as custom properties, which is how later steps (and the operators)
find the pieces again: ``pointwear_kind`` ("armature", "body", "clothing_points",
"clothing_mesh", "garment_mesh" (the textured mesh of a result's mesh block), "camera") and ``pointwear_result`` (absolute result folder) on every object;
on the armature also ``pointwear_betas``, ``pointwear_drape``, ``pointwear_garments`` (names,
comma-separated, inner layer first), ``pointwear_code``,
``pointwear_world_from_camera`` (16 floats, row-major 4x4), ``pointwear_body`` (body.npz path) and,
for a fit_appearance result (appearance.pt), ``pointwear_appearance`` (that folder).
"""

import os

import bpy
import numpy as np

from ..io import motion as motion_io
from ..io import results
from ..link import protocol
from . import armature as armature_builder
from . import body as body_builder
from . import camera as camera_builder
from . import clothing
from . import motion as motion_keys

KIND = "pointwear_kind"
RESULT = "pointwear_result"
CHILD_KINDS = ("body", "clothing_points", "clothing_mesh", "garment_mesh")
APPEARANCE = "pointwear_appearance"     # armature: its fitted appearance folder (appearance.pt)
APPEARANCE_FILE = protocol.APPEARANCE_PT


def _new_collection(scene, name):
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    return collection


def _tag(obj, kind, folder):
    obj[KIND] = kind
    obj[RESULT] = folder


def _store_result_props(arm, data):
    arm["pointwear_betas"] = [float(b) for b in data.outfit.betas]
    arm["pointwear_drape"] = data.outfit.drape
    arm["pointwear_garments"] = ", ".join(data.outfit.garment_names or [])
    arm["pointwear_code"] = [float(c) for c in data.outfit.code]
    arm["pointwear_body"] = os.path.abspath(data.body.path)


def import_result(context, result_folder, *, point_radius=clothing.DEFAULT_RADIUS, with_camera=True,
                  with_motion=True, collection_name=None):
    """Build a fit result folder (outfit.npz, body.npz, posed.npz) into a new collection.

    A result with a garment mesh block (outfit.npz ``mesh_*``, texture.png) gets that mesh, with
    its UVs and a textured material, as "garment_mesh" instead of the plain "clothing_mesh".

    Returns {"armature", "body", "clothing_points", "clothing_mesh" (None without faces),
    "garment_mesh" (None without a mesh block),
    "camera" (None when not asked for or posed.npz has no camera), "collection", "action"
    (None without motion)}. The subject's own motion is keyed so that Blender frame k shows
    subject frame k in the upright world (posed.npz's world_from_camera); the armature object
    keeps an identity transform. Raises results.ResultFileError for a bad file.
    """
    data = results.read_result(result_folder, with_posed=True if (with_camera or with_motion) else None)
    posed = data.posed
    if with_motion and not posed.has_motion:
        raise results.ResultFileError(posed.path, "global_orient", "missing key: no poses to key")
    scene = context.scene
    if context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    name = collection_name or os.path.basename(data.folder.rstrip(os.sep)) or "Pointwear"
    collection = _new_collection(scene, name)
    names = data.body.joint_names

    arm = armature_builder.build_armature(context, collection, data.body, name + " Armature")
    body = body_builder.build_body(collection, data.body, arm, name + " Body")
    points = clothing.build_clothing_points(collection, data.outfit, arm, names, name + " Points",
                                            radius=point_radius)
    garment = textured = None
    if data.mesh is not None:
        textured = clothing.build_garment_mesh(collection, data.mesh, arm, names, name + " Garment")
    else:
        garment = clothing.build_clothing_mesh(collection, data.outfit, arm, names, name + " Garment")
    camera = None
    if with_camera and posed.camera_space:
        camera = camera_builder.build_camera(collection, scene, posed, name + " Camera")
    action = None
    if with_motion:
        motion = motion_io.subject_motion(posed, data.body.joints[0])
        action = _key(context, arm, motion, name + " subject")["action"]

    for obj, kind in ((arm, "armature"), (body, "body"), (points, "clothing_points"),
                      (garment, "clothing_mesh"), (textured, "garment_mesh"), (camera, "camera")):
        if obj is not None:
            _tag(obj, kind, data.folder)
    _store_result_props(arm, data)
    w = posed.world_from_camera if posed is not None else np.eye(4)
    arm["pointwear_world_from_camera"] = [float(v) for v in np.asarray(w).ravel()]
    if os.path.isfile(os.path.join(data.folder, APPEARANCE_FILE)):
        arm[APPEARANCE] = data.folder  # a fit_appearance result: ready for a neural render
    _select_only(context, arm)
    return {"armature": arm, "body": body, "clothing_points": points, "clothing_mesh": garment,
            "garment_mesh": textured, "camera": camera, "collection": collection, "action": action}


def _select_only(context, obj):
    for other in context.view_layer.objects.selected:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def _key(context, armature, motion, label):
    action = motion_keys.key_motion(armature, motion, armature_builder.joint_names(armature), name=label)
    scene = context.scene
    motion_keys.set_scene_timing(scene, motion)
    scene.frame_set(scene.frame_start)
    return {"action": action, "frames": motion.num_frames, "fps": motion.fps,
            "frame_start": scene.frame_start, "frame_end": scene.frame_end}


def load_motion(context, armature, motion_path, up="Z"):
    """Key an AMASS-style motion file (up axis "Z" for AMASS, or "Y") on an imported armature, in
    a new action assigned to it; sets the scene frame range (0..T-1) and fps. Returns
    {"action", "frames" (count), "fps", "frame_start", "frame_end"}."""
    pelvis = armature_builder.rest_joints(armature)[0]
    motion = motion_io.read_amass(motion_path, up=up, pelvis=pelvis)
    label = os.path.splitext(os.path.basename(os.fspath(motion_path)))[0]
    return _key(context, armature, motion, label)


def pointwear_children(armature):
    """The armature's skinned objects by kind: {"body": obj, "clothing_points": obj, ...}."""
    found = {}
    for obj in armature.children:
        kind = obj.get(KIND)
        if kind in CHILD_KINDS:
            found.setdefault(kind, obj)
    return found


def _check_redrape(armature, parts, data):
    """Everything that must hold before any object changes (point counts, joints, faces)."""
    names = armature_builder.joint_names(armature)
    if "garment_mesh" in parts:
        raise results.ResultFileError(data.outfit.path, "mesh_vertices", "the textured garment mesh {!r} cannot be "
                                      "re-draped in place: import the re-draped result instead".format(
                                          parts["garment_mesh"].name))
    if list(data.body.joint_names) != names:
        raise results.ResultFileError(data.body.path, "joint_names", "do not match the armature {!r}".format(
            armature.name))
    outfit = data.outfit
    for kind in ("clothing_points", "clothing_mesh"):
        obj = parts.get(kind)
        if obj is not None and len(obj.data.vertices) != len(outfit.points):
            raise results.ResultFileError(outfit.path, "points", "has {} points but {!r} has {}".format(
                len(outfit.points), obj.name, len(obj.data.vertices)))
    garment = parts.get("clothing_mesh")
    if garment is not None and (outfit.faces is None or len(outfit.faces) != len(garment.data.polygons)):
        raise results.ResultFileError(outfit.path, "faces", "do not match the garment mesh {!r}".format(
            garment.name))
    body = parts.get("body")
    if body is not None and len(body.data.vertices) != len(data.body.vertices):
        raise results.ResultFileError(data.body.path, "vertices", "has {} vertices but {!r} has {}".format(
            len(data.body.vertices), body.name, len(body.data.vertices)))


def _drape_motion(folder, with_motion):
    """The drape job's own motion (``drape --motion``: posed.npz with poses in the upright
    world), or None when not asked for or there is none."""
    path = os.path.join(folder, results.POSED_FILE)
    if not with_motion or not os.path.isfile(path):
        return None
    posed = results.read_posed(path, with_points=False)
    return posed if posed.has_motion else None


def apply_redrape(context, armature, drape_out_folder, *, with_motion=True):
    """Re-shape an imported result in place from a ``pointwear drape`` output folder (outfit.npz
    and body.npz for new betas): the armature's rest joints, the body's rest vertices and the
    clothing's rest points (and garment mesh) change; the objects, their names, point order,
    modifiers, materials and animation stay (root location keys follow the new pelvis). When the
    job also posed a motion (its posed.npz has poses) and ``with_motion``, that motion is keyed
    in a new action. Returns {"armature", "body", "clothing_points", "clothing_mesh", "action"
    (the new action or None)}."""
    data = results.read_result(drape_out_folder, with_posed=False)
    posed = _drape_motion(data.folder, with_motion)
    parts = pointwear_children(armature)
    _check_redrape(armature, parts, data)
    if posed is not None and posed.points.shape[1] != len(data.outfit.points):
        raise results.ResultFileError(posed.path, "points", "has {} points per frame but {} has {}".format(
            posed.points.shape[1], data.outfit.path, len(data.outfit.points)))
    if context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    names = data.body.joint_names
    armature_builder.update_rest(context, armature, data.body.joints)
    if "body" in parts:
        body_builder.update_body(parts["body"], data.body)
    colors = data.outfit.colors
    for kind in ("clothing_points", "clothing_mesh"):
        if kind in parts:
            clothing.replace_rest_points(parts[kind], data.outfit.points, data.outfit.weights, names, colors)
    motion_keys.shift_root_keys(armature, data.body.joints[0])
    _store_result_props(armature, data)
    armature["pointwear_redrape"] = data.folder
    action = None
    if posed is not None:
        motion = motion_io.subject_motion(posed, data.body.joints[0])
        action = _key(context, armature, motion, os.path.basename(data.folder) + " motion")["action"]
    context.view_layer.update()
    return {"armature": armature, "body": parts.get("body"),
            "clothing_points": parts.get("clothing_points"),
            "clothing_mesh": parts.get("clothing_mesh"), "action": action}
