# SPDX-License-Identifier: GPL-3.0-or-later
"""Bounded reading of .npz files and the one AMASS motion reader, shared by the add-on (as
``link.arrays``) and the backend (as ``pointwear.link.arrays``).

Every file is checked before anything in it is expanded: it must be a regular file (a pipe would
block the reader) of at most ``max_file_bytes``; each member's .npy header (shape, dtype) is read
first and an array over its element limit, or one of Python objects, is refused before its data
is inflated (a 1 MB compressed member can hold gigabytes of zeros). Errors are
:class:`ArrayFileError` naming the file and the key.

numpy is imported here (Blender and the backend both have it); :mod:`.protocol` stays standard
library only.
"""

from __future__ import annotations

import os
import stat
import zipfile

import numpy as np

MAX_FILE_BYTES = 2 << 30           # 2 GiB: no file the add-on or the backend reads is larger
MAX_ARRAY_ELEMENTS = 1 << 28       # 268 M elements (2 GiB of float64) for a key without its own limit
MAX_MOTION_FRAMES = 200_000        # an AMASS motion: nearly 2 hours at 30 fps (AMASS clips are minutes)
MAX_POSE_COLUMNS = 3 * 55          # SMPL-X: 55 joints
MAX_BETAS = 300


class ArrayFileError(ValueError):
    """A file that cannot be read as the arrays it should hold: ``file``, ``field`` (the key,
    or None for the whole file) and ``message``."""

    def __init__(self, file, field, message):
        self.file, self.field, self.message = os.fspath(file), field, message
        super().__init__("{}: {}{}".format(self.file, field + ": " if field else "", message))


def check_regular_file(path, max_bytes=MAX_FILE_BYTES):
    """The size of ``path``, a regular file of at most ``max_bytes``; ArrayFileError otherwise."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ArrayFileError(path, None, "file not found") from None
    except OSError as exc:
        raise ArrayFileError(path, None, "cannot be read ({})".format(exc.strerror or exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise ArrayFileError(path, None, "is not a regular file (a pipe, socket, device or folder)")
    if info.st_size > max_bytes:
        raise ArrayFileError(path, None, "is {:.1f} MiB, over the limit of {:.0f} MiB".format(
            info.st_size / 2 ** 20, max_bytes / 2 ** 20))
    return info.st_size


def npz_headers(path):
    """``{key: (shape, dtype)}`` of an .npz, read from the .npy headers only (no data)."""
    check_regular_file(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[info.filename[:-4]] = (tuple(int(n) for n in shape), dtype)
    except ArrayFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
        raise ArrayFileError(path, None, "not a readable .npz ({}: {})".format(type(exc).__name__, exc)) from None
    return out


def load_npz(path, limits=None, keys=None, default_limit=MAX_ARRAY_ELEMENTS):
    """The arrays of an .npz (``keys``: only these, when present) as a dict, each checked against
    its element limit (``limits``: key -> max elements; others: ``default_limit``) before it is
    read. Object arrays are refused (they need pickle)."""
    limits = limits or {}
    headers = npz_headers(path)
    wanted = [k for k in headers if keys is None or k in keys]
    for key in wanted:
        shape, dtype = headers[key]
        count = 1
        for n in shape:
            count *= n
        limit = limits.get(key, default_limit)
        if count > limit:
            raise ArrayFileError(path, key, "shape {} has {} values, over the limit of {}".format(
                shape, count, limit))
        if dtype.hasobject:
            raise ArrayFileError(path, key, "is stored as Python objects (pickle), which is never loaded")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ArrayFileError(path, None, "not a readable .npz ({}: {})".format(type(exc).__name__, exc)) from None


def _positive_scalar(data, path, keys, default):
    """The first of ``keys`` present: one finite positive number (any shape holding one value)."""
    for key in keys:
        if key in data:
            value = np.asarray(data[key])
            if value.size != 1 or value.dtype.kind not in "fiu":
                raise ArrayFileError(path, key, "expected one number, got shape {} {}".format(value.shape, value.dtype))
            number = float(value.reshape(()))
            if not (np.isfinite(number) and number > 0):
                raise ArrayFileError(path, key, "expected a positive frame rate, got {!r}".format(number))
            return number
    return default


def read_amass(path, max_frames=MAX_MOTION_FRAMES):
    """An AMASS-style motion .npz, checked: ``poses (T, 3J)`` axis-angle with J >= 22 joints,
    ``trans (T, 3)``, an optional ``mocap_framerate`` (or ``mocap_frame_rate`` / ``fps``; 30 when
    absent) and ``betas``. Returns ``{"poses": (T, 72) float64, "trans": (T, 3) float64, "fps":
    float, "betas": (S,) float32 or None}``; SMPL-H / SMPL-X poses keep their 22 body joints and
    the two SMPL hand joints get no rotation. The file's up axis is the caller's business."""
    limits = {"poses": max_frames * MAX_POSE_COLUMNS, "trans": max_frames * 3, "betas": MAX_BETAS,
              "mocap_framerate": 1, "mocap_frame_rate": 1, "fps": 1}
    data = load_npz(path, limits, keys=tuple(limits), default_limit=1)
    for key in ("poses", "trans"):
        if key not in data:
            raise ArrayFileError(path, key, "missing key; the file has {}".format(sorted(data)))
    poses, trans = data["poses"], data["trans"]
    if poses.dtype.kind not in "fiu" or poses.ndim != 2 or poses.shape[1] < 66 or poses.shape[1] % 3:
        raise ArrayFileError(path, "poses", "expected (T, 72) axis-angle (or (T, 3J), J >= 22), got {} {}".format(
            poses.dtype, poses.shape))
    if len(poses) == 0:
        raise ArrayFileError(path, "poses", "no frames")
    if trans.dtype.kind not in "fiu" or trans.shape != (len(poses), 3):
        raise ArrayFileError(path, "trans", "expected ({}, 3) to match poses, got {} {}".format(
            len(poses), trans.dtype, trans.shape))
    for key, arr in (("poses", poses), ("trans", trans)):
        if not np.isfinite(arr).all():
            raise ArrayFileError(path, key, "contains NaN or inf")
    poses = np.asarray(poses, np.float64)
    if poses.shape[1] != 72:
        poses = np.concatenate([poses[:, :66], np.zeros((len(poses), 6))], axis=1)
    betas = None
    if "betas" in data:
        betas = data["betas"]
        if betas.dtype.kind not in "fiu" or not np.isfinite(betas).all():
            raise ArrayFileError(path, "betas", "expected finite numbers, got {} {}".format(betas.dtype, betas.shape))
        betas = betas.astype(np.float32).reshape(-1)
    fps = _positive_scalar(data, path, ("mocap_framerate", "mocap_frame_rate", "fps"), 30.0)
    return {"poses": poses, "trans": np.asarray(trans, np.float64), "fps": fps, "betas": betas}
