# SPDX-License-Identifier: GPL-3.0-or-later
"""The Pointwear wire protocol: the one definition both sides use (docs/protocol.md).

Newline-delimited UTF-8 JSON over TCP: every message is one JSON object on one line. The add-on
imports this file as ``link.protocol``; the backend imports the very same file as
``pointwear.link.protocol`` (pyproject.toml maps the package ``pointwear.link`` to ``addon/link``).
Pure standard library: no bpy, numpy, torch or ``pointwear`` imports here, ever.
"""

import json

# The product's one version: the add-on (blender_manifest.toml must say the same; the build checks
# it), the backend package (pyproject.toml reads it from here; ``pointwear.__version__``) and the
# backend wheel bundled in the extension. PROTOCOL_VERSION changes only when the wire format does.
VERSION = "0.1.0"
PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_LINE_BYTES = 1 << 20          # 1 MiB per message line, its newline included
TOKEN_ENV = "POINTWEAR_TOKEN"     # how a launcher hands its per-launch token to the server
HELLO_TIMEOUT_S = 10.0            # the server drops a connection that does not say hello by then
MAX_JSON_DEPTH = 32               # nesting of arrays/objects in one message (deeper: bad_json)
MAX_FRAMES = 100_000              # frame numbers in one frame list ("0-60000000" is refused unexpanded)
MAX_FRAME_NUMBER = 10_000_000     # the largest frame number a frame list may name
CHUNK_BYTES = 512 << 10           # file transfer: bytes per upload_chunk / download (base64 fits a line)
MAX_UPLOAD_FILES = 5000           # files in one upload (its manifest fits one line)
MAX_UPLOAD_BYTES = 32 << 30       # bytes in one upload
MAX_PATH_CHARS = 400              # a relative path in an upload or a listing
LIST_PAGE = 2000                  # entries per list reply ("next" pages on)
MIN_REMOTE_TOKEN_CHARS = 16       # a server bound beyond this machine refuses a shorter token
# Live fitting preview: a fit's PROGRESS event may carry "points", the current clothing points in
# the body's rest pose (SMPL space, Y-up) as one flat list of integers in PREVIEW_POINTS_UNIT
# metres [x0, y0, z0, x1, ...]: at most PREVIEW_POINTS_MAX points (evenly strided), sent with the
# preview image (every FIT_PREVIEW_EVERY_S seconds of the fit, i.e. every few steps).
PREVIEW_POINTS_MAX = 4096
PREVIEW_POINTS_UNIT = 0.001
PREVIEW_POINTS_LIMIT = 100_000    # |integer| bound (100 m): anything larger is refused

# -- client -> server message types (the "type" field) --------------------------------------------
MSG_HELLO = "hello"
MSG_SUBMIT = "submit"
MSG_CANCEL = "cancel"
MSG_STATUS = "status"
MSG_WATCH = "watch"
MSG_PING = "ping"
MSG_SHUTDOWN = "shutdown"
# File transfer for a backend on another machine (docs/protocol.md "File transfer"; the logic both
# sides share is in link/transfer.py, the server's in pointwear/server/transfer.py).
MSG_UPLOAD_BEGIN = "upload_begin"
MSG_UPLOAD_CHUNK = "upload_chunk"
MSG_UPLOAD_END = "upload_end"
MSG_LIST = "list"
MSG_DOWNLOAD = "download"
TRANSFER_TYPES = (MSG_UPLOAD_BEGIN, MSG_UPLOAD_CHUNK, MSG_UPLOAD_END, MSG_LIST, MSG_DOWNLOAD)
CLIENT_TYPES = (MSG_HELLO, MSG_SUBMIT, MSG_CANCEL, MSG_STATUS, MSG_WATCH, MSG_PING,
                MSG_SHUTDOWN) + TRANSFER_TYPES

