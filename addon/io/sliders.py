# SPDX-License-Identifier: GPL-3.0-or-later
"""Slider tables (``sliders.npz``, docs/protocol.md "Slider tables"): read, check, and evaluate in
numpy, so a garment slider re-drapes the clothing without the backend.

For slider s with table values v_s0 < ... < v_sK-1 and point differences D_sk (P, 3) from the
result's points B, the points at slider values x are B + sum_s D_s(x_s), D_s piecewise linear in
x_s between the samples (exact at a sample for one moved slider)."""

import os
from dataclasses import dataclass

import numpy as np

from .results import ResultFileError, _array, _require, _string, load_npz


@dataclass
class SliderTable:
    path: str
    names: list          # (S,) "tshirt.sleeve"
    garments: list       # (S,)
    params: list         # (S,)
    low: np.ndarray      # (S,)
    high: np.ndarray     # (S,)
    value: np.ndarray    # (S,) the result's own values
    samples: np.ndarray  # (S, K)
    base: np.ndarray     # (P, 3) the result's rest points (SMPL space)
    deltas: np.ndarray   # (S, K, P, 3)
    result: str

    @property
    def count(self):
        return len(self.names)


def _strings(data, path, key, count):
    arr = np.asarray(_require(data, path, key))
    if arr.dtype.kind not in "US" or arr.shape != (count,):
        raise ResultFileError(path, key, "expected {} strings, got {} {}".format(count, arr.dtype, arr.shape))
    return [str(v) for v in arr]


def read_table(path):
    """sliders.npz -> :class:`SliderTable` (ResultFileError naming the file and key)."""
    path = os.fspath(path)
    data = load_npz(path)
    base = _array(data, path, "base", (None, 3))
    low = _array(data, path, "low", (None,)).astype(np.float64)
    count = len(low)
    samples = _array(data, path, "samples", (count, None)).astype(np.float64)
    deltas = _array(data, path, "deltas", (count, samples.shape[1], len(base), 3))
    high = _array(data, path, "high", (count,)).astype(np.float64)
    value = _array(data, path, "value", (count,)).astype(np.float64)
    if samples.shape[1] < 2 or (np.diff(samples, axis=1) <= 0).any():
        raise ResultFileError(path, "samples", "each slider needs at least 2 increasing sample values")
    if (high <= low).any() or (value < low - 1e-6).any() or (value > high + 1e-6).any():
        raise ResultFileError(path, "value", "values must lie in low..high")
    return SliderTable(path, _strings(data, path, "names", count), _strings(data, path, "garments", count),
                       _strings(data, path, "params", count), low, high, value, samples, base, deltas,
                       _string(data, path, "result", ""))


def evaluate(table, values):
    """(P, 3) rest points for slider values (S,); a slider at the result's value adds nothing."""
    values = np.asarray(values, np.float64)
    if values.shape != (table.count,):
        raise ValueError("expected {} slider values, got shape {}".format(table.count, values.shape))
    points = table.base.astype(np.float64).copy()
    for s in np.flatnonzero(np.abs(values - table.value) > 1e-9 * (table.high - table.low)):
        xs = table.samples[s]
        x = float(np.clip(values[s], xs[0], xs[-1]))
        k = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
        f = (x - xs[k]) / (xs[k + 1] - xs[k])
        here = table.deltas[s, k] * (1.0 - f) + table.deltas[s, k + 1] * f
        # the difference at the result's own value (not a sample in general) is the zero point
        x0 = float(table.value[s])
        k0 = int(np.clip(np.searchsorted(xs, x0) - 1, 0, len(xs) - 2))
        f0 = (x0 - xs[k0]) / (xs[k0 + 1] - xs[k0])
        points += here - (table.deltas[s, k0] * (1.0 - f0) + table.deltas[s, k0 + 1] * f0)
    return points
