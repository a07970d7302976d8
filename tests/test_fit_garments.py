"""Compositional outfits: garment families and their meshes, garment selection with and
without labels, per-garment fitting, bad labels, and results of the older four-outfit model."""
from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.data.subject import read_subject
from pointwear.drape.parametric import ParametricDrape
from pointwear.errors import InputError
from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
from pointwear.fit.selection import unlabelled_candidates
from pointwear.garment.families import FAMILIES, outfit_families, outfit_name, outfit_problem
from pointwear.synth.generate import SynthOptions, generate_subject

# Small but honest: every candidate outfit competes, pruned after a few scored steps.
SMALL = dict(drape="parametric", codes=2, select_codes=1, coarse_steps=24, prune_after=8, keep=2, fine_steps=12,
             score_every=4, checkpoint_every=8, frames_per_step=2, seed=3)


def _subject(tmp_path_factory, default_body, outfit: str, seed: int, labels: dict | None = None):
    out = tmp_path_factory.mktemp(outfit.replace("+", "_")) / "subject"
    generate_subject(out, SynthOptions(frames=4, size=128, outfit=outfit, seed=seed, points=1024), body=default_body)
    if labels is not None:       # relabel by slot, as `pointwear prepare` labels garments
        meta = json.loads((out / "subject.json").read_text())
        meta["labels"] = labels
        (out / "subject.json").write_text(json.dumps(meta))
    return read_subject(out)


@settings(max_examples=12, deadline=None)
@given(st.sets(st.sampled_from(sorted(FAMILIES)), min_size=1, max_size=3))
def test_any_wearable_set_of_garments_builds_one_mesh_with_a_garment_id_per_point(default_body, names):
    families = tuple(FAMILIES[n] for n in names)
    problem = outfit_problem(families)
    spec = "+".join(sorted(names))
    if problem:
        with pytest.raises(ValueError):
            outfit_families(spec)
        return
    drape = ParametricDrape(default_body, spec)
    assert drape.template == outfit_name(families) and drape.code_dim == sum(f.code_dim for f in families)
    layers = [f.layer for f in drape.families]
    assert layers == sorted(layers)                                  # inner layer first
    out = drape(torch.zeros(1, drape.code_dim), torch.zeros(10))
    n = out.points.shape[1]
    assert torch.isfinite(out.points).all() and drape.faces.max() < n
    assert sorted(np.unique(drape.garment_index)) == list(range(len(families)))
    assert torch.allclose(out.weights.sum(-1), torch.ones(()), atol=1e-4)


def test_a_jacket_is_open_at_the_front_by_its_opening_parameter(default_body):
    drape = ParametricDrape(default_body, "jacket")
    names = [n for n, _, _ in drape.families[0].ranges]
    closed, opened = torch.full((1, drape.code_dim), -6.0), torch.full((1, drape.code_dim), -6.0)
    opened[0, names.index("opening")] = 6.0
    # The jacket's points in front of the chest, near the midline: none when open.
    for code, expect_front in ((closed, True), (opened, False)):
        p = drape(code, torch.zeros(10)).points[0]
        mid = (p[:, 0].abs() < 0.03) & (p[:, 2] > 0.05) & (p[:, 1] > 0.0)
        assert bool(mid.any()) == expect_front


