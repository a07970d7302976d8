# SPDX-License-Identifier: GPL-3.0-or-later
"""Start and stop a ``pointwear serve`` child process. Pure standard library: no bpy.

The backend runs in its own Python environment (``<python> -m pointwear serve --port 0``). The
launcher makes a token with :mod:`secrets`, hands it over in ``$POINTWEAR_TOKEN`` (never on the
command line, where other users could read it), starts the server in its own process group (its
own session on POSIX; no console window and a new process group on Windows) so Ctrl+C in
Blender's terminal does not reach it, and waits, with a timeout, for the one JSON line the server
prints once it listens. The server's stderr is kept (the last 64 KiB, in memory only) so a server
that dies on start-up can be explained: ``No module named pointwear`` becomes a hint to set the
backend Python in the preferences.

:meth:`BackendLauncher.stop` asks politely (a ``shutdown`` message), then terminates, then kills,
each step with a timeout; calling it again does nothing.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

from . import protocol


DEFAULT_START_TIMEOUT = 120.0
_STDERR_KEEP = 64 * 1024

PREFERENCES_HINT = "Preferences > Add-ons > Pointwear > Backend Python"


class LaunchError(Exception):
    """The backend did not start: ``message`` says what happened, ``hint`` what to do."""

    def __init__(self, message, hint="", stderr="", returncode=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.stderr = stderr
        self.returncode = returncode   # the backend's exit status when it exited on start-up

    def __str__(self):
        return self.message + (" ({})".format(self.hint) if self.hint else "")


def hint_for_stderr(stderr, python):
    """A short hint for a backend that died on start-up, from its stderr."""
    missing = re.findall(r"No module named '?([A-Za-z0-9_.]+)'?", stderr or "")
    if missing:
        name = missing[-1].split(".")[0]
        if name == "pointwear":
            return ("{} does not have the Pointwear backend installed: use Install Backend in "
                    "Preferences > Add-ons > Pointwear, or set {} to the Python of the environment "
                    "where the backend is installed (the repository's .venv/bin/python)"
                    .format(python, PREFERENCES_HINT))
        return ("The backend's Python ({}) lacks the package '{}': Update Backend in Preferences > "
                "Add-ons > Pointwear (Run Diagnostics lists what else is missing), or install the "
                "backend's requirements into that environment (scripts/setup_env.sh)".format(
                    python, name))
    if "CUDA" in (stderr or "") and ("not available" in stderr or "no CUDA" in stderr):
        return "This backend has no CUDA: set Device to Auto or CPU in Preferences > Add-ons > Pointwear"
    if "in use by another pointwear serve" in (stderr or ""):
        return ("Another backend (another Blender?) uses this work folder: set another Work folder in "
                "Preferences > Add-ons > Pointwear, or connect to that backend (its port)")
    if "invalid choice" in (stderr or "") or "unrecognized arguments" in (stderr or ""):
        return "The backend is too old for this add-on (no 'serve' command): update the backend"
    return "See the backend's messages above; check {}".format(PREFERENCES_HINT)


def child_env(extra=None):
    """``os.environ`` for a child process running another environment's Python: Blender's own
    Python settings (PYTHONHOME, PYTHONPATH, ...) removed, ``extra`` added."""
    env = dict(os.environ)
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE",
                 "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def popen_group_kwargs():
    """Popen keyword arguments that start a child in its own process group / session (Ctrl+C in
    Blender's terminal does not reach it; :func:`kill_group` stops it with its children)."""
    if sys.platform == "win32":
        return {"creationflags": (getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                                  | getattr(subprocess, "CREATE_NO_WINDOW", 0))}
    return {"start_new_session": True}


def kill_group(process, sig):
    """Send ``sig`` to a child started with :func:`popen_group_kwargs` and its whole group."""
    try:
        if sys.platform != "win32":
            os.killpg(process.pid, sig)
        elif sig == signal.SIGTERM:
            process.terminate()
        else:
            process.kill()
    except (ProcessLookupError, PermissionError, OSError):
        try:
            process.kill() if sig != signal.SIGTERM else process.terminate()
        except OSError:
            pass


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|MemoryError|Killed)\b")


