"""BVH motion capture -> SMPL poses of one of our bodies (an AMASS-style motion, Y-up).

Method (both steps batched over all frames):
1. Rotation transfer. Each SMPL joint takes the world rotation of the BVH joint that drives the
   same bone (`CMU_JOINT_MAP`), times a fixed rest alignment C_j: the rotation turning SMPL's
   rest bone directions onto the BVH's (Kabsch over the joint's targeted descendants, the
   shortest arc for one). The limbs' twist, which bone directions cannot show, is calibrated
   from the motion: SMPL's elbow and knee hinge axes are turned onto the axes about which the
   mocap's elbows and knees actually bend. Spine and neck take the pelvis's alignment (both rest
   poses stand upright; their points sit differently along the back in every skeleton).
2. Refinement (L-BFGS in torch): pose and translation so the SMPL bones point along the BVH
   bones and the legs and root land on the BVH's joints (so feet stay planted), pulled towards
   step 1's rotations (keeps the twists and the spine's shape).

Proportions differ between a mocap actor and the body (this CMU actor's torso is ~15 % shorter
relative to the legs than the default body's), so only the root and legs are matched in
position; arms, neck and head follow the mocap's bone directions. `conversion_errors` measures
both. `fit_betas=True` also fits one shared `betas` to the positions.

Units: the BVH is scaled to metres by its leg length against the body's (hip -> knee -> ankle),
so any unit (CMU's ~5.6 cm, centimetres, inches) works. Axes: BVH files are Y-up like Pointwear's
SMPL world; a Z-up file is found from its rest skeleton (`bvh_up_axis`) and turned.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation as R
from smplx.lbs import batch_rodrigues

from ..body.joints import JOINT_INDEX, JOINT_NAMES, NUM_JOINTS, PARENTS
from ..body.model import rigid_transform
from ..body.upright import rotation_between
from ..errors import InputError
from .bvh import Bvh, bvh_global_transforms
from .motion import Z_UP_TO_Y_UP, Motion


@dataclass(frozen=True)
class JointSource:
    """Where one SMPL joint comes from in a BVH skeleton. `position` and `rotation` list
    alternatives, the first present in the file wins (names match case-insensitively, ignoring
    a 'namespace:' prefix)."""

    position: tuple[tuple[str, ...], ...] = ()   # BVH joints whose mean is this joint's point; () none
    rotation: tuple[str, ...] = ()               # BVH joint whose world rotation drives this bone
    weight: float = 0.0                          # position term weight; 0: the point only gives
                                                 # bone directions (proportions differ)
    align: str = "bone"                          # rest alignment from this joint's bones, or "root":
                                                 # the pelvis's (spine, neck: upright in both skeletons)


def _side(side: str) -> dict[str, JointSource]:
    s, p = side.capitalize(), side[0].upper()    # "Left", "L"
    return {
        f"{side}_hip": JointSource(((f"{s}UpLeg",),), (f"{s}UpLeg",), 1.0),
        f"{side}_knee": JointSource(((f"{s}Leg",),), (f"{s}Leg",), 1.0),
        f"{side}_ankle": JointSource(((f"{s}Foot",),), (f"{s}Foot",), 1.0),
        # the toe base is the ball of the foot in both skeletons
        f"{side}_foot": JointSource(((f"{s}ToeBase",), (f"{s}Toe",)), (f"{s}ToeBase", f"{s}Toe"), 0.5),
        # CMU's LeftShoulder is the clavicle from the top of the spine, which starts lower than
        # SMPL's collar (CMU's points ~20 deg up at rest, SMPL's level): no point, and the
        # torso's alignment, so a clavicle at rest stays at SMPL's rest
        f"{side}_collar": JointSource((), (f"{s}Shoulder",), align="root"),
        f"{side}_shoulder": JointSource(((f"{s}Arm",),), (f"{s}Arm",)),
        f"{side}_elbow": JointSource(((f"{s}ForeArm",),), (f"{s}ForeArm",)),
        f"{side}_wrist": JointSource(((f"{s}Hand",),), (f"{s}FingerBase", f"{s}Hand")),
        # SMPL's hand joint sits at the knuckles; CMU's finger joint is short: rotation only
        f"{side}_hand": JointSource((), (f"{p}Fingers", f"{s}FingerBase")),
    }


# The CMU mocap skeleton as the common BVH conversions name it (Hips, LHipJoint, LeftUpLeg,
# LeftLeg, LeftFoot, LeftToeBase, LowerBack, Spine, Spine1, Neck, Neck1, Head, LeftShoulder,
# LeftArm, LeftForeArm, LeftHand, LeftFingerBase, LFingers, LThumb and the right side).
# Mixamo-style names (Spine2, LeftToe, "mixamorig:" prefixes) find their joints through the
# alternatives. Pass your own dict (same keys: SMPL joint names) for other skeletons.
CMU_JOINT_MAP: dict[str, JointSource] = {
    # CMU's Hips point is ~10 cm above its hip joints, SMPL's pelvis at hip height: use the hips' mean
    "pelvis": JointSource((("LeftUpLeg", "RightUpLeg"),), ("Hips",), 1.0),
    **_side("left"),
    **_side("right"),
    "spine1": JointSource((), ("LowerBack", "Spine"), align="root"),
    "spine2": JointSource((), ("Spine", "Spine1"), align="root"),
    "spine3": JointSource((), ("Spine2", "Spine1"), align="root"),
    "neck": JointSource((("Neck1",), ("Neck",)), ("Neck1", "Neck"), align="root"),
    "head": JointSource((("Head",),), ("Head",), align="root"),
}

# SMPL's hinge axes in its rest pose (elbows flex about y, knees about x; the sign is free).
HINGE_AXES = {"left_elbow": (0.0, 1.0, 0.0), "right_elbow": (0.0, 1.0, 0.0),
              "left_knee": (1.0, 0.0, 0.0), "right_knee": (1.0, 0.0, 0.0)}
_HINGE_CHILD = {"left_elbow": "left_wrist", "right_elbow": "right_wrist",
                "left_knee": "left_ankle", "right_knee": "right_ankle"}


@dataclass(frozen=True)
class BvhSmplOptions:
    fps: float = 30.0               # output frame rate: the BVH is subsampled by round(fps_in / fps)
    up: str = "auto"                # the BVH's up axis: "y" (the BVH convention), "z", or "auto":
                                    # the axis its rest skeleton's legs hang down along
    hinge_min_angle: float | None = 20.0  # degrees: elbow/knee bends that find the hinge axes
                                    # (None: trust the rest pose's limb twist)
    iterations: int = 60            # L-BFGS iterations of the refinement (0: rotation transfer only)
    position_sigma: float = 0.02    # metres: a (weight 1) joint this far off costs 1
    direction_weight: float = 20.0  # per bone, times 1 - cos(angle between SMPL and BVH bone)
    anchor_weight: float = 1.0      # per rad^2 of pose away from the transferred rotations
    smooth_weight: float = 0.0      # per rad^2 of body-pose change between output frames (0: the
                                    # transferred rotations are as smooth as the mocap already)
    fit_betas: bool = False         # also fit one shared betas (False: the body's own shape, 0)
    betas_weight: float = 1.0       # L2 prior on fitted betas (unit-variance shape space)


def match_joints(bvh: Bvh, joint_map: dict[str, JointSource] | None = None) -> dict[str, JointSource]:
    """Resolve `joint_map` (default CMU_JOINT_MAP) against the file's joint names: SMPL joint ->
    JointSource holding only the alternatives found (position: one group or (); rotation: one
    name or ()). Raises InputError naming the file if the root or legs are not found."""
    joint_map = CMU_JOINT_MAP if joint_map is None else joint_map
    lookup = {_norm(n): n for n in bvh.names}
    resolved: dict[str, JointSource] = {}
    for smpl_name, source in joint_map.items():
        if smpl_name not in JOINT_INDEX:
            raise InputError(f"unknown SMPL joint {smpl_name!r} (expected one of {', '.join(JOINT_NAMES)})",
                             field="joint_map")
        if source.align not in ("bone", "root"):
            raise InputError(f"{smpl_name}: align must be 'bone' or 'root', got {source.align!r}",
                             field="joint_map")
        position = next((tuple(lookup[_norm(n)] for n in group) for group in source.position
                         if all(_norm(n) in lookup for n in group)), ())
        rotation = next((lookup[_norm(n)] for n in source.rotation if _norm(n) in lookup), None)
        resolved[smpl_name] = JointSource((position,) if position else (), (rotation,) if rotation else (),
                                          source.weight, source.align)
    needed = ("pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
    missing = [n for n in needed if n not in resolved or not resolved[n].position or not resolved[n].rotation]
    if missing:
        raise InputError(f"cannot find the BVH joints for SMPL {', '.join(missing)} "
                         f"(the file has {', '.join(bvh.names[:40])})", file=bvh.path, field="joint_map",
                         hint="pass joint_map={'left_hip': JointSource((('MyLeftThigh',),), "
                              "('MyLeftThigh',), 1.0), ...} naming your skeleton's joints")
    return resolved


def _norm(name: str) -> str:
    return name.split(":")[-1].lower()


# -- targets and rest-pose geometry ------------------------------------------------------------------

def _targets(positions: np.ndarray, bvh: Bvh, resolved: dict[str, JointSource]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From BVH joint positions (..., J, 3): each SMPL joint's target point (..., 24, 3) (zeros
    where none), (24,) bool has a point, (24,) position weight."""
    out = np.zeros(positions.shape[:-2] + (NUM_JOINTS, 3))
    has = np.zeros(NUM_JOINTS, bool)
    weight = np.zeros(NUM_JOINTS)
    for name, source in resolved.items():
        if source.position:
            j = JOINT_INDEX[name]
            out[..., j, :] = positions[..., [bvh.index(n) for n in source.position[0]], :].mean(-2)
            has[j], weight[j] = True, source.weight
    return out, has, weight


