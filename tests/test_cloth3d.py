"""The CLOTH3D reader, on a tiny CLOTH3D-style folder built here: info.mat written with
scipy.io.savemat, a quad .obj, and a float16 .pc16 point cache written byte for byte the way
CLOTH3D's own tools write it. Unposing must recover the rest-pose garment; bad parts fail with an
InputError naming the file; the samples feed scripts/train_drape.py."""
from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from pointwear.body.regions import region_mask
from pointwear.data.cloth3d import (find_sequences, posed_samples, read_obj, read_pc16, read_sequence,
                                    rest_pose_samples)
from pointwear.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


FRAMES = 3


def _write_pc16(path: Path, verts: np.ndarray) -> None:
    """CLOTH3D's writer: '<12siiffi' header (signature, version 1, points, start frame 0,
    sample rate 1, samples), then the frames as float16."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<12siiffi", b"POINTCACHE2\0", 1, verts.shape[1], 0, 1, verts.shape[0]))
        fh.write(verts.astype(np.float16).tobytes())


def _write_obj(path: Path, verts: np.ndarray, faces: np.ndarray) -> None:
    """An .obj with a UV per vertex and 'f v/vt ...' faces (1-based)."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"vt {u:.4f} {v:.4f}" for u, v in (verts[:, :2] - verts[:, :2].min(0))]
    lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in face) for face in faces]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def sequence_root(tmp_path_factory, default_body):
    """train/<seq>/ with a 'Tshirt' made of a shell 1 cm outside the body's torso, posed per
    frame by the body's own skinning, stored root-relative as CLOTH3D does."""
    root = tmp_path_factory.mktemp("cloth3d")
    folder = root / "train" / "00001_s0"
    folder.mkdir(parents=True)
    betas = np.zeros(10, np.float32)
    betas[:2] = [0.8, -0.5]
    poses = np.zeros((FRAMES, 72), np.float32)
    poses[1, 16 * 3 + 2] = -0.9       # left shoulder lowered
    poses[2, 1 * 3 + 0] = -0.4        # left hip forward
    poses[2, 3 * 3 + 1] = 0.3         # spine twist
    trans = np.array([[0.1, 0.9, 0.0], [0.12, 0.9, 0.01], [0.15, 0.91, 0.0]], np.float32)

    with torch.no_grad():
        verts, joints = default_body.shaped(betas)
    verts = verts[0].numpy()
    normals = _normals(verts, default_body.faces)
    torso = region_mask(default_body.weights_np, "torso")
    faces = default_body.faces[torso[default_body.faces].all(1)]
    used = np.unique(faces)
    remap = np.full(len(verts), -1)
    remap[used] = np.arange(len(used))
    faces = remap[faces]
    rest = verts[used] + 0.01 * normals[used]              # a shell 1 cm outside the torso
    weights = default_body.weights_np[used]
    with torch.no_grad():
        posed = default_body.pose_points(torch.as_tensor(rest[None], dtype=torch.float32),
                                         torch.as_tensor(weights), torch.as_tensor(betas[None]),
                                         torch.as_tensor(poses[:, :3]), torch.as_tensor(poses[:, 3:]))
    root_joint = joints[0, 0].numpy()
    _write_pc16(folder / "Tshirt.pc16", posed.numpy() - root_joint)
    _write_obj(folder / "Tshirt.obj", rest - root_joint, faces)
    scipy.io.savemat(folder / "info.mat", {
        "poses": poses.T, "shape": betas, "gender": 1, "trans": trans.T, "zrot": 0.7,
        "outfit": {"Tshirt": {"fabric": "cotton", "texture": {"type": "color", "data": np.array([0.2, 0.3, 0.4])}}},
        "camLoc": np.array([0.0, -8.0, 1.0])})
    return root, folder, rest, posed.numpy() - root_joint


def _normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True)


