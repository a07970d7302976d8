"""Parts of single-image reconstruction on real data structures: the body-surface template on a
synthetic subject (true body and mask), mirror pairs, cross-section rings, the UV atlas and its
texel rasterization, the inpainting diffusion, and a short refinement that must raise the IoU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pointwear.recon.options import ReconOptions
from pointwear.recon.template import mirror_vertices, vertex_adjacency
from pointwear.recon.texture import _texels, diffuse, uv_atlas
from test_rasterizer import icosphere


@pytest.fixture(scope="module")
def synth_obs(tmp_path_factory):
    from pointwear.body import load_body
    from pointwear.recon.perceive import observation_from_subject
    from pointwear.synth.generate import SynthOptions, generate_subject
    out = tmp_path_factory.mktemp("s") / "subject"
    generate_subject(out, SynthOptions(frames=1, size=256, outfit="longsleeve-trousers", seed=5))
    from pointwear.data.subject import read_subject
    s = read_subject(out)
    person = s.labels(0) > 0   # clothing; the person mask only bounds the crop here
    import cv2
    person = cv2.dilate(person.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    return observation_from_subject(out, person=person), load_body("default", device="cpu")


def test_template_lies_under_the_mask_and_pairs_are_consistent(synth_obs):
    from pointwear.recon.template import body_region_template
    obs, body = synth_obs
    t = body_region_template(obs, body, ReconOptions())
    assert t.faces.max() < t.num_vertices and len(t.faces) > 1000
    with torch.no_grad():
        posed = obs.posed_body(body)[0].numpy()[t.body_vertex]
    uv = posed[:, :2] / posed[:, 2:3] * np.diag(obs.K)[:2] + obs.K[:2, 2]
    px = np.clip(np.round(uv).astype(int), 0, 255)
    import cv2
    near = cv2.dilate(obs.mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert near[px[:, 1], px[:, 0]].mean() > 0.97
    ok = t.mirror >= 0
    assert ok.mean() > 0.8 and (t.mirror[t.mirror[ok]] == np.nonzero(ok)[0]).mean() > 0.95
    assert np.allclose(np.linalg.norm(t.normals, axis=1), 1, atol=1e-4)
    assert np.allclose(t.weights.sum(1), 1, atol=1e-4)
    counts = np.bincount(t.ring)
    assert counts.min() >= 1 and 20 < len(counts) < t.num_vertices / 5


def test_short_refinement_raises_the_iou(synth_obs):
    from pointwear.recon.refine import refine
    from pointwear.recon.template import body_region_template
    obs, body = synth_obs
    o = ReconOptions(steps=12, render_height=160)
    r = refine(obs, body, body_region_template(obs, body, o), o)
    first, last = r.history[0], r.history[-1]
    assert last["iou"] > first["iou"] and last["total"] < first["total"]
    assert np.isfinite(r.posed).all() and np.abs(r.offsets).max() < o.max_offset
    assert r.albedo.min() >= 0 and r.albedo.max() <= 1 and r.sh.shape == (9,)


def test_mirror_pairs_of_a_symmetric_mesh_are_an_involution():
    v, _ = icosphere(2)
    m = mirror_vertices(v)
    assert (m >= 0).all() and (m[m] == np.arange(len(v))).all()
    assert np.allclose(v[m] * [-1, 1, 1], v, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), share=st.floats(0.05, 0.9))
def test_diffusion_keeps_known_values_and_stays_within_their_range(seed, share):
    rng = np.random.default_rng(seed)
    v, f = icosphere(2)
    known = rng.random(len(v)) < share
    known[0] = True
    values = rng.random((len(v), 3))
    out = diffuse(values, known, f, iters=200)
    assert np.array_equal(out[known], values[known])
    lo, hi = values[known].min(0), values[known].max(0)
    assert (out >= lo - 1e-9).all() and (out <= hi + 1e-9).all()
    const = diffuse(np.full((len(v), 3), 0.3), known, f, iters=50)
    assert np.allclose(const, 0.3)


def test_atlas_covers_the_mesh_and_maps_back():
    v, f = icosphere(3)
    atlas = uv_atlas(v, f, 256)
    assert len(atlas.faces) == len(f) and atlas.uv.min() >= 0 and atlas.uv.max() <= 1
    # Each atlas face is a mesh face (same vertices through vmapping).
    assert {tuple(sorted(x)) for x in atlas.vmapping[atlas.faces]} == {tuple(sorted(x)) for x in f}
    frags = _texels(atlas, 256, torch.device("cpu"))
    covered = (frags.face_id[0] >= 0).float().mean()
    assert 0.4 < covered < 0.95
    adj = vertex_adjacency(f, len(v))
    assert (adj != adj.T).nnz == 0


def test_hidden_vertices_follow_their_ring_then_their_mirror():
    """garment_vertices: seen vertices by the mask; hidden ones by their ring's seen vote; a ring
    nobody sees by the mirror vertex; never where not allowed."""
    from pointwear.recon.template import garment_vertices
    # ring 0: 4 seen (3 in the mask) + 2 hidden; ring 1: 4 seen, none in the mask, + 1 hidden;
    # ring 2: 2 hidden, mirrors of ring 0's seen vertices 0 (in) and 3 (out); vertex 13 not allowed.
    ring = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 0])
    seen = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1], bool)
    in_mask = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    mirror = np.full(14, -1)
    mirror[[11, 12, 0, 3]] = [0, 3, 11, 12]
    allowed = np.ones(14, bool)
    allowed[13] = False
    sel = garment_vertices(in_mask, seen, ring, mirror, allowed)
    assert sel.tolist() == [1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0]


def test_a_ring_seen_only_at_its_edge_follows_its_mirror():
    """garment_vertices with min_share: a ring with enough seen vertices (RING_MIN_SEEN) but below
    the share of its size does not vote; its hidden vertices follow their mirrors. The share is per
    ring (the template gives it to the limbs: arms and legs)."""
    from pointwear.recon.template import garment_vertices
    # ring 0: 10 vertices, 3 seen (all in the mask), 7 hidden whose mirrors (ring 1) are bare;
    # ring 1: 10 vertices, all seen, none in the mask.
    ring = np.repeat([0, 1], 10)
    seen = np.r_[np.ones(3, bool), np.zeros(7, bool), np.ones(10, bool)]
    in_mask = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    mirror = np.r_[np.arange(10, 20), np.arange(10)]
    allowed = np.ones(20, bool)
    votes = garment_vertices(in_mask, seen, ring, mirror, allowed)
    assert votes[:10].all() and not votes[10:].any()               # 3 seen vertices vote for 7
    edge = garment_vertices(in_mask, seen, ring, mirror, allowed, np.array([0.5, 0.5]))
    assert edge[:3].all() and not edge[3:].any()                   # the 7 follow their bare mirrors
    assert np.array_equal(garment_vertices(in_mask, seen, ring, mirror, allowed, np.array([0.3, 0.5])), votes)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2), st.integers(1, 2))
def test_subdivide_splits_every_face_in_four_and_shares_midpoints(level, times):
    from pointwear.recon.fast import subdivide
    v, f = icosphere(level)
    v, f = np.asarray(v, np.float64), np.asarray(f, np.int64)
    uv = v[:, :2].copy()
    nv, nf, nuv = v, f, uv
    for _ in range(times):
        nv, nf, nuv = subdivide(nv, nf, nuv)
    edges = lambda faces: len(np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]],  # noqa: E731
                                                                 faces[:, [2, 0]]]), 1), axis=0))
    assert len(nf) == len(f) * 4 ** times
    assert len(nv) - edges(nf) + len(nf) == len(v) - edges(f) + len(f)     # Euler characteristic kept
    assert np.allclose(nv[:len(v)], v) and np.allclose(nuv[:, :2], nv[:, :2])  # uv interpolated alike
    # orientation kept: the sum of face normals' outward components stays positive on the sphere
    a, b, c = (nv[nf[:, k]] for k in range(3))
    n = np.cross(b - a, c - a)
    assert ((n * (a + b + c)).sum(1) > 0).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 5), st.integers(0, 10_000))
def test_front_back_images_reflect_each_ring_about_its_mean_depth(n, rings, seed):
    from pointwear.recon.texture import front_back_images
    rng = np.random.default_rng(seed)
    rest = rng.normal(size=(n, 3))
    ring = rng.integers(0, rings, n)
    back = front_back_images(rest, ring)
    assert np.allclose(back[:, :2], rest[:, :2])
    assert np.allclose(front_back_images(back, ring), rest)             # an involution
    for r in np.unique(ring):                                            # each ring's centre kept
        assert np.isclose(back[ring == r, 2].mean(), rest[ring == r, 2].mean())
    assert front_back_images(rest, None) is None


def _frontal_obs(root, outfit: str, seed: int, side: bool = False, size: int = 256):
    """A synthetic turntable's frame seen most nearly from the front or the back (truth body and
    clothing mask): where a skirt shows across the gap between the legs; `side`: the frame seen
    most nearly from the side instead."""
    from scipy.spatial.transform import Rotation

    from pointwear.data.subject import read_subject
    from pointwear.recon.perceive import observation_from_subject
    from pointwear.synth.generate import SynthOptions, generate_subject
    out = root / f"{outfit}_{seed}"
    generate_subject(out, SynthOptions(frames=4, size=size, outfit=outfit, seed=seed))
    s = read_subject(out)
    facing = np.abs(Rotation.from_rotvec(s.smpl.global_orient).apply([0.0, 0.0, 1.0])[:, 2])
    frame = int(facing.argmin() if side else facing.argmax())
    return observation_from_subject(out, frame, person=s.labels(frame) > 0)


@pytest.mark.parametrize("outfit, bridged", [("dress", True), ("longsleeve-trousers", False)])
def test_a_skirt_joins_the_legs_and_trousers_keep_them(tmp_path, outfit, bridged):
    """recon/bridge.py on a synthetic photo: a dress's legs become one tube (the inner halves on the
    legs' front and back lines, reaching the midline, the faces across them dropped, weights
    still a partition of one); trousers' template is the plain body surface."""
    from pointwear.body import load_body
    from pointwear.recon.template import body_region_template
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, outfit, 3)
    plain = body_region_template(obs, body, ReconOptions(bridge_legs=False))
    t = body_region_template(obs, body, ReconOptions())
    assert np.array_equal(t.body_vertex, plain.body_vertex) or bridged
    if not bridged:
        assert np.array_equal(t.faces, plain.faces) and np.array_equal(t.rest, plain.rest)
        return
    moved = np.linalg.norm(t.rest - plain.rest[np.searchsorted(plain.body_vertex, t.body_vertex)], axis=1) > 1e-4
    assert moved.sum() > 50 and len(t.faces) < len(plain.faces)
    legs = t.rest[moved]
    assert np.abs(legs[:, 0]).min() < 0.01                                # the halves reach the midline
    assert np.allclose(t.weights.sum(1), 1, atol=1e-4) and np.allclose(np.linalg.norm(t.normals, axis=1), 1, atol=1e-4)
    assert (t.mirror[t.mirror[t.mirror >= 0]] == np.nonzero(t.mirror >= 0)[0]).all()
    # no shelf inside the tube: the crotch's downward faces are gone, the rest of the pelvis stays
    from pointwear.body.joints import JOINT_INDEX
    pelvis = body.weights_np[plain.body_vertex].argmax(1) == JOINT_INDEX["pelvis"]
    down = pelvis & (plain.normals[:, 1] < -0.7)
    assert down.sum() >= 10
    assert not np.isin(plain.body_vertex[down], t.body_vertex).any()
    assert np.isin(plain.body_vertex[pelvis & (plain.normals[:, 1] > 0)], t.body_vertex).all()


