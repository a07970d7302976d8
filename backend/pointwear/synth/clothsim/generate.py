"""One clothsim subject: garments from sewing patterns draped on the default body by Blender's
cloth simulator, rendered by Cycles, written in the subject format `pointwear synth` writes
(frames, masks, labels, smpl.npz, truth/), plus per-garment label maps.

Extra entries beside the subject format (readers ignore them):
    garments.json         {"1": "tshirt", "2": "jacket", ...}: garment id -> kind
    garment_labels/*.png  8-bit per-garment ids (0 none), same frames as labels/
labels/ holds the prepare contract's classes (perception.types LABEL_*: 1 upper, 2 lower,
3 onepiece); subject.json "labels" names them.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation as R

from ...body import BodyModel, load_body
from ...body.joints import JOINT_INDEX
from ...data.subject import KNOWN_ENTRIES, SmplParams, image_name, write_subject
from ...errors import SubjectError
from ...fileio import atomic_path, save_npz
from ...perception.types import LABEL_NAMES
from .. import camera
from ..generate import sample_surface
from ..scene import SceneAssets, render_frame
from ..texture import Texture, background
from .patterns import BodyShape, Pattern, build_pattern, signed_distance
from .plan import SMPL_TO_BLENDER, EVAL_SEEDS, TRAIN_SEEDS, ClothsimOptions, motion_plan, sample_garments, sample_look

GARMENTS_JSON = "garments.json"
GARMENT_LABELS_DIR = "garment_labels"
ALPHA_NPZ = "render_alpha.npz"
SOURCE = "clothsim"


def _check_out(out: Path) -> None:
    """Write only into a new folder or an earlier subject (never scatter files elsewhere)."""
    if out.exists() and not out.is_dir():
        raise SubjectError("exists and is not a folder", file=out, field="out")
    if out.is_dir():
        entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if entries - KNOWN_ENTRIES - {GARMENTS_JSON, GARMENT_LABELS_DIR}:
            raise SubjectError("folder holds files that are not a subject's", file=out, field="out",
                               hint="write clothsim subjects into a new or empty folder")


def split_of(seed: int) -> str:
    return "train" if seed in TRAIN_SEEDS else "eval" if seed in EVAL_SEEDS else "other"


def make_subject(out: str | Path, outfit: str, seed: int, options: ClothsimOptions,
                 body: BodyModel | None = None) -> dict:
    """Simulate, render and write one subject; returns its summary (timings, penetration)."""
    from .blender_sim import GarmentInput, SceneInput, simulate_and_render
    options.check()
    out = Path(out)
    _check_out(out)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    body = body or load_body("default", device="cpu")
    betas = np.zeros(body.num_betas, np.float32)
    betas[:4] = np.clip(rng.normal(0, 0.8, 4), -2, 2)
    rest_v, rest_j = (t[0].numpy().astype(np.float64) for t in body.shaped(betas))
    shape = BodyShape.from_rest(rest_v, rest_j, body.weights_np)
    specs = sample_garments(outfit, rng)
    patterns = [build_pattern(shape, s, options.res) for s in specs]
    look = sample_look(len(specs), rng)
    plan = motion_plan(options, rng)

    T = len(plan.poses)
    zeros = torch.zeros(T, 3)
    pose_t = torch.as_tensor(plan.poses[:, 1:].reshape(T, -1), dtype=torch.float32)
    with torch.no_grad():
        body_frames = body(betas, zeros, pose_t).vertices.numpy().astype(np.float64)
    cloth_weights = skin_weights(np.concatenate([p.vertices for p in patterns]), rest_v, body.weights_np)
    garments, start = [], 0
    for g, (p, s) in enumerate(zip(patterns, specs)):
        w = torch.as_tensor(cloth_weights[start:start + len(p.vertices)])
        start += len(p.vertices)
        with torch.no_grad():   # the T-pose placement skinned to every simulation frame's pose
            posed = body.pose_points(torch.as_tensor(p.vertices)[None], w, betas, zeros, pose_t).numpy()
        garments.append(GarmentInput(p, posed[0], posed if p.pinned.any() else None, f"{g + 1}_{p.kind}", s.layer))

    n, size = options.frames, options.size
    distance = float(rng.uniform(2.8, 3.4))
    pelvis = rest_j[JOINT_INDEX["pelvis"]]
    centre_drop = pelvis[1] - (rest_v[:, 1].max() + rest_v[:, 1].min()) / 2
    orient = camera.global_orient(plan.yaw).astype(np.float32)
    transl = camera.place_body(pelvis, distance, n, centre_drop)
    K = camera.intrinsics(size, distance)
    cams = np.stack([_blender_camera(R.from_rotvec(orient[k]).as_matrix(), pelvis, transl[k])
                     for k in range(n)])
    albedo = _body_albedo(shape, look)
    scene_in = SceneInput(body_frames=body_frames, body_faces=body.faces, body_albedo=albedo, garments=garments,
                          cameras=cams, lens_mm=float(K[0, 0]) * 36.0 / size, output_frames=plan.output_frames,
                          look=look, substeps=plan.substeps)
    t_setup = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="clothsim_render_") as tmp:
        cloth_local, rgba, blender_seconds = simulate_and_render(scene_in, options, Path(tmp))

    # Everything into the subject's camera space, as the body model places it.
    smpl = SmplParams(betas=betas, global_orient=orient,
                      body_pose=plan.poses[plan.output_frames, 1:].reshape(n, -1), transl=transl)
    rot = R.from_rotvec(orient).as_matrix()                                        # (n, 3, 3)
    to_cam = lambda pts: np.einsum("nij,npj->npi", rot, pts - pelvis) + (pelvis + transl)[:, None]  # noqa: E731
    with torch.no_grad():
        body_cam = body(smpl.betas, smpl.global_orient, smpl.body_pose, smpl.transl).vertices.numpy()
    cloth_cam = [to_cam(c) for c in cloth_local]
    result = _write(out, outfit, seed, options, plan, look, specs, patterns, cloth_local, cloth_cam, body_cam,
                    body_frames[plan.output_frames], body.faces, rgba, smpl, K, cloth_weights, rng, albedo)
    result["seconds"] = {"setup": round(t_setup, 2), "simulate": round(blender_seconds["simulate"], 2),
                         "render": round(blender_seconds["render"], 2), "total": round(time.perf_counter() - t0, 2)}
    _save_json(out / "truth" / "outfit.json", result)
    return result


def skin_weights(points: np.ndarray, body_vertices: np.ndarray, body_weights: np.ndarray, k: int = 8) -> np.ndarray:
    """(P, 24) skin weights for cloth points: the body weights of the k nearest rest vertices,
    averaged with Gaussian falloff (2 cm), so garments bend smoothly at the armpit and crotch."""
    dist, idx = cKDTree(body_vertices).query(points, k=k)
    w = np.exp(-0.5 * ((dist - dist[:, :1]) / 0.02) ** 2)
    out = np.einsum("pk,pkj->pj", w, body_weights[idx])
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def _blender_camera(rot: np.ndarray, pelvis: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """(4, 4) Blender matrix_world of the OpenCV camera that sees body-frame points p at
    rot (p - pelvis) + pelvis + transl. Blender cameras look down -Z with +Y up."""
    centre = pelvis - rot.T @ (pelvis + transl)
    m = np.eye(4)
    m[:3, :3] = SMPL_TO_BLENDER @ rot.T @ np.diag([1.0, -1.0, -1.0])
    m[:3, 3] = SMPL_TO_BLENDER @ centre
    return m


def _body_albedo(shape: BodyShape, look) -> np.ndarray:
    """(V, 3) skin with a simple hair cap, as the synth generator paints the body."""
    v = shape.vertices
    albedo = np.repeat(look.skin[None], len(v), 0)
    head = shape.joint("head")
    hair = shape.in_regions("head") & (v[:, 1] > head[1] + 0.045) & (v[:, 2] < head[2] + 0.07)
    albedo[hair] = look.hair
    return albedo


def _masks(body_cam: np.ndarray, body_faces: np.ndarray, cloth_cam: list[np.ndarray], patterns: list[Pattern],
           K: np.ndarray, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Clothing masks and per-garment ids (g + 1) of each frame from the simulated meshes,
    through our rasterizer (supersampled 2x), so they agree with the geometry exactly."""
    faces = np.concatenate([p.faces + off for p, off in zip(patterns, np.cumsum([0] + [len(p.vertices) for p in patterns[:-1]]))])
    face_garment = np.concatenate([np.full(len(p.faces), g) for g, p in enumerate(patterns)])
    rest = torch.as_tensor(np.concatenate([p.vertices for p in patterns]), dtype=torch.float32)
    assets = SceneAssets(body_faces=torch.as_tensor(body_faces), body_albedo=torch.zeros(body_cam.shape[1], 3),
                         cloth_faces=torch.as_tensor(faces), cloth_rest=rest, face_garment=torch.as_tensor(face_garment),
                         textures=[Texture("solid", np.ones((3, 3)))] * len(patterns),
                         background=np.zeros((size, size, 3), np.float32))
    masks, ids = [], []
    for k in range(len(body_cam)):
        cloth = torch.as_tensor(np.concatenate([c[k] for c in cloth_cam]), dtype=torch.float32)
        _, mask, label = render_frame(torch.as_tensor(body_cam[k]), cloth, assets, K, (size, size), ssaa=2)
        masks.append(mask)
        ids.append(label)
    return masks, ids


