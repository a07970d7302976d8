"""SMPLify-style fit of the body model and the camera to MediaPipe landmarks, batched over frames.

The 33 MediaPipe landmarks map onto 23 *targets* on the body: SMPL joints (shoulders, elbows,
wrists, hands, hips, knees, ankles) and surface points picked on the rest mesh by geometry (nose,
eyes, ears, heels, toes; any SMPL-layout topology, no vertex indices). MediaPipe's hips and
shoulders are not SMPL's joint centres, so every target carries a fixed offset (metres, in the
body's rest frame, turned with the joint that carries it), learnt on synthetic tuning subjects
(scripts/tune_body_fit.py offsets).

Energy (per frame, averaged over frames; residuals in units of the landmark noise):
    confidence-weighted Geman-McClure 2D reprojection of the targets
  + joint-angle limits (knees and elbows bend one way, limited off-axis bend and spine twist;
    the hinge signs are also projected after every step: a knee never bends backwards)
  + Gaussian pose prior (pose_prior.py; a zero-mean isotropic stand-in when it is missing)
  + body inside the person mask (distance transform outside the mask, sampled at projected
    body vertices with grid_sample) and the mask covered by the body (robust Chamfer)
  + temporal smoothness of the pose (joints in the pelvis' frame, robust per joint) and root
  + shape prior on the one shared `betas` (+ a prior keeping the focal near its start value)
  + optional depth slopes of MediaPipe's world bones (off by default, see w_world)
  + on a photo (not a clip), soft upright priors on the ankles-to-neck line (w_upright, _tilt_cost)
    and on the pelvis' own up axis (w_root_upright, _root_tilt_cost).
Stages:
  1) global orientation + root for every hypothesis per frame: MediaPipe's labelling as is or
     left/right swapped (a person seen from behind is often labelled as if facing the camera,
     the depth-mirrored body), times several yaws. Kept: per frame the cheapest (photos) or the
     cheapest path with turns between frames costing (sequences, Viterbi); face hints
     (face_hints) tell front from back where the landmarks cannot.
  1b) lift: the body pose turned to MediaPipe's world-landmark bone directions (the limbs'
     depth, which the image cannot tell), no image terms;
  2) + body pose with all image terms; 3) + betas (+ focal when refine_focal).

Camera: OpenCV at the origin (x right, y down, z forward), K per frame from the focal and the
image centre ((W-1)/2, (H-1)/2: pixel centres at integers).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from smplx.lbs import batch_rodrigues

from ..body.joints import JOINT_INDEX, NUM_JOINTS
from ..body.model import BodyModel, rigid_transform
from ..body.regions import region_mask
from ..data.subject import SmplParams
from ..errors import InputError
from ..fit.outfit_fit import FitCancelled
from .types import LANDMARK_INDEX, LANDMARK_NAMES, NUM_LANDMARKS, Progress

__all__ = ["BodyFitOptions", "BodyFitResult", "fit_body", "face_hints", "procrustes_mpjpe",
           "project_points", "similarity_align", "silhouette_mask", "landmark_targets",
           "surface_points", "body_landmarks", "TARGETS", "FitCancelled", "nose_facing"]

# (target, MediaPipe landmarks averaged into its observation, weight group)
TARGETS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("nose", ("nose",), "face"),
    ("left_eye", ("left_eye",), "face"),
    ("right_eye", ("right_eye",), "face"),
    ("left_ear", ("left_ear",), "face"),
    ("right_ear", ("right_ear",), "face"),
    ("left_shoulder", ("left_shoulder",), "torso"),
    ("right_shoulder", ("right_shoulder",), "torso"),
    ("left_elbow", ("left_elbow",), "limb"),
    ("right_elbow", ("right_elbow",), "limb"),
    ("left_wrist", ("left_wrist",), "limb"),
    ("right_wrist", ("right_wrist",), "limb"),
    ("left_hand", ("left_pinky", "left_index"), "hand"),
    ("right_hand", ("right_pinky", "right_index"), "hand"),
    ("left_hip", ("left_hip",), "torso"),
    ("right_hip", ("right_hip",), "torso"),
    ("left_knee", ("left_knee",), "limb"),
    ("right_knee", ("right_knee",), "limb"),
    ("left_ankle", ("left_ankle",), "limb"),
    ("right_ankle", ("right_ankle",), "limb"),
    ("left_heel", ("left_heel",), "foot"),
    ("right_heel", ("right_heel",), "foot"),
    ("left_toe", ("left_foot_index",), "foot"),
    ("right_toe", ("right_foot_index",), "foot"),
)
TARGET_NAMES = tuple(t[0] for t in TARGETS)
TARGET_INDEX = {n: i for i, n in enumerate(TARGET_NAMES)}
SURFACE_POINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_heel",
                  "right_heel", "left_toe", "right_toe")
# Targets used in stage 1 (orientation and root only: the rigid head and torso).
RIGID_TARGETS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                 "right_shoulder", "left_hip", "right_hip")
# Bones (target pairs) whose directions are compared with MediaPipe's world landmarks.
BONES = (("left_shoulder", "left_elbow", "upper_arm"), ("left_elbow", "left_wrist", "forearm"),
         ("right_shoulder", "right_elbow", "upper_arm"), ("right_elbow", "right_wrist", "forearm"),
         ("left_hip", "left_knee", "thigh"), ("left_knee", "left_ankle", "shin"),
         ("right_hip", "right_knee", "thigh"), ("right_knee", "right_ankle", "shin"),
         ("right_shoulder", "left_shoulder", "torso"), ("right_hip", "left_hip", "torso"),
         ("left_hip", "left_shoulder", "torso"), ("right_hip", "right_shoulder", "torso"),
         ("left_heel", "left_toe", "foot"), ("right_heel", "right_toe", "foot"),
         ("right_ear", "left_ear", "head"))
RIGID_BONES = (("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
               ("left_hip", "left_shoulder"), ("right_hip", "right_shoulder"),
               ("right_ear", "left_ear"))
# Landmarks whose visibility says how well the body is seen (for `confidence`).
CORE_LANDMARKS = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                  "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
                  "left_ankle", "right_ankle")

# Fixed offsets (metres, rest frame: +x = the body's left, +y up, +z front) from a target's
# anchor (joint or surface vertex) to where MediaPipe puts its landmark; given for the left side
# and mirrored for the right. Learnt on synthetic tuning subjects (scripts/tune_body_fit.py
# offsets), small on purpose (they are regularised towards zero).
DEFAULT_OFFSETS: dict[str, tuple[float, float, float]] = {
    "nose": (0.000, 0.011, -0.015), "eye": (-0.003, -0.004, -0.019),
    "ear": (-0.034, -0.003, 0.038), "shoulder": (0.008, 0.020, 0.008),
    "elbow": (-0.007, 0.001, 0.005), "wrist": (0.005, -0.005, 0.001),
    "hand": (-0.016, -0.011, 0.007), "hip": (-0.008, -0.011, 0.024),
    "knee": (-0.006, -0.014, -0.001), "ankle": (-0.006, 0.027, 0.007),
    "heel": (-0.011, 0.029, 0.021), "toe": (0.015, 0.009, -0.025),
}


@dataclass
class BodyFitOptions:
    # -- stages ----------------------------------------------------------------------------
    stage1_steps: int = 60            # orientation + root, all yaw hypotheses at once
    lift_steps: int = 60              # body pose to MediaPipe's world bones (no image terms)
    w_lift: float = 1.0               # weight of the lifted directions (vs the limits, prior)
    lift_sigma: float = 0.3           # rad: angle unit of the lift term
    w_pose_lift: float = 0.02         # pose prior weight while lifting
    stage2_steps: int = 200           # + body pose
    stage3_steps: int = 120           # + betas (+ focal)
    yaw_hypotheses: int = 8           # initial yaw candidates per frame (evenly spaced)
    swap_hypotheses: bool = True      # also try the landmarks with left / right swapped
    swap_penalty: float = 2.0         # stage-1 energy added to a swapped hypothesis
    w_turn: float = 4.0               # video: cost per rad^2 of turn between frames (Viterbi)
    w_facing: float = 20.0            # stage-1 cost of a hypothesis the face hint contradicts
    no_face_angle: float = math.radians(45)  # no face seen: turned closer than this costs
    face_angle: float = math.radians(120)    # a face seen: turned further than this costs
    nose_depth: float = 0.04          # m: MediaPipe's world nose this far behind the ears'
                                      # midpoint says the person faces away, over the face
                                      # detector (which fires on the back of a head; bench_recon
                                      # tuning seeds: back views 0.13-0.15 m behind, or in front)
    lr_orient: float = 0.03           # Adam step (rad) of the global-orientation residual
    lr_centre: float = 0.003          # Adam step of the root's normalised image position
    lr_depth: float = 0.02            # Adam step of log root depth
    lr_pose: float = 0.03             # Adam step (rad) of body_pose
    lr_betas: float = 0.03            # Adam step of betas
    lr_focal: float = 0.005           # Adam step of log focal
    lr_final: float = 0.1             # each stage's learning rate decays to this share (cosine)
    progress_every: int = 10          # steps between progress / should_stop checks
    # -- observations ----------------------------------------------------------------------
    pixel_shift: float = 0.5          # MediaPipe's x*W puts pixel centres at i + 0.5; K at i
    min_visibility: float = 0.2       # landmarks below this visibility are ignored
    noise: float = 0.02               # landmark noise, share of the person's height (residual unit)
    robust_scale: float = 4.0         # Geman-McClure scale, in noise units
    group_weights: dict[str, float] = field(default_factory=lambda: {
        "face": 0.5, "torso": 1.0, "limb": 1.0, "hand": 0.3, "foot": 0.5})
    landmark_offsets: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(DEFAULT_OFFSETS))
    # -- weights ---------------------------------------------------------------------------
    w_reproj: float = 1.0             # 2D reprojection (per target, in noise units squared)
    w_upright: float = 4.0            # all stages, photos: cost of the body's ankles-to-neck line
    upright_sigma: float = math.radians(10)   # leaning this far off the image's vertical (_tilt_cost)
    w_root_upright: float = 4.0       # all stages, photos: cost of the pelvis' up axis leaning
                                      # upright_sigma off the image's vertical (_root_tilt_cost): a
                                      # standing person's pelvis is upright too, where the ankles-
                                      # to-neck line alone lets the spine bend back against a pitched
                                      # root (tuning seeds 0-43: root error 13.3 -> 11.6 degrees,
                                      # body floor 2.126 -> 2.041 cm; weight 1: 2.050, 16: 2.036)
    w_upright_clip: float = 0.0       # the same on a clip (temporal, several frames): off, their
                                      # frames show the camera's pitch (the real demo video's camera
                                      # looks down about 20 degrees; the prior cost it body/person
                                      # IoU 0.794 -> 0.771)
    w_world: float = 0.0              # stages 2-3: depth slopes of MediaPipe's world bones (off:
                                      # once lifted, it only made the tuning fits worse)
    w_world_rigid: float = 0.3        # the same in stage 1 (torso and head bones only)
    world_sigma: dict[str, float] = field(default_factory=lambda: {   # typical error of the
        "upper_arm": 0.3, "forearm": 0.45, "thigh": 0.12, "shin": 0.17,  # depth slope dz/|d| of
        "torso": 0.12, "foot": 0.3, "head": 0.12})                       # MediaPipe's world bones
    world_robust: float = 10.0        # Geman-McClure scale of the world term (sigma units)
    world_ray_correction: bool = True  # world landmarks are seen along the person's ray
    w_limits: float = 10.0            # joint-angle limits (squared excess over the limit, rad)
    w_pose_start: float = 1.0         # pose prior weight at the start of stage 2 ...
    w_pose_end: float = 0.1           # ... decaying to this (log-linearly) and kept in stage 3
    w_shape: float = 0.05             # betas L2
    w_mask: float = 0.5               # projected body vertices outside the person mask
    mask_margin: float = 0.005        # tolerated distance outside the mask (share of height)
    mask_vertices: int = 400          # body vertices used by the mask terms (farthest points)
    w_cover: float = 0.5              # person-mask pixels far from every projected body vertex
    cover_points: int = 200           # mask pixels sampled per frame (regular grid)
    cover_margin: float = 0.02        # tolerated pixel-to-vertex distance (share of height)
    cover_robust: float = 3.0         # Geman-McClure scale (noise units): clothing, hair
    pose_blendshapes: bool = False    # pose corrective shapes in the fit (a few mm, slower)
    mask_size: int = 256              # long side (px) of the mask's distance transform
    w_temporal: float = 3.0           # smoothness of joints (relative to the root) and root
    temporal_sigma: float = 0.02      # metres of frame-to-frame joint motion (body frame) ~ jitter
    temporal_root_sigma: float = 0.03  # metres of frame-to-frame root motion ~ jitter
    temporal_robust: float = 3.0      # Geman-McClure scale of the temporal term (sigma units)
    w_focal: float = 1.0              # keeps log focal near its start ((log f / f0) / 0.2)^2
    focal_sigma: float = 0.2          # log-focal prior width
    # -- limits ----------------------------------------------------------------------------
    hinge_tolerance: float = 0.15     # rad of off-axis rotation allowed at knees and elbows
    spine_twist: float = 0.35         # rad of twist allowed at each spine joint
    quality_scale: float = 0.04       # confidence = visibility * exp(-error / (this * height))


@dataclass
class BodyFitResult:
    smpl: SmplParams          # betas (S,) shared; global_orient, body_pose, transl per frame
    K: np.ndarray             # (N, 3, 3) float64
    focal: float              # px (refined when allowed)
    joint_error_px: np.ndarray  # (N,) confidence-weighted mean 2D error of the mapped landmarks
    confidence: np.ndarray    # (N,) 0..1: landmark visibility x fit quality
    joints2d: np.ndarray      # (N, 24, 2) projected SMPL joints
    joints3d: np.ndarray      # (N, 24, 3) SMPL joints in camera space (metres)
    outline: np.ndarray       # (N, V, 2) projected body vertices (see `silhouette`)
    faces: np.ndarray         # (F, 3) the body's faces, for `silhouette`
    image_size: tuple[int, int]
    targets2d: np.ndarray     # (N, T, 2) projected targets (TARGET_NAMES), input px convention
    swapped: np.ndarray | None = None  # (N,) bool: MediaPipe's left / right were swapped

    def silhouette(self, i: int) -> np.ndarray:
        """(H, W) bool body silhouette of frame i (projected mesh, filled)."""
        return silhouette_mask(self.outline[i], self.faces, self.image_size)


def silhouette_mask(uv: np.ndarray, faces: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(V, 2) projected vertices, (F, 3) faces -> (H, W) bool filled silhouette (~30 ms for
    a 27k-face body at 512 px; one triangle at a time, as a single fillPoly XORs overlaps)."""
    import cv2
    h, w = image_size
    sil = np.zeros((h, w), np.uint8)
    tris = np.round(np.asarray(uv, np.float64)[faces] * 4).astype(np.int32)   # 2 subpixel bits
    lo, hi = tris.min(1), tris.max(1)
    keep = (hi[:, 0] >= 0) & (hi[:, 1] >= 0) & (lo[:, 0] < 4 * w) & (lo[:, 1] < 4 * h)
    for tri in tris[keep]:
        cv2.fillConvexPoly(sil, tri, 1, lineType=cv2.LINE_8, shift=2)
    return sil.astype(bool)


