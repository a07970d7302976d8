"""`reconstruct --fast`: the learned model's one forward pass (learned.py) put on the fitted body.

The network predicts, from the photo and its clothing mask, a garment mesh in the SMPL rest space
of the mean-shape body (its template's vertices carry SMPL skin weights), a texture sampled from the
photo through its texture flow (UVs of the template: the back is the mirrored front) and 9 SH light
coefficients. Its own camera is not needed: prepare's body fit already places the body in the
photo's camera, so the mesh is moved onto the fitted body instead:

    the mesh is split `FAST_SUBDIVIDE` times (each triangle into 4 at its edge midpoints; UVs
    likewise): the template's long edges would otherwise cut through the curved body between
    vertices that lie outside it
    rest     = predicted rest + (shaped(betas) - shaped(0))[nearest body vertex]   (the fit's shape)
    rest    += max(0, start_offset - gap along the body normal) * normal            (ease, no penetration)
    posed    = LBS with the nearest body vertex's skin weights and pose correctives, in the photo's
               camera (the garment moves with the body surface under it, so it stays outside)

As a `Template` (body_vertex = nearest body vertex; mirror = the template's own left/right
pairs; cross-section rings as for the body-surface template) the same mesh is also where the
per-image refinement starts with `--fast --refine`.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..body.model import BodyModel
from .learned import Prediction, ReconNet, predict
from .options import ReconOptions
from .perceive import Observation
from .refine import Refined, _Problem, crop_view
from .template import Template, cross_section_rings

# SH basis order of render/soft.sh_basis: 1, y, z, x, xy, yz, 3z^2-1, xz, x^2-y^2. The learned
# light is evaluated with y up / z towards the camera, the photo's with OpenCV axes (y down,
# z forward): flipping y and z changes the sign of the terms odd in y + z.
SH_OPENCV_SIGN = np.array([1, -1, -1, 1, -1, 1, 1, -1, 1], np.float32)
FAST_SUBDIVIDE = 2


def subdivide(verts: np.ndarray, faces: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each triangle into 4 at its edge midpoints: (V,3), (F,3), (V,2) -> (V',3), (4F,3),
    (V',2); shared edges share their midpoint, orientation kept."""
    V = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(e, axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    mid = V + inv.reshape(3, -1).T                                  # (F,3) midpoints of edges 01, 12, 20
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.concatenate([np.stack([a, ab, ca], 1), np.stack([ab, b, bc], 1),
                                np.stack([ca, bc, c], 1), np.stack([ab, bc, ca], 1)])
    new_verts = np.concatenate([verts, verts[uniq].mean(1)])
    new_uv = np.concatenate([uv, uv[uniq].mean(1)])
    return new_verts, new_faces.astype(faces.dtype), new_uv.astype(uv.dtype)


def learned_prediction(net: ReconNet, obs: Observation, options: ReconOptions) -> tuple[Prediction, float]:
    """One forward pass on the photo and its clothing mask; (prediction, seconds)."""
    t0 = time.perf_counter()
    pred = predict(net, obs.image, obs.mask, texture_size=(options.texture_size, max(8, options.texture_size // 2)))
    return pred, time.perf_counter() - t0


def learned_template(pred: Prediction, obs: Observation, body: BodyModel, options: ReconOptions
                     ) -> tuple[Template, np.ndarray]:
    """The predicted garment in the rest space of the fitted body (see the module docstring) and
    its UVs (V,2)."""
    from ..render.soft import vertex_normals
    with torch.no_grad():
        mean_rest = body.shaped(None)[0][0].cpu().numpy()
        rest_t, joints_t = body.shaped(obs.betas)
        rest_b, joints = rest_t[0].cpu().numpy(), joints_t[0].cpu().numpy()
        body_normals = vertex_normals(rest_t[0], body.faces_t.to(rest_t.device)).cpu().numpy()
    verts, faces, uv = pred.rest_vertices.astype(np.float64), pred.faces.astype(np.int64), pred.uv
    for _ in range(FAST_SUBDIVIDE):
        verts, faces, uv = subdivide(verts, faces, uv)
    _, bv = cKDTree(mean_rest).query(verts)
    verts = verts + (rest_b - mean_rest)[bv]
    n = body_normals[bv]
    gap = ((verts - rest_b[bv]) * n).sum(1)
    verts = verts + np.maximum(0.0, options.start_offset - gap)[:, None] * n
    normals = vertex_normals(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces)).numpy()
    mirror = _mirror_pairs(verts)
    weights = body.weights_np[bv].astype(np.float32)
    return Template(body_vertex=bv.astype(np.int64), faces=faces, rest=verts.astype(np.float32),
                    normals=normals.astype(np.float32), weights=weights, mirror=mirror,
                    ring=cross_section_rings(verts, weights, joints, body.parents, options.ring_bin)), uv


def _mirror_pairs(verts: np.ndarray) -> np.ndarray:
    """(V,) the vertex nearest each vertex's mirror image (x -> -x) when it is mutual, else -1."""
    _, m = cKDTree(verts).query(verts * np.array([-1.0, 1.0, 1.0]))
    return np.where(m[m] == np.arange(len(m)), m, -1).astype(np.int64)


def place(obs: Observation, body: BodyModel, template: Template, pred: Prediction, options: ReconOptions,
          seconds: float) -> Refined:
    """The learned garment as it is (no refinement), posed on the fitted body in the photo."""
    o = replace(options, start_offset=0.0)
    prob = _Problem(obs, body, template, crop_view(obs, 64, body.device), o)
    with torch.no_grad():
        posed = prob.posed(prob.start)
    V = template.num_vertices
    return Refined(rest=template.rest.copy(), posed=posed.cpu().numpy().astype(np.float32),
                   albedo=np.zeros((V, 3), np.float32), sh=pred.light * SH_OPENCV_SIGN,
                   offsets=np.zeros((V, 3), np.float32), history=[], seconds=seconds)
