"""Garments as sewing patterns, in plain numpy (no bpy): front and back panels cut from 2D
outlines, placed around the T-posed body on arrangement rings (as a cloth CAD places pieces
before sewing) and joined along their seams.

Every garment is made of *ring sections*. A section is a grid over (around t, down row); each
height row is a closed ring (an ellipse around the torso, or around a leg or an arm), and a
panel is a range of t on it: the front panel is the half facing +Z, the back panel the other
half. Side seams (front meets back) are shared vertices (pre-joined); the shoulder seam is
where the torso ring flattens over the shoulders and front and back rows meet (welded); the
armhole seam (sleeve to body) and the crotch seam are *sewing pairs*: vertex pairs the cloth
simulator pulls together with sewing springs. Outlines cut the grid: necklines, armholes, an
open jacket's centre front. Each vertex has pattern coordinates (arc length from the panel's
centre line, height) in metres, used as UVs so textures stay on the cloth.

Coordinates: SMPL rest (T-pose) space of the given betas, metres, Y up, facing +Z.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...body.joints import JOINT_INDEX
from ...body.regions import REGION_NAMES, region_labels

# Garment kinds, their label class (perception.types LABEL_*: 1 upper, 2 lower, 3 onepiece)
# and layer (outer layers get more ease so they start outside the inner ones).
UPPER_KINDS = ("tank", "tshirt", "longsleeve", "jacket")
LOWER_KINDS = ("shorts", "trousers", "skirt")
ONEPIECE_KINDS = ("dress",)
KINDS = UPPER_KINDS + LOWER_KINDS + ONEPIECE_KINDS
SHOULDER_CAP = 0.07  # height over which the torso ring closes over the shoulders (m)
STRAP = 0.045        # narrowest shoulder strap (m)
MAX_SEW = 0.15       # sewing pairs farther apart than this (m) are not sewn


@dataclass
class BodyShape:
    """What the patterns need to know about the T-posed body. vertices (V, 3), joints (24, 3),
    region (V,) index into REGION_NAMES."""
    vertices: np.ndarray
    joints: np.ndarray
    region: np.ndarray

    @classmethod
    def from_rest(cls, vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray) -> "BodyShape":
        return cls(np.asarray(vertices, np.float64), np.asarray(joints, np.float64), region_labels(weights))

    def in_regions(self, *names: str) -> np.ndarray:
        return np.isin(self.region, [REGION_NAMES.index(n) for n in names])

    def joint(self, name: str) -> np.ndarray:
        return self.joints[JOINT_INDEX[name]]

    # Landmark heights / widths (metres), all from the mesh so any betas work.
    @property
    def y_underarm(self) -> float:
        arm = self.in_regions("left_upper_arm", "right_upper_arm")
        near = arm & (np.abs(self.vertices[:, 0]) < abs(self.joint("left_shoulder")[0]) + 0.06)
        return float(self.vertices[near, 1].min()) - 0.025

    @property
    def x_arm(self) -> float:
        """Half-width at which the armhole is cut (just inside the shoulder joint)."""
        return float(abs(self.joint("left_shoulder")[0])) - 0.015

    @property
    def neck_halfwidth(self) -> float:
        return float(np.abs(self.vertices[self.in_regions("neck"), 0]).max())

    @property
    def y_waist(self) -> float:
        return float(0.5 * (self.joint("spine1")[1] + self.joint("pelvis")[1]))

    @property
    def y_crotch(self) -> float:
        """Height of the lowest body vertex on the midline (the crotch)."""
        v = self.vertices
        return float(v[np.abs(v[:, 0]) < 0.003, 1].min())

    @property
    def y_knee(self) -> float:
        return float(self.joint("left_knee")[1])

    @property
    def y_ankle(self) -> float:
        return float(self.joint("left_ankle")[1])


@dataclass
class GarmentSpec:
    """One garment: its kind and the interpretable numbers the seed draws (metres)."""
    kind: str
    ease: float = 0.02            # added around the body
    length: float = 0.5           # hem position: fraction of the kind's range (0 short .. 1 long)
    flare: float = 0.0            # skirt / dress / trouser-leg widening per metre below the hip
    sleeve: float = 0.5           # sleeve length fraction of the kind's range
    neckline: float = 0.08        # front neckline depth
    layer: int = 0                # 0 innermost

    @property
    def label_class(self) -> int:
        from ...perception.types import LABEL_LOWER, LABEL_ONEPIECE, LABEL_UPPER
        if self.kind in UPPER_KINDS:
            return LABEL_UPPER
        return LABEL_LOWER if self.kind in LOWER_KINDS else LABEL_ONEPIECE


@dataclass
class Pattern:
    """A garment ready to simulate. vertices (V, 3) rest placement, faces (F, 3), uv (F, 3, 2)
    pattern coordinates per face corner, panel (F,) panel index, pinned (V,) bool, sew (S, 2)
    vertex pairs to sew, panel_names per panel index."""
    kind: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    panel: np.ndarray
    pinned: np.ndarray
    sew: np.ndarray
    panel_names: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------
# Grids and welding


@dataclass
class _Section:
    """A grid section before cutting. points (R, C, 3) (C around), uv (P, R, C, 2) pattern
    coordinates of every grid point in each panel's frame, panel (C,) panel index per column
    of cells, keep (R-1, C') cells kept (C' = C closed, C - 1 open)."""
    points: np.ndarray
    uv: np.ndarray
    panel: np.ndarray
    keep: np.ndarray
    names: list[str]


def _section_mesh(sec: _Section, closed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> vertices (V, 3), faces (F, 3), uv (F, 3, 2), panel (F,) of the kept cells. A closed
    section wraps its last column onto the first; an open one has its own last column."""
    r, c = sec.points.shape[:2]
    idx = np.arange(r * c).reshape(r, c)
    rows, cols = np.nonzero(sec.keep)
    nxt = (cols + 1) % c if closed else cols + 1
    corners = [(rows, cols), (rows + 1, cols), (rows, nxt), (rows, nxt), (rows + 1, cols), (rows + 1, nxt)]
    flat = [idx[i, j] for i, j in corners]
    faces = np.concatenate([np.stack(flat[:3], 1), np.stack(flat[3:], 1)])
    p = sec.panel[cols]
    # UV per corner in the cell's own panel coordinates (seam vertices have one per panel).
    uv = [sec.uv[p, i, j] for i, j in corners]
    uv = np.concatenate([np.stack(uv[:3], 1), np.stack(uv[3:], 1)])
    return sec.points.reshape(-1, 3), faces, uv, np.concatenate([p, p])