# -- direct replies (server -> client, echo the request's "id") -----------------------------------
REPLY_HELLO = "hello"
REPLY_SUBMITTED = "submitted"
REPLY_OK = "ok"
REPLY_STATUS = "status"
REPLY_PONG = "pong"
REPLY_BYE = "bye"
REPLY_UPLOAD = "upload"          # upload_begin: the upload's id and what the server already has
REPLY_FILES = "files"            # list: files under a result path, with sizes and SHA-256
REPLY_DATA = "data"              # download: one chunk of a file, base64
REPLIES = (REPLY_HELLO, REPLY_SUBMITTED, REPLY_OK, REPLY_STATUS, REPLY_PONG, REPLY_BYE,
           REPLY_UPLOAD, REPLY_FILES, REPLY_DATA)

# -- events (server -> client): upper case, so a reader tells them from replies at a glance --------
EVENT_STATUS = STATUS = "STATUS"
EVENT_PROGRESS = PROGRESS = "PROGRESS"
EVENT_WARN = WARN = "WARN"
EVENT_ERROR = ERROR = "ERROR"
EVENT_RESULT = RESULT = "RESULT"
EVENT_DONE = DONE = "DONE"
EVENT_TYPES = EVENTS = (STATUS, PROGRESS, WARN, ERROR, RESULT, DONE)

# -- job states -------------------------------------------------------------------------------------
QUEUED = "queued"
RUNNING = "running"
STATE_DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"       # the server stopped while the job ran (or waited); checkpoint kept
JOB_STATES = (QUEUED, RUNNING, STATE_DONE, FAILED, CANCELLED, INTERRUPTED)
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (STATE_DONE, FAILED, CANCELLED, INTERRUPTED)
DONE_STATES = (STATE_DONE, FAILED, CANCELLED)   # what a DONE event can carry

# -- job kinds the backend serves today (the server's hello reply is the authority) ----------------
KIND_BODY = "body"
KIND_SYNTH = "synth"
KIND_FIT_OUTFIT = "fit_outfit"
KIND_DRAPE = "drape"
KIND_FIT_APPEARANCE = "fit_appearance"
KIND_RENDER = "render"
KIND_PREPARE = "prepare"           # a subject from a video, an image folder or one image
KIND_EXPORT = "export"             # a result as glb / obj / ply (backend pointwear.mesh.export)
KIND_RECONSTRUCT = "reconstruct"   # a textured, skinned garment mesh from one photo
KIND_MOTION_IMPORT = "motion_import"   # a BVH or an armature's sampled motion retargeted to SMPL
KIND_EDIT = "edit"                 # garment parameters changed: a new result folder
KIND_SLIDERS = "sliders"           # a result's slider table (per-slider response, for live re-drape)
JOB_KINDS = (KIND_BODY, KIND_SYNTH, KIND_FIT_OUTFIT, KIND_DRAPE, KIND_FIT_APPEARANCE, KIND_RENDER,
             KIND_PREPARE, KIND_EXPORT, KIND_RECONSTRUCT, KIND_MOTION_IMPORT, KIND_EDIT, KIND_SLIDERS)
EXPORT_FORMATS = ("glb", "obj", "ply")