def test_a_jackets_widen_opens_its_hem_but_not_its_chest(default_body):
    """`widen` opens the fronts from the armpits down, by up to its angle at the hem; at 0 the
    jacket is the one of before (same points)."""
    drape = ParametricDrape(default_body, "jacket")
    names = [n for n, _, _ in drape.families[0].ranges]
    code = torch.full((2, drape.code_dim), -6.0)
    code[:, names.index("opening")] = -1.0
    code[:, names.index("hem")] = 4.0
    code[:, names.index("widen")] = torch.tensor([-12.0, 6.0])
    narrow, wide = drape(code, torch.zeros(10)).points

    def front_gap(p, band):            # smallest angle from the front midline in a height band
        lo, hi = band
        sel = (p[:, 1] > lo) & (p[:, 1] < hi) & (p[:, 0].abs() < 0.12)
        return float(torch.atan2(p[sel, 0], p[sel, 2] - 0.0).abs().min())
    frame_y = default_body.shaped()[1][0]
    pelvis, neck = float(frame_y[0, 1]), float(frame_y[12, 1])
    chest = (neck - 0.12, neck - 0.06)
    hem = (pelvis - 0.12, pelvis - 0.04)
    assert abs(front_gap(wide, chest) - front_gap(narrow, chest)) < 0.03
    assert front_gap(wide, hem) > front_gap(narrow, hem) + 0.3
    # widen at the low end (an older result's jacket) is the jacket of before, built with no widening.
    from pointwear.garment.outfit import GarmentParams, build_outfit
    params = drape.describe(code[0])[0]
    before = GarmentParams("jacket", **{k: v for k, v in params.items() if k in names and k != "widen"})
    mesh = build_outfit(drape.body_frame(torch.zeros(10)), [before], keep_sleeves=True, with_weights=False)
    assert mesh.vertices.shape == narrow.shape and torch.allclose(mesh.vertices, narrow, atol=1e-4)


def test_jacket_results_from_before_widen_and_loose_redrape_as_they_were(default_body, tmp_path):
    """A jacket+tshirt result of 11 logits (before `widen`) and one of 9 (before `loose` too)
    load in today's layout with the missing parameters at the low end, and re-drape to the
    points the older layout made."""
    from pointwear.drape.redrape import load_outfit, redraped_points
    from pointwear.garment.families import ABSENT_LOGIT, upgrade_code
    drape = ParametricDrape(default_body, "jacket+tshirt")
    full = np.array([0.3, -0.2, 0.5, 0.1, -1.0, 0.4, -0.3, 0.2, 0.6, -0.5, 0.7, 0.9], np.float32)
    before_widen = np.delete(full, [11])                      # tshirt 5, jacket 6
    before_loose = np.delete(full, [4, 10, 11])               # tshirt 4, jacket 5
    for old, absent in ((before_widen, [11]), (before_loose, [4, 10, 11])):
        new = upgrade_code("jacket+tshirt", old)
        assert new.shape == (drape.code_dim,) and np.all(new[absent] == ABSENT_LOGIT)
        assert np.array_equal(np.delete(new, absent), old)
        out = drape(torch.as_tensor(new)[None], torch.zeros(10))
        np.savez(tmp_path / "outfit.npz", points=out.points[0].numpy(), weights=out.weights[0].numpy(), code=old,
                 drape=np.array("parametric:jacket+tshirt"), betas=np.zeros(10, np.float32))
        points, _, _ = redraped_points(load_outfit(tmp_path), default_body)
        assert np.allclose(points.numpy(), out.points[0].numpy(), atol=1e-5)
    jacket = drape.describe(torch.as_tensor(upgrade_code("jacket+tshirt", before_widen)))[1]
    assert jacket["name"] == "jacket" and jacket["widen"] < 1e-4 and jacket["loose"] > 0.01


def test_the_coarse_stage_holds_a_jackets_widen_closed_and_the_fine_stage_frees_it(default_body):
    """`widen` (families.FINE_ONLY) takes no random draw (the other draws are those of before it
    existed), sits at the low end, gets no step in the coarse stage, and starts mid-range in the
    fine stage; the other logits move as before."""
    from pointwear.fit.outfit_fit import _hold_fine_only, _release_fine_only
    from pointwear.fit.state import Candidate
    from pointwear.garment.families import ABSENT_LOGIT, FINE_START_LOGIT
    drape = ParametricDrape(default_body, "jacket+tshirt")
    widen = 5 + [n for n, _, _ in drape.families[1].ranges].index("widen")
    assert drape.fine_only.nonzero().ravel().tolist() == [widen]
    rest = [i for i in range(drape.code_dim) if i != widen]
    codes = drape.random_codes(3, torch.Generator().manual_seed(0))
    before = torch.randn(3, drape.code_dim - 1, generator=torch.Generator().manual_seed(0)) * 0.8
    before[0] = 0.0
    assert torch.all(codes[:, widen] == ABSENT_LOGIT) and torch.equal(codes[:, rest], before)
    cand = Candidate(drape, codes.clone().requires_grad_())
    opt = torch.optim.Adam([cand.codes], lr=0.05, betas=(0.5, 0.9), eps=1e-4)
    for _ in range(3):
        opt.zero_grad()
        (drape(cand.codes, torch.zeros(10)).points[..., 2].sum() + 1e-5 * (cand.codes ** 2).sum()).backward()
        _hold_fine_only(cand)
        opt.step()
    moved = (cand.codes.detach() - codes).abs()
    assert torch.all(moved[:, widen] == 0) and bool((moved > 0.01).any())
    fine = _release_fine_only(Candidate(drape, cand.codes.detach()[:1]))
    assert fine.codes[0, widen] == FINE_START_LOGIT and torch.equal(fine.codes[:, rest],
                                                                    cand.codes.detach()[:1, rest])


