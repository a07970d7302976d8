"""The starting garment mesh: the part of the fitted body's surface under the clothing mask.

Which body vertices the garment covers is decided where the photo shows it and carried to where it
does not:
* a body vertex the photo sees (nearest surface at its pixel, in the body-only z-buffer) is garment
  when it projects into the (slightly dilated) clothing mask;
* a hidden vertex takes the vote of the seen vertices of its cross-section ring (the back of a
  shirt lies behind its front: a torso slice is garment when most of its seen part is);
* a ring nobody sees (the far arm behind the torso) takes its mirror image's decision across the
  body's sagittal plane (sleeves and legs come in pairs); so does a limb's ring seen only at its
  edge (less than `ring_seen_share` of it: an arm hanging behind a loose shirt shows a few
  vertices beside the torso, inside the shirt's outline, which would make the whole arm a sleeve;
  the far leg under a skirt seen obliquely shows a few vertices at the skirt's edge, outside it,
  which would end that leg's garment at the hip);
* hands, feet and the head are never garment, by dominant joint: the wrists' and ankles' vertices
  too, which lie past the wrist (the palm) and from 2-3 cm above the ankle joint down (a misfit
  hand in front of a shirt projects into its mask, an arm behind the torso too: only the seen
  rings and their mirrors speak for them; a sleeve seen over a hidden arm went on over the hand).
The selection is closed on the mesh graph (small holes behind arms and hands filled), faces with
all three corners selected are kept, tiny islands dropped. Each garment vertex remembers its body vertex: skin weights,
rest position and normal, and its mirror image across the body's sagittal plane (x = 0 in SMPL's
rest space, found once on the mean-shape template).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.spatial import cKDTree

from ..body.model import BodyModel
from ..errors import InputError
from .options import ReconOptions
from .perceive import Observation

MIRROR_MAX_DIST = 0.02     # m: a body vertex's mirror image must land this close to a vertex
NEVER_GARMENT = ("head", "left_hand", "right_hand", "left_wrist", "right_wrist", "left_foot", "right_foot",
                 "left_ankle", "right_ankle")   # dominant joints
RING_MIN_SEEN = 3          # a ring votes for its hidden vertices when it has this many seen ones
LIMB_CHAINS = (("left_shoulder", "left_elbow", "left_wrist"), ("right_shoulder", "right_elbow", "right_wrist"),
               ("left_hip", "left_knee", "left_ankle"), ("right_hip", "right_knee", "right_ankle"))
LIMB_RING_MIN = 4          # limb cross-sections with fewer vertices do not count (limb_prefix)
CROTCH_DOWN = 0.5          # a bridged skirt drops the crotch where its normal's y is below -this
LIMB_BARE_RUN = 2          # this many bare cross-sections in a row end a sleeve or trouser leg


@dataclass
class Template:
    """Garment vertices taken from the body (V garment vertices, F faces).

    body_vertex (V,) int64 the body vertex each came from; faces (F,3) int64 local, CCW outside;
    rest (V,3) float32 rest-pose positions (the fit's betas); normals (V,3) rest-pose unit normals;
    weights (V,24) skin weights; mirror (V,) local index of the mirror vertex or -1; ring (V,)
    int64 id of the vertex's cross-section ring (its dominant bone, binned along the bone);
    midline (V,) bool or None: vertices whose offsets keep x = 0 (a bridged skirt's seam, bridge.py);
    skirt_level (V,) int64 or None: a bridged skirt's leg level of each vertex (rest-pose height bins
    counted from the lowest skirt level, 0), -1 off the skirt (the skirt's depth prior, refine.MeshTerms.skirt_depth).
    """

    body_vertex: np.ndarray
    faces: np.ndarray
    rest: np.ndarray
    normals: np.ndarray
    weights: np.ndarray
    mirror: np.ndarray
    ring: np.ndarray
    midline: np.ndarray | None = None
    skirt_level: np.ndarray | None = None

    @property
    def num_vertices(self) -> int:
        return len(self.body_vertex)


def vertex_adjacency(faces: np.ndarray, n: int) -> sparse.csr_matrix:
    """(n,n) symmetric 0/1 adjacency of a triangle mesh."""
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    a = sparse.coo_matrix((np.ones(len(i), np.float32), (i, j)), shape=(n, n)).tocsr()
    a.data[:] = 1.0
    return a


def mirror_vertices(rest: np.ndarray) -> np.ndarray:
    """(V,) index of each vertex's mirror image (x -> -x), or -1 when none lies close."""
    d, idx = cKDTree(rest).query(rest * np.array([-1.0, 1.0, 1.0]))
    return np.where(d < MIRROR_MAX_DIST, idx, -1).astype(np.int64)


def bone_positions(rest: np.ndarray, weights: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                   bin_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(V,) dominant joint of each vertex and (V,) int64 bin of its position along that joint's
    bone (from the joint to its first child; a leaf joint: from its parent), `bin_size` m bins."""
    dominant = weights.argmax(1)
    child = np.full(len(joints), -1)
    for j in range(len(joints) - 1, 0, -1):
        child[parents[j]] = j
    axis = np.where((child >= 0)[:, None], joints[np.maximum(child, 0)] - joints,
                    joints - joints[np.maximum(parents, 0)])
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
    t = ((rest - joints[dominant]) * axis[dominant]).sum(1)
    return dominant, np.round(t / bin_size).astype(np.int64)


def cross_section_rings(rest: np.ndarray, weights: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                        bin_size: float) -> np.ndarray:
    """(V,) ring id: vertices of one dominant bone whose positions along the bone's axis fall in
    one `bin_size` bin (bone_positions)."""
    return ring_ids(*bone_positions(rest, weights, joints, parents, bin_size))


def ring_ids(dominant: np.ndarray, position: np.ndarray) -> np.ndarray:
    """(V,) int64 ring id from (V,) dominant joints and (V,) bins along their bones (bone_positions)."""
    key = dominant.astype(np.int64) * 100_000 + position
    return np.unique(key, return_inverse=True)[1].astype(np.int64)


def limb_prefix(sel: np.ndarray, dominant: np.ndarray, position: np.ndarray,
                chains: tuple[tuple[int, ...], ...], min_vertices: int = LIMB_RING_MIN,
                run: int = LIMB_BARE_RUN) -> np.ndarray:
    """A sleeve or trouser leg is a tube from the torso: (V,) bool garment vertices `sel` with
    everything on a limb dropped beyond the first `run` consecutive cross-sections (dominant
    joint, bin along its bone: bone_positions), walked from the torso outwards along each chain
    of joints, that are mostly not garment. A misfitted forearm over a skirt or a hand in front
    of a shirt projects into the clothing mask, but the bare upper arm between it and the torso
    says it is skin."""
    sel = sel.copy()
    for chain in chains:
        bare = 0
        cut = None
        for j in chain:
            on = dominant == j
            for b in np.unique(position[on]):
                ring = on & (position == b)
                if cut is not None:
                    sel[ring] = False
                    continue
                if ring.sum() < min_vertices:
                    continue
                bare = bare + 1 if sel[ring].mean() < 0.5 else 0
                if bare >= run:
                    cut = (j, b)
    return sel


def _close(sel: np.ndarray, adj: sparse.csr_matrix, rings: int) -> np.ndarray:
    """Morphological closing of a vertex set on the mesh graph (dilate, then erode, `rings` times)."""
    x = sel.astype(np.float32)
    for _ in range(rings):
        x = np.maximum(x, (adj @ x > 0).astype(np.float32))
    for _ in range(rings):
        outside = 1.0 - x
        x = x * (adj @ outside == 0)
    return (x > 0) | sel


def _islands(faces: np.ndarray, n: int, min_share: float) -> np.ndarray:
    """Bool (F,): faces of the connected components holding at least `min_share` of all faces."""
    adj = vertex_adjacency(faces, n)
    _, label = sparse.csgraph.connected_components(adj, directed=False)
    flab = label[faces[:, 0]]
    counts = np.bincount(flab, minlength=label.max() + 1)
    return counts[flab] >= min_share * len(faces)


def seen_vertices(posed: np.ndarray, faces: np.ndarray, K: np.ndarray, size: tuple[int, int],
                  tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Which vertices of a posed mesh (V,3) camera space the camera sees: (V,) bool seen (in the
    image, in front, within `tol` m of the z-buffer at its pixel) and (V,2) int pixel."""
    from ..render.rasterizer import rasterize
    H, W = size
    depth = rasterize(torch.as_tensor(posed, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.long),
                      torch.as_tensor(K, dtype=torch.float32), size).depth[0].numpy()
    uv = posed[:, :2] / np.maximum(posed[:, 2:3], 1e-6) * np.diag(K)[:2] + K[:2, 2]
    px = np.round(uv).astype(np.int64)
    inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (posed[:, 2] > 0)
    pxc = np.stack([np.clip(px[:, 0], 0, W - 1), np.clip(px[:, 1], 0, H - 1)], 1)
    seen = inside & (posed[:, 2] <= depth[pxc[:, 1], pxc[:, 0]] + tol)
    return seen, pxc


def garment_vertices(in_mask: np.ndarray, seen: np.ndarray, ring: np.ndarray, mirror: np.ndarray,
                     allowed: np.ndarray, min_share: float | np.ndarray = 0.0) -> np.ndarray:
    """(V,) bool garment vertices from what the photo shows (see the module docstring): in_mask,
    seen, allowed (V,) bool; ring (V,) ring ids; mirror (V,) mirror vertex or -1; min_share a
    scalar or (R,) per ring. A ring votes for its hidden vertices when it has RING_MIN_SEEN seen
    vertices and at least `min_share` of its vertices are seen; otherwise they follow their mirror
    vertex."""
    votes = np.bincount(ring, weights=(seen & in_mask).astype(np.float64), minlength=ring.max() + 1)
    counts = np.bincount(ring, weights=seen.astype(np.float64), minlength=ring.max() + 1)
    size = np.bincount(ring, minlength=ring.max() + 1)
    voted = (counts >= RING_MIN_SEEN) & (counts >= min_share * size)
    ring_says = votes > 0.5 * np.maximum(counts, 1)
    decided = seen | voted[ring]
    sel = np.where(seen, in_mask, ring_says[ring]) & decided
    m = np.maximum(mirror, 0)
    from_mirror = ~decided & (mirror >= 0) & decided[m]
    sel = np.where(from_mirror, sel[m], sel)
    return sel & allowed


def photo_skirt(obs: Observation, posed: np.ndarray, rest: np.ndarray, weights: np.ndarray,
                faces: np.ndarray, options: ReconOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Does the photo show a skirt or dress on this body? posed (V,3) camera space, rest (V,3),
    weights (V,24), faces (F,3) (`bridge_gap`, `bridge_flare`, `bridge_min_levels`, `ring_bin`) -> the legs' side
    (V,) and level (V,) (bridge.leg_levels) and the sorted skirt levels (bridge.skirt_levels;
    empty: no skirt)."""
    from ..render.rasterizer import rasterize
    from .bridge import leg_levels, skirt_levels
    side, level = leg_levels(rest, weights, options.ring_bin)
    cover = rasterize(torch.as_tensor(posed, dtype=torch.float32), torch.as_tensor(faces),
                      torch.as_tensor(obs.K, dtype=torch.float32), obs.size).mask[0].numpy()
    return side, level, skirt_levels(posed, side, level, cover, obs.mask, obs.K, options.bridge_gap,
                                     options.bridge_min_levels, options.bridge_flare or None)


def _bridged(obs: Observation, posed: np.ndarray, rest: np.ndarray, weights: np.ndarray, mirror: np.ndarray,
             faces: np.ndarray, options: ReconOptions) -> tuple[np.ndarray, ...]:
    """The body's rest vertices (V,3) and skin weights (V,24) with the legs bridged where the photo
    shows a skirt (recon/bridge.py; unchanged when it does not, or `bridge_legs` is off), the
    (F,) bool faces dropped across the legs' inner halves, the (V,) bool midline vertices, the
    (V,) int64 skirt level of each vertex (-1 off the skirt) and the (V,) bool leg vertices below
    the skirt's hem (`skirt_hem`: bridge.hem_level; never garment)."""
    from .bridge import bridge_legs, hem_level, seam_faces
    none = (np.zeros(len(faces), bool), np.zeros(len(rest), bool), np.full(len(rest), -1, np.int64),
            np.zeros(len(rest), bool))
    if not options.bridge_legs:
        return rest, weights, *none
    side, level, skirt = photo_skirt(obs, posed, rest, weights, faces, options)
    if not len(skirt):
        return rest, weights, *none
    below = np.zeros(len(rest), bool)
    if options.skirt_hem:
        cut = hem_level(posed, side, level, skirt, obs.mask, obs.K, options.skirt_depth_ratio,
                        options.bridge_min_levels)
        below = (side != 0) & np.isin(level, skirt[skirt < cut])
        skirt = skirt[skirt >= cut]
    rest_g, weights_g, half, midline = bridge_legs(rest, weights, mirror, side, level, skirt)
    skirt_level = np.where((side != 0) & np.isin(level, skirt), level - skirt.min(), -1)   # 0 = the hem
    return (rest_g, weights_g, seam_faces(faces, half) | crotch_faces(rest, weights, faces), midline, skirt_level,
            below)


def crotch_faces(rest: np.ndarray, weights: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Bool (F,): faces touching the crotch (pelvis vertices whose surface faces down, below the
    highest thigh vertex: rest (V,3), weights (V,24), faces (F,3)). Under a bridged skirt they would
    span a shelf inside the tube, from the crotch to the legs' inner halves laid on its front and
    back lines."""
    from ..body.joints import JOINT_INDEX
    from ..render.soft import vertex_normals
    normals = vertex_normals(torch.as_tensor(rest), torch.as_tensor(faces)).numpy()
    dominant = weights.argmax(1)
    hips = rest[np.isin(dominant, [JOINT_INDEX["left_hip"], JOINT_INDEX["right_hip"]]), 1].max(initial=0.0)
    crotch = (dominant == JOINT_INDEX["pelvis"]) & (normals[:, 1] < -CROTCH_DOWN) & (rest[:, 1] < hips)
    return crotch[faces].any(1)


def body_region_template(obs: Observation, body: BodyModel, options: ReconOptions,
                         mirror: np.ndarray | None = None) -> Template:
    """The body surface under the clothing mask as a garment mesh (see the module docstring)."""
    import cv2

    from ..body.joints import JOINT_INDEX
    with torch.no_grad():
        posed = obs.posed_body(body)[0].cpu().numpy()                         # (Vb,3) camera space
        rest_t, joints_t = body.shaped(obs.betas)
        rest, joints = rest_t[0].cpu().numpy(), joints_t[0].cpu().numpy()
    k = 2 * options.mask_dilate_px + 1
    mask = cv2.dilate(obs.mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    faces_b = body.faces.astype(np.int64)
    seen, px = seen_vertices(posed, faces_b, obs.K, mask.shape, options.visible_depth_tol)
    mirror_b = mirror_vertices(rest) if mirror is None else mirror
    dominant, position = bone_positions(rest, body.weights_np, joints, body.parents, options.ring_bin)
    rings_b = ring_ids(dominant, position)
    allowed = ~np.isin(body.weights_np.argmax(1), [JOINT_INDEX[n] for n in NEVER_GARMENT])
    chains = tuple(tuple(JOINT_INDEX[n] for n in c) for c in LIMB_CHAINS)
    limb_ring = np.zeros(rings_b.max() + 1, bool)
    limb_ring[rings_b[np.isin(dominant, np.concatenate(chains))]] = True
    sel = garment_vertices(mask[px[:, 1], px[:, 0]], seen, rings_b, mirror_b, allowed,
                           np.where(limb_ring, options.ring_seen_share, 0.0))
    sel = _close(sel, vertex_adjacency(faces_b, len(posed)), rings=2) & allowed
    if options.limb_prefix:
        sel = limb_prefix(sel, dominant, position, chains)
    rest_g, weights_g, seam, midline, skirt_level, below = _bridged(obs, posed, rest, body.weights_np, mirror_b,
                                                                    faces_b, options)
    keep = (sel & ~below)[faces_b].all(1) & ~seam
    if keep.sum() >= options.min_faces:
        keep[keep] = _islands(faces_b[keep], len(posed), 0.02)
    if keep.sum() < options.min_faces:
        raise InputError(f"the clothing mask covers only {int(keep.sum())} faces of the fitted body",
                         file=obs.mask_file, field="mask",
                         hint="the mask must cover the person's clothing in this image")
    used = np.unique(faces_b[keep])
    local = np.full(len(posed), -1, np.int64)
    local[used] = np.arange(len(used))
    faces = local[faces_b[keep]]
    from ..render.soft import vertex_normals
    normals = vertex_normals(torch.as_tensor(rest_g), torch.as_tensor(faces_b[~seam])).numpy()[used]
    mid = midline[used]                      # the seam's ease stays on the midline (front or back)
    normals[mid] = np.stack([0 * normals[mid, 0], normals[mid, 1], np.where(normals[mid, 2] < 0, -1.0, 1.0)], 1)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)
    m = mirror_b[used]
    mirror_local = np.where(m >= 0, local[np.maximum(m, 0)], -1)
    return Template(body_vertex=used, faces=faces, rest=rest_g[used].astype(np.float32),
                    normals=normals.astype(np.float32), weights=weights_g[used].astype(np.float32),
                    mirror=mirror_local.astype(np.int64), midline=midline[used] if midline.any() else None,
                    skirt_level=skirt_level[used] if midline.any() else None,
                    ring=cross_section_rings(rest[used], body.weights_np[used], joints, body.parents,
                                             options.ring_bin))
