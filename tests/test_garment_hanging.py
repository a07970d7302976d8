"""Hanging pieces (skirts, dresses): they never narrow below the hips, whatever the code, and
their skin weights share the legs' weights with the pelvis."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.body import load_body
from pointwear.body.joints import JOINT_INDEX as J
from pointwear.drape.parametric import ParametricDrape
from pointwear.garment.outfit import GRID, HANGING_PELVIS_SHARE

LEGS = [J[f"{side}_{k}"] for side in ("left", "right") for k in ("hip", "knee", "ankle", "foot")]


@pytest.fixture(scope="module")
def body():
    return load_body("default", device="cpu")


def _hanging_grid(drape: ParametricDrape, code: torch.Tensor) -> tuple[np.ndarray, np.ndarray, object]:
    """The hanging piece's rest vertices as a (n_s, n_phi, 3) grid, its weights, the body frame."""
    out = drape(code[None], torch.zeros(1, 10))
    frame = drape.body_frame(torch.zeros(10))
    n_s, n_phi = GRID["hang"]
    first = int(np.flatnonzero(drape.garment_index == 0)[0])      # the hanging piece leads its garment
    v = out.points[0, first:first + n_s * n_phi].detach().numpy().reshape(n_s, n_phi, 3)
    w = out.weights[0, first:first + n_s * n_phi].numpy()
    return v, w, frame


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["skirt", "dress"]), st.lists(st.floats(-4, 4), min_size=7, max_size=7))
def test_hanging_piece_never_narrows_below_the_hips(body, family, logits):
    drape = ParametricDrape(body, family)
    v, _, frame = _hanging_grid(drape, torch.tensor(logits[:drape.code_dim], dtype=torch.float32))
    s, _, rho = frame.torso_axis.coords(v.reshape(-1, 3).astype(np.float64))
    s, rho = s.reshape(v.shape[:2]), rho.reshape(v.shape[:2])
    below = s[:, 0] > frame.hip_s + 0.01
    assert below.sum() >= 2
    # Down every column of the grid (one angle around the axis) the radius only grows.
    assert (np.diff(rho[below], axis=0) > -2e-4).all()


def test_hanging_piece_shares_leg_weights_with_the_pelvis(body):
    drape = ParametricDrape(body, "skirt")
    code = torch.tensor([3.0, 0.0, 0.0, 0.0])          # a long skirt: most of it beside the legs
    _, w, _ = _hanging_grid(drape, code)
    assert np.allclose(w.sum(1), 1.0, atol=1e-5)
    legs, pelvis = w[:, LEGS].sum(1), w[:, J["pelvis"]]
    hem = legs > 0.05
    assert hem.sum() > 100
    # After moving the share, the pelvis holds at least share / (1 - share) of what the legs keep.
    ratio = HANGING_PELVIS_SHARE / (1 - HANGING_PELVIS_SHARE)
    assert (pelvis[hem] >= ratio * legs[hem] - 1e-5).all()
    # Trousers are not hanging pieces: their legs keep following the legs.
    trousers = ParametricDrape(body, "trousers")
    wt = trousers(torch.zeros(1, trousers.code_dim) - 4.0, torch.zeros(1, 10)).weights[0].numpy()
    assert (wt[:, LEGS].sum(1) > 0.9).sum() > 500
