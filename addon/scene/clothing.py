# SPDX-License-Identifier: GPL-3.0-or-later
"""The clothing: a skinned vertex-only mesh drawn as points, and the garment mesh when the drape
has faces.

Blender's point clouds cannot be grown from Python and take no Armature modifier, so the points
are a mesh with vertices only (vertex i = point i of outfit.npz and posed.npz), one vertex group
per joint, an Armature modifier, and then a Geometry Nodes modifier ("Pointwear Points": Mesh to
Points with a Radius input, Set Material) that turns the posed vertices into render points. The
colour travels as a POINT float-colour attribute, ``pointwear_color``, read by the material.
"""

import bpy
import numpy as np

from . import skin

COLOR_ATTRIBUTE = "pointwear_color"
NODE_GROUP_NAME = "Pointwear Points"
MATERIAL_NAME = "Pointwear Clothing"
DEFAULT_RADIUS = 0.004  # m
NEUTRAL_COLOR = (0.55, 0.55, 0.58)
# One display colour per garment index (top, bottom, ...) when the outfit has no fitted colours.
GARMENT_COLORS = ((0.80, 0.33, 0.26), (0.22, 0.38, 0.70), (0.85, 0.72, 0.30),
                  (0.35, 0.62, 0.40), (0.55, 0.35, 0.65), (0.30, 0.65, 0.70))


# -- colours ----------------------------------------------------------------------------------

def srgb_to_linear(rgb):
    """sRGB display values 0..1 -> scene-linear (Blender stores FLOAT_COLOR linear)."""
    c = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def point_colors(outfit):
    """(P, 3) sRGB colours: the fitted colours if any, else one colour per garment, else neutral."""
    count = len(outfit.points)
    if outfit.colors is not None:
        return np.asarray(outfit.colors, np.float64)
    if outfit.garment is not None:
        palette = np.array(GARMENT_COLORS)
        return palette[np.asarray(outfit.garment) % len(palette)]
    return np.tile(NEUTRAL_COLOR, (count, 1))


def set_color_attribute(mesh, colors_srgb):
    """Write (or overwrite) the ``pointwear_color`` POINT FLOAT_COLOR attribute (RGBA, linear)."""
    attr = mesh.color_attributes.get(COLOR_ATTRIBUTE)
    if attr is None:
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    rgba = np.ones((len(mesh.vertices), 4), np.float32)
    rgba[:, :3] = srgb_to_linear(colors_srgb)
    attr.data.foreach_set("color", rgba.ravel())
    mesh.color_attributes.active_color = attr
    return attr


# -- material and node group ---------------------------------------------------------------

def _principled_material(name, roughness):
    """A new node material with its Principled BSDF: (material, bsdf)."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5.0: node trees are opt-in
        mat.use_nodes = True
    bsdf = mat.node_tree.nodes.get("Principled BSDF") or mat.node_tree.nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.inputs["Roughness"].default_value = roughness
    return mat, bsdf


def clothing_material():
    """The shared clothing material: ``pointwear_color`` -> Principled Base Color."""
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None:
        return mat
    mat, bsdf = _principled_material(MATERIAL_NAME, 0.8)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = COLOR_ATTRIBUTE
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    mat.diffuse_color = NEUTRAL_COLOR + (1.0,)
    return mat


def points_node_group():
    """The shared "Pointwear Points" node group: Geometry, Radius -> Mesh to Points -> Set Material."""
    for group in bpy.data.node_groups:
        if ((group.name == NODE_GROUP_NAME or group.name.startswith(NODE_GROUP_NAME + "."))
                and group.bl_idname == "GeometryNodeTree" and _has_input(group, "Radius")):
            return group
    # Absent, or a user's group that took the name: make ours (Blender adds a .001 suffix).
    group = bpy.data.node_groups.new(NODE_GROUP_NAME, "GeometryNodeTree")
    face = group.interface
    face.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    radius = face.new_socket("Radius", in_out="INPUT", socket_type="NodeSocketFloat")
    radius.default_value = DEFAULT_RADIUS
    radius.min_value = 0.0
    radius.subtype = "DISTANCE"
    face.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    group_in = nodes.new("NodeGroupInput")
    group_out = nodes.new("NodeGroupOutput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    set_mat = nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = clothing_material()
    for i, node in enumerate((group_in, to_points, set_mat, group_out)):
        node.location = (250 * i, 0)
    links.new(group_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(group_in.outputs["Radius"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_mat.inputs["Geometry"])
    links.new(set_mat.outputs["Geometry"], group_out.inputs["Geometry"])
    return group


def _has_input(group, name):
    return any(getattr(item, "in_out", None) == "INPUT" and item.name == name for item in group.interface.items_tree)


def _socket_identifier(group, name):
    for item in group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError("node group {!r} has no input {!r}".format(group.name, name))


def add_points_modifier(obj, radius=DEFAULT_RADIUS):
    """Geometry Nodes modifier drawing the (already skinned) vertices as points of ``radius``."""
    group = points_node_group()
    mod = obj.modifiers.new("Pointwear Points", "NODES")
    mod.node_group = group
    mod[_socket_identifier(group, "Radius")] = float(radius)
    return mod


def points_modifier(obj):
    """The object's Geometry Nodes points modifier, or None."""
    for mod in obj.modifiers:
        if mod.type == "NODES" and mod.node_group is not None and mod.node_group.name.startswith(NODE_GROUP_NAME):
            return mod
    return None