def _rest_bvh(bvh: Bvh) -> np.ndarray:
    """(J, 3) rest pose joint positions (every channel zero, root at the origin). Every joint's
    rest world rotation is the identity, so rest directions need no frame change."""
    rest = Bvh(bvh.names, bvh.parents, bvh.offsets, bvh.channels, bvh.frame_time,
               np.zeros((1, bvh.num_channels), np.float32))
    positions = bvh_global_transforms(rest)[1][0]
    return positions - positions[0]


def _leg_length(points: np.ndarray) -> float:
    """Mean hip -> knee -> ankle length of (24, 3) SMPL-layout points."""
    total = 0.0
    for side in ("left", "right"):
        hip, knee, ankle = (points[JOINT_INDEX[f"{side}_{n}"]] for n in ("hip", "knee", "ankle"))
        total += np.linalg.norm(knee - hip) + np.linalg.norm(ankle - knee)
    return total / 2


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(3, 3) rotation C minimising sum ||C src_i - dst_i||^2 over unit directions (K, 3); the
    shortest arc of the mean direction when the directions are (nearly) collinear."""
    src, dst = _unit(src), _unit(dst)
    u, sing, vt = np.linalg.svd(dst.T @ src)
    if len(src) == 1 or sing[1] < 1e-3 * sing[0]:
        i = int(np.argmax(np.linalg.norm(src, axis=1)))
        return rotation_between(src[i], dst[i])
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _nearest_targets(has: np.ndarray) -> dict[int, list[int]]:
    """SMPL joint -> its nearest descendants that have a target point."""
    out: dict[int, list[int]] = {j: [] for j in range(NUM_JOINTS)}
    for c in range(1, NUM_JOINTS):
        if not has[c]:
            continue
        a = PARENTS[c]
        while True:
            out[a].append(c)
            if has[a] or a == 0:
                break
            a = PARENTS[a]
    return out


def _rest_alignment(smpl_rest: np.ndarray, bvh_rest: np.ndarray, bvh: Bvh,
                    resolved: dict[str, JointSource], target_rest: np.ndarray, has: np.ndarray) -> np.ndarray:
    """(24, 3, 3) C_j turning SMPL's rest directions from joint j to its nearest targeted
    descendants onto the BVH's (from j's own point, else from its rotation source). Joints
    without a source, without targeted descendants, or with align="root" keep their parent's."""
    below = _nearest_targets(has)
    align = np.tile(np.eye(3), (NUM_JOINTS, 1, 1))
    size = np.abs(bvh_rest).max() + 1e-12
    for j in range(NUM_JOINTS):   # parents come first
        align[j] = align[PARENTS[j]] if j else np.eye(3)
        source = resolved.get(JOINT_NAMES[j])
        if source is None or not source.rotation or not below[j] or source.align == "root":
            continue
        start = target_rest[j] if has[j] else bvh_rest[bvh.index(source.rotation[0])]
        src = smpl_rest[below[j]] - smpl_rest[j]
        dst = target_rest[below[j]] - start
        keep = np.linalg.norm(dst, axis=1) > 1e-6 * size
        if keep.any():
            align[j] = _align(src[keep], dst[keep])
    return align


