"""The appearance model's samples beyond the outfit's points: descriptors at the mesh edges'
midpoints and camera-space normals fed to the network (appearance/model.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from hypothesis import given, settings, strategies as st

from pointwear.appearance.model import (AppearanceConfig, AppearanceModel, load_appearance, mesh_edges,
                                        with_midpoints)
from pointwear.render.soft import vertex_normals
from pointwear.errors import InputError


def sphere() -> tuple[torch.Tensor, torch.Tensor]:
    s = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.int64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 11)] * 3).filter(lambda t: len(set(t)) == 3), min_size=1, max_size=30))
def test_mesh_edges_are_each_faces_sides_once(faces):
    f = np.array(faces)
    e = mesh_edges(f)
    assert e.dtype == np.int64 and e.shape[1] == 2 and (e[:, 0] < e[:, 1]).all()
    assert len({tuple(x) for x in e}) == len(e)                          # each once
    sides = {tuple(sorted((int(a), int(b)))) for t in f for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    assert {tuple(x) for x in e} == sides


def test_closed_mesh_has_three_halves_of_its_faces_as_edges():
    _, faces = sphere()
    assert len(mesh_edges(faces.numpy())) == 3 * len(faces) // 2


def test_sphere_normals_point_outward_and_are_unit():
    v, f = sphere()
    n = vertex_normals(v[None], f)[0]
    assert torch.allclose(n.norm(dim=1), torch.ones(len(v)), atol=1e-5)
    radial = v / v.norm(dim=1, keepdim=True)
    assert (n * radial).sum(1).min() > 0.99


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=3, max_size=3), st.lists(st.floats(-1, 1), min_size=3, max_size=3))
def test_normals_turn_with_the_mesh_and_ignore_its_place(axis_angle, shift):
    v, f = sphere()
    v = v * torch.tensor([1.0, 0.6, 1.4])                               # not a sphere: normals not radial
    R = torch.tensor(trimesh.transformations.rotation_matrix(float(np.linalg.norm(axis_angle)),
                                                             np.asarray(axis_angle) + 1e-9)[:3, :3], dtype=torch.float32)
    moved = v @ R.T + torch.tensor(shift)
    a, b = vertex_normals(v[None], f)[0], vertex_normals(moved[None], f)[0]
    assert torch.allclose(a @ R.T, b, atol=1e-4)


def test_normals_of_a_point_in_no_face_are_zero():
    v, f = sphere()
    v = torch.cat([v, torch.zeros(1, 3)])
    n = vertex_normals(v[None], f)[0]
    assert torch.equal(n[-1], torch.zeros(3)) and torch.isfinite(n).all()


def test_midpoints_follow_their_ends_and_are_seen_when_both_are():
    points = torch.tensor([[[0.0, 0, 1], [1, 0, 1], [0, 1, 1]]])
    visible = torch.tensor([[True, True, False]])
    edges = torch.tensor(mesh_edges(np.array([[0, 1, 2]])))                  # (0,1) (0,2) (1,2)
    p, vis = with_midpoints(points, visible, edges)
    assert p.shape == (1, 6, 3) and torch.equal(p[0, :3], points[0])
    assert torch.allclose(p[0, 3], torch.tensor([0.5, 0, 1])) and torch.allclose(p[0, 5], torch.tensor([0.5, 0.5, 1]))
    assert vis[0].tolist() == [True, True, False, True, False, False]


def small_model(normals: bool, edges: bool) -> AppearanceModel:
    v, f = sphere()
    config = AppearanceConfig(num_points=len(v), descriptor_dim=4, widths=(8, 16), size=(48, 48), crop=(48, 48),
                              edges=len(mesh_edges(f.numpy())) if edges else 0, normals=normals)
    return AppearanceModel(config, seed=0, faces=f)


def test_midpoints_and_normals_round_trip_and_render_the_same(tmp_path):
    model = small_model(normals=True, edges=True)
    assert model.descriptors.num_points == model.config.num_points + model.config.edges
    assert model.net.in_channels == 4 + 3 + 1
    v, _ = sphere()
    pts = (v + torch.tensor([0.0, 0.0, 1.5]))[None]
    K = torch.tensor([[60.0, 0, 24.0], [0, 60.0, 24.0], [0, 0, 1]])
    vis = pts[..., 2] < 1.5                                                    # the front half
    model.eval()
    rgb, mask = model.render(pts, vis, K, (48, 48))
    model.save(tmp_path / "appearance.pt")
    loaded = load_appearance(tmp_path)
    assert loaded.config.normals and loaded.config.edges == model.config.edges
    assert torch.equal(loaded.faces, model.faces) and torch.equal(loaded.edges, model.edges)
    rgb2, mask2 = loaded.eval().render(pts, vis, K, (48, 48))
    assert torch.allclose(rgb, rgb2) and torch.allclose(mask, mask2)
    # The normals reach the network: a mirrored mesh (normals flipped) renders differently.
    x, _ = model.splat_input(pts, vis, K[None], (48, 48))
    assert x.shape[1] == 4 + 3 + 1
    covered = x[0, -1] > 0.5
    nz = x[0, 4 + 2][covered]                                # the normals' z: towards the camera (negative)
    assert nz.mean() < -0.5


def test_a_file_without_faces_is_an_older_plain_model(tmp_path):
    model = small_model(normals=False, edges=False)
    payload = model.payload()
    assert payload["faces"].shape == (0, 3)
    del payload["faces"]
    config = payload["config"]
    del config["edges"], config["normals"]                                      # as older files
    torch.save(payload, tmp_path / "appearance.pt")
    loaded = load_appearance(tmp_path)
    assert loaded.config.edges == 0 and not loaded.config.normals and loaded.net.in_channels == 5


@pytest.mark.parametrize("break_it", ["drop", "out_of_range", "other_mesh"])
def test_faces_that_do_not_fit_the_config_name_the_field(tmp_path, break_it):
    payload = small_model(normals=True, edges=True).payload()
    if break_it == "drop":
        del payload["faces"]
    elif break_it == "out_of_range":
        payload["faces"] = payload["faces"].clone()
        payload["faces"][0, 0] = payload["config"]["num_points"]
    else:
        payload["faces"] = payload["faces"][:-4]                               # fewer edges than the config's
    torch.save(payload, tmp_path / "appearance.pt")
    with pytest.raises(InputError) as err:
        load_appearance(tmp_path)
    assert err.value.field == "faces" and "appearance.pt" in str(err.value)
