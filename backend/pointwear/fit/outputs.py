"""What a finished outfit fit writes: outfit.npz (rest-pose points for the subject's betas),
posed.npz (points per frame in camera space), outfit.ply, result.json with per-frame metrics,
and GIFs of the fit's progress and of the fitted points over the frames."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh

from ..body import BodyModel
from ..body.export import export_body
from ..body.upright import world_from_camera
from ..data.subject import Subject
from ..drape.base import DrapeModel, keep_faces, present_points
from ..fileio import atomic_path, save_npz
from ..link.protocol import BODY_NPZ, KIND_FIT_OUTFIT, OUTFIT_NPZ, OUTFIT_PLY, POSED_NPZ, RESULT_FILES, RESULT_JSON
from ..render.rasterizer import project
from .frames import FrameSet, load_frames
from .metrics import chamfer_2d_pixels, mask_iou, mesh_mask, splat_mask
from .state import FitState, FitterView
from .visibility import visible_points



def splat_radii(points: np.ndarray, focal: float) -> np.ndarray:
    """Per-point disc radius (px) that closes the gaps to the neighbours, as a surfel renderer
    sizes its splats: a local grid of spacings a <= b needs sqrt(a^2 + b^2) / 2, with a and b the
    distances to the 1st and 4th nearest neighbour in 3D, projected at the point's depth."""
    from scipy.spatial import cKDTree
    if len(points) < 5:
        return np.full(len(points), 1.5)
    d = cKDTree(points).query(points, k=5)[0]
    spacing = 0.5 * np.hypot(d[:, 1], d[:, 4])
    return np.clip(spacing * focal / np.maximum(points[:, 2], 1e-3) + 0.25, 1.0, 8.0)


