"""``pointwear.new_subject``: the real add-on (built zip) in the real bpy submits the backend's
``prepare`` job (the backend a child process) on the real photo and video of
/work/shared/data/real; the new subject becomes the scene's subject folder and its contact sheet an
image in the panel. Background mode: the operator takes its blocking path, as batch scripts do."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from test_addon_backend import addon, draw_all_panels, poll_message  # noqa: F401

REAL = Path("/work/shared/data/real")
PHOTO = REAL / "ryota.png"
VIDEO = REAL / "single_person_demo.mp4"
SHEET = "Pointwear Contact Sheet"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def test_new_subject_needs_the_backend(addon):  # noqa: F811
    bpy, ops = addon.bpy, addon.bpy.ops.pointwear
    assert poll_message(ops.new_subject).endswith("Start the backend first")
    layout = draw_all_panels(bpy)
    assert "pointwear.new_subject" in layout.operators()
    assert not any(t.startswith("Contact sheet") for t in layout.texts())
    rna = ops.new_subject.get_rna_type()
    assert rna.name == "New Subject from Video or Images"
    props = rna.properties
    assert {"filepath", "directory", "every", "max_frames", "size", "person", "focal", "masks"} <= set(props.keys())
    assert all(props[f].default for f in ("filter_folder", "filter_image", "filter_movie"))


def test_new_subject_from_a_photo_a_folder_or_a_video(addon, tmp_path):  # noqa: F811
    bpy, props, ops, runtime = addon.bpy, addon.props, addon.bpy.ops.pointwear, addon.runtime
    P = runtime.protocol    # the add-on's own copy of the wire protocol
    assert ops.start_backend() == {"FINISHED"}
    assert poll_message(ops.fit_outfit).endswith("Set a subject folder")

    # What is not there is named before anything is sent.
    with pytest.raises(RuntimeError, match="Not found: .*nope.png"):
        ops.new_subject(filepath=str(tmp_path / "nope.png"))
    with pytest.raises(RuntimeError, match="Choose a video"):
        ops.new_subject()
    with pytest.raises(RuntimeError, match="Person"):
        ops.new_subject(filepath=str(PHOTO), person="the tall one")

    # A folder (the file browser's directory, or a path ending in the separator) and a video, with
    # the options: submitted as prepare jobs with the backend's parameter names, then cancelled.
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(PHOTO, folder / "000.png")
    cases = [({"directory": str(folder) + os.sep}, {"input": str(folder)}),
             ({"filepath": str(folder) + os.sep}, {"input": str(folder)}),
             ({"filepath": str(VIDEO), "every": 4, "max_frames": 3, "size": 320, "focal": 900.0,
               "person": "0"},
              {"input": str(VIDEO), "every": 4, "max_frames": 3, "size": 320, "focal": 900.0,
               "person": "0"})]
    for kwargs, params in cases:
        assert ops.new_subject(wait=False, **kwargs) == {"FINISHED"}
        job = runtime.session().current_job
        assert job.kind == P.KIND_PREPARE and job.params == {"every": 1, "person": "auto", **params}, kwargs
        assert poll_message(ops.new_subject).endswith("A job is running")
        assert ops.cancel_job() == {"FINISHED"}
        assert ops.wait_job(timeout=300) == {"CANCELLED"}
        assert job.state == P.CANCELLED and not job.files and not props.subject_folder

    # The photo, to the end: the scene's subject folder is the new subject, its contact sheet is
    # loaded, and Fit Outfit is ready.
    assert ops.new_subject(filepath=str(PHOTO), size=512) == {"FINISHED"}
    job = runtime.session().jobs[props.job_id]
    assert job.kind == P.KIND_PREPARE and props.job_state == P.STATE_DONE
    assert job.params == {"input": str(PHOTO), "every": 1, "person": "auto", "size": 512}
    subject = Path(props.subject_folder)
    assert subject == Path(job.files["subject"]) and subject.name == "subject"
    meta = json.loads((subject / "subject.json").read_text())
    assert meta["frames"] == 1 and meta["image_size"] == [512, 512]
    assert Path(meta["source"]) == PHOTO
    for part in ("frames/000000.png", "masks/000000.png", "smpl.npz", "prepare/report.json"):
        assert (subject / part).is_file(), part
    sheet_path = subject / "prepare" / "contact_sheet.png"
    image = bpy.data.images[SHEET]
    assert Path(bpy.path.abspath(image.filepath)) == sheet_path and image.use_fake_user
    assert tuple(image.size) == png_size(sheet_path)        # really read from the file
    assert ops.fit_outfit.poll() is True
    texts = draw_all_panels(bpy).texts()
    assert "Contact sheet: " + SHEET in texts, texts
    # Another subject folder: not this sheet.
    props.subject_folder = str(tmp_path)
    assert "Contact sheet: " + SHEET not in draw_all_panels(bpy).texts()
