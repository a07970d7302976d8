"""The procedural garment generator: an outfit is a few garments (top, trousers, skirt, dress),
each a set of tube pieces around body axes described by a handful of interpretable numbers
(sleeve length, hem length, neckline, ease, flare). Geometry is a differentiable function of
those numbers (torch); `Detail` adds what lies outside them (folds, uneven hems) so that fitting
the parametric model to a synthetic subject is not a tautology."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from ..body.joints import JOINT_INDEX as J
from .body_frame import BodyFrame
from .fields import Axis, RadiusField

from .families import ADDED_LATER, FAMILIES, LEGACY_OUTFITS as OUTFITS, outfit_families, outfit_name

GARMENT_KINDS = ("top", "trousers", "skirt", "dress", "jacket", "hoodie", "jumpsuit")
# Grid resolution (along the axis, around it) of each kind of piece: fixed, so a garment's
# topology never changes with its parameters.
GRID = {"torso": (56, 64), "sleeve": (24, 24), "waist": (12, 64), "leg": (44, 32), "hang": (64, 72),
        "hood": (20, 32)}


@dataclass
class GarmentParams:
    """Interpretable garment parameters. Lengths are fractions: `sleeve` of shoulder->wrist
    (0 = sleeveless), `hem` of neck->crotch for tops and of hip->ankle (trousers) or
    crotch->ankle (skirts, dresses) for the rest; `waist` of neck->crotch; `neckline` and
    `ease` in metres; `flare` is the skirt's outward slope below the hips; `opening` the angle
    (radians) of a jacket's open front (0 = closed) at the chest, `widen` how much wider
    (radians) it is open at the hem (the fronts fall apart towards the hem); `hood` a hood's height as a fraction of the
    neck -> crown distance (0 = none); `loose` a top's widening (metres per metre) below the
    armpits and along the sleeves: boxy and kimono cuts that hang away from waist and arms;
    `armhole` the depth (metres) of a sleeveless one-piece's armholes below the shoulder joints
    (0 = none: the body covers the shoulders out to the arms) and `strap` the straps' outer edge
    (the armhole's inner edge) as a share of the shoulder joints' half-width: a sundress or slip
    dress hangs from straps, its sides open from there outwards down to the armhole's bottom;
    `taper` how far in (a share of the same half-width) the armhole's inner edge has come at the
    armhole's bottom, linearly from `strap` at the shoulder joints' height: a strap that sits out
    on the shoulder above an armhole cut deep into the side below it (0: a straight edge);
    `fall` how far (metres per metre below the widest hips) a skirt's or dress's front and back
    come in towards the legs while its sides hang out: simulated cloth hangs from the hips'
    width, so its cross-section below them is wider than it is deep."""
    kind: str
    sleeve: float = 0.0
    hem: float = 1.0
    waist: float = 0.62
    neckline: float = 0.06
    ease: float = 0.015
    flare: float = 0.0
    opening: float = 0.0
    hood: float = 0.0
    loose: float = 0.0
    armhole: float = 0.0
    strap: float = 0.75
    taper: float = 0.0
    widen: float = 0.0
    fall: float = 0.0


@dataclass
class Detail:
    """Geometry outside the parameters: folds (sum of sinusoids) and an uneven hem."""
    wrinkle_amp: float = 0.0
    hem_asym: float = 0.0
    seed: int = 0


@dataclass
class Piece:
    name: str
    axis: Axis
    field: RadiusField
    s_start: float | torch.Tensor
    s_end: float | torch.Tensor
    grid: tuple[int, int]
    ease: Callable[[torch.Tensor], torch.Tensor]
    regions: tuple[str, ...]
    hanging: bool = False
    # (start, end) angle around the axis for a piece that is not a closed tube (an open jacket
    # front, a hood): the grid then spans it edge to edge instead of wrapping around.
    phi_range: tuple | None = None
    # (s, angle): below s, an open piece's phi_range narrows from both edges, growing linearly
    # to `angle` radians in all at its end (a jacket's fronts falling apart towards the hem).
    phi_widen: tuple | None = None
    # How much the piece exists, 0..1 (differentiable): a sleeve kept as a stub for a fixed
    # topology (`keep_sleeves`) fades out as it shortens, so its points, crowded on the shoulder
    # ring, neither pull a sleeveless fit nor show in the silhouette losses.
    presence: float | torch.Tensor = 1.0
    # How much the piece hangs from the hips instead of following knees and shins, 0..1 (read
    # on the host only when skin weights are made): loose cloth below the hips swings with the
    # thigh, it does not bend at the knee the way a leg does.
    hang: float | torch.Tensor = 0.0
    # Holes cut out of the piece (armholes), as a presence factor per vertex: rest-pose vertices
    # (..., n_s, n_phi, 3) -> (..., n_s, n_phi) in 0..1, differentiable in the parameters only.
    cut: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The radius changing with the angle around the axis: (s, phi, radius) -> radius, all
    # (..., n_s, n_phi); a hanging piece's front and back falling in (`_falling`).
    shape: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


@dataclass
class GarmentMesh:
    vertices: torch.Tensor        # (V, 3) rest pose, differentiable in the parameters; (C, V, 3) batched
    faces: np.ndarray             # (F, 3)
    weights: np.ndarray           # (V, 24) skin weights; (C, V, 24) batched
    garment: np.ndarray           # (V,) index into `names`
    names: list[str]
    params: list[GarmentParams]
    detail: Detail = field(default_factory=Detail)
    presence: torch.Tensor | None = None   # (V,) each vertex's piece presence (see Piece)

    @property
    def face_garment(self) -> np.ndarray:
        return self.garment[self.faces[:, 0]]

    def describe(self) -> dict:
        return {"garments": [dict(name=n, **asdict(p)) for n, p in zip(self.names, self.params)],
                "detail": asdict(self.detail)}


# -- pieces of each garment kind --------------------------------------------------------------
def garment_pieces(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool = False) -> list[Piece]:
    """The tube pieces of one garment. `keep_sleeves` keeps sleeves of any length (down to a
    3 cm stub) so the topology never depends on the parameters, as a drape model needs."""
    if p.kind not in _PIECES:
        raise ValueError(f"garment kind must be one of {GARMENT_KINDS}, got {p.kind!r}")
    return _PIECES[p.kind](frame, p, keep_sleeves)


def _const(value):
    return lambda s: torch.zeros_like(s) + value


def _armpit_s(frame: BodyFrame) -> float:
    """Torso-axis coordinate of the armpits (5 cm below the shoulder joints)."""
    return frame.torso_s(float(frame.joints[[J["left_shoulder"], J["right_shoulder"]], 1].mean())) + 0.05


def _torso_piece(frame: BodyFrame, p: GarmentParams, end, phi_range=None, hang: bool = False) -> Piece:
    """The body of a top. `hang`: below the armpits it never narrows (a jacket falls straight
    from chest, shoulder blades and armpits instead of following the waist in)."""
    crotch = frame.crotch_s
    armpit = _armpit_s(frame)
    ease = lambda s, e=p.ease, k=p.loose: e * (1.0 + 0.4 * (s / crotch).clamp(0, 1)) + k * torch.relu(s - armpit)  # noqa: E731
    fld = frame.field(frame.torso_axis, ("torso", "neck"), (0.0, crotch + 0.15))
    if hang:
        fld = fld.hanging(armpit)
    return Piece("torso", frame.torso_axis, fld, p.neckline, end, GRID["torso"], ease, ("torso", "neck"),
                 phi_range=phi_range)


def _sleeves(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    if not (keep_sleeves or p.sleeve > SLEEVE_MIN):
        return []
    pieces = []
    presence = sleeve_presence(p.sleeve)
    for side in ("left", "right"):
        axis, length = frame.limb_axis(f"{side}_shoulder", f"{side}_wrist")
        regions = (f"{side}_upper_arm", f"{side}_lower_arm")
        fld = frame.field(axis, regions, (-0.05, length))
        pieces.append(Piece(f"{side}_sleeve", axis, fld, -0.03, p.sleeve * length,
                            GRID["sleeve"], _flared_ease(p.ease * 0.8, p.loose, 0.0), regions, presence=presence))
    return pieces


SLEEVE_MIN, SLEEVE_FADE = 0.02, 0.04   # sleeves shorter than SLEEVE_MIN (share of the arm) are absent


def _clamp(x: float | torch.Tensor, lo: float | None = None, hi: float | None = None) -> float | torch.Tensor:
    """x clamped into [lo, hi]: a plain number stays a number, a tensor a tensor (its gradient kept)."""
    if torch.is_tensor(x):
        return x.clamp(lo, hi)
    return min(max(x, -np.inf if lo is None else lo), np.inf if hi is None else hi)


def sleeve_presence(sleeve: float | torch.Tensor) -> float | torch.Tensor:
    """0 for a sleeve under SLEEVE_MIN of the arm, rising linearly to 1 over SLEEVE_FADE."""
    return _clamp((sleeve - SLEEVE_MIN) / SLEEVE_FADE, 0.0, 1.0)


LEG_FADE = 0.02   # a trouser leg fades out as its hem rises to this far (m) below where the legs part


def _legs(frame: BodyFrame, p: GarmentParams) -> list[Piece]:
    """Two tubes from where the legs part (`BodyFrame.crotch_s`, low on a body whose thighs
    meet) down to the hem; a hem above that (short shorts) leaves them absent (`presence` 0),
    and the waist ring ends at the hem instead (`_legs_hem_s`)."""
    pieces = []
    for side in ("left", "right"):
        axis, length = frame.limb_axis(f"{side}_hip", f"{side}_ankle")
        regions = (f"{side}_upper_leg", f"{side}_lower_leg")
        start = frame.leg_s_at_crotch(side) - 0.02
        fld = frame.field(axis, regions, (start - 0.05, length + 0.02))
        end = p.hem * length
        presence = _clamp((end - start) / LEG_FADE, 0.0, 1.0)
        pieces.append(Piece(f"{side}_leg", axis, fld, start, _clamp(end, lo=start), GRID["leg"],
                            _flared_ease(p.ease, p.flare, start), regions, hang=p.flare / HANG_FLARE,
                            presence=presence))
    return pieces


def _legs_hem_s(frame: BodyFrame, p: GarmentParams):
    """Torso-axis s of the trouser hem's height (the mean of both legs): float or tensor."""
    ys = []
    for side in ("left", "right"):
        axis, length = frame.limb_axis(f"{side}_hip", f"{side}_ankle")
        ys.append(float(axis.origin[1]) + float(axis.direction[1]) * p.hem * length)
    return float(frame.torso_axis.origin[1]) - 0.5 * (ys[0] + ys[1])


def _top(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    """A torso tube down to the hem, with sleeves; a sleeveless top (tank) may have its
    armholes cut deep like a strap dress's (`_armholes`)."""
    torso = _torso_piece(frame, p, p.hem * frame.crotch_s)
    return [replace(torso, cut=_armholes(frame, p))] + _sleeves(frame, p, keep_sleeves)


def _jacket(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    """A top whose front is open by `opening` radians (phi 0 faces front; closed at 0) from the
    neckline to the armpits, and from there by up to `widen` more at the hem."""
    half = torch.as_tensor(p.opening, dtype=torch.float32) / 2 if not torch.is_tensor(p.opening) else p.opening / 2
    torso = _torso_piece(frame, p, p.hem * frame.crotch_s, phi_range=(half, 2 * np.pi - half), hang=True)
    if not (isinstance(p.widen, (int, float)) and p.widen == 0):
        torso = replace(torso, phi_widen=(_armpit_s(frame), p.widen))
    return [torso] + _sleeves(frame, p, keep_sleeves)


def _hoodie(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    """A long-sleeved top with a hood: a half tube behind the head from the neck up to `hood`
    of the neck -> crown height, standing off the head by the ease plus 2 cm."""
    pieces = _top(frame, p, keep_sleeves)
    neck = frame.joints[J["neck"]]
    crown = float(frame.vertices[:, 1].max() - neck[1])
    axis = Axis.through(np.array([0.0, neck[1], neck[2]]), (0.0, 1.0, 0.0))
    fld = frame.field(axis, ("head", "neck"), (-0.05, crown + 0.02))
    pieces.append(Piece("hood", axis, fld, 0.0, p.hood * crown, GRID["hood"], _const(p.ease + 0.02),
                        ("head", "neck"), phi_range=(0.6 * np.pi, 1.4 * np.pi)))
    return pieces


def _trousers(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    crotch = frame.crotch_s
    regions = ("torso", "left_upper_leg", "right_upper_leg")
    # the waist ring reaches 2 cm past where the legs part, or ends at a hem above that
    end = _clamp(_legs_hem_s(frame, p), hi=crotch + 0.02)
    waist = Piece("waist", frame.torso_axis, frame.field(frame.torso_axis, regions, (0.0, crotch + 0.05)),
                  p.waist * crotch, end, GRID["waist"], _const(p.ease), regions)
    return [waist] + _legs(frame, p)


def _jumpsuit(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    """One piece: a top down to the crotch joined to trouser legs (`hem` is the legs')."""
    crotch = frame.crotch_s
    torso = _torso_piece(frame, p, crotch + 0.02)
    return [torso] + _sleeves(frame, p, keep_sleeves) + _legs(frame, p)


def _ankle_s(frame: BodyFrame) -> float:
    return frame.torso_s(frame.joints[[7, 8], 1].mean())


def _skirt(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    crotch = frame.crotch_s
    regions = ("torso", "left_upper_leg", "right_upper_leg", "left_lower_leg", "right_lower_leg")
    body = frame.field(frame.torso_axis, regions, (0.0, frame.floor_s))
    return [Piece("skirt", frame.torso_axis, body.hanging(frame.hip_s), p.waist * crotch,
                  crotch + p.hem * (_ankle_s(frame) - crotch), GRID["hang"],
                  _hanging_ease(p.ease, p.flare, frame.hip_s), regions, hanging=True,
                  shape=_falling(body, p, frame.hip_s))]


def _dress(frame: BodyFrame, p: GarmentParams, keep_sleeves: bool) -> list[Piece]:
    crotch = frame.crotch_s
    end = crotch + p.hem * (_ankle_s(frame) - crotch)
    regions = ("torso", "neck", "left_upper_leg", "right_upper_leg", "left_lower_leg", "right_lower_leg")
    body = frame.field(frame.torso_axis, regions, (0.0, frame.floor_s))
    ease = _hanging_ease(p.ease, p.flare, frame.hip_s)
    return [Piece("dress", frame.torso_axis, body.hanging(frame.hip_s), p.neckline, end, GRID["hang"], ease,
                  regions, hanging=True, cut=_armholes(frame, p), shape=_falling(body, p, frame.hip_s))] \
        + _sleeves(frame, p, keep_sleeves)


def _falling(body: RadiusField, p: GarmentParams, start: float
             ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A hanging piece's front and back coming in below `start` (the widest hips) by `fall`
    metres per metre, weighted by cos^2 of the angle from the front (phi 0; the sides keep their
    radius), never closer to the body than its own `body` field (the legs' hull, not hung) plus
    the ease: (s, phi, radius) -> radius, each (..., n_s, n_phi). None when `fall` is a plain 0
    (results from before it)."""
    if not torch.is_tensor(p.fall) and p.fall <= 0:
        return None

    def shape(s: torch.Tensor, phi: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        fallen = radius - p.fall * torch.relu(s - start) * torch.cos(phi).square()
        return torch.maximum(fallen, body.lookup(s, phi) + p.ease)
    return shape


ARMHOLE_MIN, ARMHOLE_EDGE = 0.01, 0.02   # armholes shallower than ARMHOLE_MIN (m) are none; soft edge (m)


def _armholes(frame: BodyFrame, p: GarmentParams) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Presence of a sleeveless garment's points around its armholes, (..., n_s, n_phi, 3) rest-pose
    vertices -> (..., n_s, n_phi): 0 where a point lies farther out than `strap` x the shoulder
    joints' half-width (less `taper` x the half-width at the armhole's bottom, linearly in
    between) and higher than `armhole` below them (what a strap dress leaves open),
    1 elsewhere, linear over ARMHOLE_EDGE across both edges; an armhole shallower than
    ARMHOLE_MIN fades out, so 0 (older results) keeps every point. The vertices are read
    without their gradient: the cut moves with `armhole` and `strap`, never with the ease."""
    if not torch.is_tensor(p.armhole) and p.armhole <= 0:
        return None
    shoulders = frame.joints[[J["left_shoulder"], J["right_shoulder"]]]
    half_width, height = float(np.abs(shoulders[:, 0]).mean()), float(shoulders[:, 1].mean())

    def cut(v: torch.Tensor) -> torch.Tensor:
        depth, strap, taper = p.armhole, p.strap, p.taper   # floats, scalar or (C, 1, 1) tensors
        x, y = v.detach()[..., 0].abs(), v.detach()[..., 1]
        down = _clamp((height - y) / _clamp(depth, ARMHOLE_MIN, None), 0.0, 1.0)   # 0 at the shoulders, 1 at the bottom
        side = ((x - (strap - taper * down) * half_width) / ARMHOLE_EDGE + 0.5).clamp(0.0, 1.0)
        above = ((y - (height - depth)) / ARMHOLE_EDGE + 0.5).clamp(0.0, 1.0)
        exists = _clamp((depth - ARMHOLE_MIN) / ARMHOLE_MIN, 0.0, 1.0)
        return 1.0 - side * above * exists
    return cut


_PIECES: dict[str, Callable[[BodyFrame, GarmentParams, bool], list[Piece]]] = {
    "top": _top, "jacket": _jacket, "hoodie": _hoodie, "trousers": _trousers, "skirt": _skirt,
    "dress": _dress, "jumpsuit": _jumpsuit}


def _flared_ease(ease: float, flare: float, start: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A trouser leg's ease: `ease` at the crotch, widening by `flare` per metre down the leg
    (wide and culotte legs hang away from the knees and calves; flare 0 is a straight leg)."""
    return lambda s: ease + flare * torch.relu(s - start)


def _hanging_ease(ease: float, flare: float, start: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A skirt's ease: `ease`, widening by `flare` per metre below `start` (the widest hips)."""
    return lambda s: ease + flare * torch.relu(s - start)


# -- building the mesh --------------------------------------------------------------------------
def build_outfit(frame: BodyFrame, params: list[GarmentParams], names: list[str] | None = None,
                 detail: Detail | None = None, keep_sleeves: bool = False,
                 with_weights: bool = True, coarsen: int = 1) -> GarmentMesh:
    """Rest-pose mesh of the outfit on this body, with skin weights from the body (or none,
    when a caller computes them less often than the geometry). Made on the device and dtype of
    the parameters' tensors (the CPU in float32 for plain numbers). Parameters may hold (C, 1, 1)
    tensors, C outfits of one topology at once: vertices (C, V, 3) and weights (C, V, 24).
    `coarsen` divides every piece's grid resolution (a coarse template for learned reconstruction)."""
    detail = detail or Detail()
    rng = np.random.default_rng(detail.seed)
    names = names or [p.kind for p in params]
    like = _like(params)
    verts, faces, garment, pieces, presence = [], [], [], [], []
    offset = 0
    for g, p in enumerate(params):
        for piece in garment_pieces(frame, p, keep_sleeves):
            if coarsen > 1:
                piece = replace(piece, grid=(max(2, piece.grid[0] // coarsen), max(3, piece.grid[1] // coarsen)))
            v = _piece_vertices(piece, detail, rng, like)
            n_s, n_phi = piece.grid
            verts.append(v.reshape(*v.shape[:-3], -1, 3))
            present = v.new_ones(v.shape[:-3] + (n_s * n_phi,)) * _batched(piece.presence, v)
            if piece.cut is not None:
                present = present * piece.cut(v).reshape(present.shape)
            presence.append(present)
            faces.append(_grid_faces(n_s, n_phi, periodic=piece.phi_range is None) + offset)
            garment.append(np.full(n_s * n_phi, g))
            pieces.append(piece)
            offset += n_s * n_phi
    vertices = torch.cat(verts, -2)
    skin = outfit_weights(frame, pieces, vertices) if with_weights else np.zeros((offset, 0), np.float32)
    return GarmentMesh(vertices, np.concatenate(faces), skin,
                       np.concatenate(garment), names, list(params), detail, torch.cat(presence, -1))


def _batched(value: float | torch.Tensor, v: torch.Tensor) -> float | torch.Tensor:
    """A per-outfit scalar ((C, 1, 1) or ()) shaped to multiply (C, n) or (n,) per-vertex rows."""
    if not torch.is_tensor(value):
        return value
    return value.reshape(v.shape[:-3] + (1,)) if value.numel() > 1 else value.reshape(())


def outfit_weights(frame: BodyFrame, pieces: list[Piece], vertices: torch.Tensor,
                   item: int | None = None) -> np.ndarray:
    """Skin weights (V, 24) of the outfit's vertices (V, 3), or (C, V, 24) of (C, V, 3), piece
    by piece (on the host: a nearest-vertex query; callers refresh them now and then); `item`
    picks outfit `item` of pieces whose parameters hold a batch of C outfits."""
    v_np = vertices.detach().cpu().numpy()
    if v_np.ndim == 3:
        return np.stack([outfit_weights(frame, pieces, torch.from_numpy(v), c) for c, v in enumerate(v_np)])
    out, start = [], 0
    for piece in pieces:
        n = piece.grid[0] * piece.grid[1]
        out.append(_piece_weights(frame, piece, v_np[start:start + n], item))
        start += n
    return np.concatenate(out).astype(np.float32)


def _like(params: list[GarmentParams]) -> torch.Tensor:
    """A scalar tensor with the device and dtype of the parameters' tensors (CPU float32 if none)."""
    for p in params:
        for value in vars(p).values():
            if torch.is_tensor(value):
                return value.new_zeros(())
    return torch.zeros((), dtype=torch.float32)


def _piece_vertices(piece: Piece, detail: Detail, rng: np.random.Generator, like: torch.Tensor) -> torch.Tensor:
    """(..., n_s, n_phi, 3) grid vertices on like's device and dtype (leading dims: a batch of
    parameter values)."""
    n_s, n_phi = piece.grid
    t = lambda x: torch.as_tensor(x, dtype=like.dtype, device=like.device)  # noqa: E731
    u = torch.linspace(0.0, 1.0, n_s, dtype=like.dtype, device=like.device)[:, None]
    s_start, s_end = t(piece.s_start), t(piece.s_end)
    if piece.phi_range is None:
        phi = (torch.arange(n_phi, device=like.device).to(like.dtype) / n_phi * 2 * np.pi - np.pi)[None, :]
    else:
        a, b = (t(x) for x in piece.phi_range)
        if piece.phi_widen is not None:
            extra = _widening(piece.phi_widen, s_start + u * (s_end - s_start), s_end, t)
            a, b = a + extra, b - extra
        phi = a + torch.linspace(0.0, 1.0, n_phi, dtype=like.dtype, device=like.device)[None, :] * (b - a)
    if detail.hem_asym > 0:
        s_end = s_end + detail.hem_asym * _hem_wave(phi, rng)
    s = s_start + u * (s_end - s_start)
    shape = torch.broadcast_shapes(s.shape, phi.shape, (n_s, n_phi))
    s, phi = s.expand(shape), phi.expand(shape)
    radius = piece.field.lookup(s, phi) + piece.ease(s)
    if piece.shape is not None:
        radius = piece.shape(s, phi, radius)
    if detail.wrinkle_amp > 0:
        radius = radius + detail.wrinkle_amp * _folds(s, phi, rng, vertical=piece.hanging)
    return piece.axis.point(s, phi, radius)


def _widening(phi_widen: tuple, s: torch.Tensor, s_end: torch.Tensor, t: Callable) -> torch.Tensor:
    """Half of the extra opening per grid row ((..., n_s, 1), radians): 0 above phi_widen's
    start s0, growing linearly to half its angle at the piece's end s_end. s (..., n_s, 1)."""
    s0, angle = t(phi_widen[0]), t(phi_widen[1])
    ramp = ((s - s0) / (s_end - s0).clamp_min(1e-3)).clamp(0.0, 1.0)
    return 0.5 * angle * ramp


def _hem_wave(phi: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    a, b = rng.uniform(0, 2 * np.pi, 2)
    return 0.7 * torch.sin(phi + float(a)) + 0.3 * torch.sin(2 * phi + float(b))


def _folds(s: torch.Tensor, phi: torch.Tensor, rng: np.random.Generator, vertical: bool) -> torch.Tensor:
    """Sum of sinusoids in (s, phi): horizontal rings on sleeves and legs, vertical on skirts."""
    out = torch.zeros_like(s)
    k = 6
    for _ in range(k):
        freq_s = rng.uniform(2, 12) if vertical else rng.uniform(15, 60)
        freq_phi = rng.integers(4, 12) if vertical else rng.integers(-3, 4)
        out = out + torch.sin(float(freq_s) * s + float(freq_phi) * phi + float(rng.uniform(0, 2 * np.pi)))
    return out / np.sqrt(k)


@functools.lru_cache(maxsize=None)
def _grid_faces(n_s: int, n_phi: int, periodic: bool = True) -> np.ndarray:
    """Triangles of an (n_s, n_phi) tube grid, normals outward; `periodic` closes it around
    the axis, else its two phi edges stay open (a jacket's front, a hood)."""
    i, j = np.meshgrid(np.arange(n_s - 1), np.arange(n_phi if periodic else n_phi - 1), indexing="ij")
    a = i * n_phi + j
    b = i * n_phi + (j + 1) % n_phi
    c = (i + 1) * n_phi + j
    d = (i + 1) * n_phi + (j + 1) % n_phi
    return np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])


def _piece_weights(frame: BodyFrame, piece: Piece, v: np.ndarray, item: int | None = None) -> np.ndarray:
    """Skin weights of the nearest body vertex in the piece's regions, smoothed over the grid
    (strongly around a hanging skirt, so it does not split between the legs)."""
    idx, tree = frame.region_tree(piece.regions)
    _, nearest = tree.query(v.reshape(-1, 3))
    n_s, n_phi = piece.grid
    w = frame.weights[idx[nearest]].reshape(n_s, n_phi, -1).astype(np.float64)
    sigma_phi = 4.0 if piece.hanging else 1.0
    around = "wrap" if piece.phi_range is None else "nearest"
    w = gaussian_filter1d(gaussian_filter1d(w, sigma_phi, axis=1, mode=around), 1.5, axis=0, mode="nearest")
    w = _hang_from_hips(w.reshape(n_s * n_phi, -1), _item_value(piece.hang, item))
    if piece.hanging:
        w = hanging_weights(w)
    return w / w.sum(1, keepdims=True)


HANG_FLARE = 0.15     # a trouser leg flaring this much (m per m) or more hangs from the hip entirely
# A skirt or dress (a hanging piece) moves neither with one leg nor rigidly with the pelvis: this
# share of its points' leg weights (hip, knee, ankle, foot) goes to the pelvis. Measured on the
# simulated walks of the clothsim training set (docs/fitting.md): the best one static cloth
# shape posed by these weights reaches 1.60 -> 1.18 cm (skirt_1), 3.15 -> 2.87 cm (dress_0).
HANGING_PELVIS_SHARE = 0.55
_LEG_CHAINS = ((J["left_hip"], (J["left_knee"], J["left_ankle"], J["left_foot"])),
               (J["right_hip"], (J["right_knee"], J["right_ankle"], J["right_foot"])))
LEG_JOINTS = tuple(j for hip, below in _LEG_CHAINS for j in (hip, *below))


def _item_value(value: float | torch.Tensor, item: int | None) -> float | torch.Tensor:
    """Outfit `item`'s value of a per-outfit parameter ((C, 1, 1) tensor), else the value itself."""
    if item is None or not torch.is_tensor(value) or value.numel() == 1:
        return value
    return value.reshape(-1)[item]


def hanging_weights(w: np.ndarray | torch.Tensor, hanging: float | torch.Tensor = 1.0) -> np.ndarray | torch.Tensor:
    """(..., 24) skin weights (numpy or torch) of cloth hanging around both legs (a skirt, a
    dress): `hanging` (0..1, a number or broadcastable to (..., 1)) times HANGING_PELVIS_SHARE of
    every leg joint's weight (hip, knee, ankle, foot) moves to the pelvis, so the cloth follows
    the legs' mean swing, not each leg. The one rule of the generator's hanging pieces and of the
    neural drape's skirts and dresses (drape/neural.py)."""
    share = HANGING_PELVIS_SHARE * hanging
    legs = list(LEG_JOINTS)
    out = w.clone() if torch.is_tensor(w) else w.copy()
    out[..., legs] = w[..., legs] * (1.0 - share)
    out[..., J["pelvis"]] = w[..., J["pelvis"]] + (w[..., legs] * share).sum(-1)
    return out


def _hang_from_hips(w: np.ndarray, hang: float | torch.Tensor) -> np.ndarray:
    """(n, 24) skin weights with the share `hang` (clamped to 0..1; a batch of values is
    averaged) of each knee, ankle and foot weight moved to the hip above it."""
    h = float(np.clip(np.mean(hang.detach().cpu().numpy()) if torch.is_tensor(hang) else hang, 0.0, 1.0))
    if h <= 0:
        return w
    w = w.copy()
    for hip, below in _LEG_CHAINS:
        w[:, hip] += h * w[:, below].sum(1)
        w[:, below] *= 1.0 - h
    return w


# -- random outfits ---------------------------------------------------------------------------
def sample_outfit(kind: str, rng: np.random.Generator) -> tuple[list[GarmentParams], list[str]]:
    """Parameters of a random outfit: one of the legacy OUTFITS, 'random' (one of those), or
    garment families joined by '+' ("tshirt", "jacket+tshirt+trousers"; see families.py)."""
    if kind == "random":
        kind = str(rng.choice(list(OUTFITS)))
    if kind not in OUTFITS:
        try:
            return sample_garments(kind, rng)
        except ValueError as exc:
            raise ValueError(f"outfit must be one of {sorted(OUTFITS) + ['random']} or garments joined by "
                             f"'+' ({', '.join(FAMILIES)}): {exc}") from None
    u = rng.uniform
    # Tops are worn over the bottoms: where the two overlap the top keeps a clear margin of ease.
    if kind == "tshirt-shorts":
        bottom = GarmentParams("trousers", hem=u(0.25, 0.5), waist=u(0.6, 0.7), ease=u(0.01, 0.025))
        top = GarmentParams("top", sleeve=u(0.15, 0.4), hem=u(0.75, 0.95), neckline=u(0.03, 0.07),
                            ease=bottom.ease + u(0.012, 0.025))
        garments, names = [top, bottom], ["tshirt", "shorts"]
    elif kind == "longsleeve-trousers":
        bottom = GarmentParams("trousers", hem=u(0.85, 1.0), waist=u(0.6, 0.7), ease=u(0.01, 0.03))
        top = GarmentParams("top", sleeve=u(0.85, 1.0), hem=u(0.8, 1.0), neckline=u(0.03, 0.06),
                            ease=bottom.ease + u(0.012, 0.025))
        garments, names = [top, bottom], ["longsleeve", "trousers"]
    elif kind == "tank-skirt":
        bottom = GarmentParams("skirt", hem=u(0.2, 0.6), waist=u(0.55, 0.65), ease=u(0.01, 0.02), flare=u(0.1, 0.45))
        top = GarmentParams("top", sleeve=0.0, hem=u(0.6, 0.8), neckline=u(0.07, 0.12),
                            ease=bottom.ease + u(0.012, 0.02))
        garments, names = [top, bottom], ["tank", "skirt"]
    else:
        garments = [GarmentParams("dress", sleeve=float(rng.choice([0.0, u(0.12, 0.3)])), hem=u(0.25, 0.7),
                                  neckline=u(0.04, 0.1), ease=u(0.01, 0.03), flare=u(0.1, 0.4))]
        names = ["dress"]
    return garments, names


def sample_garments(spec: str, rng: np.random.Generator, margin: float = 0.12) -> tuple[list[GarmentParams], list[str]]:
    """Random parameters for the garments of `spec` (families joined by '+'), each drawn inside
    its family's ranges (`margin` of each range kept off both ends); an outer layer keeps at
    least 1.2 cm more ease than the garments under it, as real layers do."""
    families = outfit_families(spec)
    garments, names, inner_ease = [], [], 0.0
    for fam in families:                                  # inner layer first
        values = dict(fam.fixed)
        for name, lo, hi in fam.ranges:
            # Parameters a family gained later stay at their low end: the synthetic sets (and
            # the benchmarks on them) keep the garments their seeds drew before.
            later = name in ADDED_LATER.get(fam.name, ())
            values[name] = lo if later else float(rng.uniform(lo + margin * (hi - lo), hi - margin * (hi - lo)))
        if fam.layer > 0 and inner_ease > 0:
            values["ease"] = max(values.get("ease", 0.0), inner_ease + 0.012)
        inner_ease = max(inner_ease, values.get("ease", 0.0))
        garments.append(GarmentParams(fam.kind, **values))
        names.append(fam.name)
    return garments, names
