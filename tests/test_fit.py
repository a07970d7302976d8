"""Outfit fitting on a tiny synthetic subject: it improves on its start, resumes after a
cancel, re-drapes on new shapes and motions, and evaluates against the truth."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pointwear.data.subject import read_subject, write_subject
from pointwear.errors import InputError
from pointwear.fit.outfit_fit import FitCancelled, FitOptions, OutfitFitter
from pointwear.fit.outputs import evaluate_points
from pointwear.synth.generate import SynthOptions, generate_subject

TINY = dict(drape="parametric", template="tshirt-shorts", codes=2, coarse_steps=16, fine_steps=6,
            refine_steps=4, score_every=4, checkpoint_every=4, frames_per_step=2, seed=1)


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory, default_body):
    out = tmp_path_factory.mktemp("tiny") / "subject"
    generate_subject(out, SynthOptions(frames=2, size=128, outfit="tshirt-shorts", seed=11, points=1024),
                     body=default_body)
    return read_subject(out)


@pytest.fixture(scope="module")
def fitted(tiny_subject, tmp_path_factory, default_body):
    out = tmp_path_factory.mktemp("fit")
    fitter = OutfitFitter(tiny_subject, out, FitOptions(**TINY), body=default_body)
    cand = fitter.make_candidates()[0]
    with torch.no_grad():
        start_scores = fitter.score(cand.drape, cand.codes)
        k = int(start_scores.argmin())
        d = cand.drape(cand.codes[k:k + 1], fitter.betas)
        smpl = tiny_subject.smpl
        posed = default_body.pose_points(d.points, d.weights, smpl.betas, smpl.global_orient, smpl.body_pose,
                                         smpl.transl)
    start_iou = np.mean([r["iou"] for r in evaluate_points(tiny_subject, default_body, posed, [0, 1])])
    result = fitter.run()
    return out, result, float(start_scores.min()), float(start_iou)


def test_fit_improves_loss_and_iou_over_the_initial_code(fitted):
    out, result, start_score, start_iou = fitted
    assert result["score"] < start_score
    assert result["metrics"]["train"]["iou"] > start_iou
    assert result["metrics"]["train"]["iou"] > 0.5


def test_fit_writes_its_outputs(fitted, tiny_subject):
    out, result, _, _ = fitted
    outfit = np.load(out / "outfit.npz")
    posed = np.load(out / "posed.npz")["points"]
    p = outfit["points"].shape[0]
    assert outfit["weights"].shape == (p, 24)
    np.testing.assert_allclose(outfit["weights"].sum(1), 1, atol=1e-4)
    assert posed.shape == (tiny_subject.num_frames, p, 3)
    assert str(outfit["drape"]) == "parametric:tshirt-shorts"
    assert outfit["faces"].max() < p
    for name in ("outfit.ply", "result.json", "fit_frames.gif", "fit_progress.gif"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "result.json").read_text())
    assert {r["frame"] for r in saved["frames"]} == {0, 1}
    # Posed points project onto the subject's clothing (camera space, K projects them).
    uv = posed[0] @ tiny_subject.K[0].T
    uv = uv[:, :2] / uv[:, 2:]
    h, w = tiny_subject.image_size
    assert ((uv[:, 0] > 0) & (uv[:, 0] < w) & (uv[:, 1] > 0) & (uv[:, 1] < h)).mean() > 0.95


def test_fit_writes_what_blender_needs_to_replay_it(fitted, tiny_subject):
    """posed.npz carries the subject's poses, cameras, fps and the upright transform; body.npz
    is the body for the fitted betas."""
    out, _, _, _ = fitted
    posed = np.load(out / "posed.npz")
    n = tiny_subject.num_frames
    np.testing.assert_allclose(posed["global_orient"], tiny_subject.smpl.global_orient)
    np.testing.assert_allclose(posed["transl"], tiny_subject.smpl.transl)
    assert posed["body_pose"].shape == (n, 69) and posed["K"].shape == (n, 3, 3)
    assert tuple(posed["image_size"]) == tuple(tiny_subject.image_size)
    assert float(posed["fps"]) == float(tiny_subject.meta["fps"])
    W = posed["world_from_camera"]
    assert W.shape == (4, 4) and np.allclose(W[:3, :3] @ W[:3, :3].T, np.eye(3), atol=1e-6)
    upright = posed["points"] @ W[:3, :3].T + W[:3, 3]
    assert upright[..., 1].min() > -0.05 and upright[..., 1].max() > 0.8   # clothes above the floor
    body = np.load(out / "body.npz")
    np.testing.assert_allclose(body["betas"], np.load(out / "outfit.npz")["betas"])
    assert body["joints"].shape == (24, 3) and body["weights"].shape[1] == 24


def test_cancelled_fit_resumes_from_its_checkpoint(tiny_subject, tmp_path, default_body):
    calls = {"n": 0}

    def stop_after_some_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 9

    opts = FitOptions(**(TINY | {"refine_steps": 0}))
    with pytest.raises(FitCancelled):
        OutfitFitter(tiny_subject, tmp_path, opts, should_stop=stop_after_some_steps, body=default_body).run()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["stage"] == "coarse" and ckpt["step"] >= 8
    result = OutfitFitter(tiny_subject, tmp_path, opts, body=default_body).run()
    coarse_steps = [h["step"] for h in result["history"] if h["stage"] == "coarse"]
    assert coarse_steps[0] == 4 and coarse_steps[-1] == opts.coarse_steps   # history kept across the resume
    assert (tmp_path / "outfit.npz").exists()


def test_resume_with_fewer_steps_than_the_checkpoint_finishes(tiny_subject, tmp_path, default_body):
    """Cancelled before the first scoring, resumed with a shorter coarse stage: the fit scores
    what it has and goes on rather than failing to pick a best template."""
    calls = {"n": 0}

    def stop_soon() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    opts = FitOptions(**(TINY | {"refine_steps": 0}))
    with pytest.raises(FitCancelled):
        OutfitFitter(tiny_subject, tmp_path, opts, should_stop=stop_soon, body=default_body).run()
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    shorter = FitOptions(**(TINY | {"refine_steps": 0, "coarse_steps": max(1, step - 1)}))
    result = OutfitFitter(tiny_subject, tmp_path, shorter, body=default_body).run()
    assert result["drape"] and (tmp_path / "outfit.npz").exists()


def test_redrape_keeps_points_and_follows_the_body(fitted, tmp_path):
    from pointwear.drape.redrape import redrape
    out, _, _, _ = fitted
    base = np.load(out / "outfit.npz")
    motion = tmp_path / "m.npz"
    poses = np.zeros((3, 72), np.float32)
    poses[1, 16 * 3 + 2] = -1.2      # left shoulder down
    poses[2, 1 * 3] = -0.8           # left hip forward
    np.savez(motion, poses=poses, trans=np.zeros((3, 3), np.float32), mocap_framerate=60.0)
    tall = redrape(out, tmp_path / "tall", betas=[2.0], motion=motion, up="y")
    new = np.load(tall / "outfit.npz")
    assert new["points"].shape == base["points"].shape
    assert np.ptp(new["points"][:, 1]) > np.ptp(base["points"][:, 1]) + 0.02   # taller body, longer clothes
    posed = np.load(tall / "posed.npz")["points"]
    assert posed.shape == (3,) + base["points"].shape
    moved = np.linalg.norm(posed[1] - posed[0], axis=1)
    left_arm = new["weights"][:, 16] + new["weights"][:, 18] > 0.5
    assert moved[left_arm].mean() > 0.05 and np.median(moved[~left_arm]) < 0.01


def test_empty_masks_are_refused_with_the_frame_named(tiny_subject, tmp_path, default_body):
    bad = tmp_path / "bad"
    frames = [tiny_subject.frame(i) for i in range(2)]
    masks = [tiny_subject.mask(0), np.zeros_like(tiny_subject.mask(1))]
    write_subject(bad, frames=frames, masks=masks, smpl=tiny_subject.smpl, K=tiny_subject.K,
                  meta=dict(tiny_subject.meta))
    with pytest.warns(UserWarning):
        subject = read_subject(bad)
    with pytest.raises(InputError, match=r"frames \[1\]"):
        OutfitFitter(subject, tmp_path / "o", FitOptions(**TINY), body=default_body)


def test_eval_outfit_reports_truth_and_baseline(fitted, tiny_subject):
    from pointwear.fit.evaluate import evaluate_outfit
    out, _, _, _ = fitted
    report = evaluate_outfit(out, tiny_subject.root)
    for name in ("fit", "baseline"):
        assert 0 <= report[name]["heldout_iou"] <= 1
        assert report[name]["chamfer_cm"] > 0
    assert report["fit"]["chamfer_cm"] < report["baseline"]["chamfer_cm"]
    # the truth's own points through the same mask metric: the reference a fit's IoU reads against
    assert report["baseline"]["heldout_iou"] < report["truth_points"]["heldout_iou"] <= 1
    assert [r["frame"] for r in report["truth_points"]["frames"]] == report["heldout_frames"]
    assert (out / "eval.json").exists()
    # the meshes' seen silhouettes: the truth's own mesh, drawn as the synth masks were, is the
    # reference near 1 (the splatted truth points stay below it), the fit and the body between
    assert report["truth_mesh"]["heldout_mesh_iou"] > max(0.95, report["truth_points"]["heldout_iou"])
    for name in ("fit", "baseline"):
        assert 0 < report[name]["heldout_mesh_iou"] < report["truth_mesh"]["heldout_mesh_iou"]
        assert [r["frame"] for r in report[name]["mesh_frames"]] == report["heldout_frames"]
    assert report["fit"]["heldout_mesh_iou"] > report["baseline"]["heldout_mesh_iou"]
    saved = json.loads((out / "result.json").read_text())
    assert all(0 <= r["mesh_iou"] <= 1 for r in saved["frames"]) and "mesh_iou" in saved["metrics"]["train"]


def test_eval_outfit_names_faces_that_index_no_point(fitted, tiny_subject, tmp_path):
    from pointwear.fit.evaluate import evaluate_outfit
    out, _, _, _ = fitted
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    outfit = dict(np.load(bad / "outfit.npz"))
    outfit["faces"] = outfit["faces"].copy()
    outfit["faces"][0, 0] = outfit["points"].shape[0]
    np.savez(bad / "outfit.npz", **outfit)
    with pytest.raises(InputError) as err:
        evaluate_outfit(bad, tiny_subject.root)
    assert err.value.field == "faces" and err.value.file.endswith("outfit.npz"), err.value


def test_frames_with_the_body_out_of_view_are_named_and_left_out(tiny_subject, tmp_path, default_body):
    from pointwear.data.subject import SmplParams
    smpl = tiny_subject.smpl
    transl = smpl.transl.copy()
    transl[1] += np.array([0.0, 0.0, -10.0], np.float32)      # frame 1: body behind the camera
    moved = SmplParams(smpl.betas, smpl.global_orient, smpl.body_pose, transl)
    bad = tmp_path / "bad"
    write_subject(bad, frames=[tiny_subject.frame(i) for i in range(2)], masks=[tiny_subject.mask(i) for i in range(2)],
                  smpl=moved, K=tiny_subject.K, meta=dict(tiny_subject.meta))
    with pytest.warns(UserWarning, match=r"frames \[1\].*out of view"):
        fitter = OutfitFitter(read_subject(bad), tmp_path / "o", FitOptions(**TINY), body=default_body)
    assert fitter.train_ids == [0]
