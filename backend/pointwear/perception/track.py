"""Several people: link each frame's detections into tracks and follow one (`--person auto|N`).

Linking, frame by frame: every track still alive (unseen for at most `max_gap` frames) predicts
its box and landmarks in the new frame twice, standing still and moving on at the velocity of its
box centre between its last two sightings; each (track, detection) pair costs, for the better
prediction, (1 - box IoU) + landmark_weight * mean landmark distance / person height; pairs
neither overlapping nor close are not allowed; the assignment is the Hungarian one
(scipy.optimize.linear_sum_assignment). A detection left over starts a track.

Tracks seen in very few frames (the detector seeing a person in a ball or a shadow for a frame
or two) are "brief": dropped when a longer track exists.

Track numbers (`--person N`) follow a stable, documented order: by the frame a track is first
seen, then left to right (box centre x) within that frame.

`auto` follows the track with the best score
    w_size * mean box area / the largest track's + w_center * centrality + w_seen * share of frames seen
where centrality = 1 - (distance of the box centre from the image centre) / (half the diagonal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import InputError
from .types import PersonObs

_INFEASIBLE = 1e6     # cost of a pair the gate forbids (finite: linear_sum_assignment needs it)


@dataclass
class TrackOptions:
    # A track unseen for more than this many frames ends; a person seen again later starts a new one.
    max_gap: int = 12
    # Link gate: a pair may link when the predicted box overlaps the detection's by this IoU ...
    min_iou: float = 0.1
    # ... or their seen landmarks are on average at most this many person heights apart,
    max_landmark_dist: float = 0.5
    # ... plus this many heights per frame the track went unseen (a runner across the view moves
    # ~0.2 heights a frame at 12 fps; walking ~0.07).
    gap_slack: float = 0.2
    # The prediction moves a track at its last velocity for at most this many frames (further
    # out, a guess at constant velocity is worse than standing still).
    max_predict: int = 3
    # Link cost = (1 - IoU) + landmark_weight * landmark distance / person height.
    landmark_weight: float = 1.0
    # A landmark counts as seen above this visibility.
    min_visibility: float = 0.5
    # Brief track: seen in fewer than max(min_seen_frames, min_seen_share * frames) frames (only
    # dropped when a longer track exists, so one image or a short clip keeps everyone).
    min_seen_frames: int = 3
    min_seen_share: float = 0.1
    # `auto` score weights: size (mean box area, relative to the largest track), centrality,
    # share of frames seen.
    w_size: float = 0.4
    w_center: float = 0.2
    w_seen: float = 0.4


@dataclass
class Track:
    """One person across frames: the frames they are seen in and their detection there."""
    frames: list[int] = field(default_factory=list)        # frame numbers (indices of per_frame)
    detections: list[int] = field(default_factory=list)    # index into per_frame[frame]
    obs: list[PersonObs] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def add(self, frame: int, index: int, obs: PersonObs) -> None:
        self.frames.append(frame)
        self.detections.append(index)
        self.obs.append(obs)


# ---- geometry ----------------------------------------------------------------------------------


def box_iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_centre(box) -> np.ndarray:
    """(2,) centre x, y of a box (x0, y0, x1, y1)."""
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


def _predictions(track: Track, frame: int, max_predict: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where the track may be in `frame`: [(box (4,), landmark xy (33, 2))] for "stopped where
    last seen" and, after two sightings, "moved on at the velocity of its box centre between
    them" (for at most max_predict frames)."""
    last = track.obs[-1]
    box = np.asarray(last.bbox, np.float64)
    xy = last.landmarks[:, :2].astype(np.float64)
    out = [(box, xy)]
    if len(track.obs) >= 2:
        dt = track.frames[-1] - track.frames[-2]
        v = (box_centre(last.bbox) - box_centre(track.obs[-2].bbox)) / dt
        shift = v * min(frame - track.last, max_predict)
        out.append((box + np.concatenate([shift, shift]), xy + shift))
    return out


def link_cost(track: Track, frame: int, obs: PersonObs, o: TrackOptions) -> float:
    """Cost of continuing `track` with `obs` seen in `frame` (the better of its predictions);
    _INFEASIBLE when the gate forbids."""
    both = (track.obs[-1].landmarks[:, 3] > o.min_visibility) & (obs.landmarks[:, 3] > o.min_visibility)
    gate = o.max_landmark_dist + o.gap_slack * (frame - track.last - 1)
    best = _INFEASIBLE
    for box, xy in _predictions(track, frame, o.max_predict):
        iou = box_iou(box, obs.bbox)
        height = max(box[3] - box[1], obs.bbox[3] - obs.bbox[1], 1.0)
        if both.any():
            dist = float(np.linalg.norm(xy[both] - obs.landmarks[both, :2], axis=1).mean()) / height
        else:
            dist = float(np.linalg.norm(box_centre(box) - box_centre(obs.bbox))) / height
        if iou >= o.min_iou or dist <= gate:
            best = min(best, (1.0 - iou) + o.landmark_weight * dist)
    return best


# ---- linking -----------------------------------------------------------------------------------


def link_tracks(per_frame: list[list[PersonObs]], options: TrackOptions | None = None
                ) -> list[Track]:
    """Link detections across frames. per_frame[t] = the people seen in frame t (any order).
    Returns every track (brief ones included) in the stable order: first frame seen, then box
    centre x in that frame."""
    o = options or TrackOptions()
    tracks: list[Track] = []
    for t, people in enumerate(per_frame):
        alive = [tr for tr in tracks if t - tr.last <= o.max_gap + 1]
        taken: set[int] = set()
        if alive and people:
            cost = np.array([[link_cost(tr, t, p, o) for p in people] for tr in alive])
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] < _INFEASIBLE:
                    alive[r].add(t, int(c), people[c])
                    taken.add(int(c))
        new = [i for i in range(len(people)) if i not in taken]
        for i in sorted(new, key=lambda i: box_centre(people[i].bbox)[0]):
            track = Track()
            track.add(t, i, people[i])
            tracks.append(track)
    return sorted(tracks, key=lambda tr: (tr.first, box_centre(tr.obs[0].bbox)[0]))


