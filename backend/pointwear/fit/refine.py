"""Free-form detail beyond the garment code: smooth offsets of the garment surface along its
normals in the canonical (rest) pose, shared by every frame, so folds, flare and looseness
outside the families are captured consistently across frames.

The offsets live in a low-dimensional basis: the smoothest eigenvectors of the garment surface's
graph Laplacian (manifold harmonics: mesh edges for parametric garments, a k-nearest-neighbour
graph for point clouds). Each garment is its own component, so its constant vector (a uniform
inflation) is in the basis, and no offset leaks from a jacket to the shirt under it. A clearance
term keeps points outside the body (signed distance to the rest-pose body surface, from the
nearest body vertex and its normal); a small prior keeps the coefficients small. Everything that
needs scipy is computed once, before the optimisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh
from scipy.spatial import cKDTree


@dataclass
class RefineOptions:
    basis: int = 64                 # smooth basis vectors (over all garments)
    # Adam on the basis coefficients (metres x sqrt(points): a unit-norm basis vector moves each
    # point by about 1 / sqrt(P) of its coefficient). 4e-3 until 2026-12-05: on the turntables a
    # settling hem's held-out score was still falling at 100 steps (clothsim dress_2); 1.2e-2 took
    # the tuning subjects' 3D Chamfer 1.64 -> 1.57 cm (skirt_2), 1.68 -> 1.60 (dress_2), the walks
    # dropping it as before (docs/fitting.md, "Skirts and dresses: the front and back fall in").
    lr: float = 1.2e-2
    prior_weight: float = 1.0       # x mean squared offset (m^2)
    clearance_weight: float = 1e4   # x mean squared penetration (m^2) below `clearance`
    clearance: float = 0.003        # the cloth stays at least this far outside the body (m)
    knn: int = 8                    # graph neighbours for point clouds without faces
    patience: int = 2               # stop after this many held-out checks without a gain
    # Offsets change with time as a polynomial of this degree in the frame's time (0: one shape
    # for every frame). Simulated cloth is still settling in the frames (a flared hem falls in by
    # 6-7 cm over the 8 frames of a clothsim turntable); a quadratic follows it to 0.2 cm, and a
    # held-out frame gets its offsets from its own time (interpolated, or extrapolated at the end).
    # Lowered to (training frames) / 2 - 1: 6 training frames of 8 take 2, 3 of 4 one static shape.
    time_degree: int = 2
    # ... and with the body's pose: this many principal components of the frame's hip, knee,
    # shoulder and elbow rotations (`pose_features`), a linear map from them to the basis
    # coefficients, so cloth that swings with a walk (hems, jacket fronts, sleeves) takes each
    # frame's shape from that frame's own pose, held-out frames included (time alone cannot know
    # a held-out frame's swing). 0: time only; a pose that never changes (turntable) adds none.
    # Capped so that time and pose rows together stay below the number of training frames. When
    # the pose moves, a time-only run goes alongside and the held-out frames keep the better
    # (the pose map overfits some walks); docs/fitting.md, "Swing with the pose".
    pose_features: int = 2


def time_powers(frame_ids, num_frames: int, degree: int, device: torch.device) -> torch.Tensor:
    """(F, degree + 1) powers 0..degree of each frame's time, -1 (first frame of the subject)
    to 1 (last): the time basis of per-frame offsets (`RefineOptions.time_degree`)."""
    t = torch.as_tensor(list(frame_ids), dtype=torch.float32, device=device) / max(num_frames - 1, 1) * 2 - 1
    return torch.stack([t ** d for d in range(degree + 1)], 1)


# SMPL joints whose rotations drive the swing of cloth: hips, knees (hems, skirt and jacket
# fronts), shoulders and elbows (sleeves)
POSE_JOINTS = (1, 2, 4, 5, 16, 17, 18, 19)


def pose_features(body_pose: torch.Tensor, k: int, min_std: float = 0.02,
                  joints: tuple[int, ...] = POSE_JOINTS) -> torch.Tensor:
    """(N, k') features of each frame's pose from (N, 69) axis-angle body poses (no root): the
    first k principal components over the frames of the `joints`' rotations, each centred and
    scaled to unit standard deviation over the frames. Components that move less than `min_std`
    rad (a turntable: the pose never changes) are left out, so k' <= k. Made once, before the
    optimisation (it reads values on the host)."""
    n = body_pose.shape[0]
    cols = [3 * (j - 1) + a for j in joints for a in range(3)]
    x = body_pose[:, cols]
    x = x - x.mean(0, keepdim=True)
    if k <= 0 or n < 2:
        return x[:, :0]
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    k = min(k, len(s))
    keep = (s[:k] / n ** 0.5 > min_std).nonzero().flatten()
    return u[:, keep] * n ** 0.5


def frame_features(frame_ids, num_frames: int, degree: int, pose: torch.Tensor) -> torch.Tensor:
    """(F, degree + 1 + D) per-frame multipliers of the refinement's coefficient rows: the time
    powers (`time_powers`) then the frames' (num_frames, D) pose features (`pose_features`)."""
    t = time_powers(frame_ids, num_frames, degree, pose.device)
    return torch.cat([t, pose[list(frame_ids)]], 1)


def surface_graph(points: np.ndarray, faces: np.ndarray | None, knn: int = 8) -> sp.csr_matrix:
    """(P, P) symmetric 0/1 adjacency: mesh edges, or each point's k nearest neighbours."""
    n = len(points)
    if faces is not None and len(faces):
        f = np.asarray(faces, np.int64)
        i = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
        j = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    else:
        _, idx = cKDTree(points).query(points, k=knn + 1)
        i, j = np.repeat(np.arange(n), knn), idx[:, 1:].reshape(-1)
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    a.setdiag(0)
    a.eliminate_zeros()
    return a


def harmonic_basis(adjacency: sp.csr_matrix, k: int) -> np.ndarray:
    """(P, k) float32: the k smoothest eigenvectors of the normalised graph Laplacian
    (orthonormal columns), the first of each connected component constant on it."""
    n = adjacency.shape[0]
    k = int(min(k, n - 2))
    deg = np.asarray(adjacency.sum(1)).ravel()
    d = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    lap = sp.identity(n) - d @ adjacency @ d
    # Shift-invert around a small negative sigma: the smallest eigenvalues, robustly; a 1e-8
    # tolerance spans the same subspace as machine precision at a quarter of the time. ARPACK
    # starts from a random vector unless given one, and the refinement's Adam steps depend on
    # the basis' signs and on its rotation within near-equal eigenvalues: a fixed start and a
    # fixed sign make the same garment get the same basis, so a fit is repeatable.
    v0 = np.random.default_rng(0).standard_normal(n)
    vals, vecs = eigsh(lap.tocsc(), k=k, sigma=-1e-3, which="LM", tol=1e-8, v0=v0)
    order = np.argsort(vals)
    vecs = d @ vecs[:, order]                        # back from the normalised form: smooth on the surface
    vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
    vecs *= np.sign(vecs[np.abs(vecs).argmax(0), np.arange(vecs.shape[1])])   # largest entry positive
    return vecs.astype(np.float32)


def vertex_normals(points: np.ndarray, faces: np.ndarray | None, body_points: np.ndarray,
                   body_normals: np.ndarray, knn: int = 9) -> np.ndarray:
    """(P, 3) unit normals pointing away from the body: area-weighted face normals of the
    mesh, or local PCA for point clouds; each turned to agree with the nearest body normal."""
    if faces is not None and len(faces):
        f = np.asarray(faces, np.int64)
        fn = np.cross(points[f[:, 1]] - points[f[:, 0]], points[f[:, 2]] - points[f[:, 0]])
        n = np.zeros_like(points, dtype=np.float64)
        for c in range(3):
            np.add.at(n, f[:, c], fn)
    else:
        idx = cKDTree(points).query(points, k=knn)[1]
        local = points[idx] - points[idx].mean(1, keepdims=True)
        n = np.linalg.eigh(np.einsum("pki,pkj->pij", local, local))[1][:, :, 0]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    near = cKDTree(body_points).query(points)[1]
    flip = (n * body_normals[near]).sum(1) < 0
    n[flip] *= -1
    return n.astype(np.float32)


@dataclass
class Clearance:
    """Signed distance of garment points to the rest-pose body, to first order: the distance
    along the normal of the body vertex nearest to each point's starting position."""
    anchor: torch.Tensor    # (P, 3) nearest body vertex
    normal: torch.Tensor    # (P, 3) its outward unit normal

    @classmethod
    def build(cls, points: np.ndarray, body_points: np.ndarray, body_normals: np.ndarray,
              device: torch.device) -> "Clearance":
        near = cKDTree(body_points).query(points)[1]
        t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
        return cls(t(body_points[near]), t(body_normals[near]))

    def signed_distance(self, points: torch.Tensor) -> torch.Tensor:
        """(..., P) distance outside the body (negative inside) of (..., P, 3) points."""
        return ((points - self.anchor) * self.normal).sum(-1)


def body_surface(body, betas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rest-pose body vertices (V, 3) and outward unit vertex normals for these betas."""
    import trimesh
    verts = body.shaped(betas.reshape(1, -1))[0][0].detach().cpu().numpy()
    mesh = trimesh.Trimesh(verts, np.asarray(body.faces), process=False)
    return verts.astype(np.float64), np.asarray(mesh.vertex_normals, np.float64)
