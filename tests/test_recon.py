"""`pointwear reconstruct`: the real CLI on the real photo (few steps; and `--fast`, the learned one
pass, shared by its tests through a module fixture), its result folder read back by the result-mesh
reader and by the add-on's own readers; bad input named, exit 2, nothing written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

VENV_BIN = Path(sys.executable).parent   # the venv running the tests (its `pointwear` script)

PHOTO = Path("/work/shared/data/real/ryota.png")
ADDON = Path(__file__).resolve().parents[1] / "addon"


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "pointwear"), "reconstruct", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_reconstruct_the_real_photo(tmp_path):
    from pointwear.mesh.result_mesh import read_result_mesh
    out = tmp_path / "R"
    proc = run(str(PHOTO), "--out", str(out), "--steps", "20", "--texture-size", "256")
    assert proc.returncode == 0, proc.stderr[-3000:]
    mesh = read_result_mesh(out)
    assert mesh.texture.shape == (256, 256, 3) and mesh.uv.min() >= 0 and mesh.uv.max() <= 1
    assert len(mesh.vertices) > 1000 and np.allclose(mesh.weights.sum(1), 1, atol=1e-4)
    # Rest pose, Y up, metres: the garment spans most of the body's height.
    assert 0.8 < np.ptp(mesh.vertices[:, 1]) < 2.0
    # The texture is the photo's clothing: the hoodie is light grey, the trousers dark.
    assert 40 < mesh.texture.mean() < 220 and mesh.texture.std() > 20
    result = json.loads((out / "result.json").read_text())
    assert result["texture"] == "texture.png" and result["metrics"]["input_iou"] > 0.75
    assert result["metrics"]["texture"]["seen"] > 0 and result["metrics"]["texture"]["inpainted"] > 0
    # The add-on's readers (pure python, no bpy) accept the folder.
    sys.path.insert(0, str(ADDON.parent))
    from addon.io import results
    outfit = results.read_outfit(out / "outfit.npz")
    assert outfit.faces is not None and len(outfit.points) == result["points"]
    body = results.read_body(out / "body.npz")
    assert body.weights.shape[1] == 24
    posed = results.read_posed(out / "posed.npz")
    assert posed.points.shape == (1, result["points"], 3)
    assert not list(tmp_path.glob(".*partial*"))


def _expect_error(proc: subprocess.CompletedProcess, name: str, out: Path) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert name in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() and not list(out.parent.glob(".*partial*"))


def test_mask_of_another_size_is_named(tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((100, 80), np.uint8)).save(mask)
    out = tmp_path / "R"
    _expect_error(run(str(PHOTO), "--mask", str(mask), "--out", str(out)), str(mask), out)


@pytest.mark.parametrize("case", ["no-person", "two-people", "too-small"])
def test_bad_photos_are_named(tmp_path, case):
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    if case == "no-person":
        img = np.full((512, 512, 3), 128, np.uint8)
    elif case == "two-people":
        img = np.concatenate([rgb, rgb], 1)
    else:
        # The person ends up ~126 px tall: seen by the pose model, under the 128 px minimum.
        img = np.asarray(Image.fromarray(rgb).resize((145, 145), Image.LANCZOS))
        img = np.pad(img, ((0, 367), (0, 367), (0, 0)))
    photo = tmp_path / f"{case}.png"
    Image.fromarray(img).save(photo)
    out = tmp_path / "R"
    proc = run(str(photo), "--out", str(out), timeout=300)
    _expect_error(proc, str(photo), out)
    assert {"no-person": "no person", "two-people": "2 people", "too-small": "px tall"}[case] in proc.stderr


def test_mask_that_misses_the_person_is_named(tmp_path):
    mask = tmp_path / "corner.png"
    m = np.zeros((512, 512), np.uint8)
    m[:60, :60] = 255                      # clothing in the empty top-left corner
    Image.fromarray(m).save(mask)
    out = tmp_path / "R"
    proc = run(str(PHOTO), "--mask", str(mask), "--out", str(out), timeout=300)
    _expect_error(proc, str(mask), out)
    assert "lies on the person" in proc.stderr


@pytest.fixture(scope="module")
def fast_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast") / "R"
    proc = run(str(PHOTO), "--out", str(out), "--fast", "--texture-size", "128")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learned one pass" in proc.stdout
    return out


def test_fast_writes_the_same_outputs(fast_result):
    from pointwear.link.protocol import KIND_RECONSTRUCT, RESULT_FILES
    from pointwear.mesh.result_mesh import read_result_mesh
    from pointwear.recon.fast import FAST_SUBDIVIDE
    out = fast_result
    assert all((out / rel).exists() for rel in RESULT_FILES[KIND_RECONSTRUCT].values())
    assert (out / "garment.mtl").is_file() and (out / "garment.png").is_file()
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "learned one pass" and "refine" not in result["seconds"]
    assert result["seconds"]["learned"] > 0 and result["history"] == []
    mesh = read_result_mesh(out)
    # The learned template's 920 faces, split FAST_SUBDIVIDE times; its own UVs and texture (H x H/2).
    assert len(mesh.faces) == 920 * 4 ** FAST_SUBDIVIDE and mesh.texture.shape == (128, 64, 3)
    assert np.allclose(mesh.weights.sum(1), 1, atol=1e-4) and 0.8 < np.ptp(mesh.vertices[:, 1]) < 2.0
    assert 40 < mesh.texture.mean() < 220 and result["metrics"]["input_iou"] > 0.3
    from gltf_support import validate_gltf
    report = validate_gltf(out / "garment.glb")                # Khronos' glTF-Validator
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]


def test_fast_result_refined_on_the_prepared_photo(fast_result, tmp_path):
    """--fast --refine after perception: the learned mesh is where the refinement starts."""
    from pointwear.perception.prepare import Hooks
    from pointwear.recon.learned import load_model
    from pointwear.recon.options import ReconOptions
    from pointwear.recon.perceive import observation_from_subject
    from pointwear.recon.pipeline import build_result
    obs = observation_from_subject(fast_result / "subject")
    result = build_result(obs, tmp_path, options=ReconOptions(steps=4, texture_size=128), hooks=Hooks(),
                          net=load_model(), refine_fast=True, device="cpu")
    fast = json.loads((fast_result / "result.json").read_text())
    assert result["method"] == "learned one pass + refinement" and len(result["history"]) == 1 + 1
    assert result["points"] == fast["points"]                 # the same mesh, refined
    first, last = result["history"][0], result["history"][-1]
    assert last["total"] < first["total"]
    assert (tmp_path / "garment.glb").is_file()


def test_corrupt_model_file_is_named(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"PK\x03\x04 not a model" * 10)
    out = tmp_path / "R"
    proc = run(str(PHOTO), "--out", str(out), "--fast", "--model", str(model), timeout=300)
    _expect_error(proc, str(model), out)


@pytest.mark.parametrize("flags, name", [(["--refine"], "--refine"), (["--model", "m.pt"], "--model")])
def test_fast_only_flags_need_fast(tmp_path, flags, name):
    out = tmp_path / "R"
    proc = run(str(PHOTO), "--out", str(out), *flags, timeout=300)
    _expect_error(proc, name, out)
