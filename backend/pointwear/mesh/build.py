"""A textured, skinned garment mesh for any result folder.

- A result with a UV-mapped mesh block (`result_mesh`) is used as it is.
- Otherwise the faces: a parametric result keeps its own (the garment surfaces the points are
  the vertices of); a point-only result (neural, refined, compositional) is remeshed per garment
  on the body's connectivity (`remesh.py`).
- UVs by xatlas (`uv.py`), one atlas for all garments.
- Texture: with a fitted appearance (appearance.pt) the neural render is baked into the atlas
  from the training frames and orbit views (`bake.py`); without one, the baked point colours
  (`colors`) are interpolated; with neither the mesh stays untextured (a warning says so).

`result_garment_mesh` returns the mesh and a report (source, counts, bake coverage, PSNR of the
bake against the neural render on the training frames); `write_garment_mesh` also stores the
mesh block in the result folder (`pointwear mesh RESULT`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..fileio import atomic_path, load_npz
from ..link.protocol import APPEARANCE_PT, POSED_NPZ, RESULT_JSON
from .options import DEFAULT_OPTIONS, MeshOptions
from .result_mesh import GarmentMesh, read_result_mesh, write_result_mesh

Warn = Callable[[str], None]
Progress = Callable[[str, int, int], None]


def _quiet(*_args) -> None:
    return None


def result_garment_mesh(result_dir: str | Path, options: MeshOptions = DEFAULT_OPTIONS, warn: Warn | None = None,
                        progress: Progress | None = None) -> tuple[GarmentMesh, dict]:
    """The result's garment mesh with UVs and (when there is appearance) its texture."""
    from ..drape.redrape import load_outfit
    warn, progress = warn or _quiet, progress or _quiet
    result_dir = Path(result_dir)
    stored = read_result_mesh(result_dir)
    if stored is not None and stored.uv is not None:
        if stored.texture is None:
            warn(f"{result_dir}: the garment mesh has no texture: exported untextured")
        return stored, {"source": "mesh block", "vertices": len(stored.vertices), "faces": len(stored.faces)}
    outfit = load_outfit(result_dir)
    from ..body import load_body
    body = load_body(str(outfit.get("body", "default")), str(outfit.get("gender", "neutral")), device="cpu")
    betas = body.betas_tensor(outfit["betas"])
    report: dict = {}
    progress("mesh", 0, 3)
    if stored is None:
        stored = _remesh(outfit, body, betas, options)
        report["source"] = "remeshed on the body surface"
    else:
        report["source"] = "fitted faces"
    progress("mesh", 1, 3)
    from .uv import uv_atlas
    mesh, _ = uv_atlas(stored, options)
    report |= {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces))}
    progress("mesh", 2, 3)
    mesh.texture, tex_report = _texture(result_dir, outfit, mesh, body, betas, options, warn, progress)
    report |= tex_report
    progress("mesh", 3, 3)
    return mesh, report


def write_garment_mesh(result_dir: str | Path, options: MeshOptions = DEFAULT_OPTIONS, warn: Warn | None = None,
                       progress: Progress | None = None) -> dict:
    """Build the garment mesh and store it in the result folder (outfit.npz mesh block,
    texture.png, result.json "mesh" with the report)."""
    result_dir = Path(result_dir)
    mesh, report = result_garment_mesh(result_dir, options, warn, progress)
    if report.get("source") != "mesh block":
        write_result_mesh(result_dir, mesh)
        meta_path = result_dir / RESULT_JSON
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["mesh"] = report
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    return report


# -- faces ------------------------------------------------------------------------------------------
@torch.no_grad()
def _remesh(outfit: dict, body, betas: torch.Tensor, options: MeshOptions) -> GarmentMesh:
    from .remesh import remesh_points
    points = np.asarray(outfit["points"], np.float64)
    garment = np.asarray(outfit.get("garment", np.zeros(len(points), np.int32)), np.int32)
    rest_body = body.shaped(betas)[0][0].numpy().astype(np.float64)
    v, f, w, g = remesh_points(points, outfit["weights"], garment, rest_body, body.faces,
                               _neural_sources(outfit, body, betas), options)
    return GarmentMesh(v, f, w, g)


def _neural_sources(outfit: dict, body, betas: torch.Tensor) -> np.ndarray | None:
    """The body point each clothing point of a neural drape was decoded from (None for other
    drapes, or when the default checkpoint does not fit this result)."""
    if not str(outfit["drape"]).startswith("neural"):
        return None
    try:
        from ..drape.neural import load_neural_drape
        drape = load_neural_drape(None, body)
    except InputError:
        return None
    code = torch.as_tensor(np.asarray(outfit["code"], np.float32).reshape(1, -1))
    if code.shape[1] != drape.code_dim:
        return None
    _, _, x = drape.decode(code, betas)
    x = x[0].numpy().astype(np.float64)
    return x if x.shape == np.asarray(outfit["points"]).shape else None