# -- result files: the RESULT event's "files" maps these names to absolute paths --------------------
# Paths relative to the job's out folder ("" = the folder itself).
OUTFIT_NPZ = "outfit.npz"
POSED_NPZ = "posed.npz"
BODY_NPZ = "body.npz"
RESULT_JSON = "result.json"
APPEARANCE_PT = "appearance.pt"
OUTFIT_PLY = "outfit.ply"
RENDER_JSON = "render.json"
# The garment mesh block inside outfit.npz (written and read by backend pointwear.mesh.result_mesh,
# read by the add-on's io/results.py) and its albedo texture beside it.
MESH_KEYS = ("mesh_vertices", "mesh_faces", "mesh_weights", "mesh_garment", "mesh_uv")
TEXTURE_PNG = "texture.png"
MOTION_NPZ = "motion.npz"          # an AMASS-style motion (Y-up) written by motion_import
MOTION_REPORT = "motion.json"      # its report: units, up axis, joint error, foot skating
SLIDERS_NPZ = "sliders.npz"        # a result's slider table (docs/protocol.md "Slider tables")
# An armature's sampled motion, written by the add-on for motion_import (docs/protocol.md
# "Skeleton files"): names (J,), parents (J,) int, rest (J, 3) joint heads, tails (J, 3) bone
# tails, rotations (T, J, 3, 3) world rotations relative to the rest pose, root (T, 3) root
# head positions, fps; world axes Blender's (Z-up), any unit.
SKELETON_NPZ = "skeleton.npz"
SKELETON_KEYS = ("names", "parents", "rest", "tails", "rotations", "root", "fps")
CHECKPOINT_PT = "checkpoint.pt"    # a fit's resumable state, kept on cancel / interrupt
JOB_JSON = "job.json"              # a job's record in WORK/jobs/<job_id>/
TRACEBACK_TXT = "traceback.txt"    # an internal error's traceback, beside job.json
RESULT_FILES = {
    KIND_BODY: {"body": BODY_NPZ},
    KIND_SYNTH: {"subject": "subject", "sheet": "contact_sheet.png"},
    KIND_FIT_OUTFIT: {"outfit": OUTFIT_NPZ, "posed": POSED_NPZ, "body": BODY_NPZ, "result_json": RESULT_JSON,
                      "ply": OUTFIT_PLY, "progress_gif": "fit_progress.gif", "frames_gif": "fit_frames.gif"},
    KIND_DRAPE: {"outfit": OUTFIT_NPZ, "body": BODY_NPZ, "posed": POSED_NPZ},
    KIND_FIT_APPEARANCE: {"outfit": OUTFIT_NPZ, "appearance": APPEARANCE_PT, "result_json": RESULT_JSON,
                          "heldout": "heldout", "sheet": "heldout_sheet.png", "body": BODY_NPZ,
                          "posed": POSED_NPZ},
    KIND_RENDER: {"frames": "frames", "render_json": "frames/" + RENDER_JSON},
    KIND_EXPORT: {"glb": "garment.glb", "obj": "garment.obj", "mtl": "garment.mtl", "texture": "garment.png",
                  "ply": "garment.ply"},
    KIND_PREPARE: {"subject": "subject", "sheet": "subject/prepare/contact_sheet.png",
                   "report": "subject/prepare/report.json"},
    KIND_RECONSTRUCT: {"outfit": OUTFIT_NPZ, "posed": POSED_NPZ, "body": BODY_NPZ, "result_json": RESULT_JSON,
                       "texture": TEXTURE_PNG, "preview": "preview.png", "subject": "subject",
                       "glb": "garment.glb", "obj": "garment.obj"},
    KIND_MOTION_IMPORT: {"motion": MOTION_NPZ, "report": MOTION_REPORT},
    KIND_EDIT: {"outfit": OUTFIT_NPZ, "body": BODY_NPZ, "posed": POSED_NPZ, "result_json": RESULT_JSON},
    KIND_SLIDERS: {"sliders": SLIDERS_NPZ},
}

