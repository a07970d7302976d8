"""A seeded generator of hostile protocol lines, shared by tests/test_service_fuzz.py and
scripts/bench_service.py: random bytes, truncated JSON, deep nesting, lone surrogates, and every
client message type with fields of every wrong type (and some right ones) for every job kind.

Every line is one non-empty line under the size limit without `shutdown` or `hello` (those end or
re-authenticate a connection), so an authenticated server owes exactly one direct reply per line:
`is_direct_reply` tells those from job events."""
from __future__ import annotations

import json
import random

from pointwear.link import protocol as P

FIELDS = ("subject", "model", "body", "frames", "size", "codes", "seed", "drape", "template", "betas",
          "coarse_steps", "fine_steps", "motion", "up", "checkpoint", "result", "input", "every", "start",
          "end", "person", "focal", "masks", "sequence", "gender", "outfit", "epochs", "minutes", "vgg",
          "app", "camera", "resume_job", "points", "sheet", "frames_extra")
TYPES = tuple(t for t in P.CLIENT_TYPES if t not in (P.MSG_HELLO, P.MSG_SHUTDOWN))


def _value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(22)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice((True, False))
    if pick == 2:
        return rng.randint(-2**63, 2**63)
    if pick == 3:
        return rng.choice((0, 1, -1, 32, 64, 4096, 10**12, 2**53 + 1))
    if pick == 4:
        return rng.uniform(-1e308, 1e308)
    if pick == 5:
        return rng.choice(("", "default", "parametric", "neural", "auto", "z", "y", "neutral", "0-3", "0-60000000",
                           "1,2,x", "5-1", "-1", "1e9", "0x10", "٣", "1.5s", "00:01.5"))
    if pick == 6:
        # No existing folder: a fuzzed prepare must not scan a real tree for minutes.
        return rng.choice(("/etc/passwd", "/dev/zero", "/dev/null", "/proc/self/fd/0", "relative/path", "~x",
                           "/nonexistent/x.pkl", "/nonexistent/../etc/x", "C:\\\\x", "/" + "a" * 300))
    if pick == 7:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if pick == 8 and depth < 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if pick == 9 and depth < 3:
        return {rng.choice(FIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    if pick == 10:
        return [rng.random() for _ in range(rng.randrange(0, 400))]
    if pick == 11:
        return rng.choice(("20260101-000000-abcdef", "../../etc", "x" * 500, "20991231-235959-ffffff"))
    if pick == 12:
        return "x" * rng.randrange(1000, 20000)
    return rng.randint(-5, 5000)


def _message(rng: random.Random) -> dict:
    mtype = rng.choice(TYPES + ("nope", "", "SUBMIT"))
    message: dict = {"type": mtype, "id": rng.choice((f"f{rng.randrange(10**6)}", rng.randrange(10**6)))}
    if mtype == P.MSG_SUBMIT:
        message["kind"] = rng.choice(P.JOB_KINDS + ("nope", "", "__init__")) if rng.random() < 0.9 else _value(rng)
        message["params"] = ({f: _value(rng) for f in rng.sample(FIELDS, rng.randrange(0, 6))}
                             if rng.random() < 0.9 else _value(rng))
    elif mtype in (P.MSG_CANCEL, P.MSG_STATUS, P.MSG_WATCH):
        if rng.random() < 0.8:
            message["job_id"] = _value(rng)
    for _ in range(rng.randrange(0, 3)):
        message[rng.choice(FIELDS + ("type", "id", "kind", "params"))] = _value(rng)
    if message.get("type") in (P.MSG_HELLO, P.MSG_SHUTDOWN):
        message["type"] = P.MSG_PING
    return message


def _raw(rng: random.Random) -> bytes:
    pick = rng.randrange(8)
    if pick == 0:       # random bytes
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    elif pick == 1:     # truncated JSON
        text = json.dumps(_message(rng))
        data = text[: rng.randrange(1, max(2, len(text)))].encode()
    elif pick == 2:     # deep nesting
        depth = rng.choice((20, 33, 100, 1000, 5000))
        data = b'{"type":"ping","x":' + b"[" * depth + b"]" * depth + b"}"
    elif pick == 3:     # lone surrogates in a string
        where = rng.choice(("id", "kind", "job_id"))
        data = ('{"type":"%s","%s":"a\\ud800b"}' % (rng.choice(TYPES), where)).encode()
    elif pick == 4:     # not an object
        data = rng.choice((b"[]", b"1", b'"ping"', b"null", b"true", b"{}", b'{"type":null}'))
    elif pick == 5:     # invalid UTF-8 inside a JSON string
        data = b'{"type":"ping","id":"\xff\xfe"}'
    elif pick == 6:     # a huge number
        data = b'{"type":"submit","kind":"synth","params":{"size":1' + b"0" * 4000 + b"}}"
    else:
        data = json.dumps(_message(rng), allow_nan=True).encode()   # NaN / Infinity are not JSON
    data = data.replace(b"\n", b" ").replace(b"\r", b" ")
    return data if data.strip() else b"x"


def lines(seed: int, count: int) -> list[bytes]:
    """`count` hostile lines (each ending in a newline), the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.6:
            data = json.dumps(_message(rng), ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        else:
            data = _raw(rng)
        out.append(data + b"\n")
    return out


def is_direct_reply(message: dict) -> bool:
    """A reply to one request (or its ERROR), not a job event."""
    return message.get("type") in P.REPLIES or (message.get("type") == P.ERROR and "job_id" not in message)
