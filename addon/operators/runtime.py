# SPDX-License-Identifier: GPL-3.0-or-later
"""The add-on's one backend session and everything that moves its news into Blender.

Threads: the backend's socket is read on the link client's reader thread, and an asynchronous
start runs on a worker thread; neither touches bpy. Blender data is changed only here, on the main
thread, by :func:`pump`:

- in the interactive UI, from a ``bpy.app.timers`` callback (:func:`_pump_timer`, registered
  while a backend is starting or running) and from the job operators' modal timer events;
- in background mode (``bpy.app.background``: timers never fire there, and a registered one keeps
  the process from exiting) no timer is ever registered: the operators block in
  :func:`wait_job`, which pumps the same events until the job's ``DONE``.

:func:`pump` applies queued events to the session, finishes ended jobs once (import the fit,
apply a re-drape), mirrors the state into ``scene.pointwear`` and redraws the sidebar.

:func:`register` / :func:`unregister` (called from ``operators.register_extra`` /
``unregister_extra``) add and remove the atexit hook that stops a backend this add-on started;
:func:`unregister` also removes the timer, stops that backend and drops the preview image.
"""

import atexit
import os
import shutil
import sys
import tempfile
import traceback

import bpy

from ..installer.layout import EnvLayout
from ..link import protocol
from ..link.client import EVENT_LOST
from ..link.session import (
    STATE_BUSY,
    STATE_ERROR,
    STATE_NOT_FOUND,
    STATE_NOT_STARTED,
    STATE_READY,
    STATE_STARTING,
    BackendSession,
)
from ..preferences import backend_root, connects_to_running, get_preferences, uses_file_transfer
from ..properties import BACKEND_STATE_NOT_STARTED, is_pointwear_armature

PREVIEW_IMAGE = ".pointwear_preview"
START_TIMEOUT = 180.0        # seconds for a backend to import torch and report its port
STOP_TIMEOUT = 5.0
BUSY_INTERVAL = 0.2          # pump period while starting or while a job runs
IDLE_INTERVAL = 1.0          # pump period while the backend idles (notices a dead backend)

AFTER_IMPORT = "import"      # a finished fit: import its result
AFTER_REDRAPE = "redrape"    # a finished drape job: update the armature's clothing in place
AFTER_APPEARANCE = "appearance"  # a finished fit_appearance: colour the clothing (or import)
AFTER_NEURAL_RENDER = "neural_render"  # a finished render: load the frames (and composite)
AFTER_PREPARE = "prepare"    # a finished prepare: the new subject becomes the scene's

_session = None
_preview_loaded = ""


# -- the session ------------------------------------------------------------------------------

def session():
    """The add-on's backend session (made on first use)."""
    global _session
    if _session is None:
        _session = BackendSession(client_name="pointwear-blender-{}".format(bpy.app.version_string))
    return _session


def live_state():
    """(state, text, hint) of the session as it is now (not started when there is none)."""
    s = _session
    if s is None:
        return STATE_NOT_STARTED, STATE_NOT_STARTED, ""
    return s.state, s.state_text, s.hint


def live_message():
    """The session's last message (what went wrong, in the error states)."""
    s = _session
    return s.message if s is not None else ""


def is_ready():
    return _session is not None and _session.ready


def active_job():
    return None if _session is None else _session.active_job()


def backend_python_path(context=None):
    """The backend Python executable as an absolute path: the one set in the preferences, else
    the installed backend's (Install Backend), else "" (none)."""
    prefs = get_preferences(context)
    if prefs is None:
        return ""
    if prefs.backend_python.strip():
        return os.path.normpath(bpy.path.abspath(prefs.backend_python.strip()))
    root = backend_root()
    return EnvLayout(root).current_python() if root else ""


def work_folder(context=None):
    prefs = get_preferences(context)
    folder = prefs.work_folder.strip() if prefs is not None else ""
    if folder:
        return os.path.normpath(bpy.path.abspath(folder))
    return os.path.join(tempfile.gettempdir(), "pointwear-work")


