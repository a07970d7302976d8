"""Skirts and dresses on the body-surface template: where the photo shows clothing across the gap
between the legs, the two leg tubes become one hanging tube.

The body-surface template makes a skirt of two leg tubes whose inner surfaces lie inside the
skirt's cone (docs/recon.md). Per level of the legs (rest-pose height bins of `ring_bin`), the
pixels on the segment between the legs' posed centres at that level that the fitted body does not
cover are the gap between the legs in the photo:
* a level is *bridged* when that gap is at least `bridge_gap` wide (m, at the legs' depth) and
  clothing (the mask) covers it (all but `GAP_BARE` of it): trousers' ease can close a few
  centimetres just below the crotch, a skirt spans the knees; a side view or closed legs show
  no gap and decide nothing there;
* seen from the side (the legs one behind the other), a level is also bridged when the image row
  through the legs holds at least `bridge_flare` of clothing off the body, in front of and behind
  them (trousers' ease stays well under it);
* given at least `bridge_min_levels` bridged levels, every leg level from the lowest bridged
  one up to the crotch is skirt, but none below the skirt's hem in the photo (`hem_level`: the
  legs hidden behind a long skirt's front are not garment).
At a skirt level each leg's inner half (facing the other leg) is laid onto the front and back
lines of the two legs' hull (a stadium: the outer half circles joined by straight lines at the
legs' front-most and back-most depth), reaching the sagittal plane (x = 0) at its middle; the
faces across the inner half (front to back) are dropped, so the two halves meet at the midline
front and back as one tube (their innermost vertices stay on x = 0 while refining). Skin weights there blend towards the mirror vertex's (the other
leg's), half and half at the midline, so the two halves move together when the legs part.
"""
from __future__ import annotations

import numpy as np

from ..body.joints import JOINT_INDEX

LEG_JOINTS = {1: ("left_hip", "left_knee"), -1: ("right_hip", "right_knee")}   # SMPL left is +x
GAP_BARE = 0.1      # share of the gap's pixels that may show no clothing on a bridged level


