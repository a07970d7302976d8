"""BVH motion capture files: a bounded, strict reader, a writer, and forward kinematics.

Conventions (as the Biovision format and Blender's importer define them):
- Angles are degrees. A joint's rotation channels are applied in the order they are listed, as
  intrinsic rotations: `CHANNELS 3 Zrotation Yrotation Xrotation` means R = Rz(z) @ Ry(y) @ Rx(x)
  (scipy: `Rotation.from_euler("ZYX", [z, y, x], degrees=True)`), and a child point p maps to the
  parent's frame as R @ p + t.
- A joint's translation t is its OFFSET; a position channel, where the joint has one, replaces
  that component of the offset (the root's Xposition is its absolute X). Most files have position
  channels only on the root, whose offset is usually zero.
- `End Site` blocks are kept (for writing the file back), not counted as joints.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

MAX_BYTES = 200 * 1024 * 1024   # refuse larger files: a BVH this big is not a motion we can use
MAX_JOINTS = 1000               # refuse deeper/wider skeletons: no real skeleton has this many joints
POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_CHANNEL_CANON = {c.lower(): c for c in POSITION_CHANNELS + ROTATION_CHANNELS}


@dataclass
class Bvh:
    """A parsed BVH file. J joints (End Sites excluded), C channels, T frames."""

    names: list[str]                      # (J,) joint names in file order (parents come first)
    parents: np.ndarray                   # (J,) int64, -1 for the root
    offsets: np.ndarray                   # (J, 3) float64, OFFSET of each joint in its parent's frame
    channels: list[tuple[str, ...]]       # (J,) each joint's channel names in file order
    frame_time: float                     # seconds per frame
    motion: np.ndarray                    # (T, C) float32, one row per frame
    end_sites: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (joint, offset (3,))
    path: str | None = None

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    @property
    def num_channels(self) -> int:
        return sum(len(c) for c in self.channels)

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    @property
    def channel_start(self) -> np.ndarray:
        """(J,) int64: the motion column of each joint's first channel."""
        counts = np.array([len(c) for c in self.channels], np.int64)
        return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def rotation_order(self, joint: int) -> str:
        """The joint's rotation axes in application order, e.g. "ZYX" ("" without rotations)."""
        return "".join(c[0] for c in self.channels[joint] if c.endswith("rotation"))

    def index(self, name: str) -> int:
        return self.names.index(name)


# -- reading --------------------------------------------------------------------------------------

class _Tokens:
    """Whitespace tokens of the HIERARCHY section, each with its 1-based line number."""

    def __init__(self, lines: list[str], start: int, path: Path) -> None:
        self.items: list[tuple[str, int]] = []
        self.pos = 0
        self.path = path
        self.motion_index = len(lines)   # 0-based index of the MOTION line (len(lines): none)
        for number in range(start, len(lines)):
            words = lines[number].split()
            if words and words[0].upper() == "MOTION":
                self.motion_index = number
                break
            self.items.extend((w, number + 1) for w in words)
        # 1-based line to blame when the hierarchy runs out: MOTION's, else the last line
        self.end_line = min(self.motion_index + 1, len(lines))

    def error(self, message: str, line: int | None = None) -> InputError:
        if line is None:
            line = self.items[min(self.pos, len(self.items) - 1)][1] if self.items else self.end_line
        return InputError(message, file=self.path, field=f"line {line}",
                          hint="BVH: HIERARCHY, ROOT name { OFFSET x y z CHANNELS n ... JOINT ... }, "
                               "MOTION, Frames: N, Frame Time: t, then N rows of numbers")

    def next(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.items):
            raise self.error(f"file ends in the hierarchy where {what} was expected", self.end_line)
        item = self.items[self.pos]
        self.pos += 1
        return item

    def expect(self, word: str) -> int:
        token, line = self.next(repr(word))
        if token.upper() != word.upper():
            raise self.error(f"expected {word!r}, got {token!r}", line)
        return line

    def number(self, what: str) -> float:
        token, line = self.next(what)
        try:
            value = float(token)
        except ValueError:
            raise self.error(f"{what}: expected a number, got {token!r}", line) from None
        if not math.isfinite(value):
            raise self.error(f"{what}: not a finite number ({token!r})", line)
        return value

    def peek(self) -> str | None:
        return self.items[self.pos][0] if self.pos < len(self.items) else None


