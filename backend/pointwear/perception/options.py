"""The options of `pointwear prepare`: what the user sets (CLI flags, server params, add-on
fields), plus each stage's own tuning numbers in its options object (defined in that stage)."""
from __future__ import annotations

import math
from dataclasses import dataclass

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
        from ..errors import InputError
        if not (isinstance(self.every, int) and 1 <= self.every <= 10_000):
            raise InputError(f"must be an integer 1..10000, got {self.every!r}", field="--every")
        if self.max_frames is not None and not (isinstance(self.max_frames, int)
                                                and 1 <= self.max_frames <= MAX_FRAMES_LIMIT):
            raise InputError(f"must be an integer 1..{MAX_FRAMES_LIMIT}, got {self.max_frames!r}",
                             field="--max-frames")
        if self.size is not None and not (isinstance(self.size, int) and 64 <= self.size <= 8192):
            raise InputError(f"must be an integer 64..8192 px, got {self.size!r}", field="--size")
        from .decode import parse_time
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