# -- error codes ------------------------------------------------------------------------------------
# Answers to a bad message (no job_id); the connection is closed after the first three.
E_AUTH = "auth"                   # no hello first, or a missing / wrong token
E_PROTOCOL = "protocol"           # another protocol version
E_TOO_LARGE = "too_large"         # a line over MAX_LINE_BYTES
E_BAD_JSON = "bad_json"           # not JSON, not UTF-8, or not a JSON object
E_BAD_MESSAGE = "bad_message"     # no or unknown "type", a field of the wrong type
E_UNKNOWN_KIND = "unknown_kind"
E_BAD_PARAMS = "bad_params"       # names the parameter in "field"
E_UNKNOWN_JOB = "unknown_job"
E_SHUTTING_DOWN = "shutting_down"
E_BUSY = "busy"                   # too many connections (or ones still to say hello): try again
E_QUEUE_FULL = "queue_full"       # MAX_QUEUED_JOBS wait already
E_MEMORY_LIMIT = "memory_limit"   # the job's memory estimate is over the server's budget ("field" says why)
E_DISK_FULL = "disk_full"         # no space left where the job or its record is written ("file")
E_IO = "io_error"                 # another OS error reading or writing a file ("file")
# Job errors (with job_id): the backend's own codes (bad_input, bad_subject, bad_body_model, ...)
# and "internal" for anything unexpected (the server keeps running).
E_INTERNAL = "internal"
# Device job errors (hint says what to change): CUDA asked for but absent, out of (GPU) memory
# (the job's checkpoint is kept for a resume), models on two devices.
E_NO_CUDA = "no_cuda"
E_OUT_OF_MEMORY = "out_of_memory"
E_WRONG_DEVICE = "wrong_device"
# File transfer answers (with the request's id; the connection stays open).
E_BAD_PATH = "bad_path"           # a path that is not relative and clean, not in the upload, or outside the work folder
E_BAD_OFFSET = "bad_offset"       # a chunk not at the end of what the server has ("expected" says where)
E_CHECKSUM = "checksum"           # upload_end: files whose SHA-256 or size differ ("files" lists them; sent again)
E_TOO_BIG = "too_big"             # an upload over the limits below, or more than the free disk space
E_UNKNOWN_UPLOAD = "unknown_upload"
# Client side only: the server's certificate is not the pinned one (the token was never sent).
E_FINGERPRINT = "fingerprint"
CLOSING_CODES = (E_AUTH, E_PROTOCOL, E_TOO_LARGE, E_BUSY)

# -- exit status of `pointwear serve` --------------------------------------------------------------
EXIT_CANNOT_START = 2             # port in use, no CUDA
EXIT_WORK_IN_USE = 3              # another server holds the work folder's lock

# -- server limits (defaults; `pointwear serve` may lower them) -------------------------------------
MAX_QUEUED_JOBS = 64              # waiting jobs; one more is refused with queue_full
MAX_CONNECTIONS = 256             # open connections; one more gets busy and is closed
MAX_PREAUTH_CONNECTIONS = 32      # connections that have not said hello yet


class LineTooLong(ValueError):
    """A peer sent a line over MAX_LINE_BYTES. ``lines``: the complete lines that came before it
    in the same chunk (still to be handled)."""

    def __init__(self, message, lines=()):
        super().__init__(message)
        self.lines = list(lines)


def encode_line(message):
    """One message (a dict) as one newline-terminated line of UTF-8 JSON. Text that UTF-8 cannot
    carry (a lone surrogate) is sent \\u-escaped, so no stored string can stop a reply."""
    # json.dumps escapes control characters, so the payload never holds a raw newline.
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return data + b"\n"


def json_depth(text, limit=MAX_JSON_DEPTH):
    """True if the JSON text nests arrays/objects at most ``limit`` deep (strings skipped), read
    without parsing: json.loads recurses and a deep line would end in RecursionError."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def find_surrogate(value, where=""):
    """The place (e.g. "params.subject") of the first string holding a lone surrogate, or None.
    JSON lets "\\ud800" through; such a string cannot be written as UTF-8 (a file, a reply)."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return at or "(message)"
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and any("\ud800" <= ch <= "\udfff" for ch in key):
                    return (at + "." if at else "") + "(a key)"
                stack.append((sub, (at + "." if at else "") + str(key)))
        elif isinstance(item, list):
            stack.extend((sub, "{}[{}]".format(at, i)) for i, sub in enumerate(item))
    return None