def _panel_uv(points: np.ndarray, heights: np.ndarray, centres: list[int], closed: bool) -> np.ndarray:
    """(P, R, C, 2) pattern coordinates: signed arc length along each row from panel p's
    centre column (wrapping round a closed ring), and the row's height / axis position."""
    ext = np.concatenate([points, points[:, :1]], 1) if closed else points
    seg = np.linalg.norm(np.diff(ext, axis=1), axis=-1)
    arc = np.concatenate([np.zeros((len(points), 1)), np.cumsum(seg, 1)], 1)
    perim, arc = arc[:, -1:], arc[:, : points.shape[1]]
    out = []
    for cc in centres:
        d = arc - arc[:, [cc]]
        if closed:
            d = (d + perim / 2) % perim - perim / 2
        out.append(np.stack([d, np.broadcast_to(np.asarray(heights, float)[:, None], d.shape)], -1))
    return np.stack(out)


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop unreferenced vertices and weld coincident ones (< 0.5 mm): -> vertices, faces
    (possibly with degenerate ones, dropped by the caller), old->new index (-1 dropped)."""
    used = np.unique(faces)
    key = np.round(vertices[used] / 5e-4).astype(np.int64)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    remap = np.full(len(vertices), -1)
    remap[used] = inverse.reshape(-1)
    return vertices[used][first], remap[faces], remap


def boundary_vertices(faces: np.ndarray) -> np.ndarray:
    """Indices of vertices on an open boundary (edges used by one face)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    uniq, count = np.unique(edges, axis=0, return_counts=True)
    return np.unique(uniq[count == 1])


