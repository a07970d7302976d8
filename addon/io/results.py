# SPDX-License-Identifier: GPL-3.0-or-later
"""Readers for the backend's result files: outfit.npz, body.npz and posed.npz.

Each reader checks what the scene builders rely on (keys, shapes, dtypes, finite values, index
ranges, agreement between arrays) and raises :class:`ResultFileError` naming the file, the key
and what is wrong, so a user can tell a truncated download from a mismatched result folder
before anything is built in the scene. Arrays come back as contiguous float32/int32 arrays in
SMPL space (Y-up, metres); nothing here converts to Blender's axes.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..link import arrays, protocol

OUTFIT_FILE = protocol.OUTFIT_NPZ
BODY_FILE = protocol.BODY_NPZ
POSED_FILE = protocol.POSED_NPZ
RESULT_JSON = protocol.RESULT_JSON


class ResultFileError(ValueError):
    """A result file is missing, unreadable or inconsistent. ``str()`` reads "FILE: KEY: what"."""

    def __init__(self, file, key, message):
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(": ".join(p for p in (self.file, key, message) if p))


@dataclass
class OutfitData:
    """outfit.npz: the rest-pose clothing for the subject's betas (SMPL space)."""

    path: str
    points: np.ndarray           # (P, 3) float32
    weights: np.ndarray          # (P, J) float32
    code: np.ndarray             # (D,) float32
    drape: str
    betas: np.ndarray            # (B,) float32
    params: object = None        # decoded JSON, or None
    body: str = "default"
    gender: str = "neutral"
    faces: np.ndarray = None     # (F, 3) int32, or None: points only
    garment: np.ndarray = None   # (P,) int32 garment index per point, or None
    colors: np.ndarray = None    # (P, 3) float32 in 0..1, or None
    garment_names: list = None   # names of the garments `garment` indexes (inner layer first), or None


@dataclass
class BodyData:
    """body.npz: the rest-pose body for the outfit's betas (SMPL space)."""

    path: str
    vertices: np.ndarray         # (V, 3) float32
    faces: np.ndarray            # (F, 3) int32
    joints: np.ndarray           # (J, 3) float32
    parents: np.ndarray          # (J,) int32, -1 for the root, parents[i] < i
    joint_names: tuple           # J names
    weights: np.ndarray          # (V, J) float32
    betas: np.ndarray            # (B,) float32


@dataclass
class PosedData:
    """posed.npz: the clothing per frame and what is needed to replay it.

    A fit result is in the subject's OpenCV camera space and carries the camera and
    ``world_from_camera``; a ``pointwear drape --motion`` result is already in the upright world
    (``world_from_camera`` then defaults to the identity and there is no camera).
    """

    path: str
    points: object                           # (N, P, 3) float32, or an ArrayInfo if not read
    frames: np.ndarray                       # (N,) int32 subject frame numbers
    global_orient: np.ndarray = None         # (N, 3) float64
    body_pose: np.ndarray = None             # (N, 69) float64
    transl: np.ndarray = None                # (N, 3) float64
    betas: np.ndarray = None                 # (B,) float32
    K: np.ndarray = None                     # (N, 3, 3) float64
    image_size: tuple = None                 # (H, W)
    fps: float = 30.0
    world_from_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    camera_space: bool = False               # True when the file had world_from_camera

    @property
    def num_frames(self):
        return int(self.points.shape[0])

    @property
    def has_motion(self):
        return self.global_orient is not None


# -- low-level checks -------------------------------------------------------------------------

