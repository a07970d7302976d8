# SPDX-License-Identifier: GPL-3.0-or-later
"""Sidebar UI: View3D > Sidebar (N) > Pointwear.

The main panel shows the backend (state, Start / Stop) and the subject folder (New Subject from
Video or Images, and a prepared subject's contact sheet); sub-panels hold
the fit (with its options collapsed), the running job (progress bar, stage, preview, Cancel),
the result (import, motion) and re-draping. Buttons that cannot run stay visible but greyed out,
with the reason in their tooltip (each operator's ``poll`` sets a poll message).

Drawing never changes data: the backend state comes from the live session, the job's progress
from ``scene.pointwear`` (mirrored by the pump on the main thread).
"""

import textwrap

from bpy.types import Panel

from .link import protocol
from .operators import install, runtime, subject
from .operators.jobs import RESUMABLE
from .preferences import connects_to_running, get_preferences
from .properties import BACKEND_STATE_NOT_STARTED

_STATE_ICONS = {
    runtime.STATE_NOT_STARTED: "UNLINKED",
    runtime.STATE_NOT_FOUND: "ERROR",
    runtime.STATE_STARTING: "SORTTIME",
    runtime.STATE_READY: "LINKED",
    runtime.STATE_BUSY: "SETTINGS",
    runtime.STATE_ERROR: "ERROR",
}


def _wrapped(layout, text, context, icon="NONE"):
    """Labels for a long text, wrapped to the sidebar's width."""
    region = getattr(context, "region", None)
    width = max(20, int((region.width if region is not None else 300) / 7))
    for n, line in enumerate(textwrap.wrap(text, width) or [""]):
        layout.label(text=line, icon=icon if n == 0 else "BLANK1" if icon != "NONE" else "NONE")


def _draw_install_hint(layout, context):
    """Why Start Backend cannot run yet: no backend installed, or one of another protocol."""
    prefs = get_preferences(context)
    if prefs is None or connects_to_running(prefs):
        return
    if not runtime.backend_python_path(context):
        _wrapped(layout.column(), "No backend yet: Preferences > Add-ons > Pointwear > Install "
                 "Backend", context, icon="INFO")
        return
    problem = install.version_problem(context)
    if problem:
        col = layout.column()
        col.alert = True
        _wrapped(col, problem, context, icon="ERROR")


class _PointwearPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Pointwear"


