"""Reliability figures of `pointwear serve` -> docs/reliability.md (the machine noted).

1. Fuzz: N generated hostile lines (tests/fuzz_messages.py, seeded) over C authenticated
   connections, pipelined: replies owed vs received, hangs (no reply within 30 s), closed
   connections, server crashes (the process gone), lines per second.
2. Ping latency under load: 200 open authenticated connections and a running fit_outfit; a fresh
   connection pings K times one after another: p50 / p95 / max round trip.

Usage: .venv/bin/python scripts/bench_service.py [--messages 20000] [--pings 200] [--out docs/reliability.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdoc import machine, write_section  # noqa: E402
from fuzz_messages import is_direct_reply, lines  # noqa: E402
from pointwear.link import protocol as P  # noqa: E402

TOKEN = "bench-" + os.urandom(8).hex()
TIMEOUT = 30.0


def start_server(work: Path, *args: str) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, P.TOKEN_ENV: TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "pointwear", "serve", "--port", "0", "--work", str(work),
                             "--threads", "1", *args], stdout=subprocess.PIPE, stderr=open(work.parent / "server.log", "ab"),
                            env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    if not ready:
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, json.loads(proc.stdout.readline())["port"]


def connect(port: int) -> tuple[socket.socket, P.LineBuffer]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = P.LineBuffer()
    sock.sendall(P.encode_line({"type": "hello", "token": TOKEN, "protocol": P.PROTOCOL_VERSION}))
    reply = read_reply(sock, buf)
    assert reply["type"] == P.REPLY_HELLO, reply
    return sock, buf


def read_reply(sock: socket.socket, buf: P.LineBuffer, backlog: list | None = None) -> dict:
    backlog = backlog if backlog is not None else []
    while True:
        for k, m in enumerate(backlog):
            if is_direct_reply(m):
                return backlog.pop(k)
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("closed")
        backlog.extend(P.decode_line(line) for line in buf.feed(data))


def fuzz(port: int, messages: int, connections: int, seed: int) -> dict:
    out = {"sent": messages, "replies": 0, "hangs": 0, "closed": 0}
    all_lines = lines(seed, messages)
    share = -(-messages // connections)
    lock = threading.Lock()

    def run(chunk: list[bytes]) -> None:
        sock, buf = connect(port)
        got = hang = closed = 0
        try:
            for start in range(0, len(chunk), 250):
                batch = chunk[start:start + 250]
                sock.sendall(b"".join(batch))
                owed = len(batch)
                while owed:
                    try:
                        data = sock.recv(1 << 16)
                    except socket.timeout:
                        hang += 1
                        return
                    if not data:
                        closed += 1
                        return
                    for line in buf.feed(data):
                        if is_direct_reply(P.decode_line(line)):
                            owed -= 1
                            got += 1
        finally:
            sock.close()
            with lock:
                out["replies"] += got
                out["hangs"] += hang
                out["closed"] += closed

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(all_lines[k * share:(k + 1) * share],)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["seconds"] = time.perf_counter() - t0
    return out


def ping_under_load(port: int, subject: Path, connections: int, pings: int) -> dict:
    idle = [connect(port)[0] for _ in range(connections)]
    sock, buf = connect(port)
    backlog: list = []
    sock.sendall(P.encode_line({"type": "submit", "id": "fit", "kind": P.KIND_FIT_OUTFIT,
                                "params": {"subject": str(subject), "drape": "parametric", "template": "tshirt-shorts",
                                           "codes": 1, "coarse_steps": 1_000_000}}))
    job = read_reply(sock, buf, backlog)
    assert job["type"] == P.REPLY_SUBMITTED, job
    deadline = time.monotonic() + 120
    while not any(m.get("type") == P.PROGRESS for m in backlog) and time.monotonic() < deadline:
        backlog.extend(P.decode_line(line) for line in buf.feed(sock.recv(1 << 16)))
    times = []
    for k in range(pings):
        t0 = time.perf_counter()
        sock.sendall(P.encode_line({"type": "ping", "id": f"p{k}"}))
        reply = read_reply(sock, buf, backlog)
        times.append((time.perf_counter() - t0) * 1000)
        assert reply["type"] == P.REPLY_PONG, reply
        backlog = [m for m in backlog if not m.get("job_id")]
        time.sleep(0.02)
    sock.sendall(P.encode_line({"type": "cancel", "id": "c", "job_id": job["job_id"]}))
    read_reply(sock, buf, backlog)
    for s in idle:
        s.close()
    sock.close()
    times.sort()
    return {"connections": connections + 1, "pings": pings, "p50_ms": statistics.median(times),
            "p95_ms": times[int(0.95 * (len(times) - 1))], "max_ms": times[-1]}


def write_doc(path: Path, fuzz_out: dict, crashed: bool, ping: dict, args) -> None:
    rate = fuzz_out["sent"] / fuzz_out["seconds"]
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    body = f"""Run {time.strftime('%Y-%m-%d')} on {machine()}, {ram:.0f} GiB RAM, {platform.system()}; the cores are
shared with other work, so figures vary between runs.

| figure | value |
|---|---|
| fuzzed lines sent (seed {args.seed}, {args.connections} connections, pipelined 250 at a time) | {fuzz_out['sent']} |
| direct replies received | {fuzz_out['replies']} |
| hangs (a reply not within {TIMEOUT:g} s) | {fuzz_out['hangs']} |
| connections closed by the server | {fuzz_out['closed']} |
| server crashes | {int(crashed)} |
| fuzz throughput | {rate:.0f} lines/s ({fuzz_out['seconds']:.1f} s) |
| ping round trip, {ping['connections']} open connections + a running fit_outfit: p50 | {ping['p50_ms']:.2f} ms |
| the same: p95 | {ping['p95_ms']:.2f} ms |
| the same: max ({ping['pings']} pings) | {ping['max_ms']:.2f} ms |
"""
    write_section("Measured (scripts/bench_service.py)", body, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--load-connections", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pointwear-bench-service-") as tmp:
        tmp = Path(tmp)
        subject = tmp / "subject"
        subprocess.run([sys.executable, "-m", "pointwear", "synth", str(subject), "--frames", "3", "--size", "64",
                        "--outfit", "tshirt-shorts", "--points", "1024"], check=True, capture_output=True)
        (tmp / "work").mkdir()
        proc, port = start_server(tmp / "work", "--max-queued", "1", "--memory-limit-mb", "1")
        try:
            fuzz_out = fuzz(port, args.messages, args.connections, args.seed)
            crashed = proc.poll() is not None
            print("fuzz", fuzz_out, "crashed", crashed)
            ping = ping_under_load(port, subject, args.load_connections, args.pings)
            print("ping", ping)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    write_doc(Path(args.out), fuzz_out, crashed, ping, args)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
