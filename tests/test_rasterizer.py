"""Mesh rasterizer: against a brute-force numpy reference, watertightness, perspective, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull

from pointwear.render import Fragments, covered_pairs, interpolate, project, rasterize
from pointwear.render.rasterizer import depth_map, outward_wound

SUB = 256  # 1/256 px fixed point, as documented by the rasterizer


# ----------------------------------------------------------------------------- helpers

def make_K(fx: float, fy: float, cx: float, cy: float, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def icosphere(subdiv: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere, faces wound counter-clockwise seen from outside (normals outward)."""
    t = (1.0 + 5 ** 0.5) / 2.0
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
             (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
             (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
             (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    for _ in range(subdiv):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    v, f = np.array(verts), np.array(faces, dtype=np.int64)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", n, v[f].mean(1)) > 0).all()  # outward winding
    return v, f


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def sphere_scene(rng: np.random.Generator, subdiv: int = 2, z: float = 3.0, radius: float = 1.0):
    v, f = icosphere(subdiv)
    v = v @ rotation(rng).T * radius + np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), z])
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f)


def ref_rasterize(uv, z, faces, H, W, *, znear=1e-3, cull=False, det_sign=1.0):
    """Brute force: every face tested against every pixel centre (no bbox, no chunks, no scatter).

    Same rule as the spec: vertices snapped to 1/256 px, exact integer edge functions, top-left
    tie rule (left edges and horizontal top edges own their pixels), nearest snapped depth wins,
    smallest face id on ties. Barycentrics/depth of the winner from the un-snapped positions.
    Returns face_id (H,W), depth (H,W), bary (H,W,3), cover (F,H,W) bool, zsnap (F,H,W).
    """
    uv = np.asarray(uv, np.float64)
    z = np.asarray(z, np.float64)
    faces = np.asarray(faces)
    F = len(faces)
    Xs = np.clip(np.round(uv * SUB), -2 ** 29, 2 ** 29).astype(np.int64)
    jj, ii = np.meshgrid(np.arange(W, dtype=np.int64), np.arange(H, dtype=np.int64))
    PX, PY = jj * SUB, ii * SUB
    cover = np.zeros((F, H, W), bool)
    zsnap = np.full((F, H, W), np.inf)
    for fi, tri in enumerate(faces):
        if not (np.all(z[tri] > znear) and np.isfinite(uv[tri]).all()):
            continue
        P = [(int(Xs[t, 0]), int(Xs[t, 1])) for t in tri]
        area = (P[1][0] - P[0][0]) * (P[2][1] - P[0][1]) - (P[1][1] - P[0][1]) * (P[2][0] - P[0][0])
        if area == 0 or (cull and area * det_sign > 0):
            continue
        s = 1 if area > 0 else -1
        inside = np.ones((H, W), bool)
        invz = np.zeros((H, W))
        for i, (j, k) in enumerate(((1, 2), (2, 0), (0, 1))):
            (xj, yj), (xk, yk) = P[j], P[k]
            E = s * ((xk - xj) * (PY - yj) - (yk - yj) * (PX - xj))
            nx, ny = s * (yj - yk), s * (xk - xj)  # inward normal
            owned = nx > 0 or (nx == 0 and ny > 0)
            inside &= (E > 0) | ((E == 0) & owned)
            invz += E / abs(area) / z[tri[i]]
        cover[fi] = inside
        zsnap[fi] = np.where(inside, 1.0 / invz, np.inf)
    face_id = np.where(cover.any(0), np.argmin(zsnap, axis=0) if F else -1, -1)
    bary = np.zeros((H, W, 3))
    depth = np.full((H, W), np.inf)
    for i, j in zip(*np.nonzero(face_id >= 0)):
        b, d = ref_bary(uv, z, faces[face_id[i, j]], j, i)
        bary[i, j], depth[i, j] = b, d
    return face_id, depth, bary, cover, zsnap


