"""Fitting losses and measurements: distance-transform Chamfer against brute force, gradients,
visibility against a rasterised sphere, splat IoU, 3D Chamfer."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pointwear.fit.losses import (
    PAPER_SCALE, MaskTarget, MaskTargets, chamfer_2d, chamfer_2d_bruteforce, mask_losses, soft_coverage_loss,
)
from pointwear.fit.metrics import chamfer_2d_pixels, chamfer_3d, mask_iou, splat_mask
from pointwear.fit.visibility import PAPER_THRESHOLD, body_depth, visible_points
from pointwear.render.rasterizer import project
from pointwear.syncs import HostSyncCounter

SQRT2 = math.sqrt(2.0)
EXACT_RADIUS = 4.5   # mask -> points is exact when every mask pixel has a point this close


# ----------------------------------------------------------------------------- helpers

def blob_mask(H: int, W: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
    # a second lobe and a notch, so the shape is not convex
    m |= ((xx - cx - 0.8 * rx) / (0.4 * rx)) ** 2 + ((yy - cy - 0.7 * ry) / (0.6 * ry)) ** 2 < 1
    m &= ~(((xx - cx + 0.5 * rx) / (0.25 * rx)) ** 2 + ((yy - cy) / (0.3 * ry)) ** 2 < 1)
    return m


def cloud_in(mask: np.ndarray, n: int, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """n points spread over the mask (continuous positions), optionally jittered."""
    ys, xs = np.nonzero(mask)
    i = rng.integers(0, xs.size, n)
    pts = np.stack([xs[i], ys[i]], 1) + rng.uniform(-0.5, 0.5, (n, 2))
    return pts + rng.normal(0.0, jitter, (n, 2)) if jitter else pts


def nn_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance from every row of a to its nearest row of b (float64 brute force)."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return d.min(1)


def one(t: torch.Tensor) -> float:
    return float(t.detach().reshape(-1)[0])


# ----------------------------------------------------------------------------- Chamfer exactness

@st.composite
def mask_and_points(draw):
    H = draw(st.integers(3, 28))
    W = draw(st.integers(3, 28))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        m = rng.random((H, W)) < draw(st.floats(0.02, 0.6))
    else:
        m = blob_mask(H, W, rng.uniform(0, W), rng.uniform(0, H), rng.uniform(1, W), rng.uniform(1, H))
    if not m.any():
        m[rng.integers(0, H), rng.integers(0, W)] = True
    n = draw(st.integers(1, 60))
    margin = draw(st.sampled_from([0.0, 6.0]))
    pts = np.stack([rng.uniform(-0.5 - margin, W - 0.5 + margin, n),
                    rng.uniform(-0.5 - margin, H - 0.5 + margin, n)], 1)
    if draw(st.booleans()):
        pts = np.round(pts)
    valid = rng.random(n) < 0.8
    valid[0] = True
    return m, pts, valid


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_and_points())
def test_dt_chamfer_matches_bruteforce_on_random_cases(case):
    m, pts, valid = case
    target = MaskTargets.from_masks([m])
    uv = torch.tensor(pts, dtype=torch.float64).unsqueeze(0)
    vt = torch.tensor(valid).unsqueeze(0)
    fi = torch.zeros(1, dtype=torch.long)
    dt = chamfer_2d(uv, vt, target, fi, scale=1.0)
    bf = chamfer_2d_bruteforce(uv, vt, target, fi, scale=1.0)
    mp = np.argwhere(m)[:, ::-1].astype(np.float64)
    vis = pts[valid]

    # points -> mask: every point gets a real mask pixel's distance (never below the truth),
    # exact at pixel centres, and at most sqrt(2) px too far elsewhere.
    d_true = nn_sq(vis, mp)
    on_grid = np.all(vis == np.round(vis), axis=1)
    upper = np.where(on_grid, d_true, (np.sqrt(d_true) + SQRT2) ** 2).mean()
    assert one(bf["points_to_mask"]) == pytest.approx(d_true.mean(), rel=1e-9, abs=1e-9)
    assert d_true.mean() - 1e-9 <= one(dt["points_to_mask"]) <= upper + 1e-9
    if on_grid.all():
        assert one(dt["points_to_mask"]) == pytest.approx(d_true.mean(), rel=1e-9, abs=1e-9)

    # mask -> points: exact for mask pixels whose nearest point is within 4.5 px; farther ones
    # come from the distance-transform hit, at most sqrt(2) px too far.
    e_true = nn_sq(mp, vis)
    upper = np.where(e_true <= EXACT_RADIUS**2, e_true, (np.sqrt(e_true) + SQRT2) ** 2).mean()
    assert one(bf["mask_to_points"]) == pytest.approx(e_true.mean(), rel=1e-9, abs=1e-9)
    assert e_true.mean() - 1e-9 <= one(dt["mask_to_points"]) <= upper + 1e-9
    if e_true.max() <= EXACT_RADIUS**2:
        assert one(dt["mask_to_points"]) == pytest.approx(e_true.mean(), rel=1e-9, abs=1e-9)
    assert one(dt["total"]) == pytest.approx(one(dt["points_to_mask"]) + one(dt["mask_to_points"]))


@st.composite
def small_masks_in_big_frames(draw):
    """2-3 frames of 24-48 px, each with a mask in a small box somewhere (or empty), and items
    whose points lie on, near and far from their frame's mask."""
    H, W = draw(st.integers(24, 48)), draw(st.integers(24, 48))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    masks = []
    for _ in range(draw(st.integers(2, 3))):
        m = np.zeros((H, W), bool)
        if rng.random() < 0.85:
            bw, bh = rng.integers(1, 12, 2)
            x0, y0 = rng.integers(0, W - bw + 1), rng.integers(0, H - bh + 1)
            m[y0:y0 + bh, x0:x0 + bw] = rng.random((bh, bw)) < 0.7
            m[y0, x0] = True
        masks.append(m)
    B, n = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    fi = rng.integers(0, len(masks), B)
    pts = np.stack([rng.uniform(-20, W + 20, (B, n)), rng.uniform(-20, H + 20, (B, n))], -1)
    for b in range(B):          # half the points near their mask, if it has pixels
        ys, xs = np.nonzero(masks[fi[b]])
        if xs.size:
            k = rng.integers(0, xs.size, n // 2)
            pts[b, :n // 2] = np.stack([xs[k], ys[k]], 1) + rng.normal(0, 3, (n // 2, 2))
    return masks, pts, rng.random((B, n)) < 0.8, fi


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_masks_in_big_frames())
def test_splat_windows_around_the_masks_give_the_whole_frame_answer(case):
    """The fine splat writes into each frame's mask bbox + 2R instead of the whole frame
    (`MaskTargets.splat_window`); a target without host bboxes falls back to the whole frame.
    Both give the same values and gradients, bit for bit."""
    masks, pts, valid, fi = case
    target = MaskTargets.from_masks(masks, allow_empty=True)
    whole = dataclasses.replace(target, bboxes_host=(), _windows={}, _moments=[], _coverage={})
    h, w, origin = target.splat_window(10)
    assert (h, w) == (max(b[3] - b[1] + 1 for b in target.bboxes_host) + 20,
                      max(b[2] - b[0] + 1 for b in target.bboxes_host) + 20)
    assert whole.splat_window(10)[:2] == (masks[0].shape[0] + 20, masks[0].shape[1] + 20)
    outs = []
    for t in (target, whole):
        uv = torch.tensor(pts, dtype=torch.float32, requires_grad=True)
        out = chamfer_2d(uv, torch.tensor(valid), t, fi, reduction="none")
        (out["total"] * torch.arange(1.0, len(fi) + 1)).sum().backward()
        outs.append((out, uv.grad))
    (a, ga), (b, gb) = outs
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(ga, gb)


def test_dt_chamfer_realistic_within_one_percent():
    """A few thousand points over a ~200 x 200 blob in a 512 image: on the mask, shifted off
    it, and sparse; DT within 1 % of brute force in each direction, batched over frames."""
    rng = np.random.default_rng(0)
    m0 = blob_mask(512, 512, 250, 240, 100, 110)
    m1 = blob_mask(512, 512, 270, 260, 90, 120)
    assert 25_000 < m0.sum() < 60_000
    target = MaskTargets.from_masks([m0, m1])
    clouds = [cloud_in(m0, 4000, rng), cloud_in(m0, 4000, rng) + [12.0, -5.0],
              cloud_in(m1, 1500, rng, jitter=2.0), cloud_in(m1, 6000, rng) + [30.0, 20.0]]
    n = max(len(c) for c in clouds)
    uv = torch.zeros(len(clouds), n, 2)
    valid = torch.zeros(len(clouds), n, dtype=torch.bool)
    for i, c in enumerate(clouds):          # ragged clouds: pad with invalid points
        uv[i, :len(c)] = torch.tensor(c, dtype=torch.float32)
        valid[i, :len(c)] = True
    fi = torch.tensor([0, 0, 1, 1])
    dt = chamfer_2d(uv, valid, target, fi, reduction="none")
    bf = chamfer_2d_bruteforce(uv, valid, target, fi, reduction="none")    # float32: ~1e-4 rel.
    for key in ("points_to_mask", "mask_to_points", "total"):
        rel = (dt[key].double() / bf[key].double() - 1).abs()
        assert (rel < 0.01).all(), (key, rel)
    # Pixel-unit means agree too, and the metric is their average.
    px = chamfer_2d_pixels(uv, valid, target, fi).double()
    ref = 0.5 * (bf["points_to_mask_px"] + bf["mask_to_points_px"]).double()
    assert torch.allclose(px, ref, rtol=0.01)
    # The paper's scale: mean squared distances of coordinates / 25.6.
    assert PAPER_SCALE == pytest.approx(512 / 20)


def test_gradients_match_bruteforce_and_flow_to_uv():
    rng = np.random.default_rng(1)
    m = blob_mask(128, 128, 60, 64, 30, 35)
    target = MaskTargets.from_masks([m])
    uv0 = torch.tensor(cloud_in(m, 1500, rng) + [6.0, 3.0], dtype=torch.float64).unsqueeze(0)
    valid = torch.ones(1, 1500, dtype=torch.bool)
    fi = torch.zeros(1, dtype=torch.long)
    grads = []
    for fn in (chamfer_2d, chamfer_2d_bruteforce):
        uv = uv0.clone().requires_grad_()
        fn(uv, valid, target, fi)["total"].backward()
        grads.append(uv.grad)
    g_dt, g_bf = grads
    assert torch.isfinite(g_dt).all() and g_dt.abs().sum() > 0
    # Net pull on the cloud (sum of gradients) agrees: both point back along (-6, -3).
    net_dt, net_bf = g_dt.sum((0, 1)), g_bf.sum((0, 1))
    assert torch.allclose(net_dt, net_bf, rtol=0.02, atol=1e-6)
    assert net_dt[0] > 0 and net_dt[1] > 0


def test_shifted_cloud_moves_back_under_adam():
    rng = np.random.default_rng(2)
    m = blob_mask(160, 160, 80, 80, 35, 40)
    target = MaskTargets.from_masks([m])
    pts = torch.tensor(cloud_in(m, 2000, rng), dtype=torch.float32)
    shift = torch.nn.Parameter(torch.tensor([9.0, -7.0]))
    opt = torch.optim.Adam([shift], lr=0.5)
    valid = torch.ones(1, 2000, dtype=torch.bool)
    fi = torch.zeros(1, dtype=torch.long)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = chamfer_2d((pts + shift).unsqueeze(0), valid, target, fi)["total"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0]
    assert shift.detach().norm() < 2.0


def test_batch_frames_weights_and_bad_input():
    rng = np.random.default_rng(3)
    m0 = blob_mask(64, 80, 30, 30, 15, 12)
    m1 = blob_mask(64, 80, 50, 35, 12, 15)
    target = MaskTargets.from_masks([m0, (m1 * 255).astype(np.uint8)])
    a, b = cloud_in(m0, 300, rng), cloud_in(m1, 300, rng)
    uv = torch.tensor(np.stack([a, b, a]), dtype=torch.float64)
    valid = torch.ones(3, 300)
    out = chamfer_2d(uv, valid, target, torch.tensor([0, 1, 1]), reduction="none")
    # Each item is compared with its own frame: matched items are near 0, the mismatched large.
    assert out["total"][0] < 0.01 and out["total"][1] < 0.01 and out["total"][2] > 0.05
    singles = [chamfer_2d(uv[i:i + 1], valid[i:i + 1], target, torch.tensor([f]))["total"]
               for i, f in enumerate([0, 1, 1])]
    assert torch.allclose(out["total"], torch.stack(singles))
    # Float weights: points with weight 0 do not count; weights weight points -> mask.
    w = torch.ones(1, 300, dtype=torch.float64)
    far = uv[:1].clone()
    far[0, :50] += 40.0
    w[0, :50] = 0.0
    o_w = chamfer_2d(far, w, target, torch.tensor([0]))
    o_ref = chamfer_2d(uv[:1, 50:], torch.ones(1, 250), target, torch.tensor([0]))
    assert torch.allclose(o_w["total"], o_ref["total"])
    # No visible point: mask -> points is the (constant) squared image diagonal.
    none = chamfer_2d(uv[:1], torch.zeros(1, 300), target, torch.tensor([0]), scale=1.0)
    assert float(none["mask_to_points"]) == pytest.approx(64**2 + 80**2)
    assert float(none["points_to_mask"]) == 0.0
    with pytest.raises(ValueError, match="mask 1 is empty"):
        MaskTargets.from_masks([m0, np.zeros_like(m0)])
    allowed = MaskTargets.from_masks([m0, np.zeros_like(m0)], allow_empty=True)
    assert float(chamfer_2d(uv[:1], valid[:1], allowed, torch.tensor([1]))["total"]) == 0.0
    with pytest.raises(ValueError, match="differs"):
        MaskTargets.from_masks([m0, np.zeros((10, 10), bool)])
    with pytest.raises(ValueError, match="frame_index"):
        chamfer_2d(uv, valid, target, torch.tensor([0, 1, 2]))
    # Non-finite points are ignored instead of poisoning the loss.
    bad = uv[:1].clone()
    bad[0, 0] = float("nan")
    assert torch.isfinite(chamfer_2d(bad, valid[:1], target, torch.tensor([0]))["total"])


def test_mask_target_tables():
    m = np.zeros((20, 30), bool)
    m[5:8, 10:14] = True
    t = MaskTarget.from_mask(m)
    assert t.area == 12 and t.bbox() == (10, 5, 13, 7)
    p = t.pad
    assert tuple(t.nearest[0 + p, 0 + p]) == (10, 5)          # corner pixel -> nearest mask corner
    assert tuple(t.nearest[6 + p, 25 + p]) == (13, 6)
    assert tuple(t.nearest[p - 1, 12 + p]) == (12, 5)          # one row above the image
    assert t.distance[6, 11] == 0 and t.distance[0, 0] == pytest.approx(math.hypot(10, 5))


# ----------------------------------------------------------------------------- coverage

def test_soft_coverage_prefers_covering_cloud_and_has_gradients():
    rng = np.random.default_rng(4)
    m = blob_mask(256, 200, 100, 130, 50, 60)
    target = MaskTargets.from_masks([m])
    good = cloud_in(m, 3000, rng)
    squeezed = good.copy()                              # all points on the left half only
    squeezed[:, 0] = 50 + (squeezed[:, 0] - 50) * 0.5
    pts = [good, good + [25.0, 0.0], squeezed]
    uv = torch.tensor(np.stack(pts), dtype=torch.float32, requires_grad=True)
    valid = torch.ones(3, uv.shape[1], dtype=torch.bool)
    loss = soft_coverage_loss(uv, valid, target, torch.zeros(3, dtype=torch.long), reduction="none")
    assert loss[0] < 0.15
    assert loss[1] > loss[0] + 0.1 and loss[2] > loss[0] + 0.1
    loss[1].backward()
    g = uv.grad[1].sum(0)
    assert g[0] > 0                                     # pulled back to the left (towards -x)
    # Optimising the shift alone brings it back.
    shift = torch.nn.Parameter(torch.tensor([25.0, 0.0]))
    opt = torch.optim.Adam([shift], lr=1.0)
    base = torch.tensor(good, dtype=torch.float32).unsqueeze(0)
    for _ in range(40):
        opt.zero_grad()
        soft_coverage_loss(base + shift, valid[:1], target, torch.zeros(1, dtype=torch.long)).backward()
        opt.step()
    assert abs(float(shift.detach()[0])) < 5.0


def test_mask_losses_are_the_two_losses_with_one_round_trip_fewer():
    """The fit's fused call gives chamfer_2d's and soft_coverage_loss's values bit for bit and
    their gradients up to float rounding (autograd adds the two branches in another order),
    with items on two frames, hidden points and a non-finite point, and waits once less."""
    rng = np.random.default_rng(9)
    masks = [blob_mask(96, 80, 40, 50, 20, 25), blob_mask(96, 80, 45, 40, 25, 20)]
    target = MaskTargets.from_masks(masks)
    pts = np.stack([cloud_in(masks[0], 400, rng), cloud_in(masks[1], 400, rng, jitter=3.0),
                    cloud_in(masks[1], 400, rng) + [9.0, -4.0]])
    pts[2, 7] = [np.inf, 3.0]
    valid = torch.tensor(rng.random(pts.shape[:2]) < 0.7)
    fi = np.array([0, 1, 1])
    runs = []
    for fused in (True, False):
        uv = torch.tensor(pts, dtype=torch.float32, requires_grad=True)
        with HostSyncCounter() as syncs:
            if fused:
                cham, cov = mask_losses(uv, valid, target, fi)
            else:
                cham = chamfer_2d(uv, valid, target, fi, reduction="none")
                cov = soft_coverage_loss(uv, valid, target, fi, reduction="none")
        (cham["total"] * torch.tensor([1.0, 2.0, 3.0]) + cov).sum().backward()
        runs.append((cham, cov, uv.grad, syncs.total))
    (c1, v1, g1, n1), (c2, v2, g2, n2) = runs
    assert c1.keys() == c2.keys() and all(torch.equal(c1[k], c2[k]) for k in c1)
    assert torch.equal(v1, v2) and torch.allclose(g1, g2, rtol=1e-5, atol=1e-10)
    assert torch.isfinite(g1).all() and g1[2, 7].abs().sum() == 0
    assert n1 == n2 - 1


def test_soft_coverage_matches_dense_gaussian_reference():
    """The stencil splat equals a dense sum of the same (stencil-truncated) Gaussians, also for
    points outside the image, and is within 0.5 % of the untruncated sum."""
    rng = np.random.default_rng(7)
    H, W = 64, 48
    m = np.zeros((H, W), bool)
    m[10:50, 8:40] = True
    target = MaskTargets.from_masks([m])
    pts = np.stack([rng.uniform(-30, W + 30, 300), rng.uniform(-30, H + 30, 300)], 1)
    uv = torch.tensor(pts, dtype=torch.float64).unsqueeze(0)
    w = torch.from_numpy(rng.uniform(0.2, 1.0, (1, 300)))
    res, radius = 32, 2.0
    loss = float(soft_coverage_loss(uv, w, target, torch.tensor([0]), resolution=res,
                                    radius_px=radius))
    h, wl = round(H * res / max(H, W)), round(W * res / max(H, W))
    kx, ky = W / wl, H / h
    sig = max(radius / math.sqrt(kx * ky), 0.5)
    r = min(4, math.ceil(3 * sig))
    x, y = (uv[0, :, 0] + 0.5) / kx - 0.5, (uv[0, :, 1] + 0.5) / ky - 0.5
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(wl, dtype=torch.float64), indexing="ij")
    g = torch.exp(-((xx[..., None] - x) ** 2 + (yy[..., None] - y) ** 2) / (2 * sig * sig)) * w[0]
    fx, fy = x.floor(), y.floor()
    in_stencil = ((xx[..., None] >= fx - r + 1) & (xx[..., None] <= fx + r)
                  & (yy[..., None] >= fy - r + 1) & (yy[..., None] <= fy + r))
    tgt = torch.from_numpy(m).double().view(h, H // h, wl, W // wl).mean((1, 3))
    refs = []
    for gg in (g * in_stencil, g):
        cov = 1 - torch.exp(-gg.sum(-1))
        refs.append(float(1 - (cov * tgt).sum() / (cov + tgt - cov * tgt).sum()))
    assert loss == pytest.approx(refs[0], rel=1e-9)
    assert loss == pytest.approx(refs[1], rel=5e-3)


# ----------------------------------------------------------------------------- visibility

def uv_sphere(n_lat: int = 24, n_lon: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    th = torch.linspace(0, math.pi, n_lat + 1, dtype=torch.float64)
    ph = torch.linspace(0, 2 * math.pi, n_lon + 1, dtype=torch.float64)[:-1]
    T, Pp = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * Pp.cos(), T.cos(), T.sin() * Pp.sin()], -1).reshape(-1, 3)
    faces = []
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [(a, c, b), (b, c, d)]
    return v.float(), torch.tensor(faces)


