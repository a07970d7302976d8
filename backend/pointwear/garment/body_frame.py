"""Landmarks of a rest-pose (T-pose) body that garments are measured against: axes for the
torso, arms and legs, the crotch, and the region each vertex belongs to. Derived from joints
and skin weights only, so any SMPL-layout topology works."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.spatial import cKDTree

from ..body.joints import JOINT_INDEX as J
from ..body.regions import REGION_NAMES, region_labels
from .fields import Axis, RadiusField, build_field


@dataclass
class BodyFrame:
    vertices: np.ndarray   # (V, 3) rest pose for these betas, SMPL axes (Y up, faces +Z)
    joints: np.ndarray     # (24, 3)
    weights: np.ndarray    # (V, 24)

    @cached_property
    def labels(self) -> np.ndarray:
        return region_labels(self.weights)

    def region_points(self, *names: str) -> np.ndarray:
        idx = [REGION_NAMES.index(n) for n in names]
        return self.vertices[np.isin(self.labels, idx)]

    def region_indices(self, *names: str) -> np.ndarray:
        idx = [REGION_NAMES.index(n) for n in names]
        return np.flatnonzero(np.isin(self.labels, idx))

    # -- the torso axis: vertical, downward, s = 0 at the neck joint ------------------------
    @cached_property
    def torso_axis(self) -> Axis:
        spine = self.joints[[J["pelvis"], J["spine1"], J["spine2"], J["spine3"]]]
        origin = np.array([0.0, self.joints[J["neck"], 1], spine[:, 2].mean()])
        return Axis.through(origin, (0.0, -1.0, 0.0))

    def torso_s(self, y: float) -> float:
        return float(self.torso_axis.origin[1] - y)

    @cached_property
    def crotch_s(self) -> float:
        """Torso-axis s of the crotch: the lowest body point near the midline between the legs."""
        v = self.vertices
        lower = self.region_points("torso", "left_upper_leg", "right_upper_leg")
        width = 0.02 * self.stature
        mid = lower[(np.abs(lower[:, 0]) < width) & (lower[:, 1] < self.joints[J["pelvis"], 1])]
        y = mid[:, 1].min() if len(mid) else self.joints[[J["left_hip"], J["right_hip"]], 1].mean() - 0.08
        return self.torso_s(float(y)) if v.size else 0.0

    @cached_property
    def floor_s(self) -> float:
        return self.torso_s(float(self.vertices[:, 1].min()))

    @cached_property
    def stature(self) -> float:
        return float(np.ptp(self.vertices[:, 1]))

    @cached_property
    def hip_s(self) -> float:
        """Torso-axis s of the widest part of the hips (where a skirt starts to hang free)."""
        pts = self.region_points("torso", "left_upper_leg", "right_upper_leg")
        s, _, _ = self.torso_axis.coords(pts)
        band = (s > self.torso_s(self.joints[J["pelvis"], 1]) - 0.05) & (s < self.crotch_s)
        if not band.any():
            return self.crotch_s
        bins = np.round(s[band] / 0.01)
        widths = {b: np.ptp(pts[band][bins == b, 0]) for b in np.unique(bins)}
        return float(max(widths, key=widths.get) * 0.01)

    # -- limbs: straight axes from the root joint of the limb to its end joint --------------
    def limb_axis(self, start: str, end: str) -> tuple[Axis, float]:
        a, b = self.joints[J[start]], self.joints[J[end]]
        return Axis.through(a, b - a), float(np.linalg.norm(b - a))

    def leg_s_at_crotch(self, side: str) -> float:
        axis, _ = self.limb_axis(f"{side}_hip", f"{side}_ankle")
        y_crotch = self.torso_axis.origin[1] - self.crotch_s
        return float((y_crotch - axis.origin[1]) / axis.direction[1])

    def field(self, axis: Axis, regions: tuple[str, ...], s_range: tuple[float, float]) -> RadiusField:
        """Radius field of these regions around `axis`, built once per body and reused."""
        key = (tuple(np.round(axis.origin, 6)), tuple(np.round(axis.direction, 6)), regions,
               round(s_range[0], 6), round(s_range[1], 6))
        cache = self.__dict__.setdefault("_fields", {})
        if key not in cache:
            cache[key] = build_field(axis, self.region_points(*regions), s_range)
        return cache[key]

    def region_tree(self, regions: tuple[str, ...]) -> tuple[np.ndarray, cKDTree]:
        """Vertex indices of these regions and a KD-tree over them (cached): nearest-vertex
        skin weights for garment points."""
        cache = self.__dict__.setdefault("_trees", {})
        if regions not in cache:
            idx = self.region_indices(*regions)
            cache[regions] = (idx, cKDTree(self.vertices[idx]))
        return cache[regions]
