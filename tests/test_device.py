"""Device bugs caught without a GPU. A `device` fixture: the CPU always; `meta` (shapes and
devices without data) through the body, the drapes, the losses and the renderers wherever the
ops allow (data-dependent ops like nonzero cannot run there); CUDA when present, else skipped.
Host synchronisations (the waits a GPU would make Python do) counted on the CPU for one fit
step, one appearance step and rendered frames, each held to its budget. Clean errors: CUDA asked
for without a GPU (CLI exit 2, server ERROR no_cuda), a body on another device, out of memory.
CPU vs CUDA results: tests/test_cuda.py (scripts/test_cuda.sh)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pointwear.body import load_body
from pointwear.data.subject import read_subject
from pointwear.device import DeviceError, HostSyncCounter, device_error, pick_device
from pointwear.drape.parametric import ParametricDrape
from pointwear.fit.losses import MaskTargets, _points_to_mask_sq, chamfer_2d, soft_coverage_loss
from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
from pointwear.link import protocol as P

FIT_BUDGET, APPEARANCE_BUDGET, RENDER_BUDGET_PER_FRAME = 10, 10, 5


@pytest.fixture(params=["cpu", "meta", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA on this machine: the CUDA lane is scripts/test_cuda.sh on a GPU machine")
    return torch.device(request.param)


@pytest.fixture(scope="module")
def cpu_body():
    return load_body("default", device="cpu")


def _body_on(device: torch.device, cpu_body):
    return cpu_body if device.type == "cpu" else load_body("default", device=device)


# -- shapes and devices -------------------------------------------------------------------------
def test_body_follows_to_and_keeps_tensors_on_its_device(device, cpu_body):
    body = _body_on(device, cpu_body)
    assert body.device.type == device.type and body.faces_t.device.type == device.type
    betas = torch.zeros(1, 10, device=device)
    out = body(betas, torch.zeros(3, 3, device=device), torch.zeros(3, 69, device=device),
               torch.zeros(3, 3, device=device))
    assert out.vertices.shape == (3, body.num_vertices, 3) and out.transforms.shape == (3, 24, 4, 4)
    for t in (out.vertices, out.joints, out.transforms):
        assert t.device.type == device.type
    pts = torch.zeros(3, 50, 3, device=device)
    w = torch.full((50, 24), 1 / 24, device=device)
    posed = body.pose_points(pts, w, betas, torch.zeros(3, 3, device=device), torch.zeros(3, 69, device=device))
    assert posed.shape == (3, 50, 3) and posed.device.type == device.type


def test_body_device_none_is_the_cpu_not_a_guess():
    assert load_body("default", device=None).device == torch.device("cpu")


def test_own_rigid_chain_equals_smplx(cpu_body):
    """Our transforms chain (a host list of parents) gives smplx's vertices and joints."""
    g = torch.Generator().manual_seed(0)
    betas, go, bp = torch.randn(2, 10, generator=g), torch.randn(2, 3, generator=g) * 0.3, torch.randn(2, 69, generator=g) * 0.3
    out = cpu_body(betas, go, bp)
    ref = cpu_body.smpl(betas=betas, global_orient=go, body_pose=bp, transl=torch.zeros(2, 3), return_verts=True)
    assert torch.allclose(out.vertices, ref.vertices, atol=1e-5)
    assert torch.allclose(out.joints, ref.joints[:, :24], atol=1e-5)


@pytest.mark.parametrize("template", ["tshirt-shorts", "jacket+tshirt+trousers", "hoodie+skirt", "jacket+dress"])
def test_parametric_drape_builds_on_the_codes_device(device, cpu_body, template):
    """The garment grids (u, phi, the radius tables) are made where the code lives; on meta the
    body frame (host geometry from real values) is primed on the CPU first."""
    body = cpu_body if device.type == "cpu" else load_body("default", device="cpu")   # .to() moves it
    drape = ParametricDrape(body, template)
    betas = torch.zeros(1, 10)
    codes = torch.zeros(2, drape.code_dim)
    ref = drape(codes, betas)
    drape = drape.to(device)
    out = drape(codes.to(device), betas, refresh_weights=device.type == "cpu")
    assert out.points.shape == ref.points.shape and out.weights.shape == ref.weights.shape
    assert out.points.device.type == device.type and out.weights.device.type == device.type
    if device.type != "meta":
        assert torch.allclose(out.points.cpu(), ref.points, atol=1e-5)


