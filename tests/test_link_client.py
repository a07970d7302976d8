"""The add-on's link (addon/link: client, launcher, session) against the REAL backend process.

The backend is started the way the add-on starts it (``<python> -m pointwear serve --port 0``,
token in $POINTWEAR_TOKEN), here with this interpreter (the main .venv). Small fake servers and fake
"pythons" (shell scripts) cover what the real one never does on purpose: dying on start-up,
never answering, sending an over-long line. Every test leaves no backend process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from addon.link import protocol  # noqa: E402
from addon.link.client import (  # noqa: E402
    EVENT_LOST,
    BackendClient,
    BackendConnectionError,
    BackendError,
)
from addon.link.launcher import BackendLauncher, LaunchError  # noqa: E402
from addon.link.session import (  # noqa: E402
    STATE_BUSY,
    STATE_ERROR,
    STATE_NOT_FOUND,
    STATE_NOT_STARTED,
    STATE_READY,
    BackendSession,
)

START_TIMEOUT = 120.0
SYNTH = {"frames": 3, "size": 96, "outfit": "tshirt-shorts", "seed": 0, "sheet": False}


def gone(pid: int) -> bool:
    """True when no process ``pid`` exists (a zombie of ours has been reaped by Popen.wait)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def events_until_done(client: BackendClient, job_id: str, timeout: float = 120.0) -> list[dict]:
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = client.get_event(timeout=1.0)
        if event is None:
            continue
        assert event.get("type") != EVENT_LOST, event
        if event.get("job_id") == job_id:
            out.append(event)
            if event["type"] == protocol.EVENT_DONE:
                return out
    pytest.fail("no DONE for job {} within {} s; got {}".format(job_id, timeout, out))


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """One real backend for the module (started as the add-on starts it); stopped at the end."""
    work = tmp_path_factory.mktemp("link-work")
    launcher = BackendLauncher(sys.executable, work, device="cpu", threads=1)
    info = launcher.start(timeout=START_TIMEOUT)
    try:
        yield launcher, info
    finally:
        launcher.stop(timeout=10.0)
        assert gone(info["pid"])


@pytest.fixture
def client(backend):
    launcher, info = backend
    c = BackendClient("pytest")
    c.connect(info["host"], info["port"], launcher.token, timeout=10.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def subject(backend):
    """A tiny synthetic subject made by the backend (synth job): its folder."""
    launcher, info = backend
    with BackendClient("pytest-subject") as c:
        c.connect(info["host"], info["port"], launcher.token)
        job_id = c.submit("synth", SYNTH)
        events = events_until_done(c, job_id)
    assert events[-1]["state"] == protocol.STATE_DONE, events
    result = [e for e in events if e["type"] == protocol.EVENT_RESULT][-1]
    return Path(result["files"]["subject"])


# -- launcher + handshake ----------------------------------------------------------------------

def test_launcher_reports_the_listening_line(backend):
    launcher, info = backend
    assert info["event"] == "listening" and info["protocol"] == protocol.PROTOCOL_VERSION
    assert info["host"] == "127.0.0.1" and 0 < info["port"] < 65536
    assert info["pid"] == launcher.pid and launcher.running
    assert info["device"] == "cpu"
    assert launcher.port == info["port"]
    # The token never travels on the command line.
    assert launcher.token not in " ".join(launcher.command())
    assert len(launcher.token) >= 32


def test_hello_handshake_and_ping(client):
    hello = client.hello
    assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL_VERSION
    assert hello["device"] == "cpu"
    assert {"body", "synth", "fit_outfit", "drape"} <= set(hello["kinds"])
    assert client.connected
    assert client.ping(timeout=5.0)["type"] == "pong"


def test_wrong_token_is_refused_with_a_clear_error(backend):
    launcher, info = backend
    c = BackendClient()
    with pytest.raises(BackendError) as err:
        c.connect(info["host"], info["port"], "not-the-token", timeout=10.0)
    assert err.value.code == "auth"
    assert "token" in str(err.value).lower()
    assert not c.connected


def test_nothing_listening_is_a_connect_error_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # bound, never listening: connections are refused
        t0 = time.monotonic()
        with pytest.raises(BackendConnectionError) as err:
            BackendClient().connect("127.0.0.1", port, "x", timeout=5.0)
    assert err.value.code == "connect" and err.value.hint
    assert time.monotonic() - t0 < 5.0


def test_a_server_that_never_answers_times_out():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)                          # accepts (backlog) but never reads or answers
        c = BackendClient()
        t0 = time.monotonic()
        with pytest.raises(BackendConnectionError) as err:
            c.connect("127.0.0.1", s.getsockname()[1], "x", timeout=0.5)
        assert err.value.code == "timeout"
        assert time.monotonic() - t0 < 5.0
        assert not c.connected


