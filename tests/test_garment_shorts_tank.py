"""Short shorts on a body whose thighs meet (the waist ring ends at the hem, the legs absent) and
a tank's armholes cut deep like a strap dress's (docs/fitting.md, "The outfit model")."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from garment_support import family_logits
from pointwear.body import load_body
from pointwear.body.joints import JOINT_INDEX as J
from pointwear.drape.base import present_points
from pointwear.drape.parametric import ParametricDrape
from pointwear.garment.families import ABSENT_LOGIT, FINE_ONLY, upgrade_code
from pointwear.garment.outfit import ARMHOLE_EDGE, GRID

# a heavy body of the clothsim training split (seed 26): its thighs meet 17 cm below the crotch
THIGHS_MEET = torch.tensor([[-1.54, -2.0, 0.92, 1.25, 0, 0, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def body():
    return load_body("default", device="cpu")


def _lowest_present(drape, code, betas) -> float:
    out = drape(code, betas)
    keep = out.presence[0] > 0.5
    return float(out.points[0][keep, 1].min())


def test_short_shorts_end_at_their_hem_above_where_the_thighs_part(body):
    drape = ParametricDrape(body, "shorts")
    frame = drape.body_frame(THIGHS_MEET[0])
    rest, joints = (t[0].numpy() for t in body.shaped(THIGHS_MEET))
    crotch = rest[(np.abs(rest[:, 0]) < 0.003) & (rest[:, 1] < joints[J["pelvis"], 1]), 1].min()
    parted = frame.torso_axis.origin[1] - frame.crotch_s          # where the legs part
    assert crotch - parted > 0.1                                  # this body's thighs meet
    hip = joints[[J["left_hip"], J["right_hip"]]].mean(0)
    for hem in (0.13, 0.25):                                      # hems above where the legs part
        code = family_logits(drape, hem=hem)
        out = drape(code, THIGHS_MEET)
        legs = np.asarray(drape.garment_index) == 0
        n_waist = GRID["waist"][0] * GRID["waist"][1]
        assert torch.all(out.presence[0][n_waist:] < 0.5)         # no legs
        length = np.linalg.norm(joints[J["left_ankle"]] - joints[J["left_hip"]])
        hem_y = hip[1] - hem * length * 0.996                     # the leg axis is nearly vertical
        assert _lowest_present(drape, code, THIGHS_MEET) == pytest.approx(hem_y, abs=0.02)
        assert legs.all()
    # a hem at mid-thigh, below where the legs part: two legs down to it
    code = family_logits(drape, hem=0.5)
    out = drape(code, THIGHS_MEET)
    assert torch.all(out.presence[0] > 0.99)
    assert _lowest_present(drape, code, THIGHS_MEET) < parted - 0.05


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-6.0, 6.0), min_size=2, max_size=6, unique=True))
def test_shorts_lowest_point_falls_steadily_as_the_hem_lengthens(body, logits):
    """The lowest present point never rises as `hem` grows, through the hand-over from the waist
    ring to the legs (a gap of at most the legs' fade plus a grid row)."""
    drape = ParametricDrape(body, "shorts")
    lows = []
    for logit in sorted(logits):
        code = torch.zeros(1, drape.code_dim)
        code[0, 0] = logit
        lows.append(_lowest_present(drape, code, THIGHS_MEET))
    assert all(b <= a + 0.03 for a, b in zip(lows, lows[1:]))


def test_trousers_on_a_slim_body_are_unchanged_by_the_short_hem_rule(body):
    """Trousers' hems lie far below where the legs part: the waist ring still ends 2 cm past
    it and both legs are whole."""
    drape = ParametricDrape(body, "trousers")
    out = drape(torch.zeros(1, drape.code_dim), torch.zeros(1, 10))
    assert torch.all(out.presence[0] == 1)
    frame = drape.body_frame(torch.zeros(10))
    waist = out.points[0][:GRID["waist"][0] * GRID["waist"][1]]
    parted = frame.torso_axis.origin[1] - frame.crotch_s
    assert float(waist[:, 1].min()) == pytest.approx(parted - 0.02, abs=0.01)


def test_tank_armholes_are_cut_like_a_strap_dress_and_held_in_the_coarse_stage(body):
    drape = ParametricDrape(body, "tank")
    assert set(FINE_ONLY["tank"]) == {"armhole", "strap", "taper"}
    held = [name for (name, _, _), fine in zip(drape.families[0].ranges, drape.fine_only.tolist()) if fine]
    assert held == ["armhole", "strap", "taper"]
    code = family_logits(drape, armhole=0.12, strap=0.7, taper=1e-4).requires_grad_()   # a straight edge
    out = drape(code, torch.zeros(1, 10))
    pts, pres = out.points[0].detach().numpy(), out.presence[0].detach().numpy()
    joints = body.shaped(torch.zeros(1, 10))[1][0].numpy()
    shoulders = joints[[J["left_shoulder"], J["right_shoulder"]]]
    x_cut, y_cut = 0.7 * np.abs(shoulders[:, 0]).mean(), shoulders[:, 1].mean() - 0.12
    torso = np.arange(len(pres)) < GRID["torso"][0] * GRID["torso"][1]
    m = ARMHOLE_EDGE / 2
    hole = torso & (np.abs(pts[:, 0]) > x_cut + m) & (pts[:, 1] > y_cut + m)
    clear = torso & ((np.abs(pts[:, 0]) < x_cut - m) | (pts[:, 1] < y_cut - m))
    assert hole.sum() > 50 and np.all(pres[hole] == 0) and np.all(pres[clear] == 1)
    out.presence.sum().backward()
    names = [r[0] for r in drape.families[0].ranges]
    assert code.grad[0, names.index("armhole")] < 0 and code.grad[0, names.index("strap")] > 0


def test_a_tapered_armhole_keeps_the_strap_out_on_the_shoulder_and_cuts_deeper_into_the_side(body):
    """`taper`: the armhole's inner edge at `strap` x the shoulder joints' half-width at their
    height, `taper` x the half-width further in at the armhole's bottom, linearly in between.
    Tank and dress codes written before it (session Q's) read it at 0: a straight edge."""
    joints = body.shaped(torch.zeros(1, 10))[1][0].numpy()
    shoulders = joints[[J["left_shoulder"], J["right_shoulder"]]]
    half, top = np.abs(shoulders[:, 0]).mean(), shoulders[:, 1].mean()
    for spec in ("tank", "dress"):
        drape = ParametricDrape(body, spec)
        present = {}
        for taper in (1e-4, 0.4):
            out = drape(family_logits(drape, armhole=0.15, strap=0.9, taper=taper, sleeve=1e-4), torch.zeros(1, 10))
            present[taper] = out.presence[0].detach().numpy()
        whole = drape(family_logits(drape, armhole=1e-4, sleeve=1e-4), torch.zeros(1, 10)).presence[0].numpy() == 1
        pts = out.points[0].detach().numpy()
        x, y = np.abs(pts[:, 0]), np.where(whole, pts[:, 1], np.inf)           # no cut, no sleeves: the body piece
        m = ARMHOLE_EDGE / 2 + 1e-3                     # the soft edge is linear over ARMHOLE_EDGE
        near_top = (y > top - 0.015) & (y < top) & (x < 0.85 * half - m)           # the strap, at the shoulders
        band = (y < top - 0.08) & (y > top - 0.15 + m) & (x > 0.7 * half + m) & (x < 0.9 * half - m)
        assert near_top.sum() > 5 and band.sum() > 5, spec
        assert np.all(present[1e-4][near_top] == 1) and np.all(present[0.4][near_top] == 1), spec
        assert np.all(present[1e-4][band] == 1) and np.all(present[0.4][band] == 0), spec
        names = [n for n, _, _ in drape.families[0].ranges]
        old = np.zeros(drape.code_dim - 1, np.float32)
        assert upgrade_code(spec, old)[names.index("taper")] == ABSENT_LOGIT, spec


def test_tank_results_from_before_armholes_keep_every_point_of_the_tank(body):
    """A tank code of four logits (before `armhole` and `strap`) reads them at the low end: no
    armhole, every torso point present as before; a tank over a skirt likewise."""
    drape = ParametricDrape(body, "tank")
    new = upgrade_code("tank", np.array([0.3, -0.2, 0.1, -1.0], np.float32))
    assert new.shape == (drape.code_dim,) and list(new[4:]) == [ABSENT_LOGIT] * 3
    keep = present_points(drape(torch.as_tensor(new)[None], torch.zeros(1, 10))).numpy()
    n_torso = GRID["torso"][0] * GRID["torso"][1]
    assert keep[:n_torso].all() and not keep[n_torso:].any()     # only the sleeve stubs go
    both = ParametricDrape(body, "tank+skirt")
    code = upgrade_code("tank+skirt", np.zeros(9, np.float32))   # tank 4 + skirt 5 logits
    skirt, tank = sorted(both.describe(torch.as_tensor(code)), key=lambda p: p["name"])
    assert code.shape == (both.code_dim,) and tank["armhole"] < 1e-5 and skirt["fall"] > 0.1
