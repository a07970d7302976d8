"""scripts/pointwear_batch.py as a user runs it: `python scripts/pointwear_batch.py ...` with the
bpy module, in its own process (its own Blender user folders), the backend a child of it. The
saved .blend is opened again in another process and its contents checked; renders are real
Cycles renders of the scene."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from blender_support import REPO, backend_python, blender_env, run_backend, run_python

BATCH = REPO / "scripts" / "pointwear_batch.py"
PHOTO = Path("/work/shared/data/real/ryota.png")


def run_batch(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    env = blender_env(tmp_path / "blender-user", home=tmp_path / "home")
    env["POINTWEAR_BACKEND_PYTHON"] = str(backend_python())
    proc = subprocess.run([sys.executable, str(BATCH), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, "batch failed ({}):\n--- stdout\n{}\n--- stderr\n{}".format(
        proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


def read_blend(tmp_path: Path, blend: Path) -> dict:
    """Open the .blend in a fresh bpy and summarise what Pointwear put in it (as JSON)."""
    code = f"""
        import json, bpy
        bpy.ops.wm.open_mainfile(filepath={str(blend)!r})
        scene = bpy.context.scene
        kinds = {{}}
        for obj in bpy.data.objects:
            kind = obj.get("pointwear_kind")
            if kind:
                kinds.setdefault(kind, []).append(obj.name)
        arm = [o for o in bpy.data.objects if o.get("pointwear_kind") == "armature"][0]
        print("SUMMARY" + json.dumps({{
            "kinds": kinds, "frame_start": scene.frame_start, "frame_end": scene.frame_end,
            "fps": scene.render.fps / scene.render.fps_base, "bones": len(arm.data.bones),
            "action": arm.animation_data.action.name if arm.animation_data and arm.animation_data.action else None,
            "result": arm.get("pointwear_result"), "camera": scene.camera.name if scene.camera else None,
            "images": {{im.name: bpy.path.abspath(im.filepath) for im in bpy.data.images if im.filepath}},
        }}))
    """
    proc = run_python(code, env=blender_env(tmp_path / "reader-user", home=tmp_path / "home"))
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SUMMARY")][-1]
    return json.loads(line[len("SUMMARY"):])


def non_background_share(png: Path) -> float:
    """Share of pixels that differ from the corner colour (the world background)."""
    import numpy as np
    import bpy  # noqa: F401  (the image reader of this process: bpy's own, no imageio in lane 2)
    img = bpy.data.images.load(str(png), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    px = px.reshape(h, w, 4)[..., :3]
    return float((np.abs(px - px[0, 0]).sum(-1) > 0.05).mean())


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("motion") / "walk.npz"
    run_backend("motion", "export", "walk", "--frames", 6, "--out", path)
    return path


def test_batch_fits_a_subject_imports_saves_and_renders(tmp_path, fit_result):
    subject = fit_result.parent / "subject"
    blend, png = tmp_path / "fit.blend", tmp_path / "frame.png"
    proc = run_batch(tmp_path, "--subject", subject, "--out", blend, "--render", png, "--frame", 1,
                     "--work", tmp_path / "work", "--copy-result", tmp_path / "result",
                     "--template", "tshirt-shorts", "--codes", 1, "--coarse-steps", 2, "--fine-steps", 2,
                     "--samples", 4)
    assert "fit_outfit" in proc.stdout and ": done" in proc.stdout
    summary = read_blend(tmp_path, blend)
    assert set(summary["kinds"]) >= {"armature", "body", "clothing_points", "clothing_mesh", "camera"}
    assert summary["bones"] == 24 and summary["action"]
    assert (summary["frame_start"], summary["frame_end"]) == (0, 2)        # the subject's 3 frames
    assert Path(summary["result"]) == (tmp_path / "result").resolve()
    assert (tmp_path / "result" / "outfit.npz").is_file()
    assert 0.02 < non_background_share(png) < 0.9                          # a person in view


def test_batch_imports_a_result_keys_a_motion_and_renders_an_animation(tmp_path, fit_result, walk):
    blend, frames = tmp_path / "walk.blend", tmp_path / "frames"
    run_batch(tmp_path, "--result", fit_result, "--motion", walk, "--up", "Y", "--out", blend,
              "--animation", frames, "--samples", 2, "--scale", 50)
    summary = read_blend(tmp_path, blend)
    assert (summary["frame_start"], summary["frame_end"]) == (0, 5) and summary["fps"] == 24
    rendered = sorted(frames.glob("*.png"))
    assert len(rendered) == 6
    assert non_background_share(rendered[-1]) > 0.005


def test_batch_names_a_missing_subject(tmp_path):
    env = blender_env(tmp_path / "blender-user", home=tmp_path / "home")
    proc = subprocess.run([sys.executable, str(BATCH), "--subject", tmp_path / "nope", "--out", tmp_path / "x.blend"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "--subject" in proc.stderr and "nope" in proc.stderr


@pytest.mark.parametrize("args, names", [
    (["--video", "{tmp}/nope.mp4"], ["--video", "nope.mp4"]),
    (["--images", "{tmp}/nope"], ["--images", "nope"]),
    (["--images", str(PHOTO), "--masks", "{tmp}/no-masks"], ["--masks", "no-masks"]),
    (["--images", str(PHOTO), "--subject", str(PHOTO)], ["--subject", "ryota.png"]),
    (["--images", str(PHOTO), "--result", "{tmp}"], ["--images", "--result"]),
    (["--video", str(PHOTO), "--every", "0"], ["--every", "0"]),
    (["--image", str(PHOTO), "--recon-refine"], ["--recon-refine", "--recon-fast"]),
    ([], ["--subject", "--video", "--images"]),
], ids=["video", "images", "masks", "subject", "result", "every", "recon-refine", "none"])
def test_batch_names_bad_footage_arguments(tmp_path, args, names):
    env = blender_env(tmp_path / "blender-user", home=tmp_path / "home")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(BATCH), *args, "--out", tmp_path / "x.blend"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and all(n in proc.stderr for n in names), proc.stderr


def test_batch_prepares_a_photo_fits_and_imports(tmp_path):
    """--images on one real photo: prepare (the add-on's New Subject) -> fit -> import; the subject
    is kept beside the .blend and the saved scene shows its contact sheet."""
    blend = tmp_path / "ryota.blend"
    proc = run_batch(tmp_path, "--images", PHOTO, "--out", blend, "--work", tmp_path / "work",
                     "--template", "longsleeve-trousers", "--codes", 1, "--coarse-steps", 2, "--fine-steps", 2)
    assert "Pointwear prepare" in proc.stdout and "fit_outfit" in proc.stdout, proc.stdout[-3000:]
    subject = tmp_path / "ryota_subject"
    meta = json.loads((subject / "subject.json").read_text())
    assert meta["frames"] == 1 and meta["image_size"] == [512, 512] and Path(meta["source"]) == PHOTO
    sheet = subject / "prepare" / "contact_sheet.png"
    assert sheet.is_file() and not list(tmp_path.glob(".*partial*"))
    summary = read_blend(tmp_path, blend)
    assert set(summary["kinds"]) >= {"armature", "body", "clothing_points", "camera"}
    assert (summary["frame_start"], summary["frame_end"]) == (0, 0)        # the photo is frame 0
    assert Path(summary["images"]["Pointwear Contact Sheet"]) == sheet


def test_batch_appearance_and_neural_render(tmp_path, fit_result, walk):
    """--appearance fits the subject's appearance after importing the result; --neural-render
    renders it over the keyed motion (first 3 frames) into a folder of RGBA PNGs."""
    import numpy as np
    import bpy

    blend, frames = tmp_path / "app.blend", tmp_path / "neural"
    proc = run_batch(tmp_path, "--result", fit_result, "--app-subject", fit_result.parent / "subject",
                     "--appearance", "--app-epochs", 20, "--app-size", 64, "--motion", walk, "--up", "Y",
                     "--neural-render", frames, "--neural-frames", 3, "--out", blend, "--work", tmp_path / "work")
    assert "fit_appearance" in proc.stdout and "neural-rendered 3 frames" in proc.stdout
    summary = read_blend(tmp_path, blend)
    assert (summary["frame_start"], summary["frame_end"]) == (0, 5)  # the motion's range is kept
    rendered = sorted(frames.glob("*.png"))
    assert [p.name for p in rendered] == ["000000.png", "000001.png", "000002.png"]
    img = bpy.data.images.load(str(rendered[1]), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * 4, np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    assert 0.002 < float((px.reshape(-1, 4)[:, 3] > 0.5).mean()) < 0.9  # clothing in view


def test_batch_says_why_prepare_failed(tmp_path):
    """Footage with nobody in it: the batch ends (status 1) with prepare's own words, and no
    subject folder or .blend is left behind."""
    import numpy as np
    import bpy

    folder = tmp_path / "empty-room"
    folder.mkdir()
    img = bpy.data.images.new("grey", 256, 256)
    try:
        img.pixels.foreach_set(np.full(256 * 256 * 4, 0.5, np.float32))
        img.filepath_raw, img.file_format = str(folder / "000.png"), "PNG"
        img.save()
    finally:
        bpy.data.images.remove(img)
    env = blender_env(tmp_path / "blender-user", home=tmp_path / "home")
    env["POINTWEAR_BACKEND_PYTHON"] = str(backend_python())
    proc = subprocess.run([sys.executable, str(BATCH), "--images", folder, "--out", tmp_path / "room.blend",
                           "--work", tmp_path / "work"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "preparing the subject failed" in proc.stderr and "no person" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "room_subject").exists() and not (tmp_path / "room.blend").exists()


def test_batch_reconstructs_one_photo(tmp_path, walk):
    """--image --recon-fast: the add-on's Reconstruct from Image (the backend's reconstruct, the
    learned one pass), imported, a motion keyed, saved; the .blend has the skinned garment mesh on
    the armature."""
    blend = tmp_path / "recon.blend"
    proc = run_batch(tmp_path, "--image", PHOTO, "--recon-fast", "--out", blend, "--motion", walk, "--up", "Y")
    assert "saved" in proc.stdout
    summary = read_blend(tmp_path, blend)
    assert set(summary["kinds"]) >= {"armature", "body", "garment_mesh"}
    assert summary["bones"] == 24 and summary["action"]
    result = Path(summary["result"])
    meta = json.loads((result / "result.json").read_text())
    assert meta["drape"] == "recon:single-image" and meta["method"] == "learned one pass"
