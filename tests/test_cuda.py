"""The CUDA lane (scripts/test_cuda.sh, on a machine with a GPU): the same work on the CPU and on
CUDA agrees within float32 tolerances, for a fit step (losses and gradients of the codes), the
renderers (body raster depth, point splats) and the appearance step (loss and rendered images).
Skipped with the reason on machines without CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pointwear.body import load_body
from pointwear.data.subject import read_subject

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA on this machine: run scripts/test_cuda.sh on a GPU machine")]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def bodies():
    return load_body("default", device="cpu"), load_body("default", device=CUDA)


@pytest.fixture(scope="module")
def subject(tmp_path_factory, bodies):
    from pointwear.synth.generate import SynthOptions, generate_subject
    root = tmp_path_factory.mktemp("cuda") / "subject"
    generate_subject(root, SynthOptions(frames=4, size=128, outfit="tshirt-shorts", seed=21, points=1024),
                     body=bodies[0])
    return root


@pytest.mark.parametrize("drape", ["parametric:tshirt-shorts", "neural"])
def test_fit_losses_and_gradients_agree(subject, bodies, tmp_path, drape):
    from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
    spec, _, template = drape.partition(":")
    results = []
    for dev, body in zip(("cpu", "cuda"), bodies):
        options = FitOptions(drape=spec, template=template or None, codes=3, device=dev, seed=5)
        fitter = OutfitFitter(read_subject(subject), tmp_path / dev, options, body=body)
        cand = fitter.make_candidates()[0]
        codes = cand.codes.detach().to(fitter.device).requires_grad_()
        loss = fitter.frame_losses(cand.drape, codes, fitter.train, np.arange(len(fitter.train)))
        loss.sum().backward()
        results.append((loss.detach().cpu(), codes.grad.cpu()))
    (l_cpu, g_cpu), (l_gpu, g_gpu) = results
    assert torch.allclose(l_cpu, l_gpu, rtol=2e-3, atol=1e-6), (l_cpu, l_gpu)
    assert torch.allclose(g_cpu, g_gpu, rtol=2e-2, atol=1e-6 + 2e-2 * float(g_cpu.abs().max()))


def test_renderers_agree(bodies):
    from pointwear.fit.visibility import body_depth
    from pointwear.render.splat import splat
    g = torch.Generator().manual_seed(0)
    out = bodies[0](torch.zeros(1, 10), torch.tensor([[np.pi, 0.0, 0.0]]), torch.zeros(1, 69),
                    torch.tensor([[0.0, 0.3, 3.0]]))
    K = torch.tensor([[[300.0, 0, 128], [0, 300.0, 128], [0, 0, 1]]])
    faces = bodies[0].faces_t
    d_cpu = body_depth(out.vertices, faces, K, (256, 256))
    d_gpu = body_depth(out.vertices.to(CUDA), faces.to(CUDA), K.to(CUDA), (256, 256)).cpu()
    hit = torch.isfinite(d_cpu)
    assert torch.equal(hit, torch.isfinite(d_gpu)) or (hit ^ torch.isfinite(d_gpu)).float().mean() < 1e-3
    both = hit & torch.isfinite(d_gpu)
    assert torch.allclose(d_cpu[both], d_gpu[both], atol=1e-4)
    pts = out.vertices[:, ::3]
    feats = torch.rand(1, pts.shape[1], 8, generator=g)
    img_cpu = splat(pts, feats, K, (256, 256), radius_px=1.5, k=4)
    img_gpu = splat(pts.to(CUDA), feats.to(CUDA), K.to(CUDA), (256, 256), radius_px=1.5, k=4).cpu()
    assert torch.allclose(img_cpu, img_gpu, atol=1e-4)


def test_appearance_step_and_render_agree(tmp_path_factory, bodies):
    """Both devices in float32 (auto precision picks bfloat16 on some CPUs only)."""
    from test_appearance_fit import make_tiny_app
    from pointwear.appearance.fit import AppearanceFitter, AppearanceOptions
    root = tmp_path_factory.mktemp("cuda_app")
    subject, outfit, _ = make_tiny_app(root, bodies[0], epochs=1)
    values = []
    for dev, body in zip(("cpu", "cuda"), bodies):
        fitter = AppearanceFitter(read_subject(subject), outfit, root / f"app_{dev}",
                                  AppearanceOptions(epochs=1, device=dev, seed=3, precision="float32"), body=body)
        fitter.model.eval()           # BatchNorm from its running statistics: same on both devices
        idx = torch.arange(min(2, len(fitter.train)))
        loss, _ = fitter.batch_loss(fitter.train, idx, augment=False)
        f = fitter.held
        rgb, mask = fitter.model.render(f.points, f.visible, f.K, f.size, precision="float32")
        values.append((float(loss), rgb.cpu(), mask.cpu()))
    (l_cpu, rgb_cpu, m_cpu), (l_gpu, rgb_gpu, m_gpu) = values
    assert abs(l_cpu - l_gpu) <= 1e-3 * max(1.0, abs(l_cpu))
    assert (rgb_cpu - rgb_gpu).abs().mean() < 1e-3 and (m_cpu - m_gpu).abs().mean() < 1e-3
