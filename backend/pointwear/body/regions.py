"""Body part regions from skin weights, so any topology (SMPL, the default body, ...) works
without vertex indices: a vertex belongs to the region whose joints carry most of its weight."""
from __future__ import annotations

import numpy as np

from .joints import JOINT_INDEX

# Each SMPL joint moves the bone that starts at it: the elbow joint moves the forearm, etc.
REGION_JOINTS: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "neck": ("neck",),
    "torso": ("pelvis", "spine1", "spine2", "spine3", "left_collar", "right_collar"),
    "left_upper_arm": ("left_shoulder",),
    "right_upper_arm": ("right_shoulder",),
    "left_lower_arm": ("left_elbow",),
    "right_lower_arm": ("right_elbow",),
    "left_hand": ("left_wrist", "left_hand"),
    "right_hand": ("right_wrist", "right_hand"),
    "left_upper_leg": ("left_hip",),
    "right_upper_leg": ("right_hip",),
    "left_lower_leg": ("left_knee",),
    "right_lower_leg": ("right_knee",),
    "left_foot": ("left_ankle", "left_foot"),
    "right_foot": ("right_ankle", "right_foot"),
}
REGION_NAMES: tuple[str, ...] = tuple(REGION_JOINTS)

# Coarse groups the issue names; sided regions roll up into them.
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("head",),
    "neck": ("neck",),
    "torso": ("torso",),
    "upper_arms": ("left_upper_arm", "right_upper_arm"),
    "lower_arms": ("left_lower_arm", "right_lower_arm"),
    "hands": ("left_hand", "right_hand"),
    "upper_legs": ("left_upper_leg", "right_upper_leg"),
    "lower_legs": ("left_lower_leg", "right_lower_leg"),
    "feet": ("left_foot", "right_foot"),
}


def region_weights(weights: np.ndarray) -> np.ndarray:
    """(V, 24) joint weights -> (V, R) region weights, columns in REGION_NAMES order."""
    weights = np.asarray(weights)
    cols = [weights[:, [JOINT_INDEX[j] for j in joints]].sum(1) for joints in REGION_JOINTS.values()]
    return np.stack(cols, 1)


def region_labels(weights: np.ndarray) -> np.ndarray:
    """(V,) index into REGION_NAMES of each vertex's dominant region."""
    return region_weights(weights).argmax(1)


def region_mask(weights: np.ndarray, *names: str) -> np.ndarray:
    """Boolean (V,) mask of vertices in any of the named regions or groups."""
    wanted: set[str] = set()
    for name in names:
        if name in REGION_GROUPS:
            wanted.update(REGION_GROUPS[name])
        elif name in REGION_JOINTS:
            wanted.add(name)
        else:
            raise KeyError(f"unknown body region {name!r}; known: {sorted({*REGION_JOINTS, *REGION_GROUPS})}")
    idx = [REGION_NAMES.index(n) for n in wanted]
    return np.isin(region_labels(weights), idx)
