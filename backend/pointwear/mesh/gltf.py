"""glTF 2.0 binary (.glb) writer for a skinned, textured garment, in numpy + struct.

What goes in: the garment mesh (rest pose, one primitive per garment sharing the vertex
attributes: POSITION, NORMAL, TEXCOORD_0, JOINTS_0 + WEIGHTS_0 = the top 4 skin weights,
renormalised), a material with the albedo texture (PNG embedded in the binary chunk), the
SMPL skeleton as a node tree (each joint a node at its rest offset from its parent, no rotation,
so a joint's glTF rotation is its SMPL rotation), the skin with inverse bind matrices and,
with a motion, one animation (per-joint rotation channels and the root's translation, linear).

SMPL space is Y-up, metres, the body facing +Z: glTF's own conventions, so nothing is turned.
UVs are flipped to glTF's top-left origin here. Shapes: V vertices, F faces, J joints, T frames.
"""
from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import numpy as np

from .result_mesh import GarmentMesh

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
_TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_COMPONENT = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UNSIGNED_BYTE, np.dtype(np.uint16): UNSIGNED_SHORT,
              np.dtype(np.uint32): UNSIGNED_INT}
GLB_MAGIC, GLB_VERSION, CHUNK_JSON, CHUNK_BIN = 0x46546C67, 2, 0x4E4F534A, 0x004E4942
MAX_INFLUENCES = 4


@dataclass
class Skeleton:
    """The SMPL skeleton in the rest pose of the garment's body."""
    joints: np.ndarray          # (J, 3) rest positions
    parents: np.ndarray         # (J,) parent index, -1 for the root, parents[j] < j
    names: list[str]


@dataclass
class Animation:
    """Joint rotations per frame and the root joint's position per frame."""
    rotations: np.ndarray       # (T, J, 4) unit quaternions, x y z w
    root_position: np.ndarray   # (T, 3)
    fps: float


