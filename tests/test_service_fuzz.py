"""The fuzz and fault suite (bounded, loopback only): >= 10,000 generated hostile lines over the
real socket, unauthenticated and oversized lines, a file-size limit in the server process (a disk
that refuses writes, no root needed), and corrupt and oversized files of every format the backend
reads. Figures for the same generator: scripts/bench_service.py -> docs/reliability.md."""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fuzz_messages import is_direct_reply, lines
from pointwear.link import protocol as P
from test_server import REPLY_TIMEOUT, TOKEN, ServerProcess, done_state
from test_service_limits import ndarray_bomb, read_files, sparse_bomb

FUZZ_MESSAGES = 10_000
FUZZ_CONNECTIONS = 8
BATCH = 250                        # lines sent before their replies are read (pipelined)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-server")
    # No synth can start (every estimate is over 1 MiB), at most one job waits.
    srv = ServerProcess(base / "work", base / "server.log",
                        args=("--max-queued", "1", "--memory-limit-mb", "1"))
    try:
        yield srv
    finally:
        srv.stop(signal.SIGTERM)


def _fuzz_connection(port: int, batch_lines: list[bytes], outcome: dict) -> None:
    """Send the lines in pipelined batches; count direct replies; note hangs and closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
    buffer = P.LineBuffer(P.MAX_LINE_BYTES)
    try:
        sock.sendall(P.encode_line({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION}))
        pending = 1
        for start in range(0, len(batch_lines) + 1, BATCH):
            chunk = batch_lines[start:start + BATCH]
            sock.sendall(b"".join(chunk))
            pending += len(chunk)
            while pending:
                try:
                    data = sock.recv(1 << 16)
                except socket.timeout:
                    outcome["hangs"] += 1
                    return
                if not data:
                    outcome["closed"] += 1
                    return
                for line in buffer.feed(data):
                    message = P.decode_line(line)
                    if is_direct_reply(message):
                        pending -= 1
                        outcome["replies"] += 1
                        if message["type"] == P.ERROR:
                            outcome["codes"][message["code"]] = outcome["codes"].get(message["code"], 0) + 1
    finally:
        sock.close()


def fuzz(port: int, seed: int, count: int, connections: int) -> dict:
    """Run `count` generated lines over `connections` authenticated connections at once."""
    all_lines = lines(seed, count)
    outcome = {"replies": 0, "hangs": 0, "closed": 0, "codes": {}}
    share = -(-count // connections)
    threads = [threading.Thread(target=_fuzz_connection, args=(port, all_lines[k * share:(k + 1) * share], outcome))
               for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REPLY_TIMEOUT * 10)
    outcome["sent"] = count + connections            # the hellos are answered too
    return outcome


def test_ten_thousand_fuzzed_messages_each_get_one_reply_and_the_server_lives(server):
    outcome = fuzz(server.port, seed=13, count=FUZZ_MESSAGES, connections=FUZZ_CONNECTIONS)
    assert outcome["hangs"] == 0 and outcome["closed"] == 0, outcome
    assert outcome["replies"] == outcome["sent"], outcome
    assert {P.E_BAD_JSON, P.E_BAD_MESSAGE, P.E_BAD_PARAMS, P.E_UNKNOWN_JOB} <= set(outcome["codes"]), outcome
    assert server.proc.poll() is None
    with server.connect() as c:
        assert c.request({"type": "ping"})["type"] == P.REPLY_PONG
        status = c.request({"type": "status"})
        for job in status["jobs"]:
            if job["state"] in P.ACTIVE_STATES:
                c.request({"type": "cancel", "job_id": job["job_id"]})
    assert "Traceback" not in server.log_text(), server.log_text()[-4000:]


def test_unauthenticated_and_oversized_lines_are_answered_then_closed(server):
    rng = random.Random(7)
    for line in lines(8, 60):
        with socket.create_connection(("127.0.0.1", server.port), timeout=REPLY_TIMEOUT) as s:
            s.sendall(line)
            reply = P.decode_line(s.recv(1 << 16).split(b"\n")[0])
            assert reply["type"] == P.ERROR and reply["code"] in (P.E_AUTH, P.E_BAD_JSON), reply
    for _ in range(5):
        with server.connect() as c:
            size = P.MAX_LINE_BYTES + rng.randrange(1, 100_000)
            c.send_raw(b'{"type":"ping","x":"' + b"a" * size + b'"}\n')
            reply = c.wait_for(lambda m: m["type"] == P.ERROR)
            assert reply["code"] == P.E_TOO_LARGE and c.closed_by_server()
    assert server.proc.poll() is None


# -- a disk that refuses writes (no root needed) -----------------------------------------------------

def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_file_size_limit_fails_the_job_with_disk_full_and_the_server_goes_on(tmp_path):
    """RLIMIT_FSIZE on the server process: every write past 64 KiB fails with EFBIG (Python ignores
    SIGXFSZ), as a full quota would. job.json fits; body.npz (about 1 MB) does not."""
    srv = ServerProcess(tmp_path / "work", tmp_path / "server.log", preexec_fn=_file_size_limit(64 << 10))
    try:
        with srv.connect() as c:
            for _ in range(2):
                job = c.submit(P.KIND_BODY, {})["job_id"]
                events = c.job_events(job)
                assert done_state(events) == P.FAILED and events[-2]["type"] == P.STATUS, events
                error = [e for e in events if e["type"] == P.ERROR][0]
                assert error["code"] == P.E_DISK_FULL and error["file"].endswith(P.BODY_NPZ), error
            assert c.request({"type": "ping"})["type"] == P.REPLY_PONG
            assert not list((tmp_path / "work" / "jobs").glob(f"*/out/.{Path(P.BODY_NPZ).stem}*"))
    finally:
        srv.stop(signal.SIGTERM)


# -- corrupt and oversized files of every format ------------------------------------------------------



def _zeros_npz(path: Path, **shapes) -> Path:
    """An .npz of compressed zero arrays: a small file that inflates to the given shapes."""
    np.savez_compressed(path, **{k: np.zeros(s, np.float32) for k, s in shapes.items()})
    return path


def _bomb_png(path: Path, side: int = 30000) -> Path:
    """A tiny PNG whose header declares side x side pixels (the zlib stream is nearly empty)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))
    return path