def set_point_radius(obj, radius):
    mod = points_modifier(obj)
    mod[_socket_identifier(mod.node_group, "Radius")] = float(radius)
    obj.update_tag()


# -- objects ----------------------------------------------------------------------------------

def build_clothing_points(collection, outfit, armature, joint_names, name, radius=DEFAULT_RADIUS):
    """The skinned, point-drawn clothing from an :class:`~..io.results.OutfitData`.

    Modifier stack: Armature, then Geometry Nodes, so the points are drawn where the skinning put
    the vertices. Vertex order is the outfit's point order.
    """
    mesh = skin.new_mesh(name, outfit.points)
    set_color_attribute(mesh, point_colors(outfit))
    mesh.materials.append(clothing_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    skin.set_vertex_weights(obj, outfit.weights, joint_names)
    skin.skin_to_armature(obj, armature)
    add_points_modifier(obj, radius)
    return obj


def build_clothing_mesh(collection, outfit, armature, joint_names, name):
    """The garment surface (outfit faces over the same vertices as the points), skinned the same
    way; None when the outfit has no faces (a points-only drape)."""
    if outfit.faces is None or not len(outfit.faces):
        return None
    mesh = skin.new_mesh(name, outfit.points, outfit.faces)
    skin.shade_smooth(mesh)
    set_color_attribute(mesh, point_colors(outfit))
    mesh.materials.append(clothing_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    skin.set_vertex_weights(obj, outfit.weights, joint_names)
    skin.skin_to_armature(obj, armature)
    return obj


def textured_material(name, texture_path):
    """A material for a garment mesh: its albedo image (Image Texture on the UVs, sRGB) into the
    Principled BSDF's Base Color; without a texture, a plain neutral material."""
    mat, bsdf = _principled_material(name, 0.9)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    mat.diffuse_color = NEUTRAL_COLOR + (1.0,)
    if texture_path is None:
        bsdf.inputs["Base Color"].default_value = NEUTRAL_COLOR + (1.0,)
        return mat
    image = bpy.data.images.load(texture_path, check_existing=True)
    image.colorspace_settings.name = "sRGB"
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    tex.extension = "EXTEND"
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def build_garment_mesh(collection, block, armature, joint_names, name):
    """The garment mesh of a result's mesh block (:class:`~..io.results.MeshBlock`): its own
    vertices and faces, the UV layer "UVMap" per face corner, a material with the albedo texture,
    skinned to the armature with the block's weights."""
    mesh = skin.new_mesh(name, block.vertices, block.faces)
    skin.shade_smooth(mesh)
    if block.uv is not None:
        layer = mesh.uv_layers.new(name="UVMap")
        corners = np.asarray(block.faces, np.int64).ravel()      # new_mesh keeps the face order
        layer.data.foreach_set("uv", np.ascontiguousarray(block.uv[corners], np.float32).ravel())
    mesh.materials.append(textured_material(name, block.texture_path))
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    skin.set_vertex_weights(obj, block.weights, joint_names)
    skin.skin_to_armature(obj, armature)
    return obj


def replace_rest_points(obj, points, weights=None, joint_names=None, colors=None):
    """Re-drape in place: new rest positions for the same points (same count and order) and,
    optionally, their new skin weights and colours. The object, its modifiers, material and
    animation stay, so whatever an artist set up around the clothing survives a re-shape."""
    skin.set_rest_positions(obj.data, points)
    if weights is not None:
        skin.set_vertex_weights(obj, weights, joint_names)
    if colors is not None:
        set_color_attribute(obj.data, colors)
    obj.update_tag()
