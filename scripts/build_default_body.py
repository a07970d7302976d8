"""Build Pointwear's free `default` body (SMPL layout) from the Anny body model.

Build-time only: runs in its own venv (scripts/build_default_body.sh) because anny needs numpy 2
and warp; nothing at run time imports anny. The output npz has exactly the keys of an official
SMPL model (plus a few extras), so one reader serves both.

Steps: sample adult Anny phenotypes -> re-bake Anny's A-pose to SMPL's T-pose by LBS -> convert
axes to SMPL (Y-up, faces +Z, +X = body's left) -> merge Anny's bone weights onto SMPL's 24
joints -> PCA (template = mean, 10 unit-variance betas, +beta1 = taller) -> joint regressor by
ridge regression over a ring of vertices -> smplx checks and renders.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NUM_BETAS = 10
NUM_POSE_BASIS = 207  # 23 joints x 9, as in SMPL; kept (all zero) so SMPL readers work unchanged.
ROOT_PARENT = 4294967295  # how official SMPL files mark the root in kintree_table

# Anny (x, y, z) -> SMPL (x, z, -y): Anny is Z-up and faces -Y, SMPL is Y-up and faces +Z.
ANNY_TO_SMPL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

TOES = ["toe1-1", "toe1-2"] + [f"toe{t}-{p}" for t in range(2, 6) for p in range(1, 4)]
FINGERS = [f"finger{f}-{p}" for f in range(2, 6) for p in range(1, 4)]
PALM = ["wrist", "metacarpal1", "metacarpal2", "metacarpal3", "metacarpal4",
        "finger1-1", "finger1-2", "finger1-3"]

# SMPL joint -> Anny bones whose skin weights it takes ("{S}" = L/R). Every Anny bone exactly once.
JOINT_BONES: dict[str, list[str]] = {
    "pelvis": ["root", "pelvis.L", "pelvis.R", "spine05"],
    "{s}_hip": ["upperleg01.{S}", "upperleg02.{S}"],
    "spine1": ["spine04", "spine03"],
    "{s}_knee": ["lowerleg01.{S}", "lowerleg02.{S}"],
    "spine2": ["spine02"],
    "{s}_ankle": ["foot.{S}"],
    "spine3": ["spine01"],
    "{s}_foot": [f"{b}.{{S}}" for b in TOES],
    "neck": ["neck01", "neck02", "neck03"],
    "{s}_collar": ["clavicle.{S}", "shoulder01.{S}"],
    "head": ["head", "eye.L", "eye.R"],
    "{s}_shoulder": ["upperarm01.{S}", "upperarm02.{S}"],
    "{s}_elbow": ["lowerarm01.{S}", "lowerarm02.{S}"],
    "{s}_wrist": [f"{b}.{{S}}" for b in PALM],
    "{s}_hand": [f"{b}.{{S}}" for b in FINGERS],
}
# SMPL joint -> Anny bones whose rest heads (averaged) give the joint location.
JOINT_HEADS: dict[str, list[str]] = {
    "pelvis": ["root"], "{s}_hip": ["upperleg01.{S}"], "spine1": ["spine04"],
    "{s}_knee": ["lowerleg01.{S}"], "spine2": ["spine02"], "{s}_ankle": ["foot.{S}"],
    "spine3": ["spine01"], "{s}_foot": [f"toe{t}-1.{{S}}" for t in range(1, 6)],
    "neck": ["neck01"], "{s}_collar": ["clavicle.{S}"], "head": ["head"],
    "{s}_shoulder": ["upperarm01.{S}"], "{s}_elbow": ["lowerarm01.{S}"],
    "{s}_wrist": ["wrist.{S}"], "{s}_hand": [f"finger{f}-1.{{S}}" for f in range(2, 6)],
}
# smplx extra keypoints, in the order stored in the npz.
VERTEX_ID_NAMES = ["nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel",
                   "RBigToe", "RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring",
                   "lpinky", "rthumb", "rindex", "rmiddle", "rring", "rpinky"]
TIP_BONES = {"thumb": "finger1-3", "index": "finger2-3", "middle": "finger3-3",
             "ring": "finger4-3", "pinky": "finger5-3"}
# Re-baked arm groups; each group is rigidly moved by one transform per sample.
ARM_GROUPS = ["upper.L", "fore.L", "hand.L", "upper.R", "fore.R", "hand.R"]


def log(msg: str) -> None:
    """Timestamped progress so a slow step is easy to spot."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_smpl_joint_table() -> tuple[list[str], np.ndarray]:
    """SMPL joint names and parents from the project's single definition (file path import, so
    the backend package and its run-time dependencies are never imported here)."""
    path = REPO / "backend" / "pointwear" / "body" / "joints.py"
    spec = importlib.util.spec_from_file_location("_pointwear_joints", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.JOINT_NAMES), np.asarray(mod.PARENTS, dtype=np.int64)


def expand_sides(table: dict[str, list[str]]) -> dict[str, list[str]]:
    """Expand "{s}_x" rows into left_x (.L bones) and right_x (.R bones)."""
    out: dict[str, list[str]] = {}
    for key, bones in table.items():
        if "{s}" in key:
            for side, s in (("left", "L"), ("right", "R")):
                out[key.format(s=side)] = [b.format(S=s) for b in bones]
        else:
            out[key] = bones
    return out


