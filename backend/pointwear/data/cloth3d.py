"""Reader for the CLOTH3D layout (Bertiche et al., 2020), for training the neural drape.

One folder per sequence:

    <sequence>/info.mat          SMPL and outfit metadata: `poses` (72, N) axis-angle per frame,
                                 `shape` (10,) betas, `gender` (0 female, 1 male), `trans` (3, N)
                                 root-joint location per frame, `zrot` (world rotation about z),
                                 `outfit` (a struct with one field per garment: fabric, texture...)
    <sequence>/<Garment>.obj     the garment's rest mesh (vertices, faces, UVs; quads allowed)
    <sequence>/<Garment>.pc16    per-frame vertex positions: a PC2 point cache ("POINTCACHE2\\0",
                                 version, nPoints, startFrame, sampleRate, nSamples; then
                                 nSamples x nPoints x 3 float16), relative to the SMPL root joint

The garment vertices are posed like the body (global orientation included) with the root joint at
the origin; `zrot` and `trans` only place the sequence in its world, so they are not needed here.
In SMPL's own frame (smplx with transl = 0) the root joint sits at its rest position J0(betas),
so `points + J0` are the garment points on `body(betas, global_orient, body_pose)`.

`read_sequence` validates a folder and gives a `Cloth3DSequence`; `posed_samples` gives garment
points per frame with the SMPL parameters; `rest_pose_samples` unposes them (inverse skinning
with the weights of the nearest posed body vertices) into the rest pose for the sequence's betas,
which is what `scripts/train_drape.py --cloth3d DIR` trains on. CLOTH3D's betas are SMPL's: train
with the SMPL body CLOTH3D used (`--body`), not the free default body, for them to mean the same.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

PC2_SIGNATURE = b"POINTCACHE2\0"
PC2_HEADER = "<12siiffi"            # signature, version, points, start frame, sample rate, samples
PC2_HEADER_SIZE = struct.calcsize(PC2_HEADER)
REQUIRED_INFO = ("poses", "shape", "gender", "trans", "outfit")


# -- files ----------------------------------------------------------------------------------------
def read_pc16(path: str | Path, frames: list[int] | np.ndarray | None = None) -> np.ndarray:
    """(T, N, 3) float32 vertex positions of a .pc16 (float16) or .pc2 (float32) point cache,
    all frames or only `frames`. Raises InputError naming the file when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError("point cache missing", file=path)
    dtype = np.float16 if path.suffix.lower() == ".pc16" else np.float32
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(PC2_HEADER_SIZE)
        if len(head) < PC2_HEADER_SIZE:
            raise InputError(f"point cache header truncated ({size} bytes)", file=path)
        sign, _version, points, _start, _rate, samples = struct.unpack(PC2_HEADER, head)
        if sign != PC2_SIGNATURE:
            raise InputError(f"not a PC2 point cache (signature {sign!r})", file=path)
        if points <= 0 or samples <= 0:
            raise InputError(f"empty point cache ({points} points, {samples} frames)", file=path)
        frame_bytes = points * 3 * np.dtype(dtype).itemsize
        expected = PC2_HEADER_SIZE + samples * frame_bytes
        if size < expected:
            raise InputError(f"point cache truncated: {size} bytes, header promises {expected} "
                             f"({samples} frames x {points} points x 3 {np.dtype(dtype).name})", file=path)
        if frames is None:
            data = np.frombuffer(fh.read(samples * frame_bytes), dtype=dtype).reshape(samples, points, 3)
        else:
            out = []
            for f in np.asarray(frames, dtype=np.int64).ravel():
                if not 0 <= f < samples:
                    raise InputError(f"frame {int(f)} out of range: the cache has {samples} frames", file=path)
                fh.seek(PC2_HEADER_SIZE + int(f) * frame_bytes)
                out.append(np.frombuffer(fh.read(frame_bytes), dtype=dtype).reshape(points, 3))
            data = np.stack(out) if out else np.zeros((0, points, 3), dtype)
    data = data.astype(np.float32)
    if not np.isfinite(data).all():
        raise InputError("point cache holds NaN or infinite positions", file=path)
    return data