# -- jobs ----------------------------------------------------------------------------------------

def test_synth_job_events_end_with_result_then_done(subject, client):
    # The module's subject came from a synth job; run the files check on it and on the records.
    assert (subject / "subject.json").is_file() and (subject / "smpl.npz").is_file()
    assert len(list((subject / "frames").glob("*.png"))) == SYNTH["frames"]
    job_id = client.submit("synth", dict(SYNTH, seed=1))
    events = events_until_done(client, job_id)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == protocol.EVENT_DONE and kinds.count(protocol.EVENT_DONE) == 1
    assert events[-1]["state"] == protocol.STATE_DONE
    assert protocol.EVENT_RESULT in kinds and kinds.index(protocol.EVENT_RESULT) < len(kinds) - 1
    result = events[kinds.index(protocol.EVENT_RESULT)]
    assert Path(result["files"]["subject"]).is_dir()
    progress = [e for e in events if e["type"] == protocol.EVENT_PROGRESS]
    assert progress and all(0 <= e["i"] <= e["n"] for e in progress)
    records = client.status(job_id)
    assert [r["state"] for r in records] == [protocol.STATE_DONE]


def test_bad_params_are_a_backend_error_naming_the_field(client, tmp_path):
    with pytest.raises(BackendError) as err:
        client.submit("fit_outfit", {"subject": str(tmp_path / "missing")})
    assert err.value.code == "bad_params"
    assert "subject" in str(err.value)
    assert client.connected  # the connection stays open after a bad request
    with pytest.raises(BackendError) as err:
        client.submit("no_such_kind", {})
    assert err.value.code == "unknown_kind"


def test_cancel_a_running_fit(client, subject):
    job_id = client.submit("fit_outfit", {"subject": str(subject), "template": "tshirt-shorts",
                                          "codes": 1, "coarse_steps": 100000, "fine_steps": 2})
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:  # wait until it really runs
        event = client.get_event(timeout=1.0)
        if event is not None and event.get("job_id") == job_id:
            seen.append(event)
            if event["type"] == protocol.EVENT_PROGRESS:
                break
    assert seen and seen[-1]["type"] == protocol.EVENT_PROGRESS, seen
    assert client.cancel(job_id)["type"] == "ok"
    events = events_until_done(client, job_id, timeout=60)
    assert events[-1]["state"] == protocol.CANCELLED, events


# -- session --------------------------------------------------------------------------------------

def test_session_fit_blocking_wait(tmp_path, subject):
    s = BackendSession("pytest-session")
    assert s.state == STATE_NOT_STARTED
    try:
        assert s.start(sys.executable, tmp_path / "work", device="cpu", threads=1,
                       timeout=START_TIMEOUT), (s.message, s.hint)
        assert s.state == STATE_READY and s.device == "cpu" and s.owned
        assert s.state_text == "ready on cpu"
        pid = s.pid
        job = s.submit("fit_outfit", {"subject": str(subject), "template": "tshirt-shorts",
                                      "codes": 1, "coarse_steps": 2, "fine_steps": 2, "seed": 0})
        assert s.state == STATE_BUSY and s.current_job is job and s.active_job() is job
        seen = []
        job = s.wait(job.job_id, timeout=300, on_event=lambda ev, j: seen.append(ev["type"]))
        assert job.done and job.state == protocol.STATE_DONE, (job, job.error)
        assert seen[-1] == protocol.EVENT_DONE and protocol.EVENT_RESULT in seen
        assert job.fraction == 1.0 and job.progress_text == "Done"
        assert Path(job.files["outfit"]).is_file() and Path(job.folder).is_dir()
        assert (Path(job.folder) / "outfit.npz").is_file()
        assert job.stage  # PROGRESS events set a stage on the way
        assert s.state == STATE_READY and s.active_job() is None
    finally:
        s.stop(timeout=10.0)
    assert s.state == STATE_NOT_STARTED and s.client is None and s.launcher is None
    assert gone(pid)
    s.stop()  # idempotent


