"""`pointwear export`: a result folder as files other tools read.

    export_result(result_dir, fmt, out_path, motion=None, up="auto") -> list[Path]

- "glb": the skinned garment mesh with UVs, its albedo texture embedded, the SMPL skeleton,
  skin weights (top 4 joints, renormalised), inverse bind matrices and, with `motion` (an
  AMASS-style npz, `up` its up axis: "y", "z" or "auto" = the file's own `up` hint, else z),
  the animation (`gltf.py`). Returns [out.glb].
- "obj": OBJ (positions, UVs, normals; one group per garment) + MTL + the texture as PNG beside
  it (same stem). Returns [out.obj, out.mtl, out.png] (no PNG when untextured).
- "ply": the result's clothing points with their colours (binary little-endian PLY; grey
  points and a warning when the result has no colours). Returns [out.ply].

The garment mesh comes from `build.result_garment_mesh` (a stored mesh block as it is, else
built: faces, UV atlas, baked texture). A result without appearance exports untextured with a
warning through `warn` (default: printed to stderr). Every file is written atomically (a crash
leaves the old file or none, never half of one); `motion` with obj/ply is an error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, load_npz
from ..link.protocol import BODY_NPZ, OUTFIT_NPZ
from .build import Progress, Warn, result_garment_mesh
from .gltf import Animation, Skeleton, glb_bytes, vertex_normals
from .options import DEFAULT_OPTIONS, MeshOptions
from .result_mesh import GarmentMesh

FORMATS = ("glb", "obj", "ply")


def _stderr_warn(message: str) -> None:
    print(f"pointwear: warning: {message}", file=sys.stderr)


def export_result(result_dir: str | Path, fmt: str, out_path: str | Path, motion: str | Path | None = None,
                  up: str = "auto", *, warn: Warn | None = None, progress: Progress | None = None,
                  options: MeshOptions = DEFAULT_OPTIONS) -> list[Path]:
    """Write the result in `fmt` ("glb", "obj" or "ply") to `out_path`; the files written."""
    warn = warn or _stderr_warn
    result_dir, out_path = Path(result_dir), Path(out_path)
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}", field="format")
    if motion is not None and fmt != "glb":
        raise InputError("a motion goes into glb files only", field="motion", hint="--format glb")
    if up not in ("auto", "y", "z"):
        raise InputError(f"up must be 'auto', 'y' or 'z', got {up!r}", field="up")
    if not (result_dir / OUTFIT_NPZ).is_file():
        raise InputError(f"no {OUTFIT_NPZ} here: not a result folder", file=result_dir)
    if fmt == "ply":
        return [write_ply_points(result_dir, out_path, warn)]
    skeleton = read_skeleton(result_dir)
    anim = motion_animation(motion, up, skeleton) if motion is not None else None  # bad motions fail early
    mesh, _ = result_garment_mesh(result_dir, options, warn, progress)
    names = garment_names(result_dir)
    if fmt == "glb":
        data = glb_bytes(mesh, skeleton, anim, names)
        with atomic_path(out_path) as tmp:
            tmp.write_bytes(data)
        return [out_path]
    return write_obj(mesh, out_path, names)


def garment_names(result_dir: Path) -> list[str]:
    data = load_npz(result_dir / OUTFIT_NPZ, keys=("garment_names",))
    try:
        names = json.loads(str(data["garment_names"])) if "garment_names" in data else []
    except ValueError:
        raise InputError("not JSON", file=result_dir / OUTFIT_NPZ, field="garment_names") from None
    return [str(n) for n in names] if isinstance(names, list) else []


def read_skeleton(result_dir: Path) -> Skeleton:
    """The SMPL skeleton from the result's body.npz (rest joints for its betas)."""
    path = result_dir / BODY_NPZ
    if not path.is_file():
        raise InputError(f"no {BODY_NPZ}: the result has no body to skin to", file=path)
    data = load_npz(path, keys=("joints", "parents", "joint_names"))
    for key in ("joints", "parents", "joint_names"):
        if key not in data:
            raise InputError("missing key", file=path, field=key)
    joints, parents = np.asarray(data["joints"], np.float64), np.asarray(data["parents"], np.int64)
    names = [str(n) for n in np.asarray(data["joint_names"]).reshape(-1)]
    J = len(joints)
    if joints.shape != (J, 3) or parents.shape != (J,) or len(names) != J or not np.isfinite(joints).all():
        raise InputError(f"joints {joints.shape}, parents {parents.shape} and {len(names)} names disagree",
                         file=path, field="joints")
    if J == 0 or parents[0] != -1 or any(not 0 <= parents[j] < j for j in range(1, J)):
        raise InputError("parents must start with the root (-1) and name earlier joints", file=path, field="parents")
    return Skeleton(joints, parents, names)