def test_parametric_drape_batched_over_codes_equals_one_by_one(cpu_body):
    drape = ParametricDrape(cpu_body, "jacket+tshirt+trousers")
    codes = torch.randn(3, drape.code_dim, generator=torch.Generator().manual_seed(2))
    betas = torch.tensor([[0.5, -1.0] + [0.0] * 8])
    batched = drape(codes, betas)
    for b in range(3):
        one = drape(codes[b:b + 1], betas)
        assert torch.allclose(batched.points[b], one.points[0], atol=1e-6)
        assert torch.allclose(batched.weights[b], one.weights[0])


def test_neural_drape_follows_the_body_device(device, cpu_body):
    from pointwear.drape.neural import load_neural_drape
    body = cpu_body if device.type == "cpu" else load_body("default", device="cpu")   # .to() moves it
    drape = load_neural_drape(None, body).to(device)        # the checkpoint is checked on real values
    codes = torch.zeros(2, drape.code_dim, device=device)
    with torch.no_grad():
        out = drape(codes, torch.zeros(1, 10, device=device))
    assert out.points.shape == (2, drape.num_points, 3) and out.points.device.type == device.type


def _masks(n: int = 2, size: int = 64) -> list[np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    return [((xx - 30 - 3 * i) ** 2 + (yy - 32) ** 2 < 15 ** 2) for i in range(n)]


def test_losses_keep_the_device_of_their_inputs(device):
    target = MaskTargets.from_masks(_masks(), device="cpu").to(device)
    uv = torch.rand(2, 300, 2, device=device) * 60
    valid = torch.ones(2, 300, dtype=torch.bool, device=device)
    frames = np.array([0, 1])
    d = _points_to_mask_sq(uv.reshape(-1, 2), torch.as_tensor(frames, device=device).repeat_interleave(300), target)
    assert d.shape == (600,) and d.device.type == device.type
    if device.type == "meta":   # the rest reads sizes back (nonzero): not possible without data
        return
    cham = chamfer_2d(uv, valid, target, frames, reduction="none")
    cov = soft_coverage_loss(uv, valid, target, frames, reduction="none")
    assert cham["total"].device.type == device.type and cov.device.type == device.type


def test_renderers_keep_the_device(device):
    from pointwear.render.rasterizer import project
    pts = torch.rand(2, 100, 3, device=device) + torch.tensor([0.0, 0.0, 2.0], device=device)
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]], device=device).expand(2, 3, 3)
    uv, z = project(pts, K)
    assert uv.shape == (2, 100, 2) and uv.device.type == device.type
    if device.type == "meta":
        return
    from pointwear.render.splat import splat
    img = splat(pts, torch.rand(1, 100, 4, device=device), K, (64, 64), radius_px=1.5, k=4,
                visible=torch.ones(2, 100, dtype=torch.bool, device=device))
    assert img.shape == (2, 5, 64, 64) and img.device.type == device.type


# -- host synchronisations ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_subject(tmp_path_factory, cpu_body):
    from pointwear.synth.generate import SynthOptions, generate_subject
    root = tmp_path_factory.mktemp("device_fit") / "subject"
    generate_subject(root, SynthOptions(frames=4, size=128, outfit="tshirt-shorts", seed=11, points=1024),
                     body=cpu_body)
    return root


@pytest.mark.parametrize("drape", ["parametric:tshirt-shorts", "neural"])
def test_fit_step_stays_within_the_sync_budget(fit_subject, tmp_path, cpu_body, drape):
    spec, _, template = drape.partition(":")
    options = FitOptions(drape=spec, template=template or None, codes=4, device="cpu")
    fitter = OutfitFitter(read_subject(fit_subject), tmp_path / "fit", options, body=cpu_body)
    cand = fitter.make_candidates()[0]
    codes = cand.codes.detach().requires_grad_()
    opt = torch.optim.Adam([codes], lr=0.05)

    def step(refresh: bool) -> None:
        loss = fitter.frame_losses(cand.drape, codes, fitter.train, fitter._sample_ids(), refresh_weights=refresh)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    step(True)                      # first step: weights and the body frame computed once
    with HostSyncCounter() as syncs:
        step(False)
    assert 0 < syncs.total <= FIT_BUDGET, dict(syncs.counts)


def test_sync_counter_sees_the_waits_it_names():
    x = torch.arange(5.0)
    with HostSyncCounter() as syncs:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        x[x > 1]
        x.nonzero()
        x.to("cpu")
        x.to(x.device)              # a device taken from the inputs: no copy to the host
        x + 1
    assert syncs.counts == {"item": 1, "tolist": 1, "__bool__": 1, "__getitem__": 1, "nonzero": 1, "to": 1}


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory, cpu_body):
    from test_appearance_fit import make_tiny_app
    root = tmp_path_factory.mktemp("device_app")
    return make_tiny_app(root, cpu_body, epochs=1)


