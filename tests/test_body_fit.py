"""The SMPLify-style body fit of `pointwear prepare` (perception/body_fit.py): recovery of a known
body, joint limits, the person-mask term, temporal smoothing, the real photo through MediaPipe,
and properties of the geometric helpers."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.transform import Rotation

from pointwear.body.joints import JOINT_INDEX
from pointwear.data.subject import SmplParams
from pointwear.errors import InputError
from pointwear.perception.body_fit import (SWAP_LR, BodyFitOptions, FitCancelled, _ray_rotation,
                                           _root_tilt_cost, _tilt_cost, _yaw_matrix, body_landmarks,
                                           fit_body, procrustes_mpjpe, project_points, silhouette_mask,
                                           nose_facing, surface_points)
from pointwear.perception.types import LANDMARK_NAMES

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SIZE = (512, 512)
FOCAL = 800.0
K = np.array([[FOCAL, 0, (SIZE[1] - 1) / 2], [0, FOCAL, (SIZE[0] - 1) / 2], [0, 0, 1.0]])
# Fewer steps than the defaults: these scenes are clean, and the suite must stay fast.
QUICK = BodyFitOptions(stage1_steps=40, stage2_steps=120, stage3_steps=60, yaw_hypotheses=6)


def _pose(n: int, knee: float = 0.3, arm: float = 1.0, elbow: float = 0.3) -> np.ndarray:
    """(n, 69) a relaxed standing pose: arms lowered, elbows and knees a little bent."""
    pose = np.zeros((n, 23, 3))
    pose[:, JOINT_INDEX["left_shoulder"] - 1, 2] = -arm
    pose[:, JOINT_INDEX["right_shoulder"] - 1, 2] = arm
    pose[:, JOINT_INDEX["left_elbow"] - 1, 1] = -elbow
    pose[:, JOINT_INDEX["right_elbow"] - 1, 1] = elbow
    pose[:, JOINT_INDEX["left_knee"] - 1, 0] = knee
    pose[:, JOINT_INDEX["right_knee"] - 1, 0] = knee
    pose[:, JOINT_INDEX["left_hip"] - 1, 0] = -0.5 * knee
    return pose.reshape(n, 69)


def _subject(body, n: int, yaw_deg, pose: np.ndarray | None = None, betas=None) -> SmplParams:
    """A body standing 3 m in front of the camera, turned by yaw (degrees, 0 = facing it)."""
    yaw = np.broadcast_to(np.radians(np.asarray(yaw_deg, float)), (n,))
    orient = Rotation.from_matrix(_yaw_matrix(yaw)).as_rotvec()
    pose = _pose(n) if pose is None else pose
    betas = np.zeros(body.num_betas) if betas is None else betas
    with torch.no_grad():
        pelvis = body.shaped(betas)[1][0, 0].numpy()
    transl = np.array([0.0, 0.15, 3.0]) - pelvis
    return SmplParams(betas=betas, global_orient=orient, body_pose=pose,
                      transl=np.repeat(transl[None], n, 0))


def _silhouettes(body, smpl: SmplParams) -> list[np.ndarray]:
    """Filled projections of the body mesh (a person mask that fits the body exactly)."""
    with torch.no_grad():
        out = body(np.repeat(smpl.betas[None], smpl.num_frames, 0), smpl.global_orient,
                   smpl.body_pose, smpl.transl)
    uv = project_points(out.vertices.numpy(), K)
    return [silhouette_mask(uv[i], body.faces, SIZE) for i in range(smpl.num_frames)]


def _joints(body, smpl: SmplParams) -> np.ndarray:
    with torch.no_grad():
        return body(np.repeat(smpl.betas[None], smpl.num_frames, 0), smpl.global_orient,
                    smpl.body_pose, smpl.transl).joints.numpy()


def test_recovers_a_known_body(default_body):
    """Landmarks rendered from a known body (no MediaPipe): the fit puts the joints back."""
    betas = np.zeros(default_body.num_betas)
    betas[:2] = [0.8, -0.5]
    truth = _subject(default_body, 3, [20.0, 60.0, 150.0], betas=betas)
    lm, world = body_landmarks(default_body, truth, K)
    res = fit_body(default_body, lm, world, _silhouettes(default_body, truth), SIZE, FOCAL,
                   temporal=False, options=QUICK)
    assert res.smpl.body_pose.shape == (3, 69) and res.smpl.betas.shape == (default_body.num_betas,)
    assert res.K.shape == (3, 3, 3) and np.allclose(res.K[:, 0, 0], FOCAL)
    err2d = np.linalg.norm(res.joints2d - project_points(_joints(default_body, truth), K), axis=-1)
    pa = procrustes_mpjpe(res.joints3d, _joints(default_body, truth))
    assert err2d.mean() < 4.0, err2d.mean(1)
    assert pa.max() < 0.04, pa
    assert res.joint_error_px.max() < 2.0
    assert (res.confidence > 0.8).all()
    assert not res.swapped.any()
    # the fitted parameters reproduce the reported joints through the body model
    assert np.abs(_joints(default_body, res.smpl) - res.joints3d).max() < 1e-4


def test_knees_and_elbows_never_bend_backwards(default_body):
    """Landmarks of knees and elbows bent the wrong way (hyper-extension): the fitted pose keeps
    every hinge on its own side."""
    pose = _pose(2, knee=-0.6, elbow=-0.6)       # knees and elbows bent backwards
    truth = _subject(default_body, 2, [90.0, -60.0], pose=pose)
    lm, world = body_landmarks(default_body, truth, K)
    res = fit_body(default_body, lm, world, None, SIZE, FOCAL, temporal=False,
                   options=replace(QUICK, stage2_steps=80, stage3_steps=20))
    bp = res.smpl.body_pose.reshape(-1, 23, 3)
    assert (bp[:, JOINT_INDEX["left_knee"] - 1, 0] >= 0).all()
    assert (bp[:, JOINT_INDEX["right_knee"] - 1, 0] >= 0).all()
    assert (bp[:, JOINT_INDEX["left_elbow"] - 1, 1] <= 0).all()
    assert (bp[:, JOINT_INDEX["right_elbow"] - 1, 1] >= 0).all()


def test_mask_term_pulls_the_body_inside_the_person(default_body):
    """With the arms' landmarks unseen, only the person mask says where the arms are: with the
    mask term the projected body stays inside the mask, without it the arms wander out."""
    truth = _subject(default_body, 1, [0.0], pose=_pose(1, arm=1.3))
    lm, world = body_landmarks(default_body, truth, K)
    for name in ("elbow", "wrist", "pinky", "index", "thumb"):
        for side in ("left", "right"):
            lm[:, LANDMARK_NAMES.index(f"{side}_{name}"), 3] = 0.0
    masks = _silhouettes(default_body, truth)
    # a weak pose prior, so that only the mask can place the arms
    opts = replace(QUICK, stage3_steps=0, w_pose_start=0.01, w_pose_end=0.01)

    def outside(w_mask: float) -> float:
        res = fit_body(default_body, lm, None, masks, SIZE, FOCAL, temporal=False,
                       options=replace(opts, w_mask=w_mask, w_cover=0.0))
        sil = res.silhouette(0)
        return float((sil & ~masks[0]).sum() / sil.sum())

    with_mask, without = outside(BodyFitOptions().w_mask), outside(0.0)
    assert with_mask < 0.05, with_mask
    assert with_mask < 0.5 * without, (with_mask, without)


def test_temporal_smoothing_reduces_jitter(default_body):
    """A body standing still, landmarks with independent noise per frame: the temporal term
    makes the fitted joints steadier than frame-by-frame fits."""
    n = 6
    truth = _subject(default_body, n, np.full(n, 30.0))
    lm, world = body_landmarks(default_body, truth, K)
    rng = np.random.default_rng(3)
    lm[..., :2] += rng.normal(0, 4.0, lm[..., :2].shape)
    opts = replace(QUICK, stage3_steps=30)

    def jitter(temporal: bool) -> float:
        res = fit_body(default_body, lm, world, None, SIZE, FOCAL, temporal=temporal,
                       options=opts)
        j = res.joints3d - res.joints3d[:, :1]
        return float(np.linalg.norm(np.diff(j, axis=0), axis=-1).mean())

    smooth, raw = jitter(True), jitter(False)
    assert smooth < 0.6 * raw, (smooth, raw)


@pytest.fixture(scope="module")
def ryota():
    import mediapipe as mp
    rgb = np.asarray(Image.open(REAL / "ryota.png").convert("RGB"))
    h, w = rgb.shape[:2]
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                enable_segmentation=True) as pose:
        res = pose.process(rgb)
    lm = np.array([[p.x * w, p.y * h, p.z * w, p.visibility] for p in res.pose_landmarks.landmark])
    world = np.array([[p.x, p.y, p.z] for p in res.pose_world_landmarks.landmark])
    mask = np.asarray(Image.open(REAL / "ryota_mask.png").convert("L")) > 127
    return rgb, lm[None], world[None], mask


def test_real_photo_fit_lies_inside_the_person(default_body, ryota):
    rgb, lm, world, mask = ryota
    h, w = mask.shape
    focal = 26 / 36 * max(h, w)
    res = fit_body(default_body, lm, world, [mask], (h, w), focal, temporal=False)
    import cv2
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    j = np.round(res.joints2d[0]).astype(int)
    dist = outside[j[:, 1].clip(0, h - 1), j[:, 0].clip(0, w - 1)]
    hands = [JOINT_INDEX["left_hand"], JOINT_INDEX["right_hand"]]   # knuckles: the mask's edge
    assert (np.delete(dist, hands) == 0).all(), np.flatnonzero(dist)
    assert dist[hands].max() < 8.0, dist[hands]
    sil = res.silhouette(0)
    assert (sil & mask).sum() / sil.sum() > 0.9
    assert res.joint_error_px[0] < 3.0            # measured 0.9 px at 512 px
    assert res.confidence[0] > 0.5


def test_progress_and_cancel(default_body):
    truth = _subject(default_body, 2, [0.0, 10.0])
    lm, world = body_landmarks(default_body, truth, K)
    seen = []
    opts = replace(QUICK, stage1_steps=10, lift_steps=10, stage2_steps=10, stage3_steps=10)
    fit_body(default_body, lm, world, None, SIZE, FOCAL, options=opts,
             progress=lambda stage, i, n: seen.append((i, n)))
    assert seen == [(10, 40), (20, 40), (30, 40), (40, 40)]
    with pytest.raises(FitCancelled):
        fit_body(default_body, lm, world, None, SIZE, FOCAL, options=opts,
                 should_stop=lambda: True)


def test_bad_input_is_refused(default_body):
    lm = np.zeros((2, 33, 4), np.float32)
    with pytest.raises(InputError, match="landmarks"):
        fit_body(default_body, lm[:, :20], None, None, SIZE, FOCAL)
    with pytest.raises(InputError, match="person mask"):
        fit_body(default_body, lm, None, [np.zeros(SIZE, bool)], SIZE, FOCAL)
    with pytest.raises(InputError, match="focal"):
        fit_body(default_body, lm, None, None, SIZE, -1.0)


def test_surface_points_are_found_by_geometry(default_body):
    """Face and foot points sit where they belong on the rest mesh (no vertex indices)."""
    v = default_body.smpl.v_template.numpy()
    pts = {k: v[i] for k, i in surface_points(default_body).items()}
    assert pts["nose"][2] > pts["left_eye"][2] > pts["left_ear"][2]        # front to back
    assert pts["left_eye"][1] > pts["nose"][1]                              # eyes above nose
    assert pts["left_ear"][0] > 0 > pts["right_ear"][0]                     # left is +x
    assert pts["left_toe"][2] > pts["left_heel"][2]                         # toes in front
    assert pts["left_heel"][1] < pts["nose"][1] - 1.0


# --------------------------------------------------------------------------------------------
# Properties of the geometric helpers

finite = st.floats(-1.0, 1.0, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.2, 5.0), n=st.integers(1, 4))
def test_procrustes_of_a_similar_copy_is_zero(seed, scale, n):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 0.5, (n, 24, 3))
    rot = Rotation.random(n, random_state=seed).as_matrix()
    pred = scale * np.einsum("nij,nkj->nki", rot, truth) + rng.normal(0, 3, (n, 1, 3))
    assert np.allclose(procrustes_mpjpe(pred, truth), 0.0, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_procrustes_never_exceeds_centred_error(seed):
    rng = np.random.default_rng(seed)
    truth = rng.normal(0, 0.5, (2, 24, 3))
    pred = truth + rng.normal(0, 0.1, truth.shape)
    centred = np.sqrt(((pred - pred.mean(1, keepdims=True)
                        - truth + truth.mean(1, keepdims=True)) ** 2).sum(-1).mean(-1))
    pa = procrustes_mpjpe(pred, truth)
    assert (pa <= centred + 1e-9).all()            # RMS bound of the mean distance
    mirrored = pred * np.array([-1.0, 1.0, 1.0])   # a reflection is not a rotation
    assert (procrustes_mpjpe(mirrored, truth) >= pa - 1e-9).all()


@settings(max_examples=50, deadline=None)
@given(u=finite, v=finite)
def test_ray_rotation_turns_the_optical_axis_onto_the_ray(u, v):
    r = _ray_rotation(np.array([u]), np.array([v]))[0]
    ray = np.array([u, v, 1.0]) / np.linalg.norm([u, v, 1.0])
    assert np.allclose(r @ [0, 0, 1.0], ray, atol=1e-9)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(r), 1.0)


@settings(max_examples=50, deadline=None)
@given(yaw=st.floats(-10.0, 10.0, allow_nan=False))
def test_yaw_matrix_keeps_the_body_upright(yaw):
    r = _yaw_matrix(np.array([yaw]))[0]
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(r @ [0, 1.0, 0], [0, -1.0, 0])          # SMPL up -> image up
    left = r @ [1.0, 0, 0]                                      # the body's left in camera
    assert np.allclose(left, [np.cos(yaw), 0, np.sin(yaw)], atol=1e-9)


def test_left_right_swap_is_an_involution():
    assert (SWAP_LR[SWAP_LR] == np.arange(len(LANDMARK_NAMES))).all()
    for i, j in enumerate(SWAP_LR):
        a, b = LANDMARK_NAMES[i], LANDMARK_NAMES[j]
        assert a == b or a.replace("left", "right") == b or a.replace("right", "left") == b


def test_world_nose_behind_the_ears_overrules_a_face_seen_on_the_back_of_the_head(default_body):
    """A person seen from behind (160 deg) whom the face detector wrongly reports as facing the
    camera (it fires on the back of a head): MediaPipe's world nose lies behind the ears, and
    that decides; the fitted front points away from the camera as the truth's does."""
    truth = _subject(default_body, 1, [160.0])
    lm, world = body_landmarks(default_body, truth, K)
    opts = replace(QUICK, stage2_steps=40, stage3_steps=0)
    assert nose_facing(world, np.array([1.0]), opts)[0] == -1.0
    assert nose_facing(world, None, replace(opts, nose_depth=1.0))[0] == 0.0   # too close to tell
    _, front_world = body_landmarks(default_body, _subject(default_body, 1, [0.0]), K)
    assert nose_facing(front_world, np.array([-1.0]), opts)[0] == -1.0   # a nose in front proves no face
    res = fit_body(default_body, lm, world, _silhouettes(default_body, truth), SIZE, FOCAL,
                   temporal=False, facing=np.array([1.0]), options=opts)
    front = Rotation.from_rotvec(res.smpl.global_orient[0]).apply([0, 0, 1.0])
    truth_front = Rotation.from_rotvec(truth.global_orient[0]).apply([0, 0, 1.0])
    assert np.degrees(np.arccos(np.clip(front @ truth_front, -1, 1))) < 20.0