def load_npz(path, skip=()):
    """The arrays of an npz as a dict (no pickles); ResultFileError if missing or unreadable.

    Keys in ``skip`` are not read: they map to an :class:`ArrayInfo` (shape and dtype from the
    .npy header), for big arrays whose shape matters but whose values are not needed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ResultFileError(path, None, "file not found")
    try:   # bounded: every array's size is checked from its header before it is read
        headers = arrays.npz_headers(path)
        out = arrays.load_npz(path, keys=[key for key in headers if key not in skip])
    except arrays.ArrayFileError as exc:
        raise ResultFileError(path, exc.field, exc.message) from None
    for key in skip:
        if key in headers:
            out[key] = ArrayInfo(*headers[key])
    return out


@dataclass
class ArrayInfo:
    """Shape and dtype of an array left unread in its file."""

    shape: tuple
    dtype: np.dtype

    @property
    def ndim(self):
        return len(self.shape)


def _require(data, path, key):
    if key not in data:
        raise ResultFileError(path, key, "missing key; the file has {}".format(sorted(data)))
    return data[key]


def _array(data, path, key, shape, kind="float", optional=False):
    """data[key] checked against ``shape`` (ints fix a size, None leaves it free) and ``kind``.

    Returns float32 (kind "float"), int32 (kind "int") or float64 (kind "float64") arrays, C
    contiguous; None for a missing optional key.
    """
    if key not in data:
        if optional:
            return None
        _require(data, path, key)
    arr = data[key] if isinstance(data[key], ArrayInfo) else np.asarray(data[key])
    if arr.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, arr.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ResultFileError(path, key, "expected shape {}, got {}".format(want, arr.shape))
    if isinstance(arr, ArrayInfo):  # left unread: shape and dtype checked, values not
        if arr.dtype.kind not in ("iu" if kind == "int" else "fiu"):
            raise ResultFileError(path, key, "expected numbers, got {}".format(arr.dtype))
        return arr
    if kind == "int":
        if arr.dtype.kind not in "iu":
            raise ResultFileError(path, key, "expected integers, got {}".format(arr.dtype))
        return np.ascontiguousarray(arr, np.int32)
    if arr.dtype.kind not in "fiu":
        raise ResultFileError(path, key, "expected numbers, got {}".format(arr.dtype))
    if not np.isfinite(arr).all():
        raise ResultFileError(path, key, "contains NaN or inf")
    return np.ascontiguousarray(arr, np.float64 if kind == "float64" else np.float32)


def _string(data, path, key, default):
    if key not in data:
        return default
    arr = np.asarray(data[key])
    if arr.dtype.kind not in "US" or arr.size != 1:
        raise ResultFileError(path, key, "expected a string, got {} {}".format(arr.dtype, arr.shape))
    value = arr.reshape(()).item()
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_faces(faces, count, path, key="faces"):
    if faces is not None and faces.size and (faces.min() < 0 or faces.max() >= count):
        raise ResultFileError(path, key, "vertex index out of range 0..{} (got {}..{})".format(
            count - 1, int(faces.min()), int(faces.max())))


def _check_weights(weights, path, key="weights"):
    if (weights < -1e-6).any():
        raise ResultFileError(path, key, "negative skin weights")
    sums = weights.sum(axis=1)
    if (sums <= 1e-6).any():
        raise ResultFileError(path, key, "{} rows have no weight (every point must follow some joint)".format(
            int((sums <= 1e-6).sum())))


# -- readers ----------------------------------------------------------------------------------

def read_outfit(path):
    """outfit.npz -> :class:`OutfitData`."""
    path = os.fspath(path)
    data = load_npz(path)
    points = _array(data, path, "points", (None, 3))
    count = len(points)
    weights = _array(data, path, "weights", (None, None))
    if weights.shape[0] != count:
        raise ResultFileError(path, "weights", "has {} rows but points has {} points".format(
            weights.shape[0], count))
    _check_weights(weights, path)
    faces = _array(data, path, "faces", (None, 3), "int", optional=True)
    _check_faces(faces, count, path)
    garment = _array(data, path, "garment", (count,), "int", optional=True)
    colors = _array(data, path, "colors", (count, 3), optional=True)
    if colors is not None and (colors.min() < -1e-3 or colors.max() > 1 + 1e-3):
        raise ResultFileError(path, "colors", "values outside 0..1 ({:.3g}..{:.3g})".format(
            colors.min(), colors.max()))
    params = _string(data, path, "params", "null")
    try:
        params = json.loads(params)
    except ValueError as exc:
        raise ResultFileError(path, "params", "not JSON ({})".format(exc)) from exc
    garment_names = None
    if "garment_names" in data:
        try:
            garment_names = json.loads(_string(data, path, "garment_names", "[]"))
        except ValueError as exc:
            raise ResultFileError(path, "garment_names", "not JSON ({})".format(exc)) from exc
        if not (isinstance(garment_names, list) and all(isinstance(n, str) for n in garment_names)):
            raise ResultFileError(path, "garment_names", "must be a JSON list of names")
        if garment is not None and len(garment) and int(garment.max()) >= len(garment_names):
            raise ResultFileError(path, "garment", "indexes garment {} but garment_names has {}".format(
                int(garment.max()), len(garment_names)))
    elif isinstance(params, list):     # results before garment_names: the names in params
        garment_names = [str(g.get("name", g.get("kind", "?"))) for g in params if isinstance(g, dict)]
    code = np.asarray(_require(data, path, "code"))
    code = _array({"code": code.reshape(-1)}, path, "code", (None,))  # any shape, flattened
    return OutfitData(
        path=path, points=points, weights=weights, code=code,
        drape=_string(data, path, "drape", ""), betas=_array(data, path, "betas", (None,)),
        params=params, body=_string(data, path, "body", "default"),
        gender=_string(data, path, "gender", "neutral"), faces=faces, garment=garment,
        colors=None if colors is None else np.clip(colors, 0.0, 1.0), garment_names=garment_names)


def read_body(path):
    """body.npz -> :class:`BodyData`."""
    path = os.fspath(path)
    data = load_npz(path)
    vertices = _array(data, path, "vertices", (None, 3))
    faces = _array(data, path, "faces", (None, 3), "int")
    _check_faces(faces, len(vertices), path)
    joints = _array(data, path, "joints", (None, 3))
    count = len(joints)
    parents = _array(data, path, "parents", (count,), "int")
    if count == 0 or parents[0] != -1:
        raise ResultFileError(path, "parents", "the first joint must be the root (parent -1)")
    bad = [i for i in range(1, count) if not 0 <= parents[i] < i]
    if bad:
        raise ResultFileError(path, "parents", "joint {} has parent {}: parents must come before "
                              "their children".format(bad[0], int(parents[bad[0]])))
    names = np.asarray(_require(data, path, "joint_names"))
    if names.dtype.kind not in "US" or names.shape != (count,):
        raise ResultFileError(path, "joint_names", "expected {} strings, got {} {}".format(
            count, names.dtype, names.shape))
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(set(names)) != count or not all(names):
        raise ResultFileError(path, "joint_names", "names must be unique and non-empty")
    weights = _array(data, path, "weights", (len(vertices), count))
    _check_weights(weights, path)
    return BodyData(path=path, vertices=vertices, faces=faces, joints=joints, parents=parents,
                    joint_names=names, weights=weights,
                    betas=_array(data, path, "betas", (None,)))


def _rigid(matrix, path, key):
    """Check a 4x4 rigid transform (rotation + translation); the camera maths relies on it."""
    rot = matrix[:3, :3]
    if (np.abs(matrix[3] - [0, 0, 0, 1]).max() > 1e-6
            or np.abs(rot @ rot.T - np.eye(3)).max() > 1e-4 or np.linalg.det(rot) < 0):
        raise ResultFileError(path, key, "expected a rigid transform (rotation and translation)")


def read_posed(path, with_points=True):
    """posed.npz -> :class:`PosedData`.

    ``points`` is required; with ``with_points=False`` only its shape is read (Blender poses the
    clothing itself and never needs the backend's N x P x 3 copy, which can be hundreds of MB).
    The subject's poses (``global_orient``, ``body_pose``, ``transl``) come together or not at
    all. With ``world_from_camera`` the file is in camera space and ``K`` and ``image_size`` are
    required too.
    """
    path = os.fspath(path)
    data = load_npz(path, skip=() if with_points else ("points",))
    points = _array(data, path, "points", (None, None, 3))
    count = int(points.shape[0])
    frames = _array(data, path, "frames", (count,), "int", optional=True)
    out = PosedData(path=path, points=points,
                    frames=np.arange(count, dtype=np.int32) if frames is None else frames)
    if frames is not None and count > 1 and (np.diff(frames) <= 0).any():
        raise ResultFileError(path, "frames", "frame numbers must increase")
    motion_keys = ("global_orient", "body_pose", "transl")
    present = [k for k in motion_keys if k in data]
    if present:
        missing = [k for k in motion_keys if k not in data]
        if missing:
            raise ResultFileError(path, missing[0], "missing key (needed with {})".format(present[0]))
        out.global_orient = _array(data, path, "global_orient", (count, 3), "float64")
        out.body_pose = _array(data, path, "body_pose", (count, 69), "float64")
        out.transl = _array(data, path, "transl", (count, 3), "float64")
    out.betas = _array(data, path, "betas", (None,), optional=True)
    if "fps" in data:
        fps = np.asarray(data["fps"])
        if fps.size != 1 or fps.dtype.kind not in "fiu" or not np.isfinite(fps).all() or float(fps) <= 0:
            raise ResultFileError(path, "fps", "expected one positive number, got {!r}".format(fps))
        out.fps = float(fps.reshape(()))
    if "world_from_camera" in data:
        out.world_from_camera = _array(data, path, "world_from_camera", (4, 4), "float64")
        _rigid(out.world_from_camera, path, "world_from_camera")
        out.camera_space = True
        out.K = _array(data, path, "K", (None, 3, 3), "float64")
        if len(out.K) not in (1, count):
            raise ResultFileError(path, "K", "has {} matrices for {} frames".format(len(out.K), count))
        if (out.K[:, 0, 0] <= 0).any() or (out.K[:, 1, 1] <= 0).any():
            raise ResultFileError(path, "K", "focal lengths must be positive")
        size = _array(data, path, "image_size", (2,), "int")
        if (size <= 0).any():
            raise ResultFileError(path, "image_size", "expected (H, W) > 0, got {}".format(size.tolist()))
        out.image_size = (int(size[0]), int(size[1]))
    return out


@dataclass
class MeshBlock:
    """The garment mesh block of outfit.npz (``mesh_*``, see backend pointwear.mesh.result_mesh):
    rest pose, SMPL space; vertices are split along UV seams."""

    path: str
    vertices: np.ndarray         # (V, 3) float32
    faces: np.ndarray            # (F, 3) int32
    weights: np.ndarray          # (V, J) float32
    garment: np.ndarray          # (V,) int32
    uv: np.ndarray = None        # (V, 2) float32, bottom-left origin, or None
    texture_path: str = None     # the albedo PNG inside the result folder, or None


def texture_file(folder):
    """The albedo texture named by result.json's "texture" (else texture.png if present), or None.
    A name that leaves the result folder is an error."""
    folder = os.path.abspath(os.fspath(folder))
    meta = os.path.join(folder, RESULT_JSON)
    name = None
    if os.path.isfile(meta):
        try:
            with open(meta, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ResultFileError(meta, None, "not readable JSON ({})".format(exc)) from None
        name = doc.get("texture") if isinstance(doc, dict) else None
    if name is None and os.path.isfile(os.path.join(folder, protocol.TEXTURE_PNG)):
        name = protocol.TEXTURE_PNG
    if name is None:
        return None
    path = os.path.realpath(os.path.join(folder, str(name)))
    if os.path.dirname(path) != os.path.realpath(folder):
        raise ResultFileError(meta, "texture", "{!r} is not a file inside the result folder".format(name))
    if not os.path.isfile(path):
        raise ResultFileError(path, None, "texture file not found")
    return path


def read_mesh_block(folder, data=None):
    """The result's :class:`MeshBlock`, or None when outfit.npz has no ``mesh_vertices``."""
    folder = os.path.abspath(os.fspath(folder))
    path = os.path.join(folder, OUTFIT_FILE)
    data = load_npz(path) if data is None else data
    if "mesh_vertices" not in data:
        return None
    vertices = _array(data, path, "mesh_vertices", (None, 3))
    count = len(vertices)
    faces = _array(data, path, "mesh_faces", (None, 3), "int")
    _check_faces(faces, count, path, "mesh_faces")
    weights = _array(data, path, "mesh_weights", (count, None))
    _check_weights(weights, path, "mesh_weights")
    garment = _array(data, path, "mesh_garment", (count,), "int")
    uv = _array(data, path, "mesh_uv", (count, 2), optional=True)
    return MeshBlock(path=path, vertices=vertices, faces=faces, weights=weights, garment=garment, uv=uv,
                     texture_path=texture_file(folder) if uv is not None else None)


@dataclass
class ResultFolder:
    """The three files of a fit result, read and checked against each other (and the garment
    mesh block of outfit.npz, when it has one)."""

    folder: str
    outfit: OutfitData
    body: BodyData
    posed: PosedData = None
    mesh: MeshBlock = None


def check_outfit_matches_body(outfit, body):
    """The outfit's skin weights must name the body's joints (same count, same order)."""
    if outfit.weights.shape[1] != len(body.joints):
        raise ResultFileError(outfit.path, "weights", "has {} joint columns but {} has {} joints".format(
            outfit.weights.shape[1], body.path, len(body.joints)))


def read_result(folder, with_posed=True, posed_points=False):
    """A result folder -> :class:`ResultFolder`.

    posed.npz is read when it exists (required with ``with_posed``; "if present" with None;
    never with False), its points array only with ``posed_points``.
    """
    folder = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(folder):
        raise ResultFileError(folder, None, "not a folder")
    outfit = read_outfit(os.path.join(folder, OUTFIT_FILE))
    body = read_body(os.path.join(folder, BODY_FILE))
    check_outfit_matches_body(outfit, body)
    mesh = read_mesh_block(folder)
    if mesh is not None and mesh.weights.shape[1] != len(body.joints):
        raise ResultFileError(mesh.path, "mesh_weights", "has {} joint columns but {} has {} joints".format(
            mesh.weights.shape[1], body.path, len(body.joints)))
    posed = None
    posed_path = os.path.join(folder, POSED_FILE)
    if with_posed or (with_posed is None and os.path.isfile(posed_path)):
        posed = read_posed(posed_path, with_points=posed_points)
        if posed.points.shape[1] != len(outfit.points):
            raise ResultFileError(posed.path, "points", "has {} points per frame but {} has {}".format(
                posed.points.shape[1], outfit.path, len(outfit.points)))
        if posed.betas is not None and (posed.betas.shape != body.betas.shape
                                        or np.abs(posed.betas - body.betas).max() > 1e-4):
            raise ResultFileError(posed.path, "betas", "differ from the betas of {}: the poses were "
                                  "fitted for another body".format(body.path))
    return ResultFolder(folder=folder, outfit=outfit, body=body, posed=posed, mesh=mesh)
