"""People in a frame: MediaPipe Pose (legacy `mp.solutions.pose`, mediapipe 0.10.14) with its
segmentation, one `PersonObs` per person.

MediaPipe's legacy Pose finds ONE person per call. Several people are found honestly, one after
the other: after each detection that person is blanked out of a working copy of the frame (their
segmentation mask, dilated, filled with the frame's mean colour) and the model runs again on what
is left, until `max_people` are found, nothing more is found, or the new detection is one already
found or a ghost of one (its landmarks or mask fall on the blanked pixels, or its box lies inside
an earlier person's). A person's mask excludes the pixels claimed by people found after them.
Limits: two people overlapping so much that MediaPipe sees one get one detection whose mask covers
both; the detector sometimes calls an object (a ball) a person for a frame or two: track.py drops
such brief tracks.

Two modes:
    image (default)   every call is independent: a static-image Pose graph (detector + landmarks)
    video=True        consecutive frames of one clip: the k-th person of a frame comes from the
                      k-th tracking Pose graph, which follows "its" person from frame to frame
                      (faster: it re-detects only when it loses them, and it smooths landmarks
                      and masks over time: landmark jitter on single_person_demo.mp4 about 2/3
                      of image mode's). A graph that loses its person this frame is backed by
                      the static graph on the same frame. Call `reset()` when the next frame does
                      not follow the previous one (a cut); people are re-found from scratch.

Large frames are handed to MediaPipe as a downscaled copy (long side <= PoseOptions.max_side);
landmarks come back in the full frame's pixels and the mask at the full frame's size.

Everything runs offline: the models are the .tflite files inside the mediapipe wheel. A model
complexity whose file is not in the wheel (0 = lite or 2 = heavy, which MediaPipe would download)
is refused before MediaPipe is asked for it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError
from .types import LANDMARK_INDEX, NUM_LANDMARKS, PersonObs

# Landmarks whose mean visibility is a person's score: shoulders, elbows, hips and knees.
SCORE_LANDMARKS = tuple(LANDMARK_INDEX[f"{side}_{part}"]
                        for part in ("shoulder", "elbow", "hip", "knee")
                        for side in ("left", "right"))

# model_complexity -> the landmark model file it needs inside the mediapipe package.
_LANDMARK_MODELS = {0: "pose_landmark_lite.tflite", 1: "pose_landmark_full.tflite",
                    2: "pose_landmark_heavy.tflite"}
# Every model file `pointwear prepare` uses with the default options, relative to the mediapipe
# package: person detection and landmarks (here) and face detection (body_fit.face hints).
# `pointwear doctor` checks that the installed mediapipe wheel holds them.
MEDIAPIPE_MODELS = ("modules/pose_detection/pose_detection.tflite",
                    "modules/pose_landmark/" + _LANDMARK_MODELS[1],
                    "modules/face_detection/face_detection_full_range_sparse.tflite")


@dataclass
class PoseOptions:
    # 1 = pose_landmark_full (bundled in the wheel). 0 = lite and 2 = heavy are NOT bundled with
    # mediapipe 0.10.14; they are accepted only if their file is present (never downloaded).
    model_complexity: int = 1
    # MediaPipe runs on a copy whose long side is at most this many px (its networks see 224-256 px
    # crops anyway; a 1080x1920 frame costs ~20 % more at full size for the same landmarks).
    max_side: int = 960
    # MediaPipe's person-detector score threshold (its own default).
    min_detection_confidence: float = 0.5
    # Video mode: landmark presence below this makes a tracking graph re-detect (its own default).
    min_tracking_confidence: float = 0.5
    # Video mode: MediaPipe's temporal filters on landmarks / masks (ignored in image mode).
    smooth_landmarks: bool = True
    smooth_segmentation: bool = True
    # A pixel belongs to the person when the mask is above this (bbox, blanking, duplicate test).
    mask_threshold: float = 0.5
    # The blanked region is the person's mask grown by this fraction of their height (covers the
    # soft mask edge and hair / loose clothes the mask missed).
    blank_dilate: float = 0.04
    # ... and a disc of this fraction of their height around each visible landmark (hands and feet
    # the mask may have missed).
    blank_landmark_radius: float = 0.03
    # A landmark counts as seen (bbox, duplicate test) above this visibility.
    min_visibility: float = 0.5
    # A new detection with more than this share of its seen landmarks on already blanked pixels is
    # a person found before (or a remnant of one): the search stops.
    max_overlap: float = 0.5
    # ... or with more than this share of its mask on blanked pixels (measured: the detector
    # seeing a person in a blanked silhouette 0.56 and 0.74 on single_person_demo.mp4; a real
    # second person overlapping the first 0.15 to 0.27),
    max_mask_overlap: float = 0.4
    # ... or whose box lies more than this share inside the box of an earlier person's seen
    # landmarks (silhouette remnants 0.68 and 0.77 on the demo video; real overlapping people
    # <= 0.36). A person standing mostly behind another is not found (the documented limit).
    max_containment: float = 0.75
    # People after the first are kept only with at least this score (a detection on a blanked
    # frame with barely visible limbs is the detector seeing shapes, not a person).
    min_extra_score: float = 0.5

    def check(self) -> None:
        if self.model_complexity not in _LANDMARK_MODELS:
            raise InputError(f"must be 0, 1 or 2, got {self.model_complexity!r}",
                             field="model_complexity")
        if self.max_side < 64:
            raise InputError(f"must be at least 64 px, got {self.max_side}", field="max_side")
        for name in ("min_detection_confidence", "min_tracking_confidence", "mask_threshold",
                     "min_visibility", "max_overlap", "max_mask_overlap", "max_containment",
                     "min_extra_score"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"must be within 0..1, got {value}", field=name)


def mediapipe_model_dir() -> Path:
    """The folder of the mediapipe wheel holding the pose landmark models."""
    import mediapipe
    return Path(mediapipe.__file__).parent / "modules" / "pose_landmark"


def check_model_available(model_complexity: int) -> Path:
    """Path of the landmark model for `model_complexity`; InputError if the wheel lacks it
    (MediaPipe would try to download it: we never do)."""
    path = mediapipe_model_dir() / _LANDMARK_MODELS[model_complexity]
    if not path.is_file():
        raise InputError(
            f"the pose model for model_complexity={model_complexity} ({path.name}) is not in the "
            f"installed mediapipe package and is never downloaded",
            file=path, field="model_complexity",
            hint="use model_complexity=1 (pose_landmark_full, bundled with mediapipe 0.10.14)")
    return path


class PoseDetector:
    """MediaPipe Pose with segmentation, several people per frame. A context manager:

        with PoseDetector(PoseOptions(), video=True) as det:
            for frame in frames:
                people = det.detect(frame.rgb, max_people=3)
    """

    def __init__(self, options: PoseOptions | None = None, *, video: bool = False) -> None:
        self.options = options or PoseOptions()
        self.options.check()
        check_model_available(self.options.model_complexity)
        self.video = bool(video)
        self._static = None          # one static-image graph (stateless between calls)
        self._trackers: list = []    # video mode: tracking graph k follows the k-th person
        self._tracking: list[bool] = []   # ... and had them in the last frame

    # ---- lifetime ------------------------------------------------------------------------

    def __enter__(self) -> "PoseDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every MediaPipe graph (safe to call twice)."""
        if self._static is not None:
            self._static.close()
            self._static = None
        self.reset()

    def reset(self) -> None:
        """Video mode: forget who is being tracked (the next frame does not follow the last)."""
        for graph in self._trackers:
            if graph is not None:
                graph.close()
        self._trackers = []
        self._tracking = []

    def _new_graph(self, static: bool):
        from mediapipe.python.solutions.pose import Pose
        o = self.options
        return Pose(static_image_mode=static, model_complexity=o.model_complexity,
                    smooth_landmarks=o.smooth_landmarks, enable_segmentation=True,
                    smooth_segmentation=o.smooth_segmentation,
                    min_detection_confidence=o.min_detection_confidence,
                    min_tracking_confidence=o.min_tracking_confidence)

    def _graph(self, k: int):
        """The graph that looks for the k-th person of a frame."""
        if not self.video:
            if self._static is None:
                self._static = self._new_graph(static=True)
            return self._static
        while len(self._trackers) <= k:
            self._trackers.append(None)
            self._tracking.append(False)
        if self._trackers[k] is None:
            self._trackers[k] = self._new_graph(static=False)
        return self._trackers[k]

    def _drop_trackers(self, first: int) -> None:
        """Video mode: forget tracking graphs first.. (their person was not found this frame)."""
        for k in range(first, len(self._trackers)):
            if self._trackers[k] is not None:
                self._trackers[k].close()
                self._trackers[k] = None
                self._tracking[k] = False

    # ---- detection -----------------------------------------------------------------------

    def _find(self, k: int, work: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The k-th person of a frame: (landmarks (33, 4), world (33, 3), mask (h, w)) in the
        pixels of `work`, or None. In video mode a tracking graph that lost its person only
        re-detects on the NEXT frame, so this frame is searched by the static graph as well."""
        result = _process(self._graph(k), work)
        if self.video:
            was_tracking = self._tracking[k]
            self._tracking[k] = result.pose_landmarks is not None
        if result.pose_landmarks is None and self.video and was_tracking:
            if self._static is None:
                self._static = self._new_graph(static=True)
            result = _process(self._static, work)
        if result.pose_landmarks is None:
            return None
        return _result_arrays(result, work.shape[:2])

    def _is_new(self, lm: np.ndarray, mask: np.ndarray, box, blanked: np.ndarray,
                cores: list) -> bool:
        """Is a detection on the blanked frame a person not found before (and not the detector
        seeing a person in the blanked silhouette or in an object)? box: its person_box; cores:
        the boxes of the seen landmarks of the people found before."""
        o = self.options
        if person_score(lm) < o.min_extra_score:
            return False
        if _overlap(lm, blanked, o.min_visibility) > o.max_overlap:
            return False
        seen = mask > o.mask_threshold
        if seen.any() and float(blanked[seen].mean()) > o.max_mask_overlap:
            return False
        return all(containment(box, core) <= o.max_containment for core in cores)

    def detect(self, rgb: np.ndarray, max_people: int = 3) -> list[PersonObs]:
        """People in one frame, in the order found (the most prominent first).

        rgb: (H, W, 3) uint8. Returns up to `max_people` PersonObs with landmarks in this frame's
        pixels and masks of shape (H, W); [] when nobody is found.
        """
        rgb = _check_rgb(rgb)
        if max_people < 1:
            raise InputError(f"must be at least 1, got {max_people}", field="max_people")
        o = self.options
        H, W = rgb.shape[:2]
        work, scale = downscale(rgb, o.max_side)
        h, w = work.shape[:2]
        blanked = np.zeros((h, w), bool)
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # (landmarks, world, mask) small
        cores: list[tuple[float, float, float, float]] = []   # their seen landmarks' boxes, small px
        for k in range(max_people):
            arrays = self._find(k, work)
            if arrays is None:
                self._drop_trackers(k + 1)
                break
            lm, world, mask = arrays
            box = person_box(lm, mask, o)
            if found and not self._is_new(lm, mask, box, blanked, cores):
                self._drop_trackers(k)
                break
            found.append(arrays)
            cores.append(landmark_extent(lm, (h, w), o.min_visibility) or box)
            if k + 1 < max_people:
                blanked |= blank_region(lm, mask, box, o)
                work = fill_blanked(work, blanked, o)
        masks = exclusive_masks([m for _, _, m in found])
        people = []
        for (lm, world, _), mask in zip(found, masks):
            people.append(_person_obs(lm, world, mask, scale, (H, W), o))
        return people


# ---- helpers (pure numpy / OpenCV) -------------------------------------------------------------


def _process(graph, rgb: np.ndarray):
    """graph.process(rgb) without protobuf's deprecation warning (raised inside MediaPipe on
    every call, nothing we can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*GetPrototype\(\) is deprecated",
                                category=UserWarning)
        return graph.process(rgb)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}",
                         field="rgb")
    return np.ascontiguousarray(rgb)


