# SPDX-License-Identifier: GPL-3.0-or-later
"""Artist-ready garment operators (README "Artist-ready garments"):

- ``pointwear.retarget_armature``: another armature's action (e.g. from Blender's BVH importer)
  sampled into a skeleton file, retargeted to SMPL by the backend's ``motion_import`` job and
  keyed on the Pointwear armature (a new action; the report's joint error and foot skating are
  stored on it).
- ``pointwear.export_result`` ("Export..."): the armature's result (its fitted appearance when that
  was fitted on it) through the backend's ``export`` job as a glTF binary (with the armature's
  current motion file as its animation), OBJ + MTL + PNG or PLY points, put at the path chosen in
  the file browser (``io/export_files.py``).
- the outfit sliders (``pointwear.load_sliders``, ``pointwear.apply_sliders``,
  ``pointwear.reset_sliders``) live in :mod:`.sliders`.
"""

import json
import os
import tempfile

import numpy as np
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty
from bpy.types import Operator

from ..io import export_files, skeleton
from ..link import protocol
from ..properties import is_pointwear_armature
from . import runtime
from .appearance import appearance_folder
from .jobs import BrowseJobMixin, JobOperatorMixin, poll_backend_free
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


# -- Export... ----------------------------------------------------------------------------------

AFTER_EXPORT = "export"
EXPORT_FORMAT_ITEMS = [
    ("GLB", "glTF Binary (.glb)", "Skinned, textured garment mesh with the SMPL skeleton (and the motion)"),
    ("OBJ", "OBJ (.obj + .mtl + .png)", "Rest-pose garment mesh with UVs and its texture"),
    ("PLY", "PLY points (.ply)", "The rest-pose clothing points with their colours"),
]
EXPORT_UP_ITEMS = [
    ("AUTO", "As Loaded", "The up axis the motion was loaded with (else the file's own hint, else Z)"),
    ("Y", "Y", "The motion file is Y-up (Pointwear's walks and retargeted motions)"),
    ("Z", "Z", "The motion file is Z-up (AMASS)"),
]


def export_source(context):
    """The result folder to export: the target armature's result, or the appearance fitted on it
    (textured) when it has one; else the scene's result folder. "" when there is none."""
    props = context.scene.pointwear
    armature = runtime.target_armature(context)
    if armature is not None and armature.get("pointwear_result"):
        result = runtime.abspath(str(armature["pointwear_result"]))
        app = appearance_folder(armature)
        if app and (os.path.normpath(app) == result or _fitted_on(app) == result):
            return os.path.normpath(app)
        return result
    return runtime.abspath(props.result_folder.strip())


def _fitted_on(app):
    """The outfit folder an appearance result was fitted on (its result.json "outfit"), or ""."""
    try:
        with open(os.path.join(app, protocol.RESULT_JSON), encoding="utf-8") as f:
            outfit = json.load(f).get("outfit")
    except (OSError, ValueError, AttributeError):
        return ""
    return os.path.normpath(outfit) if isinstance(outfit, str) and outfit else ""


def current_motion(armature):
    """(motion file, up "Y"/"Z"/"") of the armature's current action when it was keyed from an
    AMASS-style file (Load Motion, a retarget); ("", "") for the subject's own poses or none."""
    from ..scene import motion as motion_keys

    anim = armature.animation_data if armature is not None else None
    action = anim.action if anim is not None else None
    if action is None:
        return "", ""
    source = str(action.get(motion_keys.SOURCE_PROP, ""))
    if not source.lower().endswith(".npz") or os.path.basename(source) == protocol.POSED_NPZ \
            or not os.path.isfile(source):
        return "", ""
    turn = action.get(motion_keys.ROTATION_PROP)
    up = ""
    if turn is not None and len(turn) == 9:
        up = "Y" if np.allclose(np.asarray(list(turn), np.float64).reshape(3, 3), np.eye(3), atol=1e-6) else "Z"
    return source, up