def splat_adaptive(uv: torch.Tensor, valid: torch.Tensor, radii: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
    """Union of disc splats with per-point radii (grouped in 0.25 px steps)."""
    steps = np.round(radii * 4) / 4
    out = torch.zeros(image_size, dtype=torch.bool, device=uv.device)
    for r in np.unique(steps):
        sel = torch.as_tensor(steps == r, device=uv.device) & valid
        if sel.any():
            out |= splat_mask(uv, sel, image_size, float(r))
    return out


@torch.no_grad()
def evaluate_points(subject: Subject, body: BodyModel, posed: torch.Tensor, ids: list[int],
                    threshold: float = 0.02, frames: FrameSet | None = None,
                    faces: np.ndarray | None = None) -> list[dict]:
    """Mask IoU of the splatted visible points and 2D Chamfer (px) on the given frames
    (`frames`: their precomputed depth maps and mask transforms, if the caller has them).
    With the points' mesh `faces`, also "mesh_iou": the IoU of the mesh's seen silhouette
    (`metrics.mesh_mask`)."""
    frames = frames or load_frames(subject, body, ids, posed.device)
    uv, z = project(posed[ids], frames.K)
    vis = visible_points(posed[ids], frames.depth, frames.K, threshold=threshold)
    out = []
    for k, i in enumerate(ids):
        radii = splat_radii(posed[i].cpu().numpy(), float(frames.K[k, 0, 0]))
        pred = splat_adaptive(uv[k], vis[k], radii, subject.image_size)
        mask = frames.masks[k]
        row = {"frame": i, "iou": round(float(mask_iou(pred, mask)), 4)}
        if faces is not None:
            row["mesh_iou"] = mesh_iou(posed, faces, frames, k, i, threshold)
        row.update({"chamfer_px": round(float(chamfer_2d_pixels(uv[k:k + 1], vis[k:k + 1], frames.targets,
                                                                torch.tensor([k], device=uv.device))[0]), 3),
                    "visible": round(float(vis[k].float().mean()), 3),
                    "splat_radius_px": round(float(np.median(radii)), 2)})
        out.append(row)
    return out


def mesh_iou(vertices: torch.Tensor, faces: np.ndarray, frames: FrameSet, k: int, i: int,
             threshold: float = 0.02) -> float:
    """IoU (4 decimals) of the mesh's seen silhouette (`metrics.mesh_mask`) in subject frame i,
    the k-th of `frames`, against that frame's clothing mask; vertices (N, V, 3), every frame of
    the subject in camera space."""
    seen = mesh_mask(vertices[i:i + 1].float(), faces, frames.K[k:k + 1], frames.depth[k:k + 1], threshold)[0]
    return round(float(mask_iou(seen, frames.masks[k])), 4)


def write_posed(path: Path, body: BodyModel, subject: Subject, points: np.ndarray, betas) -> Path:
    """posed.npz: the clothing per frame in camera space plus everything Blender needs to
    replay it: the subject's SMPL parameters, cameras, fps and the upright world transform."""
    smpl = subject.smpl
    return save_npz(path, points=points.astype(np.float32), frames=np.arange(subject.num_frames),
                    global_orient=smpl.global_orient, body_pose=smpl.body_pose, transl=smpl.transl,
                    betas=body.betas_tensor(betas)[0].cpu().numpy(), K=subject.K.astype(np.float64),
                    image_size=np.array(subject.image_size, np.int32), fps=np.array(float(subject.meta["fps"])),
                    world_from_camera=world_from_camera(body, betas, smpl.global_orient, smpl.body_pose,
                                                        smpl.transl))


def write_outputs(fitter: FitterView, drape: DrapeModel, state: FitState,
                  offsets: torch.Tensor | None, seconds: float) -> dict:
    out = fitter.out
    code = state.best.code.to(fitter.device)[None]
    with torch.no_grad():
        d = drape(drape.constrain(code), fitter.betas)
        # offsets (N, P, 3), one per frame (the refinement's shape changing with time): the rest
        # shape (outfit.npz) takes their mean, each frame (posed.npz) its own
        frame_offsets = None if offsets is None or offsets.dim() == 2 else offsets
        offsets = None if offsets is None else (offsets if frame_offsets is None else offsets.mean(0))
        rest = d.points + (offsets[None] if offsets is not None else 0)
        weights = d.weights[0] if d.weights.dim() == 3 else d.weights
        keep = present_points(d)          # absent pieces (a sleeveless fit's sleeve stubs) left out
        if keep is not None:
            rest, weights = rest[:, keep], weights[keep]
            offsets = None if offsets is None else offsets[keep]
            frame_offsets = None if frame_offsets is None else frame_offsets[:, keep]
        smpl = fitter.subject.smpl
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=fitter.device)  # noqa: E731
        shapes = rest if frame_offsets is None else rest - offsets[None] + frame_offsets
        posed = fitter.body.pose_points(shapes, weights, fitter.betas, t(smpl.global_orient), t(smpl.body_pose),
                                        t(smpl.transl))
    rest_np = rest[0].cpu().numpy()
    extra = {}
    faces = getattr(drape, "faces", None)
    if faces is not None:
        keep_np = None if keep is None else keep.cpu().numpy()
        extra["faces"] = np.asarray(faces if keep_np is None else keep_faces(np.asarray(faces), keep_np), np.int32)
        extra["garment"] = np.asarray(drape.garment_index if keep_np is None else drape.garment_index[keep_np], np.int32)
        extra["garment_names"] = np.array(json.dumps(list(getattr(drape, "kinds", ()))))
    if offsets is not None:
        extra["offsets"] = offsets.cpu().numpy().astype(np.float32)
    params = drape.describe(code[0]) if hasattr(drape, "describe") else None
    save_npz(out / OUTFIT_NPZ, points=rest_np.astype(np.float32), weights=weights.cpu().numpy().astype(np.float32),
             code=code[0].cpu().numpy().astype(np.float32), drape=np.array(drape.drape_id),
             betas=fitter.betas[0].cpu().numpy(), params=np.array(json.dumps(params)),
             body=np.array(str(fitter.subject.meta.get("body", "default"))),
             gender=np.array(str(fitter.subject.meta.get("gender", "neutral"))), **extra)
    write_posed(out / POSED_NPZ, fitter.body, fitter.subject, posed.cpu().numpy(), fitter.betas)
    export_body(fitter.body, out / BODY_NPZ, fitter.betas)
    with atomic_path(out / OUTFIT_PLY) as tmp:
        geom = trimesh.Trimesh(rest_np, extra["faces"], process=False) if "faces" in extra else trimesh.PointCloud(rest_np)
        geom.export(tmp, file_type="ply")

    all_ids = list(range(fitter.subject.num_frames))
    frames = load_frames(fitter.subject, fitter.body, all_ids, fitter.device)
    per_frame = evaluate_points(fitter.subject, fitter.body, posed, all_ids, fitter.options.visibility_threshold,
                                frames, extra.get("faces"))
    for row in per_frame:
        row["split"] = "train" if row["frame"] in fitter.train_ids else "heldout"
    result = {
        "drape": drape.drape_id, "code": [float(c) for c in code[0]], "params": params,
        "garments": garment_list(drape, code[0], fitter.final_targets, fitter.subject.label_names),
        "inferred": state.inferred,
        "score": state.best.score, "best_stage": state.best.stage, "seconds": round(seconds, 2),
        "points": int(rest_np.shape[0]), "train_frames": fitter.train_ids, "heldout_frames": fitter.held_ids,
        "metrics": {split: _means([r for r in per_frame if r["split"] == split]) for split in ("train", "heldout")},
        "frames": per_frame, "history": state.history,
        "options": asdict(fitter.options),
    }
    with atomic_path(out / RESULT_JSON) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    write_gifs(fitter, posed, frames)
    return result