# --------------------------------------------------------------------------------------------
# Geometry helpers


def procrustes_mpjpe(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, J, 3), (N, J, 3) -> (N,) mean joint distance after aligning each pred frame to its
    truth with the best similarity (rotation, uniform scale, translation): PA-MPJPE in the
    units of the input."""
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected two (N, J, 3) arrays, got {pred.shape} and {truth.shape}")
    return np.linalg.norm(similarity_align(pred, truth) - truth, axis=-1).mean(-1)


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(N, J, 3) src aligned to dst per frame by the least-squares similarity (Umeyama)."""
    mu_s, mu_d = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    s, d = src - mu_s, dst - mu_d
    cov = np.einsum("nji,njk->nik", d, s)                       # (N, 3, 3) dst x src
    u, sig, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u @ vt))
    fix = np.ones_like(sig)
    fix[:, -1] = sign
    rot = u @ (fix[:, :, None] * vt)
    var = (s ** 2).sum((1, 2))
    scale = (sig * fix).sum(1) / np.maximum(var, 1e-12)
    return scale[:, None, None] * np.einsum("nik,njk->nji", rot, s) + mu_d


def project_points(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, P, 3) camera-space points, (N, 3, 3) or (3, 3) K -> (N, P, 2) pixels."""
    K = np.broadcast_to(np.asarray(K, np.float64), (points.shape[0], 3, 3))
    uvw = np.einsum("nij,npj->npi", K, np.asarray(points, np.float64))
    return uvw[..., :2] / uvw[..., 2:3]


def surface_points(body: BodyModel) -> dict[str, int]:
    """Surface vertices for the face and foot targets, found by geometry on the rest mesh (SMPL
    layout: +y up, +z front, +x the body's left), never by index."""
    v = body.smpl.v_template.detach().cpu().numpy().astype(np.float64)
    w = body.weights_np
    head = np.flatnonzero(region_mask(w, "head"))
    if len(head) < 10:
        raise InputError("the body model has no head region in its skin weights", field="weights")
    hv = v[head]
    nose = head[np.argmax(hv[:, 2])]                       # the head's frontmost point
    width = hv[:, 0].max() - hv[:, 0].min()
    out = {"nose": int(nose),
           "left_ear": int(head[np.argmax(hv[:, 0])]),      # widest points of the head
           "right_ear": int(head[np.argmin(hv[:, 0])])}
    front = hv[:, 2] > v[nose, 2] - 0.4 * width
    for side, sx in (("left", 1.0), ("right", -1.0)):
        # eye centres: on the face, a sixth of the head's width aside, a quarter above the nose
        target = np.array([sx * width / 6.0, v[nose, 1] + 0.25 * width])
        d = np.linalg.norm(hv[:, :2] - target, axis=1) + np.where(front, 0.0, 1e3)
        cand = np.flatnonzero(d < d.min() + 0.004)
        out[f"{side}_eye"] = int(head[cand[np.argmax(hv[cand, 2])]])
        foot = np.flatnonzero(region_mask(w, f"{side}_foot"))
        if len(foot) < 10:
            raise InputError(f"the body model has no {side} foot region", field="weights")
        fv = v[foot]
        sole = fv[:, 1] < fv[:, 1].min() + 0.02
        out[f"{side}_heel"] = int(foot[np.flatnonzero(sole)[np.argmin(fv[sole, 2])]])
        out[f"{side}_toe"] = int(foot[np.argmax(fv[:, 2])])
    return out


def landmark_targets(body: BodyModel, options: BodyFitOptions | None = None) -> dict:
    """How each target is computed on the body: base point (joint, or surface vertex as index
    24 + k into `vertices`), the joint whose rotation carries its offset, and the offset."""
    options = options or BodyFitOptions()
    surf = surface_points(body)
    vertices = [surf[n] for n in SURFACE_POINTS]
    base, frame, offsets = [], [], []
    for name in TARGET_NAMES:
        side, _, part = name.partition("_")
        key = part if side in ("left", "right") else name
        off = np.array(options.landmark_offsets.get(key, (0.0, 0.0, 0.0)), np.float64)
        if side == "right":
            off[0] = -off[0]
        if name in JOINT_INDEX:
            j = JOINT_INDEX[name]
            base.append(j)
            # hips and shoulders: the offset moves with the pelvis / collar, not the limb
            frame.append(int(body.parents[j]) if part in ("hip", "shoulder") else j)
        else:
            k = SURFACE_POINTS.index(name)
            base.append(NUM_JOINTS + k)
            frame.append(int(np.argmax(body.weights_np[vertices[k]])))
        offsets.append(off)
    return {"vertices": np.array(vertices, np.int64), "base": np.array(base, np.int64),
            "frame": np.array(frame, np.int64), "offsets": np.stack(offsets)}


def farthest_points(points: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """(count,) indices of a farthest-point sample of (V, 3) points."""
    count = min(count, len(points))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(points)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(count - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=1))
    return np.array(chosen, np.int64)


def body_landmarks(body: BodyModel, smpl: SmplParams, K: np.ndarray,
                   options: BodyFitOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a perfect MediaPipe would report for this body: landmarks (N, 33, 4) (x px, y px
    in MediaPipe's x*W convention, z 0, visibility 1 for mapped landmarks, 0 for the rest,
    which copy a neighbour's position) and world landmarks (N, 33, 3) (hip-centred, camera
    axes). For tests and for checking the mapping."""
    options = options or BodyFitOptions()
    spec = landmark_targets(body, options)
    rig = _Rig(body, spec["vertices"], body.device)
    n = smpl.num_frames
    dtype = body.smpl.v_template.dtype
    with torch.no_grad():
        pose = torch.as_tensor(smpl.full_pose, dtype=dtype, device=body.device)
        rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(n, NUM_JOINTS, 3, 3)
        betas = body.betas_tensor(smpl.betas)
        joints, verts, grot = rig(betas, rot)
        offs = torch.einsum("btij,tj->bti", grot[:, spec["frame"]],
                            torch.as_tensor(spec["offsets"], dtype=dtype, device=body.device))
        points = torch.cat([joints, verts], 1)[:, spec["base"]] + offs
        points = (points + torch.as_tensor(smpl.transl, dtype=dtype,
                                           device=body.device)[:, None]).cpu().double().numpy()
    uv = project_points(points, K) + options.pixel_shift
    lm = np.zeros((n, NUM_LANDMARKS, 4))
    world = np.zeros((n, NUM_LANDMARKS, 3))
    source = {name: t for t, (_, names, _) in enumerate(TARGETS) for name in names}
    fallback = {"eye_inner": "eye", "eye_outer": "eye", "thumb": "hand", "mouth": "nose"}
    for i, name in enumerate(LANDMARK_NAMES):
        if name in source:
            t, vis = source[name], 1.0
        else:
            side, _, part = name.partition("_")
            key = fallback.get(part if side in ("left", "right") else name, "nose")
            t = TARGET_INDEX[key if key == "nose" else f"{side}_{key}"] \
                if f"{side}_{key}" in TARGET_INDEX else TARGET_INDEX["nose"]
            vis = 0.0
        lm[:, i, :2], lm[:, i, 3] = uv[:, t], vis
        world[:, i] = points[:, t]
    hips = world[:, [LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]]].mean(1)
    return lm.astype(np.float32), (world - hips[:, None]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# A light SMPL forward: joints and a few vertices, exactly smplx's LBS on those vertices


class _Rig:
    def __init__(self, body: BodyModel, vertex_ids: np.ndarray, device: torch.device) -> None:
        smpl = body.smpl
        dtype = smpl.v_template.dtype
        idx = torch.as_tensor(vertex_ids, device=smpl.v_template.device)
        v_num = smpl.v_template.shape[0]
        self.v_template = smpl.v_template[idx].to(device)
        self.shapedirs = smpl.shapedirs[idx].to(device)                       # (P, 3, S)
        self.posedirs = (smpl.posedirs.reshape(-1, v_num, 3)[:, idx]
                         .reshape(smpl.posedirs.shape[0], -1).to(device))      # (207, P*3)
        self.weights = smpl.lbs_weights[idx].to(device)                       # (P, 24)
        jreg = smpl.J_regressor
        self.j_template = (jreg @ smpl.v_template).to(device)                 # (24, 3)
        self.j_dirs = torch.einsum("jv,vcs->jcs", jreg, smpl.shapedirs).to(device)  # (24, 3, S)
        self.parents = [int(p) for p in smpl.parents.tolist()]    # host list: no device index per joint
        self.eye = torch.eye(3, dtype=dtype, device=device)
        self.dtype = dtype

    def rest_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """(1, S) -> (1, 24, 3) rest joints."""
        return self.j_template[None] + torch.einsum("jcs,bs->bjc", self.j_dirs, betas)

    def __call__(self, betas: torch.Tensor, rot: torch.Tensor, count: int | None = None,
                 pose_blend: bool = True):
        """betas (1, S), rot (B, 24, 3, 3) -> posed joints (B, 24, 3), the first `count`
        vertices (B, P, 3) and global joint rotations (B, 24, 3, 3); the pelvis stays at its
        rest position. `pose_blend=False` skips the pose corrective shapes (a few mm)."""
        batch = rot.shape[0]
        count = self.v_template.shape[0] if count is None else count
        joints = self.rest_joints(betas).expand(batch, -1, -1)
        v = self.v_template[:count] + torch.einsum("pcs,bs->bpc", self.shapedirs[:count], betas)
        if pose_blend:
            feat = (rot[:, 1:] - self.eye).reshape(batch, -1)
            v = v + (feat @ self.posedirs[:, : 3 * count]).reshape(batch, -1, 3)
        else:
            v = v.expand(batch, -1, -1)
        posed, rel = rigid_transform(rot, joints, self.parents)
        t = torch.matmul(self.weights[:count], rel[..., :3, :].reshape(batch, NUM_JOINTS, 12))
        t = t.reshape(batch, count, 3, 4)
        verts = (t[..., :3] @ v[..., None])[..., 0] + t[..., 3]
        return posed, verts, rel[..., :3, :3]


def _yaw_matrix(yaw: np.ndarray) -> np.ndarray:
    """(n,) radians -> (n, 3, 3): turn the body (SMPL, +y up) by yaw, then into the camera."""
    c, s = np.cos(yaw), np.sin(yaw)
    ry = np.zeros((len(yaw), 3, 3))
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = c, s, 1, -s, c
    flip = np.diag([1.0, -1.0, -1.0])                       # SMPL y up -> camera y down
    return flip[None] @ ry


def _ray_rotation(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) normalised image coords -> (n, 3, 3) rotations taking +z onto the ray (u, v, 1)."""
    ray = np.stack([u, v, np.ones_like(u)], 1)
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, ray.shape), ray)
    s = np.linalg.norm(axis, axis=1)
    c = ray[:, 2]
    k = axis / np.maximum(s, 1e-12)[:, None]
    kx = np.zeros((len(u), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 0] = -k[:, 2], k[:, 1], k[:, 2]
    kx[:, 1, 2], kx[:, 2, 0], kx[:, 2, 1] = -k[:, 0], -k[:, 1], k[:, 0]
    return np.eye(3)[None] + s[:, None, None] * kx + (1 - c)[:, None, None] * (kx @ kx)


# --------------------------------------------------------------------------------------------
# Observations


@dataclass
class _Obs:
    uv: torch.Tensor          # (N, T, 2) target observations, K's pixel convention
    conf: torch.Tensor        # (N, T) visibility (0 below min_visibility)
    scale: torch.Tensor       # (N,) person height in px
    world_dir: torch.Tensor | None   # (N, Bn, 3) unit bone directions, camera axes
    world_conf: torch.Tensor | None  # (N, Bn)
    dt: torch.Tensor | None   # (N, 1, h, w) distance outside the person mask, share of height
    cover: torch.Tensor | None  # (N, C, 2) mask pixels (K's px convention)
    cover_w: torch.Tensor | None  # (N, C) 1 for a real sample, 0 for padding
    pair_w: torch.Tensor      # (N-1,) temporal pair weights


def _check_inputs(landmarks, world, person_masks, image_size, focal) -> tuple[np.ndarray, ...]:
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 4) or lm.shape[0] < 1:
        raise InputError(f"landmarks have shape {lm.shape}, expected (N>=1, 33, 4)",
                         field="landmarks")
    if not np.isfinite(lm).all():
        raise InputError("landmarks contain NaN or inf", field="landmarks")
    n = lm.shape[0]
    wl = None
    if world is not None:
        wl = np.asarray(world, np.float64)
        if wl.shape != (n, NUM_LANDMARKS, 3) or not np.isfinite(wl).all():
            raise InputError(f"world landmarks have shape {wl.shape} (expected {(n, 33, 3)}) or "
                             "are not finite", field="world")
    if len(image_size) != 2 or min(image_size) < 8:
        raise InputError(f"image_size {image_size} is not (H, W)", field="image_size")
    if not (np.isfinite(focal) and focal > 0):
        raise InputError(f"focal {focal} must be a positive number of pixels", field="focal")
    if person_masks is not None:
        if len(person_masks) != n:
            raise InputError(f"{len(person_masks)} person masks for {n} frames", field="person_masks")
        for i, m in enumerate(person_masks):
            if np.shape(m) != tuple(image_size):
                raise InputError(f"person mask {i} is {np.shape(m)}, image is {tuple(image_size)}",
                                 field="person_masks")
    return lm, wl


