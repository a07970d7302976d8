# SPDX-License-Identifier: GPL-3.0-or-later
"""A new subject from the user's own footage: ``pointwear.new_subject``.

The operator picks a video file, one image or a folder of images in Blender's file browser (its
options in the browser's sidebar) and submits the backend's ``prepare`` job. When the job ends,
the scene's subject folder is the new subject (so Fit Outfit is ready) and the subject's contact
sheet is loaded as the image "Pointwear Contact Sheet", shown under the subject folder in the
sidebar.

Like every browsing job operator (:class:`~.jobs.BrowseJobMixin`): clicked in the UI it opens the file
browser and, once a file or folder is chosen, runs modal (progress, the detection preview, Esc
cancels); called from a script or in background mode with ``filepath`` (or ``directory``) it
blocks until the subject is made.
"""

import os

import bpy
from bpy.props import BoolProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import Operator

from ..link import protocol
from . import runtime
from .jobs import BrowseJobMixin

SHEET_IMAGE = "Pointwear Contact Sheet"
SHEET_PATH = tuple(protocol.RESULT_FILES[protocol.KIND_PREPARE]["sheet"].split("/")[1:])   # in a subject


def contact_sheet_path(subject_folder):
    """Where a prepared subject keeps its contact sheet ("" for no folder)."""
    folder = subject_folder.strip()
    return os.path.join(runtime.abspath(folder), *SHEET_PATH) if folder else ""


def load_contact_sheet(path):
    """Show the PNG ``path`` as the image "Pointwear Contact Sheet" (made or re-pointed); it is
    kept in the .blend (fake user). Returns the image."""
    image = runtime.show_image(SHEET_IMAGE, path)
    image.use_fake_user = True
    return image


def subject_sheet(props):
    """The loaded contact sheet image of the scene's subject folder, or None."""
    image = bpy.data.images.get(SHEET_IMAGE)
    path = contact_sheet_path(props.subject_folder)
    if image is None or not path:
        return None
    if os.path.normpath(bpy.path.abspath(image.filepath)) != os.path.normpath(path):
        return None
    return image


def finish_new_subject(context, job, scene):
    """The follow-up of a finished prepare job: the scene's subject folder becomes the new
    subject and its contact sheet is loaded. Returns the report message."""
    props = scene.pointwear
    subject = job.files.get("subject") or os.path.join(job.folder, "subject")
    props.subject_folder = subject
    sheet = job.files.get("sheet") or contact_sheet_path(subject)
    if os.path.isfile(sheet):
        load_contact_sheet(sheet)
    return "New subject {} (contact sheet: {})".format(subject, SHEET_IMAGE)


def input_path(filepath, directory):
    """The footage the file browser chose: a video or image file, or a folder (the browser's
    directory when no file is named). ValueError when there is none or it does not exist."""
    path = filepath.strip() or directory.strip()
    if not path:
        raise ValueError("Choose a video, an image or a folder of images")
    path = os.path.normpath(runtime.abspath(path))
    if not os.path.exists(path):
        raise ValueError("Not found: " + path)
    return path


class POINTWEAR_OT_new_subject(BrowseJobMixin, Operator):
    """Make a subject from a video, one image or a folder of images on the backend (frames,
    clothing masks, SMPL body, camera); it becomes the subject folder to fit. Esc cancels"""

    bl_idname = "pointwear.new_subject"
    bl_label = "New Subject from Video or Images"
    bl_options = {"REGISTER"}

    # The file browser: a file (video or image), or a folder (open it and accept with no file).
    filepath: StringProperty(
        name="File or Folder", description="A video, an image, or a folder of images",
        subtype="FILE_PATH", default="", options={"SKIP_SAVE"},
    )
    directory: StringProperty(
        name="Folder", description="The folder shown in the file browser (used when no file is "
                                   "chosen: a folder of images)",
        subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
    )
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_movie: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    # prepare's options (shown in the file browser's sidebar).
    every: IntProperty(name="Every", description="Keep every Nth frame", default=1, min=1, max=10000)
    max_frames: IntProperty(
        name="Max Frames", description="At most this many frames, evenly spread (0: all)",
        default=0, min=0, max=100000, soft_max=500,
    )
    size: IntProperty(
        name="Size", description="Long side of the frames in pixels (0: the input's, at most 1024)",
        default=0, min=0, max=8192, soft_max=2048,
    )
    person: StringProperty(
        name="Person", description='"auto" (largest, most central, most often seen) or the '
                                   "track number of the person to follow when several are seen",
        default="auto",
    )
    focal: FloatProperty(
        name="Focal (px)", description="Focal length in pixels of the prepared frames (0: from "
                                       "EXIF, else a phone camera's field of view, refined by the fit)",
        default=0.0, min=0.0, max=1e6, soft_max=10000.0,
    )
    masks: StringProperty(
        name="Masks", description="Optional folder of your own clothing masks (they override "
                                  "Pointwear's)",
        subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        col = layout.column(align=True)
        col.prop(self, "every")
        col.prop(self, "max_frames")
        layout.prop(self, "size")
        layout.prop(self, "person")
        layout.prop(self, "focal")
        layout.prop(self, "masks")

    def job_request(self, context):
        source = input_path(self.filepath, self.directory)
        person = self.person.strip().lower() or "auto"
        if person != "auto" and not person.isdigit():
            raise ValueError('Person: "auto" or a track number, not {!r}'.format(self.person))
        params = {"input": source, "every": self.every, "person": person}
        if self.max_frames > 0:
            params["max_frames"] = self.max_frames
        if self.size > 0:
            params["size"] = self.size
        if self.focal > 0:
            params["focal"] = self.focal
        if self.masks.strip():
            params["masks"] = os.path.normpath(runtime.abspath(self.masks.strip()))
        name = os.path.splitext(os.path.basename(source))[0]
        return protocol.KIND_PREPARE, params, runtime.AFTER_PREPARE, {"name": name}


runtime.register_finisher(runtime.AFTER_PREPARE, finish_new_subject)

CLASSES = (POINTWEAR_OT_new_subject,)
