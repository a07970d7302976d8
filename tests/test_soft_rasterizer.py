"""Soft rasterizer: agrees with the hard rasterizer, gradients match finite differences, chunking
does not change results, textures and SH shading behave as documented."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointwear.render import interpolate, rasterize
from pointwear.render.soft import (SoftOptions, sample_texture, sh_basis, sh_shading, soft_rasterize,
                                   soft_silhouette, vertex_normals)
from test_rasterizer import make_K, sphere_scene


def test_face_map_and_coverage_agree_with_hard_rasterizer():
    v, f = sphere_scene(np.random.default_rng(0), subdiv=3)
    K = make_K(60.0, 60.0, 31.5, 31.5)
    hard = rasterize(v, f, K, (64, 64))
    soft = soft_rasterize(v, f, K, (64, 64), SoftOptions(sigma=0.05))
    assert torch.equal(soft.face_id, hard.face_id)
    assert torch.equal(soft.bary, hard.bary)
    covered = hard.mask[0]
    inside = soft.alpha[0] > 0.5
    # Away from the outline (pixels whose 3x3 neighbourhood is all in or all out) they agree exactly.
    k = torch.ones(1, 1, 3, 3)
    nb = torch.nn.functional.conv2d(covered[None, None].float(), k, padding=1)[0, 0]
    interior, exterior = nb == 9, nb == 0
    assert interior.sum() > 500 and exterior.sum() > 500
    assert bool(inside[interior].all()) and not bool(inside[exterior].any())
    assert (inside != covered).float().mean() < 0.01
    assert float(soft.alpha[0][exterior].max()) < 0.5 and float(soft.alpha[0][interior].min()) > 0.999


def test_silhouette_is_half_on_an_edge_and_decays_outside():
    # One big triangle; pixel row 10 lies exactly on its bottom edge y = 10.
    v = torch.tensor([[-1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [0.0, -1.0, 2.0]])
    K = make_K(10.0, 10.0, 16.0, 5.0)   # edge y = 1 -> row 10; corners at x = 11 and 21
    a = soft_silhouette(v, torch.tensor([[0, 1, 2]]), K, (20, 32), SoftOptions(sigma=1.0))[0]
    assert abs(float(a[10, 16]) - 0.5) < 1e-5
    expected = torch.sigmoid(torch.tensor([-1.0, -4.0, -9.0]))  # d = 1, 2, 3 px below the edge
    assert torch.allclose(a[11:14, 16], expected, atol=1e-5)


def test_batched_equals_single_and_chunking_does_not_matter():
    rng = np.random.default_rng(3)
    scenes = [sphere_scene(rng, subdiv=2) for _ in range(2)]
    f = scenes[0][1]
    verts = torch.stack([s[0] for s in scenes])
    K = torch.stack([make_K(40.0, 42.0, 20.0, 18.0), make_K(35.0, 35.0, 16.0, 20.0)])
    whole = soft_silhouette(verts, f, K, (40, 36))
    tiny = soft_silhouette(verts, f, K, (40, 36), SoftOptions(max_pairs=997))
    assert torch.allclose(whole, tiny, atol=1e-6)
    for b in range(2):
        assert torch.allclose(whole[b], soft_silhouette(verts[b], f, K[b], (40, 36))[0], atol=1e-6)


def test_gradient_under_checkpointed_chunks_equals_unchunked():
    v, f = sphere_scene(np.random.default_rng(4), subdiv=2)
    K = make_K(40.0, 40.0, 20.0, 20.0)
    w = torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(0))
    grads = []
    for pairs in (10_000_000, 1000):
        x = v.clone().requires_grad_(True)
        (soft_silhouette(x, f, K, (40, 40), SoftOptions(max_pairs=pairs)) * w).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), sigma=st.floats(0.3, 3.0))
def test_silhouette_gradient_matches_finite_differences(seed, sigma):
    """Random small triangles in float64: autograd == central differences (torch.autograd.gradcheck)."""
    rng = np.random.default_rng(seed)
    n = 3
    verts = np.concatenate([rng.uniform(-0.5, 0.5, (3 * n, 2)), rng.uniform(2.0, 3.0, (3 * n, 1))], 1)
    faces = torch.arange(3 * n).view(n, 3)
    K = make_K(12.0, 12.0, 7.5, 7.5, torch.float64)
    w = torch.tensor(rng.uniform(0.5, 1.5, (1, 16, 16)))
    opts = SoftOptions(sigma=sigma, cutoff=1e-14)

    def loss(x):
        return (soft_silhouette(x, faces, K, (16, 16), opts) * w).sum()

    x = torch.tensor(verts, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_barycentric_colours_carry_vertex_gradients():
    """Interior pixels: interpolated per-vertex colours are differentiable w.r.t. positions (FD check)."""
    v = torch.tensor([[-1.0, -1.0, 3.0], [1.2, -0.8, 3.2], [0.1, 1.1, 2.8]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2]])
    col = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.3]], dtype=torch.float64)
    K = make_K(10.0, 10.0, 8.0, 8.0, torch.float64)

    def loss(x):
        fr = soft_rasterize(x, f, K, (16, 16))
        return (interpolate(fr, f, col) * fr.mask[..., None]).sum()

    x = v.clone().requires_grad_(True)
    loss(x).backward()
    eps = 1e-6
    for i in range(3):
        for j in range(3):
            d = torch.zeros_like(v)
            d[i, j] = eps
            fd = (loss(v + d) - loss(v - d)) / (2 * eps)
            assert abs(float(fd) - float(x.grad[i, j])) < 1e-4 * max(1.0, abs(float(fd)))


def test_memory_is_bounded_for_a_5k_face_mesh_at_256px():
    v, f = sphere_scene(np.random.default_rng(5), subdiv=4, z=2.2)   # 5120 faces
    K = make_K(220.0, 220.0, 127.5, 127.5)
    opts = SoftOptions(max_pairs=65_536)
    x = v.clone().requires_grad_(True)
    a = soft_silhouette(x, f, K, (256, 256), opts)
    # The autograd graph keeps only the per-chunk dense sums: its saved tensors are bounded by
    # (chunks + a few) * B*H*W floats plus the per-face tables, whatever the number of pairs.
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        a = soft_silhouette(x, f, K, (256, 256), opts)
    a.sum().backward()
    assert x.grad.abs().sum() > 0
    assert sum(saved) < 64 * 2**20
    hard = rasterize(v, f, K, (256, 256)).mask[0]
    assert ((a[0] > 0.5) != hard).float().mean() < 0.01


def test_sample_texture_follows_bottom_left_uv_origin():
    tex = torch.zeros(3, 4, 4)
    tex[0, 0, :] = 1.0          # top row red
    tex[2, 3, :] = 1.0          # bottom row blue
    uv = torch.tensor([[[[0.5, 0.99], [0.5, 0.01]]]])  # (1,1,2,2): top, bottom
    out = sample_texture(tex, uv)
    assert out.shape == (1, 1, 2, 3)
    assert torch.allclose(out[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[0, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    t = tex.clone().requires_grad_(True)
    sample_texture(t, uv).sum().backward()
    assert t.grad.sum() == pytest.approx(2 * 3)


def test_sh_shading_constant_term_and_normals():
    v, f = sphere_scene(np.random.default_rng(6), subdiv=2, z=0.0)
    n = vertex_normals(v, f)
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(v)))
    centre = v.mean(0)
    assert bool(((n * (v - centre)).sum(-1) > 0.9 * (v - centre).norm(dim=-1)).all())
    coeffs = torch.zeros(9)
    coeffs[0] = 1 / 0.282095
    assert torch.allclose(sh_shading(n, coeffs), torch.ones(len(v)), atol=1e-5)
    # The 9 basis functions are orthonormal on the sphere (Monte Carlo over many directions).
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    Y = sh_basis(d)
    gram = Y.T @ Y * (4 * np.pi / len(d))
    assert torch.allclose(gram, torch.eye(9), atol=0.03)
