"""The `export` job kind over the real socket: a GLB with the motion for a textured result, a WARN
for a result without appearance, bad params answered naming the field. The server helpers are
test_server's and test_render_job's (imported, not copied)."""
from __future__ import annotations

from pathlib import Path

from gltf_support import parametric_result
from pointwear.data.motion import walking_motion, write_motion
from pointwear.link import protocol as P
from pointwear.mesh.gltf import read_glb
from test_render_job import server  # noqa: F401  (the module-scoped server fixture, not a copy)
from test_server import done_state, error_reply, the


def test_export_jobs_write_their_files_and_warn_without_appearance(server, tmp_path, default_body):
    plain = parametric_result(tmp_path / "plain", default_body, colors=False)
    motion = write_motion(tmp_path / "walk.npz", walking_motion(6), up="y")
    with server.connect() as c:
        job = c.submit("export", {"result": str(plain), "format": "glb", "motion": str(motion), "up": "y"})
        events = c.job_events(job["job_id"], timeout=600)
        assert done_state(events) == P.STATE_DONE, events
        files = the(events, P.RESULT)["files"]
        assert set(files) == {"glb"} and Path(files["glb"]).parent == Path(job["out"])
        doc, _ = read_glb(Path(files["glb"]).read_bytes())
        assert len(doc["animations"][0]["channels"]) == 25 and "images" not in doc
        assert any("no appearance" in e["message"] for e in events if e["type"] == P.WARN), events

        reply = error_reply(c, {"type": "submit", "kind": "export",
                                "params": {"result": str(plain), "format": "obj", "motion": str(motion)}})
        assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "motion", reply
        reply = error_reply(c, {"type": "submit", "kind": "export", "params": {"result": str(tmp_path), "format": "ply"}})
        assert reply["field"] == "result" and P.OUTFIT_NPZ in reply["message"], reply
        reply = error_reply(c, {"type": "submit", "kind": "export", "params": {"result": str(plain), "format": "fbx"}})
        assert reply["field"] == "format", reply