def test_visibility_depth_test_against_sphere():
    H, W = 96, 128
    K = torch.tensor([[150.0, 0, 95.0], [0, 150.0, 70.0], [0, 0, 1]])    # sphere lands bottom-right
    verts, faces = uv_sphere()
    centre = torch.tensor([0.4, 0.0, 2.0])
    body = (verts * 0.3 + centre).unsqueeze(0)
    depth = body_depth(body, faces, K.unsqueeze(0), (H, W))
    assert depth.shape == (1, H, W)
    assert torch.isfinite(depth).sum() > 500 and torch.isinf(depth).any()
    near_z = float(depth[torch.isfinite(depth)].min())
    assert near_z == pytest.approx(1.7, abs=0.01)
    # Clothing points on the camera ray through the sphere centre, at various depths.
    ray = centre / centre[2]
    zs = torch.tensor([1.5, 1.69, 1.71, 1.74, 1.8, 2.0, 2.6])
    pts = (ray.unsqueeze(0) * zs.unsqueeze(1)).unsqueeze(0)
    vis = visible_points(pts, depth, K.unsqueeze(0))
    expected = zs <= near_z + PAPER_THRESHOLD
    assert vis[0].tolist() == expected.tolist()
    assert vis[0, 0] and not vis[0, -1]
    # Off the body and outside the image: visible. Behind the camera: not.
    extra = torch.tensor([[[-0.5, -0.3, 2.5], [5.0, 0.0, 2.0], [0.0, 0.0, -1.0]]])
    assert visible_points(extra, depth, K).tolist() == [[True, True, False]]
    # Items reading their frame's depth in place (frame_index, no (B,H,W) copy), with their
    # projection given or not: item 0 in front of an empty frame (all seen), item 1 the sphere.
    frames = torch.cat([depth, torch.full_like(depth, math.inf)])
    items = torch.cat([pts, pts])
    Ks = K.expand(2, 3, 3)
    uv, _ = project(items, Ks)
    for given_uv in (None, uv):
        vis2 = visible_points(items, frames, Ks, frame_index=torch.tensor([1, 0]), uv=given_uv)
        assert vis2.tolist() == [[True] * len(zs), expected.tolist()]
    with pytest.raises(ValueError, match="frame_index"):
        visible_points(items, frames, Ks, frame_index=torch.tensor([1, 0, 0]))
    assert PAPER_THRESHOLD == pytest.approx(0.025)