def is_brief(track: Track, n_frames: int, o: TrackOptions) -> bool:
    """Seen in too few frames to be anyone's subject (see TrackOptions.min_seen_*)."""
    need = max(o.min_seen_frames, math.ceil(o.min_seen_share * n_frames))
    return len(track.frames) < need


# ---- choosing one --------------------------------------------------------------------------------


@dataclass
class TrackSummary:
    """What `auto` weighs, per track."""
    area: float         # mean box area, px^2
    centrality: float   # mean 1 - centre distance / half diagonal, 0..1
    seen: float         # share of frames seen, 0..1
    score: float = 0.0


def summarise(tracks: list[Track], n_frames: int, image_size: tuple[int, int],
              o: TrackOptions) -> list[TrackSummary]:
    """One TrackSummary per track, with its `auto` score."""
    H, W = image_size
    centre = np.array([W / 2.0, H / 2.0])
    half_diag = 0.5 * math.hypot(W, H)
    out = []
    for tr in tracks:
        boxes = np.array([ob.bbox for ob in tr.obs], np.float64)
        area = float(np.mean((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
        off = np.linalg.norm(centres - centre, axis=1) / half_diag
        out.append(TrackSummary(area=area, centrality=float(np.mean(1.0 - np.minimum(off, 1.0))),
                                seen=len(tr.frames) / max(n_frames, 1)))
    largest = max((s.area for s in out), default=0.0)
    for s in out:
        size = s.area / largest if largest > 0 else 0.0
        s.score = o.w_size * size + o.w_center * s.centrality + o.w_seen * s.seen
    return out


def _describe(i: int, tr: Track) -> str:
    """e.g. "track 1: frames 3-20, seen in 15, x 640 px, 300 px tall" (at its first sighting)."""
    box = tr.obs[0].bbox
    span = f"frame {tr.first}" if tr.first == tr.last else f"frames {tr.first}-{tr.last}"
    return (f"track {i}: {span}, seen in {len(tr.frames)}, x {box_centre(box)[0]:.0f} px, "
            f"{box[3] - box[1]:.0f} px tall")


def _parse_person(person: str | int) -> int | None:
    """"auto" -> None, "2" / 2 -> 2; InputError(field="person") otherwise."""
    if isinstance(person, str):
        text = person.strip().lower()
        if text == "auto":
            return None
        if text.isdigit():
            return int(text)
    elif isinstance(person, (int, np.integer)) and not isinstance(person, bool) and person >= 0:
        return int(person)
    raise InputError(f"must be 'auto' or a track number (0, 1, ...), got {person!r}",
                     field="person", hint="use --person auto to follow the most prominent person")


def select_track(per_frame: list[list[PersonObs]], person: str | int,
                 image_size: tuple[int, int], options: TrackOptions | None = None
                 ) -> tuple[list[PersonObs | None], list[str]]:
    """Follow one person across frames.

    per_frame[t]: the people detected in frame t. person: "auto" or a track number in the stable
    order (first seen, then left to right). image_size: (H, W) of the frames.
    Returns (the chosen person's detection per frame, None where not seen; warning strings).
    """
    o = options or TrackOptions()
    wanted = _parse_person(person)
    if len(image_size) != 2 or min(image_size) <= 0:
        raise InputError(f"must be (H, W) in px, got {tuple(image_size)}", field="image_size")
    n = len(per_frame)
    tracks = link_tracks(per_frame, o)
    if any(not is_brief(tr, n, o) for tr in tracks):
        tracks = [tr for tr in tracks if not is_brief(tr, n, o)]
    listing = "; ".join(_describe(i, tr) for i, tr in enumerate(tracks))
    if wanted is not None and wanted >= len(tracks):
        if not tracks:
            raise InputError(f"there is no track {wanted}: no person was seen in any frame",
                             field="person")
        raise InputError(f"there is no track {wanted}: {len(tracks)} "
                         f"{'person was' if len(tracks) == 1 else 'people were'} seen ({listing})",
                         field="person",
                         hint=f"use --person auto or a number from 0 to {len(tracks) - 1}")
    chosen: list[PersonObs | None] = [None] * n
    if not tracks:
        return chosen, []
    summary = summarise(tracks, n, image_size, o)
    if wanted is None:
        wanted = max(range(len(tracks)), key=lambda i: (summary[i].score, -i))
    track = tracks[wanted]
    for t, ob in zip(track.frames, track.obs):
        chosen[t] = ob
    warnings = []
    if len(tracks) > 1:
        warnings.append(f"{len(tracks)} people seen; following track {wanted} "
                        f"({_why(wanted, summary, person, len(track.frames), n)}); "
                        f"use --person N to choose another: {listing}")
    return chosen, warnings


def _why(i: int, summary: list[TrackSummary], person: str | int, seen: int, n: int) -> str:
    """Why track i: "largest, most central, in 38 of 40 frames" or "--person 1, in 20 of 40 frames"."""
    words = []
    if _parse_person(person) is not None:
        words.append(f"--person {i}")
    else:
        if summary[i].area >= max(s.area for s in summary):
            words.append("largest")
        if summary[i].centrality >= max(s.centrality for s in summary):
            words.append("most central")
        if summary[i].seen >= max(s.seen for s in summary) and seen < n:
            words.append("most often seen")
    words.append(f"in {seen} of {n} frames")
    return ", ".join(words)
