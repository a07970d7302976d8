# SPDX-License-Identifier: GPL-3.0-or-later
"""Job operators: fit an outfit, cancel the running job, wait for it.

A job operator (:class:`JobOperatorMixin`) runs in one of three ways:

- clicked in the UI (``invoke``): submits the job and runs modal on a window event timer, so the
  UI never freezes; each timer tick pumps the backend's events (progress bar, preview), ``Esc``
  cancels the job, and when the job ends the follow-up (importing the fit, applying a re-drape)
  runs in the operator's own context;
- called from a script or in background mode (``execute``): blocks until the job's ``DONE``,
  printing progress lines to stdout, then runs the follow-up. No timer is involved;
- ``wait=False`` (scripts): submits and returns at once; ``pointwear.wait_job`` (or, in the UI,
  the pump timer) finishes it later, and ``pointwear.cancel_job`` can cancel it meanwhile.
"""

import os

import bpy
from bpy.props import BoolProperty, FloatProperty
from bpy.types import Operator

from ..link.client import BackendError
from ..link import protocol
from ..properties import backend_name
from . import runtime

MODAL_INTERVAL = 0.1
RESUMABLE = (protocol.CANCELLED, protocol.FAILED, protocol.INTERRUPTED)


def parse_frames(text):
    """'0,2,4-7' -> [0, 2, 4, 5, 6, 7]; '' -> None. ValueError on anything else (the protocol's
    one frame-list parser, the backend's too: bounded before it expands a range)."""
    return protocol.parse_frames(text or "")


def poll_backend_free(cls):
    """Shared poll part: the backend is ready and no job runs (sets the poll message)."""
    if not runtime.is_ready():
        state = runtime.live_state()[0]
        cls.poll_message_set("The backend is starting" if state == runtime.STATE_STARTING
                             else "Start the backend first")
        return False
    if runtime.active_job() is not None:
        cls.poll_message_set("A job is running")
        return False
    return True


class JobOperatorMixin:
    """Submit one backend job; modal in the UI, blocking in scripts and background mode.

    Subclasses define ``job_request(context) -> (kind, params, after, tag)`` (raise ValueError
    for bad input) and may override ``describe(job)``.
    """

    wait: BoolProperty(
        name="Wait",
        description="Scripts: block until the job ends (False: submit and return; "
                    "pointwear.wait_job finishes it)",
        default=True, options={"SKIP_SAVE"},
    )
    timeout: FloatProperty(
        name="Timeout",
        description="Scripts: give up waiting after this many seconds (0: no limit); the job "
                    "keeps running",
        default=0.0, min=0.0, options={"SKIP_SAVE"},
    )

    _timer = None
    _job = None

    def _submit(self, context):
        try:
            kind, params, after, tag = self.job_request(context)
        except ValueError as ex:
            self.report({"ERROR"}, str(ex))
            return None
        try:
            return runtime.submit(context, kind, params, after=after, **tag)
        except BackendError as ex:
            self.report({"ERROR"}, str(ex))
            return None

    def execute(self, context):
        job = self._submit(context)
        if job is None:
            return {"CANCELLED"}
        if not self.wait:
            self.report({"INFO"}, "Submitted {} job {}".format(job.kind, job.job_id))
            return {"FINISHED"}
        ok, message = runtime.wait_job(context, job, timeout=self.timeout or None,
                                       echo=True)
        return self._end_report(job, ok, message)

    def _end_report(self, job, ok, message):
        if ok:
            self.report({"INFO"}, message)
            return {"FINISHED"}
        if job.done and job.state == protocol.CANCELLED:
            self.report({"WARNING"}, message)
        else:
            self.report({"ERROR"}, message)
        return {"CANCELLED"}

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        job = self._submit(context)
        if job is None:
            return {"CANCELLED"}
        job.tag["owner"] = "modal"
        self._job = job
        wm = context.window_manager
        self._timer = wm.event_timer_add(MODAL_INTERVAL, window=context.window)
        wm.modal_handler_add(self)
        self._status(context, job)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if job is None:
            return self._stop_modal(context) or {"CANCELLED"}
        if event.type == "ESC" and event.value == "PRESS":
            if not job.done:
                try:
                    runtime.session().cancel(job.job_id)
                    self.report({"INFO"}, "Cancelling the {} job".format(job.kind))
                except BackendError as ex:
                    self.report({"WARNING"}, str(ex))
            return {"RUNNING_MODAL"}
        if event.type == "TIMER" and event.timer == self._timer:
            # This operator finishes its own job (in its own context, with its own report).
            runtime.pump(context, finish_owned=False)
            self._status(context, job)
            if job.done:
                self._stop_modal(context)
                ok, message = runtime.finish_job(context, job)
                return self._end_report(job, ok, message)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        # Blender ends the modal (e.g. a file is loaded): the pump timer takes over the job.
        self._stop_modal(context)

    def _stop_modal(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        if self._job is not None:
            self._job.tag.pop("owner", None)
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(None)

    @staticmethod
    def _status(context, job):
        workspace = getattr(context, "workspace", None)
        if workspace is not None and not job.done:
            workspace.status_text_set("Pointwear {}: {} ({:.0f} %)  Esc: cancel".format(
                job.kind, job.progress_text, 100.0 * job.fraction))


class BrowseJobMixin(JobOperatorMixin):
    """A job operator that first opens Blender's file browser (its options in the browser's
    sidebar): clicked in the UI it browses, then runs modal once a file is chosen; from a script or
    in background mode it runs at once (blocking unless ``wait=False``)."""

    _browsing = False

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "pointwear", None) is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        return poll_backend_free(cls)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        self._browsing = True
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        if self._browsing and not bpy.app.background and context.window is not None:
            # Chosen in the file browser: run modal (progress, preview, Esc), as a click would.
            self._browsing = False
            return JobOperatorMixin.invoke(self, context, None)
        return JobOperatorMixin.execute(self, context)


