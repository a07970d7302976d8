# SPDX-License-Identifier: GPL-3.0-or-later
"""Meshes skinned to the SMPL armature: bulk mesh creation, vertex-group weights, the Armature
modifier. Shared by the body, the clothing points and the garment mesh."""

import bpy
import numpy as np

from ..io import smpl_math

# Skin weights at or below this are left out of the vertex groups (they deform nothing).
MIN_WEIGHT = 1e-6


def new_mesh(name, points_smpl, faces=None):
    """A mesh with the given SMPL-space vertices (converted to Blender) and triangles, in bulk.

    ``foreach_set`` on pre-sized arrays instead of ``from_pydata``: the same result, without
    building Python lists for every vertex (10k vertices + faces take a few milliseconds).
    """
    mesh = bpy.data.meshes.new(name)
    verts = smpl_math.to_blender(points_smpl).astype(np.float32)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.ravel())
    if faces is not None and len(faces):
        faces = np.asarray(faces, np.int32)
        mesh.loops.add(faces.size)
        mesh.polygons.add(len(faces))
        mesh.loops.foreach_set("vertex_index", faces.ravel())
        mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, faces.shape[1], dtype=np.int32))
    mesh.update(calc_edges=True)
    return mesh


def set_rest_positions(mesh, points_smpl):
    """Overwrite the vertex positions (same count, same order) with SMPL-space points."""
    points = np.asarray(points_smpl)
    if points.shape != (len(mesh.vertices), 3):
        raise ValueError("mesh {!r} has {} vertices, got points of shape {}".format(
            mesh.name, len(mesh.vertices), points.shape))
    mesh.vertices.foreach_set("co", smpl_math.to_blender(points).astype(np.float32).ravel())
    mesh.update()


def shade_smooth(mesh):
    if hasattr(mesh, "shade_smooth"):  # Blender 4.1+
        mesh.shade_smooth()
    else:
        mesh.polygons.foreach_set("use_smooth", np.ones(len(mesh.polygons), bool))


def weight_runs(column, quantum=None):
    """Group one joint's weights into runs of equal value: yields (indices, weight).

    Vertex groups have no bulk setter; ``VertexGroup.add(indices, weight, 'REPLACE')`` takes one
    weight per call, so the fewer distinct weights, the fewer calls. With ``quantum`` (e.g.
    1/4096) weights are first rounded to multiples of it: at most 1/quantum distinct values per
    joint, each weight off by at most quantum/2 (weights below quantum/2 drop out). Blender
    divides by the weight sum, so a point with n weights has normalised weights off by at most
    about n * quantum in total, and since they still sum to 1 its posed position moves by at most
    n * quantum * D, D the largest distance between where its joints alone would put it: for
    n <= 4 and quantum = 1/4096, D = 0.25 m gives 0.25 mm. Off by default (exact weights).
    """
    column = np.asarray(column, np.float32)
    idx = np.flatnonzero(column > MIN_WEIGHT)
    values = column[idx]
    if quantum:
        values = (np.round(values / quantum) * quantum).astype(np.float32)
        keep = values > 0
        idx, values = idx[keep], values[keep]
    if not len(idx):
        return
    order = np.argsort(values, kind="stable")
    idx, values = idx[order], values[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(values)) + 1, [len(values)]])
    for a, b in zip(starts[:-1], starts[1:]):
        yield idx[a:b].tolist(), float(values[a])


def set_vertex_weights(obj, weights, names, quantum=None):
    """One vertex group per joint name holding that joint's weights (existing groups are reset).

    Returns the number of ``VertexGroup.add`` calls made (what the time depends on).
    """
    weights = np.asarray(weights, np.float32)
    count = len(obj.data.vertices)
    if weights.shape != (count, len(names)):
        raise ValueError("{!r}: weights {} do not match {} vertices x {} joints".format(
            obj.name, weights.shape, count, len(names)))
    calls = 0
    everything = None
    for j, name in enumerate(names):
        group = obj.vertex_groups.get(name)
        if group is None:
            group = obj.vertex_groups.new(name=name)
        else:
            everything = everything or list(range(count))
            group.remove(everything)
        for indices, weight in weight_runs(weights[:, j], quantum):
            group.add(indices, weight, "REPLACE")
            calls += 1
    return calls


def skin_to_armature(obj, armature):
    """Parent ``obj`` to ``armature`` (plain object parent) and deform it with an Armature modifier.

    The parent keeps the clothing with the rig when an artist moves the armature object; the
    modifier (vertex groups only, no envelopes) does the skinning. Placed first in the stack so
    later modifiers (the points' Geometry Nodes) see the posed vertices.
    """
    obj.parent = armature
    obj.parent_type = "OBJECT"
    obj.matrix_parent_inverse.identity()
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = armature
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False
    return mod