def pc2_info(path: str | Path) -> tuple[int, int]:
    """(points, frames) from a point cache's header."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(PC2_HEADER_SIZE)
    if len(head) < PC2_HEADER_SIZE or head[:12] != PC2_SIGNATURE:
        raise InputError("not a PC2 point cache", file=path)
    _, _, points, _, _, samples = struct.unpack(PC2_HEADER, head)
    return points, samples


def write_pc16(path: str | Path, vertices: np.ndarray) -> Path:
    """Write (T, N, 3) positions as a float16 point cache, as CLOTH3D's tools do
    (start frame 0, sample rate 1)."""
    path = Path(path)
    v = np.asarray(vertices)
    dtype = np.float16 if path.suffix.lower() == ".pc16" else np.float32
    with open(path, "wb") as fh:
        fh.write(struct.pack(PC2_HEADER, PC2_SIGNATURE, 1, v.shape[1], 0.0, 1.0, v.shape[0]))
        fh.write(np.ascontiguousarray(v.astype(dtype)).tobytes())
    return path


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of an .obj (polygons fanned into triangles)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("garment mesh missing", file=path)
    verts, faces = [], []
    try:
        with open(path, "r", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    if len(parts) < 4:
                        raise ValueError(f"line {number}: a vertex needs 3 coordinates")
                    verts.append([float(x) for x in parts[1:4]])
                elif parts[0] == "f":
                    idx = [int(p.split("/")[0]) for p in parts[1:]]
                    if len(idx) < 3:
                        raise ValueError(f"line {number}: a face needs at least 3 vertices")
                    idx = [i - 1 if i > 0 else len(verts) + i for i in idx]   # 1-based or relative
                    faces.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
    except ValueError as exc:
        raise InputError(f"malformed .obj: {exc}", file=path) from None
    v = np.asarray(verts, dtype=np.float32).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if not len(v) or not len(f):
        raise InputError(f"mesh has {len(v)} vertices and {len(f)} faces", file=path)
    if f.min() < 0 or f.max() >= len(v):
        raise InputError(f"face index out of range (mesh has {len(v)} vertices)", file=path)
    return v, f


def read_info(path: str | Path) -> dict:
    """info.mat as nested dicts (MATLAB structs turned into dicts)."""
    import scipy.io
    path = Path(path)
    if not path.is_file():
        raise InputError("sequence metadata missing", file=path)
    try:
        raw = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except Exception as exc:   # scipy raises several types for a bad file
        raise InputError(f"not a readable MATLAB file ({type(exc).__name__}: {exc})", file=path) from None
    return {k: _to_python(v) for k, v in raw.items() if not k.startswith("__")}


def _to_python(value):
    from scipy.io.matlab import mat_struct
    if isinstance(value, mat_struct):
        return {name: _to_python(getattr(value, name)) for name in value._fieldnames}
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_to_python(v) for v in value.ravel()]
    return value


# -- sequences -------------------------------------------------------------------------------------
@dataclass
class Cloth3DGarment:
    name: str
    obj_path: Path
    cache_path: Path
    rest_vertices: np.ndarray     # (V, 3) from the .obj
    faces: np.ndarray             # (F, 3) triangles
    num_frames: int

    def frames(self, which: list[int] | np.ndarray | None = None) -> np.ndarray:
        """(T, V, 3) root-relative posed vertices of these frames (all by default)."""
        return read_pc16(self.cache_path, which)


@dataclass
class Cloth3DSequence:
    name: str
    folder: Path
    gender: str                   # "female" | "male"
    betas: np.ndarray             # (10,)
    poses: np.ndarray             # (N, 72) axis-angle: global orient (3) + body pose (69)
    trans: np.ndarray             # (N, 3) root-joint location per frame (world placement)
    zrot: float
    garments: list[Cloth3DGarment] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.poses)

    @property
    def kind(self) -> str:
        return "+".join(sorted(g.name for g in self.garments))

    def frame_indices(self, count: int) -> np.ndarray:
        """`count` frames spread evenly over the sequence."""
        return np.unique(np.linspace(0, self.num_frames - 1, max(1, count)).round().astype(np.int64))


def find_sequences(root: str | Path) -> list[Path]:
    """Sequence folders (holding info.mat) at `root`, below it, or one level further down
    (CLOTH3D ships train/, val/, test/ splits)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("CLOTH3D folder not found", file=root)
    if (root / "info.mat").is_file():
        return [root]
    found = sorted(p.parent for p in root.glob("*/info.mat"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/info.mat"))
    if not found:
        raise InputError("no CLOTH3D sequences (folders with info.mat) here", file=root,
                         hint="point --cloth3d at the dataset, a split of it or one sequence folder")
    return found


def read_sequence(folder: str | Path) -> Cloth3DSequence:
    """Read and validate one sequence folder; errors name the file at fault."""
    folder = Path(folder)
    info_path = folder / "info.mat"
    info = read_info(info_path)
    for key in REQUIRED_INFO:
        if key not in info:
            raise InputError("missing entry", file=info_path, field=key)
    poses = _matrix(info["poses"], 72, info_path, "poses")
    trans = _matrix(info["trans"], 3, info_path, "trans")
    if len(trans) not in (1, len(poses)):
        raise InputError(f"{len(trans)} translations for {len(poses)} poses", file=info_path, field="trans")
    if len(trans) == 1 and len(poses) > 1:
        trans = np.repeat(trans, len(poses), 0)
    betas = np.asarray(info["shape"], dtype=np.float32).ravel()
    if betas.size < 1 or betas.size > 300 or not np.isfinite(betas).all():
        raise InputError(f"shape must be finite SMPL betas, got {betas.size} values", file=info_path, field="shape")
    try:
        gender = "male" if int(np.asarray(info["gender"]).ravel()[0]) else "female"
    except (ValueError, TypeError, IndexError):
        raise InputError(f"gender must be 0 (female) or 1 (male), got {info['gender']!r}",
                         file=info_path, field="gender") from None
    outfit = info["outfit"]
    if not isinstance(outfit, dict) or not outfit:
        raise InputError("outfit must be a struct with one field per garment", file=info_path, field="outfit")
    garments = []
    for name in outfit:
        obj_path, cache_path = folder / f"{name}.obj", folder / f"{name}.pc16"
        rest, faces = read_obj(obj_path)
        if not cache_path.is_file():
            raise InputError(f"point cache of garment {name!r} missing", file=cache_path)
        points, frames = pc2_info(cache_path)
        if points != len(rest):
            raise InputError(f"{points} points per frame, but {obj_path.name} has {len(rest)} vertices",
                             file=cache_path)
        if frames < len(poses):
            raise InputError(f"{frames} frames, but info.mat has {len(poses)} poses", file=cache_path)
        size = cache_path.stat().st_size
        if size < PC2_HEADER_SIZE + frames * points * 6:
            raise InputError(f"point cache truncated: {size} bytes for {frames} frames x {points} points",
                             file=cache_path)
        garments.append(Cloth3DGarment(name, obj_path, cache_path, rest, faces, frames))
    zrot = float(np.asarray(info.get("zrot", 0.0)).ravel()[0]) if np.size(info.get("zrot", 0.0)) else 0.0
    return Cloth3DSequence(folder.name, folder, gender, betas, poses, trans, zrot, garments, info)


def _matrix(value, width: int, path: Path, name: str) -> np.ndarray:
    """CLOTH3D stores per-frame vectors as columns (width, N), or (width,) for one frame."""
    try:
        a = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("not numeric", file=path, field=name) from None
    if a.ndim == 1 and a.size == width:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != width:
        raise InputError(f"expected shape ({width}, frames), got {a.shape}", file=path, field=name)
    if not np.isfinite(a).all():
        raise InputError("NaN or infinite values", file=path, field=name)
    return a.T.copy()


# -- training samples ------------------------------------------------------------------------------
@dataclass
class Cloth3DSample:
    sequence: str
    frame: int
    kind: str                    # garment names joined by "+"
    gender: str
    betas: np.ndarray            # (S,)
    global_orient: np.ndarray    # (3,)
    body_pose: np.ndarray        # (69,)
    trans: np.ndarray            # (3,) CLOTH3D root-joint location (world placement)
    points: np.ndarray           # (K, 3) garment points: posed & root-relative, or rest pose
    garment: np.ndarray          # (K,) index into the sequence's garments
    weights: np.ndarray | None = None   # (K, 24) skin weights (rest-pose samples only)


def posed_samples(seq: Cloth3DSequence | str | Path, frames: int | list[int] = 4, count: int = 4096,
                  rng: np.random.Generator | None = None) -> list[Cloth3DSample]:
    """Garment points per frame (area-uniform on the posed meshes of all garments, root-relative
    as stored) with the frame's SMPL parameters."""
    from ..synth.generate import sample_surface
    seq = seq if isinstance(seq, Cloth3DSequence) else read_sequence(seq)
    rng = rng or np.random.default_rng(0)
    which = seq.frame_indices(frames) if isinstance(frames, int) else np.asarray(frames, dtype=np.int64)
    per_garment = [g.frames(which) for g in seq.garments]
    verts_offset = np.cumsum([0] + [len(g.rest_vertices) for g in seq.garments])
    faces = np.concatenate([g.faces + o for g, o in zip(seq.garments, verts_offset)])
    owner = np.concatenate([np.full(len(g.rest_vertices), i) for i, g in enumerate(seq.garments)])
    out = []
    for t, frame in enumerate(which):
        verts = np.concatenate([pg[t] for pg in per_garment]).astype(np.float64)
        face, bary = sample_surface(verts, faces, count, rng)
        pts = np.einsum("pk,pkc->pc", bary, verts[faces[face]])
        pose = seq.poses[frame]
        out.append(Cloth3DSample(seq.name, int(frame), seq.kind, seq.gender, seq.betas.copy(),
                                 pose[:3].copy(), pose[3:].copy(), seq.trans[frame].copy(),
                                 pts.astype(np.float32), owner[faces[face, 0]].astype(np.int16)))
    return out


def rest_pose_samples(seq: Cloth3DSequence | str | Path, body, count: int = 4096, frames: int = 4,
                      rng: np.random.Generator | None = None, neighbours: int = 4) -> list[Cloth3DSample]:
    """Posed samples unposed into the rest pose of `body` with the sequence's betas: each point
    takes the (averaged) skin weights of its nearest posed body vertices and the inverse of their
    blended joint transform. Points carry those weights (K, 24)."""
    import torch
    from scipy.spatial import cKDTree
    seq = seq if isinstance(seq, Cloth3DSequence) else read_sequence(seq)
    if len(seq.betas) > body.num_betas:
        betas = seq.betas[: body.num_betas]
    else:
        betas = seq.betas
    out = []
    with torch.no_grad():
        _, rest_joints = body.shaped(betas)
        root = rest_joints[0, 0].cpu().numpy()
        for s in posed_samples(seq, frames, count, rng):
            posed = body(betas, s.global_orient[None], s.body_pose[None])
            verts = posed.vertices[0].cpu().numpy()
            pts = s.points + root                               # root-relative -> SMPL frame
            dist, idx = cKDTree(verts).query(pts, k=neighbours)
            idx = np.atleast_2d(idx.T).T
            w = body.weights_np[idx].mean(1)
            w = w / w.sum(1, keepdims=True)
            blend = np.einsum("pj,jab->pab", w, posed.transforms[0].cpu().numpy().astype(np.float64))
            homo = np.concatenate([pts, np.ones((len(pts), 1))], 1)
            rest = np.einsum("pab,pb->pa", np.linalg.inv(blend), homo)[:, :3]
            s.points, s.weights = rest.astype(np.float32), w.astype(np.float32)
            s.betas = np.asarray(betas, dtype=np.float32)
            out.append(s)
    return out
