"""The remote backend: `pointwear serve --tls` in its own process and work folder, and this test
process as the add-on on "another machine" (its own client folder), over real TLS sockets on
loopback with the add-on's own link package (addon/link, here as pointwear.link). No mocks.

Covered: the pinned certificate (a wrong fingerprint is refused before the token is sent), the
upload of a synthetic subject, a fit run on the server's copy and its results downloaded into the
client folder, an interrupted upload resumed (only the missing bytes sent), an interrupted
download continued, and every refusal of the transfer messages (paths outside, offsets, damaged
files, sizes)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import select
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointwear.link import protocol as P
from pointwear.link import tls as T
from pointwear.link import transfer as X
from pointwear.link.client import BackendClient, BackendError
from pointwear.link.session import BackendSession

TOKEN = "remote-test-token-" + os.urandom(8).hex()
START_TIMEOUT = 90.0
JOB_TIMEOUT = 120.0


class TlsServer:
    """`python -m pointwear serve --tls` on its own work folder; `info` is its listening line."""

    def __init__(self, work: Path, log: Path) -> None:
        env = {**os.environ, P.TOKEN_ENV: TOKEN}
        self.work, self.log = work, log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pointwear", "serve", "--port", "0", "--work", str(work), "--threads", "1",
             "--tls"], stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=str(work.parent))
        try:
            ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
            line = self.proc.stdout.readline() if ready else b""
            assert line, f"no listening line; log:\n{self.log_text()}"
            self.info = json.loads(line)
        except BaseException:
            self.kill()
            raise
        self.port, self.fingerprint = self.info["port"], self.info["fingerprint"]

    def log_text(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def client(self, fingerprint: str | None = None) -> BackendClient:
        c = BackendClient("pytest-remote")
        c.connect("127.0.0.1", self.port, TOKEN, timeout=30.0, fingerprint=fingerprint or self.fingerprint)
        return c

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(server work folder, client folder): separate trees, nothing shared."""
    base = tmp_path_factory.mktemp("remote")
    return base / "server" / "work", base / "client"


@pytest.fixture(scope="module")
def server(folders):
    work, _ = folders
    work.parent.mkdir(parents=True)
    srv = TlsServer(work, work.parent / "server.log")
    try:
        yield srv
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0, srv.log_text()
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def subject(folders) -> Path:
    from pointwear.cli import main
    out = folders[1] / "subjects" / "person"
    assert main(["synth", str(out), "--frames", "3", "--size", "96", "--outfit", "tshirt-shorts",
                 "--seed", "1", "--points", "1024"]) == 0
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _refusal(client: BackendClient, message: dict) -> BackendError:
    with pytest.raises(BackendError) as info:
        client.request(message, timeout=30.0)
    return info.value


# -- TLS -----------------------------------------------------------------------------------------

def test_certificate_made_once_and_pinned(server):
    cert, key = server.work / "tls" / "cert.pem", server.work / "tls" / "key.pem"
    assert server.info["tls"] is True
    assert T.fingerprint(ssl.PEM_cert_to_DER_cert(cert.read_text())) == server.fingerprint
    assert key.stat().st_mode & 0o077 == 0, oct(key.stat().st_mode)      # the key: this user only
    assert server.fingerprint in server.log_text()                       # printed for the user to pin
    shown = subprocess.run([sys.executable, "-m", "pointwear", "serve", "--tls", "--show-fingerprint", "--work",
                            str(server.work)], capture_output=True, text=True, timeout=START_TIMEOUT)
    assert shown.stdout.strip() == server.fingerprint, shown                # the same certificate, kept
    with server.client() as c:
        assert c.tls and c.ping()["type"] == P.REPLY_PONG