# ---------------------------------------------------------------------------------------------
# Anny access
# ---------------------------------------------------------------------------------------------

@dataclass
class AnnyRig:
    """What the builder needs from Anny's rig and mesh (numpy, fixed for all shapes)."""
    labels: list[str]
    parents: list[int]
    faces: np.ndarray          # (F, 3) int64
    uvs: np.ndarray | None     # (T, 2)
    uv_faces: np.ndarray | None  # (F, 3)
    bone_weights: np.ndarray   # (V, B) dense skin weights, rows sum to 1

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def subtree(self, label: str) -> set[int]:
        """Indices of a bone and all its descendants."""
        root = self.index(label)
        out = {root}
        for i, p in enumerate(self.parents):  # parents precede children in Anny's order
            if p in out:
                out.add(i)
        return out


def load_anny():  # -> anny.Anny (untyped: anny is imported lazily, build venv only)
    """Anny's default model (rig "anny", topology "anny" = MakeHuman CC0 mesh). Never the
    non-commercial "smpl"/"smplx" topologies, and nothing is downloaded."""
    import anny
    return anny.Anny(rig="anny", topology="anny", phenotypes="default")


def rig_from_model(model) -> AnnyRig:
    """Copy rig, faces, UVs and dense skin weights out of the torch model."""
    n_verts = model.template_vertices.shape[0]
    idx = model.vertex_bone_indices.cpu().numpy()
    w = model.vertex_bone_weights.cpu().numpy().astype(np.float64)
    dense = np.zeros((n_verts, len(model.bone_labels)))
    np.add.at(dense, (np.repeat(np.arange(n_verts), idx.shape[1]), idx.ravel()), w.ravel())
    uvs = model.texture_coordinates
    uvf = model.face_texture_coordinate_indices
    return AnnyRig(
        labels=list(model.bone_labels), parents=list(model.bone_parents),
        faces=model.faces.cpu().numpy().astype(np.int64),
        uvs=None if uvs is None else uvs.cpu().numpy().astype(np.float64),
        uv_faces=None if uvf is None else uvf.cpu().numpy().astype(np.int64),
        bone_weights=dense,
    )


def sample_phenotypes(model, n: int, seed: int, age_range: tuple[float, float]) -> dict:
    """Adult phenotypes from Anny's WHO-calibrated sampler: morphological age uniform over
    age_range years, gender uniform in [0, 1]. Seeded so the output is deterministic."""
    import torch
    from anny.shape_distribution import SimpleShapeDistribution
    torch.manual_seed(seed)
    ages = torch.distributions.Uniform(torch.tensor(age_range[0], dtype=model.dtype),
                                       torch.tensor(age_range[1], dtype=model.dtype))
    dist = SimpleShapeDistribution(model, morphological_age_distribution=ages)
    morph_age, kwargs = dist.sample(n)
    out = {k: v.detach().cpu().numpy() for k, v in kwargs.items()}
    out["morphological_age"] = morph_age.detach().cpu().numpy()
    return out


def anny_rest_shapes(model, phen: dict, batch: int):
    """Yield (rest_vertices (B,V,3), rest_bone_heads (B,104,3)) in Anny axes, batch by batch."""
    import torch
    n = len(phen["age"])
    with torch.no_grad():
        for a in range(0, n, batch):
            kw = {k: torch.as_tensor(phen[k][a:a + batch], dtype=model.dtype)
                  for k in model.phenotype_labels}
            out = model(phenotype_kwargs=kw)
            yield out["rest_vertices"].cpu().numpy(), out["rest_bone_heads"].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# A-pose -> T-pose re-bake
# ---------------------------------------------------------------------------------------------

