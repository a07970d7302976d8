# SPDX-License-Identifier: GPL-3.0-or-later
"""Socket client for the Pointwear backend (docs/protocol.md). Pure standard library: no bpy.

One :class:`BackendClient` holds one TCP connection. After :meth:`BackendClient.connect` (which
does the ``hello`` handshake) a daemon *reader thread* decodes every line the server sends:

- a direct reply to a request (matched by the ``id`` the client put in the request; replies that
  carry no ``id`` go to the oldest waiting request, as the server answers a connection in order)
  is handed to the caller blocked in that request, which never waits longer than its timeout;
- everything else (job events ``STATUS``/``PROGRESS``/``WARN``/``ERROR``/``RESULT``/``DONE``) goes
  into :attr:`BackendClient.events`, a thread-safe ``queue.Queue`` read by the owner (Blender's main
  thread polls it from a timer; a blocking caller waits on it).

A lost connection (server gone, socket error, a line the protocol forbids) is reported once, as a
client-side event ``{"type": "LOST", "message": ...}`` at the end of the queue; requests still
waiting then fail with :class:`BackendConnectionError` at once instead of running into their
timeout.
"""

from __future__ import annotations

import collections
import itertools
import queue
import select
import socket
import ssl
import threading

from . import protocol
from . import tls as _tls

# Client-side pseudo event: the connection ended. Never sent by the server.
EVENT_LOST = "LOST"

DEFAULT_TIMEOUT = 10.0     # scripts and background mode
UI_TIMEOUT = 2.0           # a request from Blender's UI thread: never freeze the UI longer
UI_CONNECT_TIMEOUT = 3.0   # connecting to a running backend from the UI
IO_TIMEOUT = 10.0          # a send that cannot complete in this time ends the connection
_RECV_CHUNK = 65536


