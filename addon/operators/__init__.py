# SPDX-License-Identifier: GPL-3.0-or-later
"""Pointwear operators (``bpy.ops.pointwear.*``)."""

import os

import bpy
from bpy.types import Operator

from ..preferences import get_preferences


def backend_python_path(context):
    """The configured backend Python executable as an absolute path, or "" when unset."""
    prefs = get_preferences(context)
    if prefs is None or not prefs.backend_python.strip():
        return ""
    return os.path.normpath(bpy.path.abspath(prefs.backend_python.strip()))


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
            cls.poll_message_set(
                "Set the backend Python executable in Preferences > Add-ons > Pointwear"
            )
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


CLASSES = (POINTWEAR_OT_check_backend,)