def abspath(path):
    return os.path.normpath(bpy.path.abspath(path)) if path else ""


def start(context, blocking):
    """Start (port 0) or connect to (port != 0) the backend the preferences name.

    Blocking: returns once ready or failed (True/False). Otherwise returns at once and the
    pump timer follows the start. The outcome is in ``session().state / message / hint``.
    """
    prefs = get_preferences(context)
    s = session()
    if s.ready:
        return True
    if connects_to_running(prefs):
        host = (prefs.host or protocol.DEFAULT_HOST).strip()
        fingerprint = prefs.fingerprint.strip()
        if host not in protocol.LOCAL_HOSTS and not fingerprint:
            s.set_error("A backend on another machine ({}) needs TLS".format(host),
                        "Start it with 'pointwear serve --host 0.0.0.0 --tls' and set its TLS "
                        "fingerprint in Preferences > Add-ons > Pointwear, or use an SSH tunnel "
                        "(Host 127.0.0.1, File Transfer: Always)")
            ok = False
        else:
            # Connecting is quick (no process to start): done here in both modes. Results of a
            # backend elsewhere are downloaded under the work folder.
            root = os.path.join(work_folder(context), "remote") \
                if uses_file_transfer(prefs, host) else None
            ok = s.connect(host, int(prefs.port), prefs.token,
                           fingerprint=fingerprint or None, transfer_root=root)
    else:
        device = prefs.device.lower() if prefs is not None else "auto"
        python, work = backend_python_path(context), work_folder(context)
        if blocking:
            ok = s.start(python, work, device=device, timeout=START_TIMEOUT)
        else:
            s.start_async(python, work, device=device, timeout=START_TIMEOUT)
            ok = None
    ensure_pump()
    sync()
    return ok


def stop():
    """Stop using the backend (shut it down if the add-on started it)."""
    s = _session
    if s is not None:
        s.stop(timeout=STOP_TIMEOUT)
    remove_pump()
    sync()


# -- jobs -------------------------------------------------------------------------------------

def submit(context, kind, params, after=None, **tag):
    """Submit a job for the current scene; returns its JobState (raises BackendError)."""
    tag = dict(tag, after=after, scene=context.scene.name)
    # A remote backend's uploads run on a worker thread in the UI (the job shows stage "upload");
    # background mode blocks anyway.
    job = session().submit(kind, params, tag=tag, upload_async=not bpy.app.background)
    ensure_pump()
    sync()
    return job


def wait_job(context, job, timeout=None, echo=True):
    """Blocking path: pump events until the job ends, printing progress lines when ``echo``;
    then finish it (import / apply). Returns (ok, message)."""
    printer = _ProgressPrinter(job) if echo else None

    def on_event(event, _job):
        if printer is not None:
            printer(event)
        _update_preview(_job)

    job = session().wait(job.job_id, timeout=timeout, on_event=on_event)
    if not job.done:
        sync()
        return False, "The {} job did not finish within {:g} s".format(job.kind, timeout or 0)
    return finish_job(context, job)