def _elliptic_tube(a: float, b: float, levels: int = 4, n: int = 24):
    """A tube of `levels` rings of n vertices on the ellipse x = a cos t, z = b sin t (rest pose),
    as a Template marked as a skirt (every ring a skirt level)."""
    return _flared_tube([a] * levels, [b] * levels, n)


@pytest.mark.parametrize("a, b", [(0.25, 0.1), (0.2, 0.18)])
def test_skirt_depth_pushes_only_a_flat_skirt_front_and_back(a, b):
    """refine.SkirtSides: the half width and half depth of each level are read from its sides;
    a skirt shallower than `ratio` x its width is pushed out front and back (z) only, its width
    left to the photo; a deep enough one, or a template without a skirt, costs nothing."""
    from dataclasses import replace

    from pointwear.recon.refine import SkirtSides
    t = _elliptic_tube(a, b)
    sides = SkirtSides.build(t, torch.device("cpu"))
    rest = torch.tensor(t.rest, dtype=torch.float32, requires_grad=True)
    half = sides.extent(rest).detach()
    assert half.shape == (4, 2)
    for k, extreme in enumerate((a, b)):      # a side's mean lies near the extreme (a flat line: on it)
        assert ((half[:, k] <= extreme + 1e-6) & (half[:, k] > 0.7 * extreme)).all()
    loss = sides.depth_deficit(rest, 0.6)
    loss.backward()
    g = rest.grad
    if b >= 0.6 * a:
        assert float(loss.detach()) == 0.0
        return
    assert float(loss.detach()) == pytest.approx((0.6 * float(half[0, 0]) - float(half[0, 1])) ** 2, rel=0.05)
    assert torch.all(g[:, 0] == 0) and torch.all(g[:, 1] == 0)                # width and height untouched
    front, back = t.normals[:, 2] > 0.7, t.normals[:, 2] < -0.7
    assert (g[front, 2] < 0).all() and (g[back, 2] > 0).all()                  # descent: front +z, back -z
    assert (g[~(front | back), 2] == 0).all()
    plain = SkirtSides.build(replace(t, skirt_level=None), torch.device("cpu"))
    assert float(plain.depth_deficit(rest.detach(), 0.6)) == 0.0