def test_appearance_step_stays_within_the_sync_budget(tiny_app, tmp_path, cpu_body):
    from pointwear.appearance.fit import AppearanceFitter, AppearanceOptions
    from pointwear.appearance.state import TrainState
    subject, outfit, _ = tiny_app
    fitter = AppearanceFitter(read_subject(subject), outfit, tmp_path / "app", AppearanceOptions(epochs=1),
                              body=cpu_body)
    state = TrainState()
    state.order = torch.randperm(len(fitter.train), generator=fitter.rng)
    fitter.model.train()

    def step() -> None:
        loss, terms = fitter.batch_loss(fitter.train, fitter._batch_ids(state))
        fitter.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fitter.optimizer.step()
        fitter._pending.append(terms | {"total": loss.detach()})
    step()
    with HostSyncCounter() as syncs:
        step()
    assert 0 < syncs.total <= APPEARANCE_BUDGET, dict(syncs.counts)
    fitter._flush_losses(state)      # the terms come back as numbers once per epoch
    assert len(state.losses) == 2 and all(isinstance(v, float) for v in state.losses[0].values())


def test_render_stays_within_the_sync_budget_per_frame(tiny_app, tmp_path, cpu_body, monkeypatch):
    """`render_sequence` of 8 frames (one chunk): pose, body raster, visibility, splat, U-Net and
    the copy back, counted over the whole call."""
    import test_appearance_fit as taf
    from pointwear.appearance.neural_render import render_sequence
    _, outfit, app = tiny_app
    motion, camera = taf.write_walk_and_camera(tmp_path, frames=8)
    render_sequence(app, tmp_path / "warm", motion, camera, outfit_dir=outfit, up="y", device="cpu")
    import pointwear.appearance.neural_render as nr
    counted, real_depth, real_write = {}, nr.body_depth, nr._write_png

    def depth(*a, **k):              # counting starts at the chunk's body raster ...
        if "syncs" not in counted:
            counted["syncs"] = HostSyncCounter().__enter__()
        return real_depth(*a, **k)

    def write(*a, **k):              # ... and ends where its first frame is written
        if "done" not in counted:
            counted["done"] = counted["syncs"].__exit__(None, None, None)
        return real_write(*a, **k)
    monkeypatch.setattr(nr, "body_depth", depth)
    monkeypatch.setattr(nr, "_write_png", write)
    summary = render_sequence(app, tmp_path / "out", motion, camera, outfit_dir=outfit, up="y", device="cpu")
    syncs = counted["syncs"]
    assert summary["frames"] == 8
    assert syncs.total <= RENDER_BUDGET_PER_FRAME * 8, dict(syncs.counts)


# -- clean errors ---------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_exit_2_with_a_hint(fit_subject, tmp_path, pointwear_exe):
    with pytest.raises(DeviceError) as err:
        pick_device("cuda")
    assert err.value.code == P.E_NO_CUDA
    r = subprocess.run([pointwear_exe, "fit-outfit", str(fit_subject), "--out", str(tmp_path / "o"),
                        "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cuda" in r.stderr and "Traceback" not in r.stderr and "hint" in r.stderr


def test_body_on_another_device_is_refused(fit_subject, tmp_path):
    meta_body = load_body("default", device="meta")
    with pytest.raises(DeviceError) as err:
        OutfitFitter(read_subject(fit_subject), tmp_path / "o", FitOptions(device="cpu"), body=meta_body)
    assert err.value.code == P.E_WRONG_DEVICE


def test_out_of_memory_keeps_the_checkpoint_and_names_what_to_lower(fit_subject, tmp_path, cpu_body, monkeypatch):
    """A step that runs out of memory (torch.OutOfMemoryError, raised by the allocator on CUDA)
    saves the checkpoint of the last finished step and ends as out_of_memory with the hint."""
    options = FitOptions(template="tshirt-shorts", codes=2, coarse_steps=6, fine_steps=2, checkpoint_every=100,
                         device="cpu")
    fitter = OutfitFitter(read_subject(fit_subject), tmp_path / "o", options, body=cpu_body)
    real, calls = fitter.frame_losses, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **k)
    monkeypatch.setattr(fitter, "frame_losses", failing)
    with pytest.raises(DeviceError) as err:
        fitter.run()
    assert err.value.code == P.E_OUT_OF_MEMORY and "frames per step" in str(err.value)
    ckpt = torch.load(tmp_path / "o" / P.CHECKPOINT_PT, weights_only=True)
    assert ckpt["stage"] == "coarse" and ckpt["step"] == 3
    assert device_error(RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu")
                        ).code == P.E_WRONG_DEVICE
    assert device_error(RuntimeError("shape mismatch")) is None
