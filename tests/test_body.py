"""The default body and the shared forward: anatomy, posing, shape, skinning, export, errors."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from pointwear.body import JOINT_NAMES, PARENTS, region_mask, skin_frames
from pointwear.body.joints import JOINT_INDEX as J


def test_zero_pose_and_betas_reproduce_template(default_body):
    out = default_body()
    assert torch.allclose(out.vertices[0], default_body.smpl.v_template, atol=1e-6)
    assert out.joints.shape == (1, 24, 3)


def test_joints_are_anatomically_placed(default_body):
    j = default_body().joints[0].numpy()
    y = j[:, 1]
    assert y[J["head"]] > y[J["neck"]] > y[J["pelvis"]]
    for side, sign in (("left", 1), ("right", -1)):
        for name in ("hip", "shoulder", "elbow", "wrist", "knee"):
            assert sign * j[J[f"{side}_{name}"], 0] > 0.03, f"{side}_{name} on the wrong side"
        assert y[J[f"{side}_hip"]] > y[J[f"{side}_knee"]] > y[J[f"{side}_ankle"]]
    feet = [J[n] for n in ("left_ankle", "right_ankle", "left_foot", "right_foot")]
    others = [i for i in range(24) if i not in feet]
    assert y[feet].max() < y[others].min()
    stature = np.ptp(default_body.smpl.v_template.numpy()[:, 1])
    assert 1.5 < stature < 1.95


def test_elbow_bend_moves_that_hand_only(default_body):
    pose = torch.zeros(1, 69)
    pose[0, (J["left_elbow"] - 1) * 3 + 1] = -np.pi / 2
    rest = default_body().vertices[0]
    bent = default_body(body_pose=pose).vertices[0]
    w = default_body.weights_np
    moved = (bent - rest).norm(dim=1).numpy()
    assert moved[region_mask(w, "left_hand")].mean() > 0.15
    assert moved[region_mask(w, "right_hand")].max() < 1e-6
    assert moved[region_mask(w, "torso")].mean() < 0.01


def test_first_shape_coefficient_changes_height_monotonically(default_body):
    statures = []
    for b in np.linspace(-2, 2, 5):
        v = default_body(betas=[b]).vertices[0].numpy()
        statures.append(np.ptp(v[:, 1]))
    assert np.all(np.diff(statures) > 0.01), statures


def test_weights_rows_sum_to_one_and_every_joint_used(default_body):
    w = default_body.weights_np
    assert w.shape[1] == 24
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-4)
    assert (w.max(0) > 0.3).all(), "a joint that drives almost nothing"


def test_joints_move_with_shape(default_body):
    j0 = default_body().joints[0]
    j1 = default_body(betas=[2.0]).joints[0]
    assert (j1 - j0).norm(dim=1).max() > 0.05


def test_pose_points_matches_forward_for_body_vertices(default_body):
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(3, 69, generator=g) * 0.3
    orient = torch.randn(3, 3, generator=g)
    transl = torch.randn(3, 3, generator=g)
    betas = torch.randn(3, 10, generator=g)
    out = default_body(betas, orient, pose, transl)
    rest, _ = default_body.shaped(betas)
    skinned = default_body.pose_points(rest, default_body.weights, betas, orient, pose, transl)
    # posedirs are zero for the default body, so skinning the shaped rest mesh is the forward.
    assert torch.allclose(skinned, out.vertices, atol=1e-5)


@pytest.mark.parametrize("per_code_weights", [False, True])
def test_skin_frames_is_pose_points_of_every_code_in_every_frame(default_body, per_code_weights):
    """The fit's skinning of C point sets into F frames (code-major) equals pose_points of the
    sets repeated per frame, in values and in the gradient to the points."""
    g = torch.Generator().manual_seed(1)
    C, F, P = 3, 4, 200
    pose, orient = torch.randn(F, 69, generator=g) * 0.3, torch.randn(F, 3, generator=g)
    transl, betas = torch.randn(F, 3, generator=g), torch.randn(1, 10, generator=g)
    rest, _ = default_body.shaped(betas)
    pts = (rest[:, torch.randint(0, rest.shape[1], (P,), generator=g)] + torch.randn(C, P, 3, generator=g) * 0.02)
    w = torch.softmax(torch.randn(C if per_code_weights else 1, P, 24, generator=g) * 3, -1)
    w = w if per_code_weights else w[0]
    transforms = default_body.joint_transforms(betas, torch.cat([orient, pose], 1))
    grads = []
    for fused in (True, False):
        x = pts.clone().requires_grad_()
        if fused:
            posed = skin_frames(x, w, transforms, transl)
        else:
            fi = torch.arange(F).repeat(C)
            posed = default_body.pose_points(x.repeat_interleave(F, 0), w.repeat_interleave(F, 0) if w.dim() == 3 else w,
                                             betas, orient[fi], pose[fi], transl[fi])
        (posed * torch.linspace(-1, 1, 3)).sum().backward()
        grads.append((posed.detach(), x.grad))
    (a, ga), (b, gb) = grads
    assert a.shape == (C * F, P, 3)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ga, gb, atol=1e-5)


def test_forward_is_batched_and_differentiable(default_body):
    pose = (torch.randn(2, 69) * 0.2).requires_grad_()
    betas = torch.zeros(1, 10, requires_grad=True)
    both = default_body(betas, None, pose).vertices
    one = default_body(betas, None, pose[1:2]).vertices
    assert torch.allclose(both[1:2], one, atol=1e-6)
    both.sum().backward()
    assert pose.grad.abs().sum() > 0 and betas.grad.abs().sum() > 0


def test_regions_cover_the_body_sensibly(default_body):
    v = default_body.smpl.v_template.numpy()
    w = default_body.weights_np
    for name in ("head", "hands", "feet", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs"):
        assert region_mask(w, name).sum() > 50, name
    assert v[region_mask(w, "head"), 1].mean() > v[region_mask(w, "torso"), 1].mean() > v[region_mask(w, "feet"), 1].mean()
    assert v[region_mask(w, "left_hand"), 0].mean() > 0.5
    with pytest.raises(KeyError, match="unknown body region"):
        region_mask(w, "tail")


def test_body_export_cli_writes_what_the_addon_reads(tmp_path, pointwear_exe, default_body):
    out = tmp_path / "body.npz"
    subprocess.run([pointwear_exe, "body", "export", "default", "--betas", "1.5 -0.5", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    data = np.load(out)
    v = data["vertices"]
    assert v.shape == (default_body.num_vertices, 3) and data["faces"].shape[1] == 3
    assert data["joints"].shape == (24, 3) and data["weights"].shape == (len(v), 24)
    assert list(data["joint_names"]) == list(JOINT_NAMES)
    np.testing.assert_array_equal(data["parents"], PARENTS)
    expected = default_body.shaped([1.5, -0.5])[0][0].numpy()
    np.testing.assert_allclose(v, expected, atol=1e-6)


def test_body_export_cli_names_a_missing_file(tmp_path, pointwear_exe):
    missing = tmp_path / "nope" / "SMPL_NEUTRAL.pkl"
    r = subprocess.run([pointwear_exe, "body", "export", str(missing), "--out", str(tmp_path / "b.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "SMPL_NEUTRAL.pkl" in r.stderr and "error" in r.stderr
    assert not (tmp_path / "b.npz").exists()


def test_body_is_wound_outward_so_the_render_may_cull_back_faces(default_body):
    """`pointwear render` skips the body's back faces in its visibility raster when the mesh is
    wound outward: true for the default body, and the depth map is then the same."""
    from pointwear.fit.visibility import body_depth
    from pointwear.render.rasterizer import outward_wound
    rest, _ = default_body.shaped(torch.tensor([[1.5, -1.0]]))
    assert outward_wound(rest[0], default_body.faces_t)
    g = torch.Generator().manual_seed(5)
    pose = torch.randn(2, 69, generator=g) * 0.3
    verts = default_body(torch.zeros(1, 10), torch.zeros(2, 3), pose, torch.tensor([[0.0, 0.2, 2.6]] * 2)).vertices
    verts = verts * torch.tensor([1.0, -1.0, -1.0]) + torch.tensor([0.0, 0.0, 5.2])    # a proper rotation: 180 deg about x
    K = torch.tensor([[300.0, 0.0, 95.5], [0.0, 300.0, 127.5], [0.0, 0.0, 1.0]])
    full = body_depth(verts, default_body.faces_t, K, (256, 192))
    assert torch.isfinite(full).float().mean() > 0.1
    assert torch.equal(full, body_depth(verts, default_body.faces_t, K, (256, 192), cull_backfaces=True))


def test_paired_skin_frames_skins_each_frame_its_own_points(default_body):
    """paired=True: F point sets (a shape changing from frame to frame), set f skinned into
    frame f only, equals pose_points of each set in its frame."""
    g = torch.Generator().manual_seed(2)
    F, P = 4, 150
    pose, orient = torch.randn(F, 69, generator=g) * 0.3, torch.randn(F, 3, generator=g)
    transl, betas = torch.randn(F, 3, generator=g), torch.randn(1, 10, generator=g)
    rest, _ = default_body.shaped(betas)
    pts = rest[:, torch.randint(0, rest.shape[1], (P,), generator=g)] + torch.randn(F, P, 3, generator=g) * 0.02
    w = torch.softmax(torch.randn(P, 24, generator=g) * 3, -1)
    transforms = default_body.joint_transforms(betas, torch.cat([orient, pose], 1))
    posed = skin_frames(pts, w, transforms, transl, paired=True)
    assert posed.shape == (F, P, 3)
    expected = default_body.pose_points(pts, w, betas, orient, pose, transl)
    assert torch.allclose(posed, expected, atol=1e-5)
    assert not torch.allclose(posed[1], skin_frames(pts[:1], w, transforms, transl)[1], atol=1e-3)