def test_unlabelled_candidates_are_wearable_and_cover_every_family():
    specs = unlabelled_candidates()
    assert {s.outfit for s in specs} >= set(FAMILIES)
    assert all(outfit_problem(outfit_families(s.outfit)) is None for s in specs)


@pytest.mark.parametrize("outfit,seed,expect", [("tshirt", 21, "tshirt"), ("skirt", 22, "skirt")])
def test_selection_without_labels_picks_the_garment_worn_alone(tmp_path_factory, tmp_path, default_body,
                                                             outfit, seed, expect):
    subject = _subject(tmp_path_factory, default_body, outfit, seed)
    result = OutfitFitter(subject, tmp_path, FitOptions(**SMALL, labels="off"), body=default_body).run()
    assert result["drape"] == f"parametric:{expect}"
    assert [g["name"] for g in result["garments"]] == [expect] and result["garments"][0]["label"] is None
    assert result["metrics"]["heldout"]["iou"] > 0.8


def test_slot_labels_fit_each_garment_to_its_own_mask(tmp_path_factory, tmp_path, default_body):
    """A T-shirt over trousers labelled only "upper" / "lower": each label picks its family."""
    subject = _subject(tmp_path_factory, default_body, "tshirt+trousers", 23, labels={"1": "lower", "2": "upper"})
    result = OutfitFitter(subject, tmp_path, FitOptions(**SMALL), body=default_body).run()
    garments = {g["name"]: g for g in result["garments"]}
    assert set(garments) == {"tshirt", "trousers"}, result["drape"]
    assert garments["trousers"]["label"] == 1 and garments["tshirt"]["label"] == 2
    npz = np.load(tmp_path / "outfit.npz")
    ids = npz["garment"]
    assert ids.shape == (npz["points"].shape[0],) and json.loads(str(npz["garment_names"])) == ["trousers", "tshirt"]
    assert result["metrics"]["heldout"]["iou"] > 0.8
    # A compositional result re-drapes on another body with its garments and their ids.
    from pointwear.drape.redrape import redrape
    tall = np.load(redrape(tmp_path, tmp_path / "tall", betas=[2.0]) / "outfit.npz")
    assert str(tall["drape"]) == result["drape"] and np.array_equal(tall["garment"], ids)
    assert str(tall["garment_names"]) == str(npz["garment_names"])
    assert np.ptp(tall["points"][:, 1]) > np.ptp(npz["points"][:, 1]) + 0.02


def test_label_ids_without_a_name_and_unknown_names_are_refused(tmp_path_factory, tmp_path, default_body):
    subject = _subject(tmp_path_factory, default_body, "tshirt+skirt", 24, labels={"1": "lower"})
    with pytest.raises(InputError) as err:
        OutfitFitter(subject, tmp_path, FitOptions(**SMALL), body=default_body)
    assert "labels" in str(err.value.file) and "[2]" in err.value.message
    subject = _subject(tmp_path_factory, default_body, "tshirt+skirt", 24, labels={"1": "lower", "2": "cape"})
    with pytest.raises(InputError) as err:
        OutfitFitter(subject, tmp_path, FitOptions(**SMALL), body=default_body)
    assert err.value.field == "labels.2" and "cape" in err.value.message