def _calibrate_hinges(align: np.ndarray, grot: np.ndarray, bvh: Bvh, resolved: dict[str, JointSource],
                      smpl_rest: np.ndarray, target_rest: np.ndarray, has: np.ndarray,
                      min_angle: float) -> np.ndarray:
    """Turn the upper and lower limbs' C about their bones so SMPL's elbow/knee hinge axis lands
    on the axis about which the mocap's elbow/knee turns most (over the frames where it bends
    more than `min_angle` degrees). A mocap rest pose may hold its arms rolled differently from
    SMPL's (palms forward vs down), which the bone directions cannot show. grot: (T, J, 3, 3)."""
    align = align.copy()
    for name, axis in HINGE_AXES.items():
        j, c = JOINT_INDEX[name], JOINT_INDEX[_HINGE_CHILD[name]]
        p = PARENTS[j]
        sources = [resolved.get(JOINT_NAMES[k]) for k in (p, j)]
        if any(s is None or not s.rotation for s in sources) or not (has[p] and has[j] and has[c]):
            continue
        rp, rj = (bvh.index(s.rotation[0]) for s in sources)
        relative = np.einsum("tji,tjk->tik", grot[:, rp], grot[:, rj])   # rj in rp's frame
        rotvec = R.from_matrix(relative).as_rotvec()
        bent = rotvec[np.linalg.norm(rotvec, axis=1) > np.deg2rad(min_angle)]
        if len(bent) < 3:
            continue
        hinge = np.linalg.svd(bent, full_matrices=False)[2][0]
        for k, child in ((p, j), (j, c)):
            bone = _unit(target_rest[child] - target_rest[k])
            base = rotation_between(_unit(smpl_rest[child] - smpl_rest[k]), bone)
            turned = _twist_onto(base, bone, np.asarray(axis), hinge)
            if turned is not None:
                align[k] = turned
    return align