def poll_subject_job(cls, context):
    """Shared poll of the jobs that fit a subject folder: add-on on, backend free, folder set."""
    props = getattr(context.scene, "pointwear", None)
    if props is None:
        cls.poll_message_set("The Pointwear add-on is not enabled")
        return False
    if not poll_backend_free(cls):
        return False
    if not props.subject_folder.strip():
        cls.poll_message_set("Set a subject folder")
        return False
    if not os.path.isdir(runtime.abspath(props.subject_folder.strip())):
        cls.poll_message_set("The subject folder does not exist")
        return False
    return True


class POINTWEAR_OT_fit_outfit(JobOperatorMixin, Operator):
    """Fit an outfit to the subject folder on the backend; the result is imported when the fit
    ends (Import When Done). Esc cancels"""

    bl_idname = "pointwear.fit_outfit"
    bl_label = "Fit Outfit"
    bl_options = {"REGISTER", "UNDO"}

    resume: BoolProperty(
        name="Resume",
        description="Continue the last cancelled or failed fit from its checkpoint (its own "
                    "settings and result folder)",
        default=False, options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        return poll_subject_job(cls, context)

    def job_request(self, context):
        props = context.scene.pointwear
        tag = {"auto_import": props.auto_import,
               "name": os.path.basename(os.path.normpath(bpy.path.abspath(props.subject_folder)))}
        if getattr(self, "resume", False):
            if props.job_kind != protocol.KIND_FIT_OUTFIT or props.job_state not in RESUMABLE or not props.job_id:
                raise ValueError("No cancelled or failed fit to resume")
            return protocol.KIND_FIT_OUTFIT, {"resume_job": props.job_id}, runtime.AFTER_IMPORT, tag
        subject = runtime.abspath(props.subject_folder.strip())
        drape = backend_name(props.fit_drape)
        params = {
            "subject": subject,
            "drape": drape,
            "template": None if drape != "parametric"
            else props.fit_garments.strip() or (None if props.fit_template == "AUTO" else backend_name(props.fit_template)),
            "codes": props.fit_codes,
            "coarse_steps": props.fit_coarse_steps,
            "fine_steps": props.fit_fine_steps,
            "refine_steps": props.fit_refine_steps,
            "seed": props.fit_seed,
        }
        try:
            params["frames"] = parse_frames(props.fit_frames)
        except ValueError as ex:
            raise ValueError("Frames: {}".format(ex)) from None
        return protocol.KIND_FIT_OUTFIT, params, runtime.AFTER_IMPORT, tag


class POINTWEAR_OT_cancel_job(Operator):
    """Cancel the running backend job (a fit keeps its checkpoint)"""

    bl_idname = "pointwear.cancel_job"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        job = runtime.active_job()
        if job is None:
            cls.poll_message_set("No job is running")
            return False
        if job.message == "Cancelling":
            cls.poll_message_set("The job is being cancelled")
            return False
        return True

    def execute(self, context):
        job = runtime.active_job()
        try:
            runtime.session().cancel(job.job_id)
        except BackendError as ex:
            self.report({"ERROR"}, str(ex))
            return {"CANCELLED"}
        runtime.sync()
        self.report({"INFO"}, "Cancelling the {} job".format(job.kind))
        return {"FINISHED"}


class POINTWEAR_OT_wait_job(Operator):
    """Scripts: block until the current backend job ends, then import / apply its result"""

    bl_idname = "pointwear.wait_job"
    bl_label = "Wait for Job"
    bl_options = {"REGISTER", "INTERNAL"}

    timeout: FloatProperty(name="Timeout", description="Seconds (0: no limit)", default=0.0,
                           min=0.0, options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        s = runtime.session()
        job = s.current_job
        if job is None or job.handled:
            cls.poll_message_set("No job to wait for")
            return False
        return True

    def execute(self, context):
        job = runtime.session().current_job
        ok, message = runtime.wait_job(context, job, timeout=self.timeout or None)
        return JobOperatorMixin._end_report(self, job, ok, message)


CLASSES = (POINTWEAR_OT_fit_outfit, POINTWEAR_OT_cancel_job, POINTWEAR_OT_wait_job)
