"""Motion from any rig: a BVH skeleton (CMU 31-joint, Mixamo-style, others through a name table)
retargeted to SMPL's 24 joints as an AMASS-style motion (`pointwear motion import`).

The conversion itself is `bvh_smpl.bvh_to_smpl` (rest-pose alignment, per-joint rotation transfer,
root translation scaled by leg length, refinement). This module adds what a user's file needs
around it:
- joint names: the file's names are mapped onto the CMU names the converter knows through a name
  table (`bvh_names.json` beside this file, extended by the user's own files); names that match
  nothing are named in the error, with the table files to extend;
- units and axes: the file's unit is told from its leg length (metres, centimetres, millimetres,
  inches, feet, or CMU's own ~5.6 cm unit) and its up axis from its rest skeleton, and both are
  said in the report's `notes`;
- quality: joint-position error of the retargeted body against the (scaled, turned) BVH joints,
  and foot skating (horizontal foot speed while the foot is in contact with the floor) of the
  result beside the source's own.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from scipy.spatial.transform import Rotation

from ..body.joints import JOINT_INDEX, JOINT_NAMES
from ..errors import InputError
from ..link.protocol import SKELETON_KEYS
from .bvh import Bvh, read_bvh
from .bvh_smpl import (CMU_JOINT_MAP, BvhSmplOptions, _leg_length, _rest_bvh, _targets, bvh_to_smpl,
                       bvh_up_axis, match_joints, source_and_result, to_motion)
from .motion import write_motion

NAME_TABLE = Path(__file__).with_name("bvh_names.json")
MAX_TABLE_BYTES = 1 << 20
# CMU names the converter uses besides CMU_JOINT_MAP's (kept so they are not called unknown).
_CMU_EXTRA = ("LHipJoint", "RHipJoint", "LThumb", "RThumb", "LeftFingerBase", "RightFingerBase")
# Units a skeleton may be in: metres per unit. An adult's hip -> knee -> ankle is ~0.85 m.
UNITS = {"metres": 1.0, "centimetres": 0.01, "millimetres": 0.001, "inches": 0.0254, "feet": 0.3048,
         "CMU units (about 5.6 cm)": 0.056}
FOOT_JOINTS = ("left_ankle", "right_ankle", "left_foot", "right_foot")


@dataclass(frozen=True)
class RetargetOptions:
    fps: float = 30.0                 # output frame rate (the BVH is subsampled)
    up: str = "auto"                  # "auto", "y" or "z": the BVH's up axis
    iterations: int = 60              # refinement iterations (0: rotation transfer only)
    leg_length_m: float = 0.85        # an adult's hip -> knee -> ankle, to tell the file's unit
    unit_tolerance: float = 1.6       # a unit is named when the scale is within this factor of it
    contact_height: float = 0.04      # m above a foot joint's floor (its 5th percentile height): in contact
    floor_percentile: float = 5.0


def _key(name: str) -> str:
    """Names match ignoring case, a 'namespace:' prefix and the separators ' ', '_', '-', '.'."""
    return re.sub(r"[\s_.\-]", "", name.split(":")[-1].lower())


def canonical_names() -> list[str]:
    """The CMU joint names the converter knows."""
    names = list(_CMU_EXTRA)
    for source in CMU_JOINT_MAP.values():
        names += [n for group in source.position for n in group] + list(source.rotation)
    return list(dict.fromkeys(names))


def load_name_table(extra: list[str | Path] = ()) -> tuple[dict[str, str], list[Path]]:
    """{alias key: CMU name} from the shipped table and the user's `extra` files (same layout:
    {"aliases": {"LeftUpLeg": ["MyThigh", ...]}}), and the files read. Errors name the file."""
    table = {_key(n): n for n in canonical_names()}
    files = [NAME_TABLE] + [Path(p) for p in extra]
    known = set(table.values())
    for path in files:
        if not path.is_file():
            raise InputError("joint-name table not found", file=path)
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise InputError(f"over {MAX_TABLE_BYTES} bytes: not a joint-name table", file=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"not JSON: {exc}", file=path) from None
        aliases = data.get("aliases") if isinstance(data, dict) else None
        if not isinstance(aliases, dict):
            raise InputError('expected {"aliases": {"CMU joint name": ["other name", ...]}}', file=path,
                             field="aliases")
        for cmu, names in aliases.items():
            if cmu not in known:
                raise InputError(f"{cmu!r} is not a joint the converter knows ({', '.join(sorted(known))})",
                                 file=path, field=f"aliases.{cmu}")
            if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
                raise InputError("expected a list of joint names", file=path, field=f"aliases.{cmu}")
            for n in names:
                table.setdefault(_key(n), cmu)
    return table, files


def canonical_bvh(bvh: Bvh, table: dict[str, str]) -> tuple[Bvh, list[str]]:
    """The BVH with its joints renamed to CMU names where the table knows them (a name already
    CMU's stays; a second joint for the same CMU name keeps its own), and the names it does not
    know."""
    taken, names, unknown = set(), [], []
    for name in bvh.names:
        cmu = table.get(_key(name))
        if cmu is None:
            unknown.append(name)
        if cmu is None or cmu in taken:
            names.append(name)
        else:
            taken.add(cmu)
            names.append(cmu)
    return replace(bvh, names=names), unknown


def describe_units(metres_per_unit: float, options: RetargetOptions = RetargetOptions()) -> str:
    """The unit a skeleton is in, from the scale that brings its legs to the body's."""
    best = min(UNITS, key=lambda u: abs(np.log(metres_per_unit / UNITS[u])))
    if abs(np.log(metres_per_unit / UNITS[best])) <= np.log(options.unit_tolerance):
        return best
    return f"unknown units ({metres_per_unit:.4g} m per unit)"


def foot_skating(joints: np.ndarray, fps: float, options: RetargetOptions = RetargetOptions()) -> dict:
    """Foot speed while in contact, from (T, 24, 3) Y-up joints in metres: per foot joint
    (ankles, balls of the feet) the frames within `contact_height` of that joint's floor (its
    low percentile height) at both ends of a step count as contact; their horizontal speed.
    Returns {"speed_cm_s": mean over contact steps, "contact": fraction of steps in contact}."""
    speeds, steps, contact_steps = [], 0, 0
    for name in FOOT_JOINTS:
        p = joints[:, JOINT_INDEX[name]]
        floor = np.percentile(p[:, 1], options.floor_percentile)
        low = p[:, 1] < floor + options.contact_height
        both = low[1:] & low[:-1]
        step = np.linalg.norm(np.diff(p[:, [0, 2]], axis=0), axis=-1) * fps
        speeds.append(step[both])
        steps += len(both)
        contact_steps += int(both.sum())
    speed = np.concatenate(speeds)
    return {"speed_cm_s": float(speed.mean() * 100) if len(speed) else 0.0,
            "contact": contact_steps / max(1, steps)}


def retarget_report(bvh: Bvh, converted: dict, body, options: BvhSmplOptions, frames: slice | None) -> dict:
    """Joint-position error (cm) and foot skating of the result beside the source's."""
    target, has, joints = source_and_result(bvh, converted, body, None, options, frames)
    error = np.linalg.norm(joints - target, axis=-1)                        # (T, 24)
    legs = [JOINT_INDEX[n] for n, s in CMU_JOINT_MAP.items() if s.weight > 0 and has[JOINT_INDEX[n]]]
    fps = float(converted["mocap_framerate"])
    return {"frames": int(len(joints)), "fps": fps,
            "joint_error_cm": {"root_and_legs": float(error[:, legs].mean() * 100),
                               "all": float(error[:, has].mean() * 100),
                               "per_joint": {JOINT_NAMES[j]: float(error[:, j].mean() * 100)
                                             for j in np.flatnonzero(has)}},
            "foot_skating": {"source": foot_skating(target, fps), "retargeted": foot_skating(joints, fps)}}


MAX_SKELETON_JOINTS = 1000
MAX_SKELETON_FRAMES = 200_000


def bvh_from_skeleton(path: str | Path) -> Bvh:
    """A Bvh from an armature's sampled motion (protocol SKELETON_NPZ, written by the add-on's
    Retarget from Armature): offsets from the rest joint heads, ZYX rotation channels from the
    local rotations L_j = D_parent^T D_j of the rest-relative world rotations D, the root's
    position channels from its head; leaf bones end at their tails (End Sites)."""
    from ..fileio import load_npz
    j, t = MAX_SKELETON_JOINTS, MAX_SKELETON_FRAMES
    data = load_npz(path, {"names": j, "parents": j, "rest": 3 * j, "tails": 3 * j, "rotations": 9 * j * t,
                           "root": 3 * t, "fps": 1})
    missing = [k for k in SKELETON_KEYS if k not in data]
    if missing:
        raise InputError("missing key", file=path, field=missing[0])
    names = [str(n) for n in data["names"]]
    parents = np.asarray(data["parents"], np.int64)
    rest, tails = np.asarray(data["rest"], np.float64), np.asarray(data["tails"], np.float64)
    rot, root = np.asarray(data["rotations"], np.float64), np.asarray(data["root"], np.float64)
    count = len(names)
    shapes = {"parents": (parents.shape, (count,)), "rest": (rest.shape, (count, 3)),
              "tails": (tails.shape, (count, 3)), "rotations": (rot.shape[1:], (count, 3, 3)),
              "root": (root.shape, (len(rot), 3))}
    for key, (got, want) in shapes.items():
        if tuple(got) != want:
            raise InputError(f"shape {tuple(got)}, expected {want}", file=path, field=key)
    if not (np.isfinite(rest).all() and np.isfinite(rot).all() and np.isfinite(root).all()):
        raise InputError("not finite", file=path, field="rotations")
    if not count or (parents[0] != -1) or (parents[1:] < 0).any() or (parents[1:] >= np.arange(1, count)).any():
        raise InputError("parents must list the root first (-1), then each joint after its parent", file=path,
                         field="parents")
    fps = float(np.asarray(data["fps"]).reshape(-1)[0])
    if not 0 < fps <= 1000:
        raise InputError(f"must be within 0..1000, got {fps}", file=path, field="fps")
    u, _, vt = np.linalg.svd(rot)                       # the nearest rotations (scale, shear removed)
    rot = u @ vt
    local = rot.copy()
    local[:, 1:] = np.einsum("tjki,tjkl->tjil", rot[:, parents[1:]], rot[:, 1:])
    euler = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_euler("ZYX", degrees=True).reshape(len(rot), count, 3)
    offsets = rest - np.where(parents[:, None] >= 0, rest[np.maximum(parents, 0)], 0.0)
    offsets[0] = 0.0
    motion = np.concatenate([root[:, None, :], euler], 1)                  # root: position + rotation
    columns = [motion[:, 0], motion[:, 1]] + [motion[:, k] for k in range(2, count + 1)]
    channels = [("Xposition", "Yposition", "Zposition", "Zrotation", "Yrotation", "Xrotation")] + \
        [("Zrotation", "Yrotation", "Xrotation")] * (count - 1)
    has_child = np.zeros(count, bool)
    has_child[parents[1:]] = True
    ends = [(int(k), tails[k] - rest[k]) for k in np.flatnonzero(~has_child)]
    return Bvh([n.replace(" ", "_") for n in names], parents, offsets, channels, 1.0 / fps,
               np.concatenate(columns, 1).astype(np.float32), ends, str(path))


def read_source(path: str | Path) -> Bvh:
    """A motion source: a .bvh file, or an armature's sampled motion (.npz, SKELETON_NPZ)."""
    return bvh_from_skeleton(path) if str(path).lower().endswith(".npz") else read_bvh(path)


def _frames(frames: tuple[int, int] | None, bvh: Bvh) -> slice | None:
    if frames is None:
        return None
    start, end = frames
    if not 0 <= start < end <= bvh.num_frames:
        raise InputError(f"frames {start}-{end} are not within the file's 0-{bvh.num_frames}", file=bvh.path,
                         field="frames")
    return slice(start, end)


def retarget_bvh(path: str | Path, out: str | Path, body, name_tables: list[str | Path] = (),
                 options: RetargetOptions = RetargetOptions(), frames: tuple[int, int] | None = None,
                 progress=None) -> dict:
    """Retarget the BVH (or the add-on's skeleton .npz) at `path` onto `body` and write OUT (an AMASS-style Y-up motion .npz)
    and OUT with .json (the report). Returns the report: {"motion", "source", "units",
    "metres_per_unit", "up", "notes": [what was detected and done], "unknown_joints",
    "joint_error_cm", "foot_skating", "frames", "fps"}. Nothing is written on error."""
    progress = progress or (lambda stage, i, n: None)
    table, table_files = load_name_table(name_tables)
    source = read_source(path)
    bvh, unknown = canonical_bvh(source, table)
    try:
        match_joints(bvh)
    except InputError as exc:
        raise InputError(f"unknown joint names {', '.join(unknown) or '(none)'}: {exc.message}", file=path,
                         field="joints", hint="add them as aliases of the CMU joints to a name table (layout of "
                         f"{NAME_TABLE}) and pass it with --map FILE") from None
    sub = _frames(frames, bvh)
    smpl = BvhSmplOptions(fps=options.fps, up=options.up, iterations=options.iterations)
    up = bvh_up_axis(bvh) if options.up == "auto" else options.up
    progress("retarget", 0, 2)
    converted = bvh_to_smpl(bvh, body, options=smpl, frames=sub)
    progress("retarget", 1, 2)
    units = describe_units(converted["bvh_scale"], options)
    legs = _leg_length(_targets(_rest_bvh(bvh), bvh, match_joints(bvh))[0])
    notes = [f"{Path(path).name}: the skeleton is in {units} (legs {legs:.4g} units long): "
             f"scaled by {converted['bvh_scale']:.4g} m per unit to the body's leg length"]
    if up == "z":
        notes.append(f"{Path(path).name}: the skeleton is Z-up: turned to Pointwear's Y-up")
    if unknown:
        notes.append(f"joints not in the name table, left out: {', '.join(unknown[:20])}"
                     + (" ..." if len(unknown) > 20 else ""))
    report = {"motion": str(Path(out)), "source": str(Path(path)), "units": units,
              "metres_per_unit": float(converted["bvh_scale"]), "up": up, "notes": notes,
              "unknown_joints": unknown, "name_tables": [str(f) for f in table_files],
              "options": asdict(options), **retarget_report(bvh, converted, body, smpl, sub)}
    out = Path(out)
    write_motion(out, to_motion(converted), up="y")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    progress("retarget", 2, 2)
    return report
