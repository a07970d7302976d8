# SPDX-License-Identifier: GPL-3.0-or-later
"""Appearance operators (docs/appearance.md): fit an appearance, neural-render a motion.

- ``pointwear.fit_appearance`` submits the backend's ``fit_appearance`` job for the scene's subject
  folder and the outfit of the Pointwear armature (its ``pointwear_result``, else the scene's
  result folder). When it ends, an armature wearing that outfit gets the baked colours in place
  (the clothing's ``pointwear_color`` attribute; point order is the outfit's) and remembers the
  appearance folder in ``pointwear_appearance``; without one the result folder is imported.
- ``pointwear.neural_render`` writes ``camera.npz`` (the scene camera at every frame of the scene
  range) and ``motion.npz`` (the armature's evaluated pose over the same frames, Y-up SMPL world)
  into a job input folder, submits ``render`` for the armature's appearance and shape, and loads
  the frames as an image sequence (optionally composited over the render layer).

Both are :class:`~.jobs.JobOperatorMixin` operators: modal with progress, preview and Esc-cancel
in the UI, blocking in scripts and background mode.
"""

import os
import tempfile

import bpy
import numpy as np
from bpy.props import BoolProperty
from bpy.types import Operator

from ..io import export
from ..io import results
from ..link import protocol
from ..properties import is_pointwear_armature
from . import runtime
from .jobs import RESUMABLE, JobOperatorMixin, poll_backend_free, poll_subject_job

APPEARANCE_PROP = "pointwear_appearance"
APPEARANCE_FILE = protocol.APPEARANCE_PT
NEURAL_IMAGE = "Pointwear Neural Render"
COMPOSITE_GROUP = "Pointwear Neural Composite"


# -- helpers ----------------------------------------------------------------------------------

def outfit_folder(context):
    """The outfit result folder to fit an appearance for: the target armature's result folder,
    else the scene's result folder; "" when there is none with an outfit.npz and posed.npz."""
    armature = runtime.target_armature(context)
    candidates = []
    if armature is not None:
        candidates.append(armature.get("pointwear_result") or "")
    props = getattr(context.scene, "pointwear", None)
    if props is not None:
        candidates.append(props.result_folder.strip())
    for folder in candidates:
        folder = runtime.abspath(folder) if folder else ""
        if folder and all(os.path.isfile(os.path.join(folder, name))
                          for name in (results.OUTFIT_FILE, results.POSED_FILE)):
            return folder
    return ""


def appearance_folder(armature):
    """The armature's fitted appearance folder (with appearance.pt), or ""."""
    if armature is None:
        return ""
    folder = armature.get(APPEARANCE_PROP) or ""
    if folder and os.path.isfile(os.path.join(folder, APPEARANCE_FILE)):
        return folder
    return ""


def has_appearance(folder):
    return bool(folder) and os.path.isfile(os.path.join(folder, APPEARANCE_FILE))


def apply_colors(armature, outfit_path):
    """Write the outfit file's baked colours into the armature's clothing objects in place.
    Raises ResultFileError when the file has no colours or the point counts differ."""
    from ..scene import clothing, importer

    outfit = results.read_outfit(outfit_path)
    if outfit.colors is None:
        raise results.ResultFileError(outfit_path, "colors", "missing key: no baked colours")
    parts = importer.pointwear_children(armature)
    targets = [parts[k] for k in ("clothing_points", "clothing_mesh") if k in parts]
    for obj in targets:
        if len(obj.data.vertices) != len(outfit.points):
            raise results.ResultFileError(outfit_path, "colors", "has {} points but {!r} has {}".format(
                len(outfit.points), obj.name, len(obj.data.vertices)))
    for obj in targets:
        clothing.set_color_attribute(obj.data, outfit.colors)
        obj.data.update()
    return targets


def finish_fit_appearance(context, job, scene):
    """The follow-up of a finished fit_appearance job; returns the report message."""
    props = scene.pointwear
    folder = job.folder
    armature = bpy.data.objects.get(job.tag.get("armature") or "")
    outfit = job.tag.get("outfit") or ""
    if (armature is not None and is_pointwear_armature(armature)
            and os.path.normpath(armature.get("pointwear_result") or "") == os.path.normpath(outfit)):
        apply_colors(armature, os.path.join(folder, results.OUTFIT_FILE))
        armature[APPEARANCE_PROP] = folder
        return "Fitted the appearance of {} (result in {})".format(armature.name, folder)
    if not job.tag.get("auto_import", True):
        props.result_folder = folder
        return "Fitted the appearance: result in " + folder
    objects = runtime.import_result(context, folder, scene=scene, name=job.tag.get("name") or None)
    objects["armature"][APPEARANCE_PROP] = folder
    return "Fitted the appearance and imported {}".format(objects["armature"].name)


