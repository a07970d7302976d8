"""The `prepare` job of `pointwear serve`: the real server process over a real socket (the client
and server helpers of test_server.py), running the real pipeline on the real photo and video of
/work/shared/data/real. No mocks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointwear.link import protocol as P
from test_server import TOKEN, done_state, error_reply, server, the  # noqa: F401  (server: a module's own)

REAL = Path("/work/shared/data/real")
PHOTO = REAL / "ryota.png"
VIDEO = REAL / "single_person_demo.mp4"
PREPARE_TIMEOUT = 600.0   # one photo: detection, the body fit and the clothing masks on a busy box


def test_hello_lists_prepare(server):
    with server.connect(hello=False) as c:
        hello = c.request({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION})
    assert P.KIND_PREPARE == "prepare" and P.KIND_PREPARE in hello["kinds"]


def test_prepare_a_photo(server):
    from pointwear.data.subject import read_subject
    with server.connect() as c:
        job = c.submit("prepare", {"input": str(PHOTO), "size": 512, "person": 0})
        events = c.job_events(job["job_id"], timeout=PREPARE_TIMEOUT)
    assert done_state(events) == P.STATE_DONE, events
    result = the(events, P.RESULT)
    files = {name: Path(path) for name, path in result["files"].items()}
    assert set(files) == {"subject", "sheet", "report"}
    assert all(p.exists() for p in files.values()), files
    subject_dir = files["subject"]
    assert subject_dir == Path(result["folder"]) / "subject"
    assert files["sheet"] == subject_dir / "prepare" / "contact_sheet.png"
    assert files["report"] == subject_dir / "prepare" / "report.json"
    assert not list(Path(result["folder"]).glob(".*partial*"))       # nothing half-written left

    subject = read_subject(subject_dir)            # the format's own reader accepts it
    assert subject.num_frames == 1 and tuple(subject.image_size) == (512, 512)
    assert Path(subject.meta["source"]) == PHOTO
    report = json.loads(files["report"].read_text())
    assert report["frames_kept"] == 1 and report["options"]["person"] == "0"
    sheet = np.asarray(Image.open(files["sheet"]))
    assert sheet.ndim == 3 and min(sheet.shape[:2]) > 64

    # PROGRESS per stage, the first with the frame's detection overlay as a preview.
    progress = [e for e in events if e["type"] == P.PROGRESS]
    stages = [e["stage"] for e in progress]
    assert stages[0] == "detect" and "write" in stages, stages
    assert all(0 <= e["i"] <= e["n"] for e in progress)
    previews = [Path(e["preview"]) for e in progress if e.get("preview")]
    assert previews and previews[0].is_file(), progress
    overlay = np.asarray(Image.open(previews[0]))
    assert overlay.shape[2] == 3 and max(overlay.shape[:2]) <= 512


@pytest.mark.parametrize("params, field", [
    ({"input": "/no/such/video.mp4"}, "input"),
    ({"input": "relative/photo.png"}, "input"),
    ({}, "input"),
    ({"input": str(PHOTO), "every": 0}, "every"),
    ({"input": str(PHOTO), "max_frames": "all"}, "max_frames"),
    ({"input": str(PHOTO), "size": 10}, "size"),
    ({"input": str(PHOTO), "start": "2 minutes"}, "start"),
    ({"input": str(PHOTO), "end": -3}, "end"),
    ({"input": str(PHOTO), "person": "the tall one"}, "person"),
    ({"input": str(PHOTO), "focal": float("nan")}, "focal"),
    ({"input": str(PHOTO), "focal": -5}, "focal"),
    ({"input": str(PHOTO), "masks": str(PHOTO)}, "masks"),
    ({"input": str(PHOTO), "masks": "/no/such/masks"}, "masks"),
    ({"input": str(PHOTO), "gender": "other"}, "gender"),
    ({"input": str(PHOTO), "sequence": True}, "sequence"),
    ({"input": str(PHOTO), "body": "/no/such/smpl.pkl"}, "body"),
    ({"input": str(PHOTO), "evrey": 2}, "evrey"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_params_name_the_field(server, params, field):
    with server.connect() as c:     # (json writes NaN as the bare word NaN, which the server reads)
        reply = error_reply(c, {"type": "submit", "kind": "prepare", "params": params})
        assert reply["type"] == P.ERROR and reply["code"] == P.E_BAD_PARAMS, reply
        assert reply["field"] == field and field in reply["message"], reply
        assert c.request({"type": "ping"})["type"] == "pong"        # still served


def test_a_folder_without_images_fails_as_bad_input(server, tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image\n")
    with server.connect() as c:
        job = c.submit("prepare", {"input": str(empty)})
        events = c.job_events(job["job_id"], timeout=PREPARE_TIMEOUT)
    assert done_state(events) == P.FAILED
    error = the(events, P.ERROR)
    assert error["code"] == "bad_input" and str(empty) in (error.get("file", "") + error["message"]), error
    assert not (Path(job["out"]) / "subject").exists()


def _detecting(m: dict) -> bool:
    return m["type"] == P.PROGRESS and m["stage"] == "detect" and m["i"] >= 1


def _fitting(m: dict) -> bool:      # the stage after detection: the body fit
    return m["type"] == P.PROGRESS and m["stage"] != "detect"


@pytest.mark.parametrize("params, when", [({}, _detecting), ({"max_frames": 8}, _fitting)],
                         ids=["while-detecting", "while-fitting-the-body"])
def test_cancel_a_video_leaves_no_subject(server, params, when):
    with server.connect() as c:
        job = c.submit("prepare", {"input": str(VIDEO), **params})
        job_id, out = job["job_id"], Path(job["out"])
        seen = c.job_events(job_id, timeout=PREPARE_TIMEOUT, until=lambda m: when(m) or m["type"] == P.DONE)
        assert seen[-1]["type"] == P.PROGRESS and seen[-1]["i"] < seen[-1]["n"], seen   # work was left
        reply = c.request({"type": "cancel", "job_id": job_id})
        assert reply["type"] == "ok", reply
        events = c.job_events(job_id, timeout=PREPARE_TIMEOUT)
    assert done_state(events) == P.CANCELLED, events
    assert not [e for e in events if e["type"] in (P.RESULT, P.ERROR)], events
    assert not (out / "subject").exists()
    assert not [p.name for p in out.iterdir()], "the job's out folder is not empty"
