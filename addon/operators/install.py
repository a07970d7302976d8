# SPDX-License-Identifier: GPL-3.0-or-later
"""The backend's own environment from Blender: Install / Update / Remove Backend, Cancel, and
Run Diagnostics (``pointwear doctor``), with the preferences sections that show them.

The work is done by the pure :mod:`..installer` package (pip as child processes on a worker
thread). In the UI, :func:`_watch` (a ``bpy.app.timers`` callback, registered only while a job
runs) redraws the preferences and reports the end; in background mode and from scripts
(``execute``) the operators run the job to its end in the calling thread: timers never fire there.
One job (install or diagnostics) runs at a time; :func:`current_job` is it, so a test or script can
also start one with ``blocking=False``, :meth:`poll` it and call :func:`pump` (what the timer does).
"""

import os
import sys

import bpy
from bpy.types import Operator

from ..installer import job as J
from ..installer import layout as L
from ..installer import machine
from ..link import protocol
from ..preferences import backend_root, get_preferences
from . import runtime

WHEEL_DIR = "backend_wheel"        # in the extension: the wheel and its requirements (the build's)
WATCH_INTERVAL = 0.5
# The preferences that shape an install, in the order the preferences show them.
INSTALL_OPTIONS = ("torch_build", "wheel_folder", "offline", "install_python", "shared_python",
                   "torch_index_url")

_job = None          # the running or last InstallJob / DoctorJob
_last_report = {}    # {"level": ..., "message": ..., "hint": ...} of the last finished job


# -- state ------------------------------------------------------------------------------------

def current_job():
    return _job


def env_layout(create=False):
    """The EnvLayout of the backend environments, or None when its folder does not exist."""
    root = backend_root(create=create)
    return L.EnvLayout(root) if root else None


def bundled_wheel_dir():
    """``backend_wheel/`` inside the installed add-on (the extension zip carries it)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), WHEEL_DIR)


def installed_info():
    lay = env_layout()
    return lay.current_info() if lay is not None else None


def compatibility():
    """(verdict, message) of the installed backend against this add-on, or (None, "")."""
    info = installed_info()
    if info is None:
        return None, ""
    return L.compatibility(info, protocol.VERSION, protocol.PROTOCOL_VERSION)


def version_problem(context=None):
    """Why Start Backend cannot use the installed backend (a message), or "" when it can."""
    prefs = get_preferences(context)
    if prefs is None or prefs.backend_python.strip():
        return ""
    verdict, message = compatibility()
    return message if verdict in (L.UPDATE_BACKEND, L.UPDATE_ADDON) else ""


def _busy_reason():
    """Why the environment cannot change now ("" when it can)."""
    if _job is not None and not _job.finished:
        return "An install or diagnostics run is in progress"
    state = runtime.live_state()[0]
    if state in (runtime.STATE_STARTING, runtime.STATE_READY, runtime.STATE_BUSY):
        return "Stop the backend first"
    return ""


def install_options(context):
    """InstallOptions from the preferences; raises InstallError with what to fix."""
    prefs = get_preferences(context)
    folder = runtime.abspath(prefs.wheel_folder.strip())
    if folder and not os.path.isdir(folder):
        raise J.InstallError("The Wheel Folder does not exist: " + folder,
                             "Set Preferences > Add-ons > Pointwear > Wheel Folder")
    offline = bool(prefs.offline)
    if offline and not folder and not os.path.isdir(bundled_wheel_dir()):
        raise J.InstallError("Offline needs a Wheel Folder")
    if not offline and not getattr(bpy.app, "online_access", True):
        raise J.InstallError("Blender's online access is off, so the backend cannot be downloaded",
                             "Allow it in Preferences > System > Network, or install Offline from "
                             "a Wheel Folder")
    wheel = J.find_wheel([folder, bundled_wheel_dir()])
    build = machine.torch_build(prefs.torch_build, machine.nvidia_driver())
    return J.InstallOptions(
        python=runtime.abspath(prefs.install_python.strip()) or sys.executable,
        wheel=wheel, requirements=J.requirements_for(wheel), torch_build=build,
        torch_index=machine.torch_index(build, prefs.torch_index_url),
        find_links=[folder, os.path.dirname(wheel)], offline=offline,
        shared_python=runtime.abspath(prefs.shared_python.strip()))


def start_install(context, blocking):
    """Start an install (update); returns the job (finished when ``blocking``)."""
    global _job
    lay = env_layout(create=True)
    try:
        options = install_options(context)
    except J.InstallError as ex:
        _job = _FailedJob(ex)
        return _job
    _job = J.InstallJob(lay, options)
    return _run(_job, blocking)


def start_doctor(context, blocking, quick=False):
    """Start ``pointwear doctor`` with the backend Python in use; returns the job."""
    global _job
    lay = env_layout(create=True)
    _job = J.DoctorJob(runtime.backend_python_path(context), runtime.work_folder(context),
                       report_path=lay.doctor_path, blender=bpy.app.version_string, quick=quick)
    return _run(_job, blocking)


def _run(job, blocking):
    """Run ``job`` here (``blocking``) or on its thread. In the UI a timer then follows it; in
    background mode (timers never fire) the caller polls the job and calls :func:`pump`."""
    if blocking:
        job.run()
        _finish(job)
    else:
        job.start()
        if not bpy.app.background and not bpy.app.timers.is_registered(_watch):
            bpy.app.timers.register(_watch, first_interval=WATCH_INTERVAL)
    return job


def pump():
    """Report the current job's end once it has ended; True while it still runs."""
    if _job is None:
        return False
    if not _job.finished:
        return True
    if not getattr(_job, "reported", False):
        _finish(_job)
    return False


