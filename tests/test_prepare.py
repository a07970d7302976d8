"""`pointwear prepare` end to end through the real command line: real photo and video in, a
subject folder out that the reader accepts; bad input exits 2 naming the file and writes nothing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointwear.data.subject import read_subject

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
RYOTA = REAL / "ryota.png"
VIDEO = REAL / "single_person_demo.mp4"
pytestmark = pytest.mark.skipif(not RYOTA.exists(), reason="shared/data/real is not beside the repo")


def run(exe: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "prepare", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def ryota_subject(tmp_path_factory, pointwear_exe) -> Path:
    out = tmp_path_factory.mktemp("ryota") / "subject"
    r = run(pointwear_exe, RYOTA, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_photo_makes_a_checked_subject(ryota_subject, pointwear_exe):
    s = read_subject(ryota_subject)
    assert s.num_frames == 1 and s.image_size == (512, 512)
    assert Path(s.meta["source"]) == RYOTA.resolve() and s.meta["fps"] > 0
    assert s.smpl.betas.shape == (10,) and np.isfinite(s.smpl.transl).all()
    assert s.smpl.transl[0, 2] > 0.5          # in front of the camera
    check = subprocess.run([pointwear_exe, "subject", "check", str(ryota_subject)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    report = json.loads((ryota_subject / "prepare" / "report.json").read_text())
    assert report["frames_kept"] == 1 and report["dropped"] == []
    assert report["frames"][0]["confidence"] > 0.3
    sheet = Image.open(ryota_subject / "prepare" / "contact_sheet.png")
    assert sheet.height >= 3 * 300


def test_photo_clothing_mask_is_clothing(ryota_subject):
    """Inside the person (RGBA alpha is used as the person mask), covering hoodie and trousers."""
    s = read_subject(ryota_subject)
    person = np.asarray(Image.open(REAL / "ryota_mask.png").convert("L")) > 127
    cloth = s.mask(0)
    assert (cloth & person).sum() / cloth.sum() >= 0.98
    assert 0.5 < cloth.sum() / person.sum() < 0.97      # most of the person, not face and hands
    lm = np.load(ryota_subject / "prepare" / "landmarks.npz")["landmarks"][0]
    nose = lm[0, :2].round().astype(int)
    assert not cloth[nose[1], nose[0]]
    hip = ((lm[23, :2] + lm[24, :2]) / 2).round().astype(int)
    assert cloth[hip[1], hip[0]]
    labels = s.labels(0)
    assert labels is not None and set(np.unique(labels[cloth])) <= {1, 2, 3}


def test_video_all_frames_accounted_for(tmp_path, pointwear_exe):
    out = tmp_path / "video"
    r = run(pointwear_exe, VIDEO, "--out", out, "--every", "4")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "prepare" / "report.json").read_text())
    assert report["frames_seen"] == 10
    assert report["frames_kept"] + len(report["dropped"]) == 10
    assert all(d["reason"] for d in report["dropped"])
    s = read_subject(out)
    assert s.num_frames == report["frames_kept"] and s.image_size == (1024, 576)
    assert s.meta["frame_ids"] == [f["input_frame"] for f in report["frames"] if f["kept"]]
    assert s.meta["fps"] == pytest.approx(3.0)


def test_user_masks_override(tmp_path, pointwear_exe):
    masks = tmp_path / "masks"
    masks.mkdir()
    box = np.zeros((512, 512), np.uint8)
    box[200:300, 200:300] = 255
    Image.fromarray(box).save(masks / "ryota.png")
    out = tmp_path / "s"
    r = run(pointwear_exe, RYOTA, "--out", out, "--masks", masks)
    assert r.returncode == 0, r.stderr
    assert (read_subject(out).mask(0) == (box > 0)).all()


@pytest.mark.parametrize("case", ["corrupt_video", "no_person", "tiny_person", "mask_size", "mask_name"])
def test_bad_input_exits_2_and_writes_nothing(case, tmp_path, pointwear_exe):
    args: list = []
    if case == "corrupt_video":
        src = tmp_path / "broken.mp4"
        src.write_bytes(VIDEO.read_bytes()[:3000])
        expect = "broken.mp4"
    elif case == "no_person":
        src = tmp_path / "empty.png"
        Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(src)
        expect = "no person"
    elif case == "tiny_person":
        src = tmp_path / "far.png"
        # MediaPipe finds this 100-px-high paste at ~85 px person height (< 120 px: too small)
        canvas = Image.new("RGB", (320, 320), (90, 110, 120))
        person = Image.open(RYOTA).convert("RGB")
        person.putalpha(Image.open(REAL / "ryota_mask.png").convert("L"))
        small = person.resize((100, 100))
        canvas.paste(small, (110, 110), small)
        canvas.save(src)
        expect = "too small"
    else:
        src = RYOTA
        masks = tmp_path / "masks"
        masks.mkdir()
        name, size = ("ryota.png", (300, 300)) if case == "mask_size" else ("other.png", (512, 512))
        Image.fromarray(np.zeros(size, np.uint8)).save(masks / name)
        args = ["--masks", masks]
        expect = "ryota.png" if case == "mask_size" else "no mask for input frame"
    out = tmp_path / "out"
    r = run(pointwear_exe, src, "--out", out, *args)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))


def test_numbered_images_are_one_shot():
    from pointwear.perception.prepare import is_sequence
    from pointwear.perception.types import InputInfo
    folder = InputInfo("x", "images", 25.0, (8, 8), (8, 8), 1.0)
    assert is_sequence(folder, ["frame_0001.png", "frame_0002.png", "frame_0004.png"])
    assert not is_sequence(folder, ["beach.jpg", "city.jpg"])
    assert not is_sequence(folder, ["img1.png", "img30.png", "img31.png"])
    assert not is_sequence(folder, ["000001.png", "000002.png"], "no")
    assert is_sequence(InputInfo("x", "video", 25.0, (8, 8), (8, 8), 1.0), ["frame 0", "frame 1"])
    assert not is_sequence(InputInfo("x", "image", 25.0, (8, 8), (8, 8), 1.0), ["a.png"])
