"""Garment meshes and export: remeshed point-only fits stay outside the body, UVs and baked
textures, GLB files that pass Khronos' glTF-Validator and pose exactly as SMPL skinning does,
OBJ + MTL + PNG and PLY read back, bad input named, nothing half-written."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.spatial.transform import Rotation as R

from gltf_support import colour_of, neural_result, parametric_result, validate_gltf
from pointwear.data.motion import walking_motion, write_motion
from pointwear.errors import InputError
from pointwear.mesh.build import result_garment_mesh, write_garment_mesh
from pointwear.mesh.export import export_result
from pointwear.mesh.gltf import accessor_array, read_glb, top_influences
from pointwear.mesh.options import MeshOptions
from pointwear.mesh.remesh import closest_on_triangles, outside_fraction
from pointwear.mesh.result_mesh import read_result_mesh

FAST = MeshOptions(texture_size=256)


@pytest.fixture(scope="module")
def parametric(tmp_path_factory, default_body):
    return parametric_result(tmp_path_factory.mktemp("param"), default_body)


@pytest.fixture(scope="module")
def meshed(tmp_path_factory, default_body):
    """A parametric result with its mesh block stored (`pointwear mesh`): exports read it as it is."""
    result = parametric_result(tmp_path_factory.mktemp("meshed"), default_body)
    write_garment_mesh(result, FAST)
    return result


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    return write_motion(tmp_path_factory.mktemp("motion") / "walk.npz", walking_motion(12, fps=24.0), up="y")


# -- properties -----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), v=st.integers(1, 50), sparse=st.booleans())
def test_top_influences_sum_to_one_and_name_distinct_joints(seed, v, sparse):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(24) * (0.1 if sparse else 1.0), v)
    if sparse:
        w[w < 0.05] = 0
        w[np.arange(v), rng.integers(0, 24, v)] += 0.5
    idx, top = top_influences(w)
    assert top.dtype == np.float32 and idx.shape == (v, 4)
    assert np.all(np.abs(top.sum(1, dtype=np.float32) - 1) <= 2e-7) and (top >= 0).all()
    for j, t in zip(idx, top):
        used = j[t > 0]
        assert len(set(used.tolist())) == len(used) and (j[t == 0] == 0).all()
    order = np.sort(w, 1)[:, ::-1][:, 0]                     # the strongest joint keeps the most weight
    assert np.allclose(w[np.arange(v), idx[:, 0]], order)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_closest_point_on_a_triangle_is_the_nearest_of_a_dense_sampling(seed):
    rng = np.random.default_rng(seed)
    a, b, c = rng.normal(size=(3, 1, 3))
    p = rng.normal(size=(1, 3)) * 2
    q = closest_on_triangles(p, a, b, c)[0]
    s = np.linspace(0, 1, 80)
    u, v = np.meshgrid(s, s)
    keep = u + v <= 1
    grid = a + (b - a) * u[keep][:, None] + (c - a) * v[keep][:, None]
    d_grid = np.linalg.norm(grid - p, axis=1).min()
    assert np.linalg.norm(q - p[0]) <= d_grid + 1e-9
    assert np.linalg.norm(q - p[0]) >= d_grid - 0.03 * np.linalg.norm(np.stack([b - a, c - a])).max()


# -- meshes -----------------------------------------------------------------------------------------
def test_neural_fit_is_remeshed_outside_the_body_and_exports_untextured_with_a_warning(tmp_path, default_body):
    result = neural_result(tmp_path / "neural", default_body)
    warnings = []
    mesh, report = result_garment_mesh(result, FAST, warn=warnings.append)
    assert report["source"] == "remeshed on the body surface" and mesh.texture is None
    assert any("no appearance" in w for w in warnings)
    rest = default_body.shaped(None)[0][0].numpy()
    assert outside_fraction(mesh.vertices, mesh.faces, rest, default_body.faces) == 1.0
    assert len(mesh.faces) > 5000 and np.allclose(mesh.weights.sum(1), 1, atol=1e-5)
    assert mesh.uv.min() >= 0 and mesh.uv.max() <= 1
    # every face has a UV triangle of positive area (no degenerate charts)
    t = mesh.uv[mesh.faces]
    area = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert (np.abs(area) > 0).mean() > 0.99
    out = tmp_path / "neural.glb"
    warnings.clear()
    assert export_result(result, "glb", out, warn=warnings.append, options=FAST) == [out]
    report = validate_gltf(out)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]
    doc, _ = read_glb(out.read_bytes())
    assert "images" not in doc and any("untextured" in w for w in warnings)
    warnings.clear()                                  # PLY points without colours: grey, said so
    ply = export_result(result, "ply", tmp_path / "neural.ply", warn=warnings.append)[0]
    assert len(warnings) == 1 and "no appearance" in warnings[0] and "grey" in warnings[0]
    assert ply.read_bytes().split(b"end_header\n", 1)[1][12:15] == bytes([153, 153, 153])


def test_texture_from_point_colours_reproduces_them(parametric):
    mesh, report = result_garment_mesh(parametric, FAST)
    assert report["texture"] == "baked point colours" and mesh.texture.shape == (256, 256, 3)
    # the texel under each vertex's UV holds that vertex's colour
    T = mesh.texture.shape[0]
    px = np.clip((mesh.uv * [T, -T] + [0, T]).astype(int), 0, T - 1)
    got = mesh.texture[px[:, 1], px[:, 0]].astype(np.float64) / 255
    err = np.abs(got - colour_of(mesh.vertices)).mean()
    assert err < 0.03, err


def test_stored_mesh_block_is_used_as_it_is(meshed):
    stored = read_result_mesh(meshed)
    assert stored.uv is not None and stored.texture.shape == (256, 256, 3)
    assert json.loads((meshed / "result.json").read_text())["mesh"]["vertices"] == len(stored.vertices)
    again, report2 = result_garment_mesh(meshed, FAST)
    assert report2["source"] == "mesh block" and np.array_equal(again.vertices, stored.vertices)


@pytest.fixture(scope="module")
def appearance(tmp_path_factory, default_body):
    """A real, small appearance result: test_appearance_fit's tiny pipeline (4 frames at 96 px, a
    2+2-step parametric fit), 20 epochs of fit-appearance."""
    from test_appearance_fit import make_tiny_app
    return make_tiny_app(tmp_path_factory.mktemp("appearance"), default_body, epochs=20)[2]


def test_texture_baked_from_the_appearance_matches_its_neural_render(appearance, default_body):
    """The baked texture on the mesh against the neural render from the training views, over the
    pixels where the garment is in front and the neural mask is on: a PSNR floor (measured 30.6-37.0
    dB per view, 34.8 mean; the issue's target is 22), and well above a flat texture of its mean
    colour (25.4-27.1 dB: the garments are nearly plain, so the margin over it is the test)."""
    from pointwear.appearance.model import load_appearance
    from pointwear.drape.redrape import load_outfit
    from pointwear.mesh.bake import texture_psnr
    from pointwear.mesh.build import training_views
    options = MeshOptions(texture_size=256, view_size=256, orbit_views=6)
    mesh, report = result_garment_mesh(appearance, options)
    assert report["texture"] == "baked from the neural appearance" and report["training_views"] == 3
    assert report["bake"]["seen_tier0"] > 0.3 and report["bake"]["filled"] < 0.5, report["bake"]
    outfit = load_outfit(appearance)
    model = load_appearance(appearance / "appearance.pt", "cpu")
    betas = default_body.betas_tensor(outfit["betas"])
    views = training_views(appearance, outfit, mesh, default_body, betas, model, options)
    baked = texture_psnr(model, views, mesh.uv, mesh.faces, default_body.faces, mesh.texture, options)
    assert [r["psnr"] for r in baked] == [r["psnr"] for r in report["bake_psnr_views"]]
    flat_colour = np.round(mesh.texture.reshape(-1, 3).mean(0)).astype(np.uint8)
    flat = texture_psnr(model, views, mesh.uv, mesh.faces, default_body.faces,
                        np.broadcast_to(flat_colour, mesh.texture.shape).copy(), options)
    psnr, flat_psnr = np.array([r["psnr"] for r in baked]), np.array([r["psnr"] for r in flat])
    assert len(psnr) == 3 and min(r["pixels"] for r in baked) > 300
    assert psnr.min() >= 27.0 and psnr.mean() >= 30.0, psnr
    assert psnr.mean() - flat_psnr.mean() >= 4.0, (psnr, flat_psnr)


# -- glb ----------------------------------------------------------------------------------------------
def _skinned(doc, blob, frame):
    """Vertices of the GLB's mesh posed by its own animation at `frame`: glTF's skinning."""
    nodes = doc["nodes"]
    skin = doc["skins"][0]
    anim = doc["animations"][0]
    local = {}
    for j, node in enumerate(skin["joints"]):
        local[node] = [np.array(nodes[node].get("translation", [0, 0, 0]), np.float64), np.array([0, 0, 0, 1.0])]
    for ch in anim["channels"]:
        values = accessor_array(doc, blob, anim["samplers"][ch["sampler"]]["output"])[frame]
        local[ch["target"]["node"]][0 if ch["target"]["path"] == "translation" else 1] = values
    parent = {c: i for i, n in enumerate(nodes) for c in n.get("children", [])}
    world = {}
    for node in skin["joints"]:                       # parents come first
        m = np.eye(4)
        m[:3, :3] = R.from_quat(local[node][1]).as_matrix()
        m[:3, 3] = local[node][0]
        world[node] = world[parent[node]] @ m if node in parent else m
    ibm = accessor_array(doc, blob, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
    mats = np.stack([world[n] @ ibm[i] for i, n in enumerate(skin["joints"])])
    prim = doc["meshes"][0]["primitives"][0]["attributes"]
    v = accessor_array(doc, blob, prim["POSITION"]).astype(np.float64)
    j = accessor_array(doc, blob, prim["JOINTS_0"]).astype(int)
    w = accessor_array(doc, blob, prim["WEIGHTS_0"]).astype(np.float64)
    per = np.einsum("vk,vkij->vij", w, mats[j])
    return np.einsum("vij,vj->vi", per[:, :3, :3], v) + per[:, :3, 3], v, j, w


def test_glb_passes_the_validator_and_poses_like_smpl_skinning(meshed, walk, tmp_path, default_body):
    out = tmp_path / "sub" / "walk.glb"
    assert export_result(meshed, "glb", out, motion=walk) == [out]          # up "auto": the file says y
    report = validate_gltf(out)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]
    assert report["info"]["animationCount"] == 1 and report["info"]["hasSkins"] and report["info"]["hasTextures"]
    doc, blob = read_glb(out.read_bytes())
    assert doc["images"][0]["mimeType"] == "image/png" and len(doc["meshes"][0]["primitives"]) == 2
    assert [doc["nodes"][n]["name"] for n in doc["skins"][0]["joints"]][:3] == ["pelvis", "left_hip", "right_hip"]
    mesh = read_result_mesh(meshed)
    from pointwear.data.motion import read_motion
    m = read_motion(walk, up="y")
    for frame in (0, 7):
        posed, v, j, w = _skinned(doc, blob, frame)
        np.testing.assert_allclose(v, mesh.vertices, atol=1e-6)
        dense = np.zeros((len(v), 24))
        np.add.at(dense, (np.arange(len(v))[:, None], j), w)      # unused influences name joint 0
        t = lambda a: torch.as_tensor(a[frame:frame + 1], dtype=torch.float32)  # noqa: E731
        want = default_body.pose_points(torch.as_tensor(v, dtype=torch.float32)[None],
                                        torch.as_tensor(dense, dtype=torch.float32), None,
                                        t(m.global_orient), t(m.body_pose), t(m.transl))[0].numpy()
        assert np.abs(posed - want).max() < 1e-4


def test_motion_up_axis_comes_from_the_files_hint_else_amass_z(walk, tmp_path):
    from pointwear.data.motion import motion_up
    assert motion_up(walk) == "y" and motion_up(walk, "z") == "z"
    with np.load(walk) as z:
        arrays = {k: z[k] for k in z.files if k != "up"}
    np.savez(tmp_path / "amass.npz", **arrays)
    assert motion_up(tmp_path / "amass.npz") == "z"
    np.savez(tmp_path / "odd.npz", **arrays, up=np.array("x"))
    with pytest.raises(InputError) as err:
        motion_up(tmp_path / "odd.npz")
    assert err.value.field == "up" and err.value.file == str(tmp_path / "odd.npz")
    with pytest.raises(InputError, match="'auto', 'y' or 'z'"):
        motion_up(walk, "x")


def test_cli_export_obj_and_ply_read_back(meshed, tmp_path, pointwear_exe):
    run = subprocess.run([pointwear_exe, "export", str(meshed), "--format", "obj", "--out", str(tmp_path / "g.obj")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    obj = (tmp_path / "g.obj").read_text().splitlines()
    mesh = read_result_mesh(meshed)
    assert sum(line.startswith("v ") for line in obj) == len(mesh.vertices)
    assert sum(line.startswith("vt ") for line in obj) == len(mesh.vertices)
    faces = [line for line in obj if line.startswith("f ")]
    names = json.loads(str(np.load(meshed / "outfit.npz")["garment_names"]))
    assert len(faces) == len(mesh.faces) and [line for line in obj if line.startswith("g ")] == [f"g {n}" for n in names]
    corners = np.array([[int(c.split("/")[0]) for c in line.split()[1:]] for line in faces])
    assert corners.min() == 1 and corners.max() == len(mesh.vertices)
    assert "map_Kd g.png" in (tmp_path / "g.mtl").read_text() and (tmp_path / "g.png").stat().st_size > 1000

    assert export_result(meshed, "ply", tmp_path / "p.ply") == [tmp_path / "p.ply"]
    raw = (tmp_path / "p.ply").read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    n = int([line for line in head.decode().splitlines() if line.startswith("element vertex")][0].split()[-1])
    rows = np.frombuffer(body, [("p", "<f4", 3), ("c", "u1", 3)], n)
    data = np.load(meshed / "outfit.npz")
    np.testing.assert_array_equal(rows["p"], data["points"])
    assert np.abs(rows["c"] / 255 - data["colors"]).max() <= 0.5 / 255 + 1e-6


def test_addon_places_the_export_jobs_files_under_the_chosen_name(meshed, tmp_path):
    """addon/io/export_files.py (pure): the job's garment.obj/.mtl/.png become shirt.obj/.mtl/.png
    naming each other; an existing target is replaced whole; a missing job file is named."""
    import sys
    from pointwear.link import protocol as P
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from addon.io import export_files
    job = tmp_path / "job"
    names = P.RESULT_FILES[P.KIND_EXPORT]
    export_result(meshed, "obj", job / names["obj"])
    export_result(meshed, "glb", job / names["glb"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "shirt.obj").write_text("old")
    written = export_files.place_export(job, "obj", out / "shirt")
    assert [Path(w).name for w in written] == ["shirt.obj", "shirt.mtl", "shirt.png"]
    obj, src = (out / "shirt.obj").read_text().splitlines(), (job / names["obj"]).read_text().splitlines()
    assert obj[1] == "mtllib shirt.mtl" and src[1] == "mtllib garment.mtl" and obj[2:] == src[2:]
    assert "map_Kd shirt.png" in (out / "shirt.mtl").read_text().splitlines()
    assert (out / "shirt.png").read_bytes() == (job / names["texture"]).read_bytes()
    assert export_files.place_export(job, "glb", out / "walk.GLB") == [str(out / "walk.GLB")]
    assert (out / "walk.GLB").read_bytes() == (job / names["glb"]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["shirt.mtl", "shirt.obj", "shirt.png", "walk.GLB"]
    with pytest.raises(export_files.ExportFileError, match="garment.ply"):
        export_files.place_export(job, "ply", out / "points")
    assert not (out / "points.ply").exists()


def test_bad_input_is_named_and_nothing_is_half_written(parametric, tmp_path):
    with pytest.raises(InputError, match="format"):
        export_result(parametric, "fbx", tmp_path / "x.fbx")
    with pytest.raises(InputError, match="glb files only"):
        export_result(parametric, "obj", tmp_path / "x.obj", motion=tmp_path / "m.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    out = tmp_path / "x.glb"
    with pytest.raises(InputError) as err:
        export_result(parametric, "glb", out, motion=bad)
    assert str(bad) in str(err.value)
    with pytest.raises(InputError, match="not a result folder"):
        export_result(tmp_path, "glb", out)
    assert not out.exists() and not list(tmp_path.glob(".x*"))



def test_an_outfit_whose_weights_are_not_one_row_per_point_is_refused_by_field(tmp_path, default_body):
    from pointwear.fileio import load_npz, save_npz
    result = neural_result(tmp_path / "bad", default_body)
    outfit = load_npz(result / "outfit.npz")
    save_npz(result / "outfit.npz", **(outfit | {"weights": outfit["weights"][None]}))  # (1, P, 24): a batch
    with pytest.raises(InputError) as err:
        result_garment_mesh(result, FAST)
    assert err.value.field == "weights" and "outfit.npz" in str(err.value.file)