def test_session_reports_a_killed_backend_as_lost(tmp_path, subject):
    s = BackendSession("pytest-lost")
    try:
        assert s.start(sys.executable, tmp_path / "work", device="cpu", threads=1,
                       timeout=START_TIMEOUT), (s.message, s.hint)
        job = s.submit("fit_outfit", {"subject": str(subject), "template": "tshirt-shorts",
                                      "codes": 1, "coarse_steps": 100000, "fine_steps": 2})
        client, pid = s.client, s.pid
        os.killpg(pid, signal.SIGKILL)
        lost = []
        job = s.wait(job.job_id, timeout=30, on_event=lambda ev, j: lost.append(ev))
        assert job.done and job.state == protocol.FAILED
        assert job.error["code"] == "lost"
        assert any(ev["type"] == EVENT_LOST for ev in lost), lost
        assert s.state == STATE_ERROR and "backend stopped" in s.message, s.message
        assert s.hint
        # A request on the dead connection fails at once, not after its timeout.
        t0 = time.monotonic()
        with pytest.raises(BackendConnectionError):
            client.ping(timeout=10.0)
        assert time.monotonic() - t0 < 5.0
    finally:
        s.stop(timeout=5.0)
    assert gone(pid) and s.state == STATE_NOT_STARTED


def test_client_reports_lost_connection_as_an_event():
    """A fake server that answers hello and then closes: the client queues one LOST event."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            with conn:
                line = conn.makefile("rb").readline()
                hello = protocol.decode_line(line)
                conn.sendall(protocol.encode_line({"type": "hello", "protocol": 1, "device": "cpu",
                                                   "id": hello["id"]}))
                time.sleep(0.2)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        c = BackendClient()
        c.connect("127.0.0.1", srv.getsockname()[1], "t", timeout=5.0)
        event = c.get_event(timeout=5.0)
        thread.join(5)
    assert event is not None and event["type"] == EVENT_LOST, event
    assert not c.connected and c.lost_reason
    assert c.get_event(timeout=0.2) is None  # reported once
    c.close()


def test_client_drops_a_connection_sending_an_overlong_line():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            with conn:
                hello = protocol.decode_line(conn.makefile("rb").readline())
                conn.sendall(protocol.encode_line({"type": "hello", "id": hello["id"]}))
                try:
                    conn.sendall(b"x" * (protocol.MAX_LINE_BYTES + 10))
                except OSError:  # the client hung up first: as it should
                    pass
                time.sleep(0.5)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        c = BackendClient()
        c.connect("127.0.0.1", srv.getsockname()[1], "t", timeout=5.0)
        event = c.get_event(timeout=5.0)
        thread.join(5)
    assert event is not None and event["type"] == EVENT_LOST and "over" in event["message"], event
    c.close()


# -- launcher failures -------------------------------------------------------------------------

def fake_python(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a Python")
def test_launcher_explains_a_python_without_the_backend(tmp_path):
    python = fake_python(tmp_path, 'echo "$0: No module named pointwear" >&2; exit 1')
    launcher = BackendLauncher(python, tmp_path / "work")
    with pytest.raises(LaunchError) as err:
        launcher.start(timeout=20)
    assert "exited" in err.value.message and "No module named pointwear" in err.value.message
    assert "Backend Python" in err.value.hint and "Preferences" in err.value.hint
    assert launcher.stop() == 1  # already gone: stop is a no-op that reports the exit code


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a Python")
def test_launcher_gives_up_on_a_silent_backend_and_kills_it(tmp_path):
    python = fake_python(tmp_path, 'trap "" TERM; exec sleep 60')  # ignores SIGTERM too
    launcher = BackendLauncher(python, tmp_path / "work")
    with pytest.raises(LaunchError) as err:
        launcher.start(timeout=1.0)
    assert "did not report its port" in err.value.message
    assert not launcher.running and gone(launcher.pid)


def test_launcher_missing_python(tmp_path):
    with pytest.raises(LaunchError) as err:
        BackendLauncher(tmp_path / "nope" / "python", tmp_path / "work").start(timeout=5)
    assert "not found" in err.value.message and "Backend Python" in err.value.hint
    s = BackendSession()
    assert s.start(str(tmp_path / "nope" / "python"), tmp_path / "work", timeout=5) is False
    assert s.state == STATE_NOT_FOUND and s.hint


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a Python")
def test_stop_during_an_async_start_leaves_no_process(tmp_path):
    python = fake_python(tmp_path, "exec sleep 60")
    s = BackendSession()
    assert s.start_async(str(python), tmp_path / "work", timeout=60) is True
    deadline = time.monotonic() + 10
    while s._launching is None or s._launching.pid is None:
        assert time.monotonic() < deadline, "the start thread never launched"
        time.sleep(0.02)
    pid = s._launching.pid
    assert s.starting
    s.stop(timeout=2.0)
    assert s.state == STATE_NOT_STARTED
    assert gone(pid)
