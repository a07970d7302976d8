# SPDX-License-Identifier: GPL-3.0-or-later
"""An armature's motion as the skeleton file the backend retargets (``protocol.SKELETON_NPZ``,
docs/protocol.md "Skeleton files"): joint heads at rest, rest-relative world rotations per frame,
root positions. Pure numpy: ``scene/retarget.py`` samples the armature in Blender."""

import numpy as np

from ..link import protocol


class SkeletonError(ValueError):
    """The armature cannot be sampled (no bones, no frames)."""


def _rotations(m):
    """(..., 3, 3) nearest rotations of the upper-left blocks of (..., 4, 4) matrices (scale and
    shear of an object transform removed)."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64)[..., :3, :3])
    return u @ vt


def skeleton_arrays(names, parents, rest, posed, tails, fps):
    """The SKELETON_NPZ arrays from world-space bone matrices: ``rest`` (J, 4, 4) at rest,
    ``posed`` (T, J, 4, 4) per frame, ``tails`` (J, 3) rest bone tails, ``parents`` (J,) with the
    root first (-1) and every parent before its children."""
    rest, posed = np.asarray(rest, np.float64), np.asarray(posed, np.float64)
    count = len(names)
    if count == 0:
        raise SkeletonError("the armature has no bones")
    if posed.ndim != 4 or posed.shape[1:] != (count, 4, 4) or not len(posed):
        raise SkeletonError("expected (frames, {}, 4, 4) bone matrices, got {}".format(count, posed.shape))
    delta = _rotations(posed) @ np.swapaxes(_rotations(rest), -1, -2)[None]
    arrays = {"names": np.array(list(names)), "parents": np.asarray(parents, np.int64),
              "rest": rest[:, :3, 3].copy(), "tails": np.asarray(tails, np.float64),
              "rotations": delta.astype(np.float32), "root": posed[:, 0, :3, 3].copy(),
              "fps": np.array(float(fps))}
    assert tuple(arrays) == protocol.SKELETON_KEYS
    return arrays


def bone_order(names, parent_names):
    """Bones reordered so each parent comes before its children, with one root: (order (J,)
    indices into ``names``, parents (J,) in the new order). Raises SkeletonError for several
    roots (retarget one connected skeleton)."""
    index = {n: i for i, n in enumerate(names)}
    roots = [n for n, p in zip(names, parent_names) if p is None]
    if len(roots) != 1:
        raise SkeletonError("the armature has {} root bones ({}): one connected skeleton is needed".format(
            len(roots), ", ".join(roots[:5])))
    children = {}
    for n, p in zip(names, parent_names):
        children.setdefault(p, []).append(n)
    order, stack = [], [roots[0]]
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(reversed(children.get(n, [])))
    position = {n: k for k, n in enumerate(order)}
    parents = [-1 if parent_names[index[n]] is None else position[parent_names[index[n]]] for n in order]
    return np.array([index[n] for n in order], np.int64), np.array(parents, np.int64)