def _write(out: Path, outfit: str, seed: int, options: ClothsimOptions, plan, look, specs, patterns,
           cloth_local, cloth_cam, body_cam, body_local, body_faces, rgba, smpl, K, cloth_weights, rng,
           albedo) -> dict:
    n, size = options.frames, options.size
    masks, garment_ids = _masks(body_cam, body_faces, cloth_cam, patterns, K, size)
    classes = np.zeros(256, np.uint8)
    for g, s in enumerate(specs):
        classes[g + 1] = s.label_class
    labels = [classes[ids] for ids in garment_ids]
    backdrop = background((size, size), rng)
    frames = []
    for img in rgba:
        a = img[..., 3:4].astype(np.float32) / 255.0
        frames.append(np.clip(img[..., :3] / 255.0 * a + backdrop * (1 - a), 0, 1))

    # Penetration: signed distance of the cloth vertices to the posed body (body frame), per frame.
    verts = np.concatenate(cloth_local, 1)
    sd = np.concatenate([signed_distance(verts[k], body_local[k], body_faces) for k in range(n)])
    penetration = {"inside_share": round(float((sd < -0.002).mean()), 5),
                   "p99_depth_mm": round(float(max(0.0, -np.percentile(sd, 1)) * 1000), 2),
                   "max_depth_mm": round(float(max(0.0, -sd.min()) * 1000), 2)}

    _write_truth(out / "truth", patterns, np.concatenate(cloth_cam, 1), cloth_weights, options, rng)
    # Cycles' own coverage of body + cloth: an independent check that masks and camera agree.
    save_npz(out / "truth" / ALPHA_NPZ, alpha=np.stack([img[..., 3] for img in rgba]))
    garments = {str(g + 1): s.kind for g, s in enumerate(specs)}
    folder = out / GARMENT_LABELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for k, ids in enumerate(garment_ids):
        with atomic_path(folder / image_name(k)) as tmp:
            Image.fromarray(ids.astype(np.uint8)).save(tmp, format="PNG")
    _save_json(out / GARMENTS_JSON, garments)
    present = sorted({s.label_class for s in specs})
    meta = {"body": "default", "gender": "neutral", "fps": options.fps, "source": SOURCE, "outfit": outfit,
            "motion": plan.motion, "seed": seed, "split": split_of(seed), "garments": garments}
    write_subject(out, frames=frames, masks=masks, smpl=smpl, K=np.repeat(K[None], n, 0), meta=meta,
                  labels=labels, label_names={c: LABEL_NAMES[c] for c in present})
    return {"outfit": outfit, "seed": seed, "split": split_of(seed), "motion": plan.motion,
            "frames": n, "size": size, "samples": options.samples, "garments": [asdict(s) for s in specs],
            "looks": {"patterns": look.patterns, "periods": look.periods,
                      "colors": [c.round(4).tolist() for c in look.colors]},
            "vertices": [int(len(p.vertices)) for p in patterns], "sewing_pairs": [int(len(p.sew)) for p in patterns],
            "penetration": penetration, "options": asdict(options)}


