"""`pointwear serve`: the real server process, spoken to over real sockets with the protocol module
the add-on uses (addon/link/protocol.py, imported here as pointwear.link.protocol). No mocks.

Jobs are tiny (a 3-frame 96-px subject, 64-px synth, a fit with one code and a few steps) and
every server runs with one torch thread. Every socket read has a deadline, so a broken server
fails a test instead of hanging it; every server process is killed in a finally."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from pointwear.link import protocol as P

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-" + os.urandom(8).hex()
START_TIMEOUT = 90.0     # importing torch on a loaded 2-core box
REPLY_TIMEOUT = 30.0
JOB_TIMEOUT = 120.0


# -- helpers ------------------------------------------------------------------------------------

class ServerProcess:
    """`python -m pointwear serve --port 0` on a work folder; `info` is its listening line."""

    def __init__(self, work: Path, log: Path, token: str | None = TOKEN, args: tuple = (), env: dict | None = None,
                 preexec_fn=None) -> None:
        """`args`: more `serve` options; `env`: more environment; `preexec_fn`: run in the child."""
        env = {**os.environ, **(env or {})}
        env.pop(P.TOKEN_ENV, None)
        if token is not None:
            env[P.TOKEN_ENV] = token
        self.log = log
        self._log_fh = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pointwear", "serve", "--port", "0", "--work", str(work), "--threads", "1",
             *args], stdout=subprocess.PIPE, stderr=self._log_fh, env=env, cwd=str(work.parent),
            preexec_fn=preexec_fn)
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
            line = self.proc.stdout.readline() if ready else b""
            assert line, f"no listening line within {START_TIMEOUT} s; log:\n{self.log_text()}"
            self.info = json.loads(line)
        except BaseException:
            self.kill()
            raise
        self.port = self.info["port"]

    def log_text(self) -> str:
        self._log_fh.flush()
        return self.log.read_text(errors="replace")

    def connect(self, hello: bool = True) -> "Client":
        client = Client(self.port)
        if hello:
            reply = client.request({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION,
                                    "client": "pytest"})
            assert reply["type"] == "hello", reply
        return client

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log_fh.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait for it; kill it if it does not end in time."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            return self.proc.wait(timeout)
        finally:
            self.kill()


class Client:
    """One connection: `request` sends and waits for the reply with the same id; other messages
    (job events) are kept, in order, for `job_events` and `wait_for`."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.buffer = P.LineBuffer(P.MAX_LINE_BYTES)
        self.backlog: list[dict] = []
        self.eof = False
        self._ids = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, message: dict) -> None:
        self.sock.sendall(P.encode_line(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, deadline: float) -> bool:
        """Read more messages into the backlog; False at EOF."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no message in time; backlog: " + repr(self.backlog)[-2000:])
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no message in time; backlog: " + repr(self.backlog)[-2000:]) from None
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.backlog.extend(P.decode_line(line) for line in self.buffer.feed(data))
        return True

    def wait_for(self, predicate, timeout: float = REPLY_TIMEOUT) -> dict:
        """The first message (kept or new) matching `predicate`, taken out of the backlog."""
        deadline = time.monotonic() + timeout
        while True:
            for k, message in enumerate(self.backlog):
                if predicate(message):
                    return self.backlog.pop(k)
            if self.eof or not self._read(deadline):
                raise EOFError("connection closed; backlog: " + repr(self.backlog)[-2000:])

    def next(self, timeout: float = REPLY_TIMEOUT) -> dict:
        return self.wait_for(lambda m: True, timeout)

    def request(self, message: dict, timeout: float = REPLY_TIMEOUT) -> dict:
        self._ids += 1
        rid = f"r{self._ids}"
        self.send({**message, "id": rid})
        return self.wait_for(lambda m: m.get("id") == rid, timeout)

    def submit(self, kind: str, params: dict) -> dict:
        reply = self.request({"type": "submit", "kind": kind, "params": params})
        assert reply["type"] == "submitted", reply
        return reply

    def job_events(self, job_id: str, timeout: float = JOB_TIMEOUT, until=None) -> list[dict]:
        """Events of one job up to its DONE (or up to the first event matching `until`)."""
        until = until or (lambda m: m["type"] == P.DONE)
        events = []
        deadline = time.monotonic() + timeout
        while True:
            event = self.wait_for(lambda m: m.get("job_id") == job_id and "id" not in m,
                                  max(0.01, deadline - time.monotonic()))
            events.append(event)
            if until(event):
                return events

    def closed_by_server(self, timeout: float = REPLY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._read(deadline)
        return True


def error_reply(client: Client, message: dict | bytes) -> dict:
    """Send a message (or raw bytes) and return the ERROR that answers it."""
    if isinstance(message, bytes):
        client.send_raw(message)
        reply = client.wait_for(lambda m: m["type"] == P.ERROR and "job_id" not in m)
    else:
        reply = client.request(message)
    assert reply["type"] == P.ERROR, reply
    return reply


def done_state(events: list[dict]) -> str:
    assert events and events[-1]["type"] == P.DONE, events
    assert not [e for e in events[:-1] if e["type"] == P.DONE], events
    return events[-1]["state"]


def the(events: list[dict], kind: str) -> dict:
    found = [e for e in events if e["type"] == kind]
    assert len(found) == 1, (kind, events)
    return found[0]


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    from pointwear.cli import main
    out = tmp_path_factory.mktemp("server-subject") / "subject"
    assert main(["synth", str(out), "--frames", "3", "--size", "96", "--outfit", "tshirt-shorts",
                 "--seed", "1", "--points", "2048"]) == 0
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    srv = ServerProcess(base / "work", base / "server.log")
    try:
        yield srv
        assert srv.stop(signal.SIGTERM) == 0, srv.log_text()     # SIGTERM stops it cleanly
    finally:
        srv.kill()


def fit_params(subject: Path, **extra) -> dict:
    return {"subject": str(subject), "drape": "parametric", "template": "tshirt-shorts", "codes": 1,
            "coarse_steps": 2, "fine_steps": 2, **extra}


# -- the protocol module and the packaging ---------------------------------------------------------

def test_backend_imports_the_addons_protocol_file():
    assert Path(P.__file__).resolve() == ROOT / "addon" / "link" / "protocol.py"
    sys.path.insert(0, str(ROOT))
    try:
        import addon.link as link
    finally:
        sys.path.remove(str(ROOT))
    assert Path(link.protocol.__file__).resolve() == Path(P.__file__).resolve()   # one file, two names
    assert link.encode_line.__module__ == "addon.link.protocol" and link.PROTOCOL_VERSION == 1
    message = {"type": "ping", "text": "a\nb ü"}
    line = P.encode_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and P.decode_line(line) == message
    for bad in (b"[1, 2]", b"{nope", b"\xff\xfe"):
        with pytest.raises(ValueError):
            P.decode_line(bad)
    buf = P.LineBuffer(16)
    assert buf.feed(b'{"a":1}\n{"b"') == [b'{"a":1}'] and buf.feed(b":2}\n") == [b'{"b":2}']
    with pytest.raises(P.LineTooLong) as info:
        buf.feed(b"x\n" + b"y" * 20)
    assert info.value.lines == [b"x"]


def test_pyproject_lists_every_backend_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["pointwear.link"] == "addon/link"
    backend = ROOT / "backend"
    try:    # what a commit holds (work in progress elsewhere in the tree does not count yet)
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "backend/pointwear"],
                                capture_output=True, text=True, timeout=60, check=True).stdout.split()
        files = [ROOT / f for f in listed]
    except (OSError, subprocess.SubprocessError):
        files = list((backend / "pointwear").rglob("*.py"))
    packages = {".".join(f.parent.relative_to(backend).parts) for f in files if f.suffix == ".py"}
    missing = packages - set(config["packages"])
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


# -- handshake and security -------------------------------------------------------------------------

def test_listening_line_and_handshake(server):
    info = server.info
    assert info["event"] == "listening" and info["pid"] == server.proc.pid and info["host"] == "127.0.0.1"
    assert info["protocol"] == P.PROTOCOL_VERSION and info["device"] in ("cpu", "cuda") and info["port"] > 0
    with Client(server.port) as c:
        hello = c.request({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION})
        assert hello["type"] == "hello" and hello["protocol"] == 1 and hello["device"] == info["device"]
        assert {"body", "synth", "fit_outfit", "drape"} <= set(hello["kinds"])
        assert hello["server"] and hello["max_line_bytes"] == P.MAX_LINE_BYTES
        assert c.request({"type": "ping"})["type"] == "pong"
    assert TOKEN not in server.log_text()      # a token from the environment is never printed


@pytest.mark.parametrize("first", [
    {"type": "hello", "token": "wrong", "protocol": 1},
    {"type": "hello", "protocol": 1},
    {"type": "hello", "token": None, "protocol": 1},
    {"type": "ping"},
    {"type": "submit", "kind": "body", "params": {}},
], ids=["wrong-token", "no-token", "null-token", "ping-first", "submit-first"])
def test_no_token_no_service(server, first):
    with Client(server.port) as c:
        reply = error_reply(c, first)
        assert reply["code"] == P.E_AUTH, reply
        assert c.closed_by_server()


def test_other_protocol_version_is_refused(server):
    with Client(server.port) as c:
        reply = error_reply(c, {"type": "hello", "token": TOKEN, "protocol": 999})
        assert reply["code"] == P.E_PROTOCOL and "1" in reply["message"], reply
        assert c.closed_by_server()


def test_bad_messages_get_errors_while_another_clients_job_completes(server, subject, tmp_path):
    with server.connect() as worker, server.connect() as other:
        job = worker.submit("synth", {"frames": 2, "size": 64, "outfit": "tshirt-shorts", "seed": 3})
        job_id = job["job_id"]

        assert error_reply(other, b"{this is not json\n")["code"] == P.E_BAD_JSON
        assert error_reply(other, b"[1, 2, 3]\n")["code"] == P.E_BAD_JSON
        assert error_reply(other, b"\xff\xfe\n")["code"] == P.E_BAD_JSON
        assert error_reply(other, {"type": "frobnicate"})["code"] == P.E_BAD_MESSAGE
        assert error_reply(other, {"kind": "body"})["code"] == P.E_BAD_MESSAGE
        reply = error_reply(other, {"type": "submit", "kind": "eval_python", "params": {}})
        assert reply["code"] == P.E_UNKNOWN_KIND and "fit_outfit" in reply["hint"], reply
        reply = error_reply(other, {"type": "submit", "kind": "fit_outfit", "params": {}})
        assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "subject", reply
        missing = tmp_path / "no-such-subject"
        reply = error_reply(other, {"type": "submit", "kind": "fit_outfit", "params": {"subject": str(missing)}})
        assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "subject" and str(missing) in reply["message"]
        reply = error_reply(other, {"type": "submit", "kind": "fit_outfit", "params": {"subject": "relative/dir"}})
        assert reply["code"] == P.E_BAD_PARAMS and "absolute" in reply["message"], reply
        for drape in ("__import__('os').system('true')", str(tmp_path), str(tmp_path / "missing.pt")):
            reply = error_reply(other, {"type": "submit", "kind": "fit_outfit",
                                        "params": fit_params(subject, drape=drape)})
            assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "drape", reply
        reply = error_reply(other, {"type": "submit", "kind": "fit_outfit", "params": fit_params(subject, codes=0)})
        assert reply["field"] == "codes", reply
        reply = error_reply(other, {"type": "submit", "kind": "synth", "params": {"frames": "2; rm -rf /"}})
        assert reply["field"] == "frames", reply
        reply = error_reply(other, {"type": "submit", "kind": "body", "params": {"betaz": [1]}})
        assert reply["code"] == P.E_BAD_PARAMS and reply["field"] == "betaz", reply
        reply = error_reply(other, {"type": "submit", "kind": "body", "params": []})
        assert reply["code"] == P.E_BAD_PARAMS, reply
        reply = error_reply(other, {"type": "cancel", "job_id": "../../etc"})
        assert reply["code"] == P.E_UNKNOWN_JOB, reply
        assert other.request({"type": "ping"})["type"] == "pong"     # still served

        with Client(server.port) as big:       # over the size limit: ERROR, then that connection ends
            big.send_raw(b'{"type": "hello", "token": "' + b"x" * P.MAX_LINE_BYTES + b'"}\n')
            reply = big.wait_for(lambda m: True)
            assert reply["type"] == P.ERROR and reply["code"] == P.E_TOO_LARGE, reply
            assert big.closed_by_server()
        assert other.request({"type": "ping"})["type"] == "pong"

        events = worker.job_events(job_id)
        assert done_state(events) == P.STATE_DONE, events
        progress = [e for e in events if e["type"] == P.PROGRESS]
        assert progress and progress[0]["i"] <= 1 and progress[-1]["i"] == progress[-1]["n"] == 2, progress
        result = the(events, P.RESULT)
        assert set(result["files"]) == {"subject", "sheet"} and result["folder"] == job["out"]
        from pointwear.data.subject import read_subject
        made = read_subject(result["files"]["subject"])
        assert made.num_frames == 2 and made.image_size == (64, 64)
        assert Path(result["files"]["sheet"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads((Path(job["folder"]) / "job.json").read_text())
        assert record["state"] == P.STATE_DONE and record["files"] == result["files"]


# -- the queue -------------------------------------------------------------------------------------

def test_jobs_queue_one_at_a_time_in_order_and_a_queued_one_can_be_cancelled(server):
    with server.connect() as c:
        # Three submits in one write: the server reads them together, so none has started yet.
        submits = [{"type": "submit", "kind": "body", "params": {"betas": betas}, "id": f"s{k}"}
                   for k, betas in enumerate(([1.0, -0.5], None, [2.0]))]
        c.send_raw(b"".join(P.encode_line(m) for m in submits))
        replies = [c.wait_for(lambda m, k=k: m.get("id") == f"s{k}") for k in range(3)]
        assert [r["position"] for r in replies] == [0, 1, 2], replies
        first, second, third = (r["job_id"] for r in replies)

        ok = c.request({"type": "cancel", "job_id": third})
        assert ok["type"] == "ok" and ok["state"] == P.CANCELLED, ok
        third_events = c.job_events(third)
        assert done_state(third_events) == P.CANCELLED
        assert not [e for e in third_events if e.get("state") == P.RUNNING], third_events

        order = []
        for job_id in (first, second):
            events = c.job_events(job_id)
            assert done_state(events) == P.STATE_DONE, events
            body = np.load(the(events, P.RESULT)["files"]["body"])
            assert body["joints"].shape == (24, 3) and body["faces"].shape[1] == 3
            assert body["vertices"].shape == (body["weights"].shape[0], 3)
            order.append(body["betas"][0])
        assert order == [1.0, 0.0]
        # In order, one at a time: the second started only after the first ended.
        status = {j["job_id"]: j for j in c.request({"type": "status"})["jobs"]}
        assert status[second]["started"] >= status[first]["finished"]
        assert status[third]["state"] == P.CANCELLED and status[third]["started"] is None


# -- cancel and resume -------------------------------------------------------------------------------

def test_cancel_a_running_fit_keeps_its_checkpoint_and_resume_job_finishes_it(server, subject):
    with server.connect() as c:
        job = c.submit("fit_outfit", fit_params(subject, coarse_steps=40))
        job_id, out = job["job_id"], Path(job["out"])
        events = c.job_events(job_id, until=lambda m: m["type"] == P.PROGRESS and m["i"] >= 3)
        assert events[-1]["stage"] == "coarse" and events[-1]["i"] < 40, events
        previews = [e["preview"] for e in events if "preview" in e]
        assert previews, events           # the first step of a fit brings a preview
        assert Path(previews[-1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Path(previews[-1]).is_relative_to(Path(job["folder"]))

        assert c.request({"type": "cancel", "job_id": job_id})["cancelling"] is True
        events = c.job_events(job_id, timeout=30)
        assert done_state(events) == P.CANCELLED, events
        assert (out / "checkpoint.pt").is_file()
        assert "checkpoint kept" in [e for e in events if e["type"] == P.STATUS][-1]["message"]
        assert not (out / "outfit.npz").exists()

        resumed = c.submit("fit_outfit", {"resume_job": job_id})       # the same params, the same folder
        assert resumed["job_id"] != job_id and resumed["out"] == str(out)
        events = c.job_events(resumed["job_id"])
        assert done_state(events) == P.STATE_DONE, events
        assert any("resuming" in e.get("message", "") for e in events if e["type"] == P.STATUS), events
        progress = [e for e in events if e["type"] == P.PROGRESS]
        assert progress[0]["stage"] == "coarse" and progress[0]["i"] > 3, progress   # from the checkpoint on
        assert progress[-1]["stage"] == "fine" and progress[-1]["i"] == progress[-1]["n"] == 2, progress
        files = the(events, P.RESULT)["files"]
        assert {"outfit", "posed", "result_json", "ply"} <= set(files), files
        assert all(Path(f).is_file() and Path(f).parent == out for f in files.values())
        outfit = np.load(files["outfit"])
        assert outfit["points"].ndim == 2 and outfit["points"].shape[1] == 3 and np.isfinite(outfit["points"]).all()
        assert str(outfit["drape"]) == "parametric:tshirt-shorts"
        result = json.loads(Path(files["result_json"]).read_text())
        assert result["metrics"]["train"]["iou"] > 0
        assert [j for j in c.request({"type": "status", "job_id": job_id})["jobs"]][0]["state"] == P.CANCELLED


def test_warnings_of_a_fit_become_warn_events(server, subject, tmp_path):
    import shutil

    from PIL import Image
    soft = tmp_path / "soft-subject"
    shutil.copytree(subject, soft)
    mask = np.array(Image.open(soft / "masks" / "000001.png"))
    mask[: mask.shape[0] // 2] = np.where(mask[: mask.shape[0] // 2] > 0, 200, 100)   # not binary any more
    Image.fromarray(mask).save(soft / "masks" / "000001.png")
    with server.connect() as c:
        job = c.submit("fit_outfit", fit_params(soft, coarse_steps=1, fine_steps=1))
        events = c.job_events(job["job_id"])
    assert done_state(events) == P.STATE_DONE, events
    warns = [e for e in events if e["type"] == P.WARN]
    assert warns and "not binary" in warns[0]["message"], events


# -- restart and shutdown ------------------------------------------------------------------------------

def test_restart_finds_finished_jobs_and_shutdown_stops_the_server(tmp_path, subject):
    work = tmp_path / "work"
    first = ServerProcess(work, tmp_path / "first.log")
    try:
        with first.connect() as c:
            body = c.submit("body", {"betas": [0.5]})
            assert done_state(c.job_events(body["job_id"])) == P.STATE_DONE
            fit = c.submit("fit_outfit", fit_params(subject, coarse_steps=100000))
            c.job_events(fit["job_id"], until=lambda m: m["type"] == P.PROGRESS)
        first.proc.kill()                         # dies mid-fit: no chance to tidy up
        first.proc.wait(30)
    finally:
        first.kill()

    second = ServerProcess(work, tmp_path / "second.log")
    try:
        with second.connect() as c:
            jobs = {j["job_id"]: j for j in c.request({"type": "status"})["jobs"]}
            assert jobs[body["job_id"]]["state"] == P.STATE_DONE
            files = jobs[body["job_id"]]["files"]
            assert np.load(files["body"])["betas"][0] == 0.5
            assert jobs[fit["job_id"]]["state"] == P.INTERRUPTED
            # watch replays the end of a finished job
            assert c.request({"type": "watch", "job_id": body["job_id"]})["state"] == P.STATE_DONE
            events = c.job_events(body["job_id"])
            assert the(events, P.RESULT)["files"] == files and done_state(events) == P.STATE_DONE

            again = c.submit("fit_outfit", {"resume_job": fit["job_id"]})
            c.job_events(again["job_id"], until=lambda m: m["type"] == P.PROGRESS)
            assert c.request({"type": "shutdown"})["type"] == "bye"
            assert done_state(c.job_events(again["job_id"], timeout=60)) == P.CANCELLED
            assert c.closed_by_server(60)
        assert second.proc.wait(60) == 0, second.log_text()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", second.port), timeout=5).close()
        record = json.loads((Path(again["folder"]) / "job.json").read_text())
        assert record["state"] == P.CANCELLED and (Path(again["out"]) / "checkpoint.pt").is_file()
    finally:
        second.kill()


def test_server_stops_when_its_parent_is_killed(tmp_path):
    """A Blender killed with SIGKILL sends no shutdown: the backend watches --parent-pid."""
    starter = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-m', 'pointwear', 'serve', '--port', '0', '--work', sys.argv[1],"
        " '--threads', '1', '--parent-pid', str(__import__('os').getpid())], stdout=subprocess.PIPE)\n"
        "line = p.stdout.readline()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n")
    env = dict(os.environ, **{P.TOKEN_ENV: TOKEN})
    parent = subprocess.Popen([sys.executable, "-c", starter, str(tmp_path / "work")], stdout=subprocess.PIPE,
                              env=env)
    child = None
    try:
        ready, _, _ = select.select([parent.stdout], [], [], START_TIMEOUT)
        assert ready, "the starter never reported the server's pid"
        child = int(parent.stdout.readline())
        os.kill(child, 0)                         # the server runs
        parent.kill()
        parent.wait(30)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the server outlived its killed parent by 20 s")
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