def _corrupt_cases(tmp: Path, subject: Path) -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []

    def subject_with(name: str, edit) -> None:
        folder = tmp / f"subject-{name}"
        shutil.copytree(subject, folder)
        edit(folder)
        cases.append(("subject", str(folder)))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    subject_with("json-garbage", lambda f: (f / "subject.json").write_bytes(b"\xff{" * 10))
    subject_with("json-huge-frames", lambda f: (f / "subject.json").write_text(
        json.dumps({**json.loads((subject / "subject.json").read_text()), "frames": 10**12})))
    subject_with("json-huge-size", lambda f: (f / "subject.json").write_text(
        json.dumps({**json.loads((subject / "subject.json").read_text()), "image_size": [10**6, 10**6]})))
    subject_with("frame-truncated", lambda f: truncate(f / "frames" / "000000.png"))
    subject_with("mask-truncated", lambda f: truncate(f / "masks" / "000002.png"))
    subject_with("frame-garbage", lambda f: (f / "frames" / "000001.png").write_bytes(os.urandom(3000)))
    subject_with("frame-bomb", lambda f: _bomb_png(f / "frames" / "000001.png"))
    subject_with("mask-bomb", lambda f: _bomb_png(f / "masks" / "000001.png"))
    subject_with("smpl-truncated", lambda f: truncate(f / "smpl.npz"))
    subject_with("smpl-betas-bomb", lambda f: _zeros_npz(
        f / "smpl.npz", betas=(1_000_000,), global_orient=(3, 3), body_pose=(3, 69), transl=(3, 3), K=(3, 3, 3),
        image_size=(2,)))
    subject_with("smpl-pose-bomb", lambda f: _zeros_npz(
        f / "smpl.npz", betas=(10,), global_orient=(3, 3), body_pose=(100_000, 69), transl=(3, 3),
        K=(3, 3, 3), image_size=(2,)))

    files = {
        "model": [ndarray_bomb(tmp / "bomb.pkl"), sparse_bomb(tmp / "sparse.pkl"),
                  _zeros_npz(tmp / "model-bomb.npz", v_template=(12_000_000, 3))],
        "motion": [_zeros_npz(tmp / "motion-bomb.npz", poses=(250_000, 72), trans=(250_000, 3)),
                   _zeros_npz(tmp / "motion-rate.npz", poses=(4, 72), trans=(4, 3), mocap_framerate=(2,))],
        "camera": [_zeros_npz(tmp / "camera-bomb.npz", K=(200_000, 3, 3), image_size=(2,),
                              camera_from_world=(4, 4))],
        "outfit": [],
        "drape_checkpoint": [],
        "appearance": [],
        "bvh": [],
    }
    outfit = tmp / "outfit-bomb"
    outfit.mkdir()
    _zeros_npz(outfit / P.OUTFIT_NPZ, points=(3_000_000, 3), weights=(1, 24), code=(8,), drape=(1,), betas=(10,))
    files["outfit"].append(outfit)
    for name in ("drape_checkpoint", "appearance"):
        empty, garbage, zipped = tmp / f"{name}-empty.pt", tmp / f"{name}-garbage.pt", tmp / f"{name}-zip.pt"
        empty.write_bytes(b"")
        garbage.write_bytes(os.urandom(5000))
        with zipfile.ZipFile(zipped, "w") as z:        # a torch-like zip holding a pickle that runs code
            z.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
            z.writestr("archive/version", "3\n")
        files[name] += [empty, garbage, zipped]
    bvh = tmp / "huge.bvh"
    bvh.write_text("HIERARCHY\nROOT a\n{\nOFFSET 0 0 0\nCHANNELS 6 Xposition Yposition Zposition Zrotation "
                   "Xrotation Yrotation\nEnd Site\n{\nOFFSET 0 0 1\n}\n}\nMOTION\nFrames: 999999999\n"
                   "Frame Time: 0.0333\n0 0 0 0 0 0\n")
    truncated_bvh = tmp / "truncated.bvh"
    truncated_bvh.write_text("HIERARCHY\nROOT a\n{\nOFFSET 0 0")
    files["bvh"] += [bvh, truncated_bvh, tmp / "bomb.pkl"]
    for reader, paths in files.items():
        cases += [(reader, str(p)) for p in paths]
    cases += [("addon_motion", str(tmp / "motion-bomb.npz")), ("addon_motion", str(tmp / "motion-rate.npz"))]
    png = subject / "frames" / "000000.png"
    video = tmp / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))      # a video header, then noise
    half = tmp / "half.png"
    half.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    cases += [("prepare_input", str(_bomb_png(tmp / "input-bomb.png"))), ("prepare_input", str(half)),
              ("prepare_input", str(video))]
    fifo = tmp / "fifo.npz"
    os.mkfifo(fifo)
    cases += [("motion", str(fifo)), ("camera", str(fifo)), ("model", str(fifo)), ("addon_npz", str(fifo))]
    return cases


@pytest.fixture(scope="module")
def small_subject(tmp_path_factory) -> Path:
    from pointwear.cli import main
    out = tmp_path_factory.mktemp("fuzz-subject") / "subject"
    assert main(["synth", str(out), "--frames", "3", "--size", "48", "--outfit", "tshirt-shorts",
                 "--seed", "3", "--points", "512"]) == 0
    return out


def test_corrupt_and_oversized_files_of_every_format_fail_by_name_within_memory(tmp_path, small_subject):
    cases = _corrupt_cases(tmp_path, small_subject)
    results = read_files(cases)
    bad = []
    for r in results:
        named = r.get("file") and (r["file"].startswith(r["path"]) or r["path"].startswith(r["file"]))
        if r.get("ok") or "MemoryError" in (r.get("error") or "") + r.get("message", "") or not named:
            bad.append(r)
    assert not bad, json.dumps(bad, indent=1)
    assert not Path("pwned").exists()
