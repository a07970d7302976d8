"""`pointwear serve`: the asyncio TCP server of docs/protocol.md.

Connections, the `hello` handshake (a per-launch token compared in constant time), message
dispatch and the size limit live here; jobs and their queue in jobs.py, job kinds in kinds.py.
A bad message gets an ERROR and the connection goes on (except after auth, protocol and
too_large errors, which close that one connection); an exception while handling one client
never reaches the others or the queue."""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..link import protocol as P
from .jobs import JobQueue, JobStore, WorkFolderBusy, WorkLock, io_error, log, write_token_file
from .kinds import KINDS, ParamError, SubmitContext, validate, warm_up
from .remote import RemoteSetup
from .transfer import Transfers

DEFAULT_WORK = "~/.cache/pointwear/work"
READ_CHUNK = 65536
MAX_BACKLOG_BYTES = 32 << 20       # a client that reads nothing while this piles up is dropped
STOP_TIMEOUT_S = 30.0              # how long shutdown waits for the running job to stop
DISCARD_AFTER_TOO_LARGE_S = 2.0    # read (and drop) the rest of an oversized line this long


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 if the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass
class ServerLimits:
    """Every limit of `pointwear serve` in one place (docs/reliability.md). Over a limit, a
    request is refused with an ERROR code (busy, queue_full, memory_limit), never half done."""
    max_connections: int = P.MAX_CONNECTIONS
    max_preauth: int = P.MAX_PREAUTH_CONNECTIONS     # connections that have not said hello
    hello_timeout_s: float = P.HELLO_TIMEOUT_S
    max_queued: int = P.MAX_QUEUED_JOBS
    memory_bytes: int = 0        # a job whose estimate is over this is refused; 0: 3/4 of the RAM
    memory_fraction: float = 0.75
    fd_reserve: int = 256        # descriptors kept for jobs' own files beyond the connections
    accept_burst: int = 32       # listen backlog: asyncio accepts up to this many sockets at once,
                                 # before any is counted or dropped, so they need descriptors too

    def memory_budget(self) -> int:
        env = os.environ.get("POINTWEAR_MEMORY_LIMIT_MB")
        if env and env.isdigit():
            return int(env) << 20
        return self.memory_bytes or int(physical_memory() * self.memory_fraction) or (8 << 30)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards `wanted` (within the hard limit); the limit now."""
    try:
        import resource
    except ImportError:        # Windows: no RLIMIT_NOFILE
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class BadRequest(Exception):
    def __init__(self, code: str, message: str, hint: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.field = code, message, hint, field


class Connection:
    """One client. `send` never blocks: lines go to the transport's buffer (flushed by asyncio)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.authed = False
        self.since = time.monotonic()
        self.client = ""
        self.watching: set = set()      # Job objects whose events reach this connection
        self.closed = False

    def send(self, message: dict) -> None:
        if self.closed or self.writer.is_closing():
            return
        data = P.encode_line(message)
        if len(data) > P.MAX_LINE_BYTES:   # never send what the other side must refuse
            data = P.encode_line(P.error_message(
                P.E_INTERNAL, f"a {message.get('type')} message over {P.MAX_LINE_BYTES} bytes was not sent",
                id=message.get("id"), job_id=message.get("job_id")))
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            log(f"{self.peer}: dropped, it does not read what it is sent")
            self.closed = True
            self.writer.transport.abort()

    async def close(self) -> None:
        self.closed = True
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (OSError, asyncio.TimeoutError):
            pass


