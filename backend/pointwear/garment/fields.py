"""Garments as generalised cylinders around straight body axes. A radius field r(s, phi)
records how far the body surface reaches from an axis at arc length s and angle phi; a garment
piece is a tube following that field plus ease. The field is built once per body shape from
the rest-pose vertices of the regions the piece may cover; lookups are differentiable in s."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d, maximum_filter
from scipy.spatial import ConvexHull

PHI_BINS = 72


@dataclass(frozen=True)
class Axis:
    """A straight axis: origin, unit direction d, and cross-section basis (e1 = phi 0, e2)."""
    origin: np.ndarray
    direction: np.ndarray
    e1: np.ndarray
    e2: np.ndarray

    @classmethod
    def through(cls, origin: np.ndarray, direction: np.ndarray, reference=(0.0, 0.0, 1.0)) -> "Axis":
        d = np.asarray(direction, np.float64)
        d = d / np.linalg.norm(d)
        ref = np.asarray(reference, np.float64)
        e1 = ref - d * (ref @ d)
        e1 /= np.linalg.norm(e1)
        return cls(np.asarray(origin, np.float64), d, e1, np.cross(d, e1))

    def coords(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, phi, rho) of points: arc length along the axis, angle, distance from it."""
        rel = points - self.origin
        s = rel @ self.direction
        a, b = rel @ self.e1, rel @ self.e2
        return s, np.arctan2(b, a), np.hypot(a, b)

    def point(self, s: torch.Tensor, phi: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Inverse of `coords`, differentiable: points (..., 3) at (s, phi, radius)."""
        origin, direction, e1, e2 = _on_device(self, (self.origin, self.direction, self.e1, self.e2), radius)
        return (origin + s[..., None] * direction
                + (radius * torch.cos(phi))[..., None] * e1
                + (radius * torch.sin(phi))[..., None] * e2)


@dataclass
class RadiusField:
    """r[i, j] at s = s0 + i * ds and phi = -pi + j * 2pi / PHI_BINS (periodic in phi)."""
    axis: Axis
    s0: float
    ds: float
    r: np.ndarray

    @property
    def s_end(self) -> float:
        return self.s0 + self.ds * (self.r.shape[0] - 1)

    def hanging(self, s_from: float) -> "RadiusField":
        """The field a loose skirt follows: below s_from it never narrows again (cloth hangs
        from the widest point above instead of following the legs inward)."""
        r = self.r.copy()
        i0 = int(np.clip(round((s_from - self.s0) / self.ds), 0, r.shape[0] - 1))
        r[i0:] = np.maximum.accumulate(r[i0:], axis=0)
        return RadiusField(self.axis, self.s0, self.ds, r)

    def lookup(self, s: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Bilinear r(s, phi), differentiable in s; s is clamped to the field's range."""
        table, = _on_device(self, (self.r,), s)
        n_s, n_phi = table.shape
        fi = ((s - self.s0) / self.ds).clamp(0, n_s - 1.000001)
        fj = torch.remainder((phi + np.pi) / (2 * np.pi) * n_phi, n_phi)
        i0, j0 = fi.floor().long(), fj.floor().long()
        wi, wj = fi - i0, fj - j0
        i1, j1 = (i0 + 1).clamp(max=n_s - 1), (j0 + 1) % n_phi
        top = table[i0, j0] * (1 - wj) + table[i0, j1] * wj
        bottom = table[i1, j0] * (1 - wj) + table[i1, j1] * wj
        return top * (1 - wi) + bottom * wi


def _on_device(owner, arrays: tuple, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The owner's constant arrays as tensors on like's device and dtype, made once per device
    and dtype (kept on the owner, which never changes them)."""
    cache = owner.__dict__.setdefault("_tensors", {})
    key = (like.device, like.dtype)
    if key not in cache:
        cache[key] = tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in arrays)
    return cache[key]


def build_field(axis: Axis, points: np.ndarray, s_range: tuple[float, float],
                ds: float = 0.01, window: tuple[int, int] = (5, 3), smooth: float = 1.0) -> RadiusField:
    """Outer extent of `points` around `axis`. A body mesh samples each 1 cm ring sparsely, so a
    cell takes the largest distance within a window of rows and angles (default +-2 cm, +-5
    degrees); rings still too sparse are interpolated from their neighbours along the axis,
    then gaps around the ring; finally a light smoothing, so the tube bridges concavities."""
    s, phi, rho = axis.coords(points)
    s0, s1 = s_range
    n_s = max(2, int(np.ceil((s1 - s0) / ds)) + 1)
    i = np.round((s - s0) / ds).astype(int)
    j = np.floor((phi + np.pi) / (2 * np.pi) * PHI_BINS).astype(int) % PHI_BINS
    keep = (i >= -window[0]) & (i < n_s + window[0])
    pad = window[0] // 2
    r = np.full((n_s + 2 * pad, PHI_BINS), -np.inf)
    inside = keep & (i + pad >= 0) & (i + pad < n_s + 2 * pad)
    np.maximum.at(r, (i[inside] + pad, j[inside]), rho[inside])
    r = maximum_filter(r, size=window, mode=("nearest", "wrap"))[pad:pad + n_s]
    r[~np.isfinite(r)] = np.nan
    sparse = (~np.isnan(r)).sum(1) < PHI_BINS // 6
    r[sparse] = np.nan
    r = _fill_rows_along_axis(r)
    r = _fill_periodic_rows(r)
    r = np.stack([_convex_ring(row) for row in r])
    r = gaussian_filter1d(gaussian_filter1d(r, smooth, axis=0, mode="nearest"), smooth, axis=1, mode="wrap")
    return RadiusField(axis, s0, ds, r.astype(np.float32))


def _convex_ring(row: np.ndarray) -> np.ndarray:
    """Radial function of the convex hull of one ring: cloth spans hollows (between the
    buttocks, along the spine, between the legs) instead of dipping into them."""
    phi = np.arange(PHI_BINS) * 2 * np.pi / PHI_BINS - np.pi + np.pi / PHI_BINS
    pts = np.stack([row * np.cos(phi), row * np.sin(phi)], 1)
    try:
        hull = pts[ConvexHull(pts).vertices]
    except Exception:   # degenerate ring (all points on a line): keep it as it is
        return row
    a, b = hull, np.roll(hull, -1, axis=0)
    d = np.stack([np.cos(phi), np.sin(phi)], 1)
    # Ray t*d meets edge a + u*(b - a): solve [d, a - b] [t, u]^T = a for every (ray, edge).
    e = b - a
    den = d[:, None, 0] * (-e[None, :, 1]) + d[:, None, 1] * e[None, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a[None, :, 0] * (-e[None, :, 1]) + a[None, :, 1] * e[None, :, 0]) / den
        u = (d[:, None, 0] * a[None, :, 1] - d[:, None, 1] * a[None, :, 0]) / den
    ok = (u >= -1e-9) & (u <= 1 + 1e-9) & (t > 0)
    t = np.where(ok, t, np.inf).min(1)
    return np.where(np.isfinite(t), np.maximum(t, row), row)


def _fill_rows_along_axis(r: np.ndarray) -> np.ndarray:
    """Rings with too few body points take values interpolated along the axis per angle (and the
    nearest ring past the ends of the body)."""
    known = np.flatnonzero(~np.isnan(r).all(1))
    if known.size == 0:
        raise ValueError("no body vertices fall inside this garment axis range")
    rows = np.arange(r.shape[0])
    out = r.copy()
    for col in range(r.shape[1]):
        good = known[~np.isnan(r[known, col])]
        if good.size:
            out[:, col] = np.where(np.isnan(r[:, col]), np.interp(rows, good, r[good, col]), r[:, col])
    return out


def _fill_periodic_rows(r: np.ndarray) -> np.ndarray:
    """Fill empty angle bins of each ring by periodic linear interpolation of its known bins."""
    out = r.copy()
    cols = np.arange(r.shape[1])
    for row in out:
        known = ~np.isnan(row)
        if known.sum() >= 2 and not known.all():
            row[~known] = np.interp(cols[~known], cols[known], row[known], period=r.shape[1])
        elif known.sum() == 1:
            row[:] = row[known][0]
    return out
