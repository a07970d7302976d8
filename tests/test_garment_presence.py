"""Pieces that fade out (a sleeve stub kept for a fixed topology): their presence, the points a
result keeps, and faces renumbered to them."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from garment_support import family_logits
from pointwear.body import load_body
from pointwear.drape.base import keep_faces, present_points
from pointwear.drape.parametric import ParametricDrape
from pointwear.body.joints import JOINT_INDEX as J
from pointwear.garment.families import ABSENT_LOGIT, upgrade_code
from pointwear.garment.outfit import ARMHOLE_EDGE, GRID, SLEEVE_FADE, SLEEVE_MIN, sleeve_presence


@pytest.fixture(scope="module")
def body():
    return load_body("default", device="cpu")


def test_sleeveless_garments_drop_exactly_their_sleeve_stubs(body):
    drape = ParametricDrape(body, "tank+skirt")
    out = drape(drape.random_codes(2, torch.Generator().manual_seed(0)), torch.zeros(1, 10))
    keep = present_points(out)
    stub = 2 * GRID["sleeve"][0] * GRID["sleeve"][1]
    assert keep is not None and int((~keep).sum()) == stub
    faces = keep_faces(drape.faces, keep.numpy())
    assert faces.max() < int(keep.sum()) and len(faces) < len(drape.faces)


def test_dress_sleeve_fades_with_a_gradient(body):
    drape = ParametricDrape(body, "dress")
    lo, hi = drape.families[0].ranges[0][1:]
    sleeve = SLEEVE_MIN + SLEEVE_FADE / 2                   # inside the fade: half present
    code = torch.zeros(1, drape.code_dim)
    code[0, 0] = float(np.log((sleeve - lo) / (hi - sleeve)))
    code[0, 5] = ABSENT_LOGIT                               # no armholes
    code.requires_grad_()
    out = drape(code, torch.zeros(1, 10))
    assert out.presence.min().item() == pytest.approx(0.5, abs=1e-3)
    out.presence.sum().backward()
    assert code.grad[0, 0] > 0 and torch.all(code.grad[0, 1:] == 0)
    assert present_points(out) is None                     # half present is kept in a result
    assert sleeve_presence(SLEEVE_MIN) == 0.0 and sleeve_presence(1.0) == 1.0


def test_dress_armholes_open_its_sides_from_the_straps_out_and_follow_their_parameters(body):
    """A strap dress: the points left out are those farther out than `strap` x the shoulder
    joints' half-width and above `armhole` below the shoulder joints (to the soft edge), on the
    dress's own surface; a deeper armhole or narrower straps leave more out (gradients)."""
    drape = ParametricDrape(body, "dress")
    code = family_logits(drape, sleeve=0.001, armhole=0.12, strap=0.8, taper=1e-4).requires_grad_()   # straight
    out = drape(code, torch.zeros(1, 10))
    pts, pres = out.points[0].detach().numpy(), out.presence[0].detach().numpy()
    joints = body.shaped(torch.zeros(1, 10))[1][0].numpy()
    shoulders = joints[[J["left_shoulder"], J["right_shoulder"]]]
    x_cut, y_cut = 0.8 * np.abs(shoulders[:, 0]).mean(), shoulders[:, 1].mean() - 0.12
    dress = drape.garment_index == 0
    stubs = ~dress | (np.arange(len(pres)) >= GRID["hang"][0] * GRID["hang"][1])
    margin = ARMHOLE_EDGE / 2
    hole = ~stubs & (np.abs(pts[:, 0]) > x_cut + margin) & (pts[:, 1] > y_cut + margin)
    clear = ~stubs & ((np.abs(pts[:, 0]) < x_cut - margin) | (pts[:, 1] < y_cut - margin))
    assert hole.sum() > 100 and np.all(pres[hole] == 0) and np.all(pres[clear] == 1)
    keep = present_points(out)
    assert keep is not None and not keep.numpy()[hole].any() and keep.numpy()[clear].all()
    out.presence.sum().backward()
    assert code.grad[0, 5] < 0 and code.grad[0, 6] > 0    # deeper armholes, wider straps


def test_dress_armholes_batched_over_codes_equal_one_by_one(body):
    """C codes at once ((C, 1, 1) parameters, the fit's coarse stage) cut the same armholes as
    each code alone."""
    drape = ParametricDrape(body, "dress")
    codes = torch.randn(3, drape.code_dim, generator=torch.Generator().manual_seed(4)) * 1.5
    batched = drape(codes, torch.zeros(1, 10))
    for b in range(3):
        one = drape(codes[b:b + 1], torch.zeros(1, 10))
        assert torch.allclose(batched.presence[b], one.presence[0], atol=1e-6)
    assert len({int((batched.presence[b] >= 0.5).sum()) for b in range(3)}) > 1   # the cuts differ


def test_dress_results_from_before_armholes_keep_every_point_of_the_dress(body):
    """A dress code written before `armhole` and `strap` (5 logits) reads them at the low end:
    no armhole, so the same points as before (only sleeve stubs left out)."""
    drape = ParametricDrape(body, "dress")
    old = np.array([-3.0, 0.2, -0.4, 0.3, 0.1], np.float32)      # a sleeveless dress
    new = upgrade_code("dress", old)
    assert new.shape == (drape.code_dim,) and drape.describe(torch.as_tensor(new))[0]["armhole"] < 1e-5
    out = drape(torch.as_tensor(new)[None], torch.zeros(1, 10))
    keep = present_points(out).numpy()
    n_dress = GRID["hang"][0] * GRID["hang"][1]
    assert keep[:n_dress].all() and not keep[n_dress:].any()
    # a jacket over a dress, written before `loose` (5 + 5 logits) or between the two (5 + 6)
    jacket = ParametricDrape(body, "jacket+dress")
    for n in (10, 11):
        code = upgrade_code("jacket+dress", np.zeros(n, np.float32))
        dress, coat = jacket.describe(torch.as_tensor(code))
        assert code.shape == (jacket.code_dim,) and dress["armhole"] < 1e-5
        assert (coat["loose"] < 1e-5) == (n == 10) and coat["hem"] == pytest.approx(0.6 + 0.65 / 2)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 60), f=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_keep_faces_keeps_whole_faces_renumbered(n, f, seed):
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, n, (f, 3))
    keep = rng.random(n) < 0.7
    out = keep_faces(faces, keep)
    kept_ids = np.flatnonzero(keep)
    whole = faces[keep[faces].all(1)]
    assert out.shape == whole.shape
    np.testing.assert_array_equal(kept_ids[out], whole)    # same triangles, new numbering


def test_drapes_of_one_body_share_its_frame_and_build_each_field_once(body):
    """The outfits an unlabelled fit compares share the body's frame (radius fields, region
    trees): a second outfit builds no field the first built, and a new shape gets its own."""
    betas = torch.zeros(10)
    tshirt, dress = ParametricDrape(body, "tshirt"), ParametricDrape(body, "dress")
    frame = tshirt.body_frame(betas)
    tshirt(tshirt.random_codes(1), betas)
    fields = dict(frame.__dict__["_fields"])
    assert dress.body_frame(betas) is frame
    dress(dress.random_codes(1), betas)
    assert all(frame.__dict__["_fields"][k] is v for k, v in fields.items())
    other = ParametricDrape(load_body("default", device="cpu"), "tshirt")
    assert other.body_frame(betas) is not frame
    assert dress.body_frame(torch.full((10,), 0.5)) is not frame