def _twist_onto(base: np.ndarray, bone: np.ndarray, smpl_axis: np.ndarray, hinge: np.ndarray
                ) -> np.ndarray | None:
    """`base` turned about unit `bone` so base @ smpl_axis points along +-hinge (the smaller
    turn); None when either axis lies within 30 degrees of the bone (the mocap mostly rolls
    the limb, or the skeletons disagree too much to tell a twist)."""
    h = base @ smpl_axis
    h, g = h - bone * (h @ bone), hinge - bone * (hinge @ bone)
    if np.linalg.norm(h) < 0.5 or np.linalg.norm(g) < 0.5:   # sin(30 deg)
        return None
    h, g = _unit(h), _unit(g)
    angle = np.arctan2(np.cross(h, g) @ bone, h @ g)
    if abs(angle) > np.pi / 2:    # a hinge axis has no sign: turn onto -g instead
        angle -= np.pi * np.sign(angle)
    return R.from_rotvec(bone * angle).as_matrix() @ base


# -- conversion ------------------------------------------------------------------------------------------

def _rows(bvh: Bvh, fps: float, frames: slice | None) -> tuple[np.ndarray, int]:
    step = max(1, int(round(bvh.fps / fps)))
    rows = np.arange(bvh.num_frames)[frames if frames is not None else slice(None)][::step]
    if len(rows) == 0:
        raise InputError("no frames to convert", file=bvh.path, field="frames")
    return rows, step


def bvh_up_axis(bvh: Bvh, joint_map: dict[str, JointSource] | None = None) -> str:
    """"y" or "z": the axis the rest skeleton's legs hang down along (ankles -> hips). Raises
    InputError naming the file when the legs point along neither -Y nor -Z."""
    target, _, _ = _targets(_rest_bvh(bvh), bvh, match_joints(bvh, joint_map))
    up = _unit(target[JOINT_INDEX["pelvis"]] - target[[JOINT_INDEX["left_ankle"], JOINT_INDEX["right_ankle"]]].mean(0))
    axis = int(np.argmax(np.abs(up)))
    if axis == 0 or up[axis] < 0.7:
        raise InputError(f"cannot tell the up axis: the rest skeleton's legs point along {np.round(-up, 2).tolist()}, "
                         "not down -Y or -Z", file=bvh.path, field="up", hint="pass up='y' or up='z'")
    return "xyz"[axis]


def _up(options: BvhSmplOptions, bvh: Bvh, joint_map) -> np.ndarray:
    """(3, 3) the turn from the file's axes to Pointwear's Y-up world."""
    up = bvh_up_axis(bvh, joint_map) if options.up == "auto" else options.up
    if up not in ("y", "z"):
        raise InputError(f"up must be 'y', 'z' or 'auto', got {options.up!r}", field="up")
    return np.eye(3) if up == "y" else Z_UP_TO_Y_UP.as_matrix()


