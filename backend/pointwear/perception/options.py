"""The options of `pointwear prepare`: what the user sets (CLI flags, server params, add-on
fields), plus each stage's own tuning numbers in its options object (defined in that stage; the
decoder's DecodeOptions and parse_time live here, below decode.py, which re-exports them)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import InputError

# Without --focal or EXIF, the camera is assumed to have a phone main camera's field of view:
# 26 mm full-frame equivalent, i.e. focal = 26 / 36 of the image's long side (69 deg across it).
DEFAULT_FOCAL_35MM = 26.0
FULL_FRAME_LONG_SIDE_MM = 36.0
DEFAULT_MAX_SIZE = 1024          # --size default: the long side is kept up to this many px
MIN_PERSON_HEIGHT_PX = 120       # a person shorter than this in a frame is "too small"
MAX_INPUT_PIXELS = 100_000_000   # an image or video frame larger than this is refused unread
MAX_FRAMES_LIMIT = 100_000       # bound on --max-frames


def default_focal_px(long_side: int) -> float:
    """Focal length in pixels for the default field of view (see DEFAULT_FOCAL_35MM)."""
    return DEFAULT_FOCAL_35MM / FULL_FRAME_LONG_SIDE_MM * float(long_side)


def default_fov_deg() -> float:
    """The default horizontal field of view across the long side, in degrees (~69.4)."""
    return math.degrees(2.0 * math.atan(0.5 * FULL_FRAME_LONG_SIDE_MM / DEFAULT_FOCAL_35MM))


@dataclass
class PrepareOptions:
    every: int = 1                   # keep every Nth frame
    start: str | None = None         # "12" = frame 12, "1.5s" = 1.5 seconds (also for --end)
    end: str | None = None           # exclusive
    max_frames: int | None = None    # keep at most this many frames (evenly spread)
    size: int | None = None          # long side in px; None: keep up to DEFAULT_MAX_SIZE
    person: str = "auto"             # "auto" or a track number (0 = the first one listed)
    focal: float | None = None       # px in the output frames; None: EXIF, else the default FOV
    masks: str | None = None         # folder of the user's own clothing masks (override ours)
    body: str = "default"
    gender: str = "neutral"
    sequence: str = "auto"          # frames are one shot: "auto" (video; numbered images), "yes", "no"
    device: str = "auto"
    seed: int = 0

    def check(self) -> "PrepareOptions":
        """Bounds of every option, checked before any input is opened; errors name the flag."""
        if not (isinstance(self.every, int) and 1 <= self.every <= 10_000):
            raise InputError(f"must be an integer 1..10000, got {self.every!r}", field="--every")
        if self.max_frames is not None and not (isinstance(self.max_frames, int)
                                                and 1 <= self.max_frames <= MAX_FRAMES_LIMIT):
            raise InputError(f"must be an integer 1..{MAX_FRAMES_LIMIT}, got {self.max_frames!r}",
                             field="--max-frames")
        if self.size is not None and not (isinstance(self.size, int) and 64 <= self.size <= 8192):
            raise InputError(f"must be an integer 64..8192 px, got {self.size!r}", field="--size")
        for name in ("start", "end"):    # syntax only here; frames from seconds once fps is known
            parse_time(getattr(self, name), 1.0, f"--{name}")
        person = str(self.person)
        if person != "auto" and not (person.isdigit() and int(person) < 1000):
            raise InputError(f'must be "auto" or a track number 0..999, got {self.person!r}',
                             field="--person")
        if self.focal is not None and not (math.isfinite(self.focal) and 1.0 <= self.focal <= 1e6):
            raise InputError(f"must be a focal length in px (1..1e6), got {self.focal!r}",
                             field="--focal")
        if self.sequence not in ("auto", "yes", "no"):
            raise InputError(f"must be auto, yes or no, got {self.sequence!r}", field="--sequence")
        if self.gender not in ("neutral", "male", "female"):
            raise InputError(f"must be neutral, male or female, got {self.gender!r}", field="--gender")
        return self


@dataclass(frozen=True)
class DecodeOptions:
    """Tuning numbers and bounds of the decoder (the user's choices are in PrepareOptions)."""
    image_fps: float = 25.0                  # frame rate given to image folders (subject.json
                                             # needs one; also turns "1.5s" into a frame number)
    fallback_fps: float = 25.0               # a video stream that states no rate at all
    max_input_pixels: int = MAX_INPUT_PIXELS  # larger images / video frames are refused unread
    max_selected: int = MAX_FRAMES_LIMIT     # at most this many frames are ever selected
    min_size: int = 64                       # bounds on --size (long side px): the pose model
    max_size: int = 8192                     # needs ~256 px; 8192 keeps a frame under ~200 MB
    aspect_tolerance: float = 0.01           # mixed image sizes are resized when the aspect
                                             # ratio matches within this (relative), else refused
    max_time_frames: int = 10 ** 9           # --start / --end beyond this are refused as absurd
    time_epsilon: float = 1e-6               # frames: "1s" at 12 fps is frame 12, not 13
    focal_range: tuple[float, float] = (0.1, 20.0)   # EXIF focal px / long side outside this
                                                     # is ignored as nonsense (with a note)


# -- --start / --end -----------------------------------------------------------------------------

_FRAMES_RE = re.compile(r"[0-9]+")
_SECONDS_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*s", re.IGNORECASE)
_CLOCK_RE = re.compile(r"(?:([0-9]+):)?([0-9]+):([0-5]?[0-9](?:\.[0-9]*)?)")


def parse_time(text: str | None, fps: float, field: str,
               tuning: DecodeOptions | None = None) -> int | None:
    """"--start" / "--end" text -> a frame number (None -> None).

    "12" is frame 12; "1.5s" / "1.5 s" is 1.5 seconds; "01:02.5" is mm:ss(.f) and "1:02:03" is
    h:mm:ss. A time t becomes the first frame shown at or after it, ceil(t * fps), so
    "--start 1s --end 2s" keeps the frames with 1 <= time < 2. Anything else, a negative value or a
    value beyond `tuning.max_time_frames` raises InputError naming `field`.
    """
    if text is None:
        return None
    tuning = tuning or DecodeOptions()
    hint = 'a frame number ("12"), seconds ("1.5s") or minutes:seconds ("00:01.5")'
    s = str(text).strip()
    if _FRAMES_RE.fullmatch(s):
        frame = int(s)
    else:
        m = _SECONDS_RE.fullmatch(s)
        c = None if m else _CLOCK_RE.fullmatch(s)
        if m:
            seconds = float(m.group(1))
        elif c:
            if c.group(1) is not None and int(c.group(2)) >= 60:
                raise InputError(f"minutes must be under 60 in h:mm:ss, got {text!r}",
                                 field=field, hint=hint)
            seconds = (int(c.group(1) or 0) * 3600 + int(c.group(2)) * 60 + float(c.group(3)))
        else:
            raise InputError(f"is not a time: {text!r}", field=field, hint=hint)
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        frames = seconds * float(fps)
        if not math.isfinite(frames) or frames > tuning.max_time_frames:
            raise InputError(f"{text!r} is too far into the input", field=field, hint=hint)
        frame = max(0, math.ceil(frames - tuning.time_epsilon))
    if frame > tuning.max_time_frames:
        raise InputError(f"{text!r} is too far into the input", field=field, hint=hint)
    return frame
