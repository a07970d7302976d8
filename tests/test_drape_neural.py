"""The neural drape model: shapes, skin weights, body shapes, the unit-ball code, gradients,
checkpoints (round trip, wrong body, corrupt or foreign files), the committed default weights, and
a short auto-decoder training run that lowers its loss."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointwear.body import BodyModel
from pointwear.body.model import DEFAULT_BODY_FILE
from pointwear.body.regions import REGION_NAMES, region_labels
from pointwear.body.smpl_file import read_smpl_file
from pointwear.drape.base import DrapeModel
from pointwear.drape.neural import (DEFAULT_CHECKPOINT, EXCLUDED_REGIONS, NeuralDrape, NeuralDrapeConfig,
                                    load_neural_drape, save_neural_drape)
from pointwear.errors import InputError
from pointwear.garment.outfit import HANGING_PELVIS_SHARE, LEG_JOINTS

ROOT = Path(__file__).resolve().parents[1]




def _train_module():
    spec = importlib.util.spec_from_file_location("train_drape", ROOT / "scripts" / "train_drape.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_drape", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(default_body) -> NeuralDrape:
    torch.manual_seed(0)
    return NeuralDrape(default_body)            # default size: P = 8192


@pytest.fixture(scope="module")
def small(default_body) -> NeuralDrape:
    torch.manual_seed(0)
    return NeuralDrape(default_body, NeuralDrapeConfig(points=1024, width=32, layers=2))


def _betas(default_body, first: float) -> torch.Tensor:
    betas = torch.zeros(1, default_body.num_betas)
    betas[0, 0] = first
    return betas


def test_forward_shapes_and_weights(model, default_body):
    assert isinstance(model, DrapeModel) and model.drape_id == "neural" and model.code_dim == 8
    codes = model.random_codes(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(codes, torch.zeros(1, default_body.num_betas))
    assert out.points.shape == (3, 8192, 3)
    assert torch.isfinite(out.points).all()
    assert out.weights.shape == (3, 8192, 24)
    assert (out.weights >= 0).all()
    assert torch.allclose(out.weights.sum(-1), torch.ones(3, 8192), atol=1e-5)
    posed = model.posed(codes, torch.zeros(1, default_body.num_betas), torch.zeros(3, 3),
                        torch.zeros(3, 69), torch.tensor([[0.0, 0.0, 3.0]]).expand(3, 3))
    assert posed.shape == (3, 8192, 3)
    assert torch.allclose(posed[..., 2].mean(), out.points[..., 2].mean() + 3.0, atol=1e-4)


def test_body_points_avoid_head_hands_feet(model, default_body):
    labels = region_labels(default_body.weights_np)
    excluded = np.isin(labels, [REGION_NAMES.index(r) for r in EXCLUDED_REGIONS])
    corners = default_body.faces[model.face_idx.numpy()]
    assert not excluded[corners].any()
    # and they cover the torso, arms and legs (area-uniform: every clothing region gets points)
    covered = set(labels[corners[:, 0]].tolist())
    for region in ("torso", "left_upper_arm", "right_lower_leg", "neck"):
        assert REGION_NAMES.index(region) in covered


def test_points_follow_body_shape(small, default_body):
    code = small.random_codes(1, torch.Generator().manual_seed(1))
    with torch.no_grad():
        thin = small(code, _betas(default_body, -2.0)).points[0]
        broad = small(code, _betas(default_body, 2.0)).points[0]
        body_thin = small.body_points(_betas(default_body, -2.0))[0][0]
        body_broad = small.body_points(_betas(default_body, 2.0))[0][0]
    moved = (broad - thin).norm(dim=1)
    assert moved.mean() > 0.01                    # the body change moves the clothing by cm
    body_moved = body_broad - body_thin
    # clothing points move with their body points (same direction on average)
    cos = torch.nn.functional.cosine_similarity(broad - thin, body_moved, dim=1)
    assert cos.mean() > 0.8
    # a batch of betas gives the same as one at a time
    with torch.no_grad():
        both = small(code.expand(2, -1), torch.cat([_betas(default_body, -2.0), _betas(default_body, 2.0)])).points
    assert torch.allclose(both[0], thin, atol=1e-5) and torch.allclose(both[1], broad, atol=1e-5)


def test_codes_stay_in_unit_ball(small, default_body):
    big = torch.randn(16, 8) * 5
    assert (small.constrain(big).norm(dim=1) <= 1 + 1e-6).all()
    assert torch.allclose(small.constrain(big * 0.01), big * 0.01)          # inside: unchanged
    assert (small.random_codes(64).norm(dim=1) <= 1 + 1e-6).all()
    betas = torch.zeros(1, default_body.num_betas)
    with torch.no_grad():   # the projection is applied in forward too
        assert torch.allclose(small(big[:2], betas).points, small(small.constrain(big[:2]), betas).points)


def test_gradients_reach_the_code(small, default_body):
    code = small.random_codes(2, torch.Generator().manual_seed(2)).clone().requires_grad_(True)
    out = small(code, torch.zeros(1, default_body.num_betas))
    target = out.points.detach() + 0.01
    ((out.points - target) ** 2).sum().backward()
    assert code.grad is not None and torch.isfinite(code.grad).all() and code.grad.abs().sum() > 0
    # frozen network (as when fitting): the template cache must not cut the code's gradient
    for p in small.parameters():
        p.requires_grad_(False)
    try:
        code.grad = None
        small(code, torch.zeros(1, default_body.num_betas)).points.square().sum().backward()
        assert code.grad.abs().sum() > 0
    finally:
        for p in small.parameters():
            p.requires_grad_(True)


def test_checkpoint_round_trip(small, default_body, tmp_path):
    path = save_neural_drape(small, tmp_path / "drape.pt", meta={"note": "test"})
    loaded = load_neural_drape(path, default_body)
    code = small.random_codes(2, torch.Generator().manual_seed(3))
    betas = _betas(default_body, 1.0)
    with torch.no_grad():
        assert torch.allclose(small(code, betas).points, loaded(code, betas).points, atol=1e-6)
    assert loaded.config == small.config and loaded.checkpoint_meta["note"] == "test"
    assert torch.equal(loaded.face_idx, small.face_idx)


def _other_body(default_body) -> BodyModel:
    arrays = dict(read_smpl_file(DEFAULT_BODY_FILE))
    arrays["v_template"] = np.asarray(arrays["v_template"]) * 1.05
    return BodyModel(arrays, source="scaled-default", device="cpu")


def test_checkpoint_for_another_body_is_refused(small, default_body, tmp_path):
    path = save_neural_drape(small, tmp_path / "drape.pt")
    with pytest.raises(InputError) as err:
        load_neural_drape(path, _other_body(default_body))
    assert str(path) in str(err.value) and "another body" in str(err.value)


def test_corrupt_or_foreign_checkpoints_are_refused(small, default_body, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    truncated = tmp_path / "truncated.pt"
    good = save_neural_drape(small, tmp_path / "good.pt").read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    other_arch = tmp_path / "other_arch.pt"
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    payload["config"]["width"] = 48                       # weights no longer fit the architecture
    torch.save(payload, other_arch)
    missing = tmp_path / "missing.pt"
    for path in (garbage, truncated, foreign, other_arch, missing):
        with pytest.raises(InputError) as err:
            load_neural_drape(path, default_body)
        assert str(path) in str(err.value), str(err.value)


def test_default_weights_load_and_run(default_body):
    assert DEFAULT_CHECKPOINT.is_file(), "commit-ready weights missing: run scripts/train_drape.py"
    assert DEFAULT_CHECKPOINT.stat().st_size <= 20e6
    model = load_neural_drape(None, default_body)
    assert model.num_points == 8192 and len(model.train_codes) >= 100
    assert "train_drape.py" in model.checkpoint_meta.get("command", "")
    codes = model.random_codes(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(codes, torch.zeros(1, default_body.num_betas))
        body_pts = model.body_points(torch.zeros(1, default_body.num_betas))[0]
    assert out.points.shape == (2, 8192, 3) and torch.isfinite(out.points).all()
    offsets = (out.points - body_pts).norm(dim=-1)
    assert 0.002 < offsets.median() < 0.15                  # clothing close to, not on, the body


def test_default_skirts_and_dresses_hang_like_the_generators(default_body):
    """The default weights' training codes (outfit i is KINDS[i % 4] of train_drape.py): the
    skirts and dresses get the generator's pelvis share of their leg weights, trousers and
    shorts keep following the legs."""
    model = load_neural_drape(None, default_body)
    kinds = _train_module().KINDS
    codes = model.train_codes[:64]
    hangs = np.array([kinds[i % len(kinds)] in ("tank-skirt", "dress") for i in range(len(codes))])
    with torch.no_grad():
        out = model(codes, torch.zeros(1, default_body.num_betas))
        hang = model.hanging(out.points, model.body_points(torch.zeros(1, default_body.num_betas))[0])
    assert (hang[torch.as_tensor(hangs)] > 0.8).all() and (hang[torch.as_tensor(~hangs)] == 0).all()
    legs = list(LEG_JOINTS)
    source = model.skin_weights[:, legs].sum(1)
    on_legs = source > 0.5
    kept = out.weights[..., legs].sum(-1)[:, on_legs]                     # (64, leg points)
    assert torch.allclose(kept[torch.as_tensor(~hangs)], source[on_legs].expand(int((~hangs).sum()), -1))
    full = torch.as_tensor(hangs) & (hang == 1)
    assert full.sum() >= 20
    assert torch.allclose(kept[full], (1 - HANGING_PELVIS_SHARE) * source[on_legs].expand(int(full.sum()), -1),
                          atol=1e-6)
    assert torch.allclose(out.weights.sum(-1), torch.ones(64, 8192), atol=1e-5)


def test_short_training_run_lowers_its_loss(default_body):
    T = _train_module()
    items = [T.make_outfit(i, 0, 1024, default_body) for i in range(4)]
    data = T.OutfitSet(np.stack([it["points"] for it in items]), np.stack([it["weight_idx"] for it in items]),
                       np.stack([it["weight_val"] for it in items]), np.stack([it["betas"] for it in items]),
                       np.array([it["kind"] for it in items], np.int16), T.KINDS)
    torch.manual_seed(0)
    model = NeuralDrape(default_body, NeuralDrapeConfig(points=1024, width=32, layers=2))
    opts = T.TrainOptions(steps=40, minutes=0.0, batch=4, body_subset=512, truth_subset=512, log_every=5,
                          lr=3e-3, code_lr=3e-2, checkpoint_minutes=1e9)
    result = T.train(model, data, opts, T.LossWeights())
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert len(model.train_codes) == 4 and (model.train_codes.norm(dim=1) <= 1 + 1e-6).all()