def _observations(lm: np.ndarray, wl: np.ndarray | None, masks, image_size, focal: float,
                  temporal: bool, times, opts: BodyFitOptions, device, dtype) -> _Obs:
    n = lm.shape[0]
    h, w = image_size
    uv = np.zeros((n, len(TARGETS), 2))
    conf = np.zeros((n, len(TARGETS)))
    for t, (_, names, _) in enumerate(TARGETS):
        ids = [LANDMARK_INDEX[x] for x in names]
        uv[:, t] = lm[:, ids, :2].mean(1) - opts.pixel_shift
        conf[:, t] = lm[:, ids, 3].clip(0, 1).min(1)
    conf = np.where(conf >= opts.min_visibility, conf, 0.0)
    seen = lm[..., 3] >= 0.5
    xy = lm[..., :2]
    ext = [np.ptp(xy[i][seen[i]] if seen[i].sum() >= 2 else xy[i], axis=0) for i in range(n)]
    scale = np.maximum(np.max(ext, axis=1), 0.05 * max(h, w))

    world_dir = world_conf = None
    if wl is not None:
        dirs, confs = [], []
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        hip = lm[:, [LANDMARK_INDEX["left_hip"], LANDMARK_INDEX["right_hip"]], :2].mean(1)
        rot = (_ray_rotation((hip[:, 0] - cx) / focal, (hip[:, 1] - cy) / focal)
               if opts.world_ray_correction else np.repeat(np.eye(3)[None], n, 0))
        wt = np.zeros((n, len(TARGETS), 3))
        for t, (_, names, _) in enumerate(TARGETS):
            wt[:, t] = wl[:, [LANDMARK_INDEX[x] for x in names]].mean(1)
        wt = np.einsum("nij,ntj->nti", rot, wt)
        for a, b, _ in BONES:
            d = wt[:, TARGET_INDEX[b]] - wt[:, TARGET_INDEX[a]]
            dirs.append(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6))
            confs.append(np.minimum(conf[:, TARGET_INDEX[a]], conf[:, TARGET_INDEX[b]]))
        world_dir = torch.as_tensor(np.stack(dirs, 1), dtype=dtype, device=device)
        world_conf = torch.as_tensor(np.stack(confs, 1), dtype=dtype, device=device)

    dt = cover = cover_w = None
    if masks is not None:
        dt = torch.as_tensor(_distance_maps(masks, scale, opts.mask_size), dtype=dtype,
                             device=device)
        c, cw = _mask_samples(masks, opts.cover_points)
        cover = torch.as_tensor(c, dtype=dtype, device=device)
        cover_w = torch.as_tensor(cw, dtype=dtype, device=device)

    pair = np.zeros(max(n - 1, 0))
    if temporal and n > 1:
        pair[:] = 1.0
        gaps = np.diff(np.asarray(times, np.float64)) if times is not None else None
        if gaps is not None and len(gaps) == n - 1 and np.isfinite(gaps).all() and (gaps > 0).all():
            pair = np.clip(np.median(gaps) / gaps, 0.0, 1.0)     # weaker across long gaps
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return _Obs(t(uv), t(conf), t(scale), world_dir, world_conf, dt, cover, cover_w, t(pair))