def top_influences(weights: np.ndarray, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """(V, k) joint indices (uint8/uint16; distinct among the used ones, 0 where the weight is 0)
    and float32 weights summing to 1 in float32 arithmetic, from dense (V, J) skin weights."""
    w = np.clip(np.asarray(weights, np.float64), 0, None)
    idx = np.argsort(-w, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(w, idx, 1)
    total = top.sum(1, keepdims=True)
    top = np.where(total > 0, top / np.where(total > 0, total, 1), np.eye(1, k))
    top = top.astype(np.float32)
    top[:, 0] = np.float32(1) - top[:, 1:].sum(1, dtype=np.float32)   # exact unit sum in float32
    idx = np.where(top > 0, idx, 0)                 # glTF: an unused influence names joint 0
    dtype = np.uint8 if weights.shape[1] <= 256 else np.uint16
    return idx.astype(dtype), top


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float32 unit normals (remesh.vertex_normals_np); vertices in no face get +Y."""
    from .remesh import vertex_normals_np
    vn = vertex_normals_np(np.asarray(vertices, np.float64), np.asarray(faces))
    unit = np.linalg.norm(vn, axis=1) > 0.5
    return np.where(unit[:, None], vn, [0.0, 1.0, 0.0]).astype(np.float32)


class _Builder:
    """Accumulates the binary chunk, buffer views and accessors."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        entry = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.blob.extend(data)
        self.views.append(entry)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, target: int | None = None, bounds: bool = False,
                 normalized: bool = False) -> int:
        array = np.ascontiguousarray(array)
        width = 1 if array.ndim == 1 else int(np.prod(array.shape[1:]))
        flat = array.reshape(len(array), width)
        entry = {"bufferView": self.view(flat.tobytes(), target), "componentType": _COMPONENT[array.dtype],
                 "count": int(len(array)), "type": _TYPES[width]}
        if normalized:
            entry["normalized"] = True
        if bounds:
            cast = float if array.dtype.kind == "f" else int
            entry["min"] = [cast(x) for x in flat.min(0)]
            entry["max"] = [cast(x) for x in flat.max(0)]
        self.accessors.append(entry)
        return len(self.accessors) - 1


def _png(texture: np.ndarray) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(texture, np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def glb_bytes(mesh: GarmentMesh, skeleton: Skeleton, animation: Animation | None = None,
              garment_names: list[str] | None = None, generator: str = "Pointwear") -> bytes:
    """The whole .glb file for a skinned garment (and its animation)."""
    J = len(skeleton.joints)
    if mesh.weights.shape[1] != J:
        raise ValueError(f"the mesh has {mesh.weights.shape[1]} skin weight columns but the skeleton {J} joints")
    b = _Builder()
    verts = np.ascontiguousarray(mesh.vertices, np.float32)
    attributes = {"POSITION": b.accessor(verts, ARRAY_BUFFER, bounds=True),
                  "NORMAL": b.accessor(vertex_normals(verts, mesh.faces), ARRAY_BUFFER)}
    if mesh.uv is not None:
        uv = np.stack([mesh.uv[:, 0], 1.0 - mesh.uv[:, 1]], 1).astype(np.float32)
        attributes["TEXCOORD_0"] = b.accessor(uv, ARRAY_BUFFER)
    joints, weights = top_influences(mesh.weights)
    attributes["JOINTS_0"] = b.accessor(joints, ARRAY_BUFFER)
    attributes["WEIGHTS_0"] = b.accessor(weights, ARRAY_BUFFER)

    index_type = np.uint16 if len(verts) < 65535 else np.uint32
    face_garment = mesh.garment[mesh.faces[:, 0]]
    primitives = []
    for g in np.unique(face_garment):
        idx = np.ascontiguousarray(mesh.faces[face_garment == g], index_type).reshape(-1)
        primitives.append({"attributes": attributes, "indices": b.accessor(idx, ELEMENT_ARRAY_BUFFER, bounds=True),
                           "material": 0, "mode": 4})

    doc: dict = {"asset": {"version": "2.0", "generator": generator}, "scene": 0}
    material = {"name": "garment", "doubleSided": True,
                "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.9}}
    if mesh.texture is not None and mesh.uv is not None:
        doc["images"] = [{"bufferView": b.view(_png(mesh.texture)), "mimeType": "image/png", "name": "albedo"}]
        doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        doc["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0}
    else:
        material["pbrMetallicRoughness"]["baseColorFactor"] = [0.6, 0.6, 0.6, 1.0]
    doc["materials"] = [material]
    names = garment_names or []
    doc["meshes"] = [{"name": "+".join(names) if names else "garment", "primitives": primitives}]

    # nodes: 0 the skinned mesh (scene root, no transform), 1.. the joints
    nodes = [{"name": "garment", "mesh": 0, "skin": 0}]
    rest = np.asarray(skeleton.joints, np.float64)
    for j in range(J):
        p = int(skeleton.parents[j])
        offset = rest[j] - (rest[p] if p >= 0 else 0.0)
        nodes.append({"name": str(skeleton.names[j]), "translation": [float(x) for x in offset]})
    for j in range(J):
        kids = [1 + c for c in range(J) if int(skeleton.parents[c]) == j]
        if kids:
            nodes[1 + j]["children"] = kids
    roots = [1 + j for j in range(J) if int(skeleton.parents[j]) < 0]
    doc["nodes"] = nodes
    doc["scenes"] = [{"name": "Scene", "nodes": [0] + roots}]
    ibm = np.tile(np.eye(4, dtype=np.float32), (J, 1, 1))
    ibm[:, :3, 3] = -rest
    ibm = np.ascontiguousarray(ibm.transpose(0, 2, 1)).reshape(J, 16)      # column-major
    doc["skins"] = [{"name": "smpl", "joints": [1 + j for j in range(J)], "skeleton": roots[0],
                     "inverseBindMatrices": b.accessor(ibm)}]
    if animation is not None:
        doc["animations"] = [_animation(b, animation, roots[0], J)]
    doc["accessors"], doc["bufferViews"] = b.accessors, b.views
    blob = bytes(b.blob) + b"\0" * (-len(b.blob) % 4)
    doc["buffers"] = [{"byteLength": len(blob)}]
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([struct.pack("<III", GLB_MAGIC, GLB_VERSION, total), struct.pack("<II", len(text), CHUNK_JSON),
                     text, struct.pack("<II", len(blob), CHUNK_BIN), blob])


def _animation(b: _Builder, anim: Animation, root_node: int, J: int) -> dict:
    T = len(anim.rotations)
    times = (np.arange(T, dtype=np.float64) / float(anim.fps)).astype(np.float32)
    t_acc = b.accessor(times, bounds=True)
    quats = continuous_quaternions(anim.rotations)
    samplers, channels = [], []
    for j in range(J):
        samplers.append({"input": t_acc, "output": b.accessor(np.ascontiguousarray(quats[:, j])),
                         "interpolation": "LINEAR"})
        channels.append({"sampler": j, "target": {"node": 1 + j, "path": "rotation"}})
    samplers.append({"input": t_acc, "output": b.accessor(np.ascontiguousarray(anim.root_position, np.float32)),
                     "interpolation": "LINEAR"})
    channels.append({"sampler": J, "target": {"node": root_node, "path": "translation"}})
    return {"name": "motion", "samplers": samplers, "channels": channels}


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
    """(T, J, 4) float32 unit quaternions with the sign of each chosen so that consecutive frames
    lie in the same hemisphere (linear interpolation then takes the short way)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    dots = (q[1:] * q[:-1]).sum(-1)
    flips = np.cumsum(dots < 0, axis=0) % 2
    sign = np.concatenate([np.ones((1, q.shape[1])), 1 - 2 * flips], 0)
    return (q * sign[..., None]).astype(np.float32)


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a .glb; ValueError when it is not one."""
    if len(data) < 20:
        raise ValueError("too short for a glTF binary")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION or total != len(data):
        raise ValueError("not a glTF 2.0 binary (bad header)")
    length, kind = struct.unpack_from("<II", data, 12)
    if kind != CHUNK_JSON or 20 + length > total:
        raise ValueError("the first chunk is not JSON")
    doc = json.loads(data[20:20 + length])
    blob = b""
    if 20 + length + 8 <= total:
        blen, bkind = struct.unpack_from("<II", data, 20 + length)
        if bkind != CHUNK_BIN:
            raise ValueError("the second chunk is not BIN")
        blob = data[28 + length:28 + length + blen]
    return doc, blob


def accessor_array(doc: dict, blob: bytes, index: int) -> np.ndarray:
    """The values of one accessor of a document from `read_glb` (tightly packed views)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {v: k for k, v in _COMPONENT.items()}[acc["componentType"]]
    width = {v: k for k, v in _TYPES.items()}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(blob, dtype, acc["count"] * width, start)
    return arr.reshape(acc["count"], width) if width > 1 else arr
