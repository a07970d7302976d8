# SPDX-License-Identifier: GPL-3.0-or-later
"""Outfit slider operators: Load Sliders (the backend's ``sliders`` job writes the result's slider
table; the sliders appear in the Result panel), Reset Sliders, and Apply (the ``edit`` job drapes
the chosen values exactly into a new result folder, applied to the armature in place)."""

import os

from bpy.types import Operator

from ..link import protocol
from . import runtime
from .jobs import JobOperatorMixin, poll_backend_free
from .scene_ops import _poll_armature

AFTER_SLIDERS = "sliders"
AFTER_EDIT = "edit"


def _armature(job):
    import bpy

    armature = bpy.data.objects.get(job.tag.get("armature") or "")
    if armature is None:
        raise ValueError("the armature {!r} is gone".format(job.tag.get("armature")))
    return armature


def finish_sliders(context, job, scene):
    from ..scene import sliders

    armature = _armature(job)
    table = sliders.load(armature, os.path.join(job.folder, protocol.SLIDERS_NPZ))
    return "{} sliders for {}: {}".format(table.count, armature.name, ", ".join(table.names))


def finish_edit(context, job, scene):
    from ..scene import importer, sliders

    armature = _armature(job)
    importer.apply_redrape(context, armature, job.folder, with_motion=False)
    armature["pointwear_result"] = job.folder
    for obj in importer.pointwear_children(armature).values():
        obj["pointwear_result"] = job.folder
    scene.pointwear.result_folder = job.folder
    sliders.clear(armature)
    return "Applied {} to {}: new result {}".format(
        ", ".join("{}={:.3g}".format(k, v) for k, v in sorted(job.params.get("set", {}).items())),
        armature.name, job.folder)


runtime.register_finisher(AFTER_SLIDERS, finish_sliders)
runtime.register_finisher(AFTER_EDIT, finish_edit)


def _poll_result(cls, context):
    """The target armature when it has a fitted result (else None, with the poll message)."""
    armature = _poll_armature(cls, context)
    if armature is not None and not armature.get("pointwear_result"):
        cls.poll_message_set("The armature has no fitted result")
        return None
    return armature


class POINTWEAR_OT_load_sliders(JobOperatorMixin, Operator):
    """Show the outfit's garment parameters as sliders (the backend computes how each one moves
    the garment; moving a slider then re-drapes it live)"""

    bl_idname = "pointwear.load_sliders"
    bl_label = "Outfit Sliders"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _poll_result(cls, context) is not None and poll_backend_free(cls)

    def job_request(self, context):
        armature = runtime.target_armature(context)
        result = runtime.abspath(str(armature["pointwear_result"]))
        if not os.path.isfile(os.path.join(result, protocol.OUTFIT_NPZ)):
            raise ValueError("The fitted result of {} is gone: {}".format(armature.name, result))
        return protocol.KIND_SLIDERS, {"result": result}, AFTER_SLIDERS, {"armature": armature.name}


class POINTWEAR_OT_apply_sliders(JobOperatorMixin, Operator):
    """Drape the slider values exactly into a new result folder and apply it to the armature"""

    bl_idname = "pointwear.apply_sliders"
    bl_label = "Apply"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        from ..scene import sliders

        armature = _poll_result(cls, context)
        if armature is None:
            return False
        if not sliders.moved(armature):
            cls.poll_message_set("Move a slider first")
            return False
        return poll_backend_free(cls)

    def job_request(self, context):
        from ..scene import sliders

        armature = runtime.target_armature(context)
        values = sliders.moved(armature)
        if not values:
            raise ValueError("Move a slider first")
        result = runtime.abspath(str(armature["pointwear_result"]))
        return protocol.KIND_EDIT, {"result": result, "set": values}, AFTER_EDIT, {"armature": armature.name}


class POINTWEAR_OT_reset_sliders(Operator):
    """Put every outfit slider back to the fitted value"""

    bl_idname = "pointwear.reset_sliders"
    bl_label = "Reset"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        armature = _poll_result(cls, context)
        return armature is not None and len(armature.pointwear_sliders) > 0

    def execute(self, context):
        from ..scene import sliders

        sliders.reset(runtime.target_armature(context))
        return {"FINISHED"}


CLASSES = (POINTWEAR_OT_load_sliders, POINTWEAR_OT_apply_sliders, POINTWEAR_OT_reset_sliders)