def _finish(job):
    job.reported = True
    progress = job.poll()
    level = {J.DONE: "INFO", J.CANCELLED: "WARNING"}.get(progress.state, "ERROR")
    _last_report.clear()
    _last_report.update(level=level, message=progress.message, hint=progress.hint)
    print("Pointwear: " + progress.message + (" ({})".format(progress.hint) if progress.hint else ""))


def _watch():
    """Timer: redraw the preferences while a job runs; report its end once."""
    _redraw()
    return WATCH_INTERVAL if pump() else None


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm is not None else ()):
        for area in window.screen.areas:
            if area.type in ("PREFERENCES", "VIEW_3D"):
                area.tag_redraw()


def last_doctor_report():
    """The last diagnostics report (dict) of the installed environment, or None."""
    if isinstance(_job, J.DoctorJob) and _job.report is not None:
        return _job.report
    lay = env_layout()
    return L.read_json(lay.doctor_path) if lay is not None else None


class _FailedJob:
    """A job that failed before it started (bad preferences), shown like any other."""

    def __init__(self, error):
        self._progress = J.Progress(J.FAILED, 0.0, "", error.message, error.hint)
        _finish(self)

    finished = True

    def poll(self):
        return self._progress

    def cancel(self):
        pass


def _draw_sections(prefs, layout, context):
    draw_environment(prefs, layout, context)
    draw_diagnostics(layout, context)


def register():
    """Draw the environment and diagnostics sections in the add-on preferences."""
    from .. import preferences
    if _draw_sections not in preferences.DRAW_SECTIONS:
        preferences.DRAW_SECTIONS.append(_draw_sections)


def unregister():
    """Cancel a running job and remove the timer (the add-on is being disabled)."""
    global _job
    from .. import preferences
    if _draw_sections in preferences.DRAW_SECTIONS:
        preferences.DRAW_SECTIONS.remove(_draw_sections)
    if _job is not None and not _job.finished:
        _job.cancel()
        if hasattr(_job, "wait"):
            _job.wait(30.0)
    if bpy.app.timers.is_registered(_watch):
        bpy.app.timers.unregister(_watch)
    _job = None
    _last_report.clear()


# -- operators ----------------------------------------------------------------------------------

