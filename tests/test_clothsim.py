"""clothsim: a garment from sewing patterns really draped by Blender's cloth simulator and
rendered by Cycles lands in our subject format: `pointwear subject check` accepts it, masks
lie inside Cycles' own silhouette of body + cloth, the cloth stays outside the posed body, and
the truth points project into the masks. Plus property tests of the pattern geometry and the
seed parser."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy.ndimage import binary_dilation

from pointwear.data.subject import read_subject
from pointwear.perception.types import LABEL_LOWER
from pointwear.render.rasterizer import project
from pointwear.synth.clothsim.patterns import KINDS, MAX_SEW, BodyShape, GarmentSpec, boundary_vertices, build_pattern, signed_distance
from pointwear.synth.clothsim.plan import ClothsimOptions, outfit_kinds, sample_garments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_clothsim_set import main as make_set_main, parse_seeds  # noqa: E402

pytest.importorskip("bpy")


@pytest.fixture(scope="module")
def subject(tmp_path_factory, default_body):
    """One small skirt (4 cm cloth edges), 2 frames of a walk at 96 px, few solver steps."""
    out = tmp_path_factory.mktemp("clothsim")
    rc = make_set_main(["--out", str(out), "--kinds", "skirt", "--seeds", "1000", "--frames", "2", "--size", "96",
                        "--samples", "2", "--res", "0.04", "--settle", "6", "--substeps", "1", "--points", "1024",
                        "--motion", "walk"])
    assert rc == 0
    return read_subject(out / "skirt_1000")


def test_subject_check_accepts_it(subject, pointwear_exe):
    run = subprocess.run([pointwear_exe, "subject", "check", str(subject.root)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "2 frames, 96x96" in run.stdout and "truth yes" in run.stdout
    assert subject.meta["source"] == "clothsim" and subject.meta["split"] == "eval"
    assert subject.label_names == {LABEL_LOWER: "lower"}
    index = json.loads((subject.root.parent / "index.json").read_text())
    assert index["skirt_1000"]["frames"] == 2


def test_masks_nonempty_and_inside_the_cycles_silhouette(subject):
    alpha = np.load(subject.root / "truth" / "render_alpha.npz")["alpha"]
    garments = json.loads((subject.root / "garments.json").read_text())
    assert garments == {"1": "skirt"}
    for i in range(subject.num_frames):
        mask = subject.mask(i)
        assert mask.sum() > 150
        covered = binary_dilation(alpha[i] > 127, iterations=1)
        assert covered[mask].mean() > 0.98          # Cycles sees body or cloth wherever the mask is
        assert (alpha[i] > 127).mean() < 0.5         # and not everywhere (a real silhouette)
        ids = np.asarray(Image.open(subject.root / "garment_labels" / f"{i:06d}.png"))
        assert ((ids == 1) == mask).all()
        assert (subject.labels(i)[mask] == LABEL_LOWER).all() and (subject.labels(i)[~mask] == 0).all()


def test_cloth_stays_outside_the_posed_body(subject, default_body):
    truth = np.load(subject.root / "truth" / "clothing.npz")
    s = subject.smpl
    with torch.no_grad():
        body = default_body(s.betas, s.global_orient, s.body_pose, s.transl).vertices.numpy()
    for i in range(subject.num_frames):
        sd = signed_distance(truth["posed_mesh_vertices"][i].astype(np.float64), body[i].astype(np.float64),
                             default_body.faces)
        assert np.percentile(sd, 1) > -0.01                 # 99 % of the cloth within 1 cm of outside
        assert (sd < -0.005).mean() < 0.02
        assert np.abs(sd).min() < 0.03 and np.median(np.abs(sd)) < 0.2   # it hangs on the body


def test_truth_points_project_inside_the_masks(subject):
    truth = np.load(subject.root / "truth" / "clothing.npz")
    assert truth["points"].shape == (2, 1024, 3) and (truth["point_garment"] == 0).all()
    h, w = subject.image_size
    for i in range(subject.num_frames):
        uv, z = project(torch.as_tensor(truth["points"][i]), torch.as_tensor(subject.K[i]))
        assert (z > 0).all()
        cols, rows = np.round(uv.numpy()).astype(int).T
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        assert inside.all()
        mask = binary_dilation(subject.mask(i), iterations=1)
        assert mask[rows, cols].mean() > 0.9


@pytest.fixture(scope="module")
def body_shape(default_body):
    v, j = (t[0].numpy().astype(np.float64) for t in default_body.shaped(None))
    return BodyShape.from_rest(v, j, default_body.weights_np), default_body


@settings(max_examples=12, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(kind=st.sampled_from(KINDS), ease=st.floats(0.01, 0.05), length=st.floats(0, 1), flare=st.floats(0, 0.9),
       sleeve=st.floats(0, 1), neckline=st.floats(0.05, 0.13))
def test_patterns_start_outside_the_body_as_valid_meshes(body_shape, kind, ease, length, flare, sleeve, neckline):
    shape, body = body_shape
    p = build_pattern(shape, GarmentSpec(kind, ease=ease, length=length, flare=flare, sleeve=sleeve,
                                         neckline=neckline), res=0.03)
    assert np.isfinite(p.vertices).all() and np.isfinite(p.uv).all()
    assert p.faces.min() >= 0 and p.faces.max() < len(p.vertices)
    assert len(np.unique(p.faces)) == len(p.vertices)                   # no loose vertices
    assert (p.faces[:, 0] != p.faces[:, 1]).all() and (p.faces[:, 1] != p.faces[:, 2]).all()
    sd = signed_distance(p.vertices.astype(np.float64), shape.vertices, body.faces)
    assert (sd > -0.012).mean() > 0.995, f"{kind}: {np.sort(sd)[:5]}"
    assert len(boundary_vertices(p.faces)) < len(p.vertices) / 2       # a sewn garment, not loose strips
    if len(p.sew):                                                      # sewing pairs join nearby vertices
        assert np.linalg.norm(p.vertices[p.sew[:, 0]] - p.vertices[p.sew[:, 1]], axis=1).max() < MAX_SEW
    assert p.pinned.any()                                               # waistband or shoulder seams
    top = p.vertices[p.pinned, 1]
    assert (top > np.percentile(p.vertices[:, 1], 80)).all()


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 50)), min_size=1, max_size=5))
def test_seed_ranges_parse(ranges):
    text = ",".join(f"{a}-{a + n}" if n else str(a) for a, n in ranges)
    expected = [s for a, n in ranges for s in range(a, a + n + 1)]
    assert parse_seeds(text) == expected


@pytest.mark.parametrize("bad", ["", "x", "5-2", "-3", "0-20000"])
def test_bad_seeds_are_refused_with_the_option_named(bad):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="seed"):
        parse_seeds(bad)


def test_refuses_to_write_into_a_folder_that_is_not_a_subject(tmp_path):
    from pointwear.errors import SubjectError
    from pointwear.synth.clothsim.generate import make_subject
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SubjectError, match="not a subject"):
        make_subject(tmp_path, "skirt", 0, ClothsimOptions(frames=1, size=64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_outfits_and_layers():
    with pytest.raises(ValueError, match="unknown outfit 'cape'"):
        outfit_kinds("cape")
    specs = sample_garments("tshirt+jacket+trousers", np.random.default_rng(0))
    assert [s.kind for s in specs] == ["tshirt", "jacket", "trousers"]
    assert [s.layer for s in specs] == [1, 2, 0]
    assert specs[1].ease > specs[0].ease > specs[2].ease - 0.02
    with pytest.raises(ValueError, match="--size"):
        ClothsimOptions(size=8).check()