def _flared_tube(widths, depths, n: int = 24):
    """A skirt tube whose level k (0 = the hem, rest y rising with k) is the ellipse of half
    width widths[k] and half depth depths[k], as a Template marked as a skirt."""
    from pointwear.recon.template import Template
    t = np.arange(n) * 2 * np.pi / n
    levels = len(widths)
    rest = np.concatenate([np.stack([a * np.cos(t), np.full(n, 0.05 * k), b * np.sin(t)], 1)
                           for k, (a, b) in enumerate(zip(widths, depths))])
    normals = np.concatenate([np.stack([b * np.cos(t), np.zeros(n), a * np.sin(t)], 1)
                              for a, b in zip(widths, depths)])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    faces = np.array([[k * n + i, (k + 1) * n + i, k * n + (i + 1) % n] for k in range(levels - 1) for i in range(n)])
    V = len(rest)
    return Template(body_vertex=np.arange(V), faces=faces, rest=rest.astype(np.float32),
                    normals=normals.astype(np.float32), weights=np.full((V, 24), 1 / 24, np.float32),
                    mirror=np.full(V, -1), ring=np.repeat(np.arange(levels), n),
                    skirt_level=np.repeat(np.arange(levels), n))


@settings(max_examples=25, deadline=None)
@given(hips=st.floats(0.15, 0.25), flare=st.floats(0.0, 0.3), share=st.floats(0.65, 1.0),
       levels=st.integers(4, 9))