# ------------------------------------------------------------------------------------------
# Rings around the body


def _smooth_max(values: np.ndarray, k: int) -> np.ndarray:
    """Running max over ±k samples, then a running mean over ±k: a smooth upper envelope."""
    pad = np.pad(values, k, mode="edge")
    env = np.max(np.lib.stride_tricks.sliding_window_view(pad, 2 * k + 1), 1)
    pad = np.pad(env, k, mode="edge")
    return np.convolve(pad, np.ones(2 * k + 1) / (2 * k + 1), mode="valid")


def _enclose(points: np.ndarray, ys: np.ndarray, axis_a: int, axis_b: int, centre_b: bool,
             a_min: np.ndarray | None = None, band: float = 0.012) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per height ys (R,): ellipse semi-axes a, b and centre c (along axis_b) enclosing the
    points (P, 3) of each band; a is centred on 0 along axis_a. Rows without points get 0."""
    a = np.zeros(len(ys))
    b = np.zeros(len(ys))
    c = np.zeros(len(ys))
    for i, y in enumerate(ys):
        p = points[np.abs(points[:, 1] - y) < band]
        if not len(p):
            continue
        lo, hi = p[:, axis_b].min(), p[:, axis_b].max()
        c[i] = 0.5 * (lo + hi) if centre_b else 0.0
        dx, dz = np.abs(p[:, axis_a]), np.abs(p[:, axis_b] - c[i])
        # The ellipse of the points' extents, scaled until it holds them all.
        ea, eb = max(dx.max(), 0.02), max(dz.max(), 0.02)
        scale = np.sqrt((dx / ea) ** 2 + (dz / eb) ** 2).max()
        a[i] = max(scale * ea, 0.0 if a_min is None else a_min[i])
        b[i] = scale * eb
    return a, b, c


@dataclass
class Ring:
    """An arrangement ring per row: semi-axes a (R,), b (R,), centre (R, 3), heights ys (R,)."""
    ys: np.ndarray
    a: np.ndarray
    b: np.ndarray
    cz: np.ndarray


def torso_ring(body: BodyShape, y_top: float, y_hem: float, spec: GarmentSpec, res: float,
               upper: bool) -> Ring:
    """Ellipses around the torso (and both legs below the crotch) from y_top down to y_hem."""
    v = body.vertices
    ys = np.arange(y_top, y_hem - 1e-9, -res) if y_top - y_hem > res else np.array([y_top, y_hem])
    skip = body.in_regions("head", "neck", "left_hand", "right_hand", "left_lower_arm", "right_lower_arm")
    x_arm = body.x_arm
    arm = body.in_regions("left_upper_arm", "right_upper_arm")
    pts = v[~skip & ((np.abs(v[:, 0]) < x_arm) | ((v[:, 1] < body.y_underarm) & ~arm))]
    a, b, cz = _enclose(pts, ys, 0, 2, True, band=0.6 * res + 0.004)
    k = max(1, int(round(0.02 / res)))
    have = a > 0
    if upper:   # above the underarm the ring reaches past the armhole cut, so straps are cut out
        a = np.where(ys > body.y_underarm - 0.03, np.maximum(a, x_arm + 0.03), a)
    a = np.where(have, a, a[have].max() if have.any() else 0.2)
    cz = np.where(have, cz, np.interp(ys, ys[have][::-1], cz[have][::-1]) if have.any() else 0.0)
    a, b = _smooth_max(a, k), _smooth_max(b, k)
    # Below the hip the ring never narrows (a skirt hangs from the hips), then flares.
    y_hip = _hip_height(body)
    below = ys < y_hip
    if below.any() and (~below).any():
        i_hip = np.flatnonzero(~below)[-1]
        a = np.where(below, np.maximum(a, a[i_hip]), a)
        b = np.where(below, np.maximum(b, b[i_hip]), b)
    drop = np.clip(y_hip - ys, 0, None)
    a = a + spec.ease + spec.flare * drop
    b = b + spec.ease + spec.flare * drop
    if upper:   # a rounded shoulder: an elliptic cap over SHOULDER_CAP, front and back meet at y_top
        t = np.clip((y_top - ys) / SHOULDER_CAP, 0, 1)
        b = b * np.sqrt(1 - (1 - t) ** 2)
    return Ring(ys, a, b, cz)


def _hip_height(body: BodyShape) -> float:
    """Height of the widest hip between the crotch and the waist."""
    v = body.vertices
    torso = body.in_regions("torso", "left_upper_leg", "right_upper_leg")
    ys = np.arange(body.y_waist, body.y_crotch, -0.01)
    widths = [np.abs(v[torso & (np.abs(v[:, 1] - y) < 0.006), 0]).max(initial=0) for y in ys]
    return float(ys[int(np.argmax(widths))])


def ring_section(ring: Ring, res: float, names=("front", "back")) -> _Section:
    """A closed grid on the ring: column 0 at the right side seam, front half first. The
    number of columns is a multiple of 4 so front and back columns mirror exactly."""
    perim = np.pi * (3 * (ring.a + ring.b) - np.sqrt((3 * ring.a + ring.b) * (ring.a + 3 * ring.b)))
    c = max(8, int(np.ceil(perim.max() / res / 4)) * 4)
    theta = -np.pi / 2 + 2 * np.pi * np.arange(c) / c        # -90 (right side) .. front 0 .. +90 ..
    x = ring.a[:, None] * np.sin(theta)[None]
    z = ring.cz[:, None] + ring.b[:, None] * np.cos(theta)[None]
    y = np.repeat(ring.ys[:, None], c, 1)
    points = np.stack([x, y, z], -1)
    uv = _panel_uv(points, ring.ys, [c // 4, 3 * c // 4], closed=True)
    panel = np.where(np.cos(theta + np.pi / c) >= 0, 0, 1)
    keep = np.ones((len(ring.ys) - 1, c), bool)
    return _Section(points, uv, panel, keep, list(names))


def _cell_centres(sec: _Section) -> np.ndarray:
    p = sec.points
    return 0.25 * (p[:-1] + p[1:] + np.roll(p[:-1], -1, 1) + np.roll(p[1:], -1, 1))


# ------------------------------------------------------------------------------------------
# Sleeves and trouser legs


def sleeve_section(body: BodyShape, side: str, x_start: float, x_end: float, armhole: tuple[float, float, float],
                   spec: GarmentSpec, res: float) -> _Section:
    """A closed sleeve along the arm (T-pose: along ±x), from the armhole out to x_end.
    armhole = (y centre, vertical semi-axis, depth semi-axis) of the ring it is sewn to."""
    sign = 1.0 if side == "left" else -1.0
    v = body.vertices
    arm = body.in_regions(f"{side}_upper_arm", f"{side}_lower_arm") & (sign * v[:, 0] > x_start - 0.01)
    xs = np.arange(x_start, x_end + 1e-9, res) if x_end - x_start > res else np.array([x_start, x_end])
    pts = v[arm][:, [1, 0, 2]] * [1, sign, 1]       # the arm axis as "height" for _enclose
    ay, bz, cz = np.zeros(len(xs)), np.zeros(len(xs)), np.zeros(len(xs))
    cy = np.zeros(len(xs))
    for i, x in enumerate(xs):
        p = pts[np.abs(pts[:, 1] - x) < 0.6 * res + 0.004]
        if not len(p):
            ay[i], bz[i], cy[i], cz[i] = ay[i - 1], bz[i - 1], cy[i - 1], cz[i - 1]
            continue
        cy[i] = 0.5 * (p[:, 0].min() + p[:, 0].max())
        cz[i] = 0.5 * (p[:, 2].min() + p[:, 2].max())
        r = np.sqrt((p[:, 0] - cy[i]) ** 2 + (p[:, 2] - cz[i]) ** 2).max()
        ay[i] = bz[i] = r * 1.04
    k = max(1, int(round(0.02 / res)))
    ay, bz = _smooth_max(ay, k) + spec.ease * 0.7, _smooth_max(bz, k) + spec.ease * 0.7
    # Blend from the armhole ellipse to the arm over the first 8 cm.
    w = np.clip((xs - x_start) / 0.08, 0, 1)[:, None]
    hy, hay, hbz = armhole
    cy = (1 - w[:, 0]) * hy + w[:, 0] * cy
    cz = (1 - w[:, 0]) * 0.0 + w[:, 0] * cz
    ay = np.maximum((1 - w[:, 0]) * hay + w[:, 0] * ay, ay)
    bz = np.maximum((1 - w[:, 0]) * hbz + w[:, 0] * bz, bz)
    perim = np.pi * (ay + bz)
    c = max(8, int(np.ceil(perim.max() / res / 2)) * 2)
    theta = 2 * np.pi * np.arange(c) / c                     # 0 = top seam, pi = underarm seam
    y = cy[:, None] + ay[:, None] * np.cos(theta)[None]
    z = cz[:, None] + bz[:, None] * np.sin(theta)[None] * sign
    x = np.repeat(sign * xs[:, None], c, 1)
    points = np.stack([x, y, z], -1)
    uv = _panel_uv(points, xs, [c // 4, 3 * c // 4], closed=True)
    front = (np.sin(theta + np.pi / c) * sign) > 0
    panel = np.where(front, 0, 1)
    return _Section(points, uv, panel, np.ones((len(xs) - 1, c), bool),
                    [f"{side} sleeve front", f"{side} sleeve back"])


def leg_section(body: BodyShape, side: str, y_waist: float, y_hem: float, spec: GarmentSpec, res: float) -> _Section:
    """One trouser leg (front + back panel): above the crotch the left/right half of the pelvis
    ellipse, below it a closed ring around the leg, blended over a 4 cm crotch band. Column 0
    is the centre front / inseam, the last column the centre back / inseam."""
    sign = 1.0 if side == "left" else -1.0
    v = body.vertices
    y_crotch = body.y_crotch
    ys = np.arange(y_waist, y_hem - 1e-9, -res)
    pelvis = torso_ring(body, y_waist, min(y_hem, y_crotch - 0.1), spec, res, upper=False)
    a = np.interp(ys, pelvis.ys[::-1], pelvis.a[::-1])
    b = np.interp(ys, pelvis.ys[::-1], pelvis.b[::-1])
    cz0 = np.interp(ys, pelvis.ys[::-1], pelvis.cz[::-1])
    leg = body.in_regions(f"{side}_upper_leg", f"{side}_lower_leg") & (sign * v[:, 0] > 0)
    lx, lz, r = np.zeros(len(ys)), np.zeros(len(ys)), np.zeros(len(ys))
    for i, y in enumerate(ys):
        p = v[leg & (np.abs(v[:, 1] - min(y, y_crotch - 0.02)) < 0.6 * res + 0.004)]
        if len(p) < 3:            # past the leg's skin weights (ankle): keep the last ring
            lx[i], lz[i], r[i] = lx[i - 1], lz[i - 1], r[i - 1]
            continue
        lx[i] = sign * 0.5 * (p[:, 0].min() + p[:, 0].max())
        lz[i] = 0.5 * (p[:, 2].min() + p[:, 2].max())
        r[i] = np.sqrt((p[:, 0] - sign * lx[i]) ** 2 + (p[:, 2] - lz[i]) ** 2).max() * 1.04
    k = max(1, int(round(0.02 / res)))
    r = _smooth_max(r, k) + spec.ease + spec.flare * np.clip(y_crotch - ys, 0, None)
    # Across the legs the ring stops at the midline (where the thighs touch) and is deeper
    # front to back instead, so one leg's tube never runs through the other thigh.
    rx = np.minimum(r, np.maximum(lx - 0.003, 0.03))
    rz = r * np.sqrt(r / rx)
    perim = np.pi * (a + b) / 1.0
    c = max(8, int(np.ceil(max(perim.max() / 2, 2 * np.pi * r.max()) / res / 2)) * 2)
    t = np.arange(c + 1) / c                                  # closed at t=0 and t=1 (two columns)
    theta = np.pi * t
    above = np.stack([a[:, None] * np.sin(theta)[None], np.repeat(ys[:, None], c + 1, 1),
                      cz0[:, None] + b[:, None] * np.cos(theta)[None]], -1)
    phi = 2 * np.pi * t
    below = np.stack([lx[:, None] - rx[:, None] * np.cos(phi)[None], np.repeat(ys[:, None], c + 1, 1),
                      lz[:, None] + rz[:, None] * np.sin(phi)[None]], -1)
    blend = np.clip((y_crotch + 0.01 - ys) / 0.05, 0, 1)[:, None, None]
    points = (1 - blend) * above + blend * below
    points[..., 0] *= sign
    uv = _panel_uv(points, ys, [c // 4, 3 * c // 4], closed=False)
    # An open grid of c + 1 columns: the last column is not wrapped onto the first.
    panel = np.where(t[:-1] + 0.5 / c < 0.5, 0, 1)
    keep = np.ones((len(ys) - 1, c), bool)
    sec = _Section(points, uv, panel, keep, [f"{side} leg front", f"{side} leg back"])
    return sec


# ------------------------------------------------------------------------------------------
# Garments


def _upper_top(body: BodyShape) -> float:
    v = body.vertices
    skip = body.in_regions("head", "neck")
    strap = ~skip & (np.abs(v[:, 0]) < body.x_arm) & (np.abs(v[:, 0]) > body.neck_halfwidth)
    return float(v[strap, 1].max()) + 0.02


def _shoulder_height(body: BodyShape, x: np.ndarray) -> np.ndarray:
    """Height of the body's top surface (no head or neck) above |x| (any shape), plus 2 cm
    clearance: a smooth, non-increasing profile from the neck out to the shoulder tips."""
    v = body.vertices
    keep = ~body.in_regions("head", "neck") & (v[:, 1] > body.y_underarm)
    grid = np.arange(0.0, body.x_arm + 0.06, 0.01)
    top = np.array([v[keep & (np.abs(np.abs(v[:, 0]) - g) < 0.01), 1].max(initial=-np.inf) for g in grid])
    top = np.maximum.accumulate(top[::-1])[::-1] + 0.012
    top = np.where(np.isfinite(top), top, np.nanmax(top[np.isfinite(top)]))
    return np.interp(x, grid, top)


def _hem_height(body: BodyShape, spec: GarmentSpec) -> float:
    """Hem height by kind: length 0..1 spans the kind's range of hem positions."""
    hip, crotch, knee, ankle = _hip_height(body), body.y_crotch, body.y_knee, body.y_ankle
    ranges = {
        "tank": (body.y_waist - 0.02, crotch + 0.02), "tshirt": (body.y_waist - 0.03, crotch + 0.01),
        "longsleeve": (body.y_waist - 0.04, crotch), "jacket": (hip - 0.02, crotch - 0.08),
        "shorts": (crotch - 0.06, 0.5 * (crotch + knee)), "trousers": (knee - 0.6 * (knee - ankle), ankle + 0.03),
        "skirt": (0.5 * (crotch + knee), knee - 0.45 * (knee - ankle)),
        "dress": (0.5 * (crotch + knee), knee - 0.45 * (knee - ankle)),
    }
    hi, lo = ranges[spec.kind]
    return float(hi + (lo - hi) * spec.length)


