# SPDX-License-Identifier: GPL-3.0-or-later
"""Artist-ready garment operators (README "Artist-ready garments"):

- ``pointwear.retarget_armature``: another armature's action (e.g. from Blender's BVH importer)
  sampled into a skeleton file, retargeted to SMPL by the backend's ``motion_import`` job and
  keyed on the Pointwear armature (a new action; the report's joint error and foot skating are
  stored on it).
- the outfit sliders (``pointwear.load_sliders``, ``pointwear.apply_sliders``,
  ``pointwear.reset_sliders``) live in :mod:`.sliders`.
"""

import json
import os
import tempfile

import numpy as np
from bpy.props import IntProperty
from bpy.types import Operator

from ..io import skeleton
from ..link import protocol
from ..properties import is_pointwear_armature
from . import runtime
from .jobs import JobOperatorMixin, poll_backend_free
from .scene_ops import _poll_armature

AFTER_RETARGET = "retarget"
REPORT_PROP = "pointwear_retarget_report"


def finish_retarget(context, job, scene):
    """Key the retargeted motion on the job's armature; returns the message."""
    import bpy

    from ..scene import importer
    from ..scene import motion as motion_keys

    armature = bpy.data.objects.get(job.tag.get("armature") or "")
    if armature is None:
        raise ValueError("the armature {!r} is gone: motion not keyed".format(job.tag.get("armature")))
    folder = job.folder
    motion = os.path.join(folder, protocol.MOTION_NPZ)
    with open(os.path.join(folder, protocol.MOTION_REPORT), encoding="utf-8") as f:
        report = json.load(f)
    keyed = importer.load_motion(context, armature, motion, up="Y")
    action = keyed["action"]
    start = int(job.tag.get("frame_start") or 0)     # key on the source's own frames
    motion_keys.shift_keys(armature, start)
    scene.frame_start, scene.frame_end = start, start + keyed["frames"] - 1
    action.name = "{} retargeted".format(job.tag.get("source") or "motion")
    summary = {"joint_error_cm": report["joint_error_cm"]["all"],
               "root_and_legs_error_cm": report["joint_error_cm"]["root_and_legs"],
               "foot_skating_cm_s": report["foot_skating"]["retargeted"]["speed_cm_s"],
               "source_foot_skating_cm_s": report["foot_skating"]["source"]["speed_cm_s"],
               "units": report["units"], "up": report["up"]}
    action[REPORT_PROP] = json.dumps(summary)
    return "Retargeted {} onto {}: {} frames; {} Joint error {:.1f} cm, foot skating {:.1f} cm/s (source {:.1f})".format(
        job.tag.get("source"), armature.name, keyed["frames"], " ".join(report["notes"][:2]),
        summary["joint_error_cm"], summary["foot_skating_cm_s"], summary["source_foot_skating_cm_s"])


runtime.register_finisher(AFTER_RETARGET, finish_retarget)


class POINTWEAR_OT_retarget_armature(JobOperatorMixin, Operator):
    """Copy another armature's action (e.g. one Blender's BVH importer made) onto the Pointwear
    armature: sampled, retargeted to SMPL's 24 joints by the backend and keyed as a new action"""

    bl_idname = "pointwear.retarget_armature"
    bl_label = "Retarget from Armature"
    bl_options = {"REGISTER", "UNDO"}

    frame_start: IntProperty(name="Start", description="First frame to retarget (with End > 0)", default=0)
    frame_end: IntProperty(name="End", description="Last frame to retarget (0: the whole action)", default=0,
                           min=0)

    @classmethod
    def poll(cls, context):
        if _poll_armature(cls, context) is None:
            return False
        if context.scene.pointwear.retarget_source is None:
            cls.poll_message_set("Choose the armature to retarget from")
            return False
        return poll_backend_free(cls)

    def job_request(self, context):
        from ..scene import retarget

        props = context.scene.pointwear
        source = props.retarget_source
        armature = runtime.target_armature(context)
        if source is None or is_pointwear_armature(source):
            raise ValueError("Choose another armature than a Pointwear one to retarget from")
        try:
            start, end = retarget.frame_range(source, self.frame_start, self.frame_end)
            arrays = retarget.sample_armature(context.scene, source, start, end)
        except skeleton.SkeletonError as ex:
            raise ValueError(str(ex)) from None
        work = runtime.work_folder(context)
        os.makedirs(work, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="retarget-inputs-", dir=work)
        path = os.path.join(folder, protocol.SKELETON_NPZ)
        np.savez(path, **arrays)
        # the source's own frame rate: the retargeted keys land on the source's frames
        params = {"source": path, "fps": min(240.0, max(1.0, float(arrays["fps"])))}
        tag = {"armature": armature.name, "source": source.name, "inputs": folder, "frame_start": start}
        return protocol.KIND_MOTION_IMPORT, params, AFTER_RETARGET, tag


CLASSES = (POINTWEAR_OT_retarget_armature,)