def test_labels_outside_the_clothing_mask_are_named_by_file_and_frame(tmp_path_factory, tmp_path, default_body):
    """Labelled pixels outside masks/ (a label map that overlaps the background) warn, naming
    the label file of that frame; an unnamed id refuses the fit before anything is written."""
    import imageio.v3 as iio
    subject = _subject(tmp_path_factory, default_body, "tshirt+skirt", 24, labels={"1": "lower", "2": "upper"})
    path = subject.root / "labels" / "000001.png"
    labels = iio.imread(path)
    labels[~subject.mask(1)] = 1                   # the whole background labelled "lower"
    iio.imwrite(path, labels)
    with pytest.warns(UserWarning, match=r"000001\.png: \d+% of the labelled pixels lie outside"):
        OutfitFitter(subject, tmp_path / "fit", FitOptions(**SMALL), body=default_body).make_candidates()
    labels[~subject.mask(1)] = 7                   # an id subject.json does not name
    iio.imwrite(path, labels)
    with pytest.warns(UserWarning, match="outside"), pytest.raises(InputError, match=r"label ids \[7\]") as err:
        OutfitFitter(subject, tmp_path / "fit2", FitOptions(**SMALL), body=default_body)
    assert Path(err.value.file).name == "000001.png"
    assert not (tmp_path / "fit2").exists() or not any((tmp_path / "fit2").iterdir())

def test_results_of_the_four_fixed_outfits_still_redrape(default_body):
    """A code fitted with the legacy "tshirt-shorts" template gives the same geometry."""
    drape = ParametricDrape(default_body, "tshirt-shorts")
    assert drape.drape_id == "parametric:tshirt-shorts" and drape.kinds == ("top", "trousers")
    code = torch.linspace(-1, 1, drape.code_dim)[None]
    p = drape(code, torch.zeros(10)).points
    params = drape.describe(code[0])
    assert [g["kind"] for g in params] == ["top", "trousers"] and abs(params[0]["sleeve"] - 0.2689) < 1e-3
    assert p.shape[1] == 8320


def test_a_garment_no_label_supports_is_named_in_a_warning(tmp_path_factory, tmp_path, default_body):
    subject = _subject(tmp_path_factory, default_body, "tshirt", 25, labels={"1": "upper"})
    options = FitOptions(**(SMALL | {"coarse_steps": 4, "fine_steps": 0, "prune_after": 2}), template="tshirt+skirt")
    with pytest.warns(UserWarning, match="no label of the subject is a lower garment"):
        fitter = OutfitFitter(subject, tmp_path, options, body=default_body)
        cand = fitter.make_candidates()[0]
    assert cand.targets == (-1, 1)       # the skirt on the whole mask, the T-shirt on its label


def test_family_results_from_before_loose_and_flare_redrape_as_they_were(default_body, tmp_path):
    """A tshirt+trousers result written before tops had `loose` and trouser legs `flare` (7
    logits: trousers 3, T-shirt 4) loads with both at the low end of their range: the same
    rest geometry as a straight leg and a fitted top, and Editor / re-drape accept it."""
    from pointwear.drape.redrape import load_outfit, redraped_points
    from pointwear.garment.families import upgrade_code
    drape = ParametricDrape(default_body, "tshirt+trousers")
    old = np.array([0.3, -0.2, 0.5, 0.1, 0.4, -0.3, 0.2], np.float32)
    new = upgrade_code("tshirt+trousers", old)
    assert new.shape == (drape.code_dim,) and np.array_equal(upgrade_code("tshirt+trousers", new), new)
    trousers, tshirt = drape.describe(torch.as_tensor(new))
    assert trousers["flare"] < 1e-5 and tshirt["loose"] < 1e-5
    assert abs(trousers["hem"] - (0.6 + 0.42 / (1 + np.exp(-0.3)))) < 1e-5 and abs(tshirt["sleeve"] - (
        0.08 + 0.47 / (1 + np.exp(-0.1)))) < 1e-5
    out = drape(torch.as_tensor(new)[None], torch.zeros(10))
    np.savez(tmp_path / "outfit.npz", points=out.points[0].numpy(), weights=out.weights[0].numpy(), code=old,
             drape=np.array("parametric:tshirt+trousers"), betas=np.zeros(10, np.float32))
    outfit = load_outfit(tmp_path)
    assert np.array_equal(outfit["code"], new)
    points, _, _ = redraped_points(outfit, default_body)
    assert np.allclose(points.numpy(), out.points[0].numpy(), atol=1e-5)


