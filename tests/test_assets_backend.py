"""Artist-ready garments, backend side: outfit sliders and `pointwear edit` (parametric and
neural), the live preview points on PROGRESS, and the motion_import / sliders / edit job kinds over
a real socket (issue 12, parts 3, 5, 6)."""
from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from pointwear.data.bvh import read_bvh, write_bvh
from pointwear.drape.neural import load_neural_drape
from pointwear.drape.sliders import Editor, _measures, edit_result, parse_sets, slider_table
from pointwear.errors import InputError
from pointwear.fileio import load_npz, save_npz
from pointwear.link import protocol as P

from test_retarget import CMU
from test_server import ServerProcess, done_state, error_reply, the


@pytest.fixture(scope="module")
def parametric_result(tmp_path_factory, pointwear_exe) -> Path:
    root = tmp_path_factory.mktemp("assets-fit")
    for args in (["synth", root / "subject", "--frames", "3", "--size", "96", "--outfit", "tshirt-shorts", "--seed",
                  "1", "--points", "2048"],
                 ["fit-outfit", root / "subject", "--out", root / "result", "--template", "tshirt-shorts",
                  "--codes", "1", "--coarse-steps", "2", "--fine-steps", "2"]):
        subprocess.run([pointwear_exe, *map(str, args)], check=True, capture_output=True, timeout=600)
    return root / "result"


@pytest.fixture(scope="module")
def neural_result(tmp_path_factory, default_body) -> Path:
    """A neural-drape result folder: the committed drape at a fixed code on the default body."""
    out = tmp_path_factory.mktemp("neural") / "result"
    drape = load_neural_drape(None, default_body)
    code = torch.tensor([0.3, -0.2, 0.1, 0.25, 0.0, -0.1, 0.2, 0.05])
    with torch.no_grad():
        d = drape(drape.constrain(code[None]), default_body.betas_tensor(None))
    save_npz(out / P.OUTFIT_NPZ, points=d.points[0].numpy(), weights=d.weights[0].numpy(), code=code.numpy(),
             drape=np.array("neural"), betas=np.zeros(10, np.float32), body=np.array("default"),
             gender=np.array("neutral"))
    return out


def test_parametric_sliders_and_exact_edit(parametric_result, tmp_path):
    ed = Editor(parametric_result)
    names = [s.name for s in ed.sliders]
    assert names == ["top.sleeve", "top.hem", "top.neckline", "top.ease", "trousers.hem", "trousers.waist",
                     "trousers.ease"]
    # the result's own values give back its points
    outfit = load_npz(parametric_result / P.OUTFIT_NPZ)
    np.testing.assert_allclose(ed.points({}).numpy(), outfit["points"], atol=1e-5)
    applied = edit_result(parametric_result, tmp_path / "e", parse_sets(["sleeve=0.1", "trousers.looseness=0.05"]))
    assert applied == {"top.sleeve": pytest.approx(0.1), "trousers.ease": pytest.approx(0.05)}
    again = Editor(tmp_path / "e")
    values = {s.name: s.value for s in again.sliders}
    assert values["top.sleeve"] == pytest.approx(0.1, abs=1e-4) and values["trousers.ease"] == pytest.approx(0.05, abs=1e-5)
    assert values["top.hem"] == pytest.approx({s.name: s.value for s in ed.sliders}["top.hem"], abs=1e-5)
    posed = load_npz(tmp_path / "e" / P.POSED_NPZ)
    assert posed["points"].shape == load_npz(parametric_result / P.POSED_NPZ)["points"].shape
    assert (tmp_path / "e" / P.BODY_NPZ).is_file()
    record = json.loads((tmp_path / "e" / P.RESULT_JSON).read_text())
    assert record["edited_from"] == str(parametric_result.resolve())


@pytest.mark.parametrize("sets, field, words", [
    ({"hem": 0.7}, "hem", "ambiguous: say top.hem or trousers.hem"),
    ({"hood": 0.5}, "hood", "names no slider"),
    ({"top.sleeve": 1.5}, "top.sleeve", "outside top.sleeve's range 0..1"),
    ({"sleeve": float("nan")}, "sleeve", "outside")])
def test_edit_errors_name_the_field_and_write_nothing(parametric_result, tmp_path, sets, field, words):
    with pytest.raises(InputError) as info:
        edit_result(parametric_result, tmp_path / "new", sets)
    assert info.value.field == field and words in str(info.value)
    assert not (tmp_path / "new").exists()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=4))
def test_parse_sets_parses_or_names_the_bad_one(texts):
    try:
        out = parse_sets(texts)
    except InputError as exc:
        assert exc.field == "--set" and "NAME=VALUE" in str(exc)
    else:
        assert len(out) <= len(texts) and all(isinstance(v, float) for v in out.values())