class _ProgressPrinter:
    """Progress lines on stdout for background mode: stage changes and every 10 %."""

    def __init__(self, job):
        self.job = job
        self.last = None

    def __call__(self, event):
        kind = event.get("type")
        name = "Pointwear {} {}".format(self.job.kind or "job", self.job.job_id)
        line = None
        if kind == protocol.EVENT_PROGRESS:
            stage, i, n = event.get("stage"), int(event.get("i") or 0), int(event.get("n") or 0)
            step = (stage, (10 * i // n) if n else i)
            if step != self.last or (n and i == n):
                self.last = step
                line = "{}: {} {}/{}".format(name, stage, i, n)
        elif kind == protocol.EVENT_STATUS:
            line = "{}: {}{}".format(name, event.get("state"),
                                     " - " + event["message"] if event.get("message") else "")
        elif kind == protocol.EVENT_WARN:
            line = "{}: warning: {}".format(name, event.get("message"))
        elif kind == protocol.EVENT_ERROR:
            line = "{}: error: {}{}".format(name, event.get("message"),
                                            " (" + event["hint"] + ")" if event.get("hint") else "")
        elif kind == protocol.EVENT_RESULT:
            line = "{}: result in {}".format(name, event.get("folder"))
        elif kind == protocol.EVENT_DONE:
            line = "{}: {}".format(name, event.get("state"))
        elif kind == EVENT_LOST:
            line = "{}: {}".format(name, event.get("message"))
        if line:
            print(line, flush=True)


def job_failure(job):
    """(message, hint) of a job that did not end 'done'."""
    if job.state == protocol.CANCELLED:
        return "The {} job was cancelled".format(job.kind or "backend"), ""
    return (job.error_message or "The {} job {}".format(job.kind or "backend", job.state),
            job.error_hint)


# Follow-ups that live in the operator modules above this one (appearance, subject): they register
# here when imported, so this module never imports them (no import cycle).
FINISHERS = {}


def register_finisher(after, finish):
    """``finish(context, job, scene) -> message`` runs once for a finished job tagged ``after``."""
    FINISHERS[after] = finish
    return finish


def finish_job(context, job):
    """Run a finished job's follow-up once (in ``context``): set the result folder, import the
    fit (if auto import), apply a re-drape. Returns (ok, message)."""
    if job.handled:
        return job.state == protocol.STATE_DONE, ""
    job.handled = True
    try:
        if job.state != protocol.STATE_DONE:
            message, hint = job_failure(job)
            return False, message + (" ({})".format(hint) if hint else "")
        scene = bpy.data.scenes.get(job.tag.get("scene") or "") or context.scene
        props = scene.pointwear
        after = job.tag.get("after")
        if after == AFTER_IMPORT:
            if job.folder:
                props.result_folder = job.folder
            if not job.tag.get("auto_import", True):
                return True, "Fitted: result in " + job.folder
            objects = import_result(context, job.folder, scene=scene, name=job.tag.get("name") or None)
            return True, "Fitted and imported {}".format(objects["armature"].name)
        if after == AFTER_REDRAPE:
            armature = bpy.data.objects.get(job.tag.get("armature") or "")
            if armature is None:
                return False, "The armature {!r} is gone: re-drape not applied".format(
                    job.tag.get("armature"))
            from ..scene import importer
            importer.apply_redrape(context, armature, job.folder)
            return True, "Re-draped {} (result in {})".format(armature.name, job.folder)
        finisher = FINISHERS.get(after)
        if finisher is not None:
            return True, finisher(context, job, scene)
        return True, "{} done".format(job.kind)
    except Exception as ex:
        traceback.print_exc()
        job.error = {"code": "import", "message": "{}: {}".format(type(ex).__name__, ex),
                     "hint": "The result files are kept in " + (job.folder or "the job folder")}
        return False, "Importing the result failed: {}: {}".format(type(ex).__name__, ex)
    finally:
        remove_live_points()
        sync()


def import_result(context, folder, scene=None, name=None):
    """Import a result folder with the scene's import options; the armature becomes the
    scene's Pointwear armature (and the active object when possible)."""
    from ..scene import importer

    scene = scene or context.scene
    props = scene.pointwear
    objects = importer.import_result(
        context, folder, point_radius=props.point_radius, with_camera=props.import_camera,
        with_motion=props.import_motion, collection_name=name)
    armature = objects.get("armature")
    if armature is not None:
        props.armature = armature
        props.result_folder = folder
        view_layer = getattr(context, "view_layer", None)
        if view_layer is not None and armature.name in view_layer.objects:
            view_layer.objects.active = armature
    return objects


def target_armature(context):
    """The Pointwear armature to work on: the active object (or its Pointwear parent), else
    the scene's armature (the last imported one); None if there is none."""
    obj = getattr(context, "active_object", None)
    while obj is not None:
        if is_pointwear_armature(obj):
            return obj
        obj = obj.parent
    props = getattr(context.scene, "pointwear", None)
    armature = props.armature if props is not None else None
    if is_pointwear_armature(armature) and armature.name in context.scene.objects:
        return armature
    return None


# -- the pump ---------------------------------------------------------------------------------

def pump(context=None, finish_owned=True):
    """Main thread only: apply queued events, finish ended jobs, mirror into the scenes,
    redraw. ``finish_owned`` False leaves jobs a modal operator follows to that operator."""
    s = _session
    if s is None:
        return
    events = s.poll()
    for job in list(s.jobs.values()):
        if job.done and not job.handled and (finish_owned or not job.tag.get("owner")):
            if context is None:
                with _window_context(job):
                    finish_job(bpy.context, job)
            else:
                finish_job(context, job)
    if s.current_job is not None:
        _update_preview(s.current_job)
    if sync() or events:
        redraw()


def _window_context(job):
    """A context override with a window showing the job's scene (timers run without one)."""
    wm = bpy.context.window_manager
    windows = list(wm.windows) if wm is not None else []
    scene_name = job.tag.get("scene")
    window = next((w for w in windows if w.scene.name == scene_name), windows[0] if windows else None)
    if window is None:
        return bpy.context.temp_override()
    return bpy.context.temp_override(window=window)


def _pump_timer():
    s = _session
    try:
        pump(None, finish_owned=False)
    except Exception:
        traceback.print_exc()
    if s is None or s is not _session:
        return None
    state = s.state
    if state in (STATE_STARTING, STATE_BUSY):
        return BUSY_INTERVAL
    if state == STATE_READY:
        return IDLE_INTERVAL
    return None  # not started / not found / error: nothing more will happen until a start


def ensure_pump():
    """Register the pump timer (interactive UI only; never in background mode)."""
    if bpy.app.background:
        return
    if not bpy.app.timers.is_registered(_pump_timer):
        bpy.app.timers.register(_pump_timer, first_interval=BUSY_INTERVAL, persistent=True)


def remove_pump():
    if bpy.app.timers.is_registered(_pump_timer):
        bpy.app.timers.unregister(_pump_timer)


# -- mirror into the scenes -------------------------------------------------------------------

def _assign(props, name, value):
    if getattr(props, name) != value:
        setattr(props, name, value)
        return True
    return False


def sync():
    """Write the session's state and the current job into ``scene.pointwear`` of every scene
    (the job fields only into the scene the job was started from). Main thread only.
    Returns True if anything changed."""
    state, _text, hint = live_state()
    s = _session
    message = s.message if s is not None else ""
    device = s.device if s is not None and s.ready else ""
    job = s.current_job if s is not None else None
    scenes = getattr(bpy.data, "scenes", None)
    if scenes is None:  # restricted context (e.g. while registering)
        return False
    changed = False
    for scene in scenes:
        props = getattr(scene, "pointwear", None)
        if props is None:
            continue
        values = [("backend_state", state or BACKEND_STATE_NOT_STARTED),
                  ("backend_device", device), ("backend_message", message), ("backend_hint", hint)]
        if job is not None and job.tag.get("scene", scene.name) == scene.name:
            if job.error is not None:
                job_message, job_hint = job.error_message, job.error_hint
            elif job.warnings:
                job_message, job_hint = "Warning: " + job.warnings[-1], ""
            else:
                job_message, job_hint = "", ""
            values += [("job_id", job.job_id), ("job_kind", job.kind), ("job_state", job.state),
                       ("job_stage", job.progress_text), ("job_message", job_message),
                       ("job_hint", job_hint), ("preview_path", job.preview)]
            if abs(props.job_progress - job.fraction) > 1e-6:
                props.job_progress = job.fraction
                changed = True
        for name, value in values:
            changed = _assign(props, name, value) or changed
    return changed


def redraw():
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                for region in area.regions:
                    if region.type == "UI":
                        region.tag_redraw()


# -- preview image ----------------------------------------------------------------------------

def _update_preview(job):
    """Show the job's newest live points in the viewport (scene/live.py), and load a new preview
    PNG into the ``.pointwear_preview`` image (UI only: no icons in background mode, and nobody
    would see them)."""
    global _preview_loaded
    _update_live_points(job)
    path = job.preview
    if bpy.app.background or not path or path == _preview_loaded or not os.path.isfile(path):
        return
    _preview_loaded = path
    load_preview(path)


_live_seq = [None, 0]   # (job id, points_seq) last shown


def _update_live_points(job):
    if job.done or job.points is None or _live_seq == [job.job_id, job.points_seq]:
        return
    from ..scene import live

    scene = bpy.data.scenes.get(job.tag.get("scene") or "") or bpy.context.scene
    try:
        live.show_points(scene, job.points)
        _live_seq[:] = [job.job_id, job.points_seq]
    except (RuntimeError, ReferenceError, ValueError) as ex:
        print("Pointwear: cannot show the live points: {}".format(ex), file=sys.stderr)


def remove_live_points():
    """Remove the live fitting preview object (the job ended)."""
    from ..scene import live

    _live_seq[:] = [None, 0]
    try:
        live.remove()
    except (AttributeError, RuntimeError, ReferenceError):
        pass


def load_preview(path):
    """Show the PNG ``path`` in the ``.pointwear_preview`` image (made or reloaded); returns it,
    or None if it cannot be read."""
    # The backend keeps only its newest few previews: show a copy of our own, which Blender may
    # read whenever it likes.
    local = _preview_copy_path()
    try:
        shutil.copyfile(path, local)
        return show_image(PREVIEW_IMAGE, local)
    except (OSError, RuntimeError, ReferenceError) as ex:
        print("Pointwear: cannot show the preview {}: {}".format(path, ex), file=sys.stderr)
        return None


def show_image(name, path):
    """The image ``name`` showing the file ``path``: made, or re-pointed and reloaded, with its
    preview icon refreshed. Returns it (RuntimeError if Blender cannot read the file)."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = name
    else:
        image.filepath = path
        image.reload()
    preview = image.preview_ensure()
    if preview is not None:
        preview.reload()
    return image


def _preview_copy_path():
    return os.path.join(tempfile.gettempdir(), "pointwear-preview-{}.png".format(os.getpid()))


def preview_icon_id():
    """Icon id of the preview image for ``template_icon`` (0 when none or in background)."""
    return image_icon_id(bpy.data.images.get(PREVIEW_IMAGE))


def image_icon_id(image):
    """Icon id of an image (or None) for ``template_icon``; 0 when none or in background."""
    if bpy.app.background or image is None or image.preview is None:
        return 0
    return image.preview.icon_id


def _remove_preview():
    global _preview_loaded
    _preview_loaded = ""
    try:
        image = bpy.data.images.get(PREVIEW_IMAGE)
        if image is not None:
            bpy.data.images.remove(image)
    except (AttributeError, RuntimeError, ReferenceError):
        pass
    try:
        os.remove(_preview_copy_path())
    except OSError:
        pass


# -- register / unregister --------------------------------------------------------------------

def _atexit_stop():
    """Interpreter exit: stop a backend this add-on started (no bpy here: it may be gone)."""
    s = _session
    if s is not None:
        try:
            s.stop(timeout=2.0)
        except Exception:
            pass


def register():
    atexit.register(_atexit_stop)


def unregister():
    global _session
    remove_pump()
    atexit.unregister(_atexit_stop)
    s, _session = _session, None
    if s is not None:
        s.stop(timeout=STOP_TIMEOUT)
    _remove_preview()
    remove_live_points()


__all__ = [
    "STATE_BUSY", "STATE_ERROR", "STATE_NOT_FOUND", "STATE_NOT_STARTED", "STATE_READY",
    "STATE_STARTING",
]