def _mask_samples(masks, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, 2) pixels on a regular grid inside each mask (about `count` of them), weights."""
    pts = []
    for m in masks:
        m = np.asarray(m)
        m = m > 0.5 if m.dtype != bool else m
        area = max(int(m.sum()), 1)
        stride = max(1, int(round(math.sqrt(area / max(count, 1)))))
        y, x = np.nonzero(m[::stride, ::stride])
        p = np.stack([x, y], 1).astype(np.float64) * stride + (stride - 1) / 2.0
        pts.append(p[:: max(1, len(p) // count + (len(p) % count > 0))] if len(p) > count else p)
    size = max(1, max(len(p) for p in pts))
    out = np.zeros((len(pts), size, 2))
    w = np.zeros((len(pts), size))
    for i, p in enumerate(pts):
        out[i, : len(p)], w[i, : len(p)] = p, 1.0
    return out, w


def _distance_maps(masks, scale: np.ndarray, size: int) -> np.ndarray:
    """(N, 1, h, w): distance to the person mask outside it, as a share of the person height."""
    import cv2
    out = []
    for m, s in zip(masks, scale):
        m = np.asarray(m)
        m = m > 0.5 if m.dtype != bool else m
        hh, ww = m.shape
        f = min(1.0, size / max(hh, ww))
        small = cv2.resize(m.astype(np.float32), (max(1, round(ww * f)), max(1, round(hh * f))),
                           interpolation=cv2.INTER_AREA) > 0.5
        if not small.any():
            out.append(np.zeros(small.shape, np.float32))
            continue
        d = cv2.distanceTransform((~small).astype(np.uint8), cv2.DIST_L2, 5)
        out.append(d / (f * s))
    shape = out[0].shape
    return np.stack([o if o.shape == shape else np.zeros(shape, np.float32) for o in out])[:, None]


# --------------------------------------------------------------------------------------------
# Pose prior (pose_prior.py when present, else a zero-mean isotropic placeholder)


PLACEHOLDER_PRIOR_SIGMA = 0.5   # rad per axis-angle component of the stand-in pose prior


def _pose_prior(device, dtype) -> tuple[dict, Callable]:
    """(prior tensors, energy function): pose_prior.py's Gaussian fitted to real motion when
    it and its data file exist, else a zero-mean isotropic stand-in behind the same API."""
    try:
        from .pose_prior import load_pose_prior, pose_prior_energy
        prior = load_pose_prior()
    except (ImportError, InputError):
        prior = {"mean": np.zeros(69), "precision_chol": np.eye(69) / PLACEHOLDER_PRIOR_SIGMA}

        def pose_prior_energy(body_pose, prior):
            return ((body_pose - prior["mean"]) @ prior["precision_chol"]).square().sum(-1)
    prior = {k: torch.as_tensor(np.asarray(prior[k]), dtype=dtype, device=device)
             for k in ("mean", "precision_chol")}
    return prior, pose_prior_energy


# --------------------------------------------------------------------------------------------
# The fit


class _Fit:
    """Parameters, energy and optimisation loop shared by the stages."""

    def __init__(self, body: BodyModel, obs: _Obs, image_size, focal: float,
                 opts: BodyFitOptions, device, progress, should_stop, total_steps: int,
                 upright: tuple[float, float]) -> None:
        self.opts, self.obs, self.device = opts, obs, device
        self.dtype = body.smpl.v_template.dtype
        spec = landmark_targets(body, opts)
        rest = body.smpl.v_template.detach().cpu().numpy()
        mask_ids = farthest_points(rest, opts.mask_vertices)
        self.n_surface = len(spec["vertices"])
        self.rig = _Rig(body, np.concatenate([spec["vertices"], mask_ids]), device)
        tt = lambda a, dt=None: torch.as_tensor(a, dtype=dt or self.dtype, device=device)  # noqa: E731
        self.base = tt(spec["base"], torch.long)
        self.frame = tt(spec["frame"], torch.long)
        self.offsets = tt(spec["offsets"])
        self.bone_a = tt([TARGET_INDEX[a] for a, _, _ in BONES], torch.long)
        self.bone_b = tt([TARGET_INDEX[b] for _, b, _ in BONES], torch.long)
        self.bone_sigma = tt([opts.world_sigma[g] for _, _, g in BONES])
        gw = np.array([opts.group_weights.get(g, 1.0) for _, _, g in TARGETS])
        self.group_w = tt(gw)
        self.rigid_w = tt(gw * np.isin(TARGET_NAMES, RIGID_TARGETS))
        self.rigid_bones = tt([(a, b) in RIGID_BONES for a, b, _ in BONES])
        h, w = image_size
        self.size = (h, w)
        self.centre = tt([(w - 1) / 2.0, (h - 1) / 2.0])
        self.log_f0 = math.log(focal)
        self.log_f = tt([self.log_f0])
        self.prior, self.prior_energy = _pose_prior(device, self.dtype)
        self.progress, self.should_stop = progress, should_stop
        self.step, self.total = 0, total_steps
        self.lo = _LimitIndex(device)
        # (ankles-to-neck line, pelvis) weights: (w_upright, w_root_upright) on photos,
        # (w_upright_clip, 0) on a clip
        self.w_upright, self.w_root_upright = upright

    # -- model -----------------------------------------------------------------------------
    def points(self, p: dict, surface_only: bool = False):
        """Camera-space targets (B, T, 3), joints (B, 24, 3), mask vertices (B, M, 3)."""
        rot_g = batch_rodrigues(p["orient"]) @ p["R0"]
        batch = rot_g.shape[0]
        rot_b = batch_rodrigues(p["pose"].reshape(-1, 3)).reshape(batch, NUM_JOINTS - 1, 3, 3)
        rot = torch.cat([rot_g[:, None], rot_b], 1)
        count = self.n_surface if surface_only else None
        joints, verts, grot = self.rig(p["betas"], rot, count, self.opts.pose_blendshapes)
        j0 = self.rig.rest_joints(p["betas"])[:, :1]
        root = torch.exp(p["logz"]) * torch.cat([p["ab"], torch.ones_like(p["logz"])], -1)
        shift = (root - j0[:, 0])[:, None]                         # (B, 1, 3)
        anchors = torch.cat([joints, verts[:, : self.n_surface]], 1)[:, self.base]
        offs = torch.einsum("btij,tj->bti", grot[:, self.frame], self.offsets)
        targets = anchors + offs + shift
        self.last_orient = rot_g
        return targets, joints + shift, verts[:, self.n_surface:] + shift

    def project(self, x: torch.Tensor, log_f: torch.Tensor) -> torch.Tensor:
        z = x[..., 2:].clamp(min=0.05)
        return torch.exp(log_f) * x[..., :2] / z + self.centre

    # -- energy ----------------------------------------------------------------------------
    def energy(self, p: dict, frames: torch.Tensor, *, rigid: bool, w_pose: float,
               use_mask: bool, use_temporal: bool, lift: bool = False) -> torch.Tensor:
        """(B,) energy per frame (B = parameter batch; `frames` (B,) maps it to observations)."""
        o, opts = self.obs, self.opts
        targets, joints, verts = self.points(p, surface_only=rigid)
        log_f = p.get("log_f", self.log_f)
        uv = self.project(targets, log_f)
        scale = o.scale[frames]
        r2 = ((uv - o.uv[frames]) ** 2).sum(-1) / (opts.noise * scale[:, None]) ** 2
        c2 = opts.robust_scale ** 2
        gm = c2 * r2 / (c2 + r2)
        tw = (self.rigid_w if rigid else self.group_w) * o.conf[frames]
        e = opts.w_reproj * (tw * gm).sum(-1)
        if self.w_upright > 0:
            e = e + self.w_upright * _tilt_cost(joints, opts.upright_sigma)
        if self.w_root_upright > 0:
            e = e + self.w_root_upright * _root_tilt_cost(self.last_orient, opts.upright_sigma)

        if o.world_dir is not None:
            d = targets[:, self.bone_b] - targets[:, self.bone_a]
            d = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            wc = o.world_conf[frames] * (self.rigid_bones if rigid else 1.0)
            if lift:    # whole directions: the lifted 3D pose from which stage 2 starts
                r2 = 2 * (1 - (d * o.world_dir[frames]).sum(-1)) / opts.lift_sigma ** 2
                e = opts.w_lift * (wc * r2).sum(-1)
            else:       # depth slopes only: the image already pins the rest of the direction
                r2 = ((d[..., 2] - o.world_dir[frames][..., 2]) / self.bone_sigma) ** 2
                c2 = opts.world_robust ** 2
                e = e + (opts.w_world_rigid if rigid else opts.w_world) * (wc * c2 * r2 / (c2 + r2)).sum(-1)
        if rigid:
            return e

        e = e + opts.w_limits * self.lo.energy(p["pose"], opts)
        e = e + w_pose * self.prior_energy(p["pose"], self.prior)
        if use_mask and o.dt is not None:
            vuv = self.project(verts, log_f)
            h, w = self.size
            grid = torch.stack([(vuv[..., 0] + 0.5) / w * 2 - 1, (vuv[..., 1] + 0.5) / h * 2 - 1], -1)
            dist = F.grid_sample(o.dt[frames], grid[:, None], mode="bilinear",
                                 padding_mode="border", align_corners=False)[:, 0, 0]
            excess = F.relu(dist - opts.mask_margin) / opts.noise
            e = e + opts.w_mask * (excess ** 2).mean(-1)
            if opts.w_cover > 0:
                near = torch.cdist(o.cover[frames], vuv).min(-1).values / scale[:, None]
                r2 = (F.relu(near - opts.cover_margin) / opts.noise) ** 2
                c2 = opts.cover_robust ** 2
                cw = o.cover_w[frames]
                e = e + opts.w_cover * (cw * c2 * r2 / (c2 + r2)).sum(-1) / cw.sum(-1).clamp(min=1)
        if use_temporal and joints.shape[0] > 1:
            # pose: joints in the pelvis' frame (turning on the spot costs nothing); root apart
            local = (joints - joints[:, :1]) @ self.last_orient
            djoint = ((local[1:] - local[:-1]) ** 2).sum(-1) / opts.temporal_sigma ** 2
            droot = ((joints[1:, 0] - joints[:-1, 0]) ** 2).sum(-1) / opts.temporal_root_sigma ** 2
            c2 = opts.temporal_robust ** 2                  # robust per joint: a swinging leg
            gm = (c2 * djoint / (c2 + djoint)).mean(-1)     # saturates, the still ones smooth
            pair = opts.w_temporal * o.pair_w * (gm + c2 * droot / (c2 + droot))
            e = e + F.pad(pair, (0, 1)) * 0.5 + F.pad(pair, (1, 0)) * 0.5
        return e

    def total_energy(self, p: dict, frames, **kw) -> torch.Tensor:
        e = self.energy(p, frames, **kw).mean()
        e = e + self.opts.w_shape * (p["betas"] ** 2).sum()
        if "log_f" in p:
            e = e + self.opts.w_focal * ((p["log_f"] - self.log_f0) / self.opts.focal_sigma).pow(2).sum()
        return e

    # -- optimisation ----------------------------------------------------------------------
    def run(self, p: dict, free: dict[str, float], steps: int, frames, *, rigid: bool,
            w_pose: tuple[float, float] = (0.0, 0.0), use_mask: bool = False,
            use_temporal: bool = False, lift: bool = False, stage: str = "body fit") -> None:
        """Adam over the `free` parameters (name -> lr) for `steps` steps, cosine-decayed."""
        params = []
        for name, lr in free.items():
            p[name] = p[name].detach().requires_grad_(True)
            params.append({"params": [p[name]], "lr": lr, "lr0": lr})
        opt = torch.optim.Adam(params, betas=(0.9, 0.999))
        for k in range(steps):
            frac = k / max(steps - 1, 1)
            decay = self.opts.lr_final + (1 - self.opts.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = g["lr0"] * decay
            wp = w_pose[0] * (w_pose[1] / w_pose[0]) ** frac if w_pose[0] > 0 else 0.0
            loss = self.total_energy(p, frames, rigid=rigid, w_pose=wp, use_mask=use_mask,
                                     use_temporal=use_temporal, lift=lift)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if "pose" in free:
                with torch.no_grad():
                    self.lo.project(p["pose"])
            self.step += 1
            if self.step % self.opts.progress_every == 0 or self.step == self.total:
                if self.progress is not None:
                    self.progress(stage, self.step, self.total)
                if self.should_stop is not None and self.should_stop():
                    raise FitCancelled(f"body fit cancelled at step {self.step}")
        for name in free:
            p[name] = p[name].detach()


class _LimitIndex:
    """Joint-angle limits on body_pose (B, 69) (axis-angle components, SMPL joint frames)."""

    def __init__(self, device) -> None:
        col = lambda joint, axis: (JOINT_INDEX[joint] - 1) * 3 + axis  # noqa: E731
        # flexion sign: knees bend about +x; the left elbow about -y, the right about +y
        self.knee_x = torch.tensor([col("left_knee", 0), col("right_knee", 0)], device=device)
        self.elbow_l, self.elbow_r = col("left_elbow", 1), col("right_elbow", 1)
        self.hinge_off = torch.tensor([col("left_knee", 1), col("left_knee", 2),
                                       col("right_knee", 1), col("right_knee", 2),
                                       col("left_elbow", 2), col("right_elbow", 2)], device=device)
        self.twist = torch.tensor([col(j, 1) for j in ("spine1", "spine2", "spine3")], device=device)

    def energy(self, pose: torch.Tensor, opts: BodyFitOptions) -> torch.Tensor:
        wrong = (F.relu(-pose[:, self.knee_x]) ** 2).sum(-1)
        wrong = wrong + F.relu(pose[:, self.elbow_l]) ** 2 + F.relu(-pose[:, self.elbow_r]) ** 2
        off = (F.relu(pose[:, self.hinge_off].abs() - opts.hinge_tolerance) ** 2).sum(-1)
        twist = (F.relu(pose[:, self.twist].abs() - opts.spine_twist) ** 2).sum(-1)
        return wrong + off + twist

    def project(self, pose: torch.Tensor) -> None:
        """In place: knees and elbows never bend the wrong way."""
        pose[:, self.knee_x] = pose[:, self.knee_x].clamp(min=0)
        pose[:, self.elbow_l] = pose[:, self.elbow_l].clamp(max=0)
        pose[:, self.elbow_r] = pose[:, self.elbow_r].clamp(min=0)


def _initial_root(lm: np.ndarray, wl: np.ndarray | None, rest_targets: np.ndarray,
                  image_size, focal: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Root depth from the torso's length in px vs the body's (foreshortening from the world
    landmarks), root position from the hips, yaw from the world landmarks' shoulder/hip line.
    Returns ab (N, 2), log z (N, 1), yaw (N,)."""
    h, w = image_size
    L = LANDMARK_INDEX
    mid = lambda a, i, j: (a[:, L[i]] + a[:, L[j]]) / 2  # noqa: E731
    px = np.linalg.norm(mid(lm[..., :2], "left_shoulder", "right_shoulder")
                        - mid(lm[..., :2], "left_hip", "right_hip"), axis=1)
    ti = TARGET_INDEX
    body_len = np.linalg.norm((rest_targets[ti["left_shoulder"]] + rest_targets[ti["right_shoulder"]]) / 2
                              - (rest_targets[ti["left_hip"]] + rest_targets[ti["right_hip"]]) / 2)
    fore = np.ones(len(lm))
    yaw = np.zeros(len(lm))
    if wl is not None:
        d = mid(wl, "left_shoulder", "right_shoulder") - mid(wl, "left_hip", "right_hip")
        fore = np.linalg.norm(d[:, :2], axis=1) / np.maximum(np.linalg.norm(d, axis=1), 1e-6)
        side = (wl[:, L["left_shoulder"]] - wl[:, L["right_shoulder"]]
                + wl[:, L["left_hip"]] - wl[:, L["right_hip"]])
        yaw = np.arctan2(side[:, 2], side[:, 0])       # body +x -> camera (cos yaw, 0, sin yaw)
    else:
        side = lm[:, L["left_shoulder"], 0] - lm[:, L["right_shoulder"], 0]
        yaw = np.where(side >= 0, 0.0, np.pi)
    z = focal * body_len * np.clip(fore, 0.3, 1.0) / np.maximum(px, 1.0)
    hip = mid(lm[..., :2], "left_hip", "right_hip")
    ab = np.stack([(hip[:, 0] - (w - 1) / 2) / focal, (hip[:, 1] - (h - 1) / 2) / focal], 1)
    return ab, np.log(np.maximum(z, 0.2))[:, None], yaw


