"""The `reconstruct` job of `pointwear serve`: the real server over a real socket running the real
pipeline on the real photo (few refinement steps); progress, previews, cancel, bad params."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pointwear.link import protocol as P
from test_server import TOKEN, done_state, error_reply, server, the  # noqa: F401  (server: a module's own)

PHOTO = Path("/work/shared/data/real/ryota.png")
TIMEOUT = 900.0


def test_hello_lists_reconstruct(server):
    with server.connect(hello=False) as c:
        hello = c.request({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION})
    assert P.KIND_RECONSTRUCT in hello["kinds"]


def test_reconstruct_a_photo(server):
    """The learned one pass refined (fast + refine): the learned model, the refinement's stages."""
    from pointwear.mesh.result_mesh import read_result_mesh
    with server.connect() as c:
        job = c.submit(P.KIND_RECONSTRUCT, {"image": str(PHOTO), "steps": 4, "texture_size": 128, "fast": True,
                                            "refine": True})
        events = c.job_events(job["job_id"], timeout=TIMEOUT)
    assert done_state(events) == P.STATE_DONE, events
    files = {k: Path(v) for k, v in the(events, P.RESULT)["files"].items()}
    assert set(files) == set(P.RESULT_FILES[P.KIND_RECONSTRUCT]) and all(p.exists() for p in files.values())
    assert not list(Path(job["out"]).parent.glob(".*partial*"))
    mesh = read_result_mesh(files["outfit"].parent)
    assert mesh.texture.shape == (128, 128, 3) and mesh.uv is not None
    assert np.allclose(mesh.weights.sum(1), 1, atol=1e-4)
    result = json.loads(files["result_json"].read_text())
    assert result["method"] == "learned one pass + refinement" and "learned" in result["seconds"]
    # 4 steps from the learned mesh (input-view IoU ~0.5 alone): the refinement raises the soft IoU
    assert result["metrics"]["input_iou"] > 0.5 and result["history"][-1]["iou"] > result["history"][0]["iou"]
    progress = [e for e in events if e["type"] == P.PROGRESS]
    stages = [e["stage"] for e in progress]
    assert stages[0] == "detect" and "refine" in stages and "texture" in stages, stages
    previews = [Path(e["preview"]) for e in progress if e.get("preview") and e["stage"] == "refine"]
    assert previews and np.asarray(Image.open(previews[-1])).ndim == 3


def test_cancel_while_refining_leaves_nothing(server):
    with server.connect() as c:
        job = c.submit(P.KIND_RECONSTRUCT, {"image": str(PHOTO), "steps": 2000})
        job_id, out = job["job_id"], Path(job["out"])
        seen = c.job_events(job_id, timeout=TIMEOUT, until=lambda m: m["type"] == P.DONE or (
            m["type"] == P.PROGRESS and m["stage"] == "refine" and m["i"] >= 2))
        assert seen[-1]["type"] == P.PROGRESS, seen
        assert c.request({"type": "cancel", "job_id": job_id})["type"] == "ok"
        events = c.job_events(job_id, timeout=TIMEOUT)
    assert done_state(events) == P.CANCELLED, events
    assert not [e for e in events if e["type"] in (P.RESULT, P.ERROR)], events
    assert not (out.exists() and list(out.iterdir())) and not list(out.parent.glob(".*partial*"))


@pytest.mark.parametrize("params, field", [
    ({}, "image"),
    ({"image": "/no/such/photo.png"}, "image"),
    ({"image": str(PHOTO.parent / "README.md")}, "image"),
    ({"image": str(PHOTO), "mask": "/no/such/mask.png"}, "mask"),
    ({"image": str(PHOTO), "steps": 0}, "steps"),
    ({"image": str(PHOTO), "texture_size": 10}, "texture_size"),
    ({"image": str(PHOTO), "focal": -1}, "focal"),
    ({"image": str(PHOTO), "stpes": 3}, "stpes"),
    ({"image": str(PHOTO), "refine": True}, "refine"),
    ({"image": str(PHOTO), "fast": "yes"}, "fast"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_params_name_the_field(server, params, field):
    with server.connect() as c:
        reply = error_reply(c, {"type": "submit", "kind": P.KIND_RECONSTRUCT, "params": params})
        assert reply["type"] == P.ERROR and reply["code"] == P.E_BAD_PARAMS and reply["field"] == field, reply
        assert c.request({"type": "ping"})["type"] == "pong"
