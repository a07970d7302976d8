# SPDX-License-Identifier: GPL-3.0-or-later
"""Link to the Pointwear backend: wire protocol (socket client and launcher to follow).

Pure Python: no bpy here (nor torch, nor numpy, nor the backend package ``pointwear``). The
backend imports this package too (as ``pointwear.link``) for the one protocol definition in
:mod:`.protocol`.
"""

from .protocol import DEFAULT_HOST, MAX_LINE_BYTES, PROTOCOL_VERSION, decode_line, encode_line

__all__ = ["DEFAULT_HOST", "MAX_LINE_BYTES", "PROTOCOL_VERSION", "decode_line", "encode_line"]
