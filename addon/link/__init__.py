# SPDX-License-Identifier: GPL-3.0-or-later
"""Link to the Pointwear backend: socket client and wire protocol (docs/protocol.md).

Placeholder for the socket client. Pure Python: no bpy here (nor torch, nor the backend package
``pointwear``), so it can be tested without Blender and protocol logic stays out of UI modules.
The framing is fixed by the design: newline-delimited UTF-8 JSON over TCP on 127.0.0.1.
"""

import json

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"


def encode_line(message):
    """One message (a dict) as one newline-terminated line of UTF-8 JSON."""
    # json.dumps escapes control characters, so the payload never holds a raw newline.
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def decode_line(line):
    """The message (a dict) in one received line; ValueError if it is not a JSON object."""
    if isinstance(line, (bytes, bytearray)):
        line = bytes(line).decode("utf-8")
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("expected a JSON object per line, got " + type(message).__name__)
    return message
