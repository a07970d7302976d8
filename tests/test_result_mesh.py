"""The mesh block of a result folder: written, read back, checked by name; older parametric
results (points + faces) read as meshes."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pointwear.errors import InputError
from pointwear.fileio import save_npz
from pointwear.mesh.result_mesh import GarmentMesh, read_result_mesh, write_result_mesh


def _mesh(v: int, f: int, rng) -> GarmentMesh:
    return GarmentMesh(rng.normal(size=(v, 3)).astype(np.float32), rng.integers(0, v, (f, 3)).astype(np.int32),
                       rng.dirichlet(np.ones(24), v).astype(np.float32), np.zeros(v, np.int32),
                       rng.random((v, 2)).astype(np.float32), rng.integers(0, 255, (16, 8, 3)).astype(np.uint8))


@settings(max_examples=15, deadline=None)
@given(v=st.integers(3, 200), f=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_round_trip_keeps_every_array(tmp_path_factory, v, f, seed):
    out = tmp_path_factory.mktemp("r")
    save_npz(out / "outfit.npz", points=np.zeros((5, 3), np.float32))
    mesh = _mesh(v, f, np.random.default_rng(seed))
    write_result_mesh(out, mesh)
    back = read_result_mesh(out)
    for name in ("vertices", "faces", "weights", "garment", "uv", "texture"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mesh, name))
    assert json.loads((out / "result.json").read_text())["texture"] == "texture.png"
    assert "points" in np.load(out / "outfit.npz")      # the points stay beside the mesh


def test_parametric_result_reads_as_mesh_without_uv(tmp_path):
    pts = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    save_npz(tmp_path / "outfit.npz", points=pts, faces=np.array([[0, 1, 2], [3, 4, 5]], np.int32),
             weights=np.full((6, 24), 1 / 24, np.float32))
    mesh = read_result_mesh(tmp_path)
    assert mesh.uv is None and mesh.texture is None
    np.testing.assert_array_equal(mesh.vertices, pts)
    save_npz(tmp_path / "outfit.npz", points=pts, weights=np.full((6, 24), 1 / 24, np.float32))
    assert read_result_mesh(tmp_path) is None


def test_bad_faces_and_escaping_texture_are_named(tmp_path):
    mesh = _mesh(4, 2, np.random.default_rng(1))
    mesh.faces[0, 0] = 9
    with pytest.raises(InputError) as err:
        write_result_mesh(tmp_path, mesh)
    assert err.value.field == "mesh_faces" and not (tmp_path / "outfit.npz").exists()
    write_result_mesh(tmp_path, _mesh(4, 2, np.random.default_rng(1)))
    (tmp_path / "result.json").write_text(json.dumps({"texture": "../elsewhere.png"}))
    with pytest.raises(InputError) as err:
        read_result_mesh(tmp_path)
    assert err.value.field == "texture"