def decode_line(line):
    """The message (a dict) in one received line; ValueError if it is not a JSON object, nests
    deeper than MAX_JSON_DEPTH (json.JSONDecodeError and UnicodeDecodeError are ValueErrors too)."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8")
    if not json_depth(line):
        raise ValueError("nested deeper than {} levels".format(MAX_JSON_DEPTH))
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object per line, got " + type(message).__name__)
    return message


def parse_frames(value, limit=MAX_FRAMES, top=MAX_FRAME_NUMBER):
    """A frame list: "0,2,4-7" (or a list of ints) -> the sorted distinct frame numbers; "" or None
    -> None. The count is bounded before anything is expanded: ValueError for more than ``limit``
    frames, a number over ``top``, a backwards range or anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        if not parts:
            return None
        if len(parts) > limit:
            raise ValueError("more than {} frames".format(limit))
        ranges, total = [], 0
        for part in parts:
            a, sep, b = part.partition("-")
            if not (a.isdigit() and a.isascii() and (not sep or (b.isdigit() and b.isascii()))):
                raise ValueError('expected frame numbers like "0,2,4-7", got {!r}'.format(part[:40]))
            lo, hi = int(a), int(b) if sep else int(a)
            if hi < lo:
                raise ValueError("the range {!r} runs backwards".format(part[:40]))
            if hi > top:
                raise ValueError("frame {} is over the largest frame number {}".format(hi, top))
            total += hi - lo + 1
            if total > limit:
                raise ValueError("more than {} frames".format(limit))
            ranges.append((lo, hi))
        return sorted({f for lo, hi in ranges for f in range(lo, hi + 1)})
    if isinstance(value, list):
        if len(value) > limit:
            raise ValueError("more than {} frames".format(limit))
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top for v in value):
            raise ValueError("expected frame numbers 0..{}".format(top))
        return sorted(set(value)) or None
    raise ValueError('expected frame numbers like "0,2,4-7" or a list of them')


def decode_points(value):
    """A PROGRESS event's "points" -> a flat list of floats in metres (3 per point); ValueError
    if it is not a list of at most 3 * PREVIEW_POINTS_MAX bounded integers in threes."""
    if not isinstance(value, list) or len(value) % 3 or len(value) > 3 * PREVIEW_POINTS_MAX:
        raise ValueError("points: expected a flat list of at most {} integers in threes".format(
            3 * PREVIEW_POINTS_MAX))
    if not all(isinstance(v, int) and not isinstance(v, bool) and -PREVIEW_POINTS_LIMIT <= v <= PREVIEW_POINTS_LIMIT
               for v in value):
        raise ValueError("points: expected integers within +-{}".format(PREVIEW_POINTS_LIMIT))
    return [v * PREVIEW_POINTS_UNIT for v in value]


class LineBuffer:
    """Splits a byte stream into lines (without their newline), for a socket reader on either
    side: ``feed(chunk)`` returns the complete lines received so far. A line that would take
    more than ``limit`` bytes with its newline raises LineTooLong as soon as that is known (even
    before its newline arrives); the buffer is then cleared and the stream cannot be
    resynchronised: close the connection."""

    def __init__(self, limit=MAX_LINE_BYTES):
        self.limit = limit
        self._buf = bytearray()

    def feed(self, data):
        self._buf += data
        lines = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0 or nl >= self.limit:
                break
            lines.append(bytes(self._buf[:nl]).rstrip(b"\r"))
            del self._buf[:nl + 1]
        if nl >= self.limit or (nl < 0 and len(self._buf) >= self.limit):
            self._buf.clear()
            raise LineTooLong("a message line over the limit of {} bytes".format(self.limit), lines)
        return lines

    @property
    def pending(self):
        """Bytes of an incomplete line held back."""
        return len(self._buf)


def error_message(code, message, hint="", **fields):
    """An ERROR event / reply: ``{"type": "ERROR", "code", "message", "hint", ...}`` (hint "" when
    there is none); fields set to None are left out (``job_id``, ``id``, ``file``, ``field``)."""
    out = {"type": ERROR, "code": code, "message": message, "hint": hint or ""}
    out.update((k, v) for k, v in fields.items() if v is not None)
    return out