def test_appearance_fitted_before_loose_and_flare_still_renders(default_body, tmp_path):
    """An appearance result whose config records the 7-logit tshirt+trousers code of before
    `loose` / `flare` renders on its outfit (which loads in today's 9-logit layout); an
    appearance of another code is still refused, naming the outfit file."""
    from pointwear.appearance.model import AppearanceConfig, AppearanceModel
    from pointwear.appearance.neural_render import render_sequence
    from pointwear.garment.families import upgrade_code
    from test_appearance_fit import write_walk_and_camera
    drape = ParametricDrape(default_body, "tshirt+trousers")
    old = np.array([0.3, -0.2, 0.5, 0.1, 0.4, -0.3, 0.2], np.float32)
    out = drape(torch.as_tensor(upgrade_code("tshirt+trousers", old))[None], torch.zeros(10))
    P = out.points.shape[1]
    np.savez(tmp_path / "outfit.npz", points=out.points[0].numpy(), weights=out.weights[0].numpy(), code=old,
             drape=np.array("parametric:tshirt+trousers"), betas=np.zeros(10, np.float32))
    config = AppearanceConfig(num_points=P, widths=(8, 16), size=(64, 64), crop=(32, 32),
                              drape="parametric:tshirt+trousers", code=[float(c) for c in old])
    AppearanceModel(config, seed=0).save(tmp_path / "appearance.pt")
    motion, camera = write_walk_and_camera(tmp_path, frames=2)
    summary = render_sequence(tmp_path, tmp_path / "frames", motion, camera, up="y")
    assert summary["frames"] == 2 and (tmp_path / "frames" / "000001.png").is_file()
    other = tmp_path / "other"
    other.mkdir()
    config.code = [float(c) + 0.5 for c in old]
    AppearanceModel(config, seed=0).save(other / "appearance.pt")
    with pytest.raises(InputError, match="code differs") as err:
        render_sequence(other, tmp_path / "frames2", motion, camera, outfit_dir=tmp_path, up="y")
    assert "outfit.npz" in str(err.value)



def test_a_plain_top_whose_sleeves_a_jacket_hides_is_found_and_becomes_the_default(default_body):
    """The masks cannot see a top's sleeves that end inside a jacket's: such a tank, T-shirt or
    long sleeve is found (unless its label names it), and replaced by the default family with
    its torso parameters kept and its sleeves at mid-range; the jacket's code is untouched."""
    from pointwear.fit.selection import hidden_top, replace_family
    drape = ParametricDrape(default_body, "jacket+longsleeve")
    assert drape.kinds == ("longsleeve", "jacket")
    code = torch.linspace(-1.5, 1.5, drape.code_dim)
    shirt, jacket = drape.segments
    code[shirt.start], code[jacket.start] = -2.0, 2.0                # long sleeve 0.61, jacket 0.98 of the arm
    params = drape.describe(code)
    assert hidden_top(params, [True, True], 0.03) == 0
    assert hidden_top(params, [False, True], 0.03) is None          # its label names it: the masks decided
    longer = code.clone()
    longer[shirt.start], longer[jacket.start] = 4.0, -4.0            # its cuffs reach past the jacket's
    assert hidden_top(drape.describe(longer), [True, True], 0.03) is None
    alone = ParametricDrape(default_body, "longsleeve")
    assert hidden_top(alone.describe(code[shirt]), [True], 0.03) is None
    outfit, new = replace_family(drape.template, code, 0, "tshirt")
    assert outfit == "jacket+tshirt" and new.shape == code.shape
    after = ParametricDrape(default_body, outfit).describe(new)
    assert after[0]["name"] == "tshirt" and abs(after[0]["sleeve"] - (0.08 + 0.55) / 2) < 1e-4
    for k in ("hem", "neckline", "ease", "loose"):
        assert abs(after[0][k] - params[0][k]) < 1e-4, k
    assert torch.equal(new[jacket], code[jacket])


