"""Jobs of `pointwear serve`: the record of one piece of work and its folder (`Job`), the store
that persists records as `WORK/jobs/<job_id>/job.json` and finds them again after a restart
(`JobStore`), what a running job sees (`JobContext`: params, output folder, progress, warnings,
cancel flag, previews) and the queue that runs one job at a time in a worker thread (`JobQueue`).

Threads: everything here runs on the event loop's thread except `JobContext`'s reporting
methods and the job itself, which run in the worker thread; they reach the loop only through
`loop.call_soon_threadsafe`."""
from __future__ import annotations

import asyncio
import collections
import errno
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import PointwearError
from ..fileio import atomic_path, save_text
from ..link import protocol as P

if TYPE_CHECKING:
    import numpy as np

JOB_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
PROGRESS_INTERVAL_S = 0.2      # at most ~5 PROGRESS events per second per job (first/last of a stage always)
PREVIEWS_KEPT = 3              # newest preview PNGs kept per job (a client may still be reading one)
MESSAGE_CHARS = 4000           # error and warning texts are cut to this length


def log(message: str) -> None:
    print(f"pointwear serve: {message}", file=sys.stderr, flush=True)


def _clip(text: str) -> str:
    text = str(text)
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + " [...]"


@dataclass(frozen=True)
class JobKind:
    """A job kind: `validate(Params, SubmitContext) -> dict | Validated` (kinds.py; on the event
    loop, cheap checks only), `run(JobContext) -> {name: path}` (in the worker thread) and
    `memory(params) -> (peak bytes, the parameter driving it)` when the kind has an estimate.
    Defined here, below kinds.py, so the queue needs nothing from the kinds module."""
    name: str
    validate: Callable[..., Any]
    run: Callable[["JobContext"], dict[str, Path]]
    description: str = ""
    memory: Callable[[dict], tuple[int, str]] | None = None


class JobCancelled(Exception):
    """Raised inside a job when its cancel flag is seen; the job ends in state `cancelled`."""


@dataclass(eq=False)   # identity: jobs live in sets (a connection's watched jobs)
class Job:
    job_id: str
    kind: str
    params: dict
    folder: Path                     # WORK/jobs/<job_id>: job.json, preview/, out/ (usually)
    out: Path                        # where results go: folder/out, or a resumed job's out folder
    state: str = P.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    files: dict[str, str] = field(default_factory=dict)
    error: dict | None = None
    message: str = ""
    resumed_from: str | None = None
    # runtime only (never persisted)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    watchers: set = field(default_factory=set, repr=False, compare=False)

    def record(self) -> dict:
        """The job as `status` reports it and job.json stores it."""
        return {"job_id": self.job_id, "kind": self.kind, "state": self.state, "params": self.params,
                "folder": str(self.folder), "out": str(self.out), "created": self.created,
                "started": self.started, "finished": self.finished, "files": self.files,
                "error": self.error, "message": self.message, "resumed_from": self.resumed_from}

    @classmethod
    def from_record(cls, data: dict, folder: Path) -> "Job":
        """A job from its job.json. Its `out` must be a folder under WORK/jobs (a job's own `out`
        or, for a resumed job, the earlier job's): anything else is refused (a tampered record
        must not send results elsewhere)."""
        if not isinstance(data, dict) or data.get("job_id") != folder.name:
            raise ValueError("job_id does not match the folder name")
        state = data.get("state")
        if state not in P.JOB_STATES:
            raise ValueError(f"unknown state {state!r}")
        out = confined_out(data.get("out"), folder)
        return cls(job_id=folder.name, kind=str(data.get("kind")), params=dict(data.get("params") or {}),
                   folder=folder, out=out, state=state,
                   created=float(data.get("created") or 0.0), started=data.get("started"),
                   finished=data.get("finished"), files={str(k): str(v) for k, v in (data.get("files") or {}).items()},
                   error=data.get("error"), message=str(data.get("message") or ""),
                   resumed_from=data.get("resumed_from"))

    @property
    def final(self) -> bool:
        return self.state in P.FINAL_STATES


def confined_out(value: Any, folder: Path) -> Path:
    """A job record's `out`: WORK/jobs/<some job id>/out, else ValueError."""
    if value is None:
        return folder / "out"
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"out is not a path: {str(value)[:80]!r}")
    root = folder.parent.resolve()
    out = Path(value)
    resolved = out.resolve() if out.is_absolute() else Path("/nonexistent")
    if (resolved.parent.parent != root or resolved.name != "out"
            or not JOB_ID_RE.match(resolved.parent.name)):
        raise ValueError(f"out {value[:200]!r} is not the out folder of a job in {root}")
    return resolved