def test_a_flared_skirt_is_wanted_as_deep_as_it_flares(hips, flare, share, levels):
    """refine.SkirtSides.depth_deficit with `flare`: a skirt widening below the hips is wanted
    deeper by `flare` x the width it gains (a cone flares all round), read against the upper
    half's median width; a skirt as deep as `ratio` x its width owes nothing where it does not
    flare, owes at its flared levels, and is pushed out front and back only. flare 0 is the
    plain rule."""
    from pointwear.recon.refine import SkirtSides
    ratio = 0.6
    grow = np.clip(np.linspace(flare, 0.0, levels) - 0.02, 0.0, None)    # the hem widest, the hips none
    widths = hips + grow
    t = _flared_tube(widths, 0.7 * widths)
    sides = SkirtSides.build(t, torch.device("cpu"))
    rest = torch.tensor(t.rest, dtype=torch.float32, requires_grad=True)
    half = sides.extent(rest).detach().numpy()
    assert (half[:, 1] >= ratio * half[:, 0]).all()                     # deep enough for the plain rule
    plain = float(sides.depth_deficit(rest.detach(), ratio, 0.0))
    assert plain == float(sides.depth_deficit(rest.detach(), ratio)) == 0.0
    loss = sides.depth_deficit(rest, ratio, share)
    base = np.median(half[levels // 2:, 0])
    want = np.where(half[:, 0] > base, np.maximum(ratio * half[:, 0], ratio * base + share * (half[:, 0] - base)),
                    ratio * half[:, 0])
    assert float(loss.detach()) == pytest.approx(float((np.maximum(want - half[:, 1], 0) ** 2).mean()), rel=1e-4, abs=1e-9)
    owed = want - half[:, 1] > 1e-6
    if not owed.any():                                                   # flared less than it is deep
        assert float(loss.detach()) == 0.0
        return
    assert not owed[levels // 2:][half[levels // 2:, 0] <= base].any()  # the hips owe nothing
    assert float(loss.detach()) > 0
    loss.backward()
    g = rest.grad.numpy()
    assert (g[:, :2] == 0).all()                                         # width and height untouched
    level = np.repeat(np.arange(levels), 24)
    front, back = t.normals[:, 2] > 0.7, t.normals[:, 2] < -0.7
    assert (g[front & owed[level], 2] < 0).all() and (g[back & owed[level], 2] > 0).all()
    assert (g[~owed[level], 2] == 0).all()                               # the hips' levels stay


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25])
def test_the_arms_start_at_their_own_ease(ratio):
    """refine.start_ease: start_offset off the arms, arm_ease_ratio x it where the skin weight is on
    an arm bone, blended between (no step at the armhole); with no start offset (the learned
    template's refinement) no ease anywhere."""
    from dataclasses import replace

    from pointwear.body.joints import JOINT_INDEX
    from pointwear.recon.refine import start_ease
    t = _elliptic_tube(0.1, 0.1)
    w = np.zeros((t.num_vertices, 24), np.float32)
    arm, torso, half = slice(0, 24), slice(24, 48), slice(48, 96)
    w[arm, JOINT_INDEX["left_elbow"]] = 1.0
    w[torso, JOINT_INDEX["spine2"]] = 1.0
    w[half, JOINT_INDEX["right_shoulder"]] = 0.5
    w[half, JOINT_INDEX["right_collar"]] = 0.5
    o = ReconOptions(start_offset=0.06, skirt_start_offset=0.04, arm_ease_ratio=ratio)
    plain = replace(t, weights=w, midline=None)
    ease = start_ease(plain, o)
    assert ease.shape == (t.num_vertices,) and ease.dtype == np.float32
    assert np.allclose(ease[torso], 0.06) and np.allclose(ease[arm], 0.06 * ratio)
    assert np.allclose(ease[half], 0.06 * (1 + ratio) / 2)
    assert np.all(start_ease(plain, replace(o, start_offset=0.0)) == 0.0)
    # a template whose legs are bridged (a skirt or dress) starts at the skirt's ease
    skirt = start_ease(replace(plain, midline=np.zeros(t.num_vertices, bool)), o)
    assert np.allclose(skirt, ease * 0.04 / 0.06)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=5), min_size=1, max_size=3),
       st.integers(0, 2 ** 31 - 1), st.integers(1, 3))