def ref_bary(uv, z, tri, x, y):
    """Perspective-correct barycentrics and depth of triangle `tri` at pixel centre (x, y)."""
    p = np.asarray(uv, np.float64)[tri]
    zz = np.asarray(z, np.float64)[tri]

    def cross(a, b):
        return a[0] * b[1] - a[1] * b[0]

    d = p - np.array([x, y], np.float64)
    lam = np.array([cross(d[1], d[2]), cross(d[2], d[0]), cross(d[0], d[1])])
    lam = lam / lam.sum()
    w = lam / zz
    return w / w.sum(), 1.0 / w.sum()


def coverage_count(verts, faces, K, size, **kw) -> np.ndarray:
    B = 1 if verts.dim() == 2 else verts.shape[0]
    count = torch.zeros(B * size[0] * size[1], dtype=torch.int64)
    for pix, _, _ in covered_pairs(verts, faces, K, size, **kw):
        count += torch.bincount(pix, minlength=count.numel())
    return count.view(B, *size).numpy()


# ----------------------------------------------------------------------------- scenes for hypothesis

def random_scene(seed: int, H: int, W: int, kind: str):
    """Random triangles at random depths (kind 'free'), or a grid mesh whose vertices sit on
    pixel centres with random depths (kind 'grid': stresses exact ties on shared edges)."""
    rng = np.random.default_rng(seed)
    fx, fy = rng.uniform(0.6, 1.5) * W, rng.uniform(0.6, 1.5) * W
    cx, cy = W / 2 + rng.uniform(-2, 2), H / 2 + rng.uniform(-2, 2)
    if kind == "grid":
        nx, ny = rng.integers(2, 6, size=2)
        step = rng.integers(1, 7)
        u0, v0 = rng.integers(-3, W // 2), rng.integers(-3, H // 2)
        us, vs = np.meshgrid(u0 + step * np.arange(nx + 1), v0 + step * np.arange(ny + 1))
        uvs = np.stack([us.ravel(), vs.ravel()], 1).astype(np.float64)
        idx = np.arange((nx + 1) * (ny + 1)).reshape(ny + 1, nx + 1)
        faces = []
        for r in range(ny):
            for c in range(nx):
                a, b, cc, d = idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]
                if rng.random() < 0.5:
                    faces += [(a, b, cc), (a, cc, d)]
                else:
                    faces += [(a, b, d), (b, cc, d)]
        faces = np.array(faces)
        if rng.random() < 0.5:  # mixed windings
            flip = rng.random(len(faces)) < 0.5
            faces[flip] = faces[flip][:, ::-1]
    else:
        n = rng.integers(1, 9)
        uvs = np.stack([rng.uniform(-0.3 * W, 1.3 * W, 3 * n), rng.uniform(-0.3 * H, 1.3 * H, 3 * n)], 1)
        faces = np.arange(3 * n).reshape(n, 3)
        if n > 1 and rng.random() < 0.3:  # a zero-area face
            faces[0, 2] = faces[0, 1]
    zs = rng.uniform(0.5, 4.0, len(uvs))
    if kind == "free":
        zs[rng.random(len(uvs)) < 0.08] = rng.uniform(-1.0, 5e-4)  # behind znear
    xyz = np.stack([(uvs[:, 0] - cx) / fx * zs, (uvs[:, 1] - cy) / fy * zs, zs], 1)
    return (torch.tensor(xyz, dtype=torch.float32), torch.tensor(faces, dtype=torch.int64),
            make_K(fx, fy, cx, cy))


# ----------------------------------------------------------------------------- tests

def test_project_matches_numpy_and_broadcasts():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (7, 3)) + [0, 0, 3]
    K = np.array([[50.0, 0.5, 20.0], [0.0, 40.0, 15.0], [0.0, 0.0, 1.0]])
    hom = pts @ K.T
    uv_ref = hom[:, :2] / hom[:, 2:]
    uv, z = project(torch.tensor(pts), torch.tensor(K))
    np.testing.assert_allclose(uv.numpy(), uv_ref, rtol=1e-12)
    np.testing.assert_allclose(z.numpy(), pts[:, 2])
    Kb = torch.stack([torch.tensor(K), torch.tensor(K) * torch.tensor([[2.0], [2.0], [1.0]])])
    uvb, zb = project(torch.tensor(pts), Kb)  # (N,3) points with (B,3,3) K
    assert uvb.shape == (2, 7, 2) and zb.shape == (2, 7)
    np.testing.assert_allclose(uvb[0].numpy(), uv_ref, rtol=1e-12)
    uvb2, _ = project(torch.tensor(pts).expand(2, -1, -1), Kb)
    assert torch.equal(uvb, uvb2)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2 ** 31 - 1), H=st.integers(16, 40), W=st.integers(16, 40),
       kind=st.sampled_from(["free", "grid"]), cull=st.booleans())
