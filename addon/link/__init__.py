# SPDX-License-Identifier: GPL-3.0-or-later
"""Link to the Pointwear backend: wire protocol, socket client, process launcher, session.

Pure Python: no bpy here (nor torch, nor the backend package ``pointwear``; numpy in
:mod:`.arrays` only, imported by nothing else here), so it can
be tested without Blender and protocol logic stays out of UI modules. The backend imports this
package too (as ``pointwear.link``) for the one protocol definition in :mod:`.protocol`.

- :mod:`.protocol` framing and names (newline-delimited UTF-8 JSON over TCP on 127.0.0.1)
- :mod:`.arrays`   bounded .npz reading and the one AMASS motion reader (numpy, which Blender and
  the backend both have; the other modules here are standard library only)
- :mod:`.client`   :class:`BackendClient`: handshake, reader thread, event queue, requests
- :mod:`.launcher` :class:`BackendLauncher`: ``<python> -m pointwear serve`` as a child process
- :mod:`.gpu`      :func:`nvidia_driver` (installer and `pointwear doctor`)
- :mod:`.session`  :class:`BackendSession`: launcher + client + job tracking, blocking ``wait``
- :mod:`.tls`      the pinned-certificate TLS of a backend on another machine
- :mod:`.transfer` upload of inputs / download of results over the protocol (:class:`RemoteFiles`)
"""

from .protocol import DEFAULT_HOST, MAX_LINE_BYTES, PROTOCOL_VERSION, decode_line, encode_line
from .client import EVENT_LOST, BackendClient, BackendConnectionError, BackendError
from .launcher import BackendLauncher, LaunchError
from .session import (
    STATE_BUSY,
    STATE_ERROR,
    STATE_NOT_FOUND,
    STATE_NOT_STARTED,
    STATE_READY,
    STATE_STARTING,
    BackendSession,
    JobState,
)

__all__ = [
    "DEFAULT_HOST", "MAX_LINE_BYTES", "PROTOCOL_VERSION", "decode_line", "encode_line",
    "EVENT_LOST", "BackendClient", "BackendConnectionError", "BackendError",
    "BackendLauncher", "LaunchError",
    "STATE_BUSY", "STATE_ERROR", "STATE_NOT_FOUND", "STATE_NOT_STARTED", "STATE_READY",
    "STATE_STARTING", "BackendSession", "JobState",
]