class Server:
    def __init__(self, host: str, port: int, work: Path, token: str, device: str, threads: int | None,
                 limits: ServerLimits | None = None, ssl_context=None) -> None:
        self.host, self.port, self.work, self.token = host, port, Path(work), token
        self.device, self.threads = device, threads
        self.limits = limits or ServerLimits()
        self.store = JobStore(self.work)
        self.conns: set[Connection] = set()
        self.stopping = False
        self._stop = asyncio.Event()
        self.queue: JobQueue | None = None
        self.parent_pid: int | None = None
        self.started_by = os.getppid()
        self.handlers = {P.MSG_HELLO: self.on_hello, P.MSG_SUBMIT: self.on_submit, P.MSG_CANCEL: self.on_cancel,
                         P.MSG_STATUS: self.on_status, P.MSG_WATCH: self.on_watch, P.MSG_PING: self.on_ping,
                         P.MSG_SHUTDOWN: self.on_shutdown}
        self.ssl_context = ssl_context
        self.handlers.update(Transfers(self.work).handlers())

    # -- life cycle ------------------------------------------------------------------------------
    async def run(self, announce=None) -> int:
        loop = asyncio.get_running_loop()
        self.store.scan()
        warm_up()
        self.queue = JobQueue(self.store, KINDS, self.publish, self.device, self.threads, self.limits.max_queued)
        lim = self.limits
        fds = raise_fd_limit(lim.max_connections + lim.accept_burst + lim.fd_reserve)
        if fds < lim.max_connections + lim.accept_burst + lim.fd_reserve:   # a low hard limit: share it
            lim.max_connections = max(8, fds - min(lim.fd_reserve, fds // 2) - lim.accept_burst)
            lim.max_preauth = min(lim.max_preauth, max(4, lim.max_connections // 4))
            log(f"open-file limit {fds}: at most {lim.max_connections} connections")
        server = await asyncio.start_server(self.on_connect, self.host, self.port, limit=READ_CHUNK,
                                            ssl=self.ssl_context, backlog=lim.accept_burst)
        self.port = server.sockets[0].getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        queue_task = asyncio.create_task(self.queue.run_forever())
        watch_task = asyncio.create_task(self.watch_parent()) if self.parent_pid else None
        if announce:
            announce(self)
        try:
            await self._stop.wait()
        finally:
            server.close()                   # the port is closed from here on
            await self.queue.stop(STOP_TIMEOUT_S)
            for conn in list(self.conns):
                await conn.close()
            queue_task.cancel()
            if watch_task is not None:
                watch_task.cancel()
            try:
                await server.wait_closed()
            except Exception:
                pass
        log("stopped")
        return 0

    async def watch_parent(self, every_s: float = 1.0) -> None:
        """Stop when the process that started us is gone: a Blender that crashed or was killed
        never sends `shutdown`, and an orphaned backend would hold the device and the port."""
        while not self.stopping:
            await asyncio.sleep(every_s)
            try:
                os.kill(self.parent_pid, 0)
                gone = self.parent_pid == self.started_by and os.getppid() != self.started_by  # reparented
            except ProcessLookupError:
                gone = True
            except PermissionError:   # alive, owned by someone else
                gone = False
            if gone:
                self.request_stop(f"parent process {self.parent_pid} is gone")

    def request_stop(self, reason: str) -> None:
        if not self.stopping:
            log(f"stopping ({reason})")
        self.stopping = True
        self._stop.set()

    def on_signal(self, sig: int) -> None:
        if self.stopping:                    # a second signal: give up waiting
            log(f"{signal.Signals(sig).name} again: exiting now")
            os._exit(1)
        self.request_stop(signal.Signals(sig).name)

    def publish(self, job, event: dict) -> None:
        """An event of `job` to every connection watching it (loop thread)."""
        event = {**event, "job_id": job.job_id}
        for conn in list(job.watchers):
            conn.send(event)

    # -- connections -----------------------------------------------------------------------------
    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        if not self.make_room():
            conn.send(P.error_message(P.E_BUSY, f"too many connections ({len(self.conns)}); try again",
                                      "close idle connections"))
            await conn.close()
            return
        self.conns.add(conn)
        try:
            await self.serve_connection(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log(f"{conn.peer}: connection failed:\n{traceback.format_exc()}")
        finally:
            for job in conn.watching:
                job.watchers.discard(conn)
            conn.watching.clear()
            self.conns.discard(conn)
            await conn.close()

    def make_room(self) -> bool:
        """Room for one more connection? Connections that have not said hello yet are capped: the
        oldest is dropped (with a busy ERROR) for a new one, so idle or slow clients can hold
        neither the descriptors nor the door: a client that says hello at once always gets in."""
        waiting = sorted((c for c in self.conns if not c.authed and not c.closed), key=lambda c: c.since)
        while waiting and (len(waiting) >= self.limits.max_preauth
                           or len(self.conns) >= self.limits.max_connections):
            oldest = waiting.pop(0)
            oldest.send(P.error_message(P.E_BUSY, "dropped: no hello while others wait to connect",
                                        "say hello at once after connecting"))
            oldest.closed = True
            oldest.writer.close()
            self.conns.discard(oldest)
        return len(self.conns) < self.limits.max_connections

    async def serve_connection(self, conn: Connection) -> None:
        buffer = P.LineBuffer(P.MAX_LINE_BYTES)
        deadline = time.monotonic() + self.limits.hello_timeout_s
        while not conn.closed:
            try:
                if conn.authed:
                    chunk = await conn.reader.read(READ_CHUNK)
                else:
                    chunk = await asyncio.wait_for(conn.reader.read(READ_CHUNK), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                conn.send(P.error_message(P.E_AUTH, f"no hello within {self.limits.hello_timeout_s:g} s"))
                return
            if not chunk:
                return
            try:
                lines = buffer.feed(chunk)
            except P.LineTooLong as exc:
                for line in exc.lines:
                    if not self.handle_line(conn, line):
                        return
                conn.send(P.error_message(P.E_TOO_LARGE, str(exc),
                                          "send large data as files and their paths; this connection is closed"))
                await self.discard_input(conn)
                return
            for line in lines:
                if not self.handle_line(conn, line):
                    return

    async def discard_input(self, conn: Connection) -> None:
        """After too_large: end our side (the client reads the ERROR, then EOF) and drop what it
        still sends for a moment, so closing does not reset the connection under its ERROR."""
        try:
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
            end = time.monotonic() + DISCARD_AFTER_TOO_LARGE_S
            while (left := end - time.monotonic()) > 0:
                if not await asyncio.wait_for(conn.reader.read(READ_CHUNK), left):
                    break
        except (OSError, asyncio.TimeoutError):
            pass

    def handle_line(self, conn: Connection, line: bytes) -> bool:
        """Answer one line; False: close the connection."""
        if not line.strip():
            return True
        try:
            message = P.decode_line(line)
        except ValueError as exc:
            conn.send(P.error_message(P.E_BAD_JSON, f"not a JSON object: {str(exc)[:200]}",
                                      "one JSON object per line, UTF-8, ending in a newline"))
            return conn.authed
        rid = message.get("id")
        rid = rid if (isinstance(rid, (str, int)) and not isinstance(rid, bool) and len(str(rid)) <= 200
                      and P.find_surrogate(rid) is None) else None
        mtype = message.get("type")
        if not conn.authed and mtype != P.MSG_HELLO:
            conn.send(P.error_message(P.E_AUTH, "the first message must be hello with the token", id=rid))
            return False
        bad_text = P.find_surrogate(message)
        if bad_text is not None and mtype != P.MSG_HELLO:
            # A lone surrogate cannot be written to job.json or sent back as UTF-8: refuse it here.
            conn.send(P.error_message(P.E_BAD_MESSAGE, f"{bad_text}: text with a lone UTF-16 surrogate",
                                      "send valid Unicode text", id=rid, field=bad_text))
            return True
        handler = self.handlers.get(mtype) if isinstance(mtype, str) else None
        try:
            if handler is None:
                raise BadRequest(P.E_BAD_MESSAGE, f"unknown message type {str(mtype)[:60]!r}",
                                 f"types: {list(P.CLIENT_TYPES)}", field="type")
            reply = handler(conn, message, rid)
        except BadRequest as exc:
            # A request's ERROR carries its id, never a job_id: job_id marks job events.
            conn.send(P.error_message(exc.code, exc.message, exc.hint, id=rid, field=exc.field))
            return exc.code not in P.CLOSING_CODES
        except Exception as exc:
            log(f"{conn.peer}: {mtype} failed:\n{traceback.format_exc()}")
            conn.send(P.error_message(P.E_INTERNAL, f"{type(exc).__name__}: {exc}"[:4000], id=rid))
            return True
        if reply is not None:
            conn.send(_with_id(reply, rid))
        return True

    # -- messages --------------------------------------------------------------------------------
    def on_hello(self, conn: Connection, msg: dict, rid) -> dict:
        token = msg.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8", "surrogatepass"),
                                                                 self.token.encode("utf-8")):
            log(f"{conn.peer}: refused, {'no' if not token else 'wrong'} token")
            raise BadRequest(P.E_AUTH, "missing or wrong token",
                             "use the token of this server launch (POINTWEAR_TOKEN, --token-file or its stderr)")
        version = msg.get("protocol")
        if version != P.PROTOCOL_VERSION or isinstance(version, bool):
            raise BadRequest(P.E_PROTOCOL, f"this server speaks protocol {P.PROTOCOL_VERSION}, the client {version!r}",
                             "install matching versions of the add-on and the backend")
        conn.authed = True
        client = msg.get("client")
        conn.client = client[:100] if isinstance(client, str) and P.find_surrogate(client) is None else ""
        return {"type": P.REPLY_HELLO, "server": __version__, "protocol": P.PROTOCOL_VERSION,
                "device": self.device, "kinds": sorted(KINDS), "work": str(self.work), "pid": os.getpid(),
                "max_line_bytes": P.MAX_LINE_BYTES}

    def _job(self, msg: dict, required: bool = True):
        job_id = msg.get("job_id")
        if job_id is None and not required:
            return None
        job = self.store.get(job_id)
        if job is None:
            raise BadRequest(P.E_UNKNOWN_JOB, f"no such job: {str(job_id)[:80]!r}", "status lists the jobs",
                             field="job_id")
        return job

    def on_submit(self, conn: Connection, msg: dict, rid) -> None:
        if self.stopping:
            raise BadRequest(P.E_SHUTTING_DOWN, "the server is shutting down")
        kind_name, params = msg.get("kind"), msg.get("params", {})
        if not isinstance(kind_name, str):
            raise BadRequest(P.E_BAD_MESSAGE, "submit needs a kind (a string)", field="kind")
        kind = KINDS.get(kind_name)
        if kind is None:
            raise BadRequest(P.E_UNKNOWN_KIND, f"unknown job kind {kind_name[:60]!r}", f"kinds: {sorted(KINDS)}",
                             field="kind")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise BadRequest(P.E_BAD_PARAMS, "params must be a JSON object", field="params")
        if self.queue.full:
            raise BadRequest(P.E_QUEUE_FULL, f"{len(self.queue.waiting)} jobs wait already",
                             "wait for some to finish, or cancel some")
        try:
            checked = validate(kind, params, SubmitContext(self.store))
        except ParamError as exc:
            raise BadRequest(P.E_BAD_PARAMS, f"{kind_name}: {exc.field}: {exc.message}", exc.hint,
                             field=exc.field) from None
        budget = self.limits.memory_budget()
        if checked.memory > budget:
            raise BadRequest(P.E_MEMORY_LIMIT,
                             f"{kind_name} would need about {checked.memory / 2**30:.1f} GiB, over this server's "
                             f"{budget / 2**30:.1f} GiB", f"lower {checked.memory_field}",
                             field=checked.memory_field)
        try:
            job = self.store.new(kind_name, checked.params, out=checked.out, resumed_from=checked.resumed_from)
        except OSError as exc:
            err = io_error(exc)
            raise BadRequest(err["code"], f"the job's record cannot be written: {err['message']}",
                             err["hint"], field=None) from None
        job.watchers.add(conn)
        conn.watching.add(job)
        position = self.queue.submit(job)
        conn.send(_with_id({"type": P.REPLY_SUBMITTED, "job_id": job.job_id, "position": position,
                            "folder": str(job.folder), "out": str(job.out)}, rid))
        self.publish(job, {"type": P.STATUS, "state": P.QUEUED,
                           "message": "runs now" if position == 0 else f"waits for {position} job(s)"})
        return None

    def on_cancel(self, conn: Connection, msg: dict, rid) -> None:
        job = self._job(msg)
        was = job.state
        reply = _with_id({"type": P.REPLY_OK, "job_id": job.job_id, "state": was}, rid)
        if was == P.RUNNING:
            reply["cancelling"] = True
        elif was == P.QUEUED:
            reply["state"] = P.CANCELLED
        conn.send(reply)                 # the reply first, then the job's own events
        self.queue.cancel(job)
        return None

    def on_status(self, conn: Connection, msg: dict, rid) -> dict:
        job = self._job(msg, required=False)
        jobs = [job] if job is not None else self.store.all()
        records = []
        for j in jobs:
            rec = j.record()
            if j.state == P.QUEUED:
                rec["position"] = self.queue.position(j)
            records.append(rec)
        reply = {"type": P.REPLY_STATUS, "jobs": records,
                 P.RUNNING: self.queue.running.job_id if self.queue.running else None,
                 P.QUEUED: [j.job_id for j in self.queue.waiting]}
        # Keep the reply under the line limit: the newest jobs first.
        while len(records) > 1 and len(P.encode_line(reply)) > P.MAX_LINE_BYTES - 256:
            drop = max(1, len(records) // 4)
            reply["truncated"] = reply.get("truncated", 0) + drop
            del records[:drop]
        return reply

    def on_watch(self, conn: Connection, msg: dict, rid) -> None:
        job = self._job(msg)
        job.watchers.add(conn)
        conn.watching.add(job)
        conn.send(_with_id({"type": P.REPLY_OK, "job_id": job.job_id, "state": job.state}, rid))
        if job.final:                    # the end of a finished job again, so DONE is always seen
            if job.state == P.STATE_DONE:
                conn.send({"type": P.RESULT, "job_id": job.job_id, "folder": str(job.out), "files": job.files})
            elif job.state == P.FAILED and job.error:
                conn.send({"type": P.ERROR, "job_id": job.job_id, **job.error})
            conn.send({"type": P.DONE, "job_id": job.job_id, "state": job.state})
        return None

    def on_ping(self, conn: Connection, msg: dict, rid) -> dict:
        return {"type": P.REPLY_PONG, "time": time.time()}

    def on_shutdown(self, conn: Connection, msg: dict, rid) -> None:
        conn.send(_with_id({"type": P.REPLY_BYE}, rid))
        self.request_stop(f"shutdown asked by {conn.peer}")
        return None


def _with_id(reply: dict, rid) -> dict:
    """A direct reply echoes the request's id (when it had a usable one)."""
    return reply if rid is None else {**reply, "id": rid}


def serve(host: str = P.DEFAULT_HOST, port: int = 0, work: str | Path | None = None,
          token_file: str | Path | None = None, device: str = "auto", threads: int | None = None,
          parent_pid: int | None = None, limits: ServerLimits | None = None, tls: bool = False) -> int:
    """Run the server until `shutdown`, SIGTERM or SIGINT; 0 on a clean stop, 2 if it cannot start."""
    import torch

    from ..device import pick_device
    if host == "localhost":
        host = "127.0.0.1"          # one address, so port 0 gives one port
    try:
        dev = pick_device(device).type
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 2
    if threads:
        torch.set_num_threads(threads)
    work = Path(work or DEFAULT_WORK).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    lock = WorkLock(work)
    try:
        lock.acquire()
    except WorkFolderBusy as exc:
        log(f"error: {exc}; give this server its own folder with --work")
        return P.EXIT_WORK_IN_USE
    token = os.environ.get(P.TOKEN_ENV) or ""
    from_env = bool(token)
    remote = RemoteSetup(host, work, tls, token)
    if not remote.check():
        return 2
    token = token or secrets.token_urlsafe(32)
    token_path = Path(token_file).expanduser().resolve() if token_file else None
    if token_path:
        write_token_file(token_path, token)
    elif not from_env:
        log(f"token {token}")

    def announce(server: Server) -> None:
        line = {"event": "listening", "host": server.host, "port": server.port, "pid": os.getpid(),
                "device": dev, "protocol": P.PROTOCOL_VERSION, "version": __version__, "work": str(work),
                **remote.announce()}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        try:   # nothing else may reach stdout: a launcher reads one line, then maybe never again
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            sys.stdout = sys.stderr
        log(f"listening on {server.host}:{server.port} (device {dev}, work {work}, pid {os.getpid()})")

    server = Server(host, port, work, token, dev, threads, limits, ssl_context=remote.context())
    server.parent_pid = parent_pid
    try:
        return asyncio.run(server.run(announce))
    except OSError as exc:
        log(f"error: cannot listen on {host}:{port}: {exc}")
        return 2
    finally:
        lock.release()
        if token_path:
            token_path.unlink(missing_ok=True)