def fit_body(body: BodyModel, landmarks: np.ndarray, world: np.ndarray | None,
             person_masks: list[np.ndarray] | None, image_size: tuple[int, int], focal: float, *,
             refine_focal: bool = False, temporal: bool = True, times: np.ndarray | None = None,
             facing: np.ndarray | None = None,
             options: BodyFitOptions | None = None, progress: Progress | None = None,
             should_stop: Callable[[], bool] | None = None,
             device: torch.device | str | None = None) -> BodyFitResult:
    """Fit one body (shared betas) and its per-frame pose and root to the landmarks.

    landmarks (N, 33, 4): x px, y px (MediaPipe's x*W, y*H), z, visibility; world (N, 33, 3)
    MediaPipe world landmarks or None; person_masks N (H, W) bool or None; image_size (H, W);
    focal px. `temporal`: frames are consecutive video frames (smoothness on); `times` (N,)
    seconds weakens smoothing across gaps. `facing` (N,): face_hints() (+1 a face is seen,
    -1 none, 0 unknown) settles front / back views MediaPipe labels as if facing the camera;
    where the world nose lies clearly behind the ears, the person faces away (nose_facing).
    Raises FitCancelled when should_stop() turns true.
    """
    opts = options or BodyFitOptions()
    lm, wl = _check_inputs(landmarks, world, person_masks, image_size, focal)
    facing = nose_facing(wl, facing, opts)
    image_size = (int(image_size[0]), int(image_size[1]))
    device = torch.device(device) if device is not None else body.device
    dtype = body.smpl.v_template.dtype
    n, focal = lm.shape[0], float(focal)
    obs_args = (image_size, focal, temporal, times, opts, device, dtype)
    # hypotheses: the landmarks as labelled, and left/right swapped (MediaPipe labels a person
    # seen from behind as if facing the camera: the depth-mirrored, swapped body)
    variants = [(lm, wl)]
    if opts.swap_hypotheses:
        variants.append((lm[:, SWAP_LR], None if wl is None else wl[:, SWAP_LR]))
    obs_v = [_observations(a, b, None, *obs_args) for a, b in variants]
    total = opts.stage1_steps + opts.stage2_steps + opts.stage3_steps + (
        opts.lift_steps if wl is not None else 0)
    clip = temporal and n > 1     # a clip's frames share the camera: its pitch shows in them
    fit = _Fit(body, _cat_obs(obs_v), image_size, focal, opts, device, progress, should_stop,
               total, (opts.w_upright_clip, 0.0) if clip else (opts.w_upright, opts.w_root_upright))

    # stage 1: orientation + root for every (labelling, yaw) hypothesis, batched
    p, frames, kyaw = _hypotheses(fit, variants, image_size, focal)
    fit.run(p, {"orient": opts.lr_orient, "ab": opts.lr_centre, "logz": opts.lr_depth},
            opts.stage1_steps, frames, rigid=True)
    with torch.no_grad():
        e = fit.energy(p, frames, rigid=True, w_pose=0.0, use_mask=False, use_temporal=False)
        rot = batch_rodrigues(p["orient"]) @ p["R0"]
    hyp = len(variants) * kyaw
    energy = e.reshape(len(variants), n, kyaw).transpose(0, 1).reshape(n, hyp)
    rots = rot.reshape(len(variants), n, kyaw, 3, 3).transpose(0, 1).reshape(n, hyp, 3, 3)
    penalty = torch.as_tensor(np.repeat(np.arange(len(variants)) * opts.swap_penalty, kyaw),
                              dtype=dtype, device=device)
    if facing is not None:
        with torch.no_grad():
            root = torch.exp(p["logz"]) * torch.cat([p["ab"], torch.ones_like(p["logz"])], -1)
            toward = -root / root.norm(dim=-1, keepdim=True)
            cos = (rot[..., 2] * toward).sum(-1)                  # body front . to camera
            cos = cos.reshape(len(variants), n, kyaw).transpose(0, 1).reshape(n, hyp)
        penalty = penalty + _facing_cost(cos, torch.as_tensor(facing, dtype=dtype,
                                                              device=device), opts)
    choice = _select(energy + penalty, rots, fit.obs.pair_w[:n - 1] if n > 1 else None,
                     clip, opts)                                   # (n,) host ints
    variant = choice // kyaw
    rows = torch.as_tensor(variant * n * kyaw + np.arange(n) * kyaw + choice % kyaw,
                           device=device)
    p = {k: (v[rows] if v.shape[0] == frames.shape[0] else v) for k, v in p.items()}
    final = _observations(lm, wl, person_masks, *obs_args)
    if variant.any():
        sw = torch.as_tensor(variant.astype(bool), device=device)
        other = obs_v[1]
        pick = lambda a, b: None if a is None else torch.where(  # noqa: E731
            sw.reshape(-1, *[1] * (a.dim() - 1)), b, a)
        final.uv, final.conf = pick(final.uv, other.uv), pick(final.conf, other.conf)
        final.world_dir = pick(final.world_dir, other.world_dir)
        final.world_conf = pick(final.world_conf, other.world_conf)
    fit.obs = final
    frames = torch.arange(n, device=device)

    # stage 1b: lift the pose to MediaPipe's 3D bone directions (the depth of the limbs)
    if wl is not None and opts.lift_steps > 0:
        fit.run(p, {"pose": opts.lr_pose}, opts.lift_steps, frames, rigid=False,
                w_pose=(opts.w_pose_lift, opts.w_pose_lift), lift=True)
    # stage 2: + body pose
    free = {"orient": opts.lr_orient, "ab": opts.lr_centre, "logz": opts.lr_depth,
            "pose": opts.lr_pose}
    fit.run(p, free, opts.stage2_steps, frames, rigid=False,
            w_pose=(opts.w_pose_start, opts.w_pose_end), use_mask=True, use_temporal=True)
    # stage 3: + betas (+ focal)
    free["betas"] = opts.lr_betas
    if refine_focal:
        p["log_f"] = fit.log_f.clone()
        free["log_f"] = opts.lr_focal
    fit.run(p, free, opts.stage3_steps, frames, rigid=False,
            w_pose=(opts.w_pose_end, opts.w_pose_end), use_mask=True, use_temporal=True)
    result = _result(body, fit, p, lm, final, image_size)
    result.swapped = variant.astype(bool)
    return result