def bvh_to_smpl(bvh: Bvh, body, joint_map: dict[str, JointSource] | None = None, fps: float | None = None,
                options: BvhSmplOptions = BvhSmplOptions(), frames: slice | None = None) -> dict:
    """Convert a BVH motion to SMPL poses of `body` (a pointwear BodyModel), Y-up.

    Returns {"poses": (T, 72) float32 axis-angle (global orient + 23 body joints),
             "trans": (T, 3) float32 metres, "betas": (num_betas,) float32,
             "mocap_framerate": float, "bvh_scale": float metres per BVH unit}.
    `frames` selects BVH rows before subsampling to `fps` (default options.fps). The dict is an
    AMASS-style motion: `write_motion(path, to_motion(result))`, read back with
    `read_motion(path, up="y")`."""
    if fps is not None:
        options = BvhSmplOptions(**{**asdict(options), "fps": fps})
    resolved = match_joints(bvh, joint_map)
    up = _up(options, bvh, joint_map)
    rows, step = _rows(bvh, options.fps, frames)
    # the whole file turned into the Y-up world (rest rotations stay the identity)
    grot, gpos = bvh_global_transforms(bvh, rows)                 # (T, J, 3, 3), (T, J, 3)
    grot, gpos = up @ grot @ up.T, gpos @ up.T
    rest = _rest_bvh(bvh) @ up.T
    target_rest, has, weight = _targets(rest, bvh, resolved)
    with torch.no_grad():
        smpl_rest = body.shaped(None)[1][0].double().cpu().numpy()   # (24, 3), betas 0
    scale = _leg_length(smpl_rest) / _leg_length(target_rest)
    target = _targets(gpos, bvh, resolved)[0] * scale              # (T, 24, 3) metres

    # 1. rotation transfer
    align = _rest_alignment(smpl_rest, rest, bvh, resolved, target_rest, has)
    if options.hinge_min_angle is not None:
        align = _calibrate_hinges(align, grot, bvh, resolved, smpl_rest, target_rest, has,
                                  options.hinge_min_angle)
    world = np.empty((len(rows), NUM_JOINTS, 3, 3))
    for j in range(NUM_JOINTS):
        source = resolved.get(JOINT_NAMES[j])
        if source is not None and source.rotation:
            world[:, j] = grot[:, bvh.index(source.rotation[0])] @ align[j]
        else:       # no source: move with the parent
            world[:, j] = world[:, PARENTS[j]]
    local = world.copy()
    local[:, 1:] = np.einsum("tkji,tkjl->tkil", world[:, PARENTS[1:]], world[:, 1:])
    pose0 = R.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(len(rows), NUM_JOINTS, 3)
    trans0 = target[:, 0] - smpl_rest[0]

    # 2. refinement
    pose, trans, betas = _refine(body, pose0, trans0, target, has, weight, options)
    return {"poses": pose.reshape(len(rows), -1).astype(np.float32), "trans": trans.astype(np.float32),
            "betas": betas.astype(np.float32), "mocap_framerate": float(bvh.fps / step),
            "bvh_scale": float(scale)}


