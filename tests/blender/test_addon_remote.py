"""The add-on with a remote backend: the real add-on (built zip) in the real bpy, and
`pointwear serve --tls` as a separate process with its own work folder. The add-on's preferences
name host, port, token and TLS fingerprint; Fit Outfit uploads the scene's subject (made in the
client's folder), the fit runs on the server's copy, the result is downloaded into the add-on's
work folder and imported. A wrong fingerprint and a remote host without one are refused."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from blender_support import ADDON_MODULE, backend_python, run_backend

TOKEN = "addon-remote-token-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """`pointwear serve --tls` on loopback with a work folder of its own: (listening line, work)."""
    base = tmp_path_factory.mktemp("remote-server")
    env = dict(os.environ, POINTWEAR_TOKEN=TOKEN)
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen([str(backend_python()), "-m", "pointwear", "serve", "--port", "0", "--work",
                             str(base / "work"), "--threads", "1", "--device", "cpu", "--tls"],
                            stdout=subprocess.PIPE, stderr=log, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, (base / "server.log").read_text()
        info = json.loads(proc.stdout.readline())
        yield info, base / "work"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stdout.close()
        log.close()


@pytest.fixture
def remote_addon(installed_addon, tmp_path, tls_server):
    info, _ = tls_server
    bpy = installed_addon["bpy"]
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.port, prefs.host, prefs.token = info["port"], "127.0.0.1", TOKEN
    prefs.fingerprint, prefs.file_transfer = info["fingerprint"], "AUTO"
    prefs.work_folder = str(tmp_path / "client-work")
    runtime = sys.modules[ADDON_MODULE + ".operators.runtime"]
    yield bpy, prefs, runtime
    if runtime._session is not None:
        runtime._session.stop(timeout=5.0)
    prefs.port, prefs.fingerprint, prefs.token = 0, "", ""


def test_fit_on_a_remote_backend_uploads_and_downloads(remote_addon, tls_server, tmp_path):
    bpy, prefs, runtime = remote_addon
    _, server_work = tls_server
    subject = tmp_path / "client-subjects" / "person"
    run_backend("synth", subject, "--frames", 3, "--size", 96, "--outfit", "tshirt-shorts", "--seed", 0,
                "--points", 1024)
    ops, props = bpy.ops.pointwear, bpy.context.scene.pointwear
    assert ops.start_backend() == {"FINISHED"}
    assert props.backend_state == "ready", (props.backend_message, props.backend_hint)
    session = runtime.session()
    assert session.client.tls and session.remote is not None and not session.owned
    props.subject_folder = str(subject)
    props.fit_drape = "PARAMETRIC"
    props.fit_template = "TSHIRT_SHORTS"
    props.fit_codes, props.fit_coarse_steps, props.fit_fine_steps = 1, 2, 2
    assert ops.fit_outfit() == {"FINISHED"}
    P = sys.modules[ADDON_MODULE + ".link.protocol"]
    assert props.job_state == P.STATE_DONE, (props.job_message, props.job_hint)
    result = Path(props.result_folder)
    assert result.is_relative_to(tmp_path / "client-work" / "remote" / props.job_id)
    assert (result / "outfit.npz").is_file() and (result / "posed.npz").is_file()
    remote_subject = Path(session.status(props.job_id)[0]["params"]["subject"])
    assert remote_subject.is_relative_to(server_work / "uploads")           # the server's own copy
    assert session.jobs[props.job_id].params["subject"] == str(subject)       # the add-on keeps its path
    armatures = [o for o in bpy.context.scene.objects if o.get("pointwear_kind") == "armature"]
    assert armatures and Path(armatures[-1]["pointwear_result"]) == result


def test_wrong_fingerprint_and_unpinned_remote_host_refused(remote_addon):
    bpy, prefs, runtime = remote_addon
    props = bpy.context.scene.pointwear
    prefs.fingerprint = "00:" * 31 + "00"
    with pytest.raises(RuntimeError):
        bpy.ops.pointwear.start_backend()
    assert props.backend_state == "error" and "fingerprint" in props.backend_hint.lower(), props.backend_hint
    prefs.fingerprint, prefs.host = "", "192.0.2.1"          # another machine without TLS: not even tried
    with pytest.raises(RuntimeError):
        bpy.ops.pointwear.start_backend()
    assert props.backend_state == "error" and "TLS" in props.backend_message
    assert "SSH tunnel" in props.backend_hint
