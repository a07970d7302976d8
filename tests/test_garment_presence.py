"""Pieces that fade out (a sleeve stub kept for a fixed topology): their presence, the points a
result keeps, and faces renumbered to them."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.body import load_body
from pointwear.drape.base import keep_faces, present_points
from pointwear.drape.parametric import ParametricDrape
from pointwear.garment.outfit import GRID, SLEEVE_FADE, SLEEVE_MIN, sleeve_presence


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
    code.requires_grad_()
    out = drape(code, torch.zeros(1, 10))
    assert out.presence.min().item() == pytest.approx(0.5, abs=1e-3)
    out.presence.sum().backward()
    assert code.grad[0, 0] > 0 and torch.all(code.grad[0, 1:] == 0)
    assert present_points(out) is None                     # half present is kept in a result
    assert sleeve_presence(SLEEVE_MIN) == 0.0 and sleeve_presence(1.0) == 1.0


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