def read_bvh(path: str | Path, max_bytes: int = MAX_BYTES, max_joints: int = MAX_JOINTS) -> Bvh:
    """Read a BVH file strictly. Every error is an InputError naming the file and `line N`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("BVH file not found", file=path)
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"file is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit",
                         file=path, hint="split the take into shorter clips")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.splitlines()
    start = _first_content_line(lines)
    if start is None or lines[start].split()[0].upper() != "HIERARCHY":
        line = 1 if start is None else start + 1
        raise InputError("not a BVH file: it must start with HIERARCHY", file=path, field=f"line {line}")
    tokens = _Tokens(lines, start + 1, path)
    skeleton = _parse_hierarchy(tokens, max_joints)
    names, parents, offsets, channels, end_sites = skeleton
    frame_time, motion = _parse_motion(lines, tokens.motion_index, sum(len(c) for c in channels), path)
    return Bvh(names, np.array(parents, np.int64), np.array(offsets, np.float64).reshape(-1, 3),
               channels, frame_time, motion, end_sites, str(path))


def _first_content_line(lines: list[str]) -> int | None:
    for number, line in enumerate(lines):
        if line.strip():
            return number
    return None


def _parse_hierarchy(tokens: _Tokens, max_joints: int):
    names: list[str] = []
    parents: list[int] = []
    offsets: list[tuple[float, float, float]] = []
    channels: list[tuple[str, ...]] = []
    end_sites: list[tuple[int, np.ndarray]] = []
    tokens.expect("ROOT")
    # Iterative, not recursive: depth is bounded by max_joints, not by Python's stack.
    stack: list[int] = []          # open joint blocks
    pending_parent = -1
    kind = "ROOT"
    while True:
        if kind in ("ROOT", "JOINT"):
            name, line = tokens.next("a joint name")
            if name in ("{", "}"):
                raise tokens.error(f"{kind} needs a name before {name!r}", line)
            if name in names:
                raise tokens.error(f"joint name {name!r} is used twice", line)
            if len(names) >= max_joints:
                raise tokens.error(f"more than {max_joints} joints", line)
            tokens.expect("{")
            tokens.expect("OFFSET")
            offset = tuple(tokens.number(f"OFFSET of {name}") for _ in range(3))
            tokens.expect("CHANNELS")
            chans = _parse_channels(tokens, name)
            names.append(name)
            parents.append(pending_parent)
            offsets.append(offset)
            channels.append(chans)
            stack.append(len(names) - 1)
        else:  # End Site
            word, line = tokens.next("'Site'")
            if word.upper() != "SITE":
                raise tokens.error(f"expected 'End Site', got 'End {word}'", line)
            tokens.expect("{")
            tokens.expect("OFFSET")
            offset = tuple(tokens.number("End Site OFFSET") for _ in range(3))
            tokens.expect("}")
            end_sites.append((stack[-1], np.array(offset, np.float64)))
        # children and closing braces of the open joints
        while True:
            token = tokens.peek()
            if token is None:
                raise tokens.error("file ends before MOTION, or a '}' is missing", tokens.end_line)
            upper = token.upper()
            if upper in ("JOINT", "END"):
                tokens.next(token)
                kind = upper
                pending_parent = stack[-1]
                break
            if token == "}":
                tokens.next("}")
                stack.pop()
                if not stack:
                    if tokens.peek() is not None:
                        extra, line = tokens.next("MOTION")
                        raise tokens.error(f"expected MOTION after the skeleton, got {extra!r} "
                                           "(only one ROOT is supported)", line)
                    return names, parents, offsets, channels, end_sites
                continue
            _, line = tokens.next(token)
            raise tokens.error(f"expected JOINT, End Site or '}}', got {token!r}", line)


def _parse_channels(tokens: _Tokens, name: str) -> tuple[str, ...]:
    count_token, line = tokens.next("a channel count")
    if not re.fullmatch(r"[0-9]+", count_token) or int(count_token) > 6:
        raise tokens.error(f"CHANNELS of {name}: expected a count 0..6, got {count_token!r}", line)
    chans = []
    for _ in range(int(count_token)):
        token, line = tokens.next("a channel name")
        canon = _CHANNEL_CANON.get(token.lower())
        if canon is None:
            raise tokens.error(f"CHANNELS of {name}: unknown channel {token!r} "
                               f"(expected one of {', '.join(_CHANNEL_CANON.values())})", line)
        if canon in chans:
            raise tokens.error(f"CHANNELS of {name}: {canon} listed twice", line)
        chans.append(canon)
    return tuple(chans)


def _parse_motion(lines: list[str], motion_line: int, num_channels: int, path: Path):
    def error(message: str, line: int) -> InputError:
        return InputError(message, file=path, field=f"line {line}")

    if motion_line >= len(lines):
        raise error("no MOTION section", len(lines))
    if lines[motion_line].split() != ["MOTION"] and lines[motion_line].strip().upper() != "MOTION":
        raise error(f"expected 'MOTION' alone on its line, got {lines[motion_line].strip()!r}", motion_line + 1)
    number = motion_line + 1
    frames_line = _next_nonblank(lines, number)
    if frames_line is None:
        raise error("file ends before 'Frames:'", len(lines))
    match = re.fullmatch(r"\s*Frames:\s*([0-9]+)\s*", lines[frames_line], re.IGNORECASE)
    if not match:
        raise error(f"expected 'Frames: N', got {lines[frames_line].strip()!r}", frames_line + 1)
    num_frames = int(match.group(1))
    time_line = _next_nonblank(lines, frames_line + 1)
    if time_line is None:
        raise error("file ends before 'Frame Time:'", len(lines))
    match = re.fullmatch(r"\s*Frame\s+Time:\s*(\S+)\s*", lines[time_line], re.IGNORECASE)
    try:
        frame_time = float(match.group(1)) if match else float("nan")
    except ValueError:
        frame_time = float("nan")
    if not (math.isfinite(frame_time) and frame_time > 0):
        raise error(f"expected 'Frame Time: t' with t > 0 seconds, got {lines[time_line].strip()!r}",
                    time_line + 1)
    rows = lines[time_line + 1:]
    while rows and not rows[-1].strip():
        rows.pop()
    first = time_line + 2   # 1-based line number of rows[0]
    if len(rows) != num_frames:
        raise error(f"'Frames: {num_frames}' but {len(rows)} frame rows follow",
                    frames_line + 1 if len(rows) < num_frames else first + num_frames)
    if num_channels == 0:
        if any(r.strip() for r in rows):
            raise error("the skeleton has no channels but frame rows have values", first)
        return frame_time, np.zeros((num_frames, 0), np.float32)
    for i, row in enumerate(rows):   # counts first: allocate only what the file really holds
        count = len(row.split())
        if count != num_channels:
            raise error(f"frame {i}: {count} values, the skeleton has {num_channels} channels", first + i)
    values = np.empty((num_frames, num_channels), np.float32)
    for lo in range(0, num_frames, _ROW_CHUNK):
        chunk = rows[lo:lo + _ROW_CHUNK]
        try:
            block = np.array(" ".join(chunk).split(), dtype=np.float64)
        except ValueError:
            block = None
        if block is None or not np.isfinite(block).all():
            _raise_bad_number(chunk, lo, first, error)
        values[lo:lo + len(chunk)] = block.reshape(len(chunk), num_channels)
    return frame_time, values


_ROW_CHUNK = 4096   # frame rows converted per numpy call (bounds the temporary string list)


def _raise_bad_number(chunk: list[str], lo: int, first: int, error) -> None:
    for i, row in enumerate(chunk):
        for word in row.split():
            try:
                ok = math.isfinite(float(word))
            except ValueError:
                ok = False
            if not ok:
                raise error(f"frame {lo + i}: {word!r} is not a finite number", first + lo + i)
    raise AssertionError("unreachable: a bad number was not found")


def _next_nonblank(lines: list[str], start: int) -> int | None:
    for number in range(start, len(lines)):
        if lines[number].strip():
            return number
    return None


# -- writing --------------------------------------------------------------------------------------

def bvh_text(bvh: Bvh) -> str:
    """The BVH file text of `bvh`; `read_bvh` of it gives back the same arrays exactly (offsets
    print as shortest round-trip float64, motion as float32). A file lists joints depth-first:
    joints kept in another order (parents still before children) come back in that order, with
    their motion columns moved along."""
    children: dict[int, list[int]] = {}
    for j, p in enumerate(bvh.parents):
        children.setdefault(int(p), []).append(j)
    ends: dict[int, list[np.ndarray]] = {}
    for j, offset in bvh.end_sites:
        ends.setdefault(int(j), []).append(offset)
    roots = children.get(-1, [])
    if len(roots) != 1:
        raise ValueError(f"a BVH needs exactly one root, this skeleton has {len(roots)}")
    if bvh.num_channels == 0 and bvh.num_frames:
        raise ValueError("a BVH with frames needs at least one channel (a frame row cannot be empty)")
    out = ["HIERARCHY"]

    def joint(j: int, depth: int, order: list[int]) -> None:
        order.append(j)
        pad = "\t" * depth
        out.append(f"{pad}{'ROOT' if depth == 0 else 'JOINT'} {bvh.names[j]}")
        out.append(pad + "{")
        out.append(f"{pad}\tOFFSET {_vec(bvh.offsets[j])}")
        out.append(f"{pad}\tCHANNELS {len(bvh.channels[j])}" + "".join(" " + c for c in bvh.channels[j]))
        for c in children.get(j, []):
            joint(c, depth + 1, order)
        for offset in ends.get(j, []):
            out.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {_vec(offset)}", f"{pad}\t}}"])
        out.append(pad + "}")

    order: list[int] = []
    joint(roots[0], 0, order)
    out += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time!r}"]
    # channels go in the file's (depth-first) joint order, whatever order `bvh` keeps its joints in
    start = bvh.channel_start
    columns = [start[j] + k for j in order for k in range(len(bvh.channels[j]))]
    motion = np.asarray(bvh.motion, np.float32)[:, columns]
    out.extend(" ".join(_f32(v) for v in row) for row in motion)
    return "\n".join(out) + "\n"


def write_bvh(path: str | Path, bvh: Bvh) -> Path:
    """Write `bvh` as a BVH file, atomically (see bvh_text)."""
    from ..fileio import save_text
    return save_text(path, bvh_text(bvh))


def _vec(v: np.ndarray) -> str:
    return " ".join(repr(float(x)) for x in v)


def _f32(x: np.float32) -> str:
    return np.format_float_positional(x, unique=True, trim="-") if abs(x) < 1e16 else repr(float(x))


# -- forward kinematics -----------------------------------------------------------------------------

def _axis_matrices(axis: str, degrees: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations about one of the axes "X", "Y", "Z" by `degrees` (T,)."""
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(a.shape + (3, 3))
    i = "XYZ".index(axis)
    j, k = (i + 1) % 3, (i + 2) % 3
    m[:, i, i] = 1.0
    m[:, j, j] = c
    m[:, k, k] = c
    m[:, k, j] = s
    m[:, j, k] = -s
    return m