def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotations (B,3,3) taking directions a (B,3) onto b (3,): no added twist, so the
    palms keep the orientation they had relative to the arm."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = a @ b
    vx = np.zeros(a.shape[:-1] + (3, 3))
    vx[..., 0, 1], vx[..., 0, 2], vx[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    vx = vx - np.swapaxes(vx, -1, -2)
    k = (1.0 / (1.0 + c))[..., None, None]  # a is never opposite to b here (arm below horizontal)
    return np.eye(3) + vx + vx @ vx * k


def rotate_about(rot: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """Affine (B,3,4) for x -> R (x - p) + p."""
    return np.concatenate([rot, (pivot - np.einsum("bij,bj->bi", rot, pivot))[..., None]], -1)


def compose(t2: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Affine t2 after t1, both (B,3,4)."""
    rot = t2[..., :3] @ t1[..., :3]
    return np.concatenate([rot, (np.einsum("bij,bj->bi", t2[..., :3], t1[..., 3]) + t2[..., 3])[..., None]], -1)


def apply_affine(t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply (B,3,4) to points (B,3)."""
    return np.einsum("bij,bj->bi", t[..., :3], x) + t[..., 3]


def arm_group_of_bone(rig: AnnyRig) -> np.ndarray:
    """Group per Anny bone: -1 = not moved, else an index into ARM_GROUPS (upper arm, forearm,
    hand of each side; each moves rigidly with its own re-bake transform)."""
    group = -np.ones(len(rig.labels), dtype=np.int64)
    for s_i, s in enumerate("LR"):
        upper, fore, hand = (rig.subtree(f"{b}.{s}") for b in ("upperarm01", "lowerarm01", "wrist"))
        group[list(upper - fore)] = 3 * s_i
        group[list(fore - hand)] = 3 * s_i + 1
        group[list(hand)] = 3 * s_i + 2
    return group


def tpose_transforms(heads: np.ndarray, rig: AnnyRig) -> np.ndarray:
    """Per-sample world transforms (B,6,3,4) of the arm groups that straighten each arm along
    +-x: shoulder->elbow, then elbow->wrist, then wrist->knuckles (the SMPL T-pose)."""
    out = []
    for s, sign in (("L", 1.0), ("R", -1.0)):
        target = np.array([sign, 0.0, 0.0])
        sh, el, wr = (heads[:, rig.index(f"{b}.{s}")] for b in ("upperarm01", "lowerarm01", "wrist"))
        kn = heads[:, [rig.index(f"finger{f}-1.{s}") for f in range(2, 6)]].mean(1)
        t_upper = rotate_about(rotation_between(el - sh, target), sh)
        el1, wr1 = apply_affine(t_upper, el), apply_affine(t_upper, wr)
        t_fore = compose(rotate_about(rotation_between(wr1 - el1, target), el1), t_upper)
        wr2, kn2 = apply_affine(t_fore, wr), apply_affine(t_fore, kn)
        t_hand = compose(rotate_about(rotation_between(kn2 - wr2, target), wr2), t_fore)
        out += [t_upper, t_fore, t_hand]
    return np.stack(out, 1)


def rebake(verts: np.ndarray, heads: np.ndarray, rig: AnnyRig, vert_group_w: np.ndarray,
           bone_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LBS of the rest shapes into the T-pose with Anny's own weights; bone heads move rigidly
    with their group. Returns (verts, heads), both still in Anny axes."""
    tr = tpose_transforms(heads, rig)                                     # (B,6,3,4)
    ident = np.broadcast_to(np.eye(3, 4), tr.shape[:1] + (1, 3, 4))
    tr = np.concatenate([ident, tr], 1)                                   # group 0 = unmoved
    blend = np.einsum("vg,bgij->bvij", vert_group_w, tr)
    new_v = np.einsum("bvij,bvj->bvi", blend[..., :3], verts) + blend[..., 3]
    new_h = heads.copy()
    for g in range(len(ARM_GROUPS)):
        sel = np.where(bone_group == g)[0]
        new_h[:, sel] = np.einsum("bij,bkj->bki", tr[:, g + 1, :, :3], heads[:, sel]) + tr[:, g + 1, None, :, 3]
    return new_v, new_h


# ---------------------------------------------------------------------------------------------
# SMPL layout
# ---------------------------------------------------------------------------------------------

def bone_to_joint_matrix(rig: AnnyRig, names: list[str]) -> np.ndarray:
    """One-hot (B_anny, 24): which SMPL joint takes each Anny bone's weights."""
    table = expand_sides(JOINT_BONES)
    m = np.zeros((len(rig.labels), len(names)))
    for j, name in enumerate(names):
        for bone in table[name]:
            m[rig.index(bone), j] = 1.0
    if not np.all(m.sum(1) == 1):
        missing = [rig.labels[i] for i in np.where(m.sum(1) != 1)[0]]
        raise SystemExit(f"bone mapping must use every Anny bone exactly once; bad: {missing}")
    return m


def joint_head_matrix(rig: AnnyRig, names: list[str]) -> np.ndarray:
    """(24, B_anny) averaging matrix: SMPL joint = mean of the listed Anny bone heads."""
    table = expand_sides(JOINT_HEADS)
    m = np.zeros((len(names), len(rig.labels)))
    for j, name in enumerate(names):
        for bone in table[name]:
            m[j, rig.index(bone)] = 1.0 / len(table[name])
    return m


def connected_components(faces: np.ndarray, n_verts: int) -> np.ndarray:
    """Component label per vertex (min-label propagation with pointer jumping; numpy only)."""
    lab = np.arange(n_verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    while True:
        old = lab.copy()
        m = np.minimum(lab[edges[:, 0]], lab[edges[:, 1]])
        np.minimum.at(lab, edges[:, 0], m)
        np.minimum.at(lab, edges[:, 1], m)
        lab = lab[lab]
        if np.array_equal(lab, old):
            return np.unique(lab, return_inverse=True)[1]


def stature(verts: np.ndarray) -> np.ndarray:
    """Top-of-head to sole height (m) for (..., V, 3) in SMPL axes."""
    return verts[..., 1].max(-1) - verts[..., 1].min(-1)


@dataclass
class ShapeSpace:
    """PCA of the T-posed shapes: template, unit-variance directions, per-sample betas."""
    mean: np.ndarray       # (V,3)
    dirs: np.ndarray       # (V,3,K): PC * std, so betas have unit variance
    betas: np.ndarray      # (N,K)
    var_ratio: np.ndarray  # (K,)


def pca(x: np.ndarray, k: int, stat: np.ndarray) -> ShapeSpace:
    """PCA through the N x N Gram matrix (N << 3V) in float64, column block by block. Signs:
    +beta1 = taller; the others point so their largest vertex offset is positive."""
    n, d = x.shape
    mean = x.astype(np.float64).mean(0)
    gram = np.zeros((n, n))
    for a in range(0, d, 4096):
        blk = x[:, a:a + 4096].astype(np.float64) - mean[a:a + 4096]
        gram += blk @ blk.T
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    std = np.sqrt(evals[:k] / (n - 1))
    dirs = np.zeros((d, k))
    for a in range(0, d, 4096):
        blk = x[:, a:a + 4096].astype(np.float64) - mean[a:a + 4096]
        dirs[a:a + 4096] = blk.T @ evecs[:, :k] / np.sqrt(evals[:k]) * std  # unit PC * std
    betas = evecs[:, :k] * np.sqrt(n - 1)
    signs = np.sign(dirs[np.abs(dirs).argmax(0), np.arange(k)])
    signs[0] = np.sign(np.corrcoef(betas[:, 0], stat)[0, 1])
    return ShapeSpace(mean=mean.reshape(-1, 3), dirs=(dirs * signs).reshape(-1, 3, k),
                      betas=betas * signs, var_ratio=evals[:k] / evals.sum())


def reconstruction_error(x: np.ndarray, space: ShapeSpace) -> dict[str, float]:
    """Per-vertex error (mm) of the K-PC reconstruction over all samples."""
    errs = []
    dirs = space.dirs.reshape(-1, space.dirs.shape[-1])
    for a in range(0, x.shape[0], 200):
        rec = space.mean.reshape(-1) + space.betas[a:a + 200] @ dirs.T
        errs.append(np.linalg.norm((x[a:a + 200] - rec).reshape(len(rec), -1, 3), axis=-1))
    e = np.concatenate(errs).ravel() * 1000
    return {"mean_mm": float(e.mean()), "p99_mm": float(np.percentile(e, 99)), "max_mm": float(e.max())}


def joint_rings(template: np.ndarray, joints: np.ndarray, parents: np.ndarray, body: np.ndarray,
                k: int, along: float) -> list[np.ndarray]:
    """Per joint, the k body vertices nearest to it with distance along the parent->joint axis
    weighted by `along`: a ring/slab of surface around the joint rather than a ball."""
    rings = []
    cand = np.where(body)[0]
    for j in range(len(joints)):
        ref = joints[parents[j]] if parents[j] >= 0 else joints[int(np.where(parents == j)[0][-1])]
        axis = joints[j] - ref if parents[j] >= 0 else ref - joints[j]
        axis = axis / np.linalg.norm(axis)
        d = template[cand] - joints[j]
        par = d @ axis
        dist = (d * d).sum(1) + (along ** 2 - 1) * par ** 2
        rings.append(cand[np.argsort(dist)[:k]])
    return rings


def fit_regressor(verts: np.ndarray, joints: np.ndarray, rings: list[np.ndarray], lam: float,
                  n_verts: int) -> np.ndarray:
    """Dense (24,V) regressor: per joint, ridge least squares over the samples on its ring,
    rows constrained to sum to 1 (so joints follow translations exactly), via the KKT system.
    Coordinates are centred on the mean joint so lam acts on local geometry (m^2 scale)."""
    reg = np.zeros((len(rings), n_verts))
    for j, ring in enumerate(rings):
        c = joints[:, j].mean(0)
        a = (verts[:, ring, :].astype(np.float64) - c).transpose(0, 2, 1).reshape(-1, len(ring))
        b = (joints[:, j] - c).reshape(-1)
        k = len(ring)
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = a.T @ a / len(b) + lam * np.eye(k)
        kkt[:k, k] = kkt[k, :k] = 1.0
        rhs = np.concatenate([a.T @ b / len(b), [1.0]])
        reg[j, ring] = np.linalg.solve(kkt, rhs)[:k]
    return reg


def regressor_errors(reg: np.ndarray, verts: np.ndarray, joints: np.ndarray,
                     space: ShapeSpace, idx: np.ndarray) -> dict[str, float]:
    """Joint error (mm) on held-out samples: on their true vertices and on their 10-PC shapes."""
    true = np.einsum("jv,nvc->njc", reg, verts[idx].astype(np.float64), optimize=True)
    base = reg @ space.mean
    dirj = np.einsum("jv,vck->jck", reg, space.dirs)
    pcs = base + np.einsum("jck,nk->njc", dirj, space.betas[idx])
    e_true = np.linalg.norm(true - joints[idx], axis=-1) * 1000
    e_pc = np.linalg.norm(pcs - joints[idx], axis=-1) * 1000
    return {"pc_mean_mm": float(e_pc.mean()), "pc_max_mm": float(e_pc.max()),
            "true_mean_mm": float(e_true.mean()), "true_max_mm": float(e_true.max()),
            "row_l2_max": float(np.linalg.norm(reg, axis=1).max())}


def affine_joint_error(joints: np.ndarray, betas: np.ndarray) -> dict[str, float]:
    """How well any beta-linear joint model can do: least-squares affine fit of joints on betas."""
    a = np.concatenate([np.ones((len(betas), 1)), betas], 1)
    y = joints.reshape(len(joints), -1)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    e = np.linalg.norm((a @ coef - y).reshape(joints.shape), axis=-1) * 1000
    return {"mean_mm": float(e.mean()), "max_mm": float(e.max())}


# ---------------------------------------------------------------------------------------------
# Keypoint vertices (smplx "vertex_ids"), derived from geometry and Anny's bones
# ---------------------------------------------------------------------------------------------

def derive_vertex_ids(template: np.ndarray, joints: np.ndarray, names: list[str], rig: AnnyRig,
                      comp: np.ndarray, body_comp: int) -> dict[str, int]:
    """Rules, not indices: nose = most forward midline head vertex; eyes = most forward vertex
    of each eyeball; ears = most lateral head vertex; toe tips = vertex of the big/small toe's
    last bone farthest from the ankle; heel = rearmost foot vertex near the sole; fingertips =
    vertex of each finger's last bone farthest from the wrist."""
    dom = rig.bone_weights.argmax(1)
    body = comp == body_comp
    jn = {n: joints[i] for i, n in enumerate(names)}

    def pick(mask: np.ndarray, score: np.ndarray, what: str) -> int:
        if not mask.any():
            raise SystemExit(f"no vertex for keypoint {what}")
        i = np.where(mask)[0]
        return int(i[np.argmax(score[i])])

    head = body & (dom == rig.index("head"))
    out = {"nose": pick(head & (np.abs(template[:, 0]) < 0.005), template[:, 2], "nose")}
    for s, side, sign in (("l", "L", 1.0), ("r", "R", -1.0)):
        eye = (dom == rig.index(f"eye.{side}")) & ~body
        out[f"{s}eye"] = pick(eye, template[:, 2], f"{s}eye")
        out[f"{s}ear"] = pick(head, sign * template[:, 0], f"{s}ear")
        ankle = jn[f"{'left' if s == 'l' else 'right'}_ankle"]
        dist_ankle = np.linalg.norm(template - ankle, axis=1)
        big = body & (dom == rig.index(f"toe1-2.{side}"))
        small = body & (dom == rig.index(f"toe5-3.{side}"))
        out[f"{side}BigToe"] = pick(big, dist_ankle, "BigToe")
        out[f"{side}SmallToe"] = pick(small, dist_ankle, "SmallToe")
        foot = body & (dom == rig.index(f"foot.{side}"))
        sole = template[foot, 1].min()
        out[f"{side}Heel"] = pick(foot & (template[:, 1] < sole + 0.02), -template[:, 2], "Heel")
        wrist = jn[f"{'left' if s == 'l' else 'right'}_wrist"]
        dist_wrist = np.linalg.norm(template - wrist, axis=1)
        for tip, bone in TIP_BONES.items():
            out[f"{s}{tip}"] = pick(body & (dom == rig.index(f"{bone}.{side}")), dist_wrist, tip)
    return {k: out[k] for k in VERTEX_ID_NAMES}


# ---------------------------------------------------------------------------------------------
# Checks (smplx) and renders
# ---------------------------------------------------------------------------------------------

def smplx_checks(arrays: dict, vids: dict[str, int], names: list[str]) -> dict:
    """Load the result exactly as Pointwear will (smplx.SMPL from a data struct) and check the
    layout: zero pose = template, joint order and sides, elbow bend, beta1 = stature."""
    import torch
    import smplx
    j = {n: i for i, n in enumerate(names)}
    model = smplx.SMPL(model_path="", data_struct=smplx.utils.Struct(**arrays), vertex_ids=vids)
    with torch.no_grad():
        out0 = model()
        v0, j0 = out0.vertices[0].numpy(), out0.joints[0].numpy()
        res: dict = {"zero_pose_max_diff_m": float(np.abs(v0 - arrays["v_template"]).max()),
                     "n_joints_out": int(out0.joints.shape[1])}
        wmax = arrays["weights"].argmax(1)
        lowest = int(wmax[v0[:, 1].argmin()])
        res["order"] = {
            "head_above_pelvis": bool(j0[j["head"], 1] > j0[j["pelvis"], 1]),
            "left_hip_at_+x": bool(j0[j["left_hip"], 0] > 0 > j0[j["right_hip"], 0]),
            "left_shoulder_at_+x": bool(j0[j["left_shoulder"], 0] > 0 > j0[j["right_shoulder"], 0]),
            "feet_lowest": bool(names[lowest].endswith(("ankle", "foot"))
                                and min(j0[j[n], 1] for n in ("left_foot", "right_foot", "left_ankle", "right_ankle"))
                                == j0[:24, 1].min()),
            "knees_between": bool(all(j0[j[f"{s}_hip"], 1] > j0[j[f"{s}_knee"], 1] > j0[j[f"{s}_ankle"], 1]
                                      for s in ("left", "right"))),
            "nose_forward": bool(v0[vids["nose"], 2] > j0[j["head"], 2]),
        }
        pose = torch.zeros(1, 69)
        pose[0, (j["left_elbow"] - 1) * 3 + 1] = -math.pi / 2
        out1 = model(body_pose=pose)
        v1, j1 = out1.vertices[0].numpy(), out1.joints[0].numpy()
        move = np.linalg.norm(v1 - v0, axis=1)
        lh = np.isin(wmax, [j["left_wrist"], j["left_hand"]])
        rh = np.isin(wmax, [j["right_wrist"], j["right_hand"]])
        res["left_elbow_90"] = {
            "left_wrist_before": j0[j["left_wrist"]].round(3).tolist(),
            "left_wrist_after": j1[j["left_wrist"]].round(3).tolist(),
            "left_hand_mean_move_m": float(move[lh].mean()),
            "right_hand_max_move_m": float(move[rh].max()),
            "verts_moved_gt_1mm": int((move > 1e-3).sum()),
            "forearm_forward": bool(j1[j["left_wrist"], 2] > j0[j["left_wrist"], 2] + 0.1),
        }
        sweep = np.linspace(-2, 2, 9)
        stat = []
        for b in sweep:
            betas = torch.zeros(1, arrays["shapedirs"].shape[-1])
            betas[0, 0] = float(b)
            stat.append(float(stature(model(betas=betas).vertices[0].numpy())))
        res["stature_vs_beta1"] = dict(zip([f"{b:+.1f}" for b in sweep], [round(s, 4) for s in stat]))
        res["stature_monotonic"] = bool(np.all(np.diff(stat) > 0))
    res["weights_row_sum_max_err"] = float(np.abs(arrays["weights"].sum(1) - 1).max())
    res["regressor_row_sum_max_err"] = float(np.abs(arrays["J_regressor"].sum(1) - 1).max())
    res["all_passed"] = bool(res["zero_pose_max_diff_m"] < 1e-5 and all(res["order"].values())
                             and res["left_elbow_90"]["right_hand_max_move_m"] == 0.0
                             and res["left_elbow_90"]["forearm_forward"]
                             and res["stature_monotonic"] and res["weights_row_sum_max_err"] < 1e-5
                             and res["regressor_row_sum_max_err"] < 1e-4)
    return res


VIEWS = {  # name -> (screen-right axis, screen-up axis, toward-camera axis), SMPL axes
    "front": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])),
    "side": (np.array([0, 0, -1.0]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0])),
    "top": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, 1.0, 0])),
    "bottom": (np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), np.array([0, -1.0, 0])),
}


