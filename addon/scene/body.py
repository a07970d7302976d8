# SPDX-License-Identifier: GPL-3.0-or-later
"""The SMPL body mesh, skinned to the armature (vertex group per joint + Armature modifier)."""

import bpy

from . import skin

BODY_COLOR = (0.62, 0.62, 0.66, 1.0)


def body_material(name="Pointwear Body"):
    """A plain grey material, shared by every imported body (the clothing is what matters)."""
    mat = bpy.data.materials.get(name)
    if mat is None:
        mat = bpy.data.materials.new(name)
        mat.diffuse_color = BODY_COLOR
        if mat.node_tree is None:  # Blender < 5.0: node trees are opt-in
            mat.use_nodes = True
        bsdf = mat.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = BODY_COLOR
            bsdf.inputs["Roughness"].default_value = 0.7
    return mat


def build_body(collection, body, armature, name):
    """A smooth-shaded body mesh from a :class:`~..io.results.BodyData`, skinned to ``armature``."""
    mesh = skin.new_mesh(name, body.vertices, body.faces)
    skin.shade_smooth(mesh)
    mesh.materials.append(body_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    skin.set_vertex_weights(obj, body.weights, body.joint_names)
    skin.skin_to_armature(obj, armature)
    return obj


def update_body(obj, body):
    """Re-shape the body in place: new rest vertices (same count and order) and weights."""
    skin.set_rest_positions(obj.data, body.vertices)
    skin.set_vertex_weights(obj, body.weights, body.joint_names)
