"""Clothing masks and garment labels (perception/clothing.py) on real images with real MediaPipe:
the ryota photo, a small synthetic subject against its truth masks, and property tests of the
geometric helpers and of the output invariants."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pointwear.errors import InputError
from pointwear.perception.clothing import (ClothingOptions, ClothingResult, capsule_mask, clothing_mask,
                                           ellipse_mask, polygon_mask, polyline_coords, quad_distance)
from pointwear.perception.types import LABEL_LOWER, LABEL_ONEPIECE, LABEL_UPPER, LANDMARK_INDEX

os.environ.setdefault("GLOG_minloglevel", "2")
mp = pytest.importorskip("mediapipe")

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
if not REAL.is_dir():
    REAL = Path("/work/shared/data/real")
RYOTA = REAL / "ryota.png"
RYOTA_MASK = REAL / "ryota_mask.png"
L = LANDMARK_INDEX
FACE = list(range(11))
HANDS = {"left": [L["left_pinky"], L["left_index"], L["left_thumb"]],
         "right": [L["right_pinky"], L["right_index"], L["right_thumb"]]}


def run_pose(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real MediaPipe Pose (as prepare uses it): landmarks (33, 4) in px and person mask."""
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True) as pose:
        res = pose.process(np.ascontiguousarray(rgb))
    assert res.pose_landmarks is not None, "MediaPipe found no person"
    h, w = rgb.shape[:2]
    lm = np.array([[p.x * w, p.y * h, p.z * w, p.visibility] for p in res.pose_landmarks.landmark], np.float32)
    return lm, res.segmentation_mask > 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def ryota():
    if not RYOTA.is_file():
        pytest.skip(f"real data missing: {RYOTA}")
    rgb = np.ascontiguousarray(np.asarray(Image.open(RYOTA).convert("RGB")))
    truth_person = np.asarray(Image.open(RYOTA_MASK).convert("L")) > 127
    lm, person = run_pose(rgb)
    return rgb, truth_person, person, lm


def disc(centre, radius: float, shape) -> np.ndarray:
    return ellipse_mask(np.asarray(centre, float), (radius, radius), shape)


@pytest.mark.parametrize("which", ["ryota_mask", "mediapipe"])
def test_ryota_clothing_covers_hoodie_and_trousers_not_face_or_hands(ryota, which):
    rgb, truth_person, mp_person, lm = ryota
    person = truth_person if which == "ryota_mask" else mp_person
    res = clothing_mask(rgb, person, lm)
    assert isinstance(res, ClothingResult)
    shape = person.shape
    assert res.mask.shape == shape and res.mask.dtype == bool
    assert res.labels.shape == shape and res.labels.dtype == np.uint8
    # inside the person mask (the given one and the hand-made one)
    assert (res.mask & person).sum() >= 0.98 * res.mask.sum()
    assert (res.mask & truth_person).sum() >= 0.98 * res.mask.sum()
    # hoodie + trousers are most of the person
    assert res.mask.sum() > 0.6 * person.sum()
    # not the face (hull of the face landmarks) nor the hands (hull of the finger landmarks)
    assert not (res.mask & polygon_mask(lm[FACE, :2], shape)).any()
    for ids in HANDS.values():
        hand = polygon_mask(lm[ids, :2], shape) | disc(lm[ids, :2].mean(0), 4, shape)
        assert not (res.mask & hand).any()
    # the torso centre (hoodie) and the knees (trousers) are clothing, labelled upper / lower
    torso = (lm[[L["left_shoulder"], L["right_shoulder"], L["left_hip"], L["right_hip"]], :2]).mean(0)
    t = disc(torso, 6, shape)
    assert res.mask[t].mean() > 0.99 and (res.labels[t] == LABEL_UPPER).mean() > 0.99
    for knee in ("left_knee", "right_knee"):
        k = disc(lm[L[knee], :2], 4, shape)
        assert res.mask[k].mean() > 0.99 and (res.labels[k] == LABEL_LOWER).mean() > 0.99
    # skin and hair: inside the person, apart from the clothing; the face is skin or hair
    assert not (res.skin & res.mask).any() and not (res.hair & res.mask).any()
    assert not ((res.skin | res.hair) & ~person).any()
    face = polygon_mask(lm[FACE, :2], shape) & person
    assert (res.skin | res.hair)[face].mean() > 0.99
    assert 0.5 < res.confidence <= 1.0