def _write_truth(folder: Path, patterns: list[Pattern], posed: np.ndarray, weights: np.ndarray,
                 options: ClothsimOptions, rng: np.random.Generator) -> None:
    """truth/clothing.npz as `pointwear synth` writes it: points (N, P, 3) camera space on the
    simulated cloth with point_garment (P,); rest = the garments as placed before the drape."""
    rest = np.concatenate([p.vertices for p in patterns]).astype(np.float64)
    offsets = np.cumsum([0] + [len(p.vertices) for p in patterns[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(patterns, offsets)])
    garment = np.concatenate([np.full(len(p.vertices), g) for g, p in enumerate(patterns)]).astype(np.int32)
    face, bary = sample_surface(rest, faces, options.points, rng)
    corners = faces[face]
    w = np.einsum("pk,pkj->pj", bary, weights[corners])
    save_npz(folder / "clothing.npz",
             points=np.einsum("pk,npkc->npc", bary, posed[:, corners]).astype(np.float32),
             rest_points=np.einsum("pk,pkc->pc", bary, rest[corners]).astype(np.float32),
             weights=(w / w.sum(1, keepdims=True)).astype(np.float32),
             point_garment=garment[corners[:, 0]], mesh_vertices=rest.astype(np.float32),
             mesh_faces=faces.astype(np.int32), mesh_weights=weights.astype(np.float32), mesh_garment=garment,
             posed_mesh_vertices=posed.astype(np.float32), garment_names=np.array([p.kind for p in patterns]))
    with atomic_path(folder / "clothing_rest.ply") as tmp:
        trimesh.Trimesh(rest, faces, process=False).export(tmp, file_type="ply")


def _save_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