def test_a_limb_keeps_only_its_garment_from_the_torso(chains, seed, run):
    """limb_prefix: per chain, walked joint by joint and bin by bin from the torso, everything
    after the first `run` bare cross-sections in a row (garment share < 0.5) is dropped; the
    cross-sections before it, and every vertex off the chains, stay as they were."""
    from pointwear.recon.template import limb_prefix
    rng = np.random.default_rng(seed)
    dominant, position, order = [], [], []
    joint = 1
    chain_joints = []
    for rings_per_joint in chains:
        js = []
        for n_rings in rings_per_joint:
            for b in range(n_rings):
                k = int(rng.integers(1, 6))
                dominant += [joint] * k
                position += [b - 1] * k
            js.append(joint)
            joint += 1
        chain_joints.append(tuple(js))
    dominant += [0] * 5                                  # off every chain (the torso)
    position += [0] * 5
    dominant, position = np.array(dominant), np.array(position)
    sel = rng.random(len(dominant)) < rng.uniform(0.2, 0.9)
    out = limb_prefix(sel, dominant, position, tuple(chain_joints), min_vertices=1, run=run)
    assert not (out & ~sel).any()
    assert np.array_equal(out[dominant == 0], sel[dominant == 0])
    for js in chain_joints:
        bare, cut = 0, False
        for j in js:
            for b in sorted(set(position[dominant == j])):
                ring = (dominant == j) & (position == b)
                if cut:
                    assert not out[ring].any()
                    continue
                assert np.array_equal(out[ring], sel[ring])
                bare = bare + 1 if sel[ring].mean() < 0.5 else 0
                cut = bare >= run