class BackendError(Exception):
    """The backend refused something: carries the protocol ``ERROR`` fields.

    ``code`` is one of the protocol's error codes (``auth``, ``protocol``, ``bad_params``, ...),
    or a client-side one: ``connect`` (cannot reach the server), ``timeout``, ``lost``.
    """

    def __init__(self, message, code="error", hint="", reply=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint or ""
        self.reply = reply or {}

    def __str__(self):
        return self.message + (" ({})".format(self.hint) if self.hint else "")


class BackendConnectionError(BackendError):
    """No connection (refused, closed, lost) or no answer in time."""


_AUTH_HINT = ("The token does not match the backend's: set the token in Preferences > Add-ons > "
              "Pointwear (the backend prints it to its stderr, or writes it with --token-file), "
              "or let the add-on start its own backend (port 0)")
_PROTOCOL_HINT = "The add-on and the backend are different versions: install matching versions"
_FINGERPRINT_HINT = ("The backend's TLS certificate is not the one pinned in Preferences > Add-ons > "
                     "Pointwear: copy the fingerprint the backend printed (pointwear serve --tls "
                     "--show-fingerprint on the server); if it changed unexpectedly, do not connect")


def _error_from_reply(reply, what):
    """A BackendError for an ``ERROR`` reply to request ``what``."""
    code = str(reply.get("code") or "error")
    message = str(reply.get("message") or "the backend refused " + what)
    hint = str(reply.get("hint") or "")
    if code == "auth" and not hint:
        hint = _AUTH_HINT
    elif code == "protocol" and not hint:
        hint = _PROTOCOL_HINT
    return BackendError(message, code=code, hint=hint, reply=reply)


class _Pending:
    """One request waiting for its direct reply."""

    __slots__ = ("id", "what", "done", "reply", "error")

    def __init__(self, request_id, what):
        self.id = request_id
        self.what = what
        self.done = threading.Event()
        self.reply = None
        self.error = None


class BackendClient:
    """A connection to a running ``pointwear serve``.

    All request methods take a ``timeout`` (seconds) and raise :class:`BackendConnectionError`
    when no answer came in time or the connection is gone, and :class:`BackendError` when the
    server answered with an ``ERROR``.
    """

    def __init__(self, client_name="pointwear-blender"):
        self.client_name = client_name
        self.events = queue.Queue()
        self.hello = None           # the server's hello reply once connected
        self.host = None
        self.port = None
        self._sock = None
        self._reader = None
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending = []          # _Pending, oldest first
        self._ids = itertools.count(1)
        self._closed = False        # close() was called
        self._lost = None           # why the connection ended, once it has
        self._abort_reason = ""
        self.tls = False            # the connection is TLS with the pinned certificate

    # -- connection ------------------------------------------------------------------------

    @property
    def connected(self):
        return self._sock is not None and self._lost is None and not self._closed

    @property
    def lost_reason(self):
        return self._lost

    def connect(self, host, port, token, timeout=DEFAULT_TIMEOUT, fingerprint=None):
        """Open the connection and do the ``hello`` handshake; returns the server's hello reply.

        With ``fingerprint`` (the SHA-256 of the server's certificate, see :mod:`.tls`) the
        connection is TLS and the certificate must be that one, checked before the token is
        sent. Raises :class:`BackendConnectionError` (code ``connect``/``timeout``) when the
        server cannot be reached, :class:`BackendError` (code ``auth`` / ``protocol`` /
        ``fingerprint``) when it refuses or is not the pinned server.
        """
        if self._sock is not None:
            raise RuntimeError("BackendClient.connect called twice; make a new client")
        self.host, self.port = host, int(port)
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        except socket.timeout:
            raise BackendConnectionError(
                "No answer from the backend at {}:{} within {:g} s".format(host, port, timeout),
                code="timeout", hint="Check host and port in Preferences > Add-ons > Pointwear") from None
        except OSError as ex:
            raise BackendConnectionError(
                "Cannot connect to the backend at {}:{}: {}".format(host, port, ex.strerror or ex),
                code="connect",
                hint="Start the backend (pointwear serve) or set port 0 to let the add-on start one") from ex
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if fingerprint:
            sock = self._wrap_tls(sock, host, port, fingerprint)
        # The reader thread sits in recv() (waking every IO_TIMEOUT seconds to look again; close()
        # wakes it at once with shutdown()); the timeout bounds a send the server never reads.
        sock.settimeout(IO_TIMEOUT)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, name="pointwear-link-reader",
                                        daemon=True)
        self._reader.start()
        try:
            reply = self.request({"type": protocol.MSG_HELLO, "token": token or "",
                                  "protocol": protocol.PROTOCOL_VERSION,
                                  "client": self.client_name}, timeout=timeout)
        except BackendError:
            self.close()
            raise
        if reply.get("type") != protocol.REPLY_HELLO:
            self.close()
            raise BackendError("Unexpected answer to hello: {!r}".format(reply), code="protocol",
                               hint=_PROTOCOL_HINT, reply=reply)
        self.hello = reply
        return reply

    def _wrap_tls(self, sock, host, port, fingerprint):
        """TLS over ``sock``, its certificate checked against the pin (the socket is closed and
        BackendError raised when it is not the pinned one)."""
        try:
            _tls.normalize_fingerprint(fingerprint)
            tls_sock = _tls.client_context().wrap_socket(sock, server_hostname=None)
            der = tls_sock.getpeercert(binary_form=True)
        except ValueError as ex:
            sock.close()
            raise BackendError(str(ex), code=protocol.E_FINGERPRINT, hint=_FINGERPRINT_HINT) from None
        except (OSError, ssl.SSLError) as ex:
            sock.close()
            raise BackendConnectionError(
                "TLS with the backend at {}:{} failed: {}".format(host, port, ex), code="connect",
                hint="Is the backend started with --tls? Without it, leave the fingerprint empty "
                     "and use an SSH tunnel") from None
        if not der or not _tls.matches(der, fingerprint):
            tls_sock.close()
            raise BackendError(
                "The backend at {}:{} has certificate {}, not the pinned one".format(
                    host, port, _tls.fingerprint(der or b"")), code=protocol.E_FINGERPRINT,
                hint=_FINGERPRINT_HINT)
        self.tls = True
        return tls_sock

    def close(self):
        """Close the connection (idempotent); waiting requests fail, the reader thread ends."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass
        self._fail_pending("the connection was closed")
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- requests ----------------------------------------------------------------------------

    def request(self, message, timeout=DEFAULT_TIMEOUT):
        """Send ``message`` (a dict with ``type``) and wait for its direct reply (a dict).

        An ``ERROR`` reply raises :class:`BackendError`.
        """
        return self._finish(self._start(message, timeout), timeout)

    def request_stream(self, messages, window=8, timeout=DEFAULT_TIMEOUT):
        """Send requests without waiting for each reply, at most ``window`` unanswered (the
        server answers a connection in order); yields ``(message, reply)`` in order. An
        ``ERROR`` reply raises :class:`BackendError` once the requests still under way have
        been answered (their replies are dropped), so the connection stays in step."""
        inflight = collections.deque()
        try:
            for message in messages:
                inflight.append((message, self._start(message, timeout)))
                if len(inflight) >= window:
                    message, pending = inflight.popleft()
                    yield message, self._finish(pending, timeout)
            while inflight:
                message, pending = inflight.popleft()
                yield message, self._finish(pending, timeout)
        finally:
            for _message, pending in inflight:
                pending.done.wait(timeout)
                self._forget(pending)

    def _start(self, message, timeout):
        """Send a request; its _Pending (to wait on with _finish)."""
        message = dict(message)
        what = str(message.get("type"))
        pending = _Pending("c{}".format(next(self._ids)), what)
        message["id"] = pending.id
        with self._state_lock:
            if self._sock is None or self._closed or self._lost is not None:
                raise BackendConnectionError(
                    "Not connected to the backend" + (": " + self._lost if self._lost else ""),
                    code="lost", hint="Start the backend again")
            self._pending.append(pending)
        try:
            self._send(message, timeout)
        except BackendError:
            self._forget(pending)
            raise
        return pending

    def _finish(self, pending, timeout):
        """Wait for a request's reply; the reply, or BackendError."""
        what = pending.what
        if not pending.done.wait(timeout):
            self._forget(pending)
            raise BackendConnectionError(
                "The backend did not answer '{}' within {:g} s".format(what, timeout),
                code="timeout", hint="The backend may be overloaded or stuck; stop and start it")
        if pending.error is not None:
            raise BackendConnectionError("No answer to '{}': {}".format(what, pending.error),
                                         code="lost", hint="Start the backend again")
        reply = pending.reply
        if reply.get("type") == protocol.EVENT_ERROR:
            raise _error_from_reply(reply, what)
        return reply

    def submit(self, kind, params=None, timeout=DEFAULT_TIMEOUT):
        """Queue a job; returns its ``job_id``. Its events then arrive in :attr:`events`."""
        reply = self.request({"type": protocol.MSG_SUBMIT, "kind": kind, "params": dict(params or {})},
                             timeout=timeout)
        job_id = reply.get("job_id")
        if not job_id:
            raise BackendError("The backend accepted the job but sent no job_id: {!r}".format(reply),
                               code="protocol", reply=reply)
        return job_id

    def cancel(self, job_id, timeout=DEFAULT_TIMEOUT):
        return self.request({"type": protocol.MSG_CANCEL, "job_id": job_id}, timeout=timeout)

    def status(self, job_id=None, timeout=DEFAULT_TIMEOUT):
        """The server's job records (a list of dicts), all jobs or the one given."""
        message = {"type": protocol.MSG_STATUS}
        if job_id is not None:
            message["job_id"] = job_id
        return list(self.request(message, timeout=timeout).get("jobs") or [])

    def watch(self, job_id, timeout=DEFAULT_TIMEOUT):
        return self.request({"type": protocol.MSG_WATCH, "job_id": job_id}, timeout=timeout)

    def ping(self, timeout=DEFAULT_TIMEOUT):
        return self.request({"type": protocol.MSG_PING}, timeout=timeout)

    def shutdown(self, timeout=DEFAULT_TIMEOUT):
        """Ask the server to exit (its running job is cancelled, checkpoint kept)."""
        return self.request({"type": protocol.MSG_SHUTDOWN}, timeout=timeout)

    # -- events ------------------------------------------------------------------------------

    def get_event(self, timeout=None):
        """The next event, waiting up to ``timeout`` seconds (0: do not wait); None if none."""
        try:
            if timeout is not None and timeout <= 0:
                return self.events.get_nowait()
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain_events(self):
        """Every event queued so far (never waits)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    # -- internals ---------------------------------------------------------------------------

    def _send(self, message, timeout):
        data = protocol.encode_line(message)
        with self._send_lock:
            sock = self._sock
            if sock is None or self._closed:
                raise BackendConnectionError("Not connected to the backend", code="lost")
            try:
                sock.sendall(data)
            except OSError as ex:
                self._mark_lost("sending failed: {}".format(ex))
                raise BackendConnectionError("Lost the connection to the backend while sending "
                                             "'{}': {}".format(message.get("type"), ex), code="lost") from ex

    def _forget(self, pending):
        with self._state_lock:
            if pending in self._pending:
                self._pending.remove(pending)

    def _fail_pending(self, reason):
        with self._state_lock:
            pending, self._pending = self._pending, []
        for p in pending:
            p.error = reason
            p.done.set()

    def _mark_lost(self, reason):
        """Record the end of the connection once; queue the LOST event (not after close())."""
        with self._state_lock:
            if self._lost is not None:
                return
            self._lost = reason
            closed = self._closed
        self._fail_pending(reason)
        if not closed:
            self.events.put({"type": EVENT_LOST, "message": reason})

    def _take_pending(self, reply):
        """The waiting request a direct reply belongs to: by id, else the oldest one."""
        with self._state_lock:
            rid = reply.get("id")
            for p in self._pending:
                if rid is not None and p.id == rid:
                    self._pending.remove(p)
                    return p
            if rid is None and self._pending:
                return self._pending.pop(0)
        return None

    def _dispatch(self, message):
        kind = message.get("type")
        if kind in protocol.EVENT_TYPES and message.get("job_id") is not None \
                and not (kind == protocol.EVENT_ERROR and message.get("id") is not None):
            # A job event (an ERROR carrying our request id answers that request instead).
            self.events.put(message)
            return
        pending = self._take_pending(message)
        if pending is not None:
            pending.reply = message
            pending.done.set()
        elif kind == protocol.EVENT_ERROR:
            # An error nobody waits for (e.g. the reply to a request that timed out).
            self.events.put(message)

    def _read_loop(self):
        sock = self._sock
        lines = protocol.LineBuffer(protocol.MAX_LINE_BYTES)
        reason = "the backend closed the connection"
        try:
            while True:
                try:
                    chunk = self._recv_tls(sock) if self.tls else sock.recv(_RECV_CHUNK)
                except _NoData:
                    if self._closed:
                        break
                    continue
                except socket.timeout:
                    if self._closed:
                        break
                    continue  # an idle connection is fine
                except OSError as ex:
                    reason = "connection error: {}".format(ex)
                    break
                if not chunk:
                    break
                try:
                    received = lines.feed(chunk)
                except protocol.LineTooLong as ex:
                    received = ex.lines
                    reason = "the backend sent a line over {} bytes".format(protocol.MAX_LINE_BYTES)
                    for line in received:
                        self._dispatch_line(line)
                    break
                for line in received:
                    if not self._dispatch_line(line):
                        raise _Abort()
        except _Abort:
            reason = self._abort_reason
        except Exception as ex:  # never die silently: report it as the end of the connection
            reason = "link reader failed: {!r}".format(ex)
        if self._closed:
            self._fail_pending("the connection was closed")
            return
        self._mark_lost(reason)
        try:
            sock.close()
        except OSError:
            pass

    def _recv_tls(self, sock):
        """One read of a TLS socket: wait (unlocked) until bytes are there, then read them
        without blocking while holding the send lock, so a read and a write never run at once
        on the one SSL object. _NoData when nothing arrived (or only TLS housekeeping)."""
        if not sock.pending():
            ready, _, _ = select.select([sock], [], [], 1.0)
            if not ready:
                raise _NoData()
        with self._send_lock:
            sock.settimeout(0.0)
            try:
                return sock.recv(_RECV_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                raise _NoData() from None
            finally:
                if not self._closed:
                    sock.settimeout(IO_TIMEOUT)

    def _dispatch_line(self, line):
        """Decode and dispatch one line; False (and a reason) if the stream is unusable."""
        if not line.strip():
            return True
        try:
            message = protocol.decode_line(line)
        except ValueError as ex:
            self._abort_reason = "the backend sent a line that is not a JSON object: {}".format(ex)
            return False
        self._dispatch(message)
        return True


class _Abort(Exception):
    pass


class _NoData(Exception):
    pass
