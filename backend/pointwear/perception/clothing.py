"""Clothing masks and garment labels: clothing = person minus skin, face and hair.

Method (every number is in ClothingOptions; scripts/tune_clothing.py measures it against the
truth masks of synthetic subjects):

1. Crop the person's box and downscale it so the person is `work_height` px tall.
2. Seeds from the landmarks. Always not clothing: the head (an ellipse around the face landmarks,
   sized from the torso) and the hands (discs past the wrists). Skin colour: the face centre
   (unless MediaPipe's depths say we see the back of the head) and the hands. Clothing: the torso
   core (inside the shoulder-hip quad, away from the arms) and the tops of the thighs.
3. Colour evidence: Gaussian mixtures in a lightness-damped Lab space; the clothing density is
   mixed with a flat one, so colours unlike skin count as clothing even if no seed showed them.
4. Limbs: along each arm and leg the garment runs from the body to one cut, skin beyond it. The
   cut maximises the colour evidence before it minus after it, per bin along the limb; a limb
   prior (+ before the cut, - after it) is added to the colour log-odds.
5. GrabCut (OpenCV) refines the split with a contrast-sensitive smoothness term; regions of
   colours the clothing elsewhere never shows that reach into a hand are held objects (a ball).
6. The clothing probability is upsampled and edge-refined on the full-resolution crop with a
   guided filter, cut with the person mask and cleaned (small islands dropped, small holes
   filled, head and hands always excluded).
7. Labels: upper / lower garment colour models seeded above / below the hip line; when their
   colour histograms agree the clothing is one piece (a dress), else each clothing pixel takes
   the likelier garment, weighted by its distance from the hip line.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InputError
from .types import LABEL_LOWER, LABEL_ONEPIECE, LABEL_UPPER, LANDMARK_INDEX, NUM_LANDMARKS

_L = LANDMARK_INDEX
FACE_IDS = tuple(range(0, 11))                       # nose, eyes, ears, mouth
HAND_IDS = {"left": (_L["left_wrist"], _L["left_pinky"], _L["left_index"], _L["left_thumb"]),
            "right": (_L["right_wrist"], _L["right_pinky"], _L["right_index"], _L["right_thumb"])}


@dataclass
class ClothingOptions:
    work_height: int = 280          # person height (px) at the working resolution
    crop_margin: float = 0.06       # margin around the person's box, share of its long side
    min_visibility: float = 0.5     # a landmark counts when its visibility is at least this
    # Geometry, in units of the torso length (shoulder centre to hip centre).
    head_radius: float = 0.36       # half the head's height
    head_aspect: float = 0.8        # head width / height
    head_lift: float = 0.15         # the head ellipse's centre sits this far above the face landmarks
    hand_radius: float = 0.7        # hand disc radius, in units of wrist -> finger-tip-centre length
    hand_reach: float = 0.3         # the hand disc's centre sits this far past the finger centre
    torso_core_top: float = 0.25    # torso seed starts this far down from the shoulder line (0..1)
    torso_core_bottom: float = 0.9  # ... and ends here (1 = hip line)
    torso_core_width: float = 0.55  # ... and spans this share of the shoulder/hip width
    torso_core_min: float = 0.15    # ... and is at least this wide each side of the spine (side views)
    thigh_core_length: float = 0.3  # thigh seed: hip -> knee share
    thigh_core_radius: float = 0.1  # thigh seed radius
    arm_seed_gap: float = 0.12      # clothing seeds keep this far from the visible arms' bones
    # Colour models.
    lightness_weight: float = 0.5   # Lab L is multiplied by this (shading varies more than chroma)
    clothing_components: int = 4    # Gaussian mixture components for clothing seeds
    skin_components: int = 2        # ... for skin seeds (face centre, hands)
    skin_trim: float = 0.8          # keep this share of skin seeds nearest their median colour
    face_seed_radius: float = 0.07  # face skin seed: disc between nose and mouth (torso units)
    facing_min: float = -0.1        # the face seeds are used when the nose is this much nearer the
                                    # camera than the ears (MediaPipe z, torso units): a front view
    hand_seed_radius: float = 0.5   # hand skin seed: disc at the finger centre, wrist-finger units
    skin_min_chroma: float = 5.0    # skin's Lab chroma is at least this (synthetic skin in the
                                    # deepest shade: 6.4; dark jeans ~2-4)
    skin_hue_range: tuple[float, float] = (0.0, 100.0)   # and its Lab hue (deg) lies in here
                                    # (skin 24-62 measured; blue jeans about -80)
    implausible_bonus: float = 2.0  # log-odds for clothing added where a colour cannot be skin
    covariance_floor: float = 4.0   # added to each covariance's diagonal (Lab units squared)
    max_seed_pixels: int = 4000     # seeds are subsampled to at most this many per class
    # Clothing of colours never seen in its seeds (a lower garment hidden at the thighs) must still
    # beat skin: the clothing density is mixed with a flat one over the whole colour space.
    unseen_log_density: float = -14.5   # log of that flat density (1 / Lab volume ~ 2e6)
    unseen_weight: float = 0.5          # its share in the clothing density
    # Limbs: the garment on an arm or leg runs from the body out to one cut, skin beyond it.
    limb_bins: int = 24             # bins along each limb for the cut search
    limb_radius_arm: float = 0.14   # arm pixels lie within this of the shoulder-elbow-wrist line
    limb_radius_leg: float = 0.2    # leg pixels within this of hip-knee-ankle-toe
    torso_radius: float = 0.15      # torso pixels within this of the shoulder-hip quad
    limb_prior: float = 6.0         # log-odds added for clothing before the cut, taken off after it
    limb_soft: float = 0.08         # the prior ramps over this much of the limb around the cut
    limb_cloth_share: float = 0.35  # a limb bin is clothed when more of its pixels look like clothing
    evidence_clip: float = 4.0      # colour log-likelihood ratios are clipped to +- this
    # Held objects: colours near a hand that the rest of the clothing never shows.
    object_reach: float = 0.5       # within this of a hand's centre (torso units)
    object_seed_gap: float = 0.5    # clothing seeds closer than this to a hand are not trusted
    object_margin: float = 0.0      # log-likelihood below the flat density by at least this
    # GrabCut and refinement.
    grabcut_height: int = 280       # GrabCut runs where the person is at most this tall (px)
    grabcut_iterations: int = 1     # 0 = no GrabCut: threshold the colour likelihood ratio
    refine_height: int = 1200       # edges are refined where the person is at most this tall (px)
    guided_radius: float = 0.012    # guided filter radius, share of the person's height
    guided_eps: float = 1e-3        # guided filter regulariser (intensities in 0..1)
    min_island: float = 0.01        # drop clothing islands smaller than this share of the clothing
    max_hole: float = 0.004         # fill holes smaller than this share of the person
    # Labels.
    onepiece_distance: float = 0.5   # upper vs lower seed colour histogram distance (Bhattacharyya,
                                     # 0..1) below which the clothing is one piece (a dress)
    label_seed_offset: float = 0.3   # label seeds lie this far above / below the hip line (torso units)
    label_slope: float = 8.0         # log-odds for "upper" per torso length above the hip line
    label_components: int = 3        # mixture components per garment colour model
    label_min_seed: float = 0.02     # a garment needs seeds over this share of the clothing pixels
    label_smooth: float = 0.03       # label log-odds are blurred over this share of the person height


@dataclass
class ClothingResult:
    mask: np.ndarray        # (H, W) bool, clothing
    labels: np.ndarray      # (H, W) uint8: LABEL_UPPER / LABEL_LOWER / LABEL_ONEPIECE, 0 = not clothing
    skin: np.ndarray        # (H, W) bool
    hair: np.ndarray        # (H, W) bool
    confidence: float       # 0..1


# ----------------------------------------------------------------------------------------------
# Geometric helpers (all return masks of the given shape; points may lie outside the image)


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Filled convex hull of points (K, 2) px as a (H, W) bool mask; non-finite points skipped.
    Points are clamped to 4x the image size first (OpenCV's int32 fixed-point coordinates)."""
    h, w = shape
    out = np.zeros((h, w), np.uint8)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    if len(pts) == 0:
        return out.astype(bool)
    big = 4.0 * (h + w)      # keep cv2's int32 coordinates well inside range
    pts = np.clip(pts, -big, big)
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
    cv2.fillConvexPoly(out, hull, 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def ellipse_mask(center: np.ndarray, axes: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels inside the axis-aligned ellipse with semi-axes (ax, ay) at center (x, y)."""
    h, w = shape
    ax, ay = max(float(axes[0]), 1e-6), max(float(axes[1]), 1e-6)
    cx, cy = float(center[0]), float(center[1])
    if not (np.isfinite(cx) and np.isfinite(cy)):
        return np.zeros((h, w), bool)
    y = (np.arange(h, dtype=np.float32) - cy)[:, None] / ay
    x = (np.arange(w, dtype=np.float32) - cx)[None, :] / ax
    return x * x + y * y <= 1.0


def capsule_mask(a: np.ndarray, b: np.ndarray, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels within `radius` of the segment a-b (points (x, y) px)."""
    h, w = shape
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or radius <= 0:
        return np.zeros((h, w), bool)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    d = (b - a).astype(np.float32)
    dd = float(d @ d)
    t = np.zeros_like(xs) if dd < 1e-12 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / dd, 0, 1)
    px, py = a[0] + t * d[0] - xs, a[1] + t * d[1] - ys
    return px * px + py * py <= radius * radius


# ----------------------------------------------------------------------------------------------
# Colour models


@dataclass
class _Gmm:
    means: np.ndarray      # (K, D)
    whiten: np.ndarray     # (K, D, D): (x - mean) @ whiten[k] has identity covariance
    log_norm: np.ndarray   # (K,) log weight - 0.5 log det cov - D/2 log 2 pi


def _trim(x: np.ndarray, keep: float) -> np.ndarray:
    """The share `keep` of samples x (N, D) nearest their median (robust to stray seed pixels)."""
    if len(x) < 8 or keep >= 1.0:
        return x
    d = np.abs(x - np.median(x, 0)).sum(1)
    return x[d <= np.quantile(d, keep)]


def fit_gmm(x: np.ndarray, k: int, floor: float, rng: np.random.Generator) -> _Gmm | None:
    """Gaussian mixture of samples x (N, D) by k-means + per-cluster covariances, or None."""
    n, dim = x.shape
    if n < 8:
        return None
    k = max(1, min(k, n // 8))
    x = x.astype(np.float32)
    if k > 1:
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        cv2.setRNGSeed(int(rng.integers(1 << 30)))
        _, lab, _ = cv2.kmeans(x, k, None, crit, 1, cv2.KMEANS_PP_CENTERS)
        lab = lab.ravel()
    else:
        lab = np.zeros(n, np.int32)
    means, invs, norms = [], [], []
    for j in range(k):
        xj = x[lab == j].astype(np.float64)
        if len(xj) < 3:
            continue
        mu = xj.mean(0)
        cov = np.cov(xj, rowvar=False).reshape(dim, dim) + floor * np.eye(dim)
        sign, logdet = np.linalg.slogdet(cov)
        means.append(mu)
        invs.append(np.linalg.cholesky(np.linalg.inv(cov)))
        norms.append(np.log(len(xj) / n) - 0.5 * logdet - 0.5 * dim * np.log(2 * np.pi))
    if not means:
        return None
    return _Gmm(np.array(means, np.float32), np.array(invs, np.float32), np.array(norms, np.float32))


def gmm_loglik(g: _Gmm, x: np.ndarray) -> np.ndarray:
    """Log-likelihood (N,) of samples x (N, D) under the mixture."""
    x = np.asarray(x, np.float32)
    ll = np.empty((len(x), len(g.means)), np.float32)
    for k in range(len(g.means)):
        y = (x - g.means[k]) @ g.whiten[k]
        ll[:, k] = g.log_norm[k] - 0.5 * (y * y).sum(1)
    top = ll.max(1)
    return top + np.log(np.exp(ll - top[:, None]).sum(1))


def skin_plausible(feats: np.ndarray, o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: colours skin can have under any lighting: a warm hue (red to yellow) with some
    chroma. feats (H, W, 3) from colour_features (a, b unscaled)."""
    a, b = feats[..., 1], feats[..., 2]
    hue = np.degrees(np.arctan2(b, a))
    return (a * a + b * b >= o.skin_min_chroma ** 2) & (hue >= o.skin_hue_range[0]) & (hue <= o.skin_hue_range[1])


def colour_features(rgb: np.ndarray, lightness_weight: float) -> np.ndarray:
    """(H, W, 3) float32 Lab with L scaled by lightness_weight (L 0..100, a/b about -100..100)."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    lab[..., 0] *= lightness_weight
    return lab


# ----------------------------------------------------------------------------------------------
# Landmark geometry


@dataclass
class _Body:
    """Landmarks (33, 2) px in working coordinates with visibility, and derived sizes."""
    pts: np.ndarray
    vis: np.ndarray
    torso: float                        # shoulder-centre to hip-centre length, px
    min_vis: float
    z: np.ndarray                       # (33,) MediaPipe relative depth, px

    def ok(self, *ids: int) -> bool:
        return bool(np.all(self.vis[list(ids)] >= self.min_vis))

    def p(self, name: str) -> np.ndarray:
        return self.pts[_L[name]]


def _body(pts: np.ndarray, z: np.ndarray, vis: np.ndarray, person_height: float, min_vis: float) -> _Body:
    """Landmarks pts (33, 2) px, z (33,) px and vis (33,) -> _Body with its torso length."""
    vis = np.nan_to_num(np.asarray(vis, np.float64), nan=0.0)
    sh = (pts[_L["left_shoulder"]] + pts[_L["right_shoulder"]]) / 2
    hp = (pts[_L["left_hip"]] + pts[_L["right_hip"]]) / 2
    torso = float(np.linalg.norm(sh - hp))
    # A torso much shorter than a person's usual ~30 % of height is a bad detection or a
    # foreshortened torso: fall back on the person's height.
    if not np.isfinite(torso) or torso < 0.18 * person_height:
        torso = 0.3 * person_height
    return _Body(np.asarray(pts, np.float64), vis, torso, min_vis, np.asarray(z, np.float64))


def head_region(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: an ellipse around the face landmarks, head-sized, plus their convex hull."""
    face = b.pts[list(FACE_IDS)]
    face = face[np.isfinite(face).all(1)]
    if len(face) == 0:
        return np.zeros(shape, bool)
    r = o.head_radius * b.torso
    centre = face.mean(0) - np.array([0.0, o.head_lift * b.torso])
    return ellipse_mask(centre, (o.head_aspect * r, r), shape) | polygon_mask(face, shape)


def hand_regions(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: a disc over each visible hand (past the wrist, along the fingers)."""
    out = np.zeros(shape, bool)
    for ids in HAND_IDS.values():
        if not b.ok(ids[0]) or not b.ok(*ids[1:]):
            continue
        wrist, fingers = b.pts[ids[0]], b.pts[list(ids[1:])].mean(0)
        length = float(np.linalg.norm(fingers - wrist))
        length = max(length, 0.08 * b.torso)
        direction = (fingers - wrist) / max(np.linalg.norm(fingers - wrist), 1e-6)
        centre = fingers + o.hand_reach * length * direction
        r = o.hand_radius * length + 0.04 * b.torso
        out |= ellipse_mask(centre, (r, r), shape) | polygon_mask(b.pts[list(ids)], shape)
    return out


def skin_seeds(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: where skin is expected: the face centre (front views only) and the hands."""
    out = np.zeros(shape, bool)
    nose, mouth = b.p("nose"), (b.p("mouth_left") + b.p("mouth_right")) / 2
    ears_z = (b.z[_L["left_ear"]] + b.z[_L["right_ear"]]) / 2
    facing = (ears_z - b.z[_L["nose"]]) / max(b.torso, 1e-6)
    if np.isfinite(facing) and facing > o.facing_min and b.ok(_L["nose"], _L["mouth_left"], _L["mouth_right"]):
        r = o.face_seed_radius * b.torso
        out |= ellipse_mask((nose + mouth) / 2, (r, r), shape)
    for ids in HAND_IDS.values():
        if not b.ok(*ids):
            continue
        wrist, fingers = b.pts[ids[0]], b.pts[list(ids[1:])].mean(0)
        r = o.hand_seed_radius * max(float(np.linalg.norm(fingers - wrist)), 0.05 * b.torso)
        out |= ellipse_mask(fingers, (r, r), shape)
    return out


def torso_core(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: the inner part of the shoulder-hip quad (nearly always clothed)."""
    ls, rs, lh, rh = (b.p(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    if not np.isfinite(np.stack([ls, rs, lh, rh])).all():
        return np.zeros(shape, bool)
    top_l, top_r = ls + o.torso_core_top * (lh - ls), rs + o.torso_core_top * (rh - rs)
    bot_l, bot_r = ls + o.torso_core_bottom * (lh - ls), rs + o.torso_core_bottom * (rh - rs)
    quad = np.stack([top_l, top_r, bot_r, bot_l])
    c = quad.mean(0)
    quad = c + o.torso_core_width * (quad - c)
    # Keep a minimum width so a side view still has a seed.
    width = o.torso_core_min * b.torso
    return polygon_mask(quad, shape) | capsule_mask((top_l + top_r) / 2, (bot_l + bot_r) / 2, width, shape)


def arms(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: capsules over the visible arms (kept out of the torso's clothing seed: in a
    side view the arm hangs in front of the torso)."""
    out = np.zeros(shape, bool)
    for side in ("left", "right"):
        ids = [_L[f"{side}_{j}"] for j in ("shoulder", "elbow", "wrist")]
        if not b.ok(*ids[1:]):
            continue
        r = o.arm_seed_gap * b.torso
        out |= capsule_mask(b.pts[ids[0]], b.pts[ids[1]], r, shape) | capsule_mask(b.pts[ids[1]], b.pts[ids[2]], r, shape)
    return out


def thigh_core(b: _Body, shape: tuple[int, int], o: ClothingOptions) -> np.ndarray:
    """(H, W) bool: the tops of the thighs (hip towards knee), clothed in every outfit we know."""
    out = np.zeros(shape, bool)
    for side in ("left", "right"):
        hip, knee = b.p(f"{side}_hip"), b.p(f"{side}_knee")
        if not b.ok(_L[f"{side}_knee"]):
            continue
        out |= capsule_mask(hip, hip + o.thigh_core_length * (knee - hip), o.thigh_core_radius * b.torso, shape)
    return out


LIMB_CHAINS = {
    "left_arm": (("left_shoulder", "left_elbow", "left_wrist"), "arm"),
    "right_arm": (("right_shoulder", "right_elbow", "right_wrist"), "arm"),
    "left_leg": (("left_hip", "left_knee", "left_ankle", "left_foot_index"), "leg"),
    "right_leg": (("right_hip", "right_knee", "right_ankle", "right_foot_index"), "leg"),
}


def polyline_coords(px: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance (N,) of points px (N, 2) to the polyline chain (M, 2), and the arc-length
    position t (N,) in [0, 1] of the nearest point on it."""
    px = np.asarray(px, np.float32)
    chain = np.asarray(chain, np.float32)
    lens = np.sqrt(((chain[1:] - chain[:-1]) ** 2).sum(1))
    total = max(float(lens.sum()), 1e-6)
    best_d2 = np.full(len(px), np.inf, np.float32)
    best_t = np.zeros(len(px), np.float32)
    start = 0.0
    for a, b, length in zip(chain[:-1], chain[1:], lens):
        dx, dy = float(b[0] - a[0]), float(b[1] - a[1])
        rx, ry = px[:, 0] - a[0], px[:, 1] - a[1]
        u = np.clip((rx * dx + ry * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        ex, ey = rx - u * dx, ry - u * dy
        d2 = ex * ex + ey * ey
        better = d2 < best_d2
        best_d2 = np.where(better, d2, best_d2)
        best_t = np.where(better, (start + u * float(length)) / total, best_t)
        start += float(length)
    return np.sqrt(best_d2), np.clip(best_t, 0.0, 1.0)


def quad_distance(px: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Distance (N,) of points px (N, 2) to the convex polygon quad (M, 2); 0 inside."""
    closed = np.concatenate([quad, quad[:1]])
    dist, _ = polyline_coords(px, closed)
    # inside test: same side of every edge (either winding)
    pos = np.ones(len(px), bool)
    neg = np.ones(len(px), bool)
    for a, b in zip(closed[:-1], closed[1:]):
        cross = (b[0] - a[0]) * (px[:, 1] - a[1]) - (b[1] - a[1]) * (px[:, 0] - a[0])
        pos &= cross >= 0
        neg &= cross <= 0
    inside = pos | neg
    return np.where(inside, 0.0, dist)


def best_cut(evidence: np.ndarray, bins: np.ndarray, n_bins: int, cloth_share: float) -> float:
    """Where along a limb (0..1) clothing gives way to skin.

    evidence (N,) per pixel log-odds for clothing, bins (N,) its bin along the limb. A bin scores
    its mean clothing probability minus cloth_share (a patterned garment with some skin-like
    colour still scores as clothing); the cut maximises the scores before it minus those after
    it (empty bins count 0)."""
    p = 1.0 / (1.0 + np.exp(-evidence))
    sums = np.bincount(bins, p, minlength=n_bins)[:n_bins]
    counts = np.bincount(bins, minlength=n_bins)[:n_bins]
    means = np.where(counts > 2, sums / np.maximum(counts, 1) - cloth_share, 0.0)
    score = np.concatenate([[0.0], np.cumsum(means)])                   # cut after c bins
    return float(np.argmax(score)) / n_bins


@dataclass
class _Parts:
    """Which body part owns each working pixel, and the limbs' cuts."""
    names: list[str]        # part names; "torso" or a LIMB_CHAINS key
    owner: np.ndarray       # (H, W) int8 index into names, -1 = none (head, hands, far pixels)
    t: np.ndarray           # (H, W) float32 position along the owning limb, 0 at the body
    cuts: dict[str, float]  # limb -> where its garment ends (0..1)

    def mask(self, kind: str) -> np.ndarray:
        """(H, W) bool: pixels owned by a part whose name contains `kind` ("arm", "leg", "torso")."""
        ids = [k for k, n in enumerate(self.names) if kind in n]
        return np.isin(self.owner, ids) if ids else np.zeros(self.owner.shape, bool)


def limb_prior(b: _Body, person: np.ndarray, evidence: np.ndarray,
               o: ClothingOptions) -> tuple[np.ndarray, _Parts]:
    """(H, W) float log-odds for clothing from the limbs: + before each limb's cut, - after it;
    and the part ownership. person (H, W) bool; evidence (H, W) clipped colour log-likelihood ratio."""
    h, w = person.shape
    idx = np.flatnonzero(person.ravel())
    px = np.stack([idx % w, idx // w], 1).astype(np.float64)
    ev = evidence.ravel()[idx]
    # the cut is judged on pixels off the silhouette's edge (edge pixels blend with the background)
    inner = cv2.erode(person.astype(np.uint8), np.ones((3, 3), np.uint8)).ravel()[idx].astype(bool)
    names, dists, ts = [], [], []
    quad = np.stack([b.p("left_shoulder"), b.p("right_shoulder"), b.p("right_hip"), b.p("left_hip")])
    if np.isfinite(quad).all():
        names.append("torso")
        dists.append(quad_distance(px, quad) / (o.torso_radius * b.torso))
        ts.append(np.zeros(len(px)))
    for name, (joints, kind) in LIMB_CHAINS.items():
        chain = np.stack([b.p(j) for j in joints])
        if not np.isfinite(chain).all():
            continue
        radius = (o.limb_radius_arm if kind == "arm" else o.limb_radius_leg) * b.torso
        d, t = polyline_coords(px, chain)
        names.append(name)
        dists.append(d / radius)
        ts.append(t)
    prior = np.zeros(h * w, np.float32)
    owner_map = np.full(h * w, -1, np.int8)
    t_map = np.zeros(h * w, np.float32)
    cuts: dict[str, float] = {}
    if not names:
        return prior.reshape(h, w), _Parts(names, owner_map.reshape(h, w), t_map.reshape(h, w), cuts)
    dists_a = np.stack(dists)
    owner = dists_a.argmin(0)
    owned = dists_a.min(0) < 1.0
    owner_map[idx] = np.where(owned, owner, -1)
    t_map[idx] = np.take_along_axis(np.stack(ts), owner[None], 0)[0]
    for k, name in enumerate(names):
        if name == "torso":
            continue
        sel = owned & (owner == k)
        if sel.sum() < 8:
            continue
        t = ts[k][sel]
        bins = np.minimum((t * o.limb_bins).astype(np.int64), o.limb_bins - 1)
        core = sel & inner
        cut = best_cut(ev[core], bins[core[sel]], o.limb_bins, o.limb_cloth_share)
        prior[idx[sel]] = o.limb_prior * np.clip((cut - t) / o.limb_soft, -1.0, 1.0)
        cuts[name] = cut
    return prior.reshape(h, w), _Parts(names, owner_map.reshape(h, w), t_map.reshape(h, w), cuts)


# ----------------------------------------------------------------------------------------------
# Main entry


def _check_inputs(rgb, person, landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}", field="rgb")
    person = np.asarray(person)
    if person.shape != rgb.shape[:2]:
        raise InputError(f"person mask {person.shape} does not match the image {rgb.shape[:2]}",
                         field="person")
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (NUM_LANDMARKS, 4):
        raise InputError(f"expected ({NUM_LANDMARKS}, 4) landmarks, got {landmarks.shape}",
                         field="landmarks")
    return rgb, person.astype(bool), landmarks


def _empty(shape: tuple[int, int]) -> ClothingResult:
    z = np.zeros(shape, bool)
    return ClothingResult(z, np.zeros(shape, np.uint8), z.copy(), z.copy(), 0.0)


@dataclass
class _Work:
    """The working-resolution analysis of one frame (see `_analyse`)."""
    box: tuple[int, int, int, int]   # y0, y1, x0, x1 of the crop in the frame
    height: float                    # person height in the frame, px
    small: np.ndarray                # (h, w, 3) uint8 downscaled crop
    person: np.ndarray               # (h, w) bool
    feats: np.ndarray                # (h, w, 3) float32 colour features
    body: _Body                      # landmarks in working px
    head: np.ndarray                 # (h, w) bool, always not clothing
    hands: np.ndarray                # (h, w) bool, always not clothing
    cloth_seed: np.ndarray           # (h, w) bool
    skin_seed: np.ndarray            # (h, w) bool
    ratio: np.ndarray                # (h, w) float32 clipped colour log-odds clothing : skin
    logit: np.ndarray                # (h, w) float32 ratio + limb prior
    prob: np.ndarray                 # (h, w) float32 clothing probability after GrabCut
    parts: _Parts
    skin_seen: bool                  # skin seeds came from a face or hands (not the head fallback)


def _analyse(rgb: np.ndarray, person: np.ndarray, landmarks: np.ndarray, o: ClothingOptions) -> _Work | None:
    """Steps 1-4 of the module docstring at working resolution; None without a person."""
    H, W = person.shape
    ys, xs = np.nonzero(person)
    if len(ys) < 64:
        return None
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    m = int(round(o.crop_margin * max(y1 - y0, x1 - x0)))
    y0, y1, x0, x1 = max(0, y0 - m), min(H, y1 + m), max(0, x0 - m), min(W, x1 + m)
    height = float(ys.max() - ys.min() + 1)
    scale = min(1.0, o.work_height / height)
    hs, ws = max(8, int(round((y1 - y0) * scale))), max(8, int(round((x1 - x0) * scale)))
    small = cv2.resize(rgb[y0:y1, x0:x1], (ws, hs), interpolation=cv2.INTER_AREA)
    small_person = cv2.resize(person[y0:y1, x0:x1].astype(np.float32), (ws, hs),
                              interpolation=cv2.INTER_AREA) > 0.5
    sx, sy = ws / (x1 - x0), hs / (y1 - y0)
    pts = (landmarks[:, :2] - np.array([x0, y0])) * np.array([sx, sy])
    b = _body(pts, landmarks[:, 2] * sx, landmarks[:, 3], height * sy, o.min_visibility)
    shape = (hs, ws)

    # 2. seeds
    head = head_region(b, shape, o) & small_person
    hands = hand_regions(b, shape, o) & small_person
    inner = cv2.erode(small_person.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cloth_seed = ((torso_core(b, shape, o) | thigh_core(b, shape, o)) & inner
                  & ~head & ~hands & ~arms(b, shape, o))
    feats = colour_features(small, o.lightness_weight)
    plausible = skin_plausible(feats, o)
    # a face in deep shadow or a gloved hand must not teach the skin model dark jeans
    skin_seed = skin_seeds(b, shape, o) & inner & ~cloth_seed & plausible
    skin_seen = int(skin_seed.sum()) >= 16
    if not skin_seen:                  # no face or hand seen: the head's skin-like colours stand in
        skin_seed = head & inner & plausible

    # 3. colour models
    flat = feats.reshape(-1, 3)
    rng = np.random.default_rng(0)
    g_cloth = fit_gmm(_samples(flat, cloth_seed, o.max_seed_pixels, rng), o.clothing_components,
                      o.covariance_floor, rng)
    g_skin = fit_gmm(_trim(_samples(flat, skin_seed, o.max_seed_pixels, rng), o.skin_trim),
                     o.skin_components, o.covariance_floor, rng)
    inside = np.flatnonzero(small_person.ravel())
    ratio = np.zeros(hs * ws, np.float32)
    if g_skin is not None:
        lc = np.full(len(inside), np.log(o.unseen_weight) + o.unseen_log_density, np.float32)
        if g_cloth is not None:
            lc = np.logaddexp(np.log1p(-o.unseen_weight) + gmm_loglik(g_cloth, flat[inside]), lc)
        ratio[inside] = lc - gmm_loglik(g_skin, flat[inside])
    elif g_cloth is not None:
        ratio[inside] = o.evidence_clip
    ratio = ratio.reshape(shape) + np.where(plausible, 0.0, o.implausible_bonus)
    ratio = np.clip(ratio, -o.evidence_clip, o.evidence_clip).astype(np.float32)
    prior, parts = limb_prior(b, small_person, ratio, o)
    logit = ratio + prior

    # 4. GrabCut
    prob = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    if o.grabcut_iterations > 0 and g_skin is not None:
        gc = np.where(logit > 0, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        gc[logit > o.evidence_clip] = cv2.GC_FGD
        gc[logit < -o.evidence_clip] = cv2.GC_BGD
        gc[~small_person | head | hands] = cv2.GC_BGD
        gc[cloth_seed] = cv2.GC_FGD
        fg = _grabcut(small, gc, min(1.0, o.grabcut_height / (height * scale)), o.grabcut_iterations)
        if fg is not None:
            prob = np.where(fg > 0.5, np.maximum(prob, 0.75), np.minimum(prob, 0.25)).astype(np.float32)
    prob[~small_person | head | hands] = 0.0
    held = held_objects(b, feats, prob, small_person, cloth_seed, o, rng)
    prob[held] = 0.0
    return _Work((y0, y1, x0, x1), height, small, small_person, feats, b, head, hands, cloth_seed,
                 skin_seed, ratio, logit, prob, parts, skin_seen)


def held_objects(b: _Body, feats: np.ndarray, prob: np.ndarray, person: np.ndarray, seeds: np.ndarray,
                 o: ClothingOptions, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: things held in the hands (a ball, a bag) that the person mask took in.

    Regions of colours that neither the clothing away from the hands nor the clothing seeds away
    from them (torso, thighs) show (less likely under their colour model than under the flat
    "unseen" density) and that reach within `object_reach` of a hand."""
    near = np.zeros(person.shape, bool)
    close = np.zeros(person.shape, bool)
    for ids in HAND_IDS.values():
        if b.ok(*ids[1:]):
            centre = b.pts[list(ids[1:])].mean(0)
            r, r_seed = o.object_reach * b.torso, o.object_seed_gap * b.torso
            near |= ellipse_mask(centre, (r, r), person.shape)
            close |= ellipse_mask(centre, (r_seed, r_seed), person.shape)
    near &= person
    if not near.any():
        return near
    far = ((prob > 0.5) & person & ~near) | (seeds & ~close)
    flat = feats.reshape(-1, 3)
    g = fit_gmm(_samples(flat, far, o.max_seed_pixels, rng), o.clothing_components + 1, o.covariance_floor, rng)
    if g is None:
        return np.zeros(person.shape, bool)
    idx = np.flatnonzero(((prob > 0.5) & person).ravel())
    unseen = np.zeros(person.size, np.uint8)
    unseen[idx] = gmm_loglik(g, flat[idx]) < o.unseen_log_density - o.object_margin
    unseen = unseen.reshape(person.shape)
    # an object is an unseen-colour region that reaches into a hand's reach
    n, lab = cv2.connectedComponents(unseen, connectivity=8)
    hit = np.zeros(n, bool)
    hit[np.unique(lab[near & (unseen > 0)])] = True
    hit[0] = False
    return hit[lab]


def _samples(flat: np.ndarray, sel: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of flat (N, D) where sel (H, W) is set, at most `limit` of them (random subset)."""
    idx = np.flatnonzero(sel.ravel())
    if len(idx) > limit:
        idx = rng.choice(idx, limit, replace=False)
    return flat[idx]


def clothing_mask(rgb: np.ndarray, person: np.ndarray, landmarks: np.ndarray,
                  options: ClothingOptions | None = None) -> ClothingResult:
    """Clothing mask, garment labels, skin and hair of one frame.

    rgb (H, W, 3) uint8; person (H, W) bool; landmarks (33, 4) float: x px, y px, z (MediaPipe
    relative depth, px), visibility 0..1. Landmarks that MediaPipe did not see should carry a low
    visibility; non-finite ones are ignored. Raises InputError for wrong shapes or dtypes.
    """
    o = options or ClothingOptions()
    rgb, person, landmarks = _check_inputs(rgb, person, landmarks)
    H, W = person.shape
    work = _analyse(rgb, person, landmarks, o)
    if work is None:
        return _empty((H, W))
    y0, y1, x0, x1 = work.box
    ch, cw = y1 - y0, x1 - x0
    crop_rgb, crop_person = rgb[y0:y1, x0:x1], person[y0:y1, x0:x1]

    # 5. upsample, refine edges on the full-resolution crop (at most refine_height), clean
    rs = min(1.0, o.refine_height / work.height)
    rw, rh = max(8, int(round(cw * rs))), max(8, int(round(ch * rs)))
    guide = crop_rgb if rs == 1.0 else cv2.resize(crop_rgb, (rw, rh), interpolation=cv2.INTER_AREA)
    radius = max(1, int(round(o.guided_radius * work.height * rs)))
    up = cv2.resize(work.prob, (rw, rh), interpolation=cv2.INTER_LINEAR)
    up = cv2.ximgproc.guidedFilter(guide.astype(np.float32) / 255.0, up, radius, o.guided_eps)
    if rs < 1.0:
        up = cv2.resize(up, (cw, ch), interpolation=cv2.INTER_LINEAR)
    forbidden = cv2.resize((work.head | work.hands).astype(np.uint8), (cw, ch),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    crop_mask = _clean((up > 0.5) & crop_person & ~forbidden, crop_person, forbidden, o)

    # 6. labels
    upper_logit, kind = garment_split(work, o)
    crop_labels = np.zeros((ch, cw), np.uint8)
    if kind == "onepiece":
        crop_labels[crop_mask] = LABEL_ONEPIECE
    elif kind in ("upper", "lower"):
        crop_labels[crop_mask] = LABEL_UPPER if kind == "upper" else LABEL_LOWER
    else:
        up_lab = cv2.resize(upper_logit, (cw, ch), interpolation=cv2.INTER_LINEAR)
        crop_labels[crop_mask] = np.where(up_lab[crop_mask] > 0, LABEL_UPPER, LABEL_LOWER)

    # hair: the head's pixels that are not skin-coloured
    head_full = cv2.resize(work.head.astype(np.uint8), (cw, ch), interpolation=cv2.INTER_NEAREST).astype(bool)
    not_skin = cv2.resize(work.ratio, (cw, ch), interpolation=cv2.INTER_LINEAR) > 0

    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = crop_mask
    labels = np.zeros((H, W), np.uint8)
    labels[y0:y1, x0:x1] = crop_labels
    hair = np.zeros((H, W), bool)
    hair[y0:y1, x0:x1] = head_full & crop_person & ~crop_mask & not_skin
    skin = person & ~mask & ~hair
    return ClothingResult(mask, labels, skin, hair, _confidence(work))


def _confidence(work: _Work) -> float:
    """0..1: how decided the clothing / not-clothing split is over the person (mean |2p - 1|),
    halved when no face or hand gave skin colour, and scaled by the torso's landmark visibility."""
    p = work.prob[work.person]
    if p.size == 0:
        return 0.0
    decided = float(np.mean(np.abs(2.0 * p - 1.0)))
    torso_ids = [_L[n] for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")]
    vis = float(np.clip(np.mean(work.body.vis[torso_ids]), 0.0, 1.0))
    return float(np.clip(decided * vis * (1.0 if work.skin_seen else 0.5), 0.0, 1.0))


def garment_split(work: _Work, o: ClothingOptions) -> tuple[np.ndarray, str]:
    """Upper / lower log-odds (h, w) at working resolution and what the clothing is:
    "two" (upper and lower garments: the log-odds decide), "onepiece", "upper" or "lower" alone."""
    b = work.body
    shape = work.person.shape
    cloth = (work.prob > 0.5) & work.person
    zero = np.zeros(shape, np.float32)
    # signed distance below the hip line, in torso lengths (negative above it)
    sh = (b.p("left_shoulder") + b.p("right_shoulder")) / 2
    hp = (b.p("left_hip") + b.p("right_hip")) / 2
    if not np.isfinite(hp).all():       # no hips: half-way down the person
        ys = np.nonzero(work.person)[0]
        hp = np.array([shape[1] / 2, (ys.min() + ys.max()) / 2 if len(ys) else shape[0] / 2])
    down = hp - sh
    down = down / max(float(np.linalg.norm(down)), 1e-6)
    if not np.isfinite(down).all():
        down = np.array([0.0, 1.0])
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    below = ((xx - hp[0]) * down[0] + (yy - hp[1]) * down[1]) / b.torso
    n_cloth = int(cloth.sum())
    if n_cloth < 16:                    # too little clothing to model: the hip line decides
        return (-o.label_slope * below).astype(np.float32), "two"
    legs, arms_ = work.parts.mask("leg"), work.parts.mask("arm")
    upper_seed = cloth & (below < -o.label_seed_offset) & ~legs
    lower_seed = cloth & (below > o.label_seed_offset) & ~arms_
    need = max(16, o.label_min_seed * n_cloth)
    has_up, has_low = upper_seed.sum() >= need, lower_seed.sum() >= need
    if not has_low:
        return zero + 1.0, "upper" if has_up or (below[cloth] < 0).mean() > 0.5 else "lower"
    if not has_up:
        return zero - 1.0, "lower"
    if hist_distance(work.feats, upper_seed, lower_seed) < o.onepiece_distance:
        return zero, "onepiece"
    flat = work.feats.reshape(-1, 3)
    rng = np.random.default_rng(1)
    g_up = fit_gmm(_samples(flat, upper_seed, o.max_seed_pixels, rng), o.label_components, o.covariance_floor, rng)
    g_low = fit_gmm(_samples(flat, lower_seed, o.max_seed_pixels, rng), o.label_components, o.covariance_floor, rng)
    logit = -o.label_slope * below
    idx = np.flatnonzero(cloth.ravel())
    if g_up is not None and g_low is not None:
        ev = gmm_loglik(g_up, flat[idx]) - gmm_loglik(g_low, flat[idx])
        logit.ravel()[idx] += np.clip(ev, -o.evidence_clip, o.evidence_clip)
    # smooth within the clothing (normalised blur) so single pixels follow their neighbours
    k = max(1, int(round(o.label_smooth * work.person.shape[0])))
    wgt = cv2.blur(cloth.astype(np.float32), (2 * k + 1, 2 * k + 1))
    logit = cv2.blur(np.where(cloth, logit, 0).astype(np.float32), (2 * k + 1, 2 * k + 1)) / np.maximum(wgt, 1e-6)
    return logit.astype(np.float32), "two"


def hist_distance(feats: np.ndarray, a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """Bhattacharyya distance (0 same .. 1 disjoint) between the colour histograms of the pixels
    of feats (H, W, 3) under masks a and b (H, W) bool."""
    ranges = [0.0, 60.0, -90.0, 90.0, -90.0, 90.0]
    img = np.ascontiguousarray(feats, np.float32)
    ha = cv2.calcHist([img], [0, 1, 2], a.astype(np.uint8), [bins] * 3, ranges)
    hb = cv2.calcHist([img], [0, 1, 2], b.astype(np.uint8), [bins] * 3, ranges)
    return float(cv2.compareHist(ha, hb, cv2.HISTCMP_BHATTACHARYYA))


def _grabcut(image: np.ndarray, gc: np.ndarray, scale: float, iterations: int) -> np.ndarray | None:
    """GrabCut of image (H, W, 3) uint8 from the GC_* label map gc (H, W), run at `scale`;
    -> (H, W) float32 foreground share, or None when GrabCut cannot run (no fg or bg)."""
    h, w = gc.shape
    if scale < 1.0:
        size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        gc = cv2.resize(gc, size, interpolation=cv2.INTER_NEAREST)
    try:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(image, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.float32)
    return cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) if scale < 1.0 else fg


def _clean(mask: np.ndarray, person: np.ndarray, forbidden: np.ndarray, o: ClothingOptions) -> np.ndarray:
    """Drop islands smaller than min_island of the clothing; fill holes smaller than max_hole of
    the person that do not touch the border and are not forbidden (head, hands)."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.zeros(n, bool)
        keep[1:] = areas >= o.min_island * areas.sum()
        mask = keep[lab]
    n, lab, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    if n > 1:
        small = np.zeros(n, bool)
        small[1:] = stats[1:, cv2.CC_STAT_AREA] < o.max_hole * person.sum()
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        small[border] = False
        mask = mask | (small[lab] & ~forbidden & person)
    return mask