class VIEW3D_PT_pointwear(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear"
    bl_label = "Pointwear"

    def draw(self, context):
        layout = self.layout
        props = getattr(context.scene, "pointwear", None)
        if props is None:  # Scene property missing: add-on half registered.
            layout.label(text="Pointwear is not registered", icon="ERROR")
            return
        state, text, hint = runtime.live_state()
        state = state or BACKEND_STATE_NOT_STARTED
        box = layout.box()
        failed = state in (runtime.STATE_ERROR, runtime.STATE_NOT_FOUND)
        box.label(text="Backend: " + (state if failed else text),
                  icon=_STATE_ICONS.get(state, "QUESTION"))
        if failed:
            col = box.column()
            message = runtime.live_message()
            if message:
                col.alert = True
                _wrapped(col, message, context)
            if hint:
                _wrapped(box.column(), hint, context, icon="INFO")
        if state in (runtime.STATE_NOT_STARTED, runtime.STATE_NOT_FOUND):
            _draw_install_hint(box, context)
        row = box.row(align=True)
        if state in (runtime.STATE_READY, runtime.STATE_BUSY, runtime.STATE_STARTING,
                     runtime.STATE_ERROR):
            row.operator("pointwear.stop_backend", icon="CANCEL")
        if state != runtime.STATE_READY and state != runtime.STATE_BUSY:
            row.operator("pointwear.start_backend", icon="PLAY")
        box.operator("pointwear.check_backend", icon="CONSOLE")
        layout.separator()
        layout.prop(props, "subject_folder")
        layout.operator("pointwear.new_subject", icon="FILE_MOVIE")
        layout.operator("pointwear.reconstruct_image", icon="MOD_CLOTH")
        sheet = subject.subject_sheet(props)
        if sheet is not None:
            layout.label(text="Contact sheet: " + sheet.name, icon="IMAGE_DATA")
            icon_id = runtime.image_icon_id(sheet)
            if icon_id:
                layout.template_icon(icon_value=icon_id, scale=8.0)


class VIEW3D_PT_pointwear_fit(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_fit"
    bl_label = "Fit Outfit"
    bl_parent_id = "VIEW3D_PT_pointwear"

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(props, "fit_drape")
        row = layout.row()
        row.active = props.fit_drape == "PARAMETRIC"
        row.prop(props, "fit_template")
        row = layout.row()
        row.active = props.fit_drape == "PARAMETRIC"
        row.prop(props, "fit_garments")
        layout.prop(props, "auto_import")
        layout.operator("pointwear.fit_outfit", icon="MOD_CLOTH")


class VIEW3D_PT_pointwear_fit_options(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_fit_options"
    bl_label = "Options"
    bl_parent_id = "VIEW3D_PT_pointwear_fit"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(props, "fit_frames")
        col = layout.column(align=True)
        col.prop(props, "fit_codes")
        col.prop(props, "fit_coarse_steps")
        col.prop(props, "fit_fine_steps")
        col.prop(props, "fit_refine_steps")
        layout.prop(props, "fit_seed")
        # The fit uses the body named in the subject (subject.json); the SMPL model set in the
        # preferences is for body export only, as its tooltip says.
        col = layout.column()
        col.active = False
        col.label(text="Body: the subject's own (subject.json)", icon="OUTLINER_OB_ARMATURE")
        prefs = get_preferences(context)
        if prefs is not None and prefs.smpl_model_path:
            col.prop(prefs, "smpl_model_path", text="Body Export")


class VIEW3D_PT_pointwear_job(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_job"
    bl_label = "Job"
    bl_parent_id = "VIEW3D_PT_pointwear"

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        if not props.job_id:
            layout.label(text="No job yet")
            return
        text = "{}: {}".format(props.job_kind or "job", props.job_stage or props.job_state)
        if hasattr(layout, "progress"):  # Blender 4.0+
            layout.progress(factor=props.job_progress, type="BAR", text=text)
        else:
            layout.label(text="{} ({:.0f} %)".format(text, 100.0 * props.job_progress))
        if props.job_message:
            col = layout.column()
            col.alert = props.job_state == protocol.FAILED
            _wrapped(col, props.job_message, context,
                     icon="ERROR" if props.job_state == protocol.FAILED else "INFO")
            if props.job_hint:
                _wrapped(col, props.job_hint, context, icon="BLANK1")
        icon_id = runtime.preview_icon_id() if props.preview_path else 0
        if icon_id:
            layout.template_icon(icon_value=icon_id, scale=8.0)
        row = layout.row(align=True)
        row.operator("pointwear.cancel_job", icon="CANCEL")
        if props.job_kind in ("fit_outfit", "fit_appearance") and props.job_state in RESUMABLE:
            op = row.operator("pointwear." + props.job_kind, text="Resume", icon="RECOVER_LAST")
            if op is not None:  # None only in a recording layout (tests)
                op.resume = True


class VIEW3D_PT_pointwear_result(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_result"
    bl_label = "Result"
    bl_parent_id = "VIEW3D_PT_pointwear"

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        layout.prop(props, "result_folder")
        col = layout.column(heading="Import")
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(props, "point_radius")
        col.prop(props, "import_camera")
        col.prop(props, "import_motion")
        layout.operator("pointwear.import_result", icon="IMPORT")
        arm = props.armature
        if arm is not None and arm.get("pointwear_garments"):
            box = layout.box()
            box.label(text="Garments (inner first)", icon="MATCLOTH")
            for name in str(arm["pointwear_garments"]).split(", "):
                box.label(text=name)
        if arm is not None:
            _draw_sliders(layout.box(), arm)
        layout.separator()
        layout.prop(props, "armature")
        layout.operator("pointwear.load_motion", icon="ARMATURE_DATA")
        row = layout.row(align=True)
        row.prop(props, "retarget_source", text="")
        row.operator("pointwear.retarget_armature", text="Retarget", icon="CON_ARMATURE")
        layout.operator_menu_enum("pointwear.make_cloth", "preset", text="Make Cloth Simulation", icon="MOD_CLOTH")
        layout.operator("pointwear.export_result", icon="EXPORT")


def _draw_sliders(box, arm):
    """The outfit sliders: one per garment parameter, grouped by garment, with the value."""
    items = getattr(arm, "pointwear_sliders", ())
    if not len(items):
        box.operator("pointwear.load_sliders", icon="OPTIONS")
        return
    box.label(text="Outfit sliders", icon="OPTIONS")
    garment = None
    for item in items:
        if item.garment != garment:
            garment = item.garment
            box.label(text=garment)
        value = item.low + item.factor * (item.high - item.low)
        box.prop(item, "factor", text="{} {:.3g}".format(item.param, value), slider=True)
    row = box.row(align=True)
    row.operator("pointwear.apply_sliders", icon="CHECKMARK")
    row.operator("pointwear.reset_sliders", icon="LOOP_BACK")


class VIEW3D_PT_pointwear_redrape(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_redrape"
    bl_label = "Re-drape"
    bl_parent_id = "VIEW3D_PT_pointwear"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        layout.label(text="Body shape (betas)")
        grid = layout.grid_flow(columns=2, even_columns=True, align=True) \
            if hasattr(layout, "grid_flow") else layout.column(align=True)
        for i in range(len(props.redrape_betas)):
            grid.prop(props, "redrape_betas", index=i, text="β{}".format(i))
        layout.operator("pointwear.redrape", icon="MOD_CLOTH")


class VIEW3D_PT_pointwear_appearance(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_appearance"
    bl_label = "Appearance"
    bl_parent_id = "VIEW3D_PT_pointwear"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        import os

        layout = self.layout
        props = context.scene.pointwear
        armature = runtime.target_armature(context)
        folder = armature.get("pointwear_appearance", "") if armature is not None else ""
        box = layout.box()
        if folder:
            box.label(text="Appearance: " + os.path.basename(os.path.normpath(folder)),
                      icon="SHADING_TEXTURE")
        else:
            box.label(text="No appearance fitted", icon="SHADING_SOLID")
        layout.operator("pointwear.fit_appearance", icon="BRUSH_DATA")
        layout.separator()
        row = layout.row(align=True)
        row.operator("pointwear.neural_render", icon="RENDER_ANIMATION")
        row.prop(props, "neural_composite", text="", icon="NODE_COMPOSITING")
        if props.neural_output:
            layout.label(text="Frames: " + props.neural_output, icon="FILE_IMAGE")


class VIEW3D_PT_pointwear_appearance_options(_PointwearPanel, Panel):
    bl_idname = "VIEW3D_PT_pointwear_appearance_options"
    bl_label = "Options"
    bl_parent_id = "VIEW3D_PT_pointwear_appearance"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        props = context.scene.pointwear
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column(align=True)
        col.prop(props, "app_epochs")
        col.prop(props, "app_size")
        col.prop(props, "app_minutes")
        layout.prop(props, "app_seed")
        layout.prop(props, "neural_composite")


CLASSES = (
    VIEW3D_PT_pointwear,
    VIEW3D_PT_pointwear_fit,
    VIEW3D_PT_pointwear_fit_options,
    VIEW3D_PT_pointwear_job,
    VIEW3D_PT_pointwear_result,
    VIEW3D_PT_pointwear_redrape,
    VIEW3D_PT_pointwear_appearance,
    VIEW3D_PT_pointwear_appearance_options,
)
