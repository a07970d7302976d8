"""Cut parameters (a tank's or dress's armholes: families.CUT_PARAMS) move which points are
there, not where they lie, so Adam hardly moves them: the fine stage starts them from the best
of `FitOptions.cut_grid` by the training loss. Checked on a subject whose masks are drawn from
our own tank family with wide straps and deep armholes."""
from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from garment_support import family_logits
from pointwear.data.subject import read_subject
from pointwear.drape.parametric import ParametricDrape
from pointwear.fit.frames import load_frames
from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
from pointwear.fit.selection import CandidateSpec
from pointwear.fit.state import Candidate
from pointwear.garment.families import CUT_PARAMS
from pointwear.render.rasterizer import depth_map
from pointwear.synth.generate import SynthOptions, generate_subject

TRUTH = dict(strap=0.95, armhole=0.17, hem=0.8, neckline=0.07, ease=0.015, loose=0.05)
SMALL = dict(drape="parametric", codes=2, select_codes=1, coarse_steps=16, prune_after=8, keep=2, fine_steps=24,
             score_every=4, checkpoint_every=8, frames_per_step=2, refine_steps=0, seed=3)


@pytest.fixture(scope="module")
def wide_straps(tmp_path_factory, default_body):
    """A 4-frame 128 px subject (synth body, cameras and poses) whose clothing masks and
    "upper" labels are our tank family's own mesh with TRUTH's parameters, rasterised in front
    of the posed body."""
    root = tmp_path_factory.mktemp("cuts") / "subject"
    generate_subject(root, SynthOptions(frames=4, size=128, outfit="tank", seed=11, points=1024), body=default_body)
    meta = json.loads((root / "subject.json").read_text())
    meta["labels"] = {"1": "upper"}
    (root / "subject.json").write_text(json.dumps(meta))
    subject = read_subject(root)
    drape = ParametricDrape(default_body, "tank")
    betas = torch.as_tensor(subject.smpl.betas, dtype=torch.float32)[None]
    with torch.no_grad():
        out = drape(family_logits(drape, **TRUTH), betas)
        there = (out.presence[0] > 0.5).numpy()
        faces = torch.as_tensor(drape.faces[there[drape.faces].all(1)]).long()
        t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        posed = default_body.pose_points(out.points, out.weights[0], betas, t(subject.smpl.global_orient),
                                         t(subject.smpl.body_pose), t(subject.smpl.transl))
    ids = list(range(subject.num_frames))
    frames = load_frames(subject, default_body, ids, torch.device("cpu"))
    for k in ids:
        depth = depth_map(posed[k:k + 1], faces, frames.K[k:k + 1], subject.image_size)[0]
        mask = (torch.isfinite(depth) & (depth <= frames.depth[k] + 0.02)).numpy()
        assert mask.sum() > 200, f"frame {k}: the tank covers {mask.sum()} px"
        iio.imwrite(root / "masks" / f"{k:06d}.png", (mask * 255).astype(np.uint8))
        iio.imwrite(root / "labels" / f"{k:06d}.png", mask.astype(np.uint8))
    return read_subject(root)


def _cut_index(drape) -> list[int]:
    names = [n for n, _, _ in drape.families[0].ranges]
    return [names.index(p) for p in CUT_PARAMS["tank"]]


def test_the_fine_stage_starts_the_armholes_from_the_grid_point_with_the_lowest_training_loss(
        wide_straps, tmp_path, default_body):
    fitter = OutfitFitter(wide_straps, tmp_path / "fit", FitOptions(**SMALL), body=default_body)
    drape = ParametricDrape(default_body, "tank")
    middle = family_logits(drape, hem=0.8, neckline=0.07, ease=0.015)     # armholes at the middle
    cand = Candidate(drape, middle.clone(), spec=CandidateSpec("tank", (1,)))
    searched = fitter._search_cuts(cand)
    cut = _cut_index(drape)
    other = [i for i in range(drape.code_dim) if i not in cut]
    assert torch.equal(searched.codes[0, other], middle[0, other])           # only the cut logits move
    assert set(searched.codes[0, cut].tolist()) <= set(FitOptions().cut_grid)
    params = drape.params(searched.codes[0])[0]
    assert float(params.strap) > 0.85 and float(params.armhole) > 0.12, (params.strap, params.armhole)
    ids = np.arange(len(fitter.train))
    with torch.no_grad():
        before, after = (float(fitter.frame_losses(drape, c, fitter.train, ids, targets=(1,))[0])
                         for c in (middle, searched.codes))
    assert after < 0.9 * before, (before, after)
    # an empty grid keeps the start (the fit before the search), and so does a garment without cuts
    plain = OutfitFitter(wide_straps, tmp_path / "plain", FitOptions(**SMALL, cut_grid=()), body=default_body)
    assert torch.equal(plain._search_cuts(cand).codes, middle)
    tshirt = ParametricDrape(default_body, "tshirt")
    code = torch.randn(1, tshirt.code_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fitter._search_cuts(Candidate(tshirt, code, spec=CandidateSpec("tshirt", (1,)))).codes, code)


def test_with_the_search_a_fit_finds_the_wide_straps_it_misses_without(wide_straps, tmp_path, default_body):
    """The same small fit with and without the search (`cut_grid` empty: the middle start):
    with it the straps end near the truth and the held-out frame fits better."""
    runs = {name: OutfitFitter(wide_straps, tmp_path / name, FitOptions(**SMALL, template="tank", **extra),
                               body=default_body).run()
            for name, extra in (("search", {}), ("middle", {"cut_grid": ()}))}
    strap = {k: r["garments"][0]["params"]["strap"] for k, r in runs.items()}
    assert abs(strap["search"] - TRUTH["strap"]) < abs(strap["middle"] - TRUTH["strap"]), strap
    assert abs(strap["search"] - TRUTH["strap"]) < 0.12, strap     # 0.86 here, the middle start 0.74
    assert runs["search"]["score"] < runs["middle"]["score"], {k: r["score"] for k, r in runs.items()}
