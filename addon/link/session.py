# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's view of one backend: launcher + client + job tracking. Pure Python: no bpy.

:class:`BackendSession` is a small state machine::

    not started --start()--> starting --> ready (device)  <--> busy (a job is queued or running)
         ^                       |             |
         |                       v             v (connection lost, process died)
         +------stop()------  error (message, hint)          not found: no backend Python

Nothing here blocks unless asked to: :meth:`BackendSession.start_async` starts the backend on a
worker thread; socket reading happens on the client's reader thread; :meth:`BackendSession.poll`
(called by Blender's main thread from a timer) only drains queued events and updates
:class:`JobState` records. The blocking path for background mode and scripts is
:meth:`BackendSession.start` and :meth:`BackendSession.wait`, which pump the same events until a
job's ``DONE`` arrives.
"""

from __future__ import annotations

import collections
import os
import threading
import time

from . import protocol
from .client import (EVENT_LOST, UI_CONNECT_TIMEOUT, UI_TIMEOUT, BackendClient, BackendConnectionError,
                     BackendError)
from .launcher import BackendLauncher, LaunchError, crash_cause
from .transfer import RemoteFiles

STATE_NOT_STARTED = "not started"
STATE_NOT_FOUND = "not found"
STATE_STARTING = "starting"
STATE_READY = "ready"
STATE_BUSY = "busy"
STATE_ERROR = "error"
STATES = (STATE_NOT_STARTED, STATE_NOT_FOUND, STATE_STARTING, STATE_READY, STATE_BUSY, STATE_ERROR)

JOB_FINISHED_STATES = protocol.FINAL_STATES
MAX_WARNINGS = 20
_LOCALIZED = "_localized"    # marks a DONE re-queued after its results were downloaded
UPLOAD_STAGE = "upload"      # the stage of a job whose files are still being uploaded (i, n: MiB)


class JobState:
    """What the add-on knows about one job, fed from its events (see :meth:`apply`)."""

    def __init__(self, job_id, kind="", params=None, tag=None):
        self.job_id = job_id
        self.kind = kind
        self.params = dict(params or {})
        self.tag = dict(tag or {})  # the caller's own data (e.g. which scene asked for it)
        self.state = protocol.QUEUED
        self.message = ""
        self.stage = ""
        self.i = 0
        self.n = 0
        self.preview = ""
        self.points = None           # the live fit's latest points: flat metres (protocol.decode_points)
        self.points_seq = 0          # how many point sets arrived (a new one: show it)
        self.warnings = []
        self.error = None            # the last ERROR event (dict), if any
        self.folder = ""             # RESULT folder
        self.files = {}              # RESULT files: name -> absolute path
        self.done = False            # DONE (or a lost connection) ended it
        self.handled = False         # the caller's finishing step (e.g. import) ran
        self.started = time.monotonic()
        self.finished = None
        self.upload_cancel = None    # a threading.Event while its files are uploaded (not submitted yet)

    @property
    def fraction(self):
        """Progress of the current stage in [0, 1] (1 once done)."""
        if self.done and self.state == protocol.STATE_DONE:
            return 1.0
        if self.n and self.n > 0:
            return max(0.0, min(1.0, float(self.i) / float(self.n)))
        return 0.0

    @property
    def progress_text(self):
        if self.done:
            if self.state == protocol.STATE_DONE:
                return "Done"
            if self.state == protocol.CANCELLED:
                return "Cancelled"
            return "Failed: " + self.error_message if self.error_message else "Failed"
        if self.stage:
            return "{} {}/{}".format(self.stage, self.i, self.n) if self.n else self.stage
        return self.message or self.state.capitalize()

    @property
    def error_message(self):
        """The ERROR's message after the file and field it names ("FILE: FIELD: message", as the
        backend's own errors read), "" without an error."""
        error = self.error or {}
        message = str(error.get("message") or "")
        named = [str(error[k]) for k in ("file", "field") if error.get(k)]
        return ": ".join(named + [message]) if message else ""

    @property
    def error_hint(self):
        return str((self.error or {}).get("hint") or "")

    def apply(self, event):
        """Update from one event of this job; returns True if it ended the job."""
        kind = event.get("type")
        if kind == protocol.EVENT_STATUS:
            self.state = str(event.get("state") or self.state)
            self.message = str(event.get("message") or "")
        elif kind == protocol.EVENT_PROGRESS:
            self.state = protocol.RUNNING
            self.stage = str(event.get("stage") or "")
            self.i = int(event.get("i") or 0)
            self.n = int(event.get("n") or 0)
            if event.get("preview"):
                self.preview = str(event["preview"])
            if event.get("points") is not None:
                try:
                    self.points = protocol.decode_points(event["points"])
                    self.points_seq += 1
                except ValueError:
                    pass             # a bad preview never stops the job
        elif kind == protocol.EVENT_WARN:
            self.warnings.append(str(event.get("message") or ""))
            del self.warnings[:-MAX_WARNINGS]
        elif kind == protocol.EVENT_ERROR:
            self.error = dict(event)
        elif kind == protocol.EVENT_RESULT:
            self.folder = str(event.get("folder") or "")
            self.files = dict(event.get("files") or {})
        elif kind == protocol.EVENT_DONE:
            self.state = str(event.get("state") or protocol.STATE_DONE)
            self.done = True
            self.finished = time.monotonic()
            return True
        return False

    def end_lost(self, message, hint="", code="lost"):
        """The connection ended before DONE (or the job never reached the backend): the job
        counts as failed here."""
        if self.done:
            return
        self.error = {"type": protocol.EVENT_ERROR, "code": code, "message": message, "hint": hint}
        self.end_here(protocol.FAILED, message)

    def end_here(self, state, message=""):
        """End the job on this side (it never got to the backend, or the backend is gone)."""
        self.state, self.message, self.stage = state, message, ""
        self.done = True
        self.finished = time.monotonic()

    def __repr__(self):
        return "JobState({!r}, kind={!r}, state={!r}, {})".format(
            self.job_id, self.kind, self.state, self.progress_text)


class _UploadCancelled(Exception):
    pass


def _upload(remote, params, progress=None):
    """The params with the backend's copies of the local files they name (BackendError)."""
    try:
        return remote.upload_params(params, progress=progress)
    except (OSError, ValueError) as ex:
        raise BackendError("Cannot upload the job's files: {}".format(ex), code="upload") from ex


class BackendSession:
    """One backend the add-on uses: started here (launcher) or already running (connect)."""

    def __init__(self, client_name="pointwear-blender"):
        self.client_name = client_name
        self.launcher = None
        self.client = None
        self.owned = False           # True when this session started the backend process
        self.message = ""
        self.hint = ""
        self.device = ""
        self.server_version = ""
        self.jobs = collections.OrderedDict()
        self.current_job_id = None
        self.log = collections.deque(maxlen=200)
        self._state = STATE_NOT_STARTED
        self._lock = threading.RLock()
        self._start_thread = None
        self._launching = None       # the launcher of a start under way
        self._generation = 0         # bumps on stop(): a late start thread discards its result
        self.remote = None           # RemoteFiles when the backend cannot see this machine's files
        self._uploads = 0            # provisional ids of jobs whose files are being uploaded

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self):
        with self._lock:
            if self._state == STATE_READY and self.active_job() is not None:
                return STATE_BUSY
            return self._state

    @property
    def ready(self):
        """Connected and able to take jobs (idle or busy)."""
        return self.state in (STATE_READY, STATE_BUSY)

    @property
    def busy(self):
        return self.state == STATE_BUSY

    @property
    def starting(self):
        return self.state == STATE_STARTING

    @property
    def state_text(self):
        state = self.state
        if state in (STATE_READY, STATE_BUSY):
            return "{} on {}".format(state, self.device or "?")
        if state == STATE_ERROR and self.message:
            return "error: " + self.message
        return state

    def _set(self, state, message="", hint=""):
        with self._lock:
            self._state = state
            self.message = message
            self.hint = hint
        if message:
            self.log.append("[{}] {}".format(state, message))

    def set_error(self, message, hint=""):
        """Put the session in the error state (e.g. a setting the caller found wrong)."""
        self._set(STATE_ERROR, message, hint)

    # -- start / connect / stop ----------------------------------------------------------------

    def start(self, python, work, device="auto", threads=None, timeout=120.0, env=None):
        """Start a backend child process and connect to it (blocking). Returns True when ready;
        else the state is ``not found`` or ``error`` with a message and a hint."""
        with self._lock:
            if self.ready:
                return True
            thread = self._start_thread
        if thread is not None:  # a start_async() is under way: wait for it instead
            thread.join(timeout)
            return self.ready
        with self._lock:
            self._discard()
            self._state = STATE_STARTING
            self.message, self.hint = "Starting the backend", ""
            generation = self._generation
        return self._start_now(generation, python, work, device, threads, timeout, env)

    def start_async(self, python, work, device="auto", threads=None, timeout=120.0, env=None):
        """Start the backend on a worker thread; :attr:`state` is ``starting`` until it is
        ``ready`` or ``error``. Returns False if a start is already under way or done."""
        with self._lock:
            if self.ready or self._state == STATE_STARTING:
                return False
            self._discard()
            self._state = STATE_STARTING
            self.message, self.hint = "Starting the backend", ""
            generation = self._generation
            thread = threading.Thread(
                target=self._start_now, name="pointwear-backend-start", daemon=True,
                args=(generation, python, work, device, threads, timeout, env))
            self._start_thread = thread
        thread.start()
        return True

    def _discard(self):
        """Drop what a failed or lost backend left (a dead client, a launcher whose process may
        still run) before starting or connecting anew. Caller holds the lock."""
        launcher, client = self.launcher, self.client
        self.launcher, self.client, self.owned, self.remote = None, None, False, None
        if client is not None:
            client.close()
        if launcher is not None:
            launcher.stop(timeout=2.0, polite=False)

    def _launch(self, generation, python, work, device, threads, timeout, env):
        """Start a backend on ``work``; when another backend (another Blender) holds that folder,
        once more on a folder of this process's own beside it. Returns the launcher and its
        listening line; LaunchError as BackendLauncher.start."""
        work = os.path.normpath(os.fspath(work))
        for folder in (work, "{}-{}".format(work, os.getpid())):
            launcher = BackendLauncher(python, folder, device=device, threads=threads, env=env)
            with self._lock:
                if generation != self._generation:
                    raise LaunchError("The backend start was cancelled")
                self._launching = launcher  # so stop() can end a start that is under way
            try:
                return launcher, launcher.start(timeout=timeout)
            except LaunchError as ex:
                if ex.returncode != protocol.EXIT_WORK_IN_USE or folder != work:
                    raise
                self.log.append("[starting] {} is in use by another backend: using {}-{}".format(
                    work, work, os.getpid()))
        raise AssertionError("unreachable")

    def _start_now(self, generation, python, work, device, threads, timeout, env):
        try:
            launcher, info = self._launch(generation, python, work, device, threads, timeout, env)
        except LaunchError as ex:
            with self._lock:
                self._launching = None
                if generation == self._generation:
                    not_found = ex.message.startswith(("Backend Python not found", "No backend Python"))
                    self._set(STATE_NOT_FOUND if not_found else STATE_ERROR, ex.message, ex.hint)
                    self._start_thread = None
            return False
        with self._lock:
            self._launching = None
        client = BackendClient(self.client_name)
        try:
            hello = client.connect(info.get("host") or "127.0.0.1", info["port"], launcher.token,
                                   timeout=min(30.0, max(5.0, timeout)))
        except BackendError as ex:
            launcher.stop(timeout=3.0, polite=False)
            with self._lock:
                if generation == self._generation:
                    self._set(STATE_ERROR, "The backend started but refused the connection: "
                              + ex.message, ex.hint)
                    self._start_thread = None
            return False
        with self._lock:
            if generation != self._generation:  # stop() came first: undo
                stale = True
            else:
                stale = False
                self.launcher, self.client, self.owned = launcher, client, True
                self._adopt_hello(hello)
                self._start_thread = None
        if stale:
            client.close()
            launcher.stop(timeout=3.0)
            return False
        return True

    def connect(self, host, port, token, timeout=UI_CONNECT_TIMEOUT, fingerprint=None, transfer_root=None):
        """Use a backend that is already running (blocking). Returns True when ready.

        ``fingerprint``: TLS, with the server's certificate pinned. ``transfer_root``: the
        backend cannot see this machine's files (another machine, or an SSH tunnel): local paths
        in params are uploaded before a job and results downloaded under this folder after."""
        with self._lock:
            if self.ready:
                return True
            self._discard()
            self._set(STATE_STARTING, "Connecting to {}:{}".format(host, port))
        client = BackendClient(self.client_name)
        try:
            hello = client.connect(host, port, token, timeout=timeout, fingerprint=fingerprint or None)
        except BackendError as ex:
            self._set(STATE_ERROR, ex.message, ex.hint)
            return False
        with self._lock:
            self.client, self.launcher, self.owned = client, None, False
            self.remote = RemoteFiles(client, transfer_root) if transfer_root else None
            self._adopt_hello(hello)
        return True

    def _adopt_hello(self, hello):
        self.device = str(hello.get("device") or "")
        self.server_version = str(hello.get("server") or "")
        self._set(STATE_READY, "Backend {} ready on {}".format(self.server_version, self.device))

    def stop(self, timeout=5.0):
        """Stop using the backend: a backend started here is shut down (shutdown message, then
        terminate, then kill); a backend connected to is left running. Idempotent."""
        with self._lock:
            self._generation += 1
            launcher, client = self.launcher, self.client
            self.launcher, self.client, self.owned, self.remote = None, None, False, None
            start_thread, self._start_thread = self._start_thread, None
            launching, self._launching = self._launching, None
            for job in self.jobs.values():
                if not job.done:
                    job.end_lost("The backend was stopped")
            self._set(STATE_NOT_STARTED)
            self.device = ""
        if launching is not None:
            # A start under way: end its process now; the start thread then gives up.
            launching.stop(timeout=timeout, polite=False)
        if launcher is not None:
            launcher.stop(timeout=timeout, client=client)
        if client is not None:
            client.close()
        if start_thread is not None and start_thread is not threading.current_thread():
            start_thread.join(timeout)

    @property
    def pid(self):
        launcher = self.launcher
        return launcher.pid if launcher is not None else None

    # -- jobs ----------------------------------------------------------------------------------

    def active_job(self):
        """The newest job that has not ended, or None."""
        with self._lock:
            for job in reversed(self.jobs.values()):
                if not job.done:
                    return job
        return None

    @property
    def current_job(self):
        return self.jobs.get(self.current_job_id) if self.current_job_id else None

    def _require_client(self):
        client = self.client
        if client is None or not self.ready:
            raise BackendConnectionError("The backend is not running", code="lost",
                                         hint="Start the backend first")
        return client

    def submit(self, kind, params=None, tag=None, timeout=UI_TIMEOUT, upload_async=False):
        """Submit a job; returns its :class:`JobState` (its events update it from now on).

        With a backend that cannot see this machine (:attr:`remote`) the local paths in params
        are uploaded first: here, or with ``upload_async`` on a worker thread; the JobState
        returned then has a provisional id (``upload-N``) and stage ``upload`` (i, n in MiB)
        until the job is submitted and takes its real id. A failed upload ends it ``failed``,
        :meth:`cancel` during the upload ends it ``cancelled``; neither reaches the backend.
        The job keeps the local params either way."""
        client = self._require_client()
        params = {k: v for k, v in dict(params or {}).items() if v is not None}
        remote = self.remote
        if remote is not None and upload_async:
            return self._submit_later(client, remote, kind, params, tag, timeout)
        sent = params if remote is None else _upload(remote, params)
        job_id = client.submit(kind, sent, timeout=timeout)
        with self._lock:
            return self._track(JobState(job_id, kind, params, tag))

    def _track(self, job):
        """Record a submitted job under its id (caller holds the lock); returns the record. Its
        first events may have been polled before submit() returned: that record is kept then."""
        early = self.jobs.get(job.job_id)
        if early is not None and early is not job:
            early.kind, early.params, early.tag = job.kind, job.params, job.tag
            job = early
        self.jobs[job.job_id] = job
        self.current_job_id = job.job_id
        while len(self.jobs) > 50:
            oldest = next(iter(self.jobs))
            if not self.jobs[oldest].done or oldest == job.job_id:
                break
            del self.jobs[oldest]
        return job

    def _submit_later(self, client, remote, kind, params, tag, timeout):
        with self._lock:
            self._uploads += 1
            job = JobState("upload-{}".format(self._uploads), kind, params, tag)
            job.stage, job.message, job.upload_cancel = UPLOAD_STAGE, "Uploading the job's files", threading.Event()
            self.jobs[job.job_id] = job
            self.current_job_id = job.job_id
        threading.Thread(target=self._upload_then_submit, args=(client, remote, job, timeout),
                         name="pointwear-upload", daemon=True).start()
        return job

    def _upload_then_submit(self, client, remote, job, timeout):
        """Worker thread: upload, then submit under the lock (so no event of the new id is
        handled before the job has it) unless cancelled meanwhile."""
        def progress(done, total):
            if job.upload_cancel.is_set():
                raise _UploadCancelled()
            job.i, job.n = done >> 20, max(1, total >> 20)
        try:
            sent = _upload(remote, job.params, progress)
            with self._lock:
                if job.upload_cancel.is_set():
                    raise _UploadCancelled()
                job_id = client.submit(job.kind, sent, timeout=timeout)
                provisional = job.job_id
                self.jobs.pop(provisional, None)
                job.job_id, job.stage, job.i, job.n, job.message = job_id, "", 0, 0, ""
                job.upload_cancel = None
                self._track(job)
        except _UploadCancelled:
            job.end_here(protocol.CANCELLED, "Cancelled while its files were uploaded")
        except BackendError as ex:
            job.end_lost(ex.message, ex.hint, code=ex.code)
        except Exception as ex:  # never leave it "uploading" for ever
            job.end_lost("Uploading the job's files failed: {}: {}".format(type(ex).__name__, ex), code="upload")

    def cancel(self, job_id=None, timeout=UI_TIMEOUT):
        """Cancel a job (default: the active one). Its DONE (state cancelled) follows; a job
        still uploading its files ends ``cancelled`` here and is never submitted."""
        job = self.jobs.get(job_id) if job_id else self.active_job()
        if job is None or job.done:
            return False
        with self._lock:
            uploading = job.upload_cancel is not None
            if uploading:
                job.upload_cancel.set()
        if not uploading:
            self._require_client().cancel(job.job_id, timeout=timeout)
        job.message = "Cancelling"
        return True

    def ping(self, timeout=UI_TIMEOUT):
        return self._require_client().ping(timeout=timeout)

    def status(self, job_id=None, timeout=UI_TIMEOUT):
        return self._require_client().status(job_id, timeout=timeout)

    # -- events --------------------------------------------------------------------------------

    def _handle(self, event):
        """Apply one event; returns the JobState it concerned (or None)."""
        kind = event.get("type")
        if kind == EVENT_LOST:
            self._on_lost(str(event.get("message") or "connection lost"))
            return None
        job_id = event.get("job_id")
        if job_id is None:
            if kind == protocol.EVENT_ERROR:
                self.log.append("[error] {}".format(event.get("message")))
            return None
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                job = JobState(job_id)
                self.jobs[job_id] = job
            remote, client = self.remote, self.client
            if remote is not None and kind == protocol.EVENT_DONE and not event.get(_LOCALIZED) \
                    and event.get("state") == protocol.STATE_DONE and job.folder:
                # Results first: a worker thread downloads them and then queues this DONE again,
                # so the job ends (and is imported) only once its files are here.
                job.message = "Downloading the results"
                threading.Thread(target=self._download_then_done, args=(remote, client, job, event),
                                 name="pointwear-download", daemon=True).start()
                return None      # not this job's end yet
            job.apply(event)
        if remote is not None and kind == protocol.EVENT_PROGRESS and event.get("preview"):
            job.preview = remote.fetch_preview(job.job_id, str(event["preview"]))
        return job

    @staticmethod
    def _download_then_done(remote, client, job, event):
        """Worker thread: fetch a finished job's results from a backend that cannot see this
        machine, point the job at the local copies, then queue its DONE again. A failed download
        fails the job here (the results stay on the server)."""
        done = dict(event)
        done[_LOCALIZED] = True
        try:
            job.folder, job.files = remote.fetch_result(job.job_id, job.folder, job.files)
        except (BackendError, OSError, ValueError) as ex:
            job.error = {"type": protocol.EVENT_ERROR, "code": "download",
                         "message": "The job finished but its results could not be downloaded from {}: {}"
                         .format(job.folder, ex),
                         "hint": "They stay on the backend; connect again and watch job " + job.job_id}
            done["state"] = protocol.FAILED
        client.events.put(done)

    def _on_lost(self, reason):
        launcher = self.launcher
        hint = "Start the backend again"
        message = "Lost the connection to the backend: " + reason
        if launcher is not None:
            # Give a dying process a moment so its exit code and last words are known.
            deadline = time.monotonic() + 0.3
            while launcher.running and time.monotonic() < deadline:
                time.sleep(0.05)
            if not launcher.running:
                message = "The backend stopped (exit code {})".format(launcher.returncode)
                cause = crash_cause(launcher.stderr_text, launcher.returncode)
                if cause:
                    message += ": " + cause
        with self._lock:
            for job in self.jobs.values():
                if not job.done:
                    job.end_lost(message, hint)
            self._set(STATE_ERROR, message, hint)

    def poll(self):
        """Apply every queued event (never blocks); returns the events, in order.

        Also notices a backend process that died without closing its socket first.
        """
        client = self.client
        if client is None:
            return []
        events = client.drain_events()
        for event in events:
            self._handle(event)
        launcher = self.launcher
        if launcher is not None and self.ready and not launcher.running and not events:
            self._on_lost("the backend process exited")
        return events

    def wait(self, job_id, timeout=None, on_event=None, poll_interval=0.25):
        """Block until the job's DONE (or a lost connection), applying events as they come.

        ``on_event(event, job)`` is called for each event of this job (and a lost connection);
        ``timeout`` None waits for ever. Returns the :class:`JobState`; its ``done`` is False
        when the timeout ran out first.
        """
        job = self.jobs.get(job_id)
        if job is None:
            job = JobState(job_id)
            self.jobs[job_id] = job
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.done:
            client = self.client
            if client is None:
                job.end_lost("The backend is not running")
                break
            remaining = poll_interval if deadline is None else min(poll_interval,
                                                                   deadline - time.monotonic())
            if remaining <= 0:
                break
            event = client.get_event(timeout=remaining)
            if event is None:
                launcher = self.launcher
                if launcher is not None and not launcher.running:
                    self._on_lost("the backend process exited")
                continue
            concerned = self._handle(event)
            if on_event is not None and (concerned is job or event.get("type") == EVENT_LOST):
                on_event(event, job)
        return job