def test_wrong_fingerprint_refused_before_the_token(server):
    wrong = "AB:" * 31 + "AB"
    before = server.log_text()
    with pytest.raises(BackendError) as info:
        server.client(fingerprint=wrong)
    assert info.value.code == P.E_FINGERPRINT and server.fingerprint in info.value.message
    with pytest.raises(BackendError) as info:        # not a fingerprint at all
        server.client(fingerprint="not-a-fingerprint")
    assert info.value.code == P.E_FINGERPRINT
    plain = BackendClient("pytest-plain")             # no TLS: the server does not talk to it
    with pytest.raises(BackendError):
        plain.connect("127.0.0.1", server.port, TOKEN, timeout=10.0)
    plain.close()
    assert "token" not in server.log_text()[len(before):]    # no hello ever reached the server
    with server.client() as c:                         # and it still serves
        assert c.ping()["type"] == P.REPLY_PONG


def test_fingerprint_forms():
    fp = T.fingerprint(b"certificate bytes")
    assert len(fp) == 95 and T.normalize_fingerprint(fp) == hashlib.sha256(b"certificate bytes").hexdigest()
    assert T.normalize_fingerprint("SHA256 Fingerprint=" + fp.lower()) == T.normalize_fingerprint(fp)
    assert T.matches(b"certificate bytes", fp.replace(":", " ")) and not T.matches(b"other", fp)
    for bad in ("", "AB:CD", fp + ":00", "zz" * 32):
        with pytest.raises(ValueError):
            T.normalize_fingerprint(bad)


# -- a job on a remote backend ---------------------------------------------------------------------