def bvh_local_transforms(bvh: Bvh, frames=None) -> tuple[np.ndarray, np.ndarray]:
    """Each joint's rotation (T, J, 3, 3) and translation (T, J, 3) in its parent's frame (float64)."""
    motion = bvh.motion if frames is None else bvh.motion[frames]
    motion = np.asarray(motion, np.float64).reshape(-1, bvh.num_channels)
    num = motion.shape[0]
    rot = np.tile(np.eye(3), (num, bvh.num_joints, 1, 1))
    trans = np.tile(bvh.offsets[None], (num, 1, 1))
    for j, (chans, start) in enumerate(zip(bvh.channels, bvh.channel_start)):
        for k, chan in enumerate(chans):
            values = motion[:, start + k]
            if chan.endswith("position"):
                trans[:, j, "XYZ".index(chan[0])] = values
            else:
                rot[:, j] = rot[:, j] @ _axis_matrices(chan[0], values)
    return rot, trans


def bvh_global_transforms(bvh: Bvh, frames=None) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (T, J, 3, 3) and positions (T, J, 3) of every joint (float64)."""
    rot, trans = bvh_local_transforms(bvh, frames)
    grot = np.empty_like(rot)
    gpos = np.empty_like(trans)
    for j, p in enumerate(bvh.parents):
        if p < 0:
            grot[:, j], gpos[:, j] = rot[:, j], trans[:, j]
        else:
            grot[:, j] = grot[:, p] @ rot[:, j]
            gpos[:, j] = gpos[:, p] + np.einsum("tij,tj->ti", grot[:, p], trans[:, j])
    return grot, gpos


def bvh_global_positions(bvh: Bvh, frames=None) -> np.ndarray:
    """(T, J, 3) world positions of the joints in the file's units; `frames` selects rows
    (an index, slice or array) of the motion; None = all."""
    return bvh_global_transforms(bvh, frames)[1]


def bvh_end_positions(bvh: Bvh, frames=None) -> np.ndarray:
    """(T, E, 3) world positions of the End Sites, in `bvh.end_sites` order."""
    grot, gpos = bvh_global_transforms(bvh, frames)
    if not bvh.end_sites:
        return np.zeros((gpos.shape[0], 0, 3))
    joints = np.array([j for j, _ in bvh.end_sites])
    offsets = np.stack([o for _, o in bvh.end_sites])
    return gpos[:, joints] + np.einsum("teij,ej->tei", grot[:, joints], offsets)