def test_a_forearm_over_the_skirt_is_no_sleeve(tmp_path):
    """A tank top: the bare upper arm ends the garment on that arm, so a forearm the clothing mask
    happens to cover (a misfitted arm over the skirt) does not become a sleeve on the template;
    without the rule it does. The torso is the same either way."""
    from pointwear.body import load_body
    from pointwear.body.joints import JOINT_INDEX
    from pointwear.recon.template import body_region_template
    import dataclasses
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, "tank-skirt", 3)
    with torch.no_grad():
        posed = obs.posed_body(body)[0].numpy()
    dom = body.weights_np.argmax(1)
    forearm = np.isin(dom, [JOINT_INDEX["left_elbow"], JOINT_INDEX["left_wrist"]])
    uv = posed[forearm, :2] / posed[forearm, 2:3] * np.diag(obs.K)[:2] + obs.K[:2, 2]
    px = np.clip(np.round(uv).astype(int), 0, np.array(obs.size)[::-1] - 1)
    mask = obs.mask.copy()
    import cv2
    paint = np.zeros(obs.size, np.uint8)
    paint[px[:, 1], px[:, 0]] = 1
    mask |= cv2.dilate(paint, np.ones((5, 5), np.uint8)) > 0
    obs = dataclasses.replace(obs, mask=mask)
    plain = body_region_template(obs, body, ReconOptions(limb_prefix=False))
    t = body_region_template(obs, body, ReconOptions())
    assert forearm[plain.body_vertex].sum() > 50
    assert forearm[t.body_vertex].sum() == 0
    torso = lambda tt: set(tt.body_vertex[np.isin(dom[tt.body_vertex], [JOINT_INDEX[n] for n in ("spine1", "spine2", "pelvis")])])  # noqa: E731
    assert torso(t) == torso(plain)


def test_the_far_arm_behind_a_loose_shirt_is_no_sleeve_past_the_wrist(tmp_path):
    """A T-shirt (the body's torso and upper arms as rendered) seen obliquely (50 degrees), its
    loose outline over the far arm hanging behind the torso: the few far-arm vertices the camera
    sees lie in the clothing mask and, voting for their cross-sections, made the hidden arm a
    sleeve over the hand (674 vertices: the forearm's 247 and the hand's 427). A hand is never
    garment (NEVER_GARMENT: the wrist's and the fingers' vertices); with ring_seen_share the far
    arm's mostly hidden sections follow the near arm, which adds nothing; the near forearm, which
    the photo shows bare, and the torso are as they were."""
    import dataclasses

    import cv2
    from scipy.spatial.transform import Rotation

    from pointwear.body import load_body
    from pointwear.body.joints import JOINT_INDEX
    from pointwear.recon.template import body_region_template
    from pointwear.render.rasterizer import rasterize
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, "tshirt-shorts", 3, size=512)
    turn = Rotation.from_euler("y", 50, degrees=True) * Rotation.from_rotvec(obs.global_orient)
    obs = dataclasses.replace(obs, global_orient=turn.as_rotvec().astype(np.float32))
    with torch.no_grad():
        posed = obs.posed_body(body)[0].numpy()
    dom = body.weights_np.argmax(1)
    ids = lambda names: [JOINT_INDEX[n] for n in names]  # noqa: E731
    shirt = np.isin(dom, ids(["spine1", "spine2", "spine3", "left_collar", "right_collar", "left_shoulder", "right_shoulder"]))
    face = rasterize(torch.as_tensor(posed), torch.as_tensor(body.faces.astype(np.int64)),
                     torch.as_tensor(obs.K, dtype=torch.float32), obs.size).face_id[0].numpy()
    mask = (face >= 0) & shirt[body.faces.astype(np.int64)[np.maximum(face, 0), 0]]
    arm = {s: np.isin(dom, ids([f"{s}_shoulder", f"{s}_elbow", f"{s}_wrist", f"{s}_hand"])) for s in ("left", "right")}
    far = max(arm, key=lambda s: posed[arm[s], 2].mean())
    near = "right" if far == "left" else "left"
    uv = posed[arm[far], :2] / posed[arm[far], 2:3] * np.diag(obs.K)[:2] + obs.K[:2, 2]
    px = np.clip(np.round(uv).astype(int), 0, np.array(obs.size)[::-1] - 1)
    paint = np.zeros(obs.size, np.uint8)
    paint[px[:, 1], px[:, 0]] = 1
    cloth = (cv2.dilate(paint, np.ones((5, 5), np.uint8)) > 0) & ~((face >= 0) & arm[near][body.faces.astype(np.int64)[np.maximum(face, 0), 0]])
    obs = dataclasses.replace(obs, mask=mask | cloth)
    forearm = lambda t, s: int(np.isin(dom[t.body_vertex], ids([f"{s}_elbow"])).sum())  # noqa: E731
    off = body_region_template(obs, body, ReconOptions(ring_seen_share=0.0))
    on = body_region_template(obs, body, ReconOptions())
    assert forearm(off, near) == forearm(on, near) < 50            # the photo shows it bare
    assert forearm(off, far) > 0.9 * (dom == JOINT_INDEX[f"{far}_elbow"]).sum()   # the hidden forearm: a sleeve
    assert forearm(on, far) <= forearm(off, far)                    # the near arm's word adds nothing
    hands = ids([f"{s}_{j}" for s in ("left", "right") for j in ("wrist", "hand")])
    for t in (off, on):                                             # nor past the wrist
        assert not np.isin(dom[t.body_vertex], hands).any()
    torso = lambda t: set(t.body_vertex[np.isin(dom[t.body_vertex], ids(["spine1", "spine2", "spine3"]))])  # noqa: E731
    assert torso(on) == torso(off)