def _bones(has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bone pairs (a, b): b has a target point and a is its nearest ancestor with one."""
    starts, ends = [], []
    for b in range(1, NUM_JOINTS):
        if not has[b]:
            continue
        a = PARENTS[b]
        while a > 0 and not has[a]:
            a = PARENTS[a]
        if has[a]:
            starts.append(a)
            ends.append(b)
    return np.array(starts, np.int64), np.array(ends, np.int64)


def smpl_joints(body, betas: torch.Tensor, pose: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
    """(T, 24, 3) posed joints, as body.forward's, from betas (1, B), axis-angle pose (T, 24, 3)
    and trans (T, 3), without posing the mesh."""
    _, rest = body.shaped(betas)
    num = pose.shape[0]
    rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(num, NUM_JOINTS, 3, 3)
    joints, _ = rigid_transform(rot, rest.expand(num, -1, -1), body.parent_list)
    return joints + trans[:, None]


def _refine(body, pose0: np.ndarray, trans0: np.ndarray, target: np.ndarray, has: np.ndarray,
            weight: np.ndarray, options: BvhSmplOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pose0 (T, 24, 3), trans0 (T, 3), target (T, 24, 3) -> refined pose, trans, betas (B,)."""
    device, dtype = body.device, torch.float32
    tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)  # noqa: E731
    anchor = tensor(pose0)
    pose = anchor.clone().requires_grad_(True)
    trans = tensor(trans0).requires_grad_(True)
    betas = torch.zeros(1, body.num_betas, dtype=dtype, device=device, requires_grad=options.fit_betas)
    goal, w = tensor(target), tensor(weight)
    starts, ends = _bones(has)
    goal_dir = torch.nn.functional.normalize(goal[:, ends] - goal[:, starts], dim=-1)
    if options.iterations <= 0:
        return pose0, trans0, np.zeros(body.num_betas)
    params = [pose, trans] + ([betas] if options.fit_betas else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=options.iterations, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        opt.zero_grad()
        joints = smpl_joints(body, betas, pose, trans)
        position = ((joints - goal).square().sum(-1) * w).sum(-1) / options.position_sigma ** 2
        d = torch.nn.functional.normalize(joints[:, ends] - joints[:, starts], dim=-1)
        direction = (1 - (d * goal_dir).sum(-1)).sum(-1) * options.direction_weight
        loss = (position + direction).mean()
        loss = loss + options.anchor_weight * (pose - anchor).square().sum((1, 2)).mean()
        if pose.shape[0] > 1:    # body joints only: the root's axis-angle wraps when the actor turns
            loss = loss + options.smooth_weight * (pose[1:, 1:] - pose[:-1, 1:]).square().sum((1, 2)).mean()
        if options.fit_betas:
            loss = loss + options.betas_weight * betas.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (pose.detach().cpu().double().numpy(), trans.detach().cpu().double().numpy(),
            betas.detach()[0].cpu().double().numpy())


def to_motion(converted: dict) -> Motion:
    """The converted dict as a Y-up Motion, for write_motion."""
    poses = converted["poses"]
    return Motion(poses[:, :3].copy(), poses[:, 3:].copy(), converted["trans"].copy(),
                  float(converted["mocap_framerate"]), converted["betas"].copy())


def source_and_result(bvh: Bvh, converted: dict, body, joint_map: dict[str, JointSource] | None = None,
                      options: BvhSmplOptions = BvhSmplOptions(), frames: slice | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the same frames as bvh_to_smpl with the same arguments: the BVH's points for each
    SMPL joint, scaled and turned into the Y-up world (T, 24, 3) metres (zeros where none),
    (24,) bool has a point, and the converted body's joints (T, 24, 3)."""
    resolved = match_joints(bvh, joint_map)
    rows, _ = _rows(bvh, float(converted["mocap_framerate"]), frames)
    target, has, _ = _targets(bvh_global_transforms(bvh, rows)[1], bvh, resolved)
    target = np.einsum("ij,tkj->tki", _up(options, bvh, joint_map), target) * float(converted["bvh_scale"])
    poses = torch.as_tensor(converted["poses"], dtype=torch.float32, device=body.device)
    with torch.no_grad():
        joints = smpl_joints(body, body.betas_tensor(converted["betas"]), poses.reshape(-1, NUM_JOINTS, 3),
                             torch.as_tensor(converted["trans"], dtype=torch.float32, device=body.device))
    return target, has, joints.cpu().double().numpy()


def conversion_errors(bvh: Bvh, converted: dict, body, joint_map: dict[str, JointSource] | None = None,
                      options: BvhSmplOptions = BvhSmplOptions(), frames: slice | None = None
                      ) -> dict[str, dict[str, np.ndarray]]:
    """How far the converted body is from the mocap, over the same frames as bvh_to_smpl with
    the same arguments: {"position": {SMPL joint: (T,) metres to its scaled BVH point},
    "direction": {"a->b": (T,) degrees between the SMPL bone a->b and the BVH's}}."""
    target, has, joints = source_and_result(bvh, converted, body, joint_map, options, frames)
    position = np.linalg.norm(joints - target, axis=-1)
    starts, ends = _bones(has)
    cos = (_unit(joints[:, ends] - joints[:, starts]) * _unit(target[:, ends] - target[:, starts])).sum(-1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return {"position": {JOINT_NAMES[j]: position[:, j] for j in range(NUM_JOINTS) if has[j]},
            "direction": {f"{JOINT_NAMES[a]}->{JOINT_NAMES[b]}": angle[:, i]
                          for i, (a, b) in enumerate(zip(starts, ends))}}