def _report_end(op, job):
    progress = job.poll()
    if progress.state == J.DONE:
        # Diagnostics that found problems ran fine: a warning, with the panel listing them.
        failed = isinstance(job, J.DoctorJob) and not job.report.get("ok")
        op.report({"WARNING"} if failed else {"INFO"}, progress.message)
        return {"FINISHED"}
    op.report({"WARNING"} if progress.state == J.CANCELLED else {"ERROR"},
              progress.message + (" ({})".format(progress.hint) if progress.hint else ""))
    return {"CANCELLED"}


class _JobOperator:
    bl_options = {"REGISTER"}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        job = self.start(context, blocking=False)
        if job.finished:  # failed before it began
            return _report_end(self, job)
        self.report({"INFO"}, self.bl_label + ": started")
        return {"FINISHED"}

    def execute(self, context):
        return _report_end(self, self.start(context, blocking=True))


def _poll_can_change(cls, context):
    """Poll of the operators that change the environment: the add-on enabled, nothing running."""
    reason = ("The Pointwear add-on is not enabled" if get_preferences(context) is None
              else _busy_reason())
    if reason:
        cls.poll_message_set(reason)
        return False
    return True


class _InstallOperator(_JobOperator):
    @classmethod
    def poll(cls, context):
        return _poll_can_change(cls, context)

    def start(self, context, blocking):
        return start_install(context, blocking)


class POINTWEAR_OT_install_backend(_InstallOperator, Operator):
    """Make the backend's own Python environment in the extension's user folder: PyTorch (CPU or
    CUDA, for this machine), the pinned packages and the Pointwear wheel bundled with the add-on"""

    bl_idname = "pointwear.install_backend"
    bl_label = "Install Backend"


class POINTWEAR_OT_update_backend(_InstallOperator, Operator):
    """Install the backend again, in a new environment that replaces the current one only once it
    works (a failed update leaves the current one in use)"""

    bl_idname = "pointwear.update_backend"
    bl_label = "Update Backend"

    @classmethod
    def poll(cls, context):
        if installed_info() is None:
            cls.poll_message_set("No backend is installed yet: Install Backend")
            return False
        return super().poll(context)


class POINTWEAR_OT_remove_backend(Operator):
    """Delete the backend environments this add-on installed (the log and the last diagnostics
    stay)"""

    bl_idname = "pointwear.remove_backend"
    bl_label = "Remove Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        lay = env_layout()
        if lay is None or not os.path.isdir(lay.envs_dir):
            cls.poll_message_set("No backend is installed")
            return False
        return _poll_can_change(cls, context)

    def execute(self, context):
        lay = env_layout()
        if not lay.remove_all():
            self.report({"ERROR"}, "Could not delete all of " + lay.envs_dir)
            return {"CANCELLED"}
        self.report({"INFO"}, "Backend removed")
        return {"FINISHED"}


class POINTWEAR_OT_cancel_backend_install(Operator):
    """Stop the running install (the current environment stays) or diagnostics run"""

    bl_idname = "pointwear.cancel_backend_install"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if _job is None or _job.finished:
            cls.poll_message_set("Nothing is running")
            return False
        return True

    def execute(self, context):
        _job.cancel()
        self.report({"INFO"}, "Cancelling")
        return {"FINISHED"}


class POINTWEAR_OT_run_diagnostics(_JobOperator, Operator):
    """Run 'pointwear doctor' with the backend Python: versions, device, disk, memory, work
    folder, bundled data and a short test fit, each problem with a fix to try"""

    bl_idname = "pointwear.run_diagnostics"
    bl_label = "Run Diagnostics"

    @classmethod
    def poll(cls, context):
        if get_preferences(context) is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        if _job is not None and not _job.finished:
            cls.poll_message_set("An install or diagnostics run is in progress")
            return False
        if not runtime.backend_python_path(context):
            cls.poll_message_set("No backend: Install Backend first")
            return False
        return True

    quick: bpy.props.BoolProperty(name="Quick", description="Skip the smoke test (a tiny fit)",
                                  default=False)

    def start(self, context, blocking):
        return start_doctor(context, blocking, quick=self.quick)


