"""Free-form refinement pieces: the smooth surface basis, outward normals, the body clearance."""
from __future__ import annotations

import numpy as np
import torch
import trimesh
from hypothesis import given, settings, strategies as st

from pointwear.fit.refine import Clearance, body_surface, harmonic_basis, surface_graph, vertex_normals


def _laplacian_energy(adj, f):
    i, j = adj.nonzero()
    return float(((f[i] - f[j]) ** 2).sum() / 2)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 4), st.integers(0, 1000))
def test_basis_is_orthonormal_smooth_and_spans_each_parts_constant(subdiv, seed):
    a = trimesh.creation.icosphere(subdivisions=subdiv)
    b = trimesh.creation.icosphere(subdivisions=subdiv)
    b.apply_translation([3.0, 0, 0])
    points = np.concatenate([a.vertices, b.vertices])
    faces = np.concatenate([a.faces, b.faces + len(a.vertices)])
    adj = surface_graph(points, faces)
    basis = harmonic_basis(adj, 12)
    assert basis.shape == (len(points), 12)
    assert np.allclose(basis.T @ basis, np.eye(12), atol=1e-4)
    # Two components: the indicator of each lies in the span (uniform inflation of one garment).
    for part in (slice(0, len(a.vertices)), slice(len(a.vertices), None)):
        ind = np.zeros(len(points))
        ind[part] = 1.0
        ind /= np.linalg.norm(ind)
        assert np.linalg.norm(basis @ (basis.T @ ind) - ind) < 1e-3
    # Smooth: far less Laplacian energy than random unit vectors.
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=len(points))
    noise /= np.linalg.norm(noise)
    assert max(_laplacian_energy(adj, basis[:, k]) for k in range(12)) < 0.2 * _laplacian_energy(adj, noise)


def test_normals_point_away_from_the_body_and_clearance_measures_depth(default_body):
    body_v, body_n = body_surface(default_body, torch.zeros(10))
    # A shell 2 cm outside the torso: normals agree with the body's, distance about +2 cm.
    torso = np.flatnonzero(np.abs(body_v[:, 1] - 0.2) < 0.15)
    shell = body_v[torso] + 0.02 * body_n[torso]
    n = vertex_normals(shell, None, body_v, body_n)
    assert ((n * body_n[torso]).sum(1) > 0).mean() > 0.95
    c = Clearance.build(shell, body_v, body_n, torch.device("cpu"))
    d = c.signed_distance(torch.as_tensor(shell, dtype=torch.float32)).numpy()
    assert abs(np.median(d) - 0.02) < 0.003
    inside = torch.as_tensor(shell - 0.03 * body_n[torso], dtype=torch.float32)
    assert np.median(c.signed_distance(inside).numpy()) < -0.005