# -- texture ----------------------------------------------------------------------------------------
def _texture(result_dir: Path, outfit: dict, mesh: GarmentMesh, body, betas: torch.Tensor, options: MeshOptions,
             warn: Warn, progress: Progress) -> tuple[np.ndarray | None, dict]:
    app = result_dir / APPEARANCE_PT
    if app.is_file():
        from ..appearance.model import load_appearance
        from ..appearance.neural_render import check_outfit_for_appearance
        from .bake import bake_texture, texture_psnr
        model = load_appearance(app, "cpu")
        check_outfit_for_appearance(model, outfit, result_dir / "outfit.npz", app)
        train = training_views(result_dir, outfit, mesh, body, betas, model, options)
        orbit = orbit_views(outfit, mesh, body, betas, model, options)
        texture, stats = bake_texture(model, train + orbit, mesh.uv, mesh.faces, mesh.vertices, body.faces,
                                      options, progress)
        rows = texture_psnr(model, train, mesh.uv, mesh.faces, body.faces, texture, options)
        psnr = float(np.mean([r["psnr"] for r in rows])) if rows else None
        return texture, {"texture": "baked from the neural appearance", "bake": stats,
                         "training_views": len(train), "orbit_views": len(orbit),
                         "bake_psnr": None if psnr is None else round(psnr, 2), "bake_psnr_views": rows}
    if "colors" in outfit:
        from scipy.spatial import cKDTree

        from .bake import bake_vertex_colors
        points = np.asarray(outfit["points"], np.float64)
        dist, idx = cKDTree(points).query(mesh.vertices, k=min(4, len(points)))
        w = 1.0 / np.maximum(dist, 1e-5) ** 2
        colors = np.einsum("vk,vkc->vc", w / w.sum(1, keepdims=True), np.asarray(outfit["colors"], np.float64)[idx])
        return bake_vertex_colors(colors, mesh.uv, mesh.faces, options), {"texture": "baked point colours"}
    warn(f"{result_dir}: no appearance (no {APPEARANCE_PT}, no baked colours): the garment is untextured; "
         "run fit-appearance on it for a texture")
    return None, {"texture": None}


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


@torch.no_grad()
def training_views(result_dir: Path, outfit: dict, mesh: GarmentMesh, body, betas: torch.Tensor, model,
                   options: MeshOptions) -> list:
    """The result's training frames (result.json "train_frames", else every frame; at most
    `max_training_views`, evenly spaced) as bake views, at most `view_size` px on the long side."""
    from ..appearance.model import scale_intrinsics
    from ..fit.visibility import body_depth, visible_points
    from .bake import BakeView
    path = result_dir / POSED_NPZ
    if not path.is_file():
        return []
    posed = load_npz(path)
    if "K" not in posed or "global_orient" not in posed or "points" not in posed:
        return []                                  # a re-draped result in the world: no cameras
    n = int(posed["points"].shape[0])
    frames = list(range(n))
    meta = result_dir / RESULT_JSON
    if meta.is_file():
        listed = json.loads(meta.read_text()).get("train_frames")
        if isinstance(listed, list) and listed:
            frames = [int(i) for i in listed if 0 <= int(i) < n] or frames
    if len(frames) > options.max_training_views:
        frames = [frames[int(round(i))] for i in np.linspace(0, len(frames) - 1, options.max_training_views)]
    H, W = (int(s) for s in np.asarray(posed["image_size"]).reshape(-1)[:2])
    scale = min(1.0, options.view_size / max(H, W))
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    K_all = np.asarray(posed["K"], np.float64)
    views = []
    for i in frames:
        go, bp, tr = (_t(posed[k][i:i + 1]) for k in ("global_orient", "body_pose", "transl"))
        K = scale_intrinsics(_t(K_all[min(i, len(K_all) - 1)]), size[1] / W, size[0] / H)
        bverts = body(betas, go, bp, tr).vertices[0]
        mverts = body.pose_points(_t(mesh.vertices)[None], _t(mesh.weights), betas, go, bp, tr)[0]
        pts = _t(posed["points"][i])
        vis = visible_points(pts[None], body_depth(bverts[None], body.faces_t, K[None], size), K[None],
                             threshold=model.config.visibility_threshold)[0]
        views.append(BakeView(K, size, pts, vis, mverts, bverts, tier=0))
    return views


def orbit_rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(3, 3) OpenCV camera-from-SMPL rotation of a camera on a sphere around the body: azimuth
    about SMPL's up (Y), elevation above the horizon; (0, 0) looks at the front (+Z side)."""
    from scipy.spatial.transform import Rotation as R
    turn = R.from_euler("x", -elevation_deg, degrees=True) * R.from_euler("y", -azimuth_deg, degrees=True)
    return np.diag([1.0, -1.0, -1.0]) @ turn.as_matrix()


@torch.no_grad()
def orbit_views(outfit: dict, mesh: GarmentMesh, body, betas: torch.Tensor, model, options: MeshOptions) -> list:
    """Views around the rest-pose garment (azimuths x elevations), framed to fit `view_size`."""
    from ..fit.visibility import body_depth, visible_points
    from .bake import BakeView
    if options.orbit_views <= 0:
        return []
    rest_body = body.shaped(betas)[0][0]
    verts = _t(mesh.vertices)
    points = _t(outfit["points"])
    lo, hi = verts.min(0).values, verts.max(0).values
    centre, extent = (lo + hi) / 2, float((hi - lo).norm())
    distance = 2.5
    side = int(options.view_size)
    f = 0.9 * side * distance / max(extent, 1e-3)
    K = torch.tensor([[f, 0, (side - 1) / 2], [0, f, (side - 1) / 2], [0, 0, 1]], dtype=torch.float32)
    per = max(1, options.orbit_views // max(1, len(options.orbit_elevations)))
    views = []
    for elevation in options.orbit_elevations:
        for k in range(per):
            rot = _t(orbit_rotation(360.0 * k / per + 15.0 * (elevation != 0), elevation))
            move = lambda p: (p - centre) @ rot.T + torch.tensor([0.0, 0.0, distance])  # noqa: E731
            bverts, pts, mverts = move(rest_body), move(points), move(verts)
            vis = visible_points(pts[None], body_depth(bverts[None], body.faces_t, K[None], (side, side)), K[None],
                                 threshold=model.config.visibility_threshold)[0]
            views.append(BakeView(K, (side, side), pts, vis, mverts, bverts, tier=1))
    return views