def test_reads_the_layout(sequence_root):
    root, folder, rest, posed = sequence_root
    assert find_sequences(root) == [folder]
    assert find_sequences(root / "train") == [folder]
    assert find_sequences(folder) == [folder]
    seq = read_sequence(folder)
    assert seq.name == "00001_s0" and seq.gender == "male" and seq.num_frames == FRAMES
    assert seq.betas.shape == (10,) and np.isclose(seq.betas[0], 0.8)
    assert seq.poses.shape == (FRAMES, 72) and np.isclose(seq.poses[1, 50], -0.9)
    assert seq.trans.shape == (FRAMES, 3) and np.isclose(seq.zrot, 0.7)
    assert seq.kind == "Tshirt" and seq.info["outfit"]["Tshirt"]["fabric"] == "cotton"
    (g,) = seq.garments
    assert g.rest_vertices.shape == rest.shape and g.faces.shape[1] == 3
    frames = g.frames()
    assert frames.shape == (FRAMES, len(rest), 3)
    assert np.abs(frames - posed).max() < 2e-3                     # float16 precision
    assert np.allclose(g.frames([2]), frames[2:3])


def test_obj_polygons_become_triangles(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("# two quads\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 2 0 0\nv 2 1 0\n"
                    "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\nf 2 5 6 3\n")
    verts, faces = read_obj(path)
    assert verts.shape == (6, 3)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [1, 4, 5], [1, 5, 2]]


def test_posed_samples_carry_smpl_parameters(sequence_root):
    _, folder, _, posed = sequence_root
    samples = posed_samples(folder, frames=FRAMES, count=500, rng=np.random.default_rng(0))
    assert [s.frame for s in samples] == [0, 1, 2]
    s = samples[1]
    assert s.points.shape == (500, 3) and s.global_orient.shape == (3,) and s.body_pose.shape == (69,)
    assert np.isclose(s.body_pose[47], -0.9) and s.gender == "male" and s.kind == "Tshirt"
    lo, hi = posed[1].min(0) - 0.01, posed[1].max(0) + 0.01
    assert ((s.points >= lo) & (s.points <= hi)).all()


def test_unposing_recovers_the_rest_garment(sequence_root, default_body):
    _, folder, rest, _ = sequence_root
    from scipy.spatial import cKDTree

    from pointwear.synth.generate import sample_surface
    seq = read_sequence(folder)
    faces = seq.garments[0].faces
    face, bary = sample_surface(rest, faces, 200_000, np.random.default_rng(5))
    surface = cKDTree(np.einsum("pk,pkc->pc", bary, rest[faces[face]]))   # the rest shell, densely
    with torch.no_grad():
        root_joint = default_body.shaped(seq.betas)[1][0, 0].numpy()
    raw = posed_samples(seq, frames=FRAMES, count=800, rng=np.random.default_rng(1))
    assert np.median(surface.query(raw[2].points + root_joint)[0]) > 0.008   # posing moved it
    samples = rest_pose_samples(seq, default_body, count=800, frames=FRAMES, rng=np.random.default_rng(1))
    assert len(samples) == FRAMES
    for s in samples:
        assert s.points.shape == (800, 3) and s.weights.shape == (800, 24)
        assert np.allclose(s.weights.sum(1), 1, atol=1e-5)
        dist, _ = surface.query(s.points)
        assert np.median(dist) < 0.003, (s.frame, np.median(dist))   # back on the rest shell


def test_samples_feed_the_trainer(sequence_root, default_body, tmp_path):
    spec = importlib.util.spec_from_file_location("train_drape", ROOT / "scripts" / "train_drape.py")
    T = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_drape", T)
    spec.loader.exec_module(T)
    root, *_ = sequence_root
    data, groups = T.cloth3d_outfits(root, tmp_path, default_body, count=256, frames=2, limit=None)
    assert len(data) == 2 and groups == [2] and data.kinds == ("Tshirt",)
    assert data.points.shape == (2, 256, 3)
    again, _ = T.cloth3d_outfits(root, tmp_path, default_body, count=256, frames=2, limit=None)   # cached
    assert np.array_equal(again.points, data.points)
    from pointwear.drape.neural import NeuralDrape, NeuralDrapeConfig
    model = NeuralDrape(default_body, NeuralDrapeConfig(points=512, width=16, layers=1))
    result = T.train(model, data, T.TrainOptions(steps=3, minutes=0, batch=2, body_subset=256,
                                                 truth_subset=128, log_every=1, checkpoint_minutes=1e9),
                     T.LossWeights(), groups=groups)
    assert result["steps"] == 3 and len(model.train_codes) == 1     # one code per sequence