def test_subject_uploaded_fit_remotely_results_downloaded(server, subject, folders):
    work, client_root = folders
    session = BackendSession("pytest-remote-session")
    assert session.connect("127.0.0.1", server.port, TOKEN, timeout=30.0, fingerprint=server.fingerprint,
                           transfer_root=str(client_root / "results")), session.message
    try:
        job = session.submit("fit_outfit", {"subject": str(subject), "drape": "parametric",
                                            "template": "tshirt-shorts", "codes": 1, "coarse_steps": 3,
                                            "fine_steps": 2})
        job = session.wait(job.job_id, timeout=JOB_TIMEOUT)
        assert job.done and job.state == P.STATE_DONE, (job.error, server.log_text()[-3000:])
        # the server fitted its own copy of the subject, inside its work folder
        record = session.status(job.job_id)[0]
        remote_subject = Path(record["params"]["subject"])
        assert remote_subject.is_relative_to(work / "uploads") and remote_subject.name == "person"
        for f in subject.rglob("*"):
            if f.is_file():
                assert _sha(remote_subject / f.relative_to(subject)) == _sha(f)
        # and the results came back into the client folder, byte for byte
        local_out = Path(job.folder)
        assert local_out.is_relative_to(client_root / "results" / job.job_id)
        assert set(job.files) >= {"outfit", "posed", "body", "result_json"}
        for name, local in job.files.items():
            local, remote = Path(local), Path(record["files"][name])
            assert local.is_file() and local.is_relative_to(local_out), name
            assert remote.is_relative_to(work) and _sha(local) == _sha(remote), name
        assert not list(local_out.rglob("*.part"))
        # the fit's preview came down too (the server keeps only its newest few)
        assert Path(job.preview).is_file() and Path(job.preview).is_relative_to(client_root / "results")
        # a download broken off is continued from its .part; a damaged one is refused
        outfit, want = Path(job.files["outfit"]), _sha(Path(job.files["outfit"]))
        data = outfit.read_bytes()
        outfit.unlink()
        Path(str(outfit) + ".part").write_bytes(data[: len(data) // 2])
        X.download(session.client, record["files"]["outfit"], str(outfit.parent))
        assert _sha(outfit) == want
        outfit.unlink()
        Path(str(outfit) + ".part").write_bytes(b"\0" * (len(data) // 2))
        with pytest.raises(BackendError) as info:
            X.download(session.client, record["files"]["outfit"], str(outfit.parent))
        assert info.value.code == P.E_CHECKSUM and not Path(str(outfit) + ".part").exists()
    finally:
        session.stop()


def test_upload_on_a_worker_thread_then_submit_or_cancel(server, subject, folders):
    """What the add-on does in the UI: the job exists at once (stage "upload"), is submitted
    once its files are up, and takes its real id; cancelled while uploading, it never reaches
    the backend."""
    work, client_root = folders
    session = BackendSession("pytest-remote-async")
    assert session.connect("127.0.0.1", server.port, TOKEN, timeout=30.0, fingerprint=server.fingerprint,
                           transfer_root=str(client_root / "results-async"))
    try:
        params = {"subject": str(subject), "drape": "parametric", "template": "tshirt-shorts", "codes": 1,
                  "coarse_steps": 2, "fine_steps": 1}
        job = session.submit("fit_outfit", params, upload_async=True)
        assert job.job_id.startswith("upload-") and job.stage == "upload" and not job.done
        job = session.wait(job.job_id, timeout=JOB_TIMEOUT)
        assert job.state == P.STATE_DONE and not job.job_id.startswith("upload-"), (job, job.error)
        assert session.jobs[job.job_id] is job and Path(job.files["outfit"]).is_file()
        assert job.params == params                                   # the local paths
        # cancelled during its upload: ends here, nothing submitted
        big = client_root / "big-subject"
        big.mkdir()
        (big / "blob.bin").write_bytes(os.urandom(64 << 20))
        before = len(session.status())
        job = session.submit("fit_outfit", {**params, "subject": str(big)}, upload_async=True)
        assert session.cancel(job.job_id)
        job = session.wait(job.job_id, timeout=JOB_TIMEOUT)
        assert job.done and job.state == P.CANCELLED and job.job_id.startswith("upload-"), job
        assert len(session.status()) == before
        # a failed upload (the file is gone meanwhile... here: unreadable) fails the job here
        (big / "blob.bin").chmod(0)
        if not os.access(big / "blob.bin", os.R_OK):                   # (root reads anything)
            job = session.wait(session.submit("fit_outfit", {**params, "subject": str(big)},
                                              upload_async=True).job_id, timeout=JOB_TIMEOUT)
            assert job.state == P.FAILED and job.error["code"] == "upload", job.error
    finally:
        session.stop()


# -- uploads ------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def test_interrupted_upload_resumes(server, folders):
    src = folders[1] / "big-input"
    (src / "frames").mkdir(parents=True)
    (src / "frames" / "a.bin").write_bytes(os.urandom(12 * P.CHUNK_BYTES + 1234))
    (src / "b.txt").write_text("small file\n")
    (src / "empty").write_bytes(b"")
    total = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())

    def stop_after_two_chunks(done, _total):
        if done >= 2 * P.CHUNK_BYTES:
            raise _Stop()
    with server.client() as c, pytest.raises(_Stop):     # the connection is then dropped
        X.upload(c, str(src), progress=stop_after_two_chunks, window=2)
    with server.client() as c:
        files = X.manifest(str(src))
        had = sum(c.request({"type": P.MSG_UPLOAD_BEGIN, "files": files})["have"].values())
        assert 2 * P.CHUNK_BYTES < had < total - 4 * P.CHUNK_BYTES    # what arrived before the break
        result = X.upload(c, str(src))
        assert result["sent"] == total - had and result["total"] == total, result   # only what was missing
        remote = Path(result["path"])
        assert remote.is_relative_to(server.work / "uploads") and remote.name == "big-input"
        for f in src.rglob("*"):
            if f.is_file():
                assert _sha(remote / f.relative_to(src)) == _sha(f)
        assert not (server.work / "uploads" / f"{result['upload_id']}.partial").exists()   # renamed into place
        again = X.upload(c, str(src))                                   # content-addressed: done
        assert again["sent"] == 0 and again["path"] == result["path"]
        one = X.upload(c, str(src / "b.txt"))                            # a single file
        assert Path(one["path"]).read_text() == "small file\n"


def test_transfer_refusals(server, folders):
    good = {"path": "x/a.bin", "size": 10, "sha256": hashlib.sha256(b"0123456789").hexdigest()}
    with server.client() as c:
        for path in ("../evil", "/etc/passwd", "a/../../b", "a//b", "a\\b", "./a", "a/\x00"):
            err = _refusal(c, {"type": P.MSG_UPLOAD_BEGIN, "files": [{**good, "path": path}]})
            assert err.code == P.E_BAD_PATH, (path, err.reply)
        err = _refusal(c, {"type": P.MSG_UPLOAD_BEGIN, "files": [good, {**good, "path": "x"}]})
        assert err.code == P.E_BAD_PATH                               # "x" a file and a folder
        err = _refusal(c, {"type": P.MSG_UPLOAD_BEGIN, "files": [{**good, "size": P.MAX_UPLOAD_BYTES + 1}]})
        assert err.code == P.E_TOO_BIG
        err = _refusal(c, {"type": P.MSG_UPLOAD_BEGIN, "files": [{**good, "size": -1}]})
        assert err.code == P.E_BAD_MESSAGE and err.reply["field"] == "files"
        # a chunk out of place, past the declared size, of a file not in the upload
        uid = c.request({"type": P.MSG_UPLOAD_BEGIN, "files": [good]})["upload_id"]
        chunk = {"type": P.MSG_UPLOAD_CHUNK, "upload_id": uid, "path": "x/a.bin"}
        err = _refusal(c, {**chunk, "offset": 5, "data": base64.b64encode(b"56789").decode()})
        assert err.code == P.E_BAD_OFFSET and err.reply["expected"] == 0
        err = _refusal(c, {**chunk, "offset": 0, "data": base64.b64encode(b"x" * 11).decode()})
        assert err.code == P.E_TOO_BIG
        err = _refusal(c, {**chunk, "path": "x/other", "offset": 0, "data": ""})
        assert err.code == P.E_BAD_PATH
        err = _refusal(c, {**chunk, "upload_id": "../../etc", "offset": 0, "data": ""})
        assert err.code == P.E_UNKNOWN_UPLOAD
        # damaged content: named by upload_end, removed, then asked for again from 0
        c.request({**chunk, "offset": 0, "data": base64.b64encode(b"0123456780").decode()})
        err = _refusal(c, {"type": P.MSG_UPLOAD_END, "upload_id": uid})
        assert err.code == P.E_CHECKSUM and err.reply["files"] == ["x/a.bin"]
        assert c.request({"type": P.MSG_UPLOAD_BEGIN, "files": [good]})["have"] == {}
        c.request({**chunk, "offset": 0, "data": base64.b64encode(b"0123456789").decode()})
        done = c.request({"type": P.MSG_UPLOAD_END, "upload_id": uid})
        assert (Path(done["folder"]) / "x" / "a.bin").read_bytes() == b"0123456789"
        # downloads: only below the job and upload folders, never the TLS key
        for path in ("/etc/passwd", str(server.work / "tls" / "key.pem"), str(server.work / "uploads" / ".." / ".."),
                     "../../../etc/passwd", str(server.work / "nothing-here")):
            for mtype in (P.MSG_LIST, P.MSG_DOWNLOAD):
                err = _refusal(c, {"type": mtype, "path": path})
                assert err.code == P.E_BAD_PATH, (mtype, path, err.reply)
        link = server.work / "uploads" / done["upload_id"] / "x" / "escape"
        link.symlink_to(server.work / "tls" / "key.pem")
        assert _refusal(c, {"type": P.MSG_DOWNLOAD, "path": str(link)}).code == P.E_BAD_PATH
        listing = c.request({"type": P.MSG_LIST, "path": done["folder"]})
        assert [e["path"] for e in listing["files"]] == ["x/a.bin"]     # the link is not listed
        assert c.ping()["type"] == P.REPLY_PONG                           # and the connection goes on


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab./\\\x00 é")), max_size=12))
def test_rel_path_checker_never_leaves_its_root(path):
    try:
        clean = X.check_rel_path(path)
    except ValueError:
        return
    joined = posixpath.join("/root", clean)
    assert posixpath.normpath(joined) == joined and joined.startswith("/root/")


def test_beyond_loopback_a_short_token_is_refused(tmp_path):
    env = {**os.environ, P.TOKEN_ENV: "short-token"}
    proc = subprocess.run([sys.executable, "-m", "pointwear", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--work", str(tmp_path / "work"), "--tls"], capture_output=True, text=True, env=env,
                          timeout=START_TIMEOUT)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert f"at least {P.MIN_REMOTE_TOKEN_CHARS} characters" in proc.stderr, proc.stderr
    assert not (tmp_path / "work" / "tls").exists()          # refused before anything was made