CLASSES = (POINTWEAR_OT_install_backend, POINTWEAR_OT_update_backend, POINTWEAR_OT_remove_backend,
           POINTWEAR_OT_cancel_backend_install, POINTWEAR_OT_run_diagnostics)


# -- drawing (preferences) ---------------------------------------------------------------------

def environment_lines(prefs):
    """[(icon, text, alert)] describing the backend environment, for the preferences."""
    lines = []
    if prefs.backend_python.strip():
        lines.append(("INFO", "Using the Backend Python set below; the installed backend is not "
                              "used", False))
    info = installed_info()
    if info is None:
        lines.append(("ERROR", "No backend installed: Install Backend sets one up (downloads "
                               "PyTorch and about 1-3 GB of packages)", False))
    else:
        lines.append(("CHECKMARK", "Backend {} installed: torch {}, {}".format(
            info.get("version"), info.get("torch"),
            "CUDA " + str(info["torch_cuda"]) if info.get("torch_cuda") else "CPU"), False))
        verdict, message = compatibility()
        lines.append(("ERROR" if verdict in (L.UPDATE_BACKEND, L.UPDATE_ADDON) else "INFO",
                      message, verdict in (L.UPDATE_BACKEND, L.UPDATE_ADDON)))
    return lines


def draw_environment(prefs, layout, context):
    box = layout.box()
    box.label(text="Backend Environment", icon="PACKAGE")
    for icon, text, alert in environment_lines(prefs):
        row = box.row()
        row.alert = alert
        row.label(text=text, icon=icon)
    job = _job if isinstance(_job, (J.InstallJob, _FailedJob)) else None
    progress = job.poll() if job is not None else None
    if progress is not None and progress.active:
        box.progress(factor=progress.fraction, type="BAR",
                     text="{} ({:.0f} %)".format(progress.step, 100 * progress.fraction))
    row = box.row(align=True)
    row.operator("pointwear.install_backend", icon="IMPORT")
    row.operator("pointwear.update_backend", icon="FILE_REFRESH")
    row.operator("pointwear.remove_backend", icon="TRASH")
    if progress is not None and progress.active:
        row.operator("pointwear.cancel_backend_install", icon="CANCEL")
    if _last_report and job is not None and not progress.active:
        col = box.column()
        col.alert = _last_report["level"] == "ERROR"
        col.label(text=_last_report["message"], icon="ERROR" if col.alert else "INFO")
        if _last_report.get("hint"):
            col.label(text=_last_report["hint"], icon="BLANK1")
    col = box.column(heading="Install Options")
    for name in INSTALL_OPTIONS:
        col.prop(prefs, name)
    lay = env_layout()
    tail = lay.log_tail(8) if lay is not None else []
    if tail:
        log = box.box()
        log.label(text="Install log: " + lay.log_path, icon="TEXT")
        for line in tail:
            log.label(text=line[:160])


def draw_diagnostics(layout, context):
    box = layout.box()
    box.label(text="Diagnostics", icon="VIEWZOOM")
    running = isinstance(_job, J.DoctorJob) and not _job.finished
    if running:
        box.progress(factor=0.5, type="RING", text="Running pointwear doctor")
    box.operator("pointwear.run_diagnostics", icon="CONSOLE")
    if isinstance(_job, J.DoctorJob) and _job.finished and _job.poll().state == J.FAILED:
        col = box.column()
        col.alert = True
        col.label(text=_job.poll().message, icon="ERROR")
        if _job.poll().hint:
            col.label(text=_job.poll().hint, icon="BLANK1")
    report = last_doctor_report()
    for check in (report or {}).get("checks", []):
        icon = {"ok": "CHECKMARK", "warn": "INFO", "fail": "ERROR"}.get(check.get("status"), "QUESTION")
        row = box.row()
        row.alert = check.get("status") == "fail"
        row.label(text="{}: {}".format(check.get("name"), check.get("detail", ""))[:200], icon=icon)
        if check.get("status") != "ok" and check.get("fix"):
            box.label(text="Fix: " + check["fix"][:200], icon="BLANK1")
