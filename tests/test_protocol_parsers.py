"""Property tests of the protocol's parsers (addon/link/protocol.py, shared by the add-on, the CLI
and the server): the frame-list parser, the nesting-depth scan, the lone-surrogate finder and the
encoder's UTF-8 guarantee."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointwear.link import protocol as P

ranges = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 50)), min_size=1, max_size=20)


@given(ranges)
def test_parse_frames_expands_ranges_to_the_sorted_distinct_frames(parts):
    text = ",".join(f"{a}-{a + n}" if n else str(a) for a, n in parts)
    expected = sorted({f for a, n in parts for f in range(a, a + n + 1)})
    assert P.parse_frames(text) == expected
    assert P.parse_frames(" " + text.replace(",", " , ") + ",") == expected
    assert P.parse_frames(expected) == expected


@given(st.integers(P.MAX_FRAMES, 10 * P.MAX_FRAME_NUMBER), st.integers(0, 1000))
def test_parse_frames_refuses_more_than_the_limit_without_expanding(hi, lo):
    with pytest.raises(ValueError):
        P.parse_frames(f"{lo}-{lo + hi}")


@given(st.text(max_size=30))
def test_parse_frames_accepts_only_its_syntax(text):
    try:
        frames = P.parse_frames(text)
    except ValueError:
        return
    assert frames is None or (all(isinstance(f, int) and 0 <= f <= P.MAX_FRAME_NUMBER for f in frames)
                              and frames == sorted(set(frames)) and len(frames) <= P.MAX_FRAMES)


def _nested(depth: int, leaf) -> object:
    value = leaf
    for k in range(depth):
        value = [value] if k % 2 else {"k": value, "s": "[{\"]"}
    return value


@given(st.integers(0, 80), st.text(max_size=10))
def test_json_depth_matches_the_real_nesting(depth, leaf):
    text = json.dumps({"type": "ping", "x": _nested(depth, leaf)})
    assert P.json_depth(text) == (depth + 1 <= P.MAX_JSON_DEPTH)
    if depth + 1 > P.MAX_JSON_DEPTH:
        with pytest.raises(ValueError):
            P.decode_line(text.encode())


@settings(max_examples=200)
@given(st.recursive(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFFFF), max_size=8)
                    | st.integers() | st.none(),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
                    max_leaves=20))
def test_surrogates_are_found_and_every_line_encodes_to_utf8(value):
    message = {"type": "status", "v": value}
    line = P.encode_line(message)
    line.decode("utf-8")                                     # always valid UTF-8
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert P.decode_line(line) == message                    # and lossless
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        has_surrogate = False
    except UnicodeEncodeError:
        has_surrogate = True
    assert (P.find_surrogate(message) is not None) == has_surrogate