SWAP_LR = np.array([LANDMARK_INDEX[n.replace("left", "@").replace("right", "left").replace("@", "right")]
                    for n in LANDMARK_NAMES])


def _tilt_cost(joints: torch.Tensor, sigma: float) -> torch.Tensor:
    """joints (B, 24, 3) camera space (y down) -> (B,) 1 where the line from the ankles' midpoint
    to the neck leans `sigma` rad off the image's vertical (towards or away from the camera, or
    sideways), 0 upright, growing as 1 - cos: people stand upright and a photo's camera is about
    level, which 2D keypoints alone hardly tell from a body pitched towards the camera."""
    ankles = joints[:, [JOINT_INDEX["left_ankle"], JOINT_INDEX["right_ankle"]]].mean(1)
    axis = joints[:, JOINT_INDEX["neck"]] - ankles
    return _lean_cost(-axis[:, 1] / axis.norm(dim=-1).clamp(min=1e-6), sigma)


def _root_tilt_cost(rot: torch.Tensor, sigma: float) -> torch.Tensor:
    """rot (B, 3, 3) the pelvis' rotation to camera space (y down) -> (B,) 0 where its up axis (the
    body's +y) points up the image, 1 where it leans `sigma` rad off it (any way), growing as
    1 - cos; turning about the vertical costs nothing."""
    return _lean_cost(-rot[:, 1, 1], sigma)


