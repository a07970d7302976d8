# SPDX-License-Identifier: GPL-3.0-or-later
"""Install (or update) the backend into a new virtual environment, as a job that runs pip as
child processes; and run ``pointwear doctor`` in an installed environment. Pure standard library:
no bpy (the operators in ``operators/install.py`` drive these).

Both jobs run on a worker thread (:meth:`start`) or in the caller's thread (:meth:`run`, what
background mode and tests use: timers never fire there). :meth:`poll` returns a :class:`Progress`
at any time; :meth:`cancel` stops the child process and the job.

An install makes ``<root>/envs/env-<stamp>`` with ``<python> -m venv``, optionally links the
packages of another environment into it (``shared_python``: a ``.pth`` file naming that
environment's site-packages, so e.g. a studio's CUDA torch is reused rather than installed again;
its pip is then used too, the new environment having none of its own),
installs torch (the build for the machine, from its index), the other pinned requirements, then
the Pointwear wheel (``--no-deps``), checks that the result imports and says which version and
protocol it is, and only then makes it the current environment (:class:`layout.EnvLayout`). Any
failure or a cancel deletes the new folder and leaves the previous environment in use. With
``offline`` pip gets ``--no-index`` and only the given wheel folders (``--find-links``); pip's
configuration files and ``PIP_*`` variables are then ignored, so nothing but those folders is used.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from ..link import protocol
from ..link.launcher import child_env, kill_group, popen_group_kwargs
from . import layout as L
from . import machine

# An install job's states: the protocol's job states, plus "idle" before it starts.
IDLE = "idle"
RUNNING, DONE, FAILED, CANCELLED = protocol.RUNNING, protocol.STATE_DONE, protocol.FAILED, protocol.CANCELLED
WHEEL_RE = re.compile(r"^pointwear-(\d+(?:\.\d+)*)-py3-none-any\.whl$")
PIP_FLAGS = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off")
_PIP_COUNTED = ("Collecting ", "Processing ", "Requirement already satisfied: ")

# A Python run in the new environment after the install: what it holds, as one JSON line.
CHECK_SCRIPT = (
    "import json, sys\n"
    "import pointwear\n"
    "from pointwear.link import protocol as p\n"
    "import torch\n"
    "print(json.dumps({'version': pointwear.__version__,"
    " 'protocol': getattr(p, 'PROTOCOL_VERSION', None),"
    " 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,"
    " 'python': sys.version.split()[0], 'executable': sys.executable,"
    " 'location': pointwear.__file__}))\n")
_SITE_SCRIPT = ("import json, sysconfig\n"
                "p = sysconfig.get_paths()\n"
                "print(json.dumps(sorted({p['purelib'], p['platlib']})))\n")


class InstallError(Exception):
    """A step failed: ``message`` what, ``hint`` what to try."""

    def __init__(self, message, hint=""):
        super().__init__(message)
        self.message, self.hint = message, hint


class Progress:
    """A snapshot of a job: ``state``, ``fraction`` (0..1), ``step`` (what it does now),
    ``message`` and ``hint`` (once it ended)."""

    def __init__(self, state, fraction, step, message="", hint=""):
        self.state, self.fraction, self.step = state, fraction, step
        self.message, self.hint = message, hint

    @property
    def active(self):
        return self.state == RUNNING

    def __repr__(self):
        return "Progress({!r}, {:.2f}, {!r}, {!r})".format(self.state, self.fraction, self.step,
                                                          self.message)


# -- choosing what to install -----------------------------------------------------------------

def wheel_version(path):
    """(1, 2, 3) for ``pointwear-1.2.3-py3-none-any.whl``, None for another file name."""
    m = WHEEL_RE.match(os.path.basename(path))
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def find_wheel(folders):
    """The newest Pointwear wheel in the first of ``folders`` that has one (a studio's wheel
    folder goes before the wheel bundled with the add-on); InstallError when none has."""
    looked = []
    for folder in folders:
        if not folder:
            continue
        looked.append(folder)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        wheels = sorted((n for n in names if wheel_version(n)), key=wheel_version)
        if wheels:
            return os.path.join(folder, wheels[-1])
    raise InstallError("No Pointwear backend wheel (pointwear-<version>-py3-none-any.whl) in "
                       + (", ".join(looked) or "any folder"),
                       "Reinstall the Pointwear extension (its zip carries the wheel) or put the "
                       "wheel in the Wheel Folder")


def requirements_for(wheel):
    """The pins file built next to a wheel (``pointwear-<version>-requirements.txt``)."""
    path = re.sub(r"-py3-none-any\.whl$", "-requirements.txt", wheel)
    if not os.path.isfile(path):
        raise InstallError("The requirements file {} is missing next to {}".format(
            os.path.basename(path), wheel), "Rebuild the wheel with scripts/build_wheel.py")
    return path


def read_pins(path):
    """``name==version`` lines of a requirements file (comments and blanks dropped)."""
    with open(path, encoding="utf-8") as fh:
        lines = [ln.split("#", 1)[0].strip() for ln in fh]
    return [ln for ln in lines if ln]


class InstallOptions:
    """What to install and how.

    ``python``: the Python 3.11 that makes the venv; ``wheel`` / ``requirements``: the backend
    wheel and its pins file; ``torch_build``: ``cpu`` or ``cuda``; ``torch_index``: pip index for
    torch ("" = pip's own); ``find_links``: wheel folders; ``offline``: only those folders;
    ``shared_python``: reuse that environment's packages ("" = none).
    """

    def __init__(self, python, wheel, requirements, torch_build=machine.CPU, torch_index="",
                 find_links=(), offline=False, shared_python=""):
        self.python, self.wheel, self.requirements = python, wheel, requirements
        self.torch_build, self.torch_index = torch_build, torch_index
        self.find_links = [f for f in find_links if f]
        self.offline, self.shared_python = bool(offline), shared_python

    def describe(self):
        return {k: getattr(self, k) for k in ("python", "wheel", "requirements", "torch_build",
                                              "torch_index", "find_links", "offline",
                                              "shared_python")}


# -- a job with a thread, a child process and a cancel -----------------------------------------

class _Job:
    def __init__(self):
        self._lock = threading.Lock()
        self._state, self._fraction, self._step = IDLE, 0.0, ""
        self._message, self._hint = "", ""
        self._cancelled = False
        self._process = None
        self._thread = None

    def poll(self):
        with self._lock:
            return Progress(self._state, self._fraction, self._step, self._message, self._hint)

    @property
    def finished(self):
        return self.poll().state in (DONE, FAILED, CANCELLED)

    def start(self):
        """Run on a worker thread; poll() follows it."""
        with self._lock:
            if self._state != IDLE:
                raise RuntimeError("a job runs once")
            self._state = RUNNING
        self._thread = threading.Thread(target=self._run_guarded, daemon=True,
                                        name="pointwear-" + type(self).__name__)
        self._thread.start()

    def run(self):
        """Run in this thread until the end; returns the final Progress."""
        with self._lock:
            if self._state != IDLE:
                raise RuntimeError("a job runs once")
            self._state = RUNNING
        self._run_guarded()
        return self.poll()

    def wait(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def cancel(self):
        """Stop the running child process and end the job as cancelled."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None and process.poll() is None:
            kill_group(process, signal.SIGTERM)

    def _set(self, **fields):
        with self._lock:
            for key, value in fields.items():
                setattr(self, "_" + key, value)

    def _end(self, state, message, hint=""):
        self._set(state=state, message=message, hint=hint, fraction=1.0 if state == DONE else
                  self._fraction)

    def _check_cancel(self):
        if self._cancelled:
            raise _Cancelled()

    def _run_guarded(self):
        try:
            message = self._work()
            self._end(DONE, message)
        except _Cancelled:
            self._cleanup()
            self._end(CANCELLED, "Cancelled; nothing was changed")
        except InstallError as ex:
            self._cleanup()
            self._end(FAILED, ex.message, ex.hint)
        except Exception as ex:  # a bug must still end the job and say what happened
            self._cleanup()
            self._end(FAILED, "{}: {}".format(type(ex).__name__, ex), "See the log")

    def _cleanup(self):
        pass

    def _popen(self, argv, env):
        with self._lock:
            if self._cancelled:
                raise _Cancelled()
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=env, **popen_group_kwargs())
            return self._process