def render(verts: np.ndarray, faces: np.ndarray, view: str, size: int = 480,
           colors: np.ndarray | None = None, box: tuple[np.ndarray, float] | None = None):
    """Orthographic flat-shaded render (painter's algorithm, back faces culled) to a PIL image.
    box = (centre, half-width in m) to zoom; default fits the mesh."""
    from PIL import Image, ImageDraw
    right, up, toward = VIEWS[view]
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    facing = n @ toward
    keep = facing > 0
    centre, half = box if box is not None else ((verts.max(0) + verts.min(0)) / 2,
                                                 0.55 * float((verts.max(0) - verts.min(0)).max()))
    u = ((tri @ right - centre @ right) / half * 0.5 + 0.5) * size
    v = (0.5 - (tri @ up - centre @ up) / half * 0.5) * size
    depth = (tri @ toward).mean(1)
    shade = 0.25 + 0.75 * facing
    base = np.tile([0.80, 0.68, 0.58], (len(faces), 1)) if colors is None else colors
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for f in np.where(keep)[0][np.argsort(depth[keep])]:
        c = tuple(int(x) for x in np.clip(base[f] * shade[f] * 255, 0, 255))
        draw.polygon([(u[f, 0], v[f, 0]), (u[f, 1], v[f, 1]), (u[f, 2], v[f, 2])], fill=c)
    return img


