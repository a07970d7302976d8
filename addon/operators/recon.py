# SPDX-License-Identifier: GPL-3.0-or-later
"""Reconstruct from Image: ``pointwear.reconstruct_image``.

The operator picks one photo of a person in Blender's file browser (options in the browser's
sidebar: an optional clothing mask, the focal length, Fast (the learned model's one forward pass,
optionally refined), refinement steps, texture size) and submits
the backend's ``reconstruct`` job: a garment mesh from the photo, textured, skinned to the SMPL
body. When the job ends its result folder is imported as any fit result (armature, body, the
garment mesh skinned to the armature, camera, the photo's pose) and becomes the scene's result
folder.

Like every browsing job operator (:class:`~.jobs.BrowseJobMixin`): clicked in the UI it opens the file
browser and, once a file is chosen, runs modal (progress, the refinement preview, Esc cancels);
called from a script or in background mode with ``filepath`` it blocks until the result is
imported.
"""

import os

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from ..link import protocol
from . import runtime
from .jobs import BrowseJobMixin


def image_path(path, what="Choose a photo"):
    """An existing file chosen in the browser, made absolute; ValueError naming what is missing."""
    path = path.strip()
    if not path:
        raise ValueError(what)
    path = os.path.normpath(runtime.abspath(path))
    if not os.path.isfile(path):
        raise ValueError("Not found: " + path)
    return path


class POINTWEAR_OT_reconstruct_image(BrowseJobMixin, Operator):
    """Reconstruct the clothing of one photo on the backend as a textured garment mesh skinned to
    the SMPL body, then import it. Esc cancels"""

    bl_idname = "pointwear.reconstruct_image"
    bl_label = "Reconstruct from Image"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="Photo", description="A photo of one person",
                             subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    mask: StringProperty(name="Mask", description="Optional clothing mask of the photo (same size, "
                                                  "white = clothing); default: Pointwear's own",
                         subtype="FILE_PATH", default="", options={"SKIP_SAVE"})
    focal: FloatProperty(name="Focal (px)", description="Focal length in pixels (0: from EXIF, else a "
                                                        "phone camera's field of view)",
                         default=0.0, min=0.0, max=1e6, soft_max=10000.0)
    steps: IntProperty(name="Steps", description="Refinement steps through the soft rasterizer",
                       default=80, min=1, max=10000, soft_max=500)
    texture_size: IntProperty(name="Texture", description="Side of the albedo texture in pixels",
                              default=512, min=64, max=4096)
    fast: BoolProperty(name="Fast (learned)", description="One forward pass of the learned model "
                                                          "instead of the per-image refinement",
                       default=False)
    refine: BoolProperty(name="Refine", description="Fast: refine the learned mesh per image "
                                                    "(the steps above)", default=False)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(self, "mask")
        layout.prop(self, "focal")
        layout.prop(self, "fast")
        row = layout.row()
        row.enabled = self.fast
        row.prop(self, "refine")
        row = layout.row()
        row.enabled = self.refine or not self.fast
        row.prop(self, "steps")
        layout.prop(self, "texture_size")

    def job_request(self, context):
        photo = image_path(self.filepath)
        params = {"image": photo, "steps": self.steps, "texture_size": self.texture_size}
        if self.fast:
            params["fast"] = True
            params["refine"] = bool(self.refine)
        if self.mask.strip():
            params["mask"] = image_path(self.mask, "Choose a mask")
        if self.focal > 0:
            params["focal"] = self.focal
        name = os.path.splitext(os.path.basename(photo))[0]
        tag = {"auto_import": True, "name": name}
        return protocol.KIND_RECONSTRUCT, params, runtime.AFTER_IMPORT, tag


CLASSES = (POINTWEAR_OT_reconstruct_image,)