def test_a_shirt_hidden_under_a_jacket_is_inferred_and_reported(tmp_path_factory, tmp_path, default_body):
    """A T-shirt under an open jacket whose sleeves hide the shirt's, the fit allowed only a
    long sleeve under the jacket: the masks cannot see that top's sleeves, so it becomes a
    T-shirt, named in a warning and in result.json "inferred"; with `hidden_top=""` the masks
    keep deciding."""
    subject = _subject(tmp_path_factory, default_body, "jacket+tshirt", 26)
    options = dict(SMALL, coarse_steps=8, prune_after=4, fine_steps=4, refine_steps=0, labels="off",
                   outfits=("jacket+longsleeve",))
    with pytest.warns(UserWarning, match="never shows its sleeves"):
        result = OutfitFitter(subject, tmp_path / "fit", FitOptions(**options), body=default_body).run()
    assert [g["name"] for g in result["garments"]] == ["tshirt", "jacket"], result["drape"]
    (note,) = result["inferred"]
    assert note["garment"] == "tshirt" and note["index"] == 0 and note["masks_preferred"] == "longsleeve"
    assert json.loads((tmp_path / "fit" / "result.json").read_text())["inferred"] == result["inferred"]
    kept = OutfitFitter(subject, tmp_path / "off", FitOptions(**options, hidden_top=""), body=default_body).run()
    assert kept["drape"] == "parametric:jacket+longsleeve" and kept["inferred"] == []
    with pytest.raises(InputError) as err:
        OutfitFitter(subject, tmp_path / "bad", FitOptions(**options, hidden_top="cape"), body=default_body)
    assert err.value.field == "hidden_top" and "cape" in err.value.message


def _first_scores(history: list, stage: str = "coarse") -> dict:
    """Each candidate's first logged (penalised) scores."""
    out = {}
    for h in history:
        if h.get("stage") == stage and "drape" in h:
            out.setdefault(h["drape"], h["scores"])
    return out


def test_with_labels_a_jacket_over_a_top_must_beat_one_garment_by_the_layer_penalty(tmp_path_factory, tmp_path,
                                                                                   default_body):
    """On a label's mask a jacket over a top is scored x (1 + layer_penalty), one garment as it
    is (without labels `garment_penalty` applies). A long sleeve worn alone, labelled only
    "upper", is fitted as a long sleeve; a T-shirt under an open jacket, labelled the same way,
    still as a jacket over a top."""
    alone = _subject(tmp_path_factory, default_body, "longsleeve", 31, labels={"1": "upper"})
    quick = dict(SMALL, coarse_steps=4, prune_after=4, fine_steps=0, refine_steps=0)
    runs = {p: OutfitFitter(alone, tmp_path / f"p{p}", FitOptions(**quick, layer_penalty=p), body=default_body).run()
            for p in (0.0, 0.5)}
    plain, penalised = (_first_scores(runs[p]["history"]) for p in (0.0, 0.5))
    assert set(plain) == set(penalised) and any(k.startswith("jacket+") for k in plain)
    for key in plain:
        factor = 1.5 if key.startswith("jacket+") else 1.0
        assert penalised[key] == pytest.approx([s * factor for s in plain[key]], rel=2e-3, abs=2e-5), key
    result = OutfitFitter(alone, tmp_path / "alone", FitOptions(**SMALL), body=default_body).run()
    assert [g["name"] for g in result["garments"]] == ["longsleeve"], result["drape"]
    layered = _subject(tmp_path_factory, default_body, "jacket+tshirt", 27, labels={"1": "upper"})
    for png in sorted((layered.root / "labels").glob("*.png")):   # both garments under one "upper" label
        iio.imwrite(png, (iio.imread(png) > 0).astype(np.uint8))
    layered = read_subject(layered.root)
    result = OutfitFitter(layered, tmp_path / "layered", FitOptions(**SMALL), body=default_body).run()
    assert [g["name"] for g in result["garments"]][-1] == "jacket" and len(result["garments"]) == 2, result["drape"]
