# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: how to reach (or start) the Pointwear backend."""

import bpy
from bpy.props import EnumProperty, IntProperty, StringProperty
from bpy.types import AddonPreferences

# The top-level package of the extension (``bl_ext.<repo>.pointwear`` once installed). This module
# sits directly in it, so its ``__package__`` is that package; Blender keys add-on preferences by it.
ADDON_PACKAGE = __package__

DEVICE_ITEMS = (
    ("AUTO", "Auto", "CUDA when the backend's torch sees a GPU, else CPU"),
    ("CPU", "CPU", "Always run the backend on the CPU"),
    ("CUDA", "CUDA", "Run the backend on the GPU (fails if torch has no CUDA)"),
)


class POINTWEAR_AddonPreferences(AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend_python: StringProperty(
        name="Backend Python",
        description=(
            "Python executable of the environment where the Pointwear backend is installed "
            "(it is started as '<python> -m pointwear serve')"
        ),
        subtype="FILE_PATH",
        default="",
    )
    host: StringProperty(
        name="Host",
        description="Address of a running backend; the add-on only talks to this machine",
        default="127.0.0.1",
    )
    port: IntProperty(
        name="Port",
        description=(
            "0: the add-on starts its own backend (Start Backend) and stops it again. Any other "
            "port: connect to a backend already running there ('pointwear serve --port N'), "
            "with the token below; the add-on leaves it running"
        ),
        default=0,
        min=0,
        max=65535,
    )
    token: StringProperty(
        name="Token",
        description="Shared secret sent in the hello message to a running backend",
        subtype="PASSWORD",
        default="",
    )
    work_folder: StringProperty(
        name="Work Folder",
        description="Folder for job folders and results; empty uses a temporary folder",
        subtype="DIR_PATH",
        default="",
    )
    smpl_model_path: StringProperty(
        name="SMPL Model",
        description=(
            "Optional SMPL model file (.pkl or .npz) for body jobs; empty uses the free default "
            "body. Fitting always uses the body named in the subject's subject.json, and "
            "re-draping the body of the fitted result"
        ),
        subtype="FILE_PATH",
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the backend runs its PyTorch work",
        items=DEVICE_ITEMS,
        default="AUTO",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        col = layout.column(heading="Backend")
        col.prop(self, "backend_python")
        col.prop(self, "device")
        col = layout.column(heading="Connection")
        col.prop(self, "port")
        col.prop(self, "host")
        col.prop(self, "token")
        col.label(text="Port 0: Start Backend runs the Python above and stops it again", icon="INFO")
        col.label(text="Other port: connect to a running backend with this token", icon="BLANK1")
        col = layout.column(heading="Files")
        col.prop(self, "work_folder")
        col.prop(self, "smpl_model_path")


def connects_to_running(prefs):
    """True when the preferences name a running backend to connect to (port != 0)."""
    return prefs is not None and int(prefs.port) != 0


def get_preferences(context=None):
    """This add-on's preferences, or None when the add-on is not enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


CLASSES = (POINTWEAR_AddonPreferences,)