# ----------------------------------------------------------------------------- metrics

def test_splat_iou_of_dense_points_inside_mask():
    rng = np.random.default_rng(5)
    m = blob_mask(256, 256, 128, 128, 60, 70)
    pts = cloud_in(m, 8000, rng)
    uv = torch.tensor(pts, dtype=torch.float32)
    splat = splat_mask(uv, None, m.shape, radius_px=1.5)
    assert splat.shape == m.shape
    assert float(mask_iou(splat, torch.from_numpy(m))) > 0.9
    batched = splat_mask(uv.unsqueeze(0).repeat(2, 1, 1), torch.tensor([[1.0], [0.0]]).expand(2, 8000),
                         m.shape, radius_px=1.5)
    assert torch.equal(batched[0], splat) and not batched[1].any()
    assert float(mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool))) == 1.0


def test_chamfer_3d_identity_and_shift():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(2000, 3)) * 0.2
    cm, f = chamfer_3d(a, a.copy())
    assert cm == 0.0 and f == 1.0
    cm, f = chamfer_3d(torch.tensor(a), a + [0.05, 0.0, 0.0])
    assert 0.0 < cm <= 5.0 and f < 1.0
    with pytest.raises(ValueError):
        chamfer_3d(a[:, :2], a)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 300), radius=st.floats(0.5, 5.2), scale=st.sampled_from([1, 4]),
       seed=st.integers(0, 10_000))
