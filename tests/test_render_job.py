"""The appearance job kinds over the real socket: `render` writes the frames it announces, and a
`fit_appearance` job sends previews, cancels within a step keeping its checkpoint, and resumes.
The server helpers are test_server's (imported, not copied); jobs are tiny (test_appearance_fit's
4-frame 96-px pipeline, a few epochs) and the server runs with one torch thread."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from pointwear.link import protocol as P
from test_appearance_fit import make_subject, fit_tiny_outfit, write_walk_and_camera
from test_server import ServerProcess, done_state, error_reply, the


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("render-server")
    srv = ServerProcess(base / "work", base / "server.log")
    try:
        yield srv
        assert srv.stop(signal.SIGTERM) == 0, srv.log_text()
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_body):
    root = tmp_path_factory.mktemp("render-job")
    subject = make_subject(root, default_body)
    outfit = fit_tiny_outfit(subject, root / "outfit", default_body)
    motion, camera = write_walk_and_camera(root, frames=4, size=(64, 80))
    return root, subject, outfit, motion, camera


@pytest.fixture(scope="module")
def app_job(server, tiny):
    """A fit_appearance job over the socket: cancelled after a few steps, then resumed."""
    _, subject, outfit, _, _ = tiny
    with server.connect() as c:
        job = c.submit("fit_appearance", {"subject": str(subject), "outfit": str(outfit), "epochs": 12})
        job_id, out = job["job_id"], Path(job["out"])
        first = c.job_events(job_id, until=lambda m: m["type"] == P.PROGRESS and m["i"] >= 3)
        cancel_at = time.monotonic()
        assert c.request({"type": "cancel", "job_id": job_id})["cancelling"] is True
        cancelled = c.job_events(job_id, timeout=60)
        cancel_seconds = time.monotonic() - cancel_at
        kept = {"checkpoint": (out / "checkpoint.pt").is_file(), "appearance": (out / "appearance.pt").exists()}
        resumed = c.submit("fit_appearance", {"resume_job": job_id})
        events = c.job_events(resumed["job_id"], timeout=300)
    return job, out, first, (cancelled, cancel_seconds, kept), resumed, events


def test_fit_appearance_job_previews_cancels_and_resumes(app_job):
    job, out, first, (cancelled, cancel_seconds, kept), resumed, events = app_job
    assert first[-1]["stage"] == "train" and first[-1]["n"] == 12 * 2, first
    previews = [e["preview"] for e in first if "preview" in e]
    assert previews and Path(previews[0]).is_relative_to(Path(job["folder"])), first
    assert iio.imread(previews[0]).ndim == 3
    assert done_state(cancelled) == P.CANCELLED, cancelled
    assert cancel_seconds < 20, cancel_seconds          # a step or two on a loaded machine
    assert "checkpoint kept" in [e for e in cancelled if e["type"] == P.STATUS][-1]["message"]
    assert kept == {"checkpoint": True, "appearance": False}, kept

    assert resumed["out"] == str(out)
    assert done_state(events) == P.STATE_DONE, events
    assert any("resuming" in e.get("message", "") for e in events if e["type"] == P.STATUS), events
    train = [e for e in events if e["type"] == P.PROGRESS and e["stage"] == "train"]
    assert train[0]["i"] > 3 and train[-1]["i"] == train[-1]["n"] == 24, train
    files = the(events, P.RESULT)["files"]
    assert set(files) == {"outfit", "appearance", "result_json", "heldout", "sheet", "body", "posed"}, files
    assert all(Path(f).parent == out for f in files.values())
    assert Path(files["heldout"]).is_dir() and (Path(files["heldout"]) / "000003.png").is_file()
    outfit = np.load(files["outfit"])
    assert outfit["colors"].shape == (outfit["points"].shape[0], 3)
    result = json.loads(Path(files["result_json"]).read_text())
    assert result["epochs"] == 12 and result["resumed_from"]["step"] >= 3


def test_render_job_writes_the_frames_it_announces(server, tiny, app_job):
    _, _, _, motion, camera = tiny
    app = app_job[1]
    with server.connect() as c:
        job = c.submit("render", {"app": str(app), "motion": str(motion), "up": "y", "camera": str(camera),
                                  "betas": [1.0, -0.5]})
        events = c.job_events(job["job_id"], timeout=120)
    assert done_state(events) == P.STATE_DONE, events
    progress = [e for e in events if e["type"] == P.PROGRESS]
    assert progress[0]["stage"] == "render" and progress[-1]["i"] == progress[-1]["n"] == 4, progress
    files = the(events, P.RESULT)["files"]
    frames = Path(files["frames"])
    assert frames.is_dir() and Path(files["first"]) == frames / "000000.png"
    pngs = sorted(p.name for p in frames.glob("*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(progress[-1]["n"])]
    for name in pngs:
        rgba = iio.imread(frames / name)
        assert rgba.shape == (64, 80, 4) and (rgba[..., 3] > 0).any() and (rgba[..., 3] == 0).any()
    summary = json.loads(Path(files["render_json"]).read_text())
    assert summary["frames"] == 4 and summary["betas"][:2] == [1.0, -0.5]


def test_render_and_fit_appearance_params_are_checked(server, tiny, app_job, tmp_path):
    _, subject, outfit, motion, camera = tiny
    with server.connect() as c:
        reply = error_reply(c, {"type": "submit", "kind": "render", "params": {"motion": str(motion)}})
        assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "app", reply
        reply = error_reply(c, {"type": "submit", "kind": "render",
                                "params": {"app": str(outfit), "motion": str(motion), "camera": str(camera)}})
        assert reply["field"] == "app" and "appearance.pt" in reply["message"], reply
        reply = error_reply(c, {"type": "submit", "kind": "fit_appearance", "params": {"subject": str(subject)}})
        assert reply["field"] == "outfit", reply
        reply = error_reply(c, {"type": "submit", "kind": "fit_appearance",
                                "params": {"subject": str(subject), "outfit": str(tmp_path)}})
        assert reply["field"] == "outfit" and "outfit.npz" in reply["message"], reply
        reply = error_reply(c, {"type": "submit", "kind": "fit_appearance",
                                "params": {"subject": str(subject), "outfit": str(outfit), "minutes": -1}})
        assert reply["field"] == "minutes", reply
        reply = error_reply(c, {"type": "submit", "kind": "fit_appearance",
                                "params": {"subject": str(subject), "outfit": str(outfit), "midpoints": "yes"}})
        assert reply["field"] == "midpoints", reply
        # A camera that is not a camera file: the job fails naming the file and the field.
        job = c.submit("render", {"app": str(app_job[1]), "motion": str(motion), "up": "y", "camera": str(motion)})
        events = c.job_events(job["job_id"], timeout=60)
    assert done_state(events) == P.FAILED, events
    error = the(events, P.ERROR)
    assert error["code"] == "bad_input" and error["field"] == "K" and error["file"] == str(motion), error



def test_fit_appearance_job_takes_the_sample_options(server, tiny):
    """`midpoints` and `normals` reach the fit: the job's appearance.pt has the edge midpoints and
    no normal channels when asked so."""
    _, subject, outfit, _, _ = tiny
    with server.connect() as c:
        job = c.submit("fit_appearance", {"subject": str(subject), "outfit": str(outfit), "epochs": 1,
                                          "midpoints": True, "normals": False})
        events = c.job_events(job["job_id"], timeout=300)
    assert done_state(events) == P.STATE_DONE, events
    from pointwear.appearance.model import load_appearance
    model = load_appearance(the(events, P.RESULT)["files"]["appearance"])
    faces = np.load(outfit / "outfit.npz")["faces"]
    assert model.config.edges == len(np.unique(np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1), axis=0))
    assert not model.config.normals and model.net.in_channels == 16 + 1
