"""The coarse stage on reduced images (FitOptions.coarse_size): the reduced masks, intrinsics
and body depth agree with the full-size ones, and a fit whose coarse stage runs at half size
picks the same garments and ends as well as one at full size, its best scored at full size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointwear.data.subject import read_subject
from pointwear.fit.frames import load_frames, reduced_size, resize_mask, scale_intrinsics
from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
from pointwear.synth.generate import SynthOptions, generate_subject

FIT = dict(drape="parametric", codes=2, coarse_steps=12, fine_steps=6, refine_steps=0, score_every=4,
           checkpoint_every=8, frames_per_step=2, prune_after=4, seed=3)


@pytest.fixture(scope="module")
def subject(tmp_path_factory, default_body):
    out = tmp_path_factory.mktemp("coarse") / "subject"
    generate_subject(out, SynthOptions(frames=4, size=128, outfit="tank-skirt", seed=21, points=1024),
                     body=default_body)
    return read_subject(out)


@settings(max_examples=60, deadline=None)
@given(H=st.integers(16, 700), W=st.integers(16, 700), side=st.integers(8, 400),
       x=st.floats(-0.4, 0.4), y=st.floats(-0.6, 0.6), z=st.floats(1.5, 6.0), f=st.floats(200, 2000))
def test_scaled_intrinsics_map_pixel_centres_to_pixel_centres(H, W, side, x, y, z, f):
    size = reduced_size((H, W), side)
    if size is None:
        assert max(H, W) <= side
        return
    assert max(size) == side or abs(max(size) - side) <= 1
    K = np.array([[f, 0, W / 2 - 0.5], [0, f, H / 2 - 0.5], [0, 0, 1.0]])
    Ks = scale_intrinsics(K, (H, W), size)
    p = np.array([x, y, z])
    u, v, _ = K @ p / z
    us, vs, _ = Ks @ p / z
    assert us == pytest.approx((u + 0.5) * size[1] / W - 0.5, abs=1e-6)
    assert vs == pytest.approx((v + 0.5) * size[0] / H - 0.5, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), k=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_a_mask_made_of_blocks_shrinks_to_its_blocks(h, w, k, seed):
    blocks = np.random.default_rng(seed).random((h, w)) > 0.5
    full = np.kron(blocks, np.ones((k, k), dtype=bool))
    assert np.array_equal(resize_mask(full, (h, w)), blocks)


def test_reduced_frames_agree_with_the_full_size_ones(subject, default_body):
    ids = list(range(subject.num_frames))
    full = load_frames(subject, default_body, ids, torch.device("cpu"))
    half = load_frames(subject, default_body, ids, torch.device("cpu"), max_side=64)
    assert half.scale == 0.5 and half.point_stride == 4 and full.point_stride == 1
    assert half.targets.image_size == (64, 64) and half.depth.shape[1:] == (64, 64)
    for m_full, m_half in zip(full.masks, half.masks):
        # the mask's area and centre survive the reduction (within a pixel's worth)
        assert m_half.sum() * 4 == pytest.approx(m_full.sum(), rel=0.06)
        cf = np.argwhere(m_full).mean(0)
        ch = np.argwhere(m_half).mean(0)
        assert np.allclose((ch + 0.5) * 2 - 0.5, cf, atol=1.0)
    # the body's depth at reduced pixel centres: on the body where the full map is on the body
    # around the matching full-size pixels (K scaled consistently with the images)
    on_half = torch.isfinite(half.depth)
    blocks = torch.isfinite(full.depth).reshape(len(ids), 64, 2, 64, 2)
    all_on, any_on = blocks.all(4).all(2), blocks.any(4).any(2)
    assert bool((all_on <= on_half).all()) and bool((on_half <= any_on).all())
    # where the 2 x 2 full-size pixels all see the body, the reduced pixel's depth lies between
    # theirs (an arm over the torso: either one)
    z = full.depth.reshape(len(ids), 64, 2, 64, 2)
    both = all_on & on_half
    # (all but a few pixels on occlusion edges inside the silhouette)
    inside = (half.depth >= z.amin((2, 4)) - 0.01) & (half.depth <= z.amax((2, 4)) + 0.01)
    assert float(inside[both].float().mean()) > 0.99


def _fit(subject, tmp_path, default_body, coarse_size):
    fitter = OutfitFitter(subject, tmp_path, FitOptions(**FIT, coarse_size=coarse_size), body=default_body)
    return fitter, fitter.run()


def test_a_half_size_coarse_stage_picks_the_same_garments_and_fits_as_well(subject, tmp_path, default_body):
    full_fitter, full = _fit(subject, tmp_path / "full", default_body, 0)
    half_fitter, half = _fit(subject, tmp_path / "half", default_body, 64)
    assert full_fitter.coarse is None and half_fitter.coarse is not None
    assert [g["name"] for g in half["garments"]] == [g["name"] for g in full["garments"]] == ["skirt", "tank"]
    # the final best is scored on full-size frames: the same scale as the full-size fit's
    assert half["score"] == pytest.approx(full["score"], rel=0.25)
    assert half["metrics"]["heldout"]["iou"] >= full["metrics"]["heldout"]["iou"] - 0.03
    fine = [h for h in half["history"] if h["stage"] == "fine"]
    # (the history keeps scores rounded to 5 decimals)
    assert fine and min(min(h["scores"]) for h in fine) >= half["score"] - 1e-5


SELECT = dict(FIT, labels="off", coarse_size=0, outfits=("tank+skirt", "tshirt+skirt", "tank+shorts", "dress", "tank"))


def test_the_selection_on_smaller_frames_keeps_the_same_garments_and_rescores_the_kept(subject, tmp_path,
                                                                                       default_body):
    """Until the prune, while more outfits compete than are kept, the candidates fit and score
    on frames reduced to `select_size`; the kept ones are then scored again on the coarse
    stage's frames, and only they carry scores into the later choices."""
    full = OutfitFitter(subject, tmp_path / "full", FitOptions(**SELECT), body=default_body).run()
    opts = FitOptions(**SELECT, select_size=64)
    fitter = OutfitFitter(subject, tmp_path / "select", opts, body=default_body)
    result = fitter.run()
    assert fitter.select is not None and fitter.select[0].targets.image_size == (64, 64)
    assert [g["name"] for g in result["garments"]] == [g["name"] for g in full["garments"]] == ["skirt", "tank"]
    assert result["metrics"]["heldout"]["iou"] >= full["metrics"]["heldout"]["iou"] - 0.03
    at_prune = [h for h in result["history"] if h["stage"] == "coarse" and h["step"] == FIT["prune_after"]]
    competing, kept = at_prune[:len(SELECT["outfits"])], at_prune[len(SELECT["outfits"]):]
    assert len(competing) == 5 and len(kept) == opts.keep
    assert {h["drape"] for h in kept} < {h["drape"] for h in competing}
    # the kept candidates' scores on the full masks are not their scores on the reduced ones
    first = {h["drape"]: h["scores"] for h in competing}
    assert all(first[h["drape"]] != h["scores"] for h in kept)
    # the full-size run's history has one scoring at the prune: all five outfits
    assert len([h for h in full["history"] if h["stage"] == "coarse" and h["step"] == FIT["prune_after"]]) == 5


def test_the_selection_on_smaller_frames_runs_only_without_labels(subject, tmp_path, default_body):
    """With labels at most a label's families compete and 128 px loses a T-shirt's sleeves, so the
    reduced selection frames exist only when the fit runs without labels."""
    assert subject.has_labels
    opts = dict(FIT, coarse_size=0, select_size=64)
    labelled = OutfitFitter(subject, tmp_path / "labels", FitOptions(**opts), body=default_body)
    unlabelled = OutfitFitter(subject, tmp_path / "off", FitOptions(**opts, labels="off"), body=default_body)
    assert labelled.groups and labelled.select is None
    assert not unlabelled.groups and unlabelled.select[0].targets.image_size == (64, 64)