def finish_export(context, job, scene):
    """Put the export job's files at the chosen path; returns the message."""
    fmt = job.params.get("format", "glb")
    written = export_files.place_export(job.folder, fmt, job.tag.get("filepath") or "")
    motion = job.params.get("motion")
    return "Exported {} to {}{}".format(
        job.tag.get("result_name") or "the result", ", ".join(written),
        " with the motion {}".format(os.path.basename(motion)) if motion else "")


runtime.register_finisher(AFTER_EXPORT, finish_export)


class POINTWEAR_OT_export_result(BrowseJobMixin, Operator):
    """Export the armature's result (textured when it has a fitted appearance) through the backend:
    a skinned glTF binary with the current motion, OBJ + MTL + PNG, or PLY points. Esc cancels"""

    bl_idname = "pointwear.export_result"
    bl_label = "Export..."
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="File", description="Where to write the export", subtype="FILE_PATH",
                             default="", options={"SKIP_SAVE"})
    check_existing: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default="*.glb;*.obj;*.ply", options={"HIDDEN"})
    format: EnumProperty(name="Format", items=EXPORT_FORMAT_ITEMS, default="GLB")
    with_motion: BoolProperty(name="Motion", description="Animate the glTF with the armature's current "
                                                         "motion file (glTF only)", default=True)
    motion: StringProperty(name="Motion File", description="AMASS-style .npz to animate the glTF with "
                                                           "(default: the armature's current motion file)",
                           subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    up: EnumProperty(name="Up Axis", description="Up axis of the motion file", items=EXPORT_UP_ITEMS,
                     default="AUTO")

    @classmethod
    def poll(cls, context):
        if not BrowseJobMixin.poll.__func__(cls, context):
            return False
        if not export_source(context):
            cls.poll_message_set("Import or fit a result first")
            return False
        return True

    def invoke(self, context, event):
        if not self.filepath:
            name = os.path.basename(export_source(context)) or "garment"
            self.filepath = name + export_files.SUFFIXES[self.format.lower()]
        if not self.motion:
            self.motion = current_motion(runtime.target_armature(context))[0]
        return BrowseJobMixin.invoke(self, context, event)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(self, "format")
        col = layout.column()
        col.active = self.format == "GLB"
        col.prop(self, "with_motion")
        sub = col.column()
        sub.active = self.with_motion
        sub.prop(self, "motion", text="File")
        sub.prop(self, "up")

    def job_request(self, context):
        result = export_source(context)
        if not result or not os.path.isfile(os.path.join(result, protocol.OUTFIT_NPZ)):
            raise ValueError("No result to export: {}".format(result or "import or fit one first"))
        if not self.filepath.strip():
            raise ValueError("Choose a file to export to")
        fmt = self.format.lower()
        try:
            path = export_files.target_path(runtime.abspath(self.filepath.strip()), fmt)
        except export_files.ExportFileError as ex:
            raise ValueError(str(ex)) from None
        if not os.path.isdir(os.path.dirname(path)):
            raise ValueError("The folder does not exist: " + os.path.dirname(path))
        params = {"result": result, "format": fmt}
        if fmt == "glb" and self.with_motion:
            armature = runtime.target_armature(context)
            loaded, loaded_up = current_motion(armature)
            motion = runtime.abspath(self.motion.strip()) if self.motion.strip() else loaded
            if motion:
                if not os.path.isfile(motion):
                    raise ValueError("Motion file not found: " + motion)
                up = self.up if self.up != "AUTO" else (loaded_up if motion == loaded else "")
                params["motion"] = motion
                params["up"] = up.lower() if up else "auto"
        tag = {"filepath": path, "result_name": os.path.basename(result)}
        return protocol.KIND_EXPORT, params, AFTER_EXPORT, tag


CLASSES = (POINTWEAR_OT_retarget_armature, POINTWEAR_OT_export_result)