@pytest.mark.parametrize("outfit, bridged", [("dress", True), ("tank-skirt", True), ("longsleeve-trousers", False)])
def test_a_skirt_seen_from_the_side_joins_the_legs(tmp_path, outfit, bridged):
    """Seen from the side no gap shows between the legs; the clothing in front of and behind them
    (bridge_flare) says skirt, trousers' ease does not."""
    from pointwear.body import load_body
    from pointwear.recon.template import body_region_template
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, outfit, 3, side=True)
    gap_only = body_region_template(obs, body, ReconOptions(bridge_flare=0.0))
    t = body_region_template(obs, body, ReconOptions())
    assert gap_only.midline is None                       # the frontal rule alone sees no skirt
    assert (t.midline is not None) == bridged


@pytest.mark.parametrize("outfit, seed", [("tshirt+skirt", 0), ("dress", 3)])
def test_a_skirt_ends_at_its_hem_not_where_the_legs_behind_it_end(tmp_path, outfit, seed):
    """Seen from above, a skirt's front hides the legs below its hem: the bridged template ends
    at the hem (bridge.hem_level). On synthetic photos (truth body and mask) the leg vertices it
    drops lie at or below the truth clothing's hem, and its lowest level stays within 5 cm of it."""
    from pointwear.body import load_body
    from pointwear.recon.template import body_region_template
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, outfit, seed)
    plain = body_region_template(obs, body, ReconOptions(skirt_hem=False))
    t = body_region_template(obs, body, ReconOptions())
    assert t.skirt_level is not None and np.isin(t.body_vertex, plain.body_vertex).all()
    with torch.no_grad():
        posed = obs.posed_body(body)[0].numpy()               # camera space, y down
    hem = float(np.load(tmp_path / f"{outfit}_{seed}" / "truth" / "clothing.npz")["points"][0][:, 1].max())
    gone = np.setdiff1d(plain.body_vertex, t.body_vertex)
    assert len(gone) >= 20
    assert posed[gone, 1].mean() > hem - 0.01 and posed[gone, 1].max() > hem
    lowest = posed[t.body_vertex[t.skirt_level == 0], 1].mean()
    assert abs(lowest - hem) < 0.05
    assert t.skirt_level.max() < plain.skirt_level.max()


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 30), st.integers(0, 40), st.integers(0, 40), st.floats(0.1, 1.0), st.integers(1, 3))
def test_the_hem_rises_with_the_mask_and_keeps_the_top(levels, hem_row, knee_row, ratio, min_levels):
    """bridge.hem_level on two vertical legs seen from above: a mask that ends higher never ends
    the skirt lower; the top `min_levels` always stay; a mask over everything cuts nothing; a bare
    band higher up (a misfitted knee) does not cut above a covered level below it."""
    from pointwear.recon.bridge import hem_level
    n = 12
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts, side, level = [], [], []
    for s in (1, -1):
        for lv in range(levels):
            pts.append(np.stack([0.1 * s + 0.06 * np.sin(a), np.full(n, 0.9 - 0.03 * lv), 3.0 + 0.06 * np.cos(a)], 1))
            side += [s] * n
            level += [lv] * n
    posed, side, level = np.concatenate(pts), np.array(side), np.array(level)
    skirt = np.arange(levels)
    K = np.array([[500.0, 0, 100], [0, 500.0, 10], [0, 0, 1]])
    H, W = 400, 200

    def cut(bottom: int, band: int | None = None) -> int:
        mask = np.zeros((H, W), bool)
        mask[:bottom, 20:180] = True
        if band is not None:
            mask[band:band + 4] = False
        return hem_level(posed, side, level, skirt, mask, K, ratio, min_levels)

    assert cut(H) == 0
    rows = sorted(20 + 4 * hem_row + d for d in (0, 7))        # level 0 at row 160, level k 5k px higher
    low, high = cut(rows[1]), cut(rows[0])
    assert low <= high <= levels - min_levels
    assert cut(H, 150 - 3 * knee_row) == 0                    # a band above level 0's row, level 0 covered


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.floats(2.0, 5.0), st.floats(0.0, 0.1), st.floats(0.05, 0.3))
def test_a_flared_skirt_starts_nearer_the_photos_width(left, right, depth, reach, cap):
    """refine.skirt_flare_ease: per skirt level, the mean of how far the clothing run on the
    level's image row reaches past the level's projected extent on either side, in metres at the
    level's depth, less the refinement's own reach, capped; nothing off the skirt, nothing where
    the level's centre is bare."""
    from pointwear.recon.refine import skirt_flare_ease
    t = _elliptic_tube(0.2, 0.1, levels=3)
    posed = t.rest + np.array([0.0, 0.0, depth], np.float32)
    level = t.skirt_level.copy()
    level[:8] = -1                                    # a few vertices off the skirt
    K = np.array([[400.0, 0, 150], [0, 400.0, 60], [0, 0, 1]])
    mask = np.zeros((120, 300), bool)
    want = np.zeros(len(level))
    for lv in range(3):
        p = posed[level == lv]
        u = p[:, 0] / p[:, 2] * K[0, 0] + K[0, 2]
        y = int(round(float((p[:, 1] / p[:, 2] * K[1, 1] + K[1, 2]).mean())))
        a, b = int(np.floor(u.min())) - left, int(np.ceil(u.max())) + right
        mask[y, a:b + 1] = True
        mask[y, b + 3:b + 9] = True                   # a hand beside the skirt, apart from it
        px = 0.5 * ((u.min() - a) + (b - u.max()))
        want[level == lv] = np.clip(px * float(p[:, 2].mean()) / K[0, 0] - reach, 0.0, cap)
    got = skirt_flare_ease(level, posed, mask, K, reach, cap)
    assert got.shape == level.shape and got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-5)
    assert (got[level < 0] == 0).all() and (got <= cap + 1e-7).all()
    mask[:, 150] = False                              # the centre bare: no level is measured
    assert (skirt_flare_ease(level, posed, mask, K, reach, cap) == 0).all()


