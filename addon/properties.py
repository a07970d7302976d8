# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-scene Pointwear state, reached as ``scene.pointwear``."""

import bpy
from bpy.props import PointerProperty, StringProperty
from bpy.types import PropertyGroup

BACKEND_STATE_NOT_STARTED = "not started"


class POINTWEAR_SceneProperties(PropertyGroup):
    subject_folder: StringProperty(
        name="Subject Folder",
        description="Subject folder to fit (subject.json, frames/, masks/, smpl.npz)",
        subtype="DIR_PATH",
        default="",
    )
    result_folder: StringProperty(
        name="Result Folder",
        description="Folder with a fitted result (outfit.npz, result.json) to bring into the scene",
        subtype="DIR_PATH",
        default="",
    )
    backend_state: StringProperty(
        name="Backend State",
        description="What the add-on last knew about the backend",
        default=BACKEND_STATE_NOT_STARTED,
    )


CLASSES = (POINTWEAR_SceneProperties,)


def register_extra():
    bpy.types.Scene.pointwear = PointerProperty(type=POINTWEAR_SceneProperties)


def unregister_extra():
    if hasattr(bpy.types.Scene, "pointwear"):
        del bpy.types.Scene.pointwear