def test_matches_bruteforce_reference(seed, H, W, kind, cull):
    verts, faces, K = random_scene(seed, H, W, kind)
    frags = rasterize(verts, faces, K, (H, W), cull_backfaces=cull)
    uv, z = project(verts, K)
    rf, rd, rb, cover, zsnap = ref_rasterize(uv.numpy(), z.numpy(), faces.numpy(), H, W, cull=cull)

    # Every covered (pixel, face) pair, exactly: coverage, tie rule, culling, znear, degenerates.
    pairs = [(p, f, d) for chunk in covered_pairs(verts, faces, K, (H, W), cull_backfaces=cull, max_pairs=97)
             for p, f, d in zip(*(t.tolist() for t in chunk))]
    got = sorted((p, f) for p, f, _ in pairs)
    fi, ii, jj = np.nonzero(cover)
    assert got == sorted(zip((ii * W + jj).tolist(), fi.tolist()))
    for p, f, d in pairs:
        assert d == pytest.approx(zsnap[f, p // W, p % W], rel=1e-9)

    # Visible face: equal everywhere, except where two faces' depths tie to ~float32 precision
    # (then either is right); such pixels must be rare.
    fid = frags.face_id[0].numpy()
    best = np.where(rf >= 0, zsnap.min(0) if len(faces) else np.inf, np.inf)
    near = cover & (zsnap <= best * (1 + 1e-6))
    ambiguous = near.sum(0) > 1
    assert np.array_equal(fid[~ambiguous], rf[~ambiguous])
    if ambiguous.any():
        ii, jj = np.nonzero(ambiguous)
        assert all(near[fid[i, j], i, j] for i, j in zip(ii, jj))
        assert ambiguous.sum() <= 3

    same = fid == rf
    hit = same & (rf >= 0)
    np.testing.assert_allclose(frags.depth[0].numpy()[hit], rd[hit], rtol=1e-5)
    np.testing.assert_allclose(frags.bary[0].numpy()[hit], rb[hit], rtol=1e-4, atol=1e-5)
    assert np.isinf(frags.depth[0].numpy()[fid < 0]).all()
    assert (frags.bary[0].numpy()[fid < 0] == 0).all()
    assert torch.isfinite(frags.bary).all()
    if kind == "grid" and not cull:  # a flat-topology grid: each pixel covered at most once
        assert cover.sum(0).max() <= 1


def test_grid_on_pixel_centres_is_covered_exactly_once_top_left_rule():
    # Vertices exactly on pixel centres: many centres lie on shared edges and vertices.
    H = W = 16
    K = make_K(10.0, 10.0, 7.0, 7.0)
    n = 5
    us, vs = np.meshgrid(2 + 2 * np.arange(n + 1), 2 + 2 * np.arange(n + 1))
    z = 2.0
    xyz = np.stack([(us.ravel() - 7.0) / 10 * z, (vs.ravel() - 7.0) / 10 * z, np.full(us.size, z)], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, cc, d = idx[r, c], idx[r, c + 1], idx[r + 1, c + 1], idx[r + 1, c]
            faces += [(a, b, cc), (a, cc, d)] if (r + c) % 2 else [(a, b, d), (b, cc, d)]
    verts, faces = torch.tensor(xyz, dtype=torch.float32), torch.tensor(faces)
    count = coverage_count(verts, faces, K, (H, W))[0]
    expected = np.zeros((H, W), int)
    expected[2:12, 2:12] = 1  # left and top borders owned, right and bottom not
    assert np.array_equal(count, expected)
    frags = rasterize(verts, faces, K, (H, W))
    assert np.array_equal(frags.mask[0].numpy(), expected.astype(bool))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_mesh_covers_silhouette_without_holes(seed):
    rng = np.random.default_rng(seed)
    verts, faces = sphere_scene(rng, subdiv=3)
    H, W = 72, 80
    K = make_K(70.0, 66.0, 39.3, 35.7)
    uv, _ = project(verts, K)
    hull = ConvexHull(uv.numpy().astype(np.float64))
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    dist = (hull.equations[:, :2] @ np.stack([jj.ravel(), ii.ravel()]) + hull.equations[:, 2:]).max(0)
    dist = dist.reshape(H, W)  # > 0 outside the silhouette, < 0 inside (in pixels)
    inside, outside = dist < -0.01, dist > 0.01
    assert inside.sum() > 1000

    # Every ray through the interior crosses the closed surface exactly twice, once culled.
    both = coverage_count(verts, faces, K, (H, W))[0]
    front = coverage_count(verts, faces, K, (H, W), cull_backfaces=True)[0]
    assert (both[inside] == 2).all() and (front[inside] == 1).all()
    assert (both[outside] == 0).all()
    frags = rasterize(verts, faces, K, (H, W))
    assert frags.mask[0].numpy()[inside].all() and not frags.mask[0].numpy()[outside].any()


def test_backface_culling_keeps_faces_that_look_at_the_camera():
    verts, faces = sphere_scene(np.random.default_rng(3), subdiv=2)
    K, size = make_K(40.0, 40.0, 24.0, 24.0), (48, 48)
    plain = rasterize(verts, faces, K, size)
    culled = rasterize(verts, faces, K, size, cull_backfaces=True)
    assert torch.equal(plain.face_id, culled.face_id)  # outward sphere: nearest faces are front
    inside_out = rasterize(verts, faces.flip(1), K, size, cull_backfaces=True)  # now see the far side
    m = plain.mask
    assert torch.equal(inside_out.mask, m)
    assert (inside_out.depth[m] > plain.depth[m]).all()
    assert inside_out.depth[m].max() > 3.5 and plain.depth[m].min() < 2.5  # far and near caps


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 2 ** 31 - 1), H=st.integers(16, 40), W=st.integers(16, 40),
       kind=st.sampled_from(["free", "grid"]), cull=st.booleans())
def test_depth_map_is_the_rasterized_depth(seed, H, W, kind, cull):
    """depth_map: the z-buffer's depth without barycentrics; same coverage as rasterize, depth
    within the snapping error (1/256 px; relative 1e-2 on these steep random triangles, ~2e-4 on a
    body) of its interpolated depth."""
    verts, faces, K = random_scene(seed, H, W, kind)
    frags = rasterize(verts, faces, K, (H, W), cull_backfaces=cull)
    depth = depth_map(verts, faces, K, (H, W), cull_backfaces=cull)
    assert depth.shape == frags.depth.shape and depth.dtype == frags.depth.dtype
    hit = frags.mask
    assert torch.equal(torch.isfinite(depth), hit)
    assert torch.allclose(depth[hit], frags.depth[hit], rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("seed", [4, 5])
def test_depth_map_of_a_closed_mesh_is_the_same_with_back_faces_culled(seed):
    """What body_depth relies on: seen from outside, a closed outward-wound mesh's nearest
    surface always faces the camera, so culling back faces does not change the depth map."""
    verts, faces = sphere_scene(np.random.default_rng(seed), subdiv=3)
    K, size = make_K(60.0, 60.0, 31.5, 29.5), (64, 60)
    assert outward_wound(verts, faces) and not outward_wound(verts, faces.flip(1))
    assert torch.equal(depth_map(verts, faces, K, size), depth_map(verts, faces, K, size, cull_backfaces=True))
    inward = depth_map(verts, faces.flip(1), K, size, cull_backfaces=True)     # why the winding is checked
    hit = torch.isfinite(inward)
    assert (inward[hit] > depth_map(verts, faces, K, size)[hit]).all()


def test_interpolated_position_reproduces_depth_and_pixel_ray():
    verts, faces = sphere_scene(np.random.default_rng(4), subdiv=2)
    fx, fy, cx, cy = 45.0, 50.0, 23.5, 21.0
    K, (H, W) = make_K(fx, fy, cx, cy), (44, 48)
    frags = rasterize(verts, faces, K, (H, W))
    pos = interpolate(frags, faces, verts)[0]
    m = frags.mask[0]
    assert m.sum() > 300
    torch.testing.assert_close(pos[..., 2][m], frags.depth[0][m], rtol=1e-5, atol=0)
    jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float32), torch.arange(H, dtype=torch.float32),
                            indexing="xy")
    torch.testing.assert_close(pos[..., 0][m], ((jj - cx) / fx * frags.depth[0])[m], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pos[..., 1][m], ((ii - cy) / fy * frags.depth[0])[m], rtol=1e-4, atol=1e-5)
    assert (pos[~m] == 0).all()
    # Attributes may carry a batch dim too.
    assert torch.equal(interpolate(frags, faces, verts[None]), pos[None])


