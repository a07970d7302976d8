# SPDX-License-Identifier: GPL-3.0-or-later
"""Sidebar UI: View3D > Sidebar (N) > Pointwear."""

from bpy.types import Panel

from .operators import POINTWEAR_OT_check_backend
from .properties import BACKEND_STATE_NOT_STARTED


class VIEW3D_PT_pointwear(Panel):
    bl_idname = "VIEW3D_PT_pointwear"
    bl_label = "Pointwear"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Pointwear"

    def draw(self, context):
        layout = self.layout
        props = getattr(context.scene, "pointwear", None)
        if props is None:  # Scene property missing: add-on half registered.
            layout.label(text="Pointwear is not registered", icon="ERROR")
            return
        state = props.backend_state or BACKEND_STATE_NOT_STARTED
        row = layout.row()
        row.label(text="Backend: " + state, icon="LINKED" if state == "connected" else "UNLINKED")
        layout.operator(POINTWEAR_OT_check_backend.bl_idname, icon="CONSOLE")
        layout.separator()
        layout.prop(props, "subject_folder")


CLASSES = (VIEW3D_PT_pointwear,)
