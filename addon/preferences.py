# SPDX-License-Identifier: GPL-3.0-or-later
"""Add-on preferences: the backend's own environment (install / update / remove, diagnostics) and
how to reach (or start) the backend."""

import os

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty
from bpy.types import AddonPreferences

# Hooks that draw a section of the preferences: callables (prefs, layout, context), registered
# by the module that owns the section (extension by hooks, not imports of those modules).
DRAW_SECTIONS = []

# The top-level package of the extension (``bl_ext.<repo>.pointwear`` once installed). This module
# sits directly in it, so its ``__package__`` is that package; Blender keys add-on preferences by it.
ADDON_PACKAGE = __package__

DEVICE_ITEMS = (
    ("AUTO", "Auto", "CUDA when the backend's torch sees a GPU, else CPU"),
    ("CPU", "CPU", "Always run the backend on the CPU"),
    ("CUDA", "CUDA", "Run the backend on the GPU (fails if torch has no CUDA)"),
)

TRANSFER_ITEMS = (
    ("AUTO", "Auto", "Upload inputs and download results when the backend is on another machine "
     "(a host other than this one, or TLS)"),
    ("ALWAYS", "Always", "Upload and download even on 127.0.0.1: an SSH tunnel to another machine"),
    ("NEVER", "Never", "The backend reads and writes this machine's files (same machine or a shared "
     "filesystem with the same paths)"),
)


TORCH_BUILD_ITEMS = (
    ("AUTO", "Auto", "CUDA when an NVIDIA driver is found (nvidia-smi or /proc/driver/nvidia), "
                     "else CPU"),
    ("CPU", "CPU", "The CPU build of PyTorch (smaller; no GPU)"),
    ("CUDA", "CUDA", "The CUDA build of PyTorch (needs an NVIDIA GPU and driver)"),
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
        description=("Address of a running backend: this machine (127.0.0.1, also the end of an SSH "
                     "tunnel) or another one, which needs TLS (the fingerprint below)"),
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
    fingerprint: StringProperty(
        name="TLS Fingerprint",
        description=("SHA-256 fingerprint of the backend's certificate, as 'pointwear serve --tls' "
                     "prints it. Set: the connection is TLS and only that certificate is accepted. "
                     "Empty: plain TCP (this machine or an SSH tunnel only)"),
        default="",
    )
    file_transfer: EnumProperty(
        name="File Transfer",
        description="Send subjects to the backend and fetch results over the connection",
        items=TRANSFER_ITEMS,
        default="AUTO",
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

    # -- the backend's own environment (Install Backend) -----------------------------------------
    install_python: StringProperty(
        name="Python for the Backend",
        description=(
            "A Python 3.11 to make the backend's environment from; empty uses Blender's own "
            "Python (it can make environments in Blender 4.2 and later)"
        ),
        subtype="FILE_PATH",
        default="",
    )
    torch_build: EnumProperty(
        name="PyTorch Build",
        description="Which PyTorch Install Backend installs",
        items=TORCH_BUILD_ITEMS,
        default="AUTO",
    )
    torch_index_url: StringProperty(
        name="PyTorch Index",
        description=(
            "pip index for PyTorch; empty picks PyTorch's CPU index for the CPU build and pip's "
            "own index (or PyTorch's CUDA index on Windows) for the CUDA build"
        ),
        default="",
    )
    wheel_folder: StringProperty(
        name="Wheel Folder",
        description=(
            "A folder of wheels (pip download -r requirements -d FOLDER) used first; a Pointwear "
            "wheel in it is installed instead of the one bundled with the add-on"
        ),
        subtype="DIR_PATH",
        default="",
    )
    offline: BoolProperty(
        name="Offline",
        description="Install only from the Wheel Folder and the bundled wheel, never the internet",
        default=False,
    )
    shared_python: StringProperty(
        name="Shared Packages From",
        description=(
            "Optional: the Python of an existing environment whose packages (e.g. a studio's "
            "CUDA PyTorch) the backend reuses instead of installing them again"
        ),
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        # Sections drawn by the modules that own them (the backend environment and diagnostics:
        # operators/install.py registers them), so this module imports none of them.
        for section in DRAW_SECTIONS:
            section(get_preferences(context) or self, layout, context)
        col = layout.column(heading="Backend")
        col.prop(self, "backend_python")
        col.prop(self, "device")
        col = layout.column(heading="Connection")
        col.prop(self, "port")
        col.prop(self, "host")
        col.prop(self, "token")
        col.prop(self, "fingerprint")
        col.prop(self, "file_transfer")
        col.label(text="Port 0: Start Backend runs the Python above and stops it again", icon="INFO")
        col.label(text="Other port: connect to a running backend with this token", icon="BLANK1")
        col.label(text="Another machine: 'pointwear serve --host 0.0.0.0 --tls', pin its fingerprint",
                  icon="BLANK1")
        col = layout.column(heading="Files")
        col.prop(self, "work_folder")
        col.prop(self, "smpl_model_path")


def connects_to_running(prefs):
    """True when the preferences name a running backend to connect to (port != 0)."""
    return prefs is not None and int(prefs.port) != 0


def uses_file_transfer(prefs, host):
    """True when a running backend at ``host`` gets inputs uploaded and results downloaded."""
    mode = prefs.file_transfer if prefs is not None else "AUTO"
    if mode == "AUTO":
        from .link import protocol
        return host not in protocol.LOCAL_HOSTS or bool(prefs.fingerprint.strip())
    return mode == "ALWAYS"


def backend_root(create=False):
    """The folder holding the backend's environments: the extension's user folder
    (``bpy.utils.extension_path_user``), or for a legacy add-on (not ``bl_ext.*``) Blender's user
    data folder ``<datafiles>/pointwear``. "" when there is none yet and ``create`` is False."""
    try:
        return bpy.utils.extension_path_user(ADDON_PACKAGE, path="backend", create=create)
    except (ValueError, AttributeError, RuntimeError):
        # Not installed as an extension (or a Blender before 4.2).
        path = bpy.utils.user_resource("DATAFILES", path=os.path.join("pointwear", "backend"),
                                       create=create)
        return path if (create or os.path.isdir(path)) else ""


def get_preferences(context=None):
    """This add-on's preferences, or None when the add-on is not enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


CLASSES = (POINTWEAR_AddonPreferences,)
