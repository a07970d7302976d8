# SPDX-License-Identifier: GPL-3.0-or-later
"""Scene operators: import a fitted result, load a motion, re-drape on a new body shape."""

import os

from bpy.props import EnumProperty, StringProperty
from bpy.types import Operator

from ..link import protocol
from ..properties import UP_ITEMS
from ..scene import cloth
from . import runtime
from .jobs import JobOperatorMixin, poll_backend_free


def _is_result_folder(folder):
    return os.path.isfile(os.path.join(folder, protocol.OUTFIT_NPZ))


class POINTWEAR_OT_import_result(Operator):
    """Bring a fitted result (armature, body, clothing points and mesh, camera, motion) into the
    scene"""

    bl_idname = "pointwear.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        props = getattr(context.scene, "pointwear", None)
        if props is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        if not props.result_folder.strip():
            cls.poll_message_set("Set a result folder")
            return False
        return _poll_mode(cls, context)

    def execute(self, context):
        folder = runtime.abspath(context.scene.pointwear.result_folder.strip())
        if not _is_result_folder(folder):
            self.report({"ERROR"}, "Not a Pointwear result folder (no outfit.npz): " + folder)
            return {"CANCELLED"}
        try:
            objects = runtime.import_result(context, folder)
        except (OSError, ValueError, KeyError) as ex:
            self.report({"ERROR"}, "Cannot import {}: {}".format(folder, ex))
            return {"CANCELLED"}
        armature = objects.get("armature")
        self.report({"INFO"}, "Imported {}".format(armature.name if armature else folder))
        return {"FINISHED"}


def _poll_mode(cls, context, modes=("OBJECT",)):
    """True in one of `modes`; else say which mode to switch to."""
    if context.mode in modes:
        return True
    cls.poll_message_set("Switch to Object Mode")
    return False


def _poll_armature(cls, context):
    if getattr(context.scene, "pointwear", None) is None:
        cls.poll_message_set("The Pointwear add-on is not enabled")
        return None
    armature = runtime.target_armature(context)
    if armature is None:
        cls.poll_message_set("Select a Pointwear armature")
    return armature


class POINTWEAR_OT_load_motion(Operator):
    """Key an AMASS-style motion (.npz: poses, trans, mocap_framerate) on the Pointwear armature
    (the active one, else the last imported one)"""

    bl_idname = "pointwear.load_motion"
    bl_label = "Load Motion"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File Path", subtype="FILE_PATH", default="",
                             options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    up: EnumProperty(name="Up Axis", description="Up axis of the motion file (AMASS: Z)",
                     items=UP_ITEMS, default="Z")

    @classmethod
    def poll(cls, context):
        if _poll_armature(cls, context) is None:
            return False
        return _poll_mode(cls, context, ("OBJECT", "POSE"))

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = runtime.abspath(self.filepath.strip())
        if not path or not os.path.isfile(path):
            self.report({"ERROR"}, "Motion file not found: " + (path or "(none given)"))
            return {"CANCELLED"}
        armature = runtime.target_armature(context)
        from ..scene import importer

        try:
            result = importer.load_motion(context, armature, path, up=self.up)
        except (OSError, ValueError, KeyError) as ex:
            self.report({"ERROR"}, "Cannot load the motion {}: {}".format(path, ex))
            return {"CANCELLED"}
        frames = ""
        if isinstance(result, dict) and result.get("frames"):
            frames = " ({} frames)".format(result["frames"])
        elif getattr(result, "frame_range", None) is not None:  # an action
            frames = " (frames {:g}-{:g})".format(*result.frame_range)
        self.report({"INFO"}, "Loaded {} on {}{}".format(os.path.basename(path), armature.name,
                                                         frames))
        return {"FINISHED"}


class POINTWEAR_OT_redrape(JobOperatorMixin, Operator):
    """Re-drape the armature's outfit on the body shape set by the Shape values: body, joints
    and clothing are updated in place and keep their animation"""

    bl_idname = "pointwear.redrape"
    bl_label = "Re-drape"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        armature = _poll_armature(cls, context)
        if armature is None:
            return False
        if not poll_backend_free(cls):
            return False
        if not armature.get("pointwear_result"):
            cls.poll_message_set("The armature has no fitted result to re-drape")
            return False
        return _poll_mode(cls, context, ("OBJECT", "POSE"))

    def job_request(self, context):
        props = context.scene.pointwear
        armature = runtime.target_armature(context)
        result = runtime.abspath(str(armature["pointwear_result"]))
        if not os.path.isdir(result):
            raise ValueError("The fitted result of {} is gone: {}".format(armature.name, result))
        # Rest pose only: the armature keeps its animation, which poses the re-draped clothing.
        params = {"result": result, "betas": [float(b) for b in props.redrape_betas]}
        return protocol.KIND_DRAPE, params, runtime.AFTER_REDRAPE, {"armature": armature.name}


class POINTWEAR_OT_make_cloth(Operator):
    """Hand the garment mesh to Blender's cloth simulation: a Cloth modifier pinned at the
    waistband and shoulders (from the skin weights), Collision on the body, the frame range of
    the armature's motion"""

    bl_idname = "pointwear.make_cloth"
    bl_label = "Make Cloth Simulation"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", description="Cloth material (Blender's presets)",
                         items=cloth.PRESET_ITEMS, default="COTTON")

    @classmethod
    def poll(cls, context):
        armature = _poll_armature(cls, context)
        if armature is None:
            return False
        return _poll_mode(cls, context)

    def execute(self, context):
        from ..scene import armature as armature_builder
        from ..scene import importer

        armature = runtime.target_armature(context)
        parts = importer.pointwear_children(armature)
        try:
            info = cloth.make_cloth(context, armature, parts.get("clothing_mesh"), parts.get("body"),
                                    armature_builder.joint_names(armature),
                                    armature_builder.rest_joints(armature), self.preset)
        except (ValueError, OSError, KeyError) as ex:
            self.report({"ERROR"}, "Cannot make the cloth simulation: {}".format(ex))
            return {"CANCELLED"}
        self.report({"INFO"}, "Cloth ({}) on {}: {} pinned vertices ({} shoulders, {} waistband), frames {}-{}".format(
            self.preset.lower(), parts["clothing_mesh"].name, info["pinned"], info["shoulders"], info["waistband"],
            info["frame_start"], info["frame_end"]))
        return {"FINISHED"}


CLASSES = (POINTWEAR_OT_import_result, POINTWEAR_OT_load_motion, POINTWEAR_OT_redrape, POINTWEAR_OT_make_cloth)