def test_synthetic_subject_against_truth(tmp_path):
    """A small rendered subject (tuning seed 104: t-shirt + shorts, walk): IoU against its truth
    clothing masks, and upper / lower labels where the truth has the t-shirt / the shorts."""
    import torch
    from pointwear.data.subject import read_subject
    from pointwear.synth.generate import SynthOptions, generate_subject
    torch.set_num_threads(1)
    folder = generate_subject(tmp_path / "s104", SynthOptions(frames=3, size=256, outfit="tshirt-shorts",
                                                              motion="walk", seed=104),
                              progress=lambda *a: None)
    subject = read_subject(folder)
    names = subject.label_names
    truth_class = {k: LABEL_UPPER if v == "tshirt" else LABEL_LOWER for k, v in names.items()}
    assert sorted(names.values()) == ["shorts", "tshirt"]
    ious, accs = [], []
    for i in range(subject.num_frames):
        rgb = subject.frame(i)
        lm, person = run_pose(rgb)
        res = clothing_mask(rgb, person, lm)
        truth = subject.mask(i)
        ious.append(iou(res.mask, truth))
        tl = subject.labels(i)
        want = np.zeros_like(tl)
        for k, c in truth_class.items():
            want[tl == k] = c
        both = res.mask & truth
        accs.append(float((res.labels[both] == want[both]).mean()))
        assert {LABEL_UPPER, LABEL_LOWER} <= set(np.unique(res.labels).tolist())
        assert LABEL_ONEPIECE not in res.labels
    # measured 0.949 / 0.977 / 0.948 (mean 0.958) when written
    assert np.mean(ious) >= 0.90, ious
    assert min(ious) >= 0.85, ious
    assert np.mean(accs) >= 0.9, accs


def test_bad_inputs_raise_input_error():
    rgb = np.zeros((20, 30, 3), np.uint8)
    person = np.zeros((20, 30), bool)
    lm = np.zeros((33, 4), np.float32)
    with pytest.raises(InputError, match="uint8"):
        clothing_mask(rgb.astype(np.float32), person, lm)
    with pytest.raises(InputError, match="person mask"):
        clothing_mask(rgb, person[:10], lm)
    with pytest.raises(InputError, match="landmarks"):
        clothing_mask(rgb, person, lm[:17])
    empty = clothing_mask(rgb, person, lm)
    assert not empty.mask.any() and not empty.labels.any() and empty.confidence == 0.0


# ------------------------------------------------------------------------------------------------
# Property tests

coord = st.floats(-500, 500, allow_nan=False)
shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@given(pts=st.lists(st.tuples(coord, coord), min_size=1, max_size=8), shape=shapes)
def test_polygon_mask_stays_in_the_image_and_holds_its_vertices(pts, shape):
    pts = np.array(pts)
    m = polygon_mask(pts, shape)
    assert m.shape == shape and m.dtype == bool
    h, w = shape
    for x, y in pts:
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < w and 0 <= yi < h and len(pts) >= 3:
            # a vertex inside the image is covered (or its pixel centre is on the hull's edge)
            near = m[max(0, yi - 1):yi + 2, max(0, xi - 1):xi + 2]
            assert near.any()


@given(c=st.tuples(coord, coord), ax=st.floats(0, 300), ay=st.floats(0, 300), shape=shapes)
def test_ellipse_mask_shape_and_centre(c, ax, ay, shape):
    m = ellipse_mask(np.array(c), (ax, ay), shape)
    assert m.shape == shape and m.dtype == bool
    xi, yi = int(round(c[0])), int(round(c[1]))
    if 0 <= xi < shape[1] and 0 <= yi < shape[0] and ax >= 1 and ay >= 1:
        assert m[yi, xi]
    assert not ellipse_mask(np.array([np.nan, 1.0]), (ax, ay), shape).any()


