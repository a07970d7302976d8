"""A clean garment mesh from clothing points that have no faces (neural, refined-neural or any
point-only result), on the connectivity of the body surface the points come from.

Every clothing point has a source on the body (for the neural drape the body sample it was
decoded from; otherwise its closest point on the body surface). Each vertex of the (subdivided)
rest-pose body takes, per garment, the Gaussian-weighted mean offset (point - source) and skin
weights of its nearest sources of that garment, if there is one within `cover_factor` point
spacings. Faces of the body whose three vertices are covered become garment faces unless the
garment stretches or squashes them beyond `min_stretch`..`max_stretch` (places the points
left, e.g. a forearm pulled onto a sleeve's hem); tiny pieces are dropped. Every vertex is then
pushed out along the body normal to at least `clearance_m` outside the body, so no face runs
through it (the faces follow the body's own surface). Shapes in the docstrings: V body vertices,
F body faces, P clothing points.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .options import DEFAULT_OPTIONS, MeshOptions


def vertex_normals_np(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals of a mesh."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def subdivide(vertices: np.ndarray, faces: np.ndarray, attrs: np.ndarray, times: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midpoint subdivision `times` times: vertices (V,3), faces (F,3), per-vertex attrs (V,C)
    -> the same with new vertices at edge midpoints (attributes averaged)."""
    for _ in range(times):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = len(vertices) + inverse.reshape(3, -1).T                 # (F, 3): edges 01, 12, 20
        vertices = np.concatenate([vertices, vertices[unique].mean(1)])
        attrs = np.concatenate([attrs, attrs[unique].mean(1)])
        a, b, c = faces.T
        m01, m12, m20 = mid.T
        faces = np.concatenate([np.stack([a, m01, m20], 1), np.stack([m01, b, m12], 1),
                                np.stack([m20, m12, c], 1), np.stack([m01, m12, m20], 1)])
    return vertices, faces, attrs


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, 3) closest points to p (N,3) on triangles (a, b, c) (each (N,3)): Ericson's
    region tests (Real-Time Collision Detection, 5.1.5), vectorised."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(1), (ac * ap).sum(1)
    bp = p - b
    d3, d4 = (ab * bp).sum(1), (ac * bp).sum(1)
    cp = p - c
    d5, d6 = (ab * cp).sum(1), (ac * cp).sum(1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    denom = va + vb + vc
    safe = lambda x: np.where(np.abs(x) > 1e-30, x, 1e-30)  # noqa: E731
    v = vb / safe(denom)
    w = vc / safe(denom)
    out = a + ab * v[:, None] + ac * w[:, None]                                     # inside the face
    t_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    edge_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    out = np.where(edge_bc[:, None], b + (c - b) * t_bc[:, None], out)
    edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = np.where(edge_ac[:, None], a + ac * (d2 / safe(d2 - d6))[:, None], out)
    edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = np.where(edge_ab[:, None], a + ab * (d1 / safe(d1 - d3))[:, None], out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
    return out


def closest_on_surface(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, candidates: int = 16
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) closest points on the mesh surface and (P,) their face, among the `candidates`
    faces whose centroids are nearest (exact for meshes of even-sized faces, like a body)."""
    points = np.asarray(points, np.float64)
    tri = np.asarray(vertices, np.float64)[faces]
    k = min(candidates, len(faces))
    _, cand = cKDTree(tri.mean(1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    best = np.full(len(points), np.inf)
    out, face = np.zeros_like(points), np.zeros(len(points), np.int64)
    for j in range(k):
        f = cand[:, j]
        q = closest_on_triangles(points, tri[f, 0], tri[f, 1], tri[f, 2])
        d = ((q - points) ** 2).sum(1)
        better = d < best
        best[better], out[better], face[better] = d[better], q[better], f[better]
    return out, face


def smooth_field(values: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """(V, C) per-vertex values averaged with their mesh neighbours (uniform Laplacian, half a
    step per pass) `iterations` times: takes the per-point noise out of a fitted offset field."""
    if iterations <= 0:
        return values
    n = len(values)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = np.concatenate([e, e[:, ::-1]])
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    degree = np.asarray(adj.sum(1)).reshape(-1, 1)
    for _ in range(iterations):
        mean = (adj @ values) / np.maximum(degree, 1)
        values = np.where(degree > 0, 0.5 * values + 0.5 * mean, values)
    return values


def majority(good: np.ndarray, faces: np.ndarray, passes: int) -> np.ndarray:
    """(F,) bool: `good` after `passes` majority votes of each face and its edge neighbours, so
    single stray faces neither punch holes into a garment nor stand alone outside it."""
    if passes <= 0:
        return good
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    _, edge = np.unique(e, axis=0, return_inverse=True)
    edge = edge.reshape(-1)
    owner = np.tile(np.arange(len(faces)), 3)
    inc = coo_matrix((np.ones(len(edge)), (owner, edge))).tocsr()
    adj = (inc @ inc.T).tocsr()                 # faces sharing an edge (and each face itself)
    adj.data[:] = 1.0
    count = np.asarray(adj.sum(1)).reshape(-1)
    vote = good.astype(np.float64)
    for _ in range(passes):
        vote = ((adj @ vote) / count >= 0.5).astype(np.float64)
    return vote > 0


def _largest_pieces(faces: np.ndarray, count: int, min_faces: int) -> np.ndarray:
    """Bool (F,): faces in connected pieces (sharing vertices) of at least min_faces faces."""
    if len(faces) == 0:
        return np.zeros(0, bool)
    rows = np.repeat(np.arange(len(faces)), 3)
    adj = coo_matrix((np.ones(len(rows)), (rows, faces.reshape(-1))), shape=(len(faces), count)).tocsr()
    graph = adj @ adj.T
    _, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    return sizes[label] >= min_faces


def remesh_points(points: np.ndarray, weights: np.ndarray, garment: np.ndarray, body_vertices: np.ndarray,
                  body_faces: np.ndarray, sources: np.ndarray | None = None,
                  options: MeshOptions = DEFAULT_OPTIONS
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Garment mesh for rest-pose clothing points (P,3) with skin weights (P,24) and garment
    index (P,) on the rest-pose body (V,3)/(F,3) of the same betas; `sources` (P,3): each
    point's place on the body (None: its closest body surface point).

    Returns vertices (Vg,3) float32, faces (Fg,3) int32, weights (Vg,24) float32 (rows sum to
    1), garment (Vg,) int32; garments in ascending index, each its own piece of the body's
    connectivity."""
    points = np.asarray(points, np.float64)
    body_vertices = np.asarray(body_vertices, np.float64)
    if sources is None:
        sources = closest_on_surface(points, body_vertices, body_faces)[0]
    normals0 = vertex_normals_np(body_vertices, body_faces)
    bv, bf, bn = subdivide(body_vertices, np.asarray(body_faces, np.int64), normals0, options.subdivide)
    bn = bn / np.maximum(np.linalg.norm(bn, axis=1, keepdims=True), 1e-12)
    spacing = float(np.median(cKDTree(sources).query(sources, k=2)[0][:, 1]))
    radius = max(spacing, 1e-4) * options.cover_factor
    out_v, out_f, out_w, out_g = [], [], [], []
    base = 0
    for g in np.unique(np.asarray(garment)):
        sel = np.flatnonzero(garment == g)
        if len(sel) < 4:
            continue
        k = min(options.neighbours, len(sel))
        dist, idx = cKDTree(sources[sel]).query(bv, k=k)
        covered = dist[:, 0] <= radius
        sigma = max(spacing, 1e-4)
        wk = np.exp(-0.5 * (dist / sigma) ** 2) + 1e-12                  # (V, k)
        wk /= wk.sum(1, keepdims=True)
        pick = sel[idx]                                                    # (V, k) point ids
        offset = smooth_field(np.einsum("vk,vkc->vc", wk, points[pick] - sources[pick]), bf,
                              options.smooth_iterations)
        along = (offset * bn).sum(1)
        offset += np.maximum(options.clearance_m - along, 0.0)[:, None] * bn   # outside the body
        verts = bv + offset
        skin = np.einsum("vk,vkc->vc", wk, np.asarray(weights, np.float64)[pick])

        e_body = np.linalg.norm(bv[bf] - bv[np.roll(bf, 1, 1)], axis=2)
        e_cloth = np.linalg.norm(verts[bf] - verts[np.roll(bf, 1, 1)], axis=2)
        ratio = e_cloth / np.maximum(e_body, 1e-9)
        good = covered[bf].all(1) & ((ratio >= options.min_stretch) & (ratio <= options.max_stretch)).all(1)
        faces = bf[majority(good, bf, options.majority_passes) & covered[bf].all(1)]
        faces = faces[_largest_pieces(faces, len(bv), options.min_component_faces)]
        if len(faces) == 0:
            continue
        used, local = np.unique(faces, return_inverse=True)
        skin = np.clip(skin[used], 0, None)
        out_v.append(verts[used])
        out_f.append(local.reshape(-1, 3) + base)
        out_w.append(skin / np.maximum(skin.sum(1, keepdims=True), 1e-12))
        out_g.append(np.full(len(used), int(g)))
        base += len(used)
    if not out_v:
        raise ValueError("no garment surface: the clothing points cover no part of the body")
    verts = push_outside(np.concatenate(out_v), body_vertices, np.asarray(body_faces), options.clearance_m)
    return (verts.astype(np.float32), np.concatenate(out_f).astype(np.int32),
            np.concatenate(out_w).astype(np.float32), np.concatenate(out_g).astype(np.int32))


def push_outside(vertices: np.ndarray, body_vertices: np.ndarray, body_faces: np.ndarray, clearance: float,
                 iterations: int = 3) -> np.ndarray:
    """(V, 3) vertices moved, where they are inside the body or closer than `clearance` to it on
    the inside of a fold (armpits, crotch), to `clearance` outside their closest body face."""
    v = np.asarray(vertices, np.float64).copy()
    for _ in range(iterations):
        closest, fid = closest_on_surface(v, body_vertices, body_faces)
        tri = body_vertices[body_faces[fid]]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
        side = ((v - closest) * n).sum(1)
        bad = side < clearance * 0.5
        if not bad.any():
            break
        v[bad] = closest[bad] + clearance * n[bad]
    return v


def outside_fraction(vertices: np.ndarray, faces: np.ndarray, body_vertices: np.ndarray,
                     body_faces: np.ndarray, tolerance: float = 1e-4) -> float:
    """Share of sample points on the garment's faces (centroids and points towards the corners)
    that lie outside the body: offset from the closest body point along that body face's
    normal > -tolerance."""
    tri = np.asarray(vertices, np.float64)[faces]
    w = [np.full(3, 1 / 3)] + [np.eye(3)[i] * 0.4 + 0.2 for i in range(3)]   # rows sum to 1
    pts = np.concatenate([np.einsum("k,fkc->fc", b, tri) for b in w])
    bv = np.asarray(body_vertices, np.float64)
    closest, fid = closest_on_surface(pts, bv, body_faces)
    btri = bv[np.asarray(body_faces)[fid]]
    n = np.cross(btri[:, 1] - btri[:, 0], btri[:, 2] - btri[:, 0])
    return float((((pts - closest) * n).sum(1) > -tolerance * np.linalg.norm(n, axis=1)).mean())
