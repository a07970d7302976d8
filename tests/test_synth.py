"""Synthetic subjects: the truth agrees with the pictures, masks are cloth and only cloth,
the garment generator is differentiable in its parameters, and the CLI writes a valid subject."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion

from pointwear.data.subject import read_subject
from pointwear.render.rasterizer import project, rasterize
from pointwear.synth.generate import SynthOptions, generate_subject

OUTFITS = ("tshirt-shorts", "longsleeve-trousers", "tank-skirt", "dress")


@pytest.fixture(scope="module", params=[(o, m) for o, m in zip(OUTFITS, ("turntable", "walk", "walk", "turntable"))],
                ids=lambda p: f"{p[0]}-{p[1]}")
def subject(request, tmp_path_factory, default_body):
    outfit, motion = request.param
    out = tmp_path_factory.mktemp(outfit) / "subject"
    generate_subject(out, SynthOptions(frames=3, size=128, outfit=outfit, motion=motion, seed=7, points=2048),
                     body=default_body)
    return read_subject(out)


def test_truth_points_project_inside_the_clothing_mask(subject):
    truth = np.load(subject.root / "truth" / "clothing.npz")
    points = truth["points"]
    assert points.shape[0] == subject.num_frames and points.shape[2] == 3
    h, w = subject.image_size
    for i in range(subject.num_frames):
        uv, z = project(torch.as_tensor(points[i]), torch.as_tensor(subject.K[i]))
        assert (z > 0).all()
        cols, rows = np.round(uv.numpy()).astype(int).T
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        mask = binary_dilation(subject.mask(i), iterations=2)
        hit = np.zeros(len(points[i]), bool)
        hit[inside] = mask[rows[inside], cols[inside]]
        assert hit.mean() >= 0.85, f"frame {i}: only {hit.mean():.1%} of truth points inside the mask"


def test_masks_cover_clothing_not_skin(subject, default_body):
    """Re-rasterise the truth clothing and the body from smpl.npz: masked pixels are cloth."""
    truth = np.load(subject.root / "truth" / "clothing.npz")
    smpl = subject.smpl
    body = default_body(smpl.betas, smpl.global_orient, smpl.body_pose, smpl.transl).vertices
    nb = body.shape[1]
    faces = torch.cat([torch.as_tensor(default_body.faces),
                       torch.as_tensor(truth["mesh_faces"]).long() + nb])
    n_body_faces = len(default_body.faces)
    for i in range(subject.num_frames):
        verts = torch.cat([body[i], torch.as_tensor(truth["posed_mesh_vertices"][i])])
        face_id = rasterize(verts, faces, torch.as_tensor(subject.K[i]), subject.image_size).face_id[0].numpy()
        cloth, skin = face_id >= n_body_faces, (face_id >= 0) & (face_id < n_body_faces)
        mask = subject.mask(i)
        assert mask.sum() > 100
        # The frames are supersampled and this check is not: allow the 1-pixel outline to differ.
        assert (binary_erosion(mask) & skin).sum() <= 0.01 * mask.sum(), f"frame {i}: mask covers skin"
        assert (cloth & ~binary_dilation(mask)).sum() <= 0.01 * cloth.sum(), f"frame {i}: cloth missing"
        labels = subject.labels(i)
        np.testing.assert_array_equal(labels > 0, mask)


def test_subject_carries_labels_params_and_mesh(subject):
    names = subject.label_names
    assert names and all(isinstance(v, str) for v in names.values())
    truth = np.load(subject.root / "truth" / "clothing.npz")
    assert truth["mesh_faces"].max() < len(truth["mesh_vertices"])
    np.testing.assert_allclose(truth["weights"].sum(1), 1, atol=1e-4)
    assert (subject.root / "truth" / "outfit.json").exists()
    assert (subject.root / "truth" / "clothing_rest.ply").exists()
    assert set(np.unique(truth["point_garment"])) <= set(range(len(names)))


def test_same_seed_same_subject(tmp_path, default_body):
    opts = dict(frames=1, size=64, outfit="dress", seed=3, points=256)
    a = read_subject(generate_subject(tmp_path / "a", SynthOptions(**opts), body=default_body))
    b = read_subject(generate_subject(tmp_path / "b", SynthOptions(**opts), body=default_body))
    np.testing.assert_array_equal(a.frame(0), b.frame(0))
    c = read_subject(generate_subject(tmp_path / "c", SynthOptions(**(opts | {"seed": 4})), body=default_body))
    assert not np.array_equal(a.frame(0), c.frame(0))


def test_garment_geometry_is_differentiable_in_its_parameters(default_body):
    from pointwear.garment.body_frame import BodyFrame
    from pointwear.garment.outfit import GarmentParams, build_outfit
    v, j = (t[0].numpy() for t in default_body.shaped())
    frame = BodyFrame(v, j, default_body.weights_np)
    sleeve = torch.tensor(0.5, requires_grad=True)
    ease = torch.tensor(0.02, requires_grad=True)
    mesh = build_outfit(frame, [GarmentParams("top", sleeve=sleeve, ease=ease)])
    mesh.vertices[:, 0].abs().sum().backward()
    assert sleeve.grad > 0 and ease.grad > 0
    short = build_outfit(frame, [GarmentParams("top", sleeve=0.3)]).vertices[:, 0].abs().max()
    long = build_outfit(frame, [GarmentParams("top", sleeve=0.9)]).vertices[:, 0].abs().max()
    assert long > short + 0.2


def test_synth_cli_and_bad_arguments(tmp_path, pointwear_exe):
    out = tmp_path / "s"
    subprocess.run([pointwear_exe, "synth", str(out), "--frames", "2", "--size", "64", "--seed", "1",
                    "--points", "128"], check=True, capture_output=True, text=True)
    s = read_subject(out)
    assert s.num_frames == 2 and s.image_size == (64, 64) and s.has_truth
    r = subprocess.run([pointwear_exe, "synth", str(tmp_path / "t"), "--frames", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--frames" in r.stderr