@given(a=st.tuples(coord, coord), b=st.tuples(coord, coord), r=st.floats(0, 50), shape=shapes)
def test_capsule_mask_matches_segment_distance(a, b, r, shape):
    m = capsule_mask(np.array(a), np.array(b), r, shape)
    assert m.shape == shape and m.dtype == bool
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    px = np.stack([xs.ravel(), ys.ravel()], 1).astype(float)
    d, _ = polyline_coords(px, np.array([a, b], float))
    inside = m.ravel()
    assert np.all(d[inside] <= r + 1e-3)
    assert np.all(d[~inside] >= r - 1e-3)


@given(chain=st.lists(st.tuples(coord, coord), min_size=2, max_size=5),
       px=st.lists(st.tuples(coord, coord), min_size=1, max_size=20))
def test_polyline_coords_bounds(chain, px):
    chain, px = np.array(chain, float), np.array(px, float)
    d, t = polyline_coords(px, chain)
    assert d.shape == t.shape == (len(px),)
    assert np.all(d >= 0) and np.all((t >= 0) & (t <= 1))
    # never farther than the nearest vertex of the chain
    to_vertices = np.sqrt(((px[:, None] - chain[None]) ** 2).sum(-1)).min(1)
    assert np.all(d <= to_vertices * (1 + 1e-5) + 1e-2)


@given(quad=st.lists(st.tuples(coord, coord), min_size=3, max_size=4, unique=True))
def test_quad_distance_zero_at_the_centroid_of_a_convex_polygon(quad):
    quad = np.array(quad, float)
    area2 = np.cross(quad[1] - quad[0], quad[2] - quad[0]) if len(quad) == 3 else None
    # a convex polygon: the triangle case, when not degenerate
    if area2 is None or abs(area2) < 1.0:
        return
    d = quad_distance(quad.mean(0, keepdims=True), quad)
    assert d[0] == 0.0
    far = quad.mean(0) + 5000.0
    assert quad_distance(far[None], quad)[0] > 0


@pytest.fixture(scope="module")
def ryota_small(ryota):
    """ryota at 128 px (fast) with its landmarks scaled: the base for randomised landmarks."""
    rgb, truth_person, _, lm = ryota
    img = Image.fromarray(rgb).resize((128, 128), Image.BILINEAR)
    person = np.asarray(Image.fromarray(truth_person.astype(np.uint8) * 255).resize((128, 128))) > 127
    lm = lm.copy()
    lm[:, :3] *= 128 / rgb.shape[1]
    return np.asarray(img), person, lm


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.floats(0, 40), vis=st.floats(0, 1), seed=st.integers(0, 2**16), nan_share=st.floats(0, 0.5))
def test_outputs_stay_consistent_for_any_landmarks(ryota_small, noise, vis, seed, nan_share):
    """Whatever the landmarks (jittered, unseen, missing), the outputs keep their invariants."""
    rgb, person, lm = ryota_small
    rng = np.random.default_rng(seed)
    lm = lm.copy()
    lm[:, :2] += rng.normal(0, noise, (33, 2))
    lm[:, 3] = np.clip(lm[:, 3] * vis, 0, 1)
    lm[rng.uniform(size=33) < nan_share, :2] = np.nan
    res = clothing_mask(rgb, person, lm, ClothingOptions())
    assert not (res.mask & ~person).any()
    assert not (res.labels.astype(bool) ^ res.mask).any()
    assert set(np.unique(res.labels).tolist()) <= {0, LABEL_UPPER, LABEL_LOWER, LABEL_ONEPIECE}
    assert not (res.skin & res.mask).any() and not (res.hair & res.mask).any()
    assert not ((res.skin | res.hair) & ~person).any()
    assert 0.0 <= res.confidence <= 1.0