def _tilt_deg(joints: np.ndarray) -> np.ndarray:
    """(N, 24, 3) camera-space joints -> (N,) degrees between the ankles-to-neck line and image up."""
    axis = joints[:, JOINT_INDEX["neck"]] - joints[:, [JOINT_INDEX["left_ankle"], JOINT_INDEX["right_ankle"]]].mean(1)
    return np.degrees(np.arccos(np.clip(-axis[:, 1] / np.linalg.norm(axis, axis=1), -1, 1)))


@settings(max_examples=50, deadline=None)
@given(yaw=st.floats(-np.pi, np.pi), lean=st.floats(0.0, 1.2), towards=st.floats(-np.pi, np.pi),
       sigma=st.floats(0.05, 0.5))
def test_the_tilt_cost_is_zero_upright_and_one_at_sigma(yaw, lean, towards, sigma):
    """_tilt_cost on a stick body (ankles, neck) turned by any yaw: 0 upright, 1 when it leans by
    sigma in any direction, rising with the lean."""
    joints = np.zeros((3, 24, 3))
    for k, a in enumerate((0.0, sigma, lean)):
        d = np.array([np.sin(a) * np.cos(towards), -np.cos(a), np.sin(a) * np.sin(towards)])
        joints[k, JOINT_INDEX["left_ankle"]] = [0.1 * np.cos(yaw), 0, 0.1 * np.sin(yaw)]
        joints[k, JOINT_INDEX["right_ankle"]] = [-0.1 * np.cos(yaw), 0, -0.1 * np.sin(yaw)]
        joints[k, JOINT_INDEX["neck"]] = 1.4 * d
    cost = _tilt_cost(torch.as_tensor(joints), sigma).numpy()
    assert abs(cost[0]) < 1e-9 and abs(cost[1] - 1) < 1e-6
    assert (cost[2] > 1) == (lean > sigma + 1e-6) or abs(lean - sigma) < 1e-6


