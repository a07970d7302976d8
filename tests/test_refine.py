"""Free-form refinement: the smooth surface basis, outward normals, the body clearance, and on
simulated cloth made in the test, the refinement raising held-out mask IoU."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import given, settings, strategies as st

from pointwear.fit.refine import Clearance, body_surface, harmonic_basis, surface_graph, vertex_normals


def _laplacian_energy(adj, f):
    i, j = adj.nonzero()
    return float(((f[i] - f[j]) ** 2).sum() / 2)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 4), st.integers(0, 1000))
def test_basis_is_orthonormal_smooth_and_spans_each_parts_constant(subdiv, seed):
    a = trimesh.creation.icosphere(subdivisions=subdiv)
    b = trimesh.creation.icosphere(subdivisions=subdiv)
    b.apply_translation([3.0, 0, 0])
    points = np.concatenate([a.vertices, b.vertices])
    faces = np.concatenate([a.faces, b.faces + len(a.vertices)])
    adj = surface_graph(points, faces)
    basis = harmonic_basis(adj, 12)
    assert basis.shape == (len(points), 12)
    assert np.allclose(basis.T @ basis, np.eye(12), atol=1e-4)
    # Two components: the indicator of each lies in the span (uniform inflation of one garment).
    for part in (slice(0, len(a.vertices)), slice(len(a.vertices), None)):
        ind = np.zeros(len(points))
        ind[part] = 1.0
        ind /= np.linalg.norm(ind)
        assert np.linalg.norm(basis @ (basis.T @ ind) - ind) < 1e-3
    # Smooth: far less Laplacian energy than random unit vectors.
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=len(points))
    noise /= np.linalg.norm(noise)
    assert max(_laplacian_energy(adj, basis[:, k]) for k in range(12)) < 0.2 * _laplacian_energy(adj, noise)
    # Repeatable: the same surface gets the same basis, signs included, so a fit is repeatable
    # (ARPACK's own start vector is random: two calls differed by up to 0.06 an entry).
    assert np.array_equal(harmonic_basis(adj, 12), basis)


def test_normals_point_away_from_the_body_and_clearance_measures_depth(default_body):
    body_v, body_n = body_surface(default_body, torch.zeros(10))
    # A shell 2 cm outside the torso: normals agree with the body's, distance about +2 cm.
    torso = np.flatnonzero(np.abs(body_v[:, 1] - 0.2) < 0.15)
    shell = body_v[torso] + 0.02 * body_n[torso]
    n = vertex_normals(shell, None, body_v, body_n)
    assert ((n * body_n[torso]).sum(1) > 0).mean() > 0.95
    c = Clearance.build(shell, body_v, body_n, torch.device("cpu"))
    d = c.signed_distance(torch.as_tensor(shell, dtype=torch.float32)).numpy()
    assert abs(np.median(d) - 0.02) < 0.003
    inside = torch.as_tensor(shell - 0.03 * body_n[torso], dtype=torch.float32)
    assert np.median(c.signed_distance(inside).numpy()) < -0.005


@pytest.fixture(scope="module")
def turntable_tshirt(tmp_path_factory):
    """A T-shirt really draped by Blender's cloth simulator on a turntable (the body still, the
    camera going round): 4 frames at 128 px, coarse cloth, few solver steps."""
    pytest.importorskip("bpy")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_clothsim_set import main as make_set_main
    out = tmp_path_factory.mktemp("clothsim_refine")
    assert make_set_main(["--out", str(out), "--kinds", "tshirt", "--seeds", "3", "--frames", "4", "--size", "128",
                          "--samples", "2", "--res", "0.04", "--settle", "8", "--points", "2048",
                          "--motion", "turntable"]) == 0
    return out / "tshirt_3"


def test_refinement_raises_heldout_iou_on_simulated_cloth(turntable_tshirt, tmp_path, default_body):
    """The same fit with and without refinement (the refined one resumes the other's checkpoint
    after the fine stage): the offsets are kept, raise the held-out mask IoU, stay outside the
    body, and the result re-drapes with them."""
    from pointwear.drape.redrape import load_outfit, redraped_points
    from pointwear.fit.evaluate import evaluate_outfit
    from pointwear.fit.outfit_fit import FitOptions, fit_outfit
    opts = dict(template="tshirt", codes=2, coarse_steps=40, fine_steps=20, score_every=10)
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    fit_outfit(turntable_tshirt, plain, FitOptions(refine_steps=0, **opts))
    shutil.copytree(plain, refined)
    result = fit_outfit(turntable_tshirt, refined, FitOptions(refine_steps=60, **opts))
    assert result["best_stage"] == "refine"
    before, after = evaluate_outfit(plain, turntable_tshirt), evaluate_outfit(refined, turntable_tshirt)
    assert after["fit"]["heldout_iou"] > before["fit"]["heldout_iou"] + 0.005, (before["fit"], after["fit"])
    outfit = load_outfit(refined)
    offsets = outfit["offsets"]
    assert offsets.shape == outfit["points"].shape and np.abs(offsets).max() > 1e-3
    body_v, body_n = body_surface(default_body, torch.as_tensor(outfit["betas"]))
    start = outfit["points"] - offsets
    c = Clearance.build(start, body_v, body_n, torch.device("cpu"))
    depth_before = c.signed_distance(torch.as_tensor(start)).numpy()
    depth_after = c.signed_distance(torch.as_tensor(outfit["points"])).numpy()
    assert (depth_after > np.minimum(depth_before, 0.003) - 0.002).mean() > 0.99   # no point pushed into the body
    points, _, _ = redraped_points(outfit, default_body)
    assert np.allclose(points.numpy(), outfit["points"], atol=1e-4)


def test_time_powers_let_held_out_frames_follow_a_quadratic_in_time():
    """The time basis of offsets that change with time: t = -1 at the first frame and 1 at the
    last; coefficients fitted on the training frames give a held-out frame (interpolated) and
    the last frame (extrapolated) the values of a quadratic path."""
    from pointwear.fit.refine import time_powers
    p = time_powers(range(8), 8, 2, torch.device("cpu"))
    assert p.shape == (8, 3) and torch.allclose(p[:, 0], torch.ones(8))
    assert p[0, 1] == -1 and p[-1, 1] == 1
    path = 4.0 - 6.0 * p[:, 1] + 1.5 * p[:, 1] ** 2          # a hem falling in, slowing down
    train = [0, 1, 2, 4, 5, 6]
    coeff = torch.linalg.lstsq(p[train], path[train, None]).solution
    assert torch.allclose((p @ coeff)[:, 0], path, atol=1e-4)
    assert torch.allclose(time_powers([3], 8, 0, torch.device("cpu")), torch.ones(1, 1))


def test_pose_features_let_held_out_frames_follow_a_swing_that_lags_the_legs():
    """Pose features of a walk (hips, knees, shoulders and elbows swinging with the gait phase,
    the rest of the pose noise): a hem that swings with the legs a quarter cycle late is a
    linear function of them, so coefficients fitted on the training frames give the held-out
    frames' swing from their own pose. A pose that never changes (a turntable) has none."""
    from pointwear.fit.refine import POSE_JOINTS, frame_features, pose_features
    gen = torch.Generator().manual_seed(0)
    phase = torch.arange(8) * 2 * np.pi / 5.3
    pose = torch.randn(8, 69, generator=gen) * 1e-3
    for j, sign in zip(POSE_JOINTS, (1, -1, 0.5, -0.5, -0.6, 0.6, -0.3, 0.3)):
        pose[:, 3 * (j - 1)] = 0.4 * sign * torch.sin(phase) + 0.1 * sign * torch.cos(2 * phase)
        pose[:, 3 * (j - 1) + 1] = 0.2 * sign * torch.cos(phase)
    feats = pose_features(pose, 2)
    assert feats.shape == (8, 2)
    assert torch.allclose(feats.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(feats.square().mean(0), torch.ones(2), atol=1e-4)
    rows = frame_features(range(8), 8, 0, feats)                 # (8, 3): constant, two pose terms
    assert rows.shape == (8, 3) and torch.allclose(rows[:, 0], torch.ones(8))
    swing = 0.05 * torch.sin(phase - np.pi / 2) + 0.02            # metres, a quarter cycle late
    train = [0, 1, 2, 4, 5, 6]
    coeff = torch.linalg.lstsq(rows[train], swing[train, None]).solution
    held = (rows @ coeff)[[3, 7], 0]
    assert torch.allclose(held, swing[[3, 7]], atol=0.004)       # a static shape misses by 2-5 cm
    assert (swing[[3, 7]] - swing[train].mean()).abs().max() > 0.02
    still = pose_features(pose[:1].expand(8, -1).clone(), 2)
    assert still.shape == (8, 0)