def garment_list(drape: DrapeModel, code: torch.Tensor, targets: tuple[int, ...] | None,
                 label_names: dict[int, str]) -> list[dict] | None:
    """result.json "garments": each garment of a parametric outfit (inner layer first) with
    its family, slot, layer, its own code, its parameters, the label it was fitted to (None:
    the whole clothing mask) and its index in outfit.npz "garment"."""
    if not hasattr(drape, "families"):
        return None
    params = drape.describe(code)
    out = []
    for g, (fam, seg) in enumerate(zip(drape.families, drape.segments)):
        label = None if targets is None or targets[g] < 0 else int(targets[g])
        out.append({"index": g, "name": fam.name, "slot": fam.slot, "layer": fam.layer,
                    "code": [round(float(c), 6) for c in code[seg]],
                    "params": {k: v for k, v in params[g].items() if k not in ("name", "slot", "layer")},
                    "label": label, "label_name": label_names.get(label) if label is not None else None})
    return out


def _means(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("iou", "mesh_iou", "chamfer_px")
            if all(k in r for r in rows)}


def _overlay(image: np.ndarray, uv: np.ndarray, vis: np.ndarray, scale: int) -> np.ndarray:
    """The frame, dimmed, with visible points in green and hidden ones in red."""
    img = (image[::scale, ::scale] * 0.5).astype(np.uint8)
    h, w = img.shape[:2]
    for keep, color in ((~vis, (255, 60, 60)), (vis, (60, 255, 90))):
        px = np.round(uv[keep] / scale).astype(int)
        ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        img[px[ok, 1], px[ok, 0]] = color
    return img


@torch.no_grad()
def write_gifs(fitter: FitterView, posed: torch.Tensor, frames: FrameSet) -> None:
    """fit_frames.gif: the result over every frame; fit_progress.gif: the best code so far on
    the first training frame at each scoring step."""
    subject = fitter.subject
    scale = max(1, subject.image_size[0] // 256)
    uv, _ = project(posed, frames.K)
    vis = visible_points(posed, frames.depth, frames.K, threshold=fitter.options.visibility_threshold)
    images = [_overlay(subject.frame(i), uv[i].cpu().numpy(), vis[i].cpu().numpy(), scale)
              for i in range(subject.num_frames)]
    _write_gif(fitter.out / RESULT_FILES[KIND_FIT_OUTFIT]["frames_gif"], images, fps=4)

    first = fitter.train_ids[0]
    drapes = fitter.drapes
    steps = []
    for stage, step, code, drape_id in fitter.snapshots:
        drape = drapes[drape_id]
        d = drape(drape.constrain(code.to(fitter.device)[None]), fitter.betas)
        keep = present_points(d)
        points, weights = d.points, d.weights
        if keep is not None:
            points, weights = points[:, keep], (weights[:, keep] if weights.dim() == 3 else weights[keep])
        p = fitter.body.pose_points(points, weights, fitter.betas, frames.global_orient[first:first + 1],
                                    frames.body_pose[first:first + 1], frames.transl[first:first + 1])
        u, _ = project(p, frames.K[first:first + 1])
        v = visible_points(p, frames.depth[first:first + 1], frames.K[first:first + 1],
                           threshold=fitter.options.visibility_threshold)
        steps.append(_overlay(subject.frame(first), u[0].cpu().numpy(), v[0].cpu().numpy(), scale))
    if steps:
        _write_gif(fitter.out / RESULT_FILES[KIND_FIT_OUTFIT]["progress_gif"], steps, fps=3)


def _write_gif(path: Path, images: list[np.ndarray], fps: float) -> None:
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(images), extension=".gif", duration=1000 / fps, loop=0)