@settings(max_examples=50, deadline=None)
@given(yaw=st.floats(-np.pi, np.pi), lean=st.floats(0.0, 1.2), towards=st.floats(-np.pi, np.pi),
       sigma=st.floats(0.05, 0.5))
def test_the_root_tilt_cost_is_zero_upright_and_one_at_sigma(yaw, lean, towards, sigma):
    """_root_tilt_cost of an upright pelvis turned by any yaw: 0; tipped by sigma about any
    horizontal axis: 1; by `lean`: above 1 exactly when lean > sigma."""
    axis = np.array([np.cos(towards), 0.0, np.sin(towards)])
    upright = _yaw_matrix(np.array([yaw]))[0]       # SMPL's up (+y) up the y-down image
    mats = np.stack([Rotation.from_rotvec(a * axis).as_matrix() @ upright for a in (0.0, sigma, lean)])
    cost = _root_tilt_cost(torch.as_tensor(mats), sigma).numpy()
    assert abs(cost[0]) < 1e-9 and abs(cost[1] - 1) < 1e-6
    assert (cost[2] > 1) == (lean > sigma + 1e-6) or abs(lean - sigma) < 1e-6


def _pelvis_lean_deg(smpl: SmplParams) -> np.ndarray:
    """(N,) degrees between the pelvis' up axis (SMPL +y) and the y-down image's up."""
    up = Rotation.from_rotvec(smpl.global_orient).apply([0.0, 1.0, 0.0])
    return np.degrees(np.arccos(np.clip(-up[:, 1], -1, 1)))