def _evaluated_frames(context, scene, camera, armature):
    """Per frame of the scene range: camera matrix_world and K, pose quaternions and pelvis
    location (evaluated: drivers, constraints and NLA included)."""
    from ..scene import armature as armature_builder

    names = armature_builder.joint_names(armature)
    if len(names) != 24:
        raise ValueError("The armature has {} joints, not SMPL's 24".format(len(names)))
    if camera.data.type != "PERSP":
        raise ValueError("The scene camera must be a perspective camera")
    render = scene.render
    frames = list(range(scene.frame_start, scene.frame_end + 1))
    if not frames:
        raise ValueError("The scene frame range is empty")
    current = scene.frame_current, scene.frame_subframe
    mats, ks, quats, locs, size = [], [], [], [], None
    try:
        for frame in frames:
            scene.frame_set(frame)
            depsgraph = context.evaluated_depsgraph_get()
            cam = camera.evaluated_get(depsgraph)
            arm = armature.evaluated_get(depsgraph)
            mats.append(np.array(cam.matrix_world, np.float64))
            d = cam.data
            k, size = export.camera_intrinsics(
                d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y,
                render.resolution_x, render.resolution_y, render.resolution_percentage,
                render.pixel_aspect_x, render.pixel_aspect_y)
            ks.append(k)
            q, loc = [], None
            for j, name in enumerate(names):
                basis = arm.pose.bones[name].matrix_basis
                q.append(tuple(basis.to_quaternion()))
                if j == 0:
                    loc = tuple(basis.translation)
            quats.append(q)
            locs.append(loc)
    finally:
        scene.frame_set(current[0], subframe=current[1])
    return frames, np.array(mats), np.array(ks), size, np.array(quats), np.array(locs)


def write_render_inputs(context, scene, camera, armature, folder):
    """camera.npz and motion.npz for the scene range into ``folder``; returns (camera, motion,
    frame count)."""
    frames, mats, ks, size, quats, locs = _evaluated_frames(context, scene, camera, armature)
    fps = scene.render.fps / (scene.render.fps_base or 1.0)
    cam_arrays = export.camera_file_arrays(ks, size, mats)
    motion = export.motion_arrays(quats, locs, fps)
    os.makedirs(folder, exist_ok=True)
    camera_path = os.path.join(folder, "camera.npz")
    motion_path = os.path.join(folder, "motion.npz")
    np.savez(camera_path, **cam_arrays)
    np.savez(motion_path, **motion)
    return camera_path, motion_path, len(frames)


def load_sequence(folder, frame_start, count):
    """The rendered PNGs (000000.png ...) as one image sequence datablock; returns it."""
    first = os.path.join(folder, "{:06d}.png".format(0))
    if not os.path.isfile(first):
        raise FileNotFoundError("no rendered frame {}".format(first))
    old = bpy.data.images.get(NEURAL_IMAGE)
    if old is not None:
        bpy.data.images.remove(old)
    image = bpy.data.images.load(first, check_existing=False)
    image.name = NEURAL_IMAGE
    image.source = "SEQUENCE"
    image.alpha_mode = "STRAIGHT"
    image["pointwear_frame_start"] = int(frame_start)
    image["pointwear_frames"] = int(count)
    return image


def _image_user_timing(iuser, frame_start, count):
    # Scene frame F shows file number F - frame_start (BKE: F - sfra + 1 + offset).
    iuser.frame_start = int(frame_start)
    iuser.frame_duration = int(count)
    iuser.frame_offset = -1
    iuser.use_auto_refresh = True


