"""After the fine stage a labelled fit tries each top a jacket on the same label is worn over
without it (the rest refitted as long as the fine stage) and keeps the outfit without it unless
the layered outfit scores `drop_penalty` better: a jacket worn alone is a jacket, a jacket over
a T-shirt stays both."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pointwear.data.subject import read_subject
from pointwear.drape.parametric import ParametricDrape
from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
from pointwear.fit.selection import CandidateSpec
from pointwear.fit.state import Best, Candidate, FitState
from pointwear.synth.generate import SynthOptions, generate_subject

SMALL = dict(drape="parametric", codes=2, select_codes=1, coarse_steps=16, prune_after=8, keep=2, fine_steps=30,
             score_every=5, checkpoint_every=10, frames_per_step=2, refine_steps=0, seed=3)


def _labelled(tmp_path_factory, default_body, outfit: str, seed: int):
    """A 4-frame 128 px synth subject whose garments all carry the one label "upper"."""
    root = tmp_path_factory.mktemp(outfit.replace("+", "_")) / "subject"
    generate_subject(root, SynthOptions(frames=4, size=128, outfit=outfit, seed=seed, points=1024), body=default_body)
    meta = json.loads((root / "subject.json").read_text())
    meta["labels"] = {"1": "upper"}
    (root / "subject.json").write_text(json.dumps(meta))
    import imageio.v3 as iio
    for png in sorted((root / "labels").glob("*.png")):
        iio.imwrite(png, (iio.imread(png) > 0).astype(np.uint8))
    truth = {g["name"]: g for g in json.loads((root / "truth" / "outfit.json").read_text())["garments"]}
    return read_subject(root), truth


def _logits(drape, truth: dict) -> torch.Tensor:
    """(D,) the drape's code with each garment at its truth values (middle of the range where the
    truth has none: a T-shirt that is not worn)."""
    code = torch.zeros(drape.code_dim)
    for fam, seg in zip(drape.families, drape.segments):
        values = truth.get(fam.name, {})
        for k, (name, lo, hi) in enumerate(fam.ranges):
            if name in values:
                p = min(max((values[name] - lo) / (hi - lo), 1e-3), 1 - 1e-3)
                code[seg.start + k] = float(np.log(p / (1 - p)))
    return code


def _after_fine(subject, truth, tmp_path, default_body):
    """The fitter, the jacket-over-a-T-shirt candidate at the truth's values as the fine stage's
    best, and the state holding it."""
    fitter = OutfitFitter(subject, tmp_path, FitOptions(**SMALL), body=default_body)
    drape = ParametricDrape(default_body, "jacket+tshirt")
    code = _logits(drape, truth)
    cand = Candidate(drape, code[None].clone(), spec=CandidateSpec(drape.template, (1, 1)))
    with torch.no_grad():
        score = float(fitter._penalised(cand, fitter.score(drape, code[None], (1, 1)))[0])
    state = FitState(stage="fine", step=SMALL["fine_steps"])
    state.best = Best(score, cand.key, code.clone(), "fine")
    return fitter, cand, state


def test_a_jacket_worn_alone_leaves_the_top_under_it_out(tmp_path_factory, tmp_path, default_body):
    subject, truth = _labelled(tmp_path_factory, default_body, "jacket", 5)
    fitter, cand, state = _after_fine(subject, truth, tmp_path, default_body)
    layered = state.best.score
    with pytest.warns(UserWarning, match="the jacket alone explains label 1 about as well as worn over the tshirt"):
        out = fitter._drop_hidden_layers(cand, state)
    assert out.drape.kinds == ("jacket",) and out.spec.targets == (1,)
    assert state.best.drape_id == out.key == "jacket@1" and state.best.score < layered
    assert out.key in fitter.drapes and torch.equal(out.codes[0], state.best.code)
    (tried,) = [h for h in state.history if h["stage"] == "layers"]
    assert tried["drape"] == "jacket@1" and tried["scores"][0] == round(state.best.score, 5)


def test_a_jacket_over_a_tshirt_keeps_both(tmp_path_factory, tmp_path, default_body):
    subject, truth = _labelled(tmp_path_factory, default_body, "jacket+tshirt", 27)
    fitter, cand, state = _after_fine(subject, truth, tmp_path, default_body)
    before = (state.best.drape_id, state.best.score)
    out = fitter._drop_hidden_layers(cand, state)
    assert out is cand and (state.best.drape_id, state.best.score) == before
    (tried,) = [h for h in state.history if h["stage"] == "layers"]
    options = FitOptions()
    layered = before[1] / (1 + options.layer_penalty) * (1 + options.drop_penalty)   # both fitted: the smaller penalty
    assert tried["drape"] == "jacket@1" and tried["scores"][0] > layered
    # without labels, or with the garments fixed, nothing is tried
    for extra in ({"labels": "off"}, {"template": "jacket+tshirt"}):
        plain = OutfitFitter(subject, tmp_path / "x", FitOptions(**SMALL, **extra), body=default_body)
        fresh = FitState(stage="fine", best=Best(before[1], cand.key, cand.codes[0].clone(), "fine"))
        assert plain._drop_hidden_layers(cand, fresh) is cand and not fresh.history


def test_a_top_that_stays_leaves_the_fit_as_it_was(tmp_path_factory, tmp_path, default_body):
    """The trial's frame draws are given back when the top stays: the refinement after it draws
    the frames it drew before the trial existed."""
    subject, truth = _labelled(tmp_path_factory, default_body, "jacket+tshirt", 27)
    fitter, cand, state = _after_fine(subject, truth, tmp_path, default_body)
    before = fitter.rng.get_state()
    assert fitter._drop_hidden_layers(cand, state) is cand
    assert torch.equal(fitter.rng.get_state(), before)
