"""Person detection (real MediaPipe on real images) and the multi-person track of `pointwear prepare`."""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pointwear.errors import InputError
from pointwear.perception.pose import PoseDetector, PoseOptions, check_model_available, mediapipe_model_dir
from pointwear.perception.track import TrackOptions, link_tracks, select_track
from pointwear.perception.types import NUM_LANDMARKS, PersonObs

REAL = Path("/work/shared/data/real")
needs_real = pytest.mark.skipif(not (REAL / "ryota.png").exists(), reason="real data not on this machine")


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    with PoseDetector() as det:
        yield det


@pytest.fixture(scope="module")
def ryota():
    """ryota.png as RGB (H, W, 3) and its person mask (H, W) bool. Its alpha channel is opaque
    almost everywhere (the background is black RGB), so the mask file gives the silhouette."""
    rgb = np.array(Image.open(REAL / "ryota.png").convert("RGB"))
    mask = np.array(Image.open(REAL / "ryota_mask.png").convert("L")) > 127
    return rgb, mask


@pytest.fixture(scope="module")
def video_frames():
    """The first 6 frames of single_person_demo.mp4, decoded with PyAV: (1920, 1080, 3) uint8."""
    import av
    frames = []
    with av.open(str(REAL / "single_person_demo.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 6:
                break
    return frames


def _background(h: int, w: int) -> np.ndarray:
    """A smooth colour gradient with mild noise: no person in it. (h, w, 3) uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([120 + 60 * xx / w, 140 + 40 * yy / h, 100 + 20 * np.sin(xx / 37.0)], -1)
    bg += np.random.default_rng(0).normal(0, 4, bg.shape)
    return np.clip(bg, 0, 255).astype(np.uint8)


def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, scale: float, x0: int, y0: int
           ) -> np.ndarray:
    """Composite rgb (h, w, 3) with alpha (h, w) bool, scaled, at (x0, y0) into canvas (in place).
    Returns where it went: (H, W) bool."""
    h, w = alpha.shape
    size = (int(w * scale), int(h * scale))
    rgb_s = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    a = cv2.resize(alpha.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[..., None]
    region = canvas[y0:y0 + size[1], x0:x0 + size[0]]
    region[:] = (a * rgb_s + (1 - a) * region).astype(np.uint8)
    where = np.zeros(canvas.shape[:2], bool)
    where[y0:y0 + size[1], x0:x0 + size[0]] = a[..., 0] > 0.5
    return where


def _two_people(ryota, shift: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ryota twice side by side at different sizes on a background, both moved right by `shift`
    px. Returns the image (620, 960, 3) and where the left (larger) and right person are."""
    rgb, mask = ryota
    canvas = _background(620, 960)
    left = _paste(canvas, rgb, mask, 1.1, 20 + shift, 20)
    right = _paste(canvas, rgb, mask, 0.8, 520 + shift, 150)
    return canvas, left, right


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _check_obs(p: PersonObs, h: int, w: int) -> None:
    """The contract of types.PersonObs for one (h, w) frame."""
    assert p.landmarks.shape == (NUM_LANDMARKS, 4) and p.landmarks.dtype == np.float32
    assert p.world.shape == (NUM_LANDMARKS, 3) and p.world.dtype == np.float32
    assert p.mask.shape == (h, w) and p.mask.dtype == np.float32
    assert 0.0 <= p.mask.min() and p.mask.max() <= 1.0
    assert np.all((p.landmarks[:, 3] >= 0) & (p.landmarks[:, 3] <= 1))
    x0, y0, x1, y1 = p.bbox
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert 0.0 <= p.score <= 1.0
    seen = p.landmarks[p.landmarks[:, 3] > 0.5]
    assert len(seen) > 0
    assert np.all((seen[:, 0] >= 0) & (seen[:, 0] < w) & (seen[:, 1] >= 0) & (seen[:, 1] < h))


# ---- real MediaPipe -------------------------------------------------------------------------------


@needs_real
def test_ryota_one_person_mask_and_landmarks(detector, ryota):
    rgb, truth = ryota
    people = detector.detect(rgb, max_people=3)
    assert len(people) == 1
    p = people[0]
    _check_obs(p, *rgb.shape[:2])
    assert _iou(p.mask > 0.5, truth) >= 0.95            # measured 0.977
    assert p.score > 0.9                                 # a clear, full-body, front view
    # the person's landmarks sit on the person: nose above the hips above the ankles
    lm = p.landmarks
    assert lm[0, 1] < lm[23, 1] < lm[27, 1]
    inside = truth[lm[:, 1].astype(int).clip(0, 511), lm[:, 0].astype(int).clip(0, 511)]
    assert inside[[0, 11, 12, 23, 24, 25, 26]].all()    # nose, shoulders, hips, knees
    # the box covers the true silhouette
    ys, xs = np.nonzero(truth)
    x0, y0, x1, y1 = p.bbox
    assert x0 <= xs.min() + 3 and y0 <= ys.min() + 3 and x1 >= xs.max() - 3 and y1 >= ys.max() - 3


def test_blank_images_have_nobody(detector):
    assert detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    assert detector.detect(_background(600, 400), max_people=3) == []


@needs_real
def test_video_frames_full_hd(detector, video_frames):
    """1080x1920 frames: MediaPipe runs on a downscaled copy; landmarks and masks come back in the
    full frame's pixels."""
    h, w = video_frames[0].shape[:2]
    assert (h, w) == (1920, 1080)
    for rgb in video_frames[::2]:
        people = detector.detect(rgb, max_people=3)
        assert len(people) >= 1
        p = people[0]
        _check_obs(p, h, w)
        assert p.height_px > 0.4 * h and p.score > 0.8
    # downscaled vs full size: the same landmarks within 1.5 % of the person's height
    with PoseDetector(PoseOptions(max_side=1920)) as full:
        a = detector.detect(video_frames[0], max_people=1)[0]
        b = full.detect(video_frames[0], max_people=1)[0]
    both = (a.landmarks[:, 3] > 0.5) & (b.landmarks[:, 3] > 0.5)
    err = np.linalg.norm(a.landmarks[both, :2] - b.landmarks[both, :2], axis=1)
    assert np.median(err) < 0.015 * b.height_px
    assert _iou(a.mask > 0.5, b.mask > 0.5) > 0.9


@needs_real
def test_video_mode_follows_the_person(video_frames):
    """Tracking graphs on consecutive frames find the same person as static detection, and after
    reset() (a cut) the person is found again."""
    with PoseDetector(video=True) as det, PoseDetector() as still:
        for rgb in video_frames[:4]:
            tracked = det.detect(rgb, max_people=2)
            static = still.detect(rgb, max_people=1)
            assert tracked and static
            x0, y0, x1, y1 = tracked[0].bbox
            sx0, sy0, sx1, sy1 = static[0].bbox
            inter = max(0, min(x1, sx1) - max(x0, sx0)) * max(0, min(y1, sy1) - max(y0, sy0))
            union = (x1 - x0) * (y1 - y0) + (sx1 - sx0) * (sy1 - sy0) - inter
            assert inter / union > 0.8
        det.reset()
        assert det.detect(video_frames[5], max_people=1)


@needs_real
def test_two_people_found_and_tracked_apart(detector, ryota):
    image, left, right = _two_people(ryota)
    people = detector.detect(image, max_people=3)
    assert len(people) == 2
    for p in people:
        _check_obs(p, *image.shape[:2])
    # one on each side, each mask on its own person, the masks apart
    by_x = sorted(people, key=lambda p: p.bbox[0])
    assert _iou(by_x[0].mask > 0.5, left) > 0.9
    assert _iou(by_x[1].mask > 0.5, right) > 0.9
    assert ((people[0].mask > 0.5) & (people[1].mask > 0.5)).sum() == 0
    assert by_x[0].bbox[2] < by_x[1].bbox[0]

    # three frames, both people walking right: two tracks, each on its own person
    per_frame = [people] + [detector.detect(_two_people(ryota, s)[0]) for s in (8, 16)]
    assert [len(f) for f in per_frame] == [2, 2, 2]
    tracks = link_tracks(per_frame)
    assert len(tracks) == 2 and all(len(t.frames) == 3 for t in tracks)
    for tr in tracks:
        xs = [ob.bbox[0] for ob in tr.obs]
        assert max(xs) - min(xs) < 40                  # never jumps to the other person
    chosen, warnings = select_track(per_frame, "auto", image.shape[:2])
    assert all(ob is not None and ob.bbox[2] < 480 for ob in chosen)   # the larger, left one
    assert len(warnings) == 1 and "2 people seen; following track 0" in warnings[0]
    assert "largest" in warnings[0] and "--person N" in warnings[0]
    other, _ = select_track(per_frame, "1", image.shape[:2])
    assert all(ob is not None and ob.bbox[0] > 480 for ob in other)
    with pytest.raises(InputError) as err:
        select_track(per_frame, 2, image.shape[:2])
    assert err.value.field == "person" and "track 1" in str(err.value)


@needs_real
def test_overlapping_people_told_apart(detector, ryota):
    """Two people whose boxes overlap (one half in front of the other): both found, each mask on
    its own person (the later one was found with the first blanked out)."""
    rgb, mask = ryota
    canvas = _background(620, 960)
    back = _paste(canvas, rgb, mask, 1.1, 20, 20)
    front = _paste(canvas, rgb, mask, 1.0, 240, 40)
    people = detector.detect(canvas, max_people=3)
    assert len(people) == 2
    a, b = sorted(people, key=lambda p: p.bbox[0])
    assert a.bbox[2] > b.bbox[0]                         # the boxes overlap
    assert _iou(a.mask > 0.5, back & ~front) > 0.85
    assert _iou(b.mask > 0.5, front) > 0.85


def test_synthetic_subject_person_found(tmp_path, pointwear_exe, detector):
    subject = tmp_path / "syn"
    subprocess.run([pointwear_exe, "synth", str(subject), "--frames", "2", "--size", "256",
                    "--seed", "101"], check=True, capture_output=True)
    for i in range(2):
        rgb = np.array(Image.open(subject / "frames" / f"{i:06d}.png").convert("RGB"))
        clothing = np.array(Image.open(subject / "masks" / f"{i:06d}.png").convert("L")) > 127
        people = detector.detect(rgb, max_people=3)
        assert len(people) == 1
        _check_obs(people[0], 256, 256)
        # the truth clothing lies inside the person mask
        assert ((people[0].mask > 0.5) & clothing).sum() >= 0.9 * clothing.sum()


# ---- options and bad input ------------------------------------------------------------------------


def test_bad_input_is_refused(detector):
    with pytest.raises(InputError) as err:
        detector.detect(np.zeros((64, 64), np.uint8))
    assert err.value.field == "rgb"
    with pytest.raises(InputError):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(InputError) as err:
        detector.detect(np.zeros((64, 64, 3), np.uint8), max_people=0)
    assert err.value.field == "max_people"
    with pytest.raises(InputError) as err:
        PoseDetector(PoseOptions(mask_threshold=1.5))
    assert err.value.field == "mask_threshold"


def test_models_not_in_the_wheel_are_never_downloaded():
    assert check_model_available(1).is_file()
    for complexity, name in ((0, "pose_landmark_lite.tflite"), (2, "pose_landmark_heavy.tflite")):
        path = mediapipe_model_dir() / name
        if path.exists():
            continue
        with pytest.raises(InputError) as err:
            PoseDetector(PoseOptions(model_complexity=complexity))
        assert err.value.field == "model_complexity" and name in str(err.value)
        assert not path.exists()


def test_close_twice_and_reuse():
    det = PoseDetector()
    blank = np.zeros((100, 100, 3), np.uint8)
    assert det.detect(blank) == []
    det.close()
    det.close()
    assert det.detect(blank) == []      # a closed detector opens a fresh graph when used again
    det.close()


# ---- linking and choosing (synthetic detections) -------------------------------------------------

_TEMPLATE = np.random.default_rng(7).uniform(0.05, 0.95, (NUM_LANDMARKS, 2))   # landmarks in a unit box
_NO_MASK = np.zeros((1, 1), np.float32)


def _obs(cx: float, cy: float, w: float, h: float, vis: float = 0.9) -> PersonObs:
    """A synthetic detection: a box centred at (cx, cy) of size w x h, landmarks in it."""
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    lm = np.zeros((NUM_LANDMARKS, 4), np.float32)
    lm[:, 0] = box[0] + _TEMPLATE[:, 0] * w
    lm[:, 1] = box[1] + _TEMPLATE[:, 1] * h
    lm[:, 3] = vis
    return PersonObs(landmarks=lm, world=np.zeros((NUM_LANDMARKS, 3), np.float32), mask=_NO_MASK,
                     bbox=box, score=vis)


@st.composite
def _scenes(draw):
    """K people on separate vertical lanes, each moving smoothly (sinusoidal sway in x and y and a
    breathing size), some detections missing (gaps up to TrackOptions.max_gap), each frame's
    detections shuffled. Returns (per_frame, identity per detection)."""
    k = draw(st.integers(1, 4))
    n = draw(st.integers(2, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    drop = draw(st.floats(0.0, 0.5))
    rng = np.random.default_rng(seed)
    lane = 420.0
    people = []
    for i in range(k):
        w = rng.uniform(60, 140)
        people.append(dict(
            x=lane * (i + 0.5), y=rng.uniform(300, 500), w=w, h=w * rng.uniform(2.0, 3.0),
            ax=rng.uniform(0, 120), ay=rng.uniform(0, 40), om=rng.uniform(0.02, 0.4),
            ph=rng.uniform(0, 2 * np.pi), grow=rng.uniform(0, 0.15)))
    max_gap = TrackOptions().max_gap
    per_frame, ids = [], []
    last_seen = [-1] * k
    for t in range(n):
        frame, frame_ids = [], []
        for i, p in enumerate(people):
            if rng.random() < drop and t - last_seen[i] <= max_gap and t > 0:
                continue
            last_seen[i] = t
            s = 1.0 + p["grow"] * np.sin(0.5 * p["om"] * t)
            frame.append(_obs(p["x"] + p["ax"] * np.sin(p["om"] * t + p["ph"]),
                              p["y"] + p["ay"] * np.cos(p["om"] * t + p["ph"]),
                              p["w"] * s, p["h"] * s))
            frame_ids.append(i)
        order = rng.permutation(len(frame))
        per_frame.append([frame[j] for j in order])
        ids.append([frame_ids[j] for j in order])
    return per_frame, ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenes())
def test_smooth_people_stay_on_their_own_tracks(scene):
    per_frame, ids = scene
    tracks = link_tracks(per_frame)
    track_ids = [{ids[t][j] for t, j in zip(tr.frames, tr.detections)} for tr in tracks]
    assert all(len(s) == 1 for s in track_ids)                       # no track mixes people
    people = [i for s in track_ids for i in s]
    assert len(people) == len(set(people))                           # no person split in two
    assert sum(len(tr.frames) for tr in tracks) == sum(len(f) for f in per_frame)
    for tr in tracks:                                                # each frame at most once
        assert len(set(tr.frames)) == len(tr.frames) and tr.frames == sorted(tr.frames)
    firsts = [(tr.first, (tr.obs[0].bbox[0] + tr.obs[0].bbox[2]) / 2) for tr in tracks]
    assert firsts == sorted(firsts)                                  # the documented order


def test_auto_prefers_large_central_often_seen():
    size = (1000, 1500)
    n = 20
    main = [_obs(750, 500, 200, 500) for _ in range(n)]                  # large, central, always
    side = [_obs(200, 500, 120, 300) if t % 2 == 0 else None for t in range(n)]   # small, edge
    passer = [_obs(1300, 500, 260, 650) if 5 <= t < 9 else None for t in range(n)]  # big, brief-ish
    per_frame = [[o for o in (side[t], main[t], passer[t]) if o is not None] for t in range(n)]
    chosen, warnings = select_track(per_frame, "auto", size)
    assert all(ob is main[t] for t, ob in enumerate(chosen))
    assert len(warnings) == 1
    w = warnings[0]
    assert w.startswith("3 people seen; following track 1 (most central, in 20 of 20 frames)")
    assert "track 0: frames 0-18, seen in 10" in w and "track 2: frames 5-8, seen in 4" in w
    # --person N in the stable order: 0 = the side person (first seen, leftmost), 2 = the passer
    chosen, warnings = select_track(per_frame, 0, size)
    assert [ob is not None and ob is side[t] for t, ob in enumerate(chosen)] == [t % 2 == 0 for t in range(n)]
    assert chosen[1] is None and "--person 0" in warnings[0]
    chosen, _ = select_track(per_frame, "2", size)
    assert [t for t, ob in enumerate(chosen) if ob is not None] == [5, 6, 7, 8]


def test_brief_detections_are_not_people():
    """A detection seen in one or two frames of many (a ball, a shadow) is not listed or chosen;
    alone, it is still followed."""
    n = 30
    per_frame = [[_obs(400, 300, 100, 250)] for _ in range(n)]
    per_frame[7].append(_obs(700, 500, 40, 50))
    per_frame[8].append(_obs(705, 500, 40, 50))
    chosen, warnings = select_track(per_frame, "auto", (600, 800))
    assert warnings == [] and all(ob is per_frame[t][0] for t, ob in enumerate(chosen))
    with pytest.raises(InputError):
        select_track(per_frame, 1, (600, 800))
    lonely = [[] for _ in range(n)]
    lonely[3] = [_obs(700, 500, 40, 50)]
    chosen, warnings = select_track(lonely, "auto", (600, 800))
    assert chosen[3] is lonely[3][0] and sum(ob is not None for ob in chosen) == 1


def test_gaps_and_nobody():
    per_frame = [[_obs(400 + 5 * t, 300, 100, 250)] if t not in (3, 4, 5) else [] for t in range(10)]
    chosen, warnings = select_track(per_frame, "auto", (600, 800))
    assert [ob is None for ob in chosen] == [t in (3, 4, 5) for t in range(10)]
    assert len(link_tracks(per_frame)) == 1 and warnings == []
    chosen, warnings = select_track([[], []], "auto", (600, 800))
    assert chosen == [None, None] and warnings == []
    with pytest.raises(InputError) as err:
        select_track([[], []], 0, (600, 800))
    assert err.value.field == "person" and "no person" in str(err.value)


@pytest.mark.parametrize("bad", ["first", "-1", -1, 1.5, True, ""])
def test_bad_person_values(bad):
    with pytest.raises(InputError) as err:
        select_track([[_obs(100, 100, 50, 120)]], bad, (200, 200))
    assert err.value.field == "person"