def setup_composite(scene, image, frame_start, count):
    """Alpha-over the image sequence on the render layer in the compositor (4.x: the scene's
    node tree; 5.0: a compositing node group). Returns the alpha-over node."""
    if bpy.app.version >= (5, 0, 0):
        tree = scene.compositing_node_group
        if tree is None:
            tree = bpy.data.node_groups.new(COMPOSITE_GROUP, "CompositorNodeTree")
            scene.compositing_node_group = tree
        if not any(item.item_type == "SOCKET" and item.in_out == "OUTPUT" for item in tree.interface.items_tree):
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        output = next((n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"), None) \
            or tree.nodes.new("NodeGroupOutput")
    else:
        scene.use_nodes = True
        tree = scene.node_tree
        output = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite"), None) \
            or tree.nodes.new("CompositorNodeComposite")
    layers = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"), None) \
        or tree.nodes.new("CompositorNodeRLayers")
    for node in [n for n in tree.nodes if n.get("pointwear_neural")]:
        tree.nodes.remove(node)
    source = tree.nodes.new("CompositorNodeImage")
    source.image = image
    source["pointwear_neural"] = True
    _image_user_timing(source, frame_start, count)
    over = tree.nodes.new("CompositorNodeAlphaOver")
    over["pointwear_neural"] = True
    layers.location = (-300, 200)
    source.location = (-300, -150)
    over.location = (0, 0)
    output.location = (250, 0)
    image_inputs = [s for s in over.inputs if s.type == "RGBA"]
    tree.links.new(layers.outputs["Image"], image_inputs[0])
    tree.links.new(source.outputs["Image"], image_inputs[1])
    tree.links.new(over.outputs[0], output.inputs[0])
    return over


def finish_neural_render(context, job, scene):
    props = scene.pointwear
    frames = job.files.get("frames") or os.path.join(job.folder, "frames")
    start = int(job.tag.get("frame_start", scene.frame_start))
    count = int(job.tag.get("frames", 0))
    props.neural_output = frames
    image = load_sequence(frames, start, count)
    if props.neural_composite:
        setup_composite(scene, image, start, count)
    return "Neural render: {} frames in {}".format(count, frames)


# -- operators --------------------------------------------------------------------------------

class POINTWEAR_OT_fit_appearance(JobOperatorMixin, Operator):
    """Fit the subject's appearance (neural point descriptors, baked colours) on the backend for
    the fitted outfit; the clothing gets the colours when it ends. Esc cancels"""

    bl_idname = "pointwear.fit_appearance"
    bl_label = "Fit Appearance"
    bl_options = {"REGISTER", "UNDO"}

    resume: BoolProperty(
        name="Resume",
        description="Continue the last cancelled or failed appearance fit from its checkpoint "
                    "(its own settings and result folder)",
        default=False, options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        if not poll_subject_job(cls, context):
            return False
        if not outfit_folder(context):
            cls.poll_message_set("Fit an outfit first")
            return False
        return True

    def job_request(self, context):
        props = context.scene.pointwear
        subject = runtime.abspath(props.subject_folder.strip())
        outfit = outfit_folder(context)
        if not outfit:
            raise ValueError("Fit an outfit first")
        armature = runtime.target_armature(context)
        tag = {"auto_import": props.auto_import, "outfit": outfit,
               "armature": armature.name if armature is not None else "",
               "name": os.path.basename(os.path.normpath(subject)) + " appearance"}
        if getattr(self, "resume", False):
            if props.job_kind != protocol.KIND_FIT_APPEARANCE or props.job_state not in RESUMABLE or not props.job_id:
                raise ValueError("No cancelled or failed appearance fit to resume")
            previous = runtime.session().jobs.get(props.job_id)
            if previous is not None and previous.params.get("outfit"):
                tag["outfit"] = previous.params["outfit"]
            return protocol.KIND_FIT_APPEARANCE, {"resume_job": props.job_id}, runtime.AFTER_APPEARANCE, tag
        params = {"subject": subject, "outfit": outfit, "epochs": props.app_epochs,
                  "seed": props.app_seed}
        if props.app_size > 0:
            params["size"] = props.app_size
        if props.app_minutes > 0:
            params["minutes"] = props.app_minutes
        return protocol.KIND_FIT_APPEARANCE, params, runtime.AFTER_APPEARANCE, tag


class POINTWEAR_OT_neural_render(JobOperatorMixin, Operator):
    """Neural-render the armature's fitted appearance over the scene frame range, seen by the
    scene camera; the frames come back as an image sequence. Esc cancels"""

    bl_idname = "pointwear.neural_render"
    bl_label = "Neural Render"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        if getattr(context.scene, "pointwear", None) is None:
            cls.poll_message_set("The Pointwear add-on is not enabled")
            return False
        if not poll_backend_free(cls):
            return False
        armature = runtime.target_armature(context)
        if armature is None:
            cls.poll_message_set("Fit an outfit first")
            return False
        if not appearance_folder(armature):
            cls.poll_message_set("Fit appearance first")
            return False
        if context.scene.camera is None:
            cls.poll_message_set("Set a scene camera")
            return False
        return True

    def job_request(self, context):
        scene = context.scene
        armature = runtime.target_armature(context)
        app = appearance_folder(armature)
        if not app:
            raise ValueError("Fit appearance first")
        if scene.camera is None:
            raise ValueError("Set a scene camera")
        work = runtime.work_folder(context)
        os.makedirs(work, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="neural-render-inputs-", dir=work)
        camera_path, motion_path, count = write_render_inputs(context, scene, scene.camera, armature, folder)
        betas = [float(b) for b in armature.get("pointwear_betas", [])]
        params = {"app": app, "betas": betas or None,
                  "motion": motion_path, "camera": camera_path, "up": "y"}
        tag = {"armature": armature.name, "frame_start": scene.frame_start, "frames": count,
               "inputs": folder}
        return protocol.KIND_RENDER, params, runtime.AFTER_NEURAL_RENDER, tag


runtime.register_finisher(runtime.AFTER_APPEARANCE, finish_fit_appearance)
runtime.register_finisher(runtime.AFTER_NEURAL_RENDER, finish_neural_render)

CLASSES = (POINTWEAR_OT_fit_appearance, POINTWEAR_OT_neural_render)