def downscale(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(H, W, 3) -> (h, w, 3) with max(h, w) <= max_side, and the factor h / H (1.0 = unchanged)."""
    H, W = rgb.shape[:2]
    s = min(1.0, max_side / max(H, W))
    if s >= 1.0:
        return rgb, 1.0
    w, h = max(1, round(W * s)), max(1, round(H * s))
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), h / H


def _result_arrays(result, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe result -> landmarks (33, 4) in px of the image processed (x, y, z * w,
    visibility), world (33, 3) metres, mask (h, w) float32."""
    h, w = size
    lm = np.array([(p.x * w, p.y * h, p.z * w, p.visibility)
                   for p in result.pose_landmarks.landmark], np.float32)
    world = np.array([(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark], np.float32)
    if result.segmentation_mask is not None:
        mask = np.clip(np.asarray(result.segmentation_mask, np.float32), 0.0, 1.0)
    else:
        mask = np.zeros((h, w), np.float32)
    assert lm.shape == (NUM_LANDMARKS, 4) and world.shape == (NUM_LANDMARKS, 3)
    return lm, world, mask


def person_score(landmarks: np.ndarray) -> float:
    """Mean visibility of shoulders, elbows, hips and knees. landmarks: (33, 4)."""
    return float(np.mean(landmarks[list(SCORE_LANDMARKS), 3]))


def _seen(landmarks: np.ndarray, size: tuple[int, int], min_visibility: float) -> np.ndarray:
    """(33, 4) -> (K, 2) integer px of the landmarks seen and inside an (h, w) image."""
    h, w = size
    xy = landmarks[landmarks[:, 3] > min_visibility, :2]
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    return xy[inside].astype(np.int64)


def _overlap(landmarks: np.ndarray, blanked: np.ndarray, min_visibility: float) -> float:
    """Share of the seen landmarks lying on blanked pixels (1.0 when none is seen)."""
    xy = _seen(landmarks, blanked.shape, min_visibility)
    if len(xy) == 0:
        return 1.0
    return float(blanked[xy[:, 1], xy[:, 0]].mean())


def landmark_extent(landmarks: np.ndarray, size: tuple[int, int], min_visibility: float
                    ) -> tuple[float, float, float, float] | None:
    """Box around the seen landmarks, clipped to the (h, w) image, or None."""
    h, w = size
    xy = landmarks[landmarks[:, 3] > min_visibility, :2]
    if len(xy) == 0:
        return None
    x0, y0 = np.clip(xy.min(0), 0, [w, h])
    x1, y1 = np.clip(xy.max(0), 0, [w, h])
    return float(x0), float(y0), float(x1), float(y1)


def mask_extent(mask: np.ndarray, threshold: float) -> tuple[float, float, float, float] | None:
    """Box around mask > threshold (pixel edges: x1 = last column + 1), or None when empty."""
    x, y, w, h = cv2.boundingRect((mask > threshold).view(np.uint8))
    if w == 0 or h == 0:
        return None
    return float(x), float(y), float(x + w), float(y + h)


def union_box(*boxes) -> tuple[float, float, float, float] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.array(boxes, np.float64)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def person_box(landmarks: np.ndarray, mask: np.ndarray, o: PoseOptions
               ) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1: the mask's extent and the seen landmarks' (the landmarks' own extent,
    clipped to the image, when neither exists). landmarks: (33, 4) in the px of mask (h, w)."""
    h, w = mask.shape
    box = union_box(mask_extent(mask, o.mask_threshold),
                    landmark_extent(landmarks, (h, w), o.min_visibility))
    if box is None:
        x0, y0 = np.clip(landmarks[:, :2].min(0), 0, [w, h])
        x1, y1 = np.clip(landmarks[:, :2].max(0), 0, [w, h])
        box = (float(x0), float(y0), float(x1), float(y1))
    return box


def containment(box, other) -> float:
    """Share of box's area inside other (boxes x0, y0, x1, y1); 0 for an empty box."""
    ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return ix * iy / area if area > 0 else 0.0


def blank_region(landmarks: np.ndarray, mask: np.ndarray, box, o: PoseOptions) -> np.ndarray:
    """(h, w) bool: the person's mask grown by blank_dilate * height, plus discs around the
    seen landmarks. box: the person's (person_box)."""
    h, w = mask.shape
    height = box[3] - box[1]
    region = (mask > o.mask_threshold).view(np.uint8)
    grow = o.blank_dilate * height
    if grow >= 1.0 and region.any():     # grown by a distance (a round kernel, fast at any size)
        outside = cv2.distanceTransform(1 - region, cv2.DIST_L2, 3)
        region = (outside <= grow).view(np.uint8)
    else:
        region = region.copy()
    radius = int(round(o.blank_landmark_radius * height))
    for x, y in _seen(landmarks, (h, w), o.min_visibility):
        cv2.circle(region, (int(x), int(y)), max(radius, 1), 1, thickness=-1)
    return region.astype(bool)


def fill_blanked(rgb: np.ndarray, region: np.ndarray, o: PoseOptions) -> np.ndarray:
    """A copy of rgb (h, w, 3) with the region (h, w) bool filled with the frame's mean colour."""
    out = rgb.copy()
    out[region] = rgb[::4, ::4].reshape(-1, 3).mean(0).astype(np.uint8)
    return out


def exclusive_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """A person's mask minus the people found after them: those were found with this person
    blanked out, so a pixel they claim is theirs. Each (h, w) float32 0..1."""
    out = []
    for i, m in enumerate(masks):
        for later in masks[i + 1:]:
            m = np.minimum(m, 1.0 - later)
        out.append(m.astype(np.float32))
    return out


def _person_obs(lm: np.ndarray, world: np.ndarray, mask: np.ndarray, scale: float,
                size: tuple[int, int], o: PoseOptions) -> PersonObs:
    """Scale landmarks (33, 4) and mask (h, w) of the processed copy back to the (H, W) frame."""
    H, W = size
    lm = lm.copy()
    if scale != 1.0:
        lm[:, 0] *= W / mask.shape[1]
        lm[:, 1] *= H / mask.shape[0]
        lm[:, 2] *= W / mask.shape[1]
        mask = cv2.resize(mask, (W, H), interpolation=cv2.INTER_LINEAR)   # stays within 0..1
    return PersonObs(landmarks=lm.astype(np.float32), world=world.astype(np.float32),
                     mask=mask, bbox=person_box(lm, mask, o), score=person_score(lm))