def joint_colors(weights: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-face colour of the dominant SMPL joint, to eyeball the weight merge."""
    rng = np.random.default_rng(3)
    pal = rng.uniform(0.25, 1.0, (weights.shape[1], 3))
    return pal[weights.argmax(1)[faces[:, 0]]]


def grid(images: list, cols: int):
    """Tile PIL images into one."""
    from PIL import Image
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    out = Image.new("RGB", (w * cols, h * rows), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(im, ((i % cols) * w, (i // cols) * h))
    return out


def write_renders(arrays: dict, names: list[str], out_dir: Path) -> list[Path]:
    """T-pose views, weights, shape +-2 and posed bodies as PNGs, for a human to look at."""
    import torch
    import smplx
    out_dir.mkdir(parents=True, exist_ok=True)
    f = arrays["f"]
    j = {n: i for i, n in enumerate(names)}
    model = smplx.SMPL(model_path="", data_struct=smplx.utils.Struct(**arrays),
                       vertex_ids=dict(zip(arrays["vertex_ids_names"].tolist(),
                                           arrays["vertex_ids_values"].tolist())))
    v0 = arrays["v_template"]
    paths = []
    img = grid([render(v0, f, "front"), render(v0, f, "side"), render(v0, f, "top"),
                render(v0, f, "front", colors=joint_colors(arrays["weights"], f))], 4)
    paths.append(out_dir / "tpose.png"); img.save(paths[-1])
    hands = []
    for side in ("left", "right"):
        c = arrays["J_regressor"][j[f"{side}_hand"]] @ v0
        for view in ("front", "top", "bottom"):
            hands.append(render(v0, f, view, size=320, box=(c, 0.13)))
    paths.append(out_dir / "hands.png"); grid(hands, 3).save(paths[-1])
    feet = [render(v0, f, view, size=320, box=(arrays["J_regressor"][j["left_foot"]] @ v0, 0.15))
            for view in ("front", "side", "bottom")]
    paths.append(out_dir / "feet.png"); grid(feet, 3).save(paths[-1])
    shapes = []
    with torch.no_grad():
        for k in (0, 1, 2):
            for b in (-2.0, 2.0):
                betas = torch.zeros(1, NUM_BETAS)
                betas[0, k] = b
                vs = model(betas=betas).vertices[0].numpy()
                shapes.append(render(vs, f, "front", box=((v0.max(0) + v0.min(0)) / 2, 1.15)))
        paths.append(out_dir / "shapes_b1_b2_b3_pm2.png"); grid(shapes, 6).save(paths[-1])
        pose = torch.zeros(1, 69)
        aa = {"left_elbow": (0, -math.pi / 2, 0), "right_shoulder": (0, 0, 1.0),
              "left_hip": (-1.2, 0, 0), "left_knee": (1.4, 0, 0), "right_knee": (0.3, 0, 0),
              "neck": (0.3, 0.4, 0), "left_wrist": (0.8, 0, 0)}
        for name, rot in aa.items():
            pose[0, (j[name] - 1) * 3:(j[name] - 1) * 3 + 3] = torch.tensor(rot)
        vp = model(body_pose=pose).vertices[0].numpy()
    paths.append(out_dir / "posed.png")
    grid([render(vp, f, "front"), render(vp, f, "side"), render(vp, f, "top")], 3).save(paths[-1])
    return paths


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so an unchanged build gives a
    byte-identical file (no spurious diffs in git); written to a temp file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_samples(model, rig: AnnyRig, phen: dict, batch: int, names: list[str]):
    """T-posed vertices (N,V,3 float32) and joints (N,24,3 float64) in SMPL axes."""
    n, n_verts = len(phen["age"]), rig.bone_weights.shape[0]
    bone_group = arm_group_of_bone(rig)
    vert_group_w = np.zeros((n_verts, len(ARM_GROUPS) + 1))
    for g in range(-1, len(ARM_GROUPS)):
        vert_group_w[:, g + 1] = rig.bone_weights[:, bone_group == g].sum(1)
    heads_to_joints = joint_head_matrix(rig, names)
    verts = np.zeros((n, n_verts, 3), dtype=np.float32)
    joints = np.zeros((n, len(names), 3))
    palm_roll = []
    a = 0
    for rv, rh in anny_rest_shapes(model, phen, batch):
        tv, th = rebake(rv, rh, rig, vert_group_w, bone_group)
        verts[a:a + len(tv)] = tv @ ANNY_TO_SMPL.T
        th = th @ ANNY_TO_SMPL.T
        joints[a:a + len(tv)] = np.einsum("jb,nbc->njc", heads_to_joints, th)
        line = th[:, rig.index("finger2-1.L")] - th[:, rig.index("finger5-1.L")]
        palm_roll.append(np.degrees(np.arctan2(line[:, 1], line[:, 2])))
        a += len(tv)
        if a % (10 * batch) == 0 or a == n:
            log(f"  shapes {a}/{n}")
    return verts, joints, np.concatenate(palm_roll)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output .npz")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-age", type=float, default=18.0)
    ap.add_argument("--max-age", type=float, default=80.0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--ring", type=int, default=800, help="vertices per joint in the regressor")
    ap.add_argument("--ring-along", type=float, default=3.0, help="weight of the along-bone distance")
    ap.add_argument("--ridge", type=float, default=1e-8, help="ridge weight (m^2 scale)")
    ap.add_argument("--holdout", type=int, default=500, help="samples held out to score the regressor")
    ap.add_argument("--render-dir", type=Path, default=None, help="write check renders here")
    ap.add_argument("--report", type=Path, default=None, help="write measured figures as JSON")
    args = ap.parse_args()
    t0 = time.time()
    import anny

    names, parents = load_smpl_joint_table()
    log("loading Anny (first run builds its cache: ~85 s, ~790 MB)")
    model = load_anny()
    rig = rig_from_model(model)
    n_verts = rig.bone_weights.shape[0]
    w_smpl = rig.bone_weights @ bone_to_joint_matrix(rig, names)
    comp = connected_components(rig.faces, n_verts)
    body_comp = int(np.bincount(comp).argmax())
    log(f"Anny mesh: {n_verts} vertices, {len(rig.faces)} faces, {comp.max() + 1} components "
        f"(body {int((comp == body_comp).sum())} v)")

    phen = sample_phenotypes(model, args.samples, args.seed, (args.min_age, args.max_age))
    log(f"sampled {args.samples} phenotypes (seed {args.seed}); re-baking to T-pose")
    verts, joints, palm_roll = build_samples(model, rig, phen, args.batch, names)
    stat = stature(verts)
    log(f"stature {stat.min():.3f}-{stat.max():.3f} m; left palm roll {palm_roll.mean():+.1f} deg "
        f"(range {palm_roll.min():+.1f}..{palm_roll.max():+.1f}; 0 = flat, thumb forward)")

    x = verts.reshape(len(verts), -1)
    space = pca(x, NUM_BETAS, stat)
    recon = reconstruction_error(x, space)
    log(f"PCA: var PC1 {100 * space.var_ratio[0]:.2f}%, cum {NUM_BETAS} {100 * space.var_ratio.sum():.3f}%; "
        f"recon mean/p99/max {recon['mean_mm']:.2f}/{recon['p99_mm']:.1f}/{recon['max_mm']:.1f} mm")
    aff = affine_joint_error(joints, space.betas)

    body = comp == body_comp
    rings = joint_rings(space.mean, joints.mean(0), parents, body, args.ring, args.ring_along)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(verts))
    test, train = perm[:args.holdout], perm[args.holdout:]
    reg_scores = {}
    for lam in sorted({args.ridge, args.ridge * 10, args.ridge / 10}):
        reg = fit_regressor(verts[train], joints[train], rings, lam, n_verts)
        reg_scores[f"{lam:g}"] = regressor_errors(reg, verts, joints, space, test)
        log(f"J_regressor lam={lam:g} held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in reg_scores[f'{lam:g}'].items()))
    reg = fit_regressor(verts, joints, rings, args.ridge, n_verts)

    template = space.mean
    j_template = reg @ template
    vids = derive_vertex_ids(template, j_template, names, rig, comp, body_comp)
    kintree = np.stack([np.where(parents < 0, ROOT_PARENT, parents), np.arange(len(names))]).astype(np.int64)
    source = (f"anny=={anny.__version__} (rig 'anny', topology 'anny'); {args.samples} phenotypes from "
              f"anny.shape_distribution.SimpleShapeDistribution, morphological age "
              f"U({args.min_age:g},{args.max_age:g}) y, gender U(0,1), torch seed {args.seed}; "
              f"A-pose re-baked to T-pose by LBS; PCA {NUM_BETAS} unit-variance betas; "
              f"J_regressor ridge lam={args.ridge:g}, ring {args.ring}; built by scripts/build_default_body.py")
    arrays = {
        "v_template": template.astype(np.float32),
        "shapedirs": space.dirs.astype(np.float32),
        "posedirs": np.zeros((n_verts, 3, NUM_POSE_BASIS), dtype=np.float32),
        "J_regressor": reg.astype(np.float32),
        "weights": w_smpl.astype(np.float32),
        "kintree_table": kintree,
        "f": rig.faces.astype(np.int64),
        "joint_names": np.array(names),
        "vertex_ids_names": np.array(list(vids)),
        "vertex_ids_values": np.array(list(vids.values()), dtype=np.int64),
        "license": np.array("Derived from Anny (NAVER LABS Europe; code Apache-2.0) and its MakeHuman "
                            "assets (CC0 1.0). See DEFAULT_BODY_LICENSE.md."),
        "attribution": np.array("Anny body model, Copyright (C) 2025 NAVER Corp. (Bregier et al., "
                                "'Human Mesh Modeling for Anny Body'); MakeHuman / MPFB2 assets, CC0."),
        "source": np.array(source),
    }
    if rig.uvs is not None and rig.uv_faces is not None:
        arrays["vt"] = rig.uvs.astype(np.float32)
        arrays["ft"] = rig.uv_faces.astype(np.int64)
    save_npz(args.out, arrays)
    size_mb = args.out.stat().st_size / 1e6
    log(f"wrote {args.out} ({size_mb:.2f} MB)")

    loaded = dict(np.load(args.out, allow_pickle=False))
    smpl_keys = {k: loaded[k] for k in ("v_template", "shapedirs", "posedirs", "J_regressor",
                                        "weights", "kintree_table", "f")}
    checks = smplx_checks(smpl_keys, vids, names)
    log("smplx checks: " + json.dumps(checks, indent=1))
    report = {
        "vertices": n_verts, "faces": int(len(rig.faces)), "file_mb": round(size_mb, 3),
        "stature_range_samples_m": [float(stat.min()), float(stat.max())],
        "palm_roll_deg_mean_min_max": [float(palm_roll.mean()), float(palm_roll.min()), float(palm_roll.max())],
        "pca_var_ratio": [float(v) for v in space.var_ratio],
        "pca_recon": recon, "joints_affine_in_betas": aff,
        "corr_beta_phenotype": {f"b{k + 1}": {p: round(float(np.corrcoef(space.betas[:, k], phen[p])[0, 1]), 3)
                                            for p in model.phenotype_labels} for k in range(3)},
        "regressor_heldout": reg_scores,
        "regressor_template_vs_mean_joint_mm": float(np.linalg.norm(j_template - joints.mean(0), axis=1).max() * 1000),
        "template_joints": {n: j_template[i].round(3).tolist() for i, n in enumerate(names)},
        "vertex_ids": vids, "checks": checks, "seconds": round(time.time() - t0, 1),
    }
    if args.render_dir is not None:
        paths = write_renders(dict(loaded), names, args.render_dir)
        log("renders: " + ", ".join(str(p) for p in paths))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
    log(f"done in {time.time() - t0:.0f} s; checks {'PASSED' if checks['all_passed'] else 'FAILED'}")
    if not checks["all_passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