def crash_cause(stderr, returncode=None):
    """The line of a dead backend's stderr that says why it died: a fatal "pointwear serve:
    error:" line, else the last exception line of the last traceback, else a signal, else the last
    line (a late warning, e.g. smplx's, is not the cause when a traceback came before it)."""
    lines = [line.rstrip() for line in (stderr or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("pointwear serve: error:"):
            return line[len("pointwear serve: "):]
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")),
                default=None)
    if start is not None:
        for line in lines[start + 1:]:
            if _EXCEPTION_LINE.match(line):
                return line
    if isinstance(returncode, int) and returncode < 0:
        try:
            return "killed by {}".format(signal.Signals(-returncode).name)
        except ValueError:
            return "killed by signal {}".format(-returncode)
    return lines[-1] if lines else ""


def _tail(text, lines=12):
    return "\n".join((text or "").strip().splitlines()[-lines:])


class BackendLauncher:
    """One backend child process.

    ``python``: the backend environment's Python executable; ``work``: the job folder root;
    ``device``: ``auto``/``cpu``/``cuda``; ``threads``: torch CPU threads (None: the server's
    default); ``env``: extra environment variables. :attr:`token` is generated here.
    """

    def __init__(self, python, work, device="auto", threads=None, host=None,
                 env=None, extra_args=()):
        self.python = str(python)
        self.work = str(work)
        self.device = (device or "auto").lower()
        self.threads = threads
        self.host = host
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.token = secrets.token_urlsafe(32)
        self.process = None
        self.info = None            # the "listening" line, once started
        self._stderr = collections.deque()
        self._stderr_size = 0
        self._stderr_lock = threading.Lock()
        self._stdout_lines = queue.Queue()
        self._threads = []
        self._stopped = False
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self):
        return None if self.info is None else int(self.info["port"])

    @property
    def pid(self):
        return None if self.process is None else self.process.pid

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self):
        return None if self.process is None else self.process.poll()

    @property
    def stderr_text(self):
        with self._stderr_lock:
            return "".join(self._stderr)

    def command(self):
        cmd = [self.python, "-m", "pointwear", "serve", "--port", "0", "--work", self.work,
               "--device", self.device]
        if self.host:
            cmd += ["--host", self.host]
        if self.threads:
            cmd += ["--threads", str(int(self.threads))]
        # The backend stops by itself if this process dies without a shutdown (crash, kill -9).
        cmd += ["--parent-pid", str(os.getpid())]
        return cmd + self.extra_args

    # -- start ---------------------------------------------------------------------------------

    def start(self, timeout=DEFAULT_START_TIMEOUT):
        """Start the server and wait for its ``listening`` line; returns that line (a dict).

        Raises :class:`LaunchError` with a hint when the executable is missing, the process dies
        first, or no line comes within ``timeout`` seconds (the process is then stopped).
        """
        if self.process is not None:
            raise RuntimeError("BackendLauncher.start called twice; make a new launcher")
        if not self.python:
            raise LaunchError("No backend Python is set", hint="Set " + PREFERENCES_HINT)
        if not os.path.isfile(self.python):
            raise LaunchError("Backend Python not found: " + self.python,
                              hint="Set " + PREFERENCES_HINT + " to an existing Python executable")
        try:
            os.makedirs(self.work, exist_ok=True)
        except OSError as ex:
            raise LaunchError("Cannot create the work folder {}: {}".format(self.work, ex),
                              hint="Set Preferences > Add-ons > Pointwear > Work Folder to a "
                                   "writable folder") from ex
        env = child_env(self.env)
        env[protocol.TOKEN_ENV] = self.token
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs = popen_group_kwargs()
        with self._lock:
            if self._stopped:
                raise LaunchError("The backend start was cancelled")
            try:
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, env=env, cwd=self.work, close_fds=True, **kwargs)
            except OSError as ex:
                raise LaunchError("Cannot run the backend Python {}: {}".format(self.python, ex),
                                  hint="Set " + PREFERENCES_HINT + " to a working Python executable") from ex
        for target, stream, name in ((self._pump_stdout, self.process.stdout, "stdout"),
                                     (self._pump_stderr, self.process.stderr, "stderr")):
            thread = threading.Thread(target=target, args=(stream,), daemon=True,
                                      name="pointwear-backend-" + name)
            thread.start()
            self._threads.append(thread)

        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._stdout_lines.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                line = None
            if line is not None:
                info = self._parse_listening(line)
                if info is not None:
                    self.info = info
                    return info
                continue  # not the listening line (a stray print): keep waiting
            if self.process.poll() is not None and self._stdout_done():
                self._join_pumps(1.0)
                stderr = self.stderr_text
                raise LaunchError(
                    "The backend exited on start-up (exit code {}): {}".format(
                        self.process.returncode, crash_cause(stderr, self.process.returncode) or "no message"),
                    hint=hint_for_stderr(stderr, self.python), stderr=stderr, returncode=self.process.returncode)
            if time.monotonic() >= deadline:
                stderr = self.stderr_text
                self.stop(timeout=2.0, polite=False)
                raise LaunchError(
                    "The backend did not report its port within {:g} s".format(timeout),
                    hint="It may be busy importing PyTorch; try again, or run '{} -m pointwear "
                         "serve --port 0' in a terminal to see what it does".format(self.python),
                    stderr=stderr)

    @staticmethod
    def _parse_listening(line):
        text = line.strip()
        if not text.startswith("{"):
            return None
        try:
            info = json.loads(text)
        except ValueError:
            return None
        if isinstance(info, dict) and info.get("event") == "listening" and "port" in info:
            return info
        return None

    def _stdout_done(self):
        return not self._threads or not self._threads[0].is_alive()

    def _pump_stdout(self, stream):
        try:
            for raw in iter(stream.readline, b""):
                self._stdout_lines.put(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):
            pass

    def _pump_stderr(self, stream):
        # Drained continuously (a full pipe would block the server); only the tail is kept.
        try:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", "replace")
                with self._stderr_lock:
                    self._stderr.append(text)
                    self._stderr_size += len(text)
                    while self._stderr_size > _STDERR_KEEP and len(self._stderr) > 1:
                        self._stderr_size -= len(self._stderr.popleft())
        except (OSError, ValueError):
            pass

    def _join_pumps(self, timeout):
        for thread in self._threads:
            thread.join(timeout)

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, timeout=5.0, polite=True, client=None):
        """Stop the server: ``shutdown`` message (through ``client`` if given, else a short
        connection of its own), then SIGTERM, then SIGKILL, waiting up to ``timeout`` seconds
        after each. Idempotent; returns the exit code (None if it never started)."""
        with self._lock:
            was_stopped, self._stopped = self._stopped, True
            process = self.process
        if process is None:
            return None
        if was_stopped and process.poll() is not None:
            return process.returncode
        if process.poll() is None and polite and self.info is not None:
            try:
                self._shutdown_message(client, timeout)
            except Exception:
                pass
            self._wait(process, timeout)
        if process.poll() is None:
            self._signal(process, signal.SIGTERM)
            self._wait(process, timeout)
        if process.poll() is None:
            self._signal(process, signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            self._wait(process, timeout)
        self._join_pumps(1.0)
        for stream in (process.stdout, process.stderr):
            try:
                stream.close()
            except (OSError, AttributeError):
                pass
        return process.poll()

    def _shutdown_message(self, client, timeout):
        if client is not None and client.connected:
            client.shutdown(timeout=timeout)
            return
        from .client import BackendClient

        host = self.info.get("host") or "127.0.0.1"
        with BackendClient(client_name="pointwear-launcher") as own:
            own.connect(host, self.port, self.token, timeout=timeout)
            own.shutdown(timeout=timeout)

    @staticmethod
    def _wait(process, timeout):
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    @staticmethod
    def _signal(process, sig):
        # The server leads its own session: signal the whole group (its workers too).
        kill_group(process, sig)