# -- bad input ---------------------------------------------------------------------------------------
def _copy(folder: Path, dest: Path) -> Path:
    import shutil
    target = dest / folder.name
    shutil.copytree(folder, target)
    return target


def test_missing_parts_name_the_file(sequence_root, tmp_path):
    _, folder, _, _ = sequence_root
    seq = _copy(folder, tmp_path)
    (seq / "Tshirt.pc16").unlink()
    with pytest.raises(InputError, match="Tshirt.pc16"):
        read_sequence(seq)
    seq = _copy(folder, tmp_path / "b")
    (seq / "Tshirt.obj").unlink()
    with pytest.raises(InputError, match="Tshirt.obj"):
        read_sequence(seq)
    seq = _copy(folder, tmp_path / "c")
    (seq / "info.mat").unlink()
    with pytest.raises(InputError, match="info.mat"):
        read_sequence(seq)
    with pytest.raises(InputError, match="no CLOTH3D sequences"):
        find_sequences(tmp_path / "c")


def test_malformed_parts_name_the_file(sequence_root, tmp_path):
    _, folder, rest, posed = sequence_root
    seq = _copy(folder, tmp_path / "trunc")
    data = (seq / "Tshirt.pc16").read_bytes()
    (seq / "Tshirt.pc16").write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"Tshirt.pc16.*truncated"):
        read_sequence(seq)
    with pytest.raises(InputError, match="truncated"):
        read_pc16(seq / "Tshirt.pc16")

    seq = _copy(folder, tmp_path / "sign")
    (seq / "Tshirt.pc16").write_bytes(b"NOTACACHE\0\0\0" + data[12:])
    with pytest.raises(InputError, match=r"Tshirt.pc16.*PC2"):
        read_sequence(seq)

    seq = _copy(folder, tmp_path / "count")
    _write_pc16(seq / "Tshirt.pc16", posed[:, :-5])
    with pytest.raises(InputError, match=r"Tshirt.pc16.*vertices"):
        read_sequence(seq)

    seq = _copy(folder, tmp_path / "frames")
    _write_pc16(seq / "Tshirt.pc16", posed[:1])
    with pytest.raises(InputError, match=r"Tshirt.pc16.*frames"):
        read_sequence(seq)

    seq = _copy(folder, tmp_path / "obj")
    with open(seq / "Tshirt.obj", "a") as fh:
        fh.write(f"f 1 2 {len(rest) + 50}\n")
    with pytest.raises(InputError, match=r"Tshirt.obj.*out of range"):
        read_sequence(seq)
    (seq / "Tshirt.obj").write_text("v 1 2\n")
    with pytest.raises(InputError, match="Tshirt.obj"):
        read_obj(seq / "Tshirt.obj")

    seq = _copy(folder, tmp_path / "info")
    info = scipy.io.loadmat(seq / "info.mat")
    scipy.io.savemat(seq / "info.mat", {k: v for k, v in info.items() if not k.startswith("__") and k != "poses"})
    with pytest.raises(InputError, match=r"info.mat: poses"):
        read_sequence(seq)
    scipy.io.savemat(seq / "info.mat", {**{k: v for k, v in info.items() if not k.startswith("__")},
                                        "poses": np.zeros((70, FRAMES))})
    with pytest.raises(InputError, match=r"info.mat: poses.*72"):
        read_sequence(seq)
    (seq / "info.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(InputError, match="info.mat"):
        read_sequence(seq)
