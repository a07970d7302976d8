"""Point splatting: equal to the slow loop reference, gradients, visibility, tiling."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointwear.render.rasterizer import project
from pointwear.render.splat import disc_offsets, splat, splat_reference

F64 = torch.float64


def make_K(fx: float, fy: float, cx: float, cy: float, dtype=F64) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def scene(B: int, P: int, H: int, W: int, C: int = 4, seed: int = 0, dtype=F64,
          shared_features: bool = False):
    """Random points in view plus the awkward ones: stacked in depth (same pixel position,
    different z), off-screen, behind the camera, exactly at z = 0, non-finite."""
    g = torch.Generator().manual_seed(seed)
    f = 0.8 * max(H, W)
    K = make_K(f, f * 1.1, (W - 1) / 2, (H - 1) / 2, dtype).expand(B, 3, 3).clone()
    K[:, 0, 2] += torch.rand(B, generator=g, dtype=dtype) - 0.5   # per-item principal point
    z = 2.0 + torch.rand(B, P, generator=g, dtype=dtype)
    uv = torch.stack([torch.rand(B, P, generator=g, dtype=dtype) * (W + 4) - 2,
                      torch.rand(B, P, generator=g, dtype=dtype) * (H + 4) - 2], -1)
    x = (uv[..., 0] - K[:, 0, 2:3]) / K[:, 0, 0:1] * z
    y = (uv[..., 1] - K[:, 1, 2:3]) / K[:, 1, 1:2] * z
    pts = torch.stack([x, y, z], -1)
    if P >= 8:
        pts[:, 1] = pts[:, 0] * torch.tensor([1.3, 1.3, 1.3], dtype=dtype)  # behind point 0
        pts[:, 2] = pts[:, 0] * torch.tensor([0.8, 0.8, 0.8], dtype=dtype)  # in front of it
        pts[:, 3, 0] += 50.0                                                # far off-screen
        pts[:, 4, 2] = -pts[:, 4, 2]                                        # behind the camera
        pts[:, 5, 2] = 0.0                                                  # in the camera plane
        pts[:, 6, 0] = math.nan                                             # broken point
        pts[:, 7] = pts[:, 0]                                               # exact depth tie
    feats = torch.randn(1 if shared_features else B, P, C, generator=g, dtype=dtype)
    return pts, feats, K


# ----------------------------------------------------------------------------- vs reference

@pytest.mark.parametrize("H,W", [(1, 1), (6, 9), (13, 11)])
@pytest.mark.parametrize("radius", [1.5, 2.5])
@pytest.mark.parametrize("k", [1, 8])
def test_matches_reference(H, W, radius, k):
    pts, feats, K = scene(2, 40, H, W, seed=H * 100 + W)
    got = splat(pts, feats, K, (H, W), radius, k)
    want = splat_reference(pts, feats, K, (H, W), radius, k)
    assert got.shape == (2, 5, H, W)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_dense_crowd_matches_reference():
    """Many points per pixel, so that the k cut and the depth order matter everywhere."""
    pts, feats, K = scene(1, 150, 6, 7, C=3, seed=7, shared_features=True)
    for k in (1, 3, 8):
        got = splat(pts, feats, K, (6, 7), 2.5, k)
        want = splat_reference(pts, feats, K, (6, 7), 2.5, k)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_float32_matches_reference():
    pts, feats, K = scene(2, 60, 12, 10, seed=3, dtype=torch.float32)
    got = splat(pts, feats, K, (12, 10))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, splat_reference(pts, feats, K, (12, 10)), atol=1e-5, rtol=0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), P=st.integers(0, 30), H=st.integers(1, 9),
       W=st.integers(1, 9), radius=st.floats(0.3, 4.0), k=st.integers(1, 10),
       B=st.integers(1, 2), shared=st.booleans())
def test_property_matches_reference(seed, P, H, W, radius, k, B, shared):
    pts, feats, K = scene(B, P, H, W, C=2, seed=seed, shared_features=shared)
    g = torch.Generator().manual_seed(seed + 1)
    visible = torch.rand(B, P, generator=g) < 0.8
    got = splat(pts, feats, K, (H, W), radius, k, visible)
    want = splat_reference(pts, feats, K, (H, W), radius, k, visible)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    cov = got[:, -1]
    assert bool(((cov >= 0) & (cov <= 1)).all())


# ----------------------------------------------------------------------------- semantics

def test_single_point_profile():
    """One point at a pixel centre: alpha 1 - d/r on the pixels of the disc, 0 elsewhere."""
    K = make_K(10.0, 10.0, 0.0, 0.0)
    pts = torch.tensor([[[0.4, 0.3, 2.0]]], dtype=F64)          # projects to (2.0, 1.5)
    feats = torch.tensor([[[2.0]]], dtype=F64)
    out = splat(pts, feats, K, (4, 5), radius_px=1.5)
    ys, xs = torch.meshgrid(torch.arange(4, dtype=F64), torch.arange(5, dtype=F64), indexing="ij")
    d = ((xs - 2.0) ** 2 + (ys - 1.5) ** 2).sqrt()
    alpha = torch.where(d < 1.5, 1 - d / 1.5, torch.zeros_like(d))
    torch.testing.assert_close(out[0, 1], alpha)
    torch.testing.assert_close(out[0, 0], 2.0 * alpha)


def test_front_to_back_order_and_k():
    """Two points at the same pixel centre: the nearer one hides the farther (alpha 1 there);
    with k = 1 only the front one counts even when its alpha is small."""
    K = make_K(10.0, 10.0, 0.0, 0.0)
    near = [0.2, 0.2, 1.0]    # (2, 2)
    far = [0.4, 0.4, 2.0]     # (2, 2) as well
    pts = torch.tensor([[far, near]], dtype=F64)
    feats = torch.tensor([[[5.0], [1.0]]], dtype=F64)
    out = splat(pts, feats, K, (5, 5), radius_px=2.0, k=8)
    assert out[0, 0, 2, 2] == pytest.approx(1.0)               # the near point, alpha 1
    # Off-centre pixel (3, 2): both have alpha 0.5, near first: 0.5*1 + 0.5*0.5*5
    assert out[0, 0, 2, 3] == pytest.approx(0.5 * 1.0 + 0.25 * 5.0)
    assert out[0, 1, 2, 3] == pytest.approx(0.75)
    out1 = splat(pts, feats, K, (5, 5), radius_px=2.0, k=1)
    assert out1[0, 0, 2, 3] == pytest.approx(0.5)
    assert out1[0, 1, 2, 3] == pytest.approx(0.5)


def test_visible_mask_equals_dropping_points():
    pts, feats, K = scene(2, 50, 10, 12, seed=11)
    vis = torch.rand(2, 50, generator=torch.Generator().manual_seed(1)) < 0.5
    got = splat(pts, feats, K, (10, 12), 2.0, 4, visible=vis)
    for b in range(2):
        idx = vis[b].nonzero().squeeze(1)
        alone = splat(pts[b:b + 1, idx], feats[b:b + 1, idx], K[b], (10, 12), 2.0, 4)
        torch.testing.assert_close(got[b:b + 1], alone, atol=1e-12, rtol=0)
    none = splat(pts, feats, K, (10, 12), visible=torch.zeros(2, 50, dtype=torch.bool))
    assert not none.any()


def test_empty_image_and_no_points():
    K = make_K(10.0, 10.0, 3.0, 3.0)
    feats = torch.randn(1, 3, 4, requires_grad=True)
    behind = torch.tensor([[[0.0, 0.0, -1.0], [0.1, 0.0, -2.0], [0.0, 0.0, 0.0]]])
    out = splat(behind, feats, K, (6, 7))
    assert out.shape == (1, 5, 6, 7) and not out.any()
    out.sum().backward()                   # still part of the graph: a loss can backprop
    assert feats.grad is not None and not feats.grad.any()
    off = torch.tensor([[[100.0, 0.0, 1.0], [0.0, -100.0, 1.0], [-3.1, 0.0, 1.0]]])
    assert not splat(off, feats.detach(), K, (6, 7)).any()
    nothing = splat(torch.zeros(2, 0, 3), torch.zeros(1, 0, 4), K, (3, 4))
    assert nothing.shape == (2, 5, 3, 4) and not nothing.any()


def test_disc_offsets_cover_every_reachable_pixel():
    for r in (0.3, 1.0, 1.5, 2.0, 2.5, 3.7):
        dx, dy = disc_offsets(r)
        offs = set(zip(dx.tolist(), dy.tolist()))
        # every integer offset that some centre within +-0.5 of the rounded one reaches
        grid = torch.linspace(-0.5, 0.5, 41, dtype=F64)
        R = int(r) + 2
        for ox in range(-R, R + 1):
            for oy in range(-R, R + 1):
                reach = ((ox - grid[:, None]) ** 2 + (oy - grid[None, :]) ** 2 < r * r).any()
                if reach:
                    assert (ox, oy) in offs, (r, ox, oy)
    assert len(disc_offsets(1.5)[0]) == 9


def test_batch_broadcast_K_and_features():
    pts, feats, K = scene(3, 30, 8, 9, seed=5, shared_features=True)
    a = splat(pts, feats, K[0], (8, 9))                          # one K for all
    b = splat(pts, feats.expand(3, -1, -1), K[0].expand(3, 3, 3), (8, 9))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bad_arguments():
    pts, feats, K = scene(1, 10, 4, 4)
    with pytest.raises(ValueError, match="features"):
        splat(pts, feats[:, :5], K, (4, 4))
    with pytest.raises(ValueError, match="radius"):
        splat(pts, feats, K, (4, 4), radius_px=0)
    with pytest.raises(ValueError, match="k must"):
        splat(pts, feats, K, (4, 4), k=0)
    with pytest.raises(ValueError, match="bool"):
        splat(pts, feats, K, (4, 4), visible=torch.ones(1, 10))
    with pytest.raises(ValueError, match="image_size"):
        splat(pts, feats, K, (0, 4))


# ----------------------------------------------------------------------------- tiling

@pytest.mark.parametrize("radius,k", [(1.5, 8), (2.5, 2)])
def test_tiling_is_exact(radius, k):
    pts, feats, K = scene(2, 120, 17, 13, seed=2)
    pts.requires_grad_(True)
    feats.requires_grad_(True)
    whole = splat(pts, feats, K, (17, 13), radius, k)
    gp, gf = torch.autograd.grad((whole * torch.arange(whole.numel()).view_as(whole)).sum(),
                                 [pts, feats])
    for kw in ({"tile": 1}, {"tile": 4}, {"tile": 17}, {"tile": 100}, {"max_pairs": 40},
               {"max_pairs": 1}):
        tiled = splat(pts, feats, K, (17, 13), radius, k, **kw)
        assert torch.equal(tiled, whole), kw
        tp, tf = torch.autograd.grad((tiled * torch.arange(tiled.numel()).view_as(tiled)).sum(),
                                     [pts, feats])
        torch.testing.assert_close(tp, gp, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(tf, gf, atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- gradients

def test_gradients_reach_features_and_positions():
    pts, feats, K = scene(2, 40, 10, 10, seed=9, dtype=torch.float32)
    pts.requires_grad_(True)
    feats.requires_grad_(True)
    out = splat(pts, feats, K, (10, 10))
    (out[:, :-1].square().sum() + out[:, -1].sum()).backward()
    assert torch.isfinite(pts.grad).all() and torch.isfinite(feats.grad).all()
    used = (pts.grad.abs().sum(-1) > 0)
    assert used[:, 0].all() and used.sum() > 20            # points in view move the image
    assert not pts.grad[:, 3:7].any()                      # off-screen / behind / broken: none
    assert feats.grad[:, 0].abs().sum() > 0


def test_gradcheck_positions_and_features():
    """Finite differences agree with autograd where no point crosses a pixel's disc boundary
    or another point in depth (random positions: true with probability ~1)."""
    g = torch.Generator().manual_seed(4)
    K = make_K(9.0, 9.0, 3.5, 3.0)
    P = 7
    z = 2.0 + torch.rand(P, generator=g, dtype=F64)
    uv = torch.rand(P, 2, generator=g, dtype=F64) * torch.tensor([7.0, 6.0], dtype=F64)
    pts = torch.stack([(uv[:, 0] - 3.5) / 9 * z, (uv[:, 1] - 3.0) / 9 * z, z], -1)[None]
    feats = torch.randn(1, P, 2, generator=g, dtype=F64)
    weight = torch.randn(1, 3, 7, 8, generator=g, dtype=F64)

    def f(p, ft):
        return (splat(p, ft, K, (7, 8), radius_px=2.5, k=3) * weight).sum()

    pts.requires_grad_(True)
    feats.requires_grad_(True)
    assert torch.autograd.gradcheck(f, (pts, feats), eps=1e-6, atol=1e-6)


def test_point_at_pixel_centre_has_finite_gradient():
    K = make_K(10.0, 10.0, 0.0, 0.0)
    pts = torch.tensor([[[0.2, 0.2, 1.0], [0.2, 0.21, 1.5]]], dtype=F64, requires_grad=True)
    feats = torch.tensor([[[1.0], [3.0]]], dtype=F64, requires_grad=True)
    out = splat(pts, feats, K, (5, 5), radius_px=1.5)
    assert out[0, 1, 2, 2] == 1.0                         # alpha 1: full coverage
    out.sum().backward()
    assert torch.isfinite(pts.grad).all() and torch.isfinite(feats.grad).all()


def test_projection_convention_is_the_rasterizers():
    """Pixel centres at integer coordinates, as `project` (so splats line up with the body
    depth used for visibility)."""
    K = make_K(30.0, 25.0, 4.0, 3.0)
    pts = torch.tensor([[[0.1, -0.05, 1.5]]], dtype=F64)
    uv, _ = project(pts, K)
    out = splat(pts, torch.ones(1, 1, 1, dtype=F64), K, (8, 10), radius_px=1.5)
    cov = out[0, 1]
    ys, xs = torch.meshgrid(torch.arange(8, dtype=F64), torch.arange(10, dtype=F64), indexing="ij")
    centre = torch.stack([(cov * xs).sum(), (cov * ys).sum()]) / cov.sum()
    assert torch.allclose(centre, uv[0, 0], atol=0.35)
    iy, ix = divmod(int(cov.argmax()), 10)
    assert (ix, iy) == tuple(torch.round(uv[0, 0]).long().tolist())