class _Cancelled(Exception):
    pass


class InstallJob(_Job):
    """Install the backend under ``layout`` (an :class:`layout.EnvLayout`) with ``options``."""

    def __init__(self, env_layout, options):
        super().__init__()
        self.layout, self.options = env_layout, options
        self.env_dir = ""
        self.info = None
        self.timings = []   # (step, seconds) of the steps run so far
        self._log = None

    # The steps and their share of the progress bar.
    def _steps(self):
        o = self.options
        torch_pin = [p for p in read_pins(o.requirements) if p.lower().startswith("torch==")]
        steps = [("Checking Python", 1, self._check_python),
                 ("Creating the environment", 6, self._make_venv)]
        if o.shared_python:
            steps.append(("Linking shared packages", 1, self._link_shared))
        steps += [("Installing PyTorch ({})".format(o.torch_build.upper()), 45,
                   lambda: self._pip(["install", *torch_pin], self._torch_args(), 1)),
                  ("Installing packages", 35,
                   lambda: self._pip(["install", "-r", o.requirements], self._index_args(),
                                     len(read_pins(o.requirements)))),
                  ("Installing Pointwear", 6,
                   lambda: self._pip(["install", "--no-deps", "--force-reinstall", o.wheel],
                                     self._index_args(), 1)),
                  ("Checking the backend", 5, self._check_backend),
                  ("Switching to the new environment", 1, self._switch)]
        return steps

    def _work(self):
        os.makedirs(self.layout.root, exist_ok=True)
        self._log = open(self.layout.log_path, "w", encoding="utf-8", errors="replace")
        try:
            self._note("Pointwear backend install, {}".format(time.strftime("%Y-%m-%d %H:%M:%S")))
            self._note("options: " + json.dumps(self.options.describe()))
            steps = self._steps()
            total = float(sum(w for _, w, _ in steps))
            done = 0.0
            for name, weight, action in steps:
                self._check_cancel()
                self._set(step=name, fraction=done / total)
                self._note("== " + name)
                self._span = (done / total, weight / total)
                began = time.monotonic()
                action()
                self.timings.append((name, time.monotonic() - began))
                done += weight
            self._set(fraction=1.0)
            message = "Backend {} installed (torch {}{})".format(
                self.info["version"], self.info["torch"],
                ", CUDA " + self.info["torch_cuda"] if self.info.get("torch_cuda") else ", CPU")
            self._note(message)
            return message
        except InstallError as ex:
            self._note("FAILED: " + ex.message + (" (" + ex.hint + ")" if ex.hint else ""))
            raise
        except _Cancelled:
            self._note("CANCELLED")
            raise
        finally:
            self._log.close()

    def _note(self, text):
        if self._log is not None and not self._log.closed:
            self._log.write(text.rstrip("\n") + "\n")
            self._log.flush()

    def _cleanup(self):
        if self.env_dir and self.env_dir != self.layout.current_env():
            shutil.rmtree(self.env_dir, ignore_errors=True)

    # -- steps ----------------------------------------------------------------------------------

    def _check_python(self):
        ok, message = machine.probe_python(self.options.python)
        self._note(message)
        if not ok:
            raise InstallError(message, "Set Preferences > Add-ons > Pointwear > Python for the "
                                        "Backend to a Python 3.11 (python.org)")
        for path in (self.options.wheel, self.options.requirements):
            if not os.path.isfile(path):
                raise InstallError("Missing " + path, "Reinstall the Pointwear extension")

    def _make_venv(self):
        self.env_dir = self.layout.new_env_dir()
        # With shared packages the environment's pip (and setuptools) come from the shared one:
        # a pip of its own would bring an old setuptools that shadows the shared packages' own.
        without_pip = ["--without-pip"] if self.options.shared_python else []
        self._run([self.options.python, "-m", "venv", *without_pip, self.env_dir], child_env(),
                  "Creating the environment")
        if not os.path.isfile(L.venv_python(self.env_dir)):
            raise InstallError("The new environment has no Python: " + L.venv_python(self.env_dir))

    def _link_shared(self):
        shared = self.options.shared_python
        paths = json.loads(self._capture([shared, "-c", _SITE_SCRIPT], "Listing the shared site-packages"))
        own = json.loads(self._capture([L.venv_python(self.env_dir), "-c", _SITE_SCRIPT],
                                       "Listing the new site-packages"))
        with open(os.path.join(own[0], "_pointwear_shared.pth"), "w", encoding="utf-8") as fh:
            fh.write("".join(p + "\n" for p in paths))
        self._note("packages shared from {}: {}".format(shared, ", ".join(paths)))

    def _index_args(self):
        args = ["--no-index"] if self.options.offline else []
        for folder in self.options.find_links:
            args += ["--find-links", folder]
        return args

    def _torch_args(self):
        args = self._index_args()
        if not self.options.offline and self.options.torch_index:
            args += ["--index-url", self.options.torch_index]
        return args

    def _pip_env(self):
        env = child_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        if self.options.offline:
            for name in [n for n in env if n.startswith("PIP_")]:
                del env[name]
            env["PIP_CONFIG_FILE"] = os.devnull
        return env

    def _pip(self, args, index_args, expected):
        argv = [L.venv_python(self.env_dir), "-m", "pip", *args[:1], *PIP_FLAGS, *index_args,
                *args[1:]]
        seen = [0]

        def on_line(line):
            if line.startswith(_PIP_COUNTED):
                seen[0] += 1
                self._progress_within(min(0.85, 0.85 * seen[0] / max(1, expected)))
            elif line.startswith("Installing collected packages"):
                self._progress_within(0.9)

        self._run(argv, self._pip_env(), self.poll().step, on_line)

    def _check_backend(self):
        out = self._capture([L.venv_python(self.env_dir), "-c", CHECK_SCRIPT],
                            "Importing the installed backend")
        try:
            info = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise InstallError("The installed backend did not say its version: " + out[-300:])
        where = os.path.realpath(str(info.get("location") or ""))
        if not where.startswith(os.path.realpath(self.env_dir) + os.sep):
            raise InstallError("The new environment imports Pointwear from {}, not from the "
                               "installed wheel".format(where or "nowhere"),
                               "Remove other Pointwear installs from the shared environment")
        info.update(installed=time.time(), torch_build=self.options.torch_build,
                    wheel=os.path.basename(self.options.wheel), offline=self.options.offline,
                    shared_python=self.options.shared_python)
        self.layout.write_info(self.env_dir, info)
        self.info = info
        self._note("installed: " + json.dumps(info, sort_keys=True))

    def _switch(self):
        self._check_cancel()
        self.layout.switch_to(self.env_dir)
        left = self.layout.remove_others()
        if left:
            self._note("could not remove (in use?): " + ", ".join(left))

    # -- child processes --------------------------------------------------------------------------

    def _progress_within(self, part):
        start, width = self._span
        self._set(fraction=start + width * part)

    def _run(self, argv, env, what, on_line=None):
        """Run a child, its output into the log (and ``on_line``); InstallError on failure."""
        self._note("$ " + " ".join(argv))
        process = self._popen(argv, env)
        tail = []
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self._note(line)
            tail = (tail + [line])[-40:]
            if on_line is not None:
                on_line(line)
        process.stdout.close()
        code = process.wait()
        self._check_cancel()
        if code != 0:
            raise _failure(what, code, tail, self.layout.log_path)
        return tail

    def _capture(self, argv, what):
        return "\n".join(self._run(argv, child_env(), what))


