"""Data passed between the stages of `pointwear prepare` (defined once, imported everywhere)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# MediaPipe Pose's 33 landmarks (the person's own left / right, as SMPL's).
LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)
LANDMARK_INDEX = {name: i for i, name in enumerate(LANDMARK_NAMES)}

# Garment label ids written to labels/ (0 = not clothing) and their names in subject.json.
LABEL_UPPER, LABEL_LOWER, LABEL_ONEPIECE = 1, 2, 3
LABEL_NAMES = {LABEL_UPPER: "upper", LABEL_LOWER: "lower", LABEL_ONEPIECE: "onepiece"}

# Why a frame was dropped (report.json "dropped"[].reason).
DROP_NO_PERSON = "no person"
DROP_TOO_SMALL = "person too small"
DROP_LOW_CONFIDENCE = "low confidence"
DROP_BLUR = "motion blur"
DROP_REASONS = (DROP_NO_PERSON, DROP_TOO_SMALL, DROP_LOW_CONFIDENCE, DROP_BLUR)

Progress = Callable[[str, int, int], None]      # (stage, i, n), as elsewhere in the backend


@dataclass
class InputInfo:
    """What decode.py knows about the input as a whole."""
    source: str                     # the input path as given (absolute)
    kind: str                       # "video" | "images" | "image"
    fps: float                      # frames per second of the kept frames (after --every)
    size: tuple[int, int]           # (H, W) of the decoded frames (after rotation + downscale)
    original_size: tuple[int, int]  # (H, W) as stored in the file (after rotation)
    scale: float                    # size / original_size (1.0 = not resized)
    rotation: int = 0               # degrees the video's display matrix asked for (0/90/180/270)
    focal_px: float | None = None   # from EXIF (35 mm equivalent or focal + sensor), in output px
    frame_count: int | None = None  # frames in the container (videos), when known
    selected: int | None = None     # frames the options select (what the stream will yield at most)
    notes: list[str] = field(default_factory=list)   # what was adjusted (resized, converted, ...)


@dataclass
class InputFrame:
    """One decoded frame, already rotated upright and resized to InputInfo.size."""
    index: int                      # frame number in the input (video frame or image order)
    time: float                     # seconds from the start of the input
    name: str                       # file name (images) or "frame N" (video), for messages
    rgb: np.ndarray                 # (H, W, 3) uint8
    alpha: np.ndarray | None = None  # (H, W) uint8 when the image had alpha: a person-mask hint


@dataclass
class PersonObs:
    """One person seen in one frame by the pose model."""
    landmarks: np.ndarray   # (33, 4) float32: x px, y px, z (relative depth, px scale), visibility 0..1
    world: np.ndarray       # (33, 3) float32 metres, hip-centred (MediaPipe world landmarks)
    mask: np.ndarray        # (H, W) float32 person probability 0..1
    bbox: tuple[float, float, float, float]   # x0, y0, x1, y1 px (landmarks + mask extent)
    score: float            # mean visibility of the torso and limb landmarks, 0..1

    @property
    def height_px(self) -> float:
        return float(self.bbox[3] - self.bbox[1])