def _lean_cost(cos_up: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B,) cosines between an axis and the image's up -> (B,) 1 - cos, 1 at a lean of `sigma` rad."""
    return (1 - cos_up) / (1 - math.cos(sigma))


def _facing_cost(cos: torch.Tensor, facing: torch.Tensor, opts: BodyFitOptions) -> torch.Tensor:
    """(n, H) cosines between each hypothesis' front and the way to the camera, (n,) face hints
    (+1 a face was seen, -1 none, 0 unknown) -> (n, H) stage-1 energy. No face seen: turned
    towards the camera costs; a face seen: turned away costs."""
    lim_no, lim_yes = math.cos(opts.no_face_angle), math.cos(opts.face_angle)
    no_face = F.relu(cos - lim_no) / (1 - lim_no)
    face = F.relu(-cos - (-lim_yes)) / (1 + lim_yes)
    f = facing[:, None]
    return opts.w_facing * (F.relu(-f) * no_face + F.relu(f) * face)


def nose_facing(world: np.ndarray | None, facing: np.ndarray | None,
                opts: BodyFitOptions) -> np.ndarray | None:
    """(N, 33, 3) MediaPipe world landmarks (z away from the camera), (N,) face hints or None ->
    (N,) face hints, -1 (the person faces away) where the nose lies more than `opts.nose_depth`
    behind the ears' midpoint, else the given hint. Only that way: the face detector fires on the
    back of a head, but a world nose in front of the ears is no proof of a face either (MediaPipe
    puts it there on some back views; bench_recon tuning seed 14)."""
    if world is None:
        return facing
    L = LANDMARK_INDEX
    dz = world[:, L["nose"], 2] - (world[:, L["left_ear"], 2] + world[:, L["right_ear"], 2]) / 2
    given = np.zeros(len(world)) if facing is None else np.asarray(facing, np.float64)
    return np.where(dz > opts.nose_depth, -1.0, given)