def build_pattern(body: BodyShape, spec: GarmentSpec, res: float = 0.02) -> Pattern:
    """The garment `spec` as panels around `body` (T-pose), seams joined or paired for sewing."""
    if spec.kind not in KINDS:
        raise ValueError(f"garment kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.kind in ("shorts", "trousers"):
        return _trousers(body, spec, res)
    if spec.kind == "skirt":
        return _skirt(body, spec, res)
    return _top(body, spec, res)


def _finish(kind: str, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]],
            pinned_at: callable, sew_pairs: callable | None = None) -> Pattern:
    """Concatenate section meshes, weld, and collect pins and sewing pairs."""
    verts, faces, uvs, panels, names = [], [], [], [], []
    offset = 0
    for v, f, uv, panel, pnames in parts:
        verts.append(v)
        faces.append(f + offset)
        uvs.append(uv)
        panels.append(panel + len(names))
        names.extend(pnames)
        offset += len(v)
    v, f, remap = _compact(np.concatenate(verts), np.concatenate(faces))
    uv, panel = np.concatenate(uvs), np.concatenate(panels)
    good = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f, uv, panel = f[good], uv[good], panel[good]
    pinned = pinned_at(v, remap)
    sew = sew_pairs(v, f, remap) if sew_pairs else np.zeros((0, 2), np.int64)
    return Pattern(kind, v.astype(np.float32), f.astype(np.int64), uv.astype(np.float32), panel.astype(np.int32),
                   pinned, np.asarray(sew, np.int64).reshape(-1, 2), names)


