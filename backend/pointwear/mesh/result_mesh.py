"""The one definition of a garment mesh inside a result folder.

Every result that has a mesh (a parametric fit, a reconstruction, a remeshed neural fit) keeps it in
its `outfit.npz` under the `mesh_*` keys below, beside the points, plus an optional albedo texture
`texture.png` named by result.json's "texture". Producers call `write_result_mesh`; consumers
(export, the add-on importer, the sliders) call `read_result_mesh`, which also turns an older
parametric result (points + `faces`, no UVs) into a mesh.

Arrays (rest pose, the result's betas, metres, Y-up SMPL body space):
    mesh_vertices (V, 3) float32
    mesh_faces    (F, 3) int32, counter-clockwise seen from outside
    mesh_weights  (V, 24) float32, rows sum to 1 (SMPL skin weights)
    mesh_garment  (V,) int32, index into the result's garment_names (0 when there is one garment)
    mesh_uv       (V, 2) float32 in [0, 1], origin at the image's bottom-left (OBJ / Blender);
                  writers of top-left formats (glTF) flip v. Absent when the mesh has no UVs.
Vertices are split along UV seams, so V may exceed the point count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, load_npz, save_npz
from ..link.protocol import MESH_KEYS, OUTFIT_NPZ, RESULT_JSON, TEXTURE_PNG

OUTFIT_FILE = OUTFIT_NPZ
RESULT_FILE = RESULT_JSON
TEXTURE_FILE = TEXTURE_PNG
MAX_VERTICES = 2_000_000
MAX_TEXTURE_SIDE = 8192


@dataclass
class GarmentMesh:
    """A skinned garment mesh; `texture` is an (H, W, 3|4) uint8 sRGB image or None."""
    vertices: np.ndarray
    faces: np.ndarray
    weights: np.ndarray
    garment: np.ndarray
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None

    def check(self, file: str = OUTFIT_FILE) -> "GarmentMesh":
        """Raise InputError naming the file and the array when shapes or values disagree."""
        v = len(self.vertices)
        problems = {
            "mesh_vertices": self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or v == 0
            or not np.isfinite(self.vertices).all(),
            "mesh_faces": self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0
            or self.faces.min(initial=0) < 0 or self.faces.max(initial=0) >= v,
            "mesh_weights": self.weights.shape != (v, 24) or not np.isfinite(self.weights).all(),
            "mesh_garment": self.garment.shape != (v,),
            "mesh_uv": self.uv is not None and (self.uv.shape != (v, 2) or not np.isfinite(self.uv).all()),
        }
        for key, bad in problems.items():
            if bad:
                raise InputError(f"{key} is malformed for a mesh of {v} vertices", file=file, field=key)
        return self


def read_result_mesh(result_dir: str | Path, with_texture: bool = True) -> GarmentMesh | None:
    """The result's garment mesh, or None when it has only points.

    An older parametric result (points + `faces`) gives a mesh on its points without UVs."""
    result_dir = Path(result_dir)
    path = result_dir / OUTFIT_FILE
    arrays = load_npz(path, limits={k: MAX_VERTICES * 24 for k in MESH_KEYS})
    if "mesh_vertices" in arrays:
        mesh = GarmentMesh(np.asarray(arrays["mesh_vertices"], np.float32), np.asarray(arrays["mesh_faces"], np.int32),
                           np.asarray(arrays["mesh_weights"], np.float32), np.asarray(arrays["mesh_garment"], np.int32),
                           np.asarray(arrays["mesh_uv"], np.float32) if "mesh_uv" in arrays else None)
    elif "faces" in arrays and "points" in arrays:
        points = np.asarray(arrays["points"], np.float32)
        garment = arrays.get("garment", np.zeros(len(points), np.int32))
        mesh = GarmentMesh(points, np.asarray(arrays["faces"], np.int32), np.asarray(arrays["weights"], np.float32),
                           np.asarray(garment, np.int32))
    else:
        return None
    mesh.check(str(path))
    if with_texture:
        mesh.texture = read_texture(result_dir)
    return mesh


def texture_path(result_dir: str | Path) -> Path | None:
    """The texture named by result.json's "texture" (or texture.png when it exists), else None."""
    result_dir = Path(result_dir)
    name = None
    meta = result_dir / RESULT_FILE
    if meta.is_file():
        try:
            name = json.loads(meta.read_text()).get("texture")
        except (ValueError, AttributeError):
            raise InputError("is not a JSON object", file=str(meta)) from None
    name = name or (TEXTURE_FILE if (result_dir / TEXTURE_FILE).is_file() else None)
    if name is None:
        return None
    path = (result_dir / name).resolve()
    if path.parent != result_dir.resolve():
        raise InputError(f"texture {name!r} is not a file inside the result folder", file=str(meta), field="texture")
    return path


def read_texture(result_dir: str | Path) -> np.ndarray | None:
    """The albedo texture as (H, W, 3|4) uint8, size-checked before decoding."""
    path = texture_path(result_dir)
    if path is None:
        return None
    from PIL import Image
    try:
        with Image.open(path) as img:
            if max(img.size) > MAX_TEXTURE_SIDE:
                raise InputError(f"texture is {img.size[0]}x{img.size[1]}, over {MAX_TEXTURE_SIDE} px", file=str(path))
            return np.asarray(img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"))
    except OSError as exc:
        raise InputError(f"cannot read the texture: {exc}", file=str(path)) from None


def write_result_mesh(result_dir: str | Path, mesh: GarmentMesh) -> None:
    """Add (or replace) the mesh block in the result's outfit.npz and write its texture, atomically
    file by file; result.json gains "texture" when there is one."""
    result_dir = Path(result_dir)
    path = result_dir / OUTFIT_FILE
    mesh.check(str(path))
    arrays = dict(load_npz(path)) if path.is_file() else {}
    for key in MESH_KEYS:
        arrays.pop(key, None)
    arrays.update(mesh_vertices=mesh.vertices.astype(np.float32), mesh_faces=mesh.faces.astype(np.int32),
                  mesh_weights=mesh.weights.astype(np.float32), mesh_garment=mesh.garment.astype(np.int32))
    if mesh.uv is not None:
        arrays["mesh_uv"] = mesh.uv.astype(np.float32)
    if mesh.texture is not None:
        from PIL import Image
        with atomic_path(result_dir / TEXTURE_FILE) as tmp:
            Image.fromarray(np.ascontiguousarray(mesh.texture, np.uint8)).save(tmp, format="PNG")
        meta_path = result_dir / RESULT_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["texture"] = TEXTURE_FILE
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    save_npz(path, **arrays)