def face_hints(images, landmarks: np.ndarray, min_score: float = 0.3) -> np.ndarray:
    """(N,) +1 where MediaPipe's full-range face detector finds a face on the person's head,
    -1 where it finds none (the person most likely faces away), for fit_body(facing=...).
    images: N (H, W, 3) uint8 RGB; landmarks (N, 33, 4) as fit_body takes them."""
    import mediapipe as mp
    out = np.zeros(len(landmarks))
    head_ids = [LANDMARK_INDEX[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
    with mp.solutions.face_detection.FaceDetection(model_selection=1,
                                                   min_detection_confidence=min_score) as det:
        for i, (rgb, lm) in enumerate(zip(images, landmarks)):
            h, w = rgb.shape[:2]
            res = det.process(np.ascontiguousarray(rgb[..., :3]))
            head = np.asarray(lm)[head_ids, :2].mean(0)
            found = False
            for d in res.detections or []:
                b = d.location_data.relative_bounding_box
                x0, y0, bw, bh = b.xmin * w, b.ymin * h, b.width * w, b.height * h
                pad = 0.5 * max(bw, bh)        # the head centre lies on or near the face box
                found |= bool(x0 - pad <= head[0] <= x0 + bw + pad and y0 - pad <= head[1] <= y0 + bh + pad)
            out[i] = 1.0 if found else -1.0
    return out


def _cat_obs(obs: list[_Obs]) -> _Obs:
    """Observation sets of the hypotheses, stacked along frames."""
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return _Obs(cat([o.uv for o in obs]), cat([o.conf for o in obs]),
                cat([o.scale for o in obs]), cat([o.world_dir for o in obs]),
                cat([o.world_conf for o in obs]), None, None, None, obs[0].pair_w)


def _hypotheses(fit: "_Fit", variants, image_size, focal: float):
    """Stage-1 parameters: for each labelling variant, frame and yaw (rows in that order)."""
    opts, dev, dtype = fit.opts, fit.device, fit.dtype
    tt = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=dev)  # noqa: E731
    n = variants[0][0].shape[0]
    kyaw = max(1, opts.yaw_hypotheses)
    betas = torch.zeros(1, fit.rig.shapedirs.shape[-1], dtype=dtype, device=dev)
    with torch.no_grad():   # rest targets (betas 0, the prior's mean pose) for the depth
        zero = {"orient": torch.zeros(1, 3, dtype=dtype, device=dev),
                "R0": torch.eye(3, dtype=dtype, device=dev)[None],
                "pose": fit.prior["mean"][None], "betas": betas,
                "ab": torch.zeros(1, 2, dtype=dtype, device=dev),
                "logz": torch.zeros(1, 1, dtype=dtype, device=dev)}
        rest_targets = fit.points(zero, surface_only=True)[0][0].cpu().numpy()
    ab, logz, yaws = [], [], []
    for lm, wl in variants:
        a, z, y = _initial_root(lm, wl, rest_targets, image_size, focal)
        ab.append(np.repeat(a, kyaw, 0))
        logz.append(np.repeat(z, kyaw, 0))
        yaws.append((y[:, None] + np.arange(kyaw)[None] * 2 * np.pi / kyaw).reshape(-1))
    rows = len(variants) * n * kyaw
    p = {"orient": torch.zeros(rows, 3, dtype=dtype, device=dev),
         "R0": tt(_yaw_matrix(np.concatenate(yaws))),
         "pose": fit.prior["mean"][None].expand(rows, -1).clone(), "betas": betas,
         "ab": tt(np.concatenate(ab)), "logz": tt(np.concatenate(logz))}
    frames = torch.arange(len(variants) * n, device=dev).repeat_interleave(kyaw)
    return p, frames, kyaw


def _select(energy: torch.Tensor, rots: torch.Tensor, pair_w: torch.Tensor | None,
            temporal: bool, opts: BodyFitOptions) -> np.ndarray:
    """(n, H) stage-1 energies and (n, H, 3, 3) rotations -> (n,) chosen hypothesis per frame:
    the cheapest one, or for a video the cheapest path with turns between frames costing
    w_turn * angle^2 (Viterbi). Runs between stages (host numpy)."""
    e = energy.detach().cpu().double().numpy()
    if not temporal:
        return e.argmin(1)
    r = rots.detach().cpu().double().numpy()
    w = pair_w.detach().cpu().double().numpy()
    n, hyp = e.shape
    cost, back = e[0].copy(), np.zeros((n, hyp), np.int64)
    for t in range(1, n):
        rel = np.einsum("aji,bjk->abik", r[t - 1], r[t])           # R_prev^T R_cur
        cos = np.clip((np.trace(rel, axis1=2, axis2=3) - 1) / 2, -1, 1)
        turn = opts.w_turn * w[t - 1] * np.arccos(cos) ** 2        # (prev, cur)
        total = cost[:, None] + turn
        back[t] = total.argmin(0)
        cost = total.min(0) + e[t]
    path = np.zeros(n, np.int64)
    path[-1] = cost.argmin()
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def _result(body: BodyModel, fit: _Fit, p: dict, lm: np.ndarray, obs: _Obs,
            image_size) -> BodyFitResult:
    from scipy.spatial.transform import Rotation
    opts = fit.opts
    n = lm.shape[0]
    h, w = image_size
    with torch.no_grad():
        log_f = p.get("log_f", fit.log_f)
        targets, joints, _ = fit.points(p)
        uv = fit.project(targets, log_f)
        rot = (batch_rodrigues(p["orient"]) @ p["R0"]).cpu().double().numpy()
        j0 = fit.rig.rest_joints(p["betas"])[0, 0]
        transl = (joints[:, 0] - j0).cpu().numpy()
        betas = p["betas"][0].cpu().numpy()
        pose = p["pose"].cpu().numpy()
        f = float(torch.exp(log_f).cpu())
        global_orient = Rotation.from_matrix(rot).as_rotvec()
        out = body(np.repeat(betas[None], n, 0), global_orient, pose, transl)
        verts = out.vertices.cpu().double().numpy()
        joints3d = out.joints.cpu().double().numpy()
        err = (uv - obs.uv).norm(dim=-1).cpu().numpy()
        conf = obs.conf.cpu().numpy()
        scale = obs.scale.cpu().numpy()
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (w - 1) / 2.0, (h - 1) / 2.0, 1.0
    err_px = (err * conf).sum(1) / np.maximum(conf.sum(1), 1e-9)
    core = lm[:, [LANDMARK_INDEX[x] for x in CORE_LANDMARKS], 3].clip(0, 1).mean(1)
    confidence = core * np.exp(-err_px / (opts.quality_scale * scale))
    smpl = SmplParams(betas=betas, global_orient=global_orient, body_pose=pose, transl=transl)
    return BodyFitResult(
        smpl=smpl, K=K, focal=f, joint_error_px=err_px.astype(np.float64),
        confidence=confidence.clip(0, 1), joints2d=project_points(joints3d, K),
        joints3d=joints3d, outline=project_points(verts, K).astype(np.float32),
        faces=np.asarray(body.faces), image_size=(h, w),
        targets2d=(uv.cpu().numpy() + opts.pixel_shift))