def test_splat_all_taps_at_once_writes_the_same_images_as_tap_by_tap(k, radius, scale, seed):
    """The two ways of splatting point keys (`_splat_min`: few points all taps at once, many
    one tap at a time) write bit-identical images, shared cells included."""
    from pointwear.fit.losses import _EMPTY32, _disc_offsets, _splat_min_batched, _splat_min_per_tap
    g = torch.Generator().manual_seed(seed)
    stride, rows, n_img_count = 23, 17, 2
    n_img = n_img_count * stride * rows
    cell = torch.randint(0, n_img, (k,), generator=g)
    e = (torch.rand(k, 2, generator=g) - 0.5) * 2 * scale
    ids = torch.randint(0, 512, (k,), generator=g).int()
    taps = _disc_offsets(radius)
    margin = (int(radius) + 2) * (stride + 1)
    d_max = (scale * (radius + 1.5)) ** 2
    images = []
    for splat in (_splat_min_batched, _splat_min_per_tap):
        img = torch.full((n_img + 2 * margin,), _EMPTY32, dtype=torch.int32)
        splat(img, margin, n_img, stride, cell, e, taps, float(scale), d_max, 9, ids)
        images.append(img)
    assert torch.equal(images[0], images[1])
    assert bool((images[0] != _EMPTY32).any())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x0=st.floats(2.1, 20.9), y0=st.floats(2.1, 20.9), w=st.floats(3.1, 20.9), h=st.floats(3.1, 20.9),
       z=st.floats(1.0, 4.0), gap=st.floats(-0.05, 0.05))