class WorkFolderBusy(RuntimeError):
    """Another `pointwear serve` holds the work folder's lock."""


class WorkLock:
    """An exclusive lock on WORK/server.lock for the life of the server: a second server on the
    same folder is refused (it would mark the first's running jobs interrupted and write into
    their folders). The OS drops the lock when the process ends, even on kill -9."""

    def __init__(self, work: Path) -> None:
        self.path = Path(work) / "server.lock"
        self._fh = None

    def acquire(self) -> None:
        fh = open(self.path, "a+")
        try:
            _lock_file(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read(200).strip() or "unknown"
            fh.close()
            raise WorkFolderBusy(f"the work folder {self.path.parent} is in use by another pointwear serve "
                                 f"({holder})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()      # closing drops the lock
            self._fh = None


def _lock_file(fh) -> None:
    """Lock an open file exclusively without waiting (OSError if another process holds it)."""
    try:
        import fcntl
    except ImportError:             # Windows
        import msvcrt
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class JobStore:
    """Job records in memory and on disk (`WORK/jobs/<job_id>/job.json`, written atomically)."""

    def __init__(self, work: Path) -> None:
        self.work = Path(work)
        self.root = self.work / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = {}

    def scan(self) -> list[Job]:
        """Load every job folder. Jobs an earlier server left queued or running become
        `interrupted` (a fit's checkpoint stays in its folder for `resume_job`); finished ones
        are found again with their files. Returns the jobs that were interrupted."""
        interrupted = []
        for folder in sorted(self.root.iterdir()):
            if not (folder.is_dir() and JOB_ID_RE.match(folder.name)):
                continue
            path = folder / P.JOB_JSON
            try:
                job = Job.from_record(json.loads(path.read_text()), folder)
            except (OSError, ValueError, TypeError) as exc:
                log(f"{path}: skipped, not a readable job record ({exc})")
                continue
            if job.state in P.ACTIVE_STATES:
                was = job.state
                job.state, job.finished = P.INTERRUPTED, time.time()
                job.message = f"the server stopped while this job was {was}"
                self.save(job)
                log(f"job {job.job_id} ({job.kind}) was {was} when the server stopped: now {P.INTERRUPTED}")
                interrupted.append(job)
            missing = [name for name, f in job.files.items() if not Path(f).exists()]
            if missing:
                job.message = (job.message + "; " if job.message else "") + f"files gone since: {missing}"
                job.files = {k: v for k, v in job.files.items() if k not in missing}
            self.jobs[job.job_id] = job
        return interrupted

    def new(self, kind: str, params: dict, out: Path | None = None, resumed_from: str | None = None) -> Job:
        """A new job with its folder and job.json; on an OS error (a full disk) nothing is left
        behind and the error is raised."""
        while True:
            job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
            folder = self.root / job_id
            try:
                folder.mkdir(parents=True)
                break
            except FileExistsError:
                continue
        job = Job(job_id, kind, params, folder, out=Path(out) if out else folder / "out", resumed_from=resumed_from)
        try:
            job.out.mkdir(parents=True, exist_ok=True)
            self.save(job)
        except BaseException:
            import shutil
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.jobs[job_id] = job
        return job

    def save(self, job: Job) -> None:
        save_text(job.folder / P.JOB_JSON, json.dumps(job.record(), indent=1))

    def get(self, job_id: Any) -> Job | None:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            return None
        return self.jobs.get(job_id)

    def all(self) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: (j.created, j.job_id))

    def active_outs(self) -> set[Path]:
        return {j.out for j in self.jobs.values() if j.state in P.ACTIVE_STATES}


Publish = Callable[[Job, dict], None]


class JobContext:
    """What a job kind's runner gets: its params and folders, and thread-safe ways to report.

    `progress(stage, i, n)` sends PROGRESS events (throttled); `warn(text)` a WARN;
    `should_stop()` / `check_cancel()` poll the cancel flag; `preview(image, stage, step)` writes
    a PNG into the job folder that the next PROGRESS event carries."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, publish: Publish, device: str,
                 threads: int | None) -> None:
        self.job, self.params, self.folder, self.out = job, job.params, job.folder, job.out
        self.device, self.threads = device, threads
        self._loop, self._publish = loop, publish
        self._stage: str | None = None
        self._last = 0.0
        self._preview: str | None = None
        self._points: list[int] | None = None
        self._preview_seq = 0
        self._lock = threading.Lock()

    # -- reporting (worker thread) ------------------------------------------------------------
    def emit(self, event: dict) -> None:
        try:
            self._loop.call_soon_threadsafe(self._publish, self.job, event)
        except RuntimeError:   # the loop is closed: the server is gone, nobody listens
            pass

    def progress(self, stage: str, i: int, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            first = stage != self._stage
            if not (first or i >= n or self._preview or self._points or now - self._last >= PROGRESS_INTERVAL_S):
                return
            self._stage, self._last = stage, now
            event = {"type": P.PROGRESS, "stage": stage, "i": int(i), "n": int(n)}
            if self._preview:
                event["preview"], self._preview = self._preview, None
            if self._points:
                event["points"], self._points = self._points, None
        self.emit(event)

    def status(self, message: str) -> None:
        self.emit({"type": P.STATUS, "state": self.job.state, "message": _clip(message)})

    def warn(self, message: str) -> None:
        self.emit({"type": P.WARN, "message": _clip(message)})

    def preview(self, image: "np.ndarray", stage: str = "", step: int = 0) -> Path:
        """Write `image` (H, W, 3 uint8) as `<job folder>/preview/latest_NNNNN.png` (atomic);
        keep the newest few; the next PROGRESS event carries its path."""
        import imageio.v3 as iio
        folder = self.folder / "preview"
        self._preview_seq += 1
        path = folder / f"latest_{self._preview_seq:05d}.png"
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, image, extension=".png")
        for old in sorted(folder.glob("latest_*.png"))[:-PREVIEWS_KEPT]:
            old.unlink(missing_ok=True)
        with self._lock:
            self._preview = str(path)
        return path

    def preview_points(self, points: "np.ndarray") -> None:
        """The fit's current (P, 3) rest-pose points for the next PROGRESS event: evenly strided
        down to protocol PREVIEW_POINTS_MAX, as integers of PREVIEW_POINTS_UNIT metres."""
        import numpy as np
        points = np.asarray(points, np.float64).reshape(-1, 3)
        step = max(1, -(-len(points) // P.PREVIEW_POINTS_MAX))
        q = np.round(points[::step] / P.PREVIEW_POINTS_UNIT)
        q = np.clip(q[np.isfinite(q).all(1)], -P.PREVIEW_POINTS_LIMIT, P.PREVIEW_POINTS_LIMIT)
        with self._lock:
            self._points = q.astype(np.int64).ravel().tolist()

    # -- cancel --------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self.job.cancel.is_set()

    def check_cancel(self) -> None:
        if self.job.cancel.is_set():
            raise JobCancelled(f"{self.job.kind} job cancelled")


class _WarnForwarder(logging.Handler):
    def __init__(self, ctx: JobContext) -> None:
        super().__init__(logging.WARNING)
        self.ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ctx.warn(record.getMessage())
        except Exception:
            pass


class JobQueue:
    """One job at a time on the device, the rest waiting in order. Runs on the event loop; each
    job runs in its own daemon worker thread, so a job that cannot stop never blocks the exit."""

    def __init__(self, store: JobStore, kinds: dict[str, JobKind], publish: Publish, device: str,
                 threads: int | None, max_waiting: int = P.MAX_QUEUED_JOBS) -> None:
        self.store, self.kinds, self.publish = store, kinds, publish
        self.max_waiting = max_waiting
        self.device, self.threads = device, threads
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self._running_done: asyncio.Future | None = None   # the worker thread's outcome
        self._finalized: asyncio.Future | None = None      # set once the loop has reported it
        self._wake = asyncio.Event()
        self._closing = False

    # -- loop thread ---------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.waiting) >= self.max_waiting

    def submit(self, job: Job) -> int:
        """Queue a job; its position: 0 = it runs now, k = k jobs run before it."""
        position = len(self.waiting) + (self.running is not None)
        self.waiting.append(job)
        self._wake.set()
        return position

    def position(self, job: Job) -> int | None:
        if job is self.running:
            return 0
        try:
            return self.waiting.index(job) + (self.running is not None)
        except ValueError:
            return None

    def cancel(self, job: Job) -> str:
        """Cancel a job: a queued one is removed at once (DONE cancelled); a running one gets its
        cancel flag set and ends when the runner sees it. Returns the job's state now."""
        if job.state == P.QUEUED and job in self.waiting:
            self.waiting.remove(job)
            self._finish(job, P.CANCELLED, message="cancelled before it started")
        elif job.state == P.RUNNING and not job.cancel.is_set():
            job.cancel.set()
            self.publish(job, {"type": P.STATUS, "state": P.RUNNING, "message": "cancelling"})
        return job.state

    async def run_forever(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while self.waiting and not self._closing:
                job = self.waiting.popleft()
                try:
                    await self._run(job)
                except Exception as exc:   # the queue goes on; the job still ends with STATUS and DONE
                    log(f"job {job.job_id}: the queue failed to run or report it:\n{traceback.format_exc()}")
                    self.running = self._running_done = self._finalized = None
                    if not job.final:
                        job.error = io_error(exc) if isinstance(exc, OSError) else {
                            "code": P.E_INTERNAL, "message": _clip(f"{type(exc).__name__}: {exc}"), "hint": ""}
                        self.publish(job, {"type": P.ERROR, **job.error})
                        self._finish(job, P.FAILED, message=job.error["message"])

    async def stop(self, timeout: float) -> None:
        """Cancel the waiting jobs and the running one; wait up to `timeout` s for it to stop
        (then it is marked `interrupted` and left to die with the process)."""
        self._closing = True
        self._wake.set()
        while self.waiting:
            self._finish(self.waiting.popleft(), P.CANCELLED, message="the server is shutting down")
        job, finalized = self.running, self._finalized
        if job is None or finalized is None:
            return
        job.cancel.set()
        try:
            await asyncio.wait_for(asyncio.shield(finalized), timeout)
        except asyncio.TimeoutError:
            log(f"job {job.job_id} did not stop within {timeout:g} s; leaving it")
            self._finish(job, P.INTERRUPTED, message=f"the server stopped; the job did not stop within {timeout:g} s")
            self.running = None

    async def _run(self, job: Job) -> None:
        kind = self.kinds[job.kind]
        loop = asyncio.get_running_loop()
        job.state, job.started = P.RUNNING, time.time()
        self.publish(job, {"type": P.STATUS, "state": P.RUNNING, "message": f"{job.kind} started"})
        self.store.save(job)          # an OSError here fails the job (run_forever), never stalls it
        ctx = JobContext(job, loop, self.publish, self.device, self.threads)
        done, finalized = loop.create_future(), loop.create_future()
        self.running, self._running_done, self._finalized = job, done, finalized
        thread = threading.Thread(target=self._work, args=(kind, ctx, loop, done), daemon=True,
                                  name=f"pointwear-job-{job.job_id}")
        thread.start()
        try:
            outcome, value = await asyncio.shield(done)
        except asyncio.CancelledError:   # the loop is going away; the job dies with the process
            return
        if self.running is not job:       # stop() gave up on it already
            return
        try:
            self._report(job, outcome, value)
        finally:
            self.running, self._running_done, self._finalized = None, None, None
            finalized.set_result(None)

    def _report(self, job: Job, outcome: str, value: Any) -> None:
        if outcome == "ok" and job.cancel.is_set():
            outcome, value = P.CANCELLED, f"{job.kind} job cancelled"
        if outcome == "ok":
            files = {name: str(Path(p).resolve()) for name, p in value.items() if p is not None and Path(p).exists()}
            job.files = files
            self.publish(job, {"type": P.RESULT, "folder": str(job.out), "files": files})
            self._finish(job, P.STATE_DONE, message=f"{job.kind} finished")
        elif outcome == P.CANCELLED:
            ckpt = job.out / P.CHECKPOINT_PT
            message = value + (f"; checkpoint kept: {ckpt}" if ckpt.exists() else "")
            self._finish(job, P.CANCELLED, message=message)
        else:
            job.error = value
            self.publish(job, {"type": P.ERROR, **value})
            self._finish(job, P.FAILED, message=value.get("message", ""))

    def _finish(self, job: Job, state: str, message: str = "") -> None:
        """End a job: its record is saved if the disk allows; STATUS and DONE go out regardless."""
        job.state, job.finished, job.message = state, time.time(), _clip(message)
        try:
            self.store.save(job)
        except OSError as exc:
            log(f"job {job.job_id}: {P.JOB_JSON} not saved ({exc}); a restart will list it as interrupted")
            job.message = _clip(f"{job.message}; its record was not saved: {exc.strerror or exc}")
        if state != P.STATE_DONE:
            self.publish(job, {"type": P.STATUS, "state": state, "message": job.message})
        self.publish(job, {"type": P.DONE, "state": state})

    # -- worker thread -------------------------------------------------------------------------
    def _work(self, kind: JobKind, ctx: JobContext, loop: asyncio.AbstractEventLoop,
              done: asyncio.Future) -> None:
        try:
            if self.threads:
                import torch
                torch.set_num_threads(self.threads)   # per thread under OpenMP: set it here too
            with _forward_warnings(ctx):
                ctx.check_cancel()
                result = ("ok", kind.run(ctx) or {})
        except JobCancelled as exc:
            result = (P.CANCELLED, str(exc))
        except PointwearError as exc:
            result = ("error", job_error(exc))
        except OSError as exc:           # a full disk, a file gone, permissions: name the file
            log(f"job {ctx.job.job_id} ({ctx.job.kind}) failed: {exc!r}")
            result = ("error", io_error(exc))
        except BaseException as exc:      # anything else (even SystemExit in a library) ends the job
            device = _device_error(exc)
            if device is not None:       # out of (GPU) memory, two devices: a job error with its code
                log(f"job {ctx.job.job_id} ({ctx.job.kind}) failed: {exc!r}")
                result = ("error", job_error(device))
            else:
                trace = traceback.format_exc()
                log(f"job {ctx.job.job_id} ({ctx.job.kind}) failed:\n{trace}")
                try:
                    with atomic_path(ctx.folder / P.TRACEBACK_TXT) as tmp:
                        tmp.write_text(trace)
                except OSError:
                    pass
                result = ("error", {"code": P.E_INTERNAL, "message": _clip(f"{type(exc).__name__}: {exc}"),
                                    "hint": f"an internal error: the traceback is in {ctx.folder / P.TRACEBACK_TXT}"})

        _release_memory()
        settle_result(loop, done, result)


def settle_result(loop: asyncio.AbstractEventLoop, done: asyncio.Future, result: tuple) -> None:
    """Hand a worker's outcome to the event loop (if it still runs)."""
    def settle() -> None:
        if not done.done():
            done.set_result(result)
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:
        pass


def _device_error(exc: BaseException):
    """The DeviceError of a torch failure (out of memory, two devices), or None."""
    if "torch" not in sys.modules or not isinstance(exc, RuntimeError):
        return None
    from ..device import device_error
    return device_error(exc)


def _release_memory() -> None:
    """After every job: cached GPU memory back to the device (torch.cuda.empty_cache)."""
    if "torch" in sys.modules:
        from ..device import release_memory
        release_memory()


def io_error(exc: OSError) -> dict:
    """The ERROR fields of an OS error: disk_full for ENOSPC / EDQUOT / EFBIG, else io_error;
    `file` names the file when the OS said which."""
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    out = {"code": P.E_DISK_FULL if full else P.E_IO, "message": _clip(exc.strerror or str(exc)),
           "hint": "free some disk space (or use another work folder) and resume the job" if full
           else "check that the file exists and is readable / writable"}
    if exc.filename:
        out["file"] = str(exc.filename)
    return out


def job_error(exc: PointwearError) -> dict:
    """The ERROR fields of a backend error (code, message, hint, file, field)."""
    out = {"code": exc.code, "message": _clip(exc.message), "hint": exc.hint or ""}
    if exc.file:
        out["file"] = exc.file
    if exc.field:
        out["field"] = exc.field
    return out


class _forward_warnings:
    """While a job runs: Python warnings (UserWarning and subclasses: the backend's own, e.g.
    dropped frames) and WARNING log records of the `pointwear` loggers become WARN events; they
    still reach stderr. One job runs at a time, so swapping the process-wide hook is safe."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.catcher = warnings.catch_warnings()
        self.handler = _WarnForwarder(ctx)

    def __enter__(self) -> None:
        self.catcher.__enter__()
        warnings.simplefilter("default", UserWarning)
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning):
                self.ctx.warn(str(message))
            original(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        logging.getLogger("pointwear").addHandler(self.handler)

    def __exit__(self, *exc) -> None:
        logging.getLogger("pointwear").removeHandler(self.handler)
        self.catcher.__exit__(*exc)


def write_token_file(path: Path, token: str) -> None:
    """Write the token readable by this user only (0600), atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