def test_perspective_correct_on_slanted_quad_matches_ray_plane_intersection():
    # Plane z = 2.5 + 1.5 y: the quad recedes from 1 m (top) to 4 m (bottom).
    quad = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 4.0], [-1.0, 1.0, 4.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fx = fy = 12.0
    cx = cy = 15.5
    K, (H, W) = make_K(fx, fy, cx, cy), (32, 32)
    frags = rasterize(quad, faces, K, (H, W))
    m = frags.mask[0].numpy()
    assert m.sum() > 150
    uv, _ = project(quad, K)
    n, offset = np.array([0.0, -1.5, 1.0]), 2.5
    worst_affine = 0.0
    for i, j in zip(*np.nonzero(m)):
        d = np.array([(j - cx) / fx, (i - cy) / fy, 1.0])
        point = d * offset / (n @ d)
        f = int(frags.face_id[0, i, j])
        A = quad[faces[f]].numpy().astype(np.float64)
        # 3D barycentrics of the intersection point in its triangle.
        sol = np.linalg.lstsq(np.vstack([A.T, np.ones(3)]), np.append(point, 1.0), rcond=None)[0]
        assert float(frags.depth[0, i, j]) == pytest.approx(point[2], rel=1e-5)
        np.testing.assert_allclose(frags.bary[0, i, j].numpy(), sol, atol=2e-5)
        # Screen-space (affine) barycentrics of the same pixel.
        p = uv[faces[f]].numpy().astype(np.float64)
        T = np.vstack([p.T, np.ones(3)])
        affine = np.linalg.solve(T, np.array([j, i, 1.0]))
        worst_affine = max(worst_affine, np.abs(affine - sol).max())
    assert worst_affine > 0.1  # perspective correction matters here


def test_gradients_reach_attributes_and_vertices_without_nans():
    verts, faces = sphere_scene(np.random.default_rng(5), subdiv=1)
    # Extra faces touching vertices behind the camera and at z == 0: dropped, must not poison grads.
    extra = torch.tensor([[0.2, 0.1, -0.5], [0.3, 0.3, 0.0], [0.1, -0.2, 0.0]])
    V = verts.shape[0]
    verts = torch.cat([verts, extra]).requires_grad_(True)
    faces = torch.cat([faces, torch.tensor([[0, V, 1], [V + 1, 2, 3], [V + 1, V + 2, V]])])
    colors = torch.rand(verts.shape[0], 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    K = make_K(30.0, 30.0, 16.0, 16.0)
    frags = rasterize(verts, faces, K, (32, 32))
    img = interpolate(frags, faces, colors)
    weight = torch.linspace(0.0, 1.0, 32 * 32 * 3).view(1, 32, 32, 3)
    loss = (img * weight).sum() + frags.depth[frags.mask].sum()
    loss.backward()
    for g in (colors.grad, verts.grad):
        assert g is not None and torch.isfinite(g).all()
    assert colors.grad.abs().sum() > 0 and verts.grad.abs().sum() > 0
    visible = torch.unique(faces[frags.face_id[frags.mask]])
    assert (verts.grad[visible].abs().sum(1) > 0).float().mean() > 0.9
    assert (verts.grad[V:] == 0).all() and (colors.grad[V:] == 0).all()


def test_gradients_match_finite_differences():
    verts = torch.tensor([[-0.4, -0.3, 1.2], [0.5, -0.35, 1.6], [0.05, 0.45, 2.1],
                          [0.6, 0.5, 1.4]], dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    K = make_K(9.0, 9.0, 5.3, 4.7, dtype=torch.float64)
    attrs = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [0.5, -1.0]], dtype=torch.float64,
                         requires_grad=True)
    base = rasterize(verts, faces, K, (10, 11))
    m = base.mask

    def fn(v, a):
        fr = rasterize(v, faces, K, (10, 11))
        assert torch.equal(fr.face_id, base.face_id)
        return fr.bary[m], fr.depth[m], interpolate(fr, faces, a)[m]

    assert torch.autograd.gradcheck(fn, (verts, attrs), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_chunking_does_not_change_results():
    verts, faces = sphere_scene(np.random.default_rng(6), subdiv=2, z=2.5)
    # Plus one huge face behind the sphere covering the whole image: split across chunks.
    big = torch.tensor([[-20.0, -20.0, 5.0], [40.0, -20.0, 5.0], [-20.0, 40.0, 5.0]])
    V = verts.shape[0]
    verts = torch.cat([verts, big])
    faces = torch.cat([faces, torch.tensor([[V, V + 1, V + 2]])])
    K, size = make_K(30.0, 30.0, 17.5, 15.5), (32, 36)
    ref = rasterize(verts, faces, K, size)
    assert (ref.face_id == len(faces) - 1).any() and (ref.face_id < len(faces) - 1).any()
    for max_pairs in (7, 97, 1000):
        fr = rasterize(verts, faces, K, size, max_pairs=max_pairs)
        assert torch.equal(fr.face_id, ref.face_id)
        assert torch.equal(fr.bary, ref.bary) and torch.equal(fr.depth, ref.depth)


def test_batch_equals_single_calls():
    v0, faces = sphere_scene(np.random.default_rng(7), subdiv=2)
    v1, _ = sphere_scene(np.random.default_rng(8), subdiv=2, z=2.5)
    K0, K1 = make_K(40.0, 42.0, 20.0, 18.0), make_K(35.0, 35.0, 21.5, 17.0)
    size = (40, 44)
    batch = rasterize(torch.stack([v0, v1]), faces, torch.stack([K0, K1]), size)
    colors = torch.rand(v0.shape[0], 3, generator=torch.Generator().manual_seed(1))
    img = interpolate(batch, faces, colors)
    for b, (v, K) in enumerate(((v0, K0), (v1, K1))):
        one = rasterize(v, faces, K, size)
        assert torch.equal(batch.face_id[b], one.face_id[0])
        assert torch.equal(batch.bary[b], one.bary[0]) and torch.equal(batch.depth[b], one.depth[0])
        assert torch.equal(img[b], interpolate(one, faces, colors)[0])
    assert not torch.equal(batch.face_id[0], batch.face_id[1])
    # One mesh seen by two cameras: verts broadcast over the batch of K.
    two_cams = rasterize(v0, faces, torch.stack([K0, K1]), size)
    assert torch.equal(two_cams.face_id[1], rasterize(v0, faces, K1, size).face_id[0])


def test_degenerate_faces_and_faces_behind_znear_are_skipped():
    verts = torch.tensor([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0],   # good face 0
                          [-0.2, 0.0, 1.0], [0.2, 0.0, 1.0], [0.6, 0.0, 1.0],     # collinear
                          [0.0, 0.0002, 0.0005], [1.0, 1.0, -1.0]])
    faces = torch.tensor([[3, 4, 5], [0, 0, 2], [4, 4, 4], [3, 4, 6], [3, 4, 7], [0, 1, 2]])
    K = make_K(20.0, 20.0, 10.0, 10.0)
    verts.requires_grad_(True)
    frags = rasterize(verts, faces, K, (20, 20))
    assert set(torch.unique(frags.face_id).tolist()) == {-1, 5}
    assert torch.isfinite(frags.bary).all() and not torch.isnan(frags.depth).any()
    interpolate(frags, faces, verts).sum().backward()
    assert torch.isfinite(verts.grad).all()
    # A nearer znear keeps the face whose vertex sits at 0.5 mm.
    assert (rasterize(verts, faces, K, (20, 20), znear=1e-4).face_id == 3).any()


def test_exact_depth_tie_goes_to_smallest_face_id():
    verts = torch.tensor([[-0.5, -0.5, 2.0], [0.5, -0.4, 2.5], [0.0, 0.5, 1.5]])
    faces = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    K = make_K(20.0, 20.0, 10.0, 10.0)
    fr = rasterize(verts, faces, K, (20, 20))
    assert set(torch.unique(fr.face_id).tolist()) == {-1, 0}  # three faces tie: the first wins
    for max_pairs in (5, 50):
        assert torch.equal(rasterize(verts, faces, K, (20, 20), max_pairs=max_pairs).face_id, fr.face_id)


def test_faces_reaching_far_off_screen_are_exact():
    # Vertices ~1e6 px off screen: fixed-point edge functions must not overflow.
    K, (H, W) = make_K(100.0, 100.0, 15.5, 11.5), (24, 32)
    z = 2.0
    uv = np.array([[-1e6, -1e6], [3e6, -1e6], [-1e6, 3e6], [3e6, 3e6]])
    xyz = np.c_[(uv[:, 0] - 15.5) / 100 * z, (uv[:, 1] - 11.5) / 100 * z, np.full(4, z)]
    verts = torch.tensor(xyz, dtype=torch.float64)
    fr = rasterize(verts, torch.tensor([[0, 1, 2], [1, 3, 2]]), K, (H, W))
    assert (fr.face_id == 0).all()
    torch.testing.assert_close(fr.depth, torch.full_like(fr.depth, z))
    assert (fr.bary >= 0).all() and torch.allclose(fr.bary.sum(-1), torch.ones_like(fr.depth))


def test_bad_arguments_raise_clear_errors():
    K, v, f = make_K(10.0, 10.0, 5.0, 5.0), torch.rand(4, 3) + 1, torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="faces index"):
        rasterize(v, torch.tensor([[0, 1, 4]]), K, (8, 8))
    with pytest.raises(ValueError, match="faces must be"):
        rasterize(v, f.float(), K, (8, 8))
    with pytest.raises(ValueError, match="batch sizes"):
        rasterize(v.expand(2, -1, -1), f, K.expand(3, -1, -1), (8, 8))
    with pytest.raises(ValueError, match="max_pairs"):
        rasterize(v, f, K, (8, 8), max_pairs=0)
    with pytest.raises(ValueError, match="image_size"):
        rasterize(v, f, K, (0, 8))


def test_empty_inputs():
    K = make_K(10.0, 10.0, 5.0, 5.0)
    fr = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), K, (6, 7))
    assert fr.face_id.shape == (1, 6, 7) and (fr.face_id == -1).all() and torch.isinf(fr.depth).all()
    assert interpolate(fr, torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 2)).shape == (1, 6, 7, 2)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_follow_input_device_and_dtype(device, dtype):
    verts, faces = sphere_scene(np.random.default_rng(9), subdiv=1)
    verts, faces = verts.to(device, dtype), faces.to(device)
    K = make_K(20.0, 20.0, 12.0, 12.0).to(device)  # float32 K is cast to the verts dtype
    fr = rasterize(verts, faces, K, (24, 24))
    assert isinstance(fr, Fragments)
    for t in (fr.face_id, fr.bary, fr.depth):
        assert t.device.type == device
    assert fr.face_id.dtype == torch.int64 and fr.bary.dtype == dtype and fr.depth.dtype == dtype
    img = interpolate(fr, faces, verts)
    assert img.device.type == device and img.dtype == dtype
    if device != "cpu":
        cpu = rasterize(verts.cpu(), faces.cpu(), K.cpu(), (24, 24))
        assert torch.equal(cpu.face_id, fr.face_id.cpu())