def test_mesh_mask_is_the_pixel_centres_inside_the_projected_quad_unless_the_body_is_in_front(x0, y0, w, h, z, gap):
    """A rectangle facing the camera at depth z covers exactly the pixel centres strictly inside
    its projection; a body plane at z - gap hides it when the rectangle lies more than 2 cm
    behind the body, and off the body (+inf depth) it is always seen."""
    from pointwear.fit.metrics import mesh_mask
    assume = lambda v: abs(v - round(v)) > 1e-3   # noqa: E731  (no edge through a pixel centre)
    if not all(assume(v) for v in (x0, y0, x0 + w, y0 + h)):
        return
    f, size = 50.0, (48, 48)
    K = torch.tensor([[[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    corners = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    verts = torch.tensor([[[u * z / f, v * z / f, z] for u, v in corners]], dtype=torch.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    cols, rows = torch.arange(size[1], dtype=torch.float64), torch.arange(size[0], dtype=torch.float64)
    inside = ((rows[:, None] > y0) & (rows[:, None] < y0 + h) & (cols[None] > x0) & (cols[None] < x0 + w))
    open_sky = mesh_mask(verts, faces, K, torch.full((1, *size), math.inf, dtype=torch.float64))[0]
    assert torch.equal(open_sky, inside)
    if abs(gap - 0.02) < 2e-3:          # the z-buffer's depth is float32 (~0.2 mm per m): no ties
        return
    behind = mesh_mask(verts, faces, K, torch.full((1, *size), z - gap, dtype=torch.float64))[0]
    assert torch.equal(behind, inside if gap < 0.02 else torch.zeros_like(inside)), gap
    assert float(mask_iou(open_sky, inside)) == 1.0