def test_the_pelvis_prior_holds_a_photo_upright_and_leaves_a_clip_alone(default_body):
    """w_root_upright acts on a photo and not on a clip: from a camera pitched 20 degrees, a heavy
    pelvis prior fits the photo's pelvis far nearer upright than without it; on a 2-frame clip
    from the same camera the weight changes nothing (a clip's frames show the camera's pitch)."""
    pitch = Rotation.from_rotvec([np.radians(20.0), 0, 0])
    fits = {}
    for name, yaws in (("photo", [30.0]), ("clip", [30.0, 60.0])):
        truth = _subject(default_body, len(yaws), yaws)
        truth = replace(truth, global_orient=(pitch * Rotation.from_rotvec(truth.global_orient)).as_rotvec())
        lm, world = body_landmarks(default_body, truth, K)
        for w in (0.0, 200.0):
            fits[name, w] = fit_body(default_body, lm, world, _silhouettes(default_body, truth), SIZE, FOCAL,
                                     temporal=name == "clip", options=replace(QUICK, w_root_upright=w))
    off, on = (_pelvis_lean_deg(fits["photo", w].smpl)[0] for w in (0.0, 200.0))
    assert off > 3.0 and on < 0.5 * off, (off, on)       # 20 degrees in truth; 5.0 / 0.1 when written
    np.testing.assert_array_equal(fits["clip", 0.0].smpl.global_orient, fits["clip", 200.0].smpl.global_orient)