def test_neural_sliders_are_named_directions_that_do_what_they_say(neural_result, default_body, tmp_path):
    ed = Editor(neural_result)
    names = [s.param for s in ed.sliders]
    assert len(names) == 3 and len(set(names)) == 3 and set(names) <= {"length", "looseness", "flare",
                                                                     "direction1", "direction2", "direction3"}
    assert torch.allclose(ed.directions @ ed.directions.T, torch.eye(3), atol=1e-4)       # orthonormal
    torch.testing.assert_close(Editor(neural_result).directions, ed.directions)          # deterministic
    for s in ed.sliders:
        if s.param in ("length", "looseness", "flare"):
            lo = _measures(ed.drape, ed.points({s.name: -0.3}), ed.betas)[s.param]
            hi = _measures(ed.drape, ed.points({s.name: 0.3}), ed.betas)[s.param]
            assert hi > lo, s.name
    table = slider_table(neural_result, tmp_path / "s.npz", samples=4)
    data = load_npz(table)
    assert data["deltas"].shape == (3, 4, 8192, 3) and data["deltas"].dtype == np.float16
    assert (np.abs(data["deltas"][np.arange(3), np.argmin(np.abs(data["samples"]), 1)]) == 0).all()
    edit_result(neural_result, tmp_path / "e", {ed.sliders[0].name: 0.5})
    code = load_npz(tmp_path / "e" / P.OUTFIT_NPZ)["code"]
    assert np.linalg.norm(code - ed.code.numpy()) == pytest.approx(0.25, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-P.PREVIEW_POINTS_LIMIT, P.PREVIEW_POINTS_LIMIT), max_size=60))
def test_preview_points_decode_bounded(values):
    if len(values) % 3:
        with pytest.raises(ValueError):
            P.decode_points(values)
    else:
        assert P.decode_points(values) == pytest.approx([v * P.PREVIEW_POINTS_UNIT for v in values])


def test_preview_points_refuse_oversized_and_odd_input():
    for bad in ([0] * (3 * P.PREVIEW_POINTS_MAX + 3), [True, 0, 0], [0.5, 0, 0], [P.PREVIEW_POINTS_LIMIT + 1, 0, 0],
                "1,2,3", {"x": 1}):
        with pytest.raises(ValueError):
            P.decode_points(bad)


def test_jobs_over_a_real_socket(parametric_result, tmp_path):
    """motion_import, sliders and edit as the add-on submits them; a fit's PROGRESS carries
    bounded live points; bad params are refused naming the field; the server survives them."""
    srv = ServerProcess(tmp_path / "work", tmp_path / "server.log")
    try:
        with srv.connect() as c:
            for kind, params, field in (
                    (P.KIND_MOTION_IMPORT, {}, "source"),
                    (P.KIND_MOTION_IMPORT, {"source": str(parametric_result / "result.json")}, "source"),
                    (P.KIND_MOTION_IMPORT, {"source": str(CMU), "fps": 0}, "fps"),
                    (P.KIND_SLIDERS, {"result": str(tmp_path)}, "result"),
                    (P.KIND_EDIT, {"result": str(parametric_result), "set": {}}, "set"),
                    (P.KIND_EDIT, {"result": str(parametric_result), "set": {"sleeve": "long"}}, "set.sleeve")):
                reply = error_reply(c, {"type": "submit", "kind": kind, "params": params})
                assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == field, reply

            subject = parametric_result.parent / "subject"
            job = c.submit(P.KIND_FIT_OUTFIT, {"subject": str(subject), "drape": "parametric",
                                               "template": "tshirt-shorts", "codes": 1, "coarse_steps": 6,
                                               "fine_steps": 2})
            events = c.job_events(job["job_id"])
            assert done_state(events) == P.STATE_DONE
            sets = [e["points"] for e in events if e["type"] == P.PROGRESS and "points" in e]
            assert sets, "no PROGRESS event carried points"
            for flat in sets:
                points = np.array(P.decode_points(flat)).reshape(-1, 3)
                assert 100 < len(points) <= P.PREVIEW_POINTS_MAX
                # A garment on a standing body, Y-up (a T-shirt over shorts spans 0.96-1.02 m
                # during this fit; which previews are sent depends on timing).
                assert 0.8 < np.ptp(points[:, 1]) < 2.0
            assert max(len(json.dumps(e)) for e in events) < P.MAX_LINE_BYTES

            bvh = read_bvh(CMU)
            small = write_bvh(tmp_path / "walk.bvh", replace(bvh, motion=bvh.motion[:120]))
            job = c.submit(P.KIND_MOTION_IMPORT, {"source": str(small), "iterations": 10})
            events = c.job_events(job["job_id"])
            assert done_state(events) == P.STATE_DONE, events
            files = the(events, P.RESULT)["files"]
            assert set(files) == {"motion", "report"}
            report = json.loads(Path(files["report"]).read_text())
            assert report["frames"] == 30 and report["joint_error_cm"]["root_and_legs"] < 3.0
            assert any("CMU units" in e.get("message", "") for e in events if e["type"] == P.STATUS)

            job = c.submit(P.KIND_EDIT, {"result": str(parametric_result), "set": {"shoulders": 0.3}})
            events = c.job_events(job["job_id"])
            assert done_state(events) == P.FAILED
            error = the(events, P.ERROR)
            assert error["field"] == "shoulders" and "names no slider" in error["message"], error
            job = c.submit(P.KIND_SLIDERS, {"result": str(parametric_result)})
            events = c.job_events(job["job_id"])
            assert done_state(events) == P.STATE_DONE
            table = load_npz(the(events, P.RESULT)["files"]["sliders"])
            assert list(table["names"])[:2] == ["top.sleeve", "top.hem"]
            assert c.request({"type": "ping"})["type"] == "pong"
        assert srv.stop(signal.SIGTERM) == 0, srv.log_text()
    finally:
        srv.kill()