@pytest.mark.parametrize("side", [True, False])
def test_a_dress_starts_nearer_its_outline(tmp_path, side):
    """A synthetic dress seen from the side flares in front of and behind the legs: with no reach
    left to the refinement (skirt_flare_reach 0) its bridged template starts at the photo's
    width, so the start already covers more of the clothing mask; seen from the front the start
    does not lose."""
    from dataclasses import replace

    from pointwear.body import load_body
    from pointwear.recon.refine import _Problem, crop_view
    from pointwear.recon.template import body_region_template
    from pointwear.render.rasterizer import rasterize
    body = load_body("default", device="cpu")
    obs = _frontal_obs(tmp_path, "dress", 3, side=side)
    o = ReconOptions()
    t = body_region_template(obs, body, o)
    assert t.skirt_level is not None
    view = crop_view(obs, o.render_height, torch.device("cpu"))
    vm = view.mask.numpy() > 0.5

    def start_iou(cap: float) -> float:
        prob = _Problem(obs, body, t, view, replace(o, skirt_flare_max=cap, skirt_flare_reach=0.0))
        with torch.no_grad():
            m = rasterize(prob.posed(prob.start), prob.terms.faces, view.K, view.size).mask[0].numpy()
        return (m & vm).sum() / (m | vm).sum()

    off, on = start_iou(0.0), start_iou(0.15)
    assert on > off + 0.02 if side else on >= off - 0.005
