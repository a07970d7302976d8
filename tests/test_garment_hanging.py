"""Hanging pieces (skirts, dresses): they never narrow below the hips, whatever the code, but
where their front and back fall in (`fall`); their skin weights share the legs' weights with
the pelvis."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.body import load_body
from pointwear.body.joints import JOINT_INDEX as J
from pointwear.drape.parametric import ParametricDrape
from pointwear.garment.families import ABSENT_LOGIT
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
@given(st.sampled_from(["skirt", "dress"]), st.lists(st.floats(-4, 4), min_size=9, max_size=9))
def test_hanging_piece_never_narrows_below_the_hips(body, family, logits):
    """... with `fall` at the low end of its range (results from before it read it there)."""
    drape = ParametricDrape(body, family)
    code = torch.tensor(logits[:drape.code_dim], dtype=torch.float32)
    code[[n for n, _, _ in drape.families[0].ranges].index("fall")] = ABSENT_LOGIT
    v, _, frame = _hanging_grid(drape, code)
    s, _, rho = frame.torso_axis.coords(v.reshape(-1, 3).astype(np.float64))
    s, rho = s.reshape(v.shape[:2]), rho.reshape(v.shape[:2])
    below = s[:, 0] > frame.hip_s + 0.01
    assert below.sum() >= 2
    # Down every column of the grid (one angle around the axis) the radius only grows.
    assert (np.diff(rho[below], axis=0) > -2e-4).all()


def test_hanging_piece_shares_leg_weights_with_the_pelvis(body):
    drape = ParametricDrape(body, "skirt")
    code = torch.tensor([3.0, 0.0, 0.0, 0.0, 0.0])     # a long skirt: most of it beside the legs
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


def _polar(drape: ParametricDrape, code: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    """(s, phi, rho) of the hanging piece's rest vertices around the torso axis, (n_s, n_phi)
    each, and the body frame."""
    v, _, frame = _hanging_grid(drape, code)
    s, phi, rho = frame.torso_axis.coords(v.reshape(-1, 3).astype(np.float64))
    return s.reshape(v.shape[:2]), phi.reshape(v.shape[:2]), rho.reshape(v.shape[:2]), frame


@pytest.mark.parametrize("family", ["skirt", "dress"])
def test_fall_brings_front_and_back_in_below_the_hips_and_keeps_the_sides(body, family):
    """`fall` takes up to `fall` m per m below the widest hips off the radius, cos^2 of the angle
    from the front: the front and back come in, the sides stay, nothing above the hips moves,
    and no point comes nearer the body than its own (not hung) field plus the ease; the radius
    has a gradient in `fall` where it acts."""
    drape = ParametricDrape(body, family)
    names = [n for n, _, _ in drape.families[0].ranges]
    base = torch.zeros(drape.code_dim)
    base[names.index("hem")], base[names.index("flare")] = 3.0, 1.0          # long and flared
    if "armhole" in names:
        base[names.index("armhole")] = ABSENT_LOGIT
    flat, fallen = base.clone(), base.clone()
    flat[names.index("fall")], fallen[names.index("fall")] = ABSENT_LOGIT, 4.0
    s, phi, rho0, frame = _polar(drape, flat)
    _, _, rho1, _ = _polar(drape, fallen)
    below = s[:, 0] > frame.hip_s + 0.1
    front_back = np.abs(np.cos(phi[0])) > 0.95
    sides = np.abs(np.cos(phi[0])) < 0.1
    assert np.allclose(rho1[~(s[:, 0] > frame.hip_s)], rho0[~(s[:, 0] > frame.hip_s)], atol=1e-6)
    assert (rho1[below][:, front_back] < rho0[below][:, front_back] - 0.01).mean() > 0.5
    assert np.abs(rho1[below][:, sides] - rho0[below][:, sides]).max() < 0.01 * 0.3
    params = drape.describe(fallen)[0]
    field = frame.field(frame.torso_axis, _regions(family), (0.0, frame.floor_s))
    floor = field.lookup(torch.as_tensor(s), torch.as_tensor(phi)).numpy() + params["ease"]
    assert (rho1 >= floor - 1e-4).all()
    code = fallen.clone().requires_grad_()
    out = drape(code[None], torch.zeros(1, 10))
    centre = torch.as_tensor(frame.torso_axis.origin, dtype=torch.float32)
    (out.points[0, :, [0, 2]] - centre[[0, 2]]).square().sum().backward()   # how far out, summed
    assert code.grad[names.index("fall")] < 0


def _regions(family: str) -> tuple[str, ...]:
    legs = ("left_upper_leg", "right_upper_leg", "left_lower_leg", "right_lower_leg")
    return ("torso",) + (("neck",) if family == "dress" else ()) + legs


@pytest.mark.parametrize("family,old", [("skirt", [0.5, -0.3, -1.0, 0.4]),
                                        ("dress", [-3.0, 0.2, -0.4, 0.3, 0.1, 0.5, 0.2])])
def test_results_from_before_fall_re_drape_as_before(body, family, old):
    """A skirt or dress code written before `fall` (4 and 7 logits) reads it at the low end and
    re-drapes to the points of the geometry without it (fall a plain 0: no angle term at all)."""
    from pointwear.garment.families import upgrade_code
    from pointwear.garment.outfit import GarmentParams, build_outfit
    drape = ParametricDrape(body, family)
    code = torch.as_tensor(upgrade_code(family, np.array(old, np.float32)))
    assert code.shape == (drape.code_dim,) and drape.describe(code)[0]["fall"] < 1e-5
    frame = drape.body_frame(torch.zeros(10))
    values = {k: float(v) for k, v in vars(drape.params(code)[0]).items() if k != "kind"}
    before = build_outfit(frame, [GarmentParams(family, **{**values, "fall": 0.0})], keep_sleeves=True,
                          with_weights=False)
    now = drape(code[None], torch.zeros(1, 10))
    assert torch.allclose(now.points[0], before.vertices, atol=1e-5)