def motion_animation(motion: str | Path, up: str, skeleton: Skeleton) -> Animation:
    """An AMASS-style motion as joint quaternions and root positions for this skeleton."""
    from scipy.spatial.transform import Rotation as R

    from ..data.motion import motion_up, pelvis_fix, read_motion
    up = motion_up(motion, up)
    m = read_motion(motion, up=up)
    J = len(skeleton.joints)
    pose = np.concatenate([m.global_orient, m.body_pose], 1).reshape(m.num_frames, -1, 3)
    if pose.shape[1] != J:
        raise InputError(f"the motion has {pose.shape[1]} joints, the skeleton {J}", file=motion, field="poses")
    quats = R.from_rotvec(pose.reshape(-1, 3).astype(np.float64)).as_quat().reshape(m.num_frames, J, 4)
    root = pelvis_fix(m.transl.astype(np.float64), skeleton.joints[0], up) + skeleton.joints[0]
    return Animation(quats, root.astype(np.float32), float(m.fps))


def write_obj(mesh: GarmentMesh, out_path: Path, names: list[str]) -> list[Path]:
    """OBJ + MTL (+ PNG texture) with the same stem; faces grouped per garment."""
    out_path = out_path if out_path.suffix.lower() == ".obj" else out_path.with_suffix(".obj")
    mtl_path, png_path = out_path.with_suffix(".mtl"), out_path.with_suffix(".png")
    textured = mesh.texture is not None and mesh.uv is not None
    lines = [f"# Pointwear garment: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, rest pose, "
             "metres, Y-up", f"mtllib {mtl_path.name}"]
    lines.append(_rows("v", mesh.vertices, "%.6f"))
    if mesh.uv is not None:
        lines.append(_rows("vt", mesh.uv, "%.6f"))
    lines.append(_rows("vn", vertex_normals(mesh.vertices, mesh.faces), "%.5f"))
    face_garment = mesh.garment[mesh.faces[:, 0]]
    f = mesh.faces.astype(np.int64) + 1
    corner = "%d/%d/%d" if mesh.uv is not None else "%d//%d"
    width = 3 if mesh.uv is not None else 2
    for g in np.unique(face_garment):
        name = names[g] if 0 <= g < len(names) else f"garment{g}"
        rows = np.repeat(f[face_garment == g], width, axis=1)        # v/vt/vn share the index
        lines += [f"g {name}", "usemtl garment", _rows("f", rows, corner, group=width)]
    mtl = ["newmtl garment", "Ka 0 0 0", "Kd 1 1 1" if textured else "Kd 0.6 0.6 0.6", "Ks 0 0 0", "d 1", "illum 1"]
    written = []
    if textured:
        from PIL import Image
        with atomic_path(png_path) as tmp:
            Image.fromarray(np.ascontiguousarray(mesh.texture, np.uint8)).save(tmp, format="PNG")
        mtl.append(f"map_Kd {png_path.name}")
        written.append(png_path)
    with atomic_path(mtl_path) as tmp:
        tmp.write_text("\n".join(mtl) + "\n")
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return [out_path, mtl_path] + written


def _rows(tag: str, values: np.ndarray, fmt: str, group: int = 1) -> str:
    """One text line per row: `tag` and the row's values, `fmt` per group of `group` values
    (one %-format over the whole array: fast for 100k rows)."""
    values = np.asarray(values)
    per_row = values.shape[1] // group
    line = tag + (" " + fmt) * per_row
    return "\n".join([line] * len(values)) % tuple(values.ravel().tolist()) if len(values) else ""


def write_ply_points(result_dir: Path, out_path: Path, warn: Warn) -> Path:
    """The rest-pose clothing points with their colours as a binary little-endian PLY."""
    data = load_npz(result_dir / OUTFIT_NPZ, keys=("points", "colors"))
    if "points" not in data:
        raise InputError("missing key", file=result_dir / OUTFIT_NPZ, field="points")
    points = np.asarray(data["points"], np.float32)
    if "colors" in data and np.shape(data["colors"]) == (len(points), 3):
        rgb = np.round(np.clip(np.asarray(data["colors"], np.float64), 0, 1) * 255).astype(np.uint8)
    else:
        warn(f"{result_dir}: no appearance (no baked colours): the points are exported grey")
        rgb = np.full((len(points), 3), 153, np.uint8)
    rows = np.empty(len(points), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                  ("blue", "u1")])
    for k, name in enumerate("xyz"):
        rows[name] = points[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        rows[name] = rgb[:, k]
    header = ("ply\nformat binary_little_endian 1.0\ncomment Pointwear clothing points, rest pose, metres, Y-up\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(header.encode() + rows.tobytes())
    return out_path
