# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-scene Pointwear state, reached as ``scene.pointwear``.

Three kinds of fields:

- inputs the artist sets: folders, fit options, import options, re-drape shape;
- a mirror of the backend and of the current job, written only by the add-on on Blender's main
  thread (``operators.runtime.sync``) so the sidebar and scripts can read them
  (``backend_state``, ``job_stage``, ``job_progress``, ...);
- ``armature``: the Pointwear armature the motion / re-drape buttons work on (set by an import).
"""

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

BACKEND_STATE_NOT_STARTED = "not started"

DRAPE_ITEMS = (
    ("PARAMETRIC", "Parametric", "Garment templates driven by a code (fits every template, or one)"),
    ("NEURAL", "Neural", "The learned 8-D outfit code drape (Point-Based Modeling of Human Clothing)"),
)
TEMPLATE_ITEMS = (
    ("AUTO", "Auto", "Choose the garments from every family (per label when the subject has labels)"),
    ("TSHIRT_SHORTS", "T-shirt and Shorts", ""),
    ("LONGSLEEVE_TROUSERS", "Long Sleeves and Trousers", ""),
    ("TANK_SKIRT", "Tank Top and Skirt", ""),
    ("DRESS", "Dress", ""),
)


def backend_name(identifier):
    """An enum identifier as the backend spells the value: TSHIRT_SHORTS -> tshirt-shorts."""
    return identifier.lower().replace("_", "-")


UP_ITEMS = (
    ("Z", "Z", "The motion file is Z-up (AMASS)"),
    ("Y", "Y", "The motion file is Y-up (SMPL space)"),
)


def is_pointwear_armature(obj):
    return (obj is not None and getattr(obj, "type", "") == "ARMATURE"
            and obj.get("pointwear_kind") == "armature")


def _armature_poll(self, obj):
    return is_pointwear_armature(obj)


def _source_armature_poll(self, obj):
    return getattr(obj, "type", "") == "ARMATURE" and not is_pointwear_armature(obj)


def _slider_update(self, context):
    from .scene import sliders

    sliders.redrape(self.id_data)


class POINTWEAR_Slider(PropertyGroup):
    """One outfit slider of a Pointwear armature (``Object.pointwear_sliders``): a garment
    parameter as a factor of its range; moving it re-drapes the clothing (scene/sliders.py)."""

    garment: StringProperty(name="Garment", default="")
    param: StringProperty(name="Parameter", default="")
    low: FloatProperty(name="Low", default=0.0)
    high: FloatProperty(name="High", default=1.0)
    rest_factor: FloatProperty(name="Fitted", description="The fit's own value (as a factor)", default=0.5)
    factor: FloatProperty(
        name="Value", description="The parameter within its range (0: its low end, 1: its high end)",
        default=0.5, min=0.0, max=1.0, subtype="FACTOR", update=_slider_update,
    )


class POINTWEAR_SceneProperties(PropertyGroup):
    # -- inputs -------------------------------------------------------------------------------
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
    fit_drape: EnumProperty(
        name="Drape",
        description="Outfit model to fit",
        items=DRAPE_ITEMS,
        default="PARAMETRIC",
    )
    fit_template: EnumProperty(
        name="Template",
        description="Garment template of the parametric drape (Auto tries each)",
        items=TEMPLATE_ITEMS,
        default="AUTO",
    )
    fit_garments: StringProperty(
        name="Garments",
        description="Fix the garments: families joined by '+' (tank, tshirt, longsleeve, hoodie, jacket, "
                    "shorts, trousers, skirt, dress, jumpsuit), e.g. jacket+tshirt+trousers. Empty: the fit "
                    "chooses them (per label when the subject has labels) or uses the Template",
        default="",
    )
    fit_frames: StringProperty(
        name="Frames",
        description="Frames to fit, e.g. 0-5 or 0,2,4 (the rest are held out); empty: the default split",
        default="",
    )
    fit_codes: IntProperty(
        name="Codes", description="Random starting codes per template in the coarse stage",
        default=4, min=1, soft_max=16,
    )
    fit_coarse_steps: IntProperty(
        name="Coarse Steps", description="Optimisation steps of the coarse stage",
        default=100, min=0, soft_max=1000,
    )
    fit_fine_steps: IntProperty(
        name="Fine Steps", description="Optimisation steps of the fine stage",
        default=100, min=0, soft_max=1000,
    )
    fit_refine_steps: IntProperty(
        name="Refine Steps",
        description="Free-form point offset refinement steps, kept only when held-out frames gain (0: off)",
        default=200, min=0, soft_max=1000,
    )
    fit_seed: IntProperty(name="Seed", description="Random seed of the fit", default=0, min=0)
    auto_import: BoolProperty(
        name="Import When Done",
        description="Bring the result into the scene as soon as the fit finishes",
        default=True,
    )
    point_radius: FloatProperty(
        name="Point Radius", description="Radius of the drawn clothing points",
        default=0.004, min=0.0001, soft_max=0.05, subtype="DISTANCE", unit="LENGTH",
    )
    import_camera: BoolProperty(
        name="Camera", description="Also import the subject's camera", default=True,
    )
    import_motion: BoolProperty(
        name="Subject Motion", description="Also key the subject's own motion on the armature",
        default=True,
    )
    armature: PointerProperty(
        name="Armature",
        description="Pointwear armature that motions and re-draping apply to "
                    "(the active one, else the one from the last import)",
        type=bpy.types.Object,
        poll=_armature_poll,
    )
    retarget_source: PointerProperty(
        name="From",
        description="Armature whose action Retarget from Armature copies onto the Pointwear armature "
                    "(e.g. one Blender's BVH importer made)",
        type=bpy.types.Object,
        poll=_source_armature_poll,
    )
    redrape_betas: FloatVectorProperty(
        name="Shape",
        description="SMPL shape coefficients (betas) of the new body",
        size=10, default=(0.0,) * 10, soft_min=-3.0, soft_max=3.0,
    )

    # -- appearance (docs/appearance.md) --------------------------------------------------------
    app_epochs: IntProperty(
        name="Epochs", description="Passes over the subject's training frames",
        default=300, min=0, soft_max=2000,
    )
    app_size: IntProperty(
        name="Size",
        description="Training image size, longer side in pixels (0: the frames' own, at most 512)",
        default=0, min=0, soft_max=1024,
    )
    app_minutes: FloatProperty(
        name="Minutes", description="Stop training after this many minutes (0: no limit)",
        default=0.0, min=0.0, soft_max=600.0,
    )
    app_seed: IntProperty(name="Seed", description="Random seed of the appearance fit",
                          default=0, min=0)
    neural_composite: BoolProperty(
        name="Composite",
        description="After a neural render, lay the rendered frames over the render layer in "
                    "the compositor (alpha over)",
        default=False,
    )
    neural_output: StringProperty(
        name="Neural Frames",
        description="Folder of the last neural render's frames (written by the add-on)",
        default="", subtype="DIR_PATH",
    )

    # -- mirror of the backend (written by the add-on) ---------------------------------------
    backend_state: StringProperty(
        name="Backend State",
        description="What the add-on last knew about the backend: not started, not found, "
                    "starting, ready, busy, error",
        default=BACKEND_STATE_NOT_STARTED,
    )
    backend_device: StringProperty(name="Device", description="Where the backend runs", default="")
    backend_message: StringProperty(name="Backend Message", default="")
    backend_hint: StringProperty(name="Backend Hint", description="What to do about an error",
                                 default="")
    job_id: StringProperty(name="Job", description="The backend's id of the current job", default="")
    job_kind: StringProperty(name="Job Kind", default="")
    job_state: StringProperty(
        name="Job State", description="queued, running, done, failed or cancelled", default="",
    )
    job_stage: StringProperty(name="Stage", description="What the current job is doing", default="")
    job_progress: FloatProperty(
        name="Progress", description="Progress of the current stage",
        default=0.0, min=0.0, max=1.0, subtype="FACTOR",
    )
    job_message: StringProperty(name="Job Message", description="The job's last warning or error",
                                default="")
    job_hint: StringProperty(name="Job Hint", default="")
    preview_path: StringProperty(
        name="Preview", description="The latest preview image of the running fit",
        subtype="FILE_PATH", default="",
    )


CLASSES = (POINTWEAR_Slider, POINTWEAR_SceneProperties)


def register_extra():
    bpy.types.Scene.pointwear = PointerProperty(type=POINTWEAR_SceneProperties)
    bpy.types.Object.pointwear_sliders = CollectionProperty(type=POINTWEAR_Slider)


def unregister_extra():
    if hasattr(bpy.types.Object, "pointwear_sliders"):
        del bpy.types.Object.pointwear_sliders
    if hasattr(bpy.types.Scene, "pointwear"):
        del bpy.types.Scene.pointwear