def _failure(what, code, tail, log_path):
    """An InstallError from a failed child's last lines (pip's ERROR lines first)."""
    errors = [ln[len("ERROR: "):] for ln in tail if ln.startswith("ERROR: ")]
    detail = errors[-1] if errors else (tail[-1] if tail else "no output")
    hint = "See the install log: " + log_path
    missing = re.search(r"No matching distribution found for (\S+)", "\n".join(tail))
    if missing:
        hint = ("{} is neither in the wheel folder nor on the index: add its wheel to the folder "
                "(pip download {} -d <folder>) or install online. {}".format(
                    missing.group(1), missing.group(1), hint))
    return InstallError("{} failed (exit {}): {}".format(what, code, detail), hint)


class DoctorJob(_Job):
    """``<python> -m pointwear doctor --json --work WORK`` in an installed environment; the report
    (a dict) in :attr:`report`, also written to ``report_path``."""

    def __init__(self, python, work, report_path="", blender="", quick=False, timeout=300.0):
        super().__init__()
        self.python, self.work, self.report_path = python, work, report_path
        self.blender, self.quick = blender, quick
        self.timeout = timeout
        self.report = None

    def _work(self):
        if not self.python or not os.path.isfile(self.python):
            raise InstallError("No backend to check: " + (self.python or "none installed"),
                               "Install Backend first")
        self._set(step="Running pointwear doctor", fraction=0.1)
        argv = [self.python, "-m", "pointwear", "doctor", "--json", "--work", self.work,
                "--blender", self.blender] + (["--quick"] if self.quick else [])
        process = self._popen(argv, child_env())
        try:
            out, _ = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(process, signal.SIGKILL)
            process.communicate()
            raise InstallError("pointwear doctor took over {:g} s".format(self.timeout))
        self._check_cancel()
        text = out.decode("utf-8", "replace")
        report = _last_json(text)
        if report is None:
            raise InstallError("pointwear doctor gave no report (exit {}): {}".format(
                process.returncode, text.strip()[-300:] or "no output"),
                "The backend is too old for diagnostics, or broken: Update Backend")
        self.report = report
        if self.report_path:
            try:
                with open(self.report_path, "w", encoding="utf-8") as fh:
                    json.dump(report, fh, indent=1)
            except OSError:
                pass
        failed = [c["name"] for c in report.get("checks", []) if c.get("status") == "fail"]
        return ("All {} checks passed".format(len(report.get("checks", []))) if not failed
                else "{} of {} checks failed: {}".format(len(failed), len(report["checks"]),
                                                        ", ".join(failed)))


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def addon_versions():
    """(product version, protocol version) of this add-on."""
    return protocol.VERSION, protocol.PROTOCOL_VERSION
