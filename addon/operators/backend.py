# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend operators: check the backend Python, start (or connect to) the backend, stop it."""

import os

import bpy
from bpy.types import Operator

from ..preferences import connects_to_running, get_preferences
from . import install, runtime
from .runtime import backend_python_path

PYTHON_NOT_SET = ("No backend: use Install Backend (or set the backend Python) in Preferences > "
                  "Add-ons > Pointwear")


def _report_failure(op, fallback):
    s = runtime.session()
    message = s.message or fallback
    op.report({"ERROR"}, message + (" ({})".format(s.hint) if s.hint else ""))


class POINTWEAR_OT_check_backend(Operator):
    """Check that the backend Python executable set in the preferences exists"""

    bl_idname = "pointwear.check_backend"
    bl_label = "Check Backend Python"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if get_preferences(context) is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        if not backend_python_path(context):
            cls.poll_message_set(PYTHON_NOT_SET)
            return False
        return True

    def execute(self, context):
        path = backend_python_path(context)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            self.report({"INFO"}, "Backend Python found: " + path)
            return {"FINISHED"}
        # A warning, not an error: scripted callers get {'CANCELLED'} rather than an exception.
        if os.path.isfile(path):
            self.report({"WARNING"}, "Backend Python is not executable: " + path)
        else:
            self.report({"WARNING"}, "Backend Python not found: " + path)
        return {"CANCELLED"}


class POINTWEAR_OT_start_backend(Operator):
    """Start the Pointwear backend with the Python set in the preferences (or connect to the
    running backend the preferences name, when their port is not 0)"""

    bl_idname = "pointwear.start_backend"
    bl_label = "Start Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        prefs = get_preferences(context)
        if prefs is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        state = runtime.live_state()[0]
        if state == runtime.STATE_STARTING:
            cls.poll_message_set("The backend is starting")
            return False
        if runtime.is_ready():
            cls.poll_message_set("The backend is already running")
            return False
        if not connects_to_running(prefs):
            if not backend_python_path(context):
                cls.poll_message_set(PYTHON_NOT_SET)
                return False
            problem = install.version_problem(context)
            if problem:
                cls.poll_message_set(problem)
                return False
        return True

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        # Interactive: start on a worker thread; the pump timer shows how it goes.
        ok = runtime.start(context, blocking=False)
        if ok is False:
            _report_failure(self, "The backend did not start")
            return {"CANCELLED"}
        self.report({"INFO"}, "Starting the Pointwear backend")
        return {"FINISHED"}

    def execute(self, context):
        # Scripts and background mode: block until the backend is ready (or failed).
        if not runtime.start(context, blocking=True):
            _report_failure(self, "The backend did not start")
            return {"CANCELLED"}
        s = runtime.session()
        self.report({"INFO"}, "Pointwear backend {} ready on {}".format(s.server_version, s.device))
        return {"FINISHED"}


class POINTWEAR_OT_stop_backend(Operator):
    """Stop the Pointwear backend started by the add-on (a running job is cancelled, its
    checkpoint kept), or disconnect from a backend that was already running"""

    bl_idname = "pointwear.stop_backend"
    bl_label = "Stop Backend"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        state = runtime.live_state()[0]
        if state in (runtime.STATE_NOT_STARTED, runtime.STATE_NOT_FOUND):
            cls.poll_message_set("The backend is not running")
            return False
        return True

    def execute(self, context):
        owned = runtime.session().owned
        runtime.stop()
        self.report({"INFO"}, "Pointwear backend stopped" if owned
                    else "Disconnected from the Pointwear backend")
        return {"FINISHED"}


CLASSES = (POINTWEAR_OT_check_backend, POINTWEAR_OT_start_backend, POINTWEAR_OT_stop_backend)