def leg_levels(rest: np.ndarray, weights: np.ndarray, bin_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Side (V,) int: +1 left thigh/shin, -1 right, 0 elsewhere (dominant joint); level (V,) int:
    the rest-pose height bin."""
    dominant = weights.argmax(1)
    side = np.zeros(len(rest), np.int64)
    for s, names in LEG_JOINTS.items():
        side[np.isin(dominant, [JOINT_INDEX[n] for n in names])] = s
    return side, np.floor(rest[:, 1] / bin_size).astype(np.int64)


def skirt_levels(posed: np.ndarray, side: np.ndarray, level: np.ndarray, body_cover: np.ndarray,
                 mask: np.ndarray, K: np.ndarray, min_gap: float, min_bridged: int,
                 min_flare: float | None = None) -> np.ndarray:
    """Sorted int array of the skirt levels (see the module docstring). posed (V,3) camera space;
    body_cover, mask (H,W) bool; K (3,3); min_gap: m of the gap between the body's legs a level
    needs to count as bridged; min_flare (m, None: off): a level also counts when the image row
    through its legs' centres, along the run of person pixels holding both legs, shows at least
    this much clothing off the body (a skirt seen from the side flares in front of and behind the
    legs; trousers' ease does not reach it)."""
    H, W = mask.shape
    levels = np.intersect1d(level[side == 1], level[side == -1])
    bridged = np.zeros(len(levels), bool)
    for k, lv in enumerate(levels):
        cl, cr = (posed[(side == s) & (level == lv)].mean(0) for s in (1, -1))
        if min(cl[2], cr[2]) <= 0:
            continue
        pl, pr = (c[:2] / c[2] * np.diag(K)[:2] + K[:2, 2] for c in (cl, cr))
        n = int(np.ceil(np.abs(pr - pl).max())) + 1
        px = np.round(pl[None] + np.linspace(0.0, 1.0, n)[:, None] * (pr - pl)[None]).astype(np.int64)
        px = px[(px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H)]
        free = ~body_cover[px[:, 1], px[:, 0]]
        bare = int((free & ~mask[px[:, 1], px[:, 0]]).sum())
        depth = 0.5 * (cl[2] + cr[2])
        gap_m = free.sum() * depth / K[0, 0]
        bridged[k] = gap_m >= min_gap and bare <= GAP_BARE * free.sum()
        if not bridged[k] and min_flare is not None:
            bridged[k] = flare_m(body_cover, mask, pl, pr) * depth / K[0, 0] >= min_flare
    if bridged.sum() < min_bridged:
        return np.zeros(0, np.int64)
    return levels[levels >= levels[bridged].min()]


def mask_run(mask: np.ndarray, u: int, v: int) -> tuple[int, int] | None:
    """The run of mask pixels on row v holding pixel (u, v): (first, last) columns, inclusive;
    None where (u, v) lies off the image or off the mask."""
    H, W = mask.shape
    if not (0 <= u < W and 0 <= v < H) or not mask[v, u]:
        return None
    bare = np.nonzero(~mask[v])[0]
    return int(bare[bare < u].max(initial=-1)) + 1, int(bare[bare > u].min(initial=W)) - 1


def photo_half_width(c: np.ndarray, mask: np.ndarray, K: np.ndarray) -> float:
    """c (3,) a point in camera space -> the half width (m, at c's depth) of the run of mask
    pixels on c's image row that holds c's pixel (mask_run); nan where c projects off the mask."""
    if c[2] <= 0:
        return float("nan")
    u, v = (int(round(x)) for x in c[:2] / c[2] * np.diag(K)[:2] + K[:2, 2])
    run = mask_run(mask, u, v)
    return float("nan") if run is None else 0.5 * (run[1] - run[0] + 1) * c[2] / K[0, 0]


def level_centres(posed: np.ndarray, side: np.ndarray, level: np.ndarray, skirt: np.ndarray) -> np.ndarray:
    """(L,3): the mean posed position of both legs' vertices at each skirt level."""
    return np.stack([posed[(side != 0) & (level == lv)].mean(0) for lv in skirt])


def hem_level(posed: np.ndarray, side: np.ndarray, level: np.ndarray, skirt: np.ndarray, mask: np.ndarray,
              K: np.ndarray, depth_ratio: float, min_levels: int) -> int:
    """The lowest skirt level (int) that still lies above the skirt's hem in the photo. posed (V,3)
    camera space; side, level (V,); skirt (L,) sorted levels; mask (H,W) bool; K (3,3). Inside a
    long skirt the legs run on below its hem, hidden behind its front (seen from above, the front
    edge of the hem is lower in the image than its sides). A level's front point is the legs'
    centre brought `depth_ratio` of the mask's half width at its row nearer the camera (as the
    refinement's depth prior will place it) or to the legs' front, whichever is nearer; the skirt
    ends at the lowest level whose front point projects onto the mask (a level higher up that
    misses it, a misfitted knee, cuts nothing). At least the top `min_levels` are kept."""
    H, W = mask.shape
    centres = level_centres(posed, side, level, skirt)
    for k in range(len(skirt) - min_levels):
        c = centres[k]
        half_w = photo_half_width(c, mask, K)
        if not np.isfinite(half_w):
            continue
        z = min(c[2] - depth_ratio * half_w, posed[(side != 0) & (level == skirt[k]), 2].min())
        uf, vf = (int(round(x)) for x in c[:2] / z * np.diag(K)[:2] + K[:2, 2])
        if 0 <= uf < W and 0 <= vf < H and mask[vf, uf]:
            return int(skirt[k])
    return int(skirt[max(len(skirt) - min_levels, 0)])


def flare_m(body_cover: np.ndarray, mask: np.ndarray, pl: np.ndarray, pr: np.ndarray) -> int:
    """Clothing pixels off the body (int) on the image row through the middle of the legs' centres
    pl, pr (2,) px, along the run of body-or-clothing pixels that holds both; 0 when bare pixels
    part them or the row leaves the image."""
    H, W = mask.shape
    y = int(round(0.5 * (pl[1] + pr[1])))
    x0, x1 = sorted(int(round(x)) for x in (pl[0], pr[0]))
    if not (0 <= y < H and 0 <= x0 and x1 < W):
        return 0
    occ = mask[y] | body_cover[y]
    if not occ[x0:x1 + 1].all():
        return 0
    bare = np.nonzero(~occ)[0]
    a = bare[bare < x0].max(initial=-1) + 1
    b = bare[bare > x1].min(initial=W)
    return int((mask[y, a:b] & ~body_cover[y, a:b]).sum())


def bridge_legs(rest: np.ndarray, weights: np.ndarray, mirror: np.ndarray, side: np.ndarray,
                level: np.ndarray, skirt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The legs' inner halves at the skirt levels laid onto the stadium (module docstring).
    rest (V,3), weights (V,24), mirror (V,) (-1: none), side, level (V,), skirt (L,) levels ->
    new rest (V,3), new weights (V,24), half (V,) int: +1 moved onto the front line, -1 onto the
    back line, 0 unmoved; midline (V,) bool: the innermost vertex of each line, on x = 0 (the
    refinement keeps it there: the two halves are not joined by faces, so they must not part)."""
    w0, rest, weights = weights, rest.copy(), weights.copy()
    half = np.zeros(len(rest), np.int64)
    midline = np.zeros(len(rest), bool)
    for s in (1, -1):
        for lv in skirt:
            idx = np.nonzero((side == s) & (level == lv))[0]
            c = rest[idx].mean(0)
            zf, zb = rest[idx, 2].max(), rest[idx, 2].min()
            x, z = rest[idx, 0], rest[idx, 2]
            inward = (x - c[0]) * -s
            inner = inward > 0
            alpha = np.arctan2(inward, z - c[2])                # 0 front .. pi back, inner half
            front = alpha < np.pi / 2
            t = np.where(front, alpha, np.pi - alpha)
            for f in (True, False):      # the innermost vertex of each line reaches the midline
                on = inner & (front == f)
                t[on] /= max(t[on].max(initial=0.0), 1e-9)
            line = np.where(front, zf, zb)
            sel = idx[inner]
            ti = t[inner]
            rest[sel, 0] = x[inner] * (1 - ti)
            rest[sel, 2] = z[inner] + (line[inner] - z[inner]) * np.minimum(1.0, 2 * ti)
            half[sel] = np.where(front[inner], 1, -1)
            midline[sel] = ti > 1 - 1e-6
            m = mirror[sel]
            beta = np.where(m >= 0, 0.5 * ti, 0.0)[:, None]
            weights[sel] = (1 - beta) * w0[sel] + beta * w0[np.maximum(m, 0)]
    return rest, weights, half, midline


def seam_faces(faces: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Bool (F,): faces with corners on both the front and the back line (across a leg's inner
    half, the wall they would make inside the skirt)."""
    h = half[faces]
    return (h == 1).any(1) & (h == -1).any(1)