def test_the_upright_prior_keeps_a_real_camera_tilt(default_body):
    """A photo taken from a camera pitched 20 degrees (the body leans 23 degrees in camera space):
    the upright prior (w_upright) is soft: exact keypoints and silhouette keep part of the tilt
    (about 9 degrees at the default weight; all of it without the prior). A clip from the same
    camera keeps all of it (the prior is for photos)."""
    truth = _subject(default_body, 1, [30.0])
    pitch = Rotation.from_rotvec([np.radians(20.0), 0, 0])
    truth = replace(truth, global_orient=(pitch * Rotation.from_rotvec(truth.global_orient)).as_rotvec())
    lm, world = body_landmarks(default_body, truth, K)
    res = fit_body(default_body, lm, world, _silhouettes(default_body, truth), SIZE, FOCAL, temporal=False,
                   options=QUICK)
    off = fit_body(default_body, lm, world, _silhouettes(default_body, truth), SIZE, FOCAL, temporal=False,
                   options=replace(QUICK, w_upright=0.0))
    assert _tilt_deg(_joints(default_body, truth))[0] > 20.0
    assert _tilt_deg(off.joints3d)[0] > 20.0
    assert 6.0 < _tilt_deg(res.joints3d)[0] < _tilt_deg(off.joints3d)[0] - 5.0
    # a clip's frames share the camera: no upright prior there (w_upright_clip 0)
    clip = _subject(default_body, 2, [30.0, 60.0])
    clip = replace(clip, global_orient=(pitch * Rotation.from_rotvec(clip.global_orient)).as_rotvec())
    lm, world = body_landmarks(default_body, clip, K)
    res = fit_body(default_body, lm, world, _silhouettes(default_body, clip), SIZE, FOCAL, temporal=True,
                   options=QUICK)
    assert (_tilt_deg(res.joints3d) > 20.0).all()
