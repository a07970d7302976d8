"""`pointwear synth`: a synthetic subject on the default body (or any SMPL body) with a known
outfit, rendered by our own rasterizer, written in the subject format with its ground truth."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from ..body import BodyModel, load_body
from ..body.joints import JOINT_INDEX
from ..data.subject import SmplParams, write_subject
from ..fileio import atomic_path, save_npz
from ..garment.body_frame import BodyFrame
from ..garment.families import outfit_spec_error
from ..garment.outfit import Detail, GarmentMesh, build_outfit, sample_outfit
from . import camera
from .motion import MOTIONS, make_motion
from .scene import SceneAssets, render_frame
from .texture import background, random_skin, random_texture

Progress = Callable[[str, int, int], None]


@dataclass
class SynthOptions:
    frames: int = 8
    size: int = 512
    outfit: str = "random"
    motion: str = "turntable"
    seed: int = 0
    betas: np.ndarray | None = None     # None: sampled from the seed
    body: str = "default"
    points: int = 8192                  # truth points sampled on the clothing surface
    ssaa: int = 2
    fps: float = 12.0

    def check(self) -> None:
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if not 32 <= self.size <= 4096:
            raise ValueError(f"--size must be within 32..4096 pixels, got {self.size}")
        problem = outfit_spec_error(self.outfit, allow_random=True)
        if problem:
            raise ValueError(f"--outfit: {problem}")
        if self.motion not in MOTIONS:
            raise ValueError(f"--motion must be one of {list(MOTIONS)}, got {self.motion!r}")


def generate_subject(out: str | Path, options: SynthOptions, progress: Progress | None = None,
                     body: BodyModel | None = None) -> Path:
    options.check()
    out = Path(out)
    rng = np.random.default_rng(options.seed)
    body = body or load_body(options.body, device="cpu")
    betas = _betas(options, body, rng)

    rest_verts, rest_joints = (t[0].cpu().numpy() for t in body.shaped(betas))
    frame = BodyFrame(rest_verts, rest_joints, body.weights_np)
    params, names = sample_outfit(options.outfit, rng)
    detail = Detail(wrinkle_amp=float(rng.uniform(0.003, 0.008)), hem_asym=float(rng.uniform(0.01, 0.03)),
                    seed=int(rng.integers(2**31)))
    with torch.no_grad():
        outfit = build_outfit(frame, params, names, detail)

    n = options.frames
    yaw, pose = make_motion(options.motion, n, rng)
    distance = float(rng.uniform(2.8, 3.4))
    centre_drop = rest_joints[JOINT_INDEX["pelvis"], 1] - (rest_verts[:, 1].max() + rest_verts[:, 1].min()) / 2
    smpl = SmplParams(betas=betas.astype(np.float32),
                      global_orient=camera.global_orient(yaw).astype(np.float32),
                      body_pose=pose[:, 1:].reshape(n, -1).astype(np.float32),
                      transl=camera.place_body(rest_joints[JOINT_INDEX["pelvis"]], distance, n, centre_drop))
    K = camera.intrinsics(options.size, distance)

    with torch.no_grad():
        posed = body(smpl.betas, smpl.global_orient, smpl.body_pose, smpl.transl)
        cloth = body.pose_points(outfit.vertices[None], torch.as_tensor(outfit.weights), smpl.betas,
                                 smpl.global_orient, smpl.body_pose, smpl.transl)
    assets = _assets(body, frame, outfit, rng, (options.size, options.size))

    frames, masks, labels = [], [], []
    # A bar only on a terminal (disable=None) and only without a progress callback.
    for i in tqdm(range(n), desc="render", disable=True if progress is not None else None, leave=False):
        rgb, mask, label = render_frame(posed.vertices[i], cloth[i], assets, K, (options.size, options.size),
                                        ssaa=options.ssaa)
        frames.append(rgb), masks.append(mask), labels.append(label)
        if progress:
            progress("render", i + 1, n)

    meta = {"body": options.body, "gender": "neutral", "fps": options.fps, "source": "synth",
            "outfit": options.outfit, "motion": options.motion, "seed": options.seed}
    write_subject(out, frames=frames, masks=masks, smpl=smpl, K=np.repeat(K[None], n, 0), meta=meta,
                  labels=labels, label_names={g + 1: name for g, name in enumerate(outfit.names)})
    _write_truth(out / "truth", outfit, cloth.cpu().numpy(), options, rng, assets)
    return out


def _betas(options: SynthOptions, body: BodyModel, rng: np.random.Generator) -> np.ndarray:
    if options.betas is not None:
        return body.betas_tensor(options.betas)[0].cpu().numpy()
    betas = np.zeros(body.num_betas)
    betas[: min(4, body.num_betas)] = np.clip(rng.normal(0, 0.8, min(4, body.num_betas)), -2, 2)
    return betas


def _assets(body: BodyModel, frame: BodyFrame, outfit: GarmentMesh, rng: np.random.Generator,
            size: tuple[int, int]) -> SceneAssets:
    skin = random_skin(rng)
    albedo = np.repeat(skin[None], len(frame.vertices), 0)
    head = frame.joints[JOINT_INDEX["head"]]
    hair = (np.isin(frame.labels, [0]) & (frame.vertices[:, 1] > head[1] + 0.045)
            & (frame.vertices[:, 2] < head[2] + 0.07))   # label 0 = head region
    albedo[hair] = np.array([0.12, 0.08, 0.05]) * rng.uniform(0.6, 2.5)
    return SceneAssets(
        body_faces=torch.as_tensor(body.faces), body_albedo=torch.as_tensor(albedo, dtype=torch.float32),
        cloth_faces=torch.as_tensor(outfit.faces), cloth_rest=outfit.vertices.detach().float(),
        face_garment=torch.as_tensor(outfit.face_garment), textures=[random_texture(rng) for _ in outfit.names],
        background=background(size, rng))


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform samples: (face index (count,), barycentrics (count, 3))."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.uniform(size=count)), rng.uniform(size=count)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)
    return face, bary


def _write_truth(folder: Path, outfit: GarmentMesh, posed_vertices: np.ndarray, options: SynthOptions,
                 rng: np.random.Generator, assets: SceneAssets) -> None:
    """What the generator knows: clothing points per frame (camera space), the mesh, params."""
    rest = outfit.vertices.detach().cpu().numpy()
    face, bary = sample_surface(rest, outfit.faces, options.points, rng)
    corners = outfit.faces[face]
    interp = lambda a: np.einsum("pk,pk...->p...", bary, a[corners])  # noqa: E731
    weights = interp(outfit.weights)
    save_npz(folder / "clothing.npz",
             points=np.einsum("pk,npkc->npc", bary, posed_vertices[:, corners]).astype(np.float32),
             rest_points=interp(rest).astype(np.float32),
             weights=(weights / weights.sum(1, keepdims=True)).astype(np.float32),
             point_garment=outfit.garment[corners[:, 0]].astype(np.int32),
             mesh_vertices=rest.astype(np.float32), mesh_faces=outfit.faces.astype(np.int32),
             mesh_weights=outfit.weights, mesh_garment=outfit.garment.astype(np.int32),
             posed_mesh_vertices=posed_vertices.astype(np.float32),
             garment_names=np.array(outfit.names))
    description = outfit.describe() | {"textures": [t.pattern for t in assets.textures],
                                       "outfit_kind": options.outfit}
    with atomic_path(folder / "outfit.json") as tmp:
        tmp.write_text(json.dumps(description, indent=2))
    with atomic_path(folder / "clothing_rest.ply") as tmp:
        trimesh.Trimesh(rest, outfit.faces, process=False).export(tmp, file_type="ply")