def _top(body: BodyShape, spec: GarmentSpec, res: float) -> Pattern:
    """Tank, T-shirt, long sleeve, open jacket, dress: a torso ring with neckline and armholes
    cut, flattened over the shoulders (shoulder seams welded), sleeves sewn to the armholes."""
    y_top = _upper_top(body)
    y_hem = _hem_height(body, spec)
    ring = torso_ring(body, y_top, y_hem, spec, res, upper=True)
    sec = ring_section(ring, res)
    centre = _cell_centres(sec)
    x, y, z = centre[..., 0], centre[..., 1], centre[..., 2]
    cz = 0.5 * (ring.cz[:-1] + ring.cz[1:])[:, None]
    front = z > cz
    sleeveless = spec.kind in ("tank", "dress")
    x_arm = body.x_arm - (0.015 if sleeveless else 0.0)
    y_ua = body.y_underarm - (0.03 if sleeveless else 0.0)
    # Straps at least STRAP wide between the neckline and the armhole.
    neck_w = min(body.neck_halfwidth + 0.02 + (0.015 if spec.kind == "jacket" else 0.0), x_arm - STRAP)
    depth = np.where(front, spec.neckline, 0.025)
    cut = (x / neck_w) ** 2 + ((y_top - y) / depth) ** 2 < 1.0
    cut |= (np.abs(x) > x_arm) & (y > y_ua)
    if spec.kind == "jacket":
        cut |= front & (np.abs(x) < 0.02)
    sec.keep &= ~cut
    # The shoulder seam follows the shoulder's slope: lower the top rows by how far the
    # shoulder under them lies below y_top (front and back drop alike, so they still meet).
    drop = y_top - _shoulder_height(body, np.abs(sec.points[..., 0]))
    w = np.clip((sec.points[..., 1] - y_ua) / max(y_top - y_ua, 1e-6), 0, 1)
    sec.points[..., 1] -= np.clip(drop, 0, None) * w
    y_top_arm = y_top - max(0.0, float(y_top - _shoulder_height(body, np.array([x_arm]))[0]))
    parts = [(*_section_mesh(sec), sec.names)]
    sleeve_rows = {}     # side -> original indices of the sleeve's first ring (sewn to the armhole)
    if not sleeveless:
        a_y = 0.5 * (y_top_arm - y_ua)
        i = int(np.argmin(np.abs(ring.ys - (y_ua + a_y))))
        hole = (y_ua + a_y, a_y + 0.01, ring.b[i])
        wrist = abs(body.joint("left_wrist")[0]) - 0.03
        x_end = body.x_arm + 0.10 + 0.16 * spec.sleeve if spec.kind == "tshirt" else wrist
        for side in ("left", "right"):
            start = sum(len(p[0]) for p in parts)
            s = sleeve_section(body, side, x_arm + 0.01, x_end, hole, spec, res)
            parts.append((*_section_mesh(s), s.names))
            sleeve_rows[side] = start + np.arange(s.points.shape[1])
    n_torso = sec.points.shape[0] * sec.points.shape[1]

    def sew(v, f, remap):
        torso = remap[:n_torso]
        edge = np.intersect1d(boundary_vertices(f), torso[torso >= 0])
        pairs = []
        for side, ring0 in sleeve_rows.items():
            sign = 1 if side == "left" else -1
            hole_v = edge[(sign * v[edge, 0] > x_arm - 0.04) & (v[edge, 1] > y_ua - 0.03)]
            for vi in remap[ring0]:
                pairs.append((vi, hole_v[np.argmin(np.linalg.norm(v[hole_v] - v[vi], axis=1))]))
        pairs = [p for p in pairs if np.linalg.norm(v[p[0]] - v[p[1]]) < MAX_SEW]
        return np.array(pairs).reshape(-1, 2)

    def shoulders(v, remap):
        """The shoulder seam (the torso grid's top row, where front and back meet) is pinned."""
        top = remap[: sec.points.shape[1]]
        pinned = np.zeros(len(v), bool)
        pinned[top[top >= 0]] = True
        return pinned

    return _finish(spec.kind, parts, shoulders, sew)


def _skirt(body: BodyShape, spec: GarmentSpec, res: float) -> Pattern:
    y_top = body.y_waist + 0.01
    ring = torso_ring(body, y_top, _hem_height(body, spec), spec, res, upper=False)
    ring.a[:2] -= spec.ease * 0.7
    ring.b[:2] -= spec.ease * 0.7
    sec = ring_section(ring, res)
    return _finish(spec.kind, [(*_section_mesh(sec), sec.names)], lambda v, remap: v[:, 1] > y_top - 0.5 * res)


def _trousers(body: BodyShape, spec: GarmentSpec, res: float) -> Pattern:
    """Two legs of front + back panels; centre front / back seams welded above the crotch,
    inseams welded below it, the crotch band between them sewn."""
    y_top = body.y_waist + 0.01
    y_hem = _hem_height(body, spec)
    parts = []
    for side in ("left", "right"):
        sec = leg_section(body, side, y_top, y_hem, spec, res)
        parts.append((*_section_mesh(sec, closed=False), sec.names))
    n_left = len(parts[0][0])

    def sew(v, f, remap):
        left = remap[:n_left]
        right = remap[n_left:]
        edge = boundary_vertices(f)
        lb = np.intersect1d(edge, left)
        rb = np.intersect1d(edge, right)
        band = lambda ids: ids[(v[ids, 1] < body.y_crotch + 0.02) & (v[ids, 1] > body.y_crotch - 0.07)]  # noqa: E731
        pairs = []
        ll, rr = band(lb), band(rb)
        for vi in ll:    # crotch seam: each left crotch-band edge vertex to the nearest right one
            if len(rr):
                j = rr[np.argmin(np.linalg.norm(v[rr] - v[vi], axis=1))]
                pairs.append((vi, j))
        for ids in (ll, rr):   # and each leg's own front/back crotch edges (inseam top)
            front, back = ids[v[ids, 2] > np.median(v[ids, 2])], ids[v[ids, 2] <= np.median(v[ids, 2])]
            for vi in front:
                if len(back):
                    pairs.append((vi, back[np.argmin(np.linalg.norm(v[back] - v[vi], axis=1))]))
        pairs = [p for p in pairs if 1e-4 < np.linalg.norm(v[p[0]] - v[p[1]]) < MAX_SEW]
        return np.array(pairs)

    pattern = _finish(spec.kind, parts, lambda v, remap: v[:, 1] > y_top - 0.5 * res, sew)
    return pattern


# ------------------------------------------------------------------------------------------
# Penetration


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) area-weighted unit vertex normals of a mesh."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def signed_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, k: int = 8) -> np.ndarray:
    """(P,) approximate signed distance of points (P, 3) to a closed mesh, negative inside:
    among the k nearest mesh vertices, the one closest to the point sets the distance, the
    side of its tangent plane (vertex normal) the sign. Exact enough at the body's ~1 cm
    vertex spacing to measure cloth penetration in millimetres."""
    from scipy.spatial import cKDTree
    normals = vertex_normals(vertices, faces)
    dist, idx = cKDTree(vertices).query(points, k=k)
    nearest = idx[np.arange(len(points)), np.argmin(dist, 1)]
    offset = points - vertices[nearest]
    along = np.einsum("pc,pc->p", offset, normals[nearest])
    # In the tangent plane the distance is the normal component; far off it, the Euclidean one.
    return np.sign(along) * np.minimum(np.linalg.norm(offset, axis=1), np.abs(along) + 0.5 * dist.min(1))
