"""Pointwear without the UI: fit a subject, build the Blender scene, key a motion, save, render.

    blender -b -P scripts/pointwear_batch.py -- --subject DIR --out scene.blend [--motion m.npz] [--render out.png]
        [--appearance [--app-epochs N] [--app-minutes M] [--app-size S]] [--neural-render DIR]
    blender -b -P scripts/pointwear_batch.py -- --video FILE | --images DIR [--subject DIR] --out scene.blend ...
        [--every N] [--max-frames N] [--size PX] [--person auto|N] [--focal PX] [--masks DIR]
    blender -b -P scripts/pointwear_batch.py -- --image FILE --out scene.blend [--mask FILE] [--focal PX]
        [--recon-steps N] [--recon-fast [--recon-refine]] [--motion m.npz] [--render out.png] ...
    python scripts/pointwear_batch.py --subject DIR --out scene.blend ...      (the bpy module)

It drives the real add-on through its operators, as an artist's clicks would: the add-on starts
the backend (or connects to a running one with --port/--token), fits the outfit (blocking, since
timers never fire in background mode), imports the result onto an SMPL armature, keys the motion,
saves the .blend and renders with Cycles on the CPU when asked. With --video or --images (a folder
or one image) it first makes the subject from that footage (the add-on's New Subject, the backend's
`prepare`) and keeps it in --subject DIR, else beside --out (`<out stem>_subject/`). With --image it
reconstructs the clothing of one photo instead of fitting (the add-on's Reconstruct from Image, the
backend's `reconstruct`): a textured garment mesh skinned to the armature, imported as a fit's. With --appearance it also fits the
subject's appearance after the outfit (the clothing gets its baked colours), and --neural-render
renders that appearance with the backend over the keyed motion (scene frame range, the subject's
camera, or with --motion a camera framing it) into a folder of RGBA PNGs. The add-on is used from an
installed Pointwear extension when there is one, else staged from this repository into a
temporary extension repository (nothing is installed into the user's Blender).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON_ID = "pointwear"
TEMP_REPO_MODULE = "pointwear_batch"
SHEET_IMAGE = "Pointwear Contact Sheet"    # the add-on's image of the subject's contact sheet


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pointwear_batch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", type=Path, help="subject folder to fit; with --video/--images, where the new "
                   "subject is kept (default: beside --out)")
    p.add_argument("--result", type=Path, help="an existing fit result folder to import (no fit)")
    footage = p.add_mutually_exclusive_group()
    footage.add_argument("--video", type=Path, metavar="FILE", help="make the subject from this video first")
    footage.add_argument("--images", type=Path, metavar="DIR",
                         help="make the subject from this folder of images (or one image) first")
    footage.add_argument("--image", type=Path, metavar="FILE",
                         help="reconstruct the clothing of this one photo (no subject, no fit)")
    p.add_argument("--mask", type=Path, help="--image: your own clothing mask of the photo")
    p.add_argument("--recon-steps", type=int, default=80, help="--image: refinement steps")
    p.add_argument("--recon-fast", action="store_true", help="--image: the learned model's one forward pass "
                   "instead of the refinement (reconstruct --fast)")
    p.add_argument("--recon-refine", action="store_true", help="--image with --recon-fast: refine the learned mesh")
    p.add_argument("--every", type=int, default=1, help="prepare: keep every Nth frame")
    p.add_argument("--max-frames", type=int, default=0, help="prepare: at most N frames, evenly spread (0: all)")
    p.add_argument("--size", type=int, default=0, help="prepare: long side in px (0: the input's, at most 1024)")
    p.add_argument("--person", default="auto", help='prepare: "auto" or the track number of the person to follow')
    p.add_argument("--focal", type=float, default=0.0, help="prepare: focal length in px (0: EXIF or the default)")
    p.add_argument("--masks", type=Path, help="prepare: a folder of your own clothing masks")
    p.add_argument("--out", type=Path, required=True, help="the .blend to write")
    p.add_argument("--copy-result", type=Path, help="also copy the fit's result folder here (e.g. beside the .blend)")
    p.add_argument("--motion", type=Path, help="AMASS-style .npz to key onto the armature")
    p.add_argument("--up", default="Z", type=str.upper, choices=["Y", "Z"], help="the motion's up axis (AMASS: Z)")
    p.add_argument("--render", type=Path, help="render one frame with Cycles (CPU) to this PNG")
    p.add_argument("--frame", type=int, default=0, help="frame to render (subject frame k is Blender frame k)")
    p.add_argument("--animation", type=Path, help="render the motion to this .mp4 or .gif (or a folder of PNGs); "
                   "with --motion through a camera framing it, else through the subject's camera")
    p.add_argument("--anim-frames", type=int, default=0, help="render only the first N frames (0: all)")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples")
    p.add_argument("--scale", type=int, default=100, help="render resolution percentage")
    p.add_argument("--backend-python", default=os.environ.get("POINTWEAR_BACKEND_PYTHON", ""),
                   help="Python of the backend environment (default: $POINTWEAR_BACKEND_PYTHON, else "
                        "the add-on preference, else <repo>/.venv/bin/python)")
    p.add_argument("--host", default="127.0.0.1", help="host of a running backend (with --port)")
    p.add_argument("--port", type=int, default=0, help="port of a running backend; 0 starts one")
    p.add_argument("--token", default=os.environ.get("POINTWEAR_TOKEN", ""), help="token of a running backend")
    p.add_argument("--work", type=Path, help="backend work folder (job folders)")
    p.add_argument("--device", default="AUTO", type=str.upper, choices=["AUTO", "CPU", "CUDA"])
    p.add_argument("--drape", default="parametric", choices=["parametric", "neural"])
    p.add_argument("--template", default="AUTO", help="parametric template, or AUTO to try all")
    p.add_argument("--codes", type=int, default=4)
    p.add_argument("--coarse-steps", type=int, default=100)
    p.add_argument("--fine-steps", type=int, default=100)
    p.add_argument("--appearance", action="store_true",
                   help="after the outfit, fit the subject's appearance (needs --subject, or --app-subject "
                        "with --result)")
    p.add_argument("--app-subject", type=Path, help="the subject folder of --result for --appearance")
    p.add_argument("--app-epochs", type=int, default=150, help="appearance fit epochs")
    p.add_argument("--app-minutes", type=float, default=0.0, help="appearance fit time limit (0: none)")
    p.add_argument("--app-size", type=int, default=0, help="appearance training size in px (0: the frames')")
    p.add_argument("--neural-render", type=Path, metavar="DIR",
                   help="after the motion is keyed, neural-render the appearance into DIR (RGBA PNGs); "
                        "needs --appearance or a --result with an appearance")
    p.add_argument("--neural-frames", type=int, default=0, help="neural-render only the first N frames (0: all)")
    args = p.parse_args(argv)
    args.footage = args.video or args.images
    if args.image is not None:
        check_image(p, args)
    elif args.footage is not None:
        check_footage(p, args)
    elif (args.subject is None) == (args.result is None):
        p.error("give one of --subject, --result, --video or --images")
    if args.appearance and args.subject is None and args.app_subject is None:
        p.error("--appearance needs --subject (or --app-subject with --result)")
    if args.app_subject is not None and not args.app_subject.exists():
        p.error(f"--app-subject: {args.app_subject} does not exist")
    for name in ("subject", "result", "motion"):
        path = getattr(args, name)
        if path is not None and not path.exists() and not (name == "subject" and args.footage):
            p.error(f"--{name}: {path} does not exist")
    return args


def check_image(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--image: one existing photo (and mask); it goes with neither --subject nor --result."""
    if args.subject is not None or args.result is not None:
        p.error("--image reconstructs from the photo alone: it does not go with --subject or --result")
    for flag, path in (("--image", args.image), ("--mask", args.mask)):
        if path is not None and not path.is_file():
            p.error(f"{flag}: {path} is not a file")
    if args.appearance:
        p.error("--appearance needs a subject: it does not go with --image")
    if args.recon_refine and not args.recon_fast:
        p.error("--recon-refine refines the learned mesh: it needs --recon-fast")
    if not (1 <= args.recon_steps <= 10_000 and args.focal >= 0):
        p.error(f"--recon-steps / --focal: out of range: {args.recon_steps} / {args.focal}")


def check_footage(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--video / --images: the footage exists, and the subject folder it makes (--subject, else
    `<out stem>_subject` beside --out) is new, empty or an earlier subject (then replaced)."""
    flag = "--video" if args.video is not None else "--images"
    if args.result is not None:
        p.error(f"{flag} makes a subject to fit: it does not go with --result")
    if not args.footage.exists():
        p.error(f"{flag}: {args.footage} does not exist")
    if args.video is not None and not args.video.is_file():
        p.error(f"--video: {args.video} is not a file")
    if args.masks is not None and not args.masks.is_dir():
        p.error(f"--masks: {args.masks} is not a folder")
    for name, ok in (("every", args.every >= 1), ("max-frames", args.max_frames >= 0),
                     ("size", args.size == 0 or 64 <= args.size <= 8192), ("focal", args.focal >= 0)):
        if not ok:   # (the operator's properties would clamp them silently)
            p.error(f"--{name}: out of range: {getattr(args, name.replace('-', '_'))}")
    if args.subject is None:
        args.subject = args.out.with_name(args.out.stem + "_subject")
    dest = args.subject
    if dest.exists() and not (dest.is_dir() and (not any(dest.iterdir()) or (dest / "subject.json").is_file())):
        p.error(f"--subject: {dest} exists and is not an empty or subject folder (the new subject goes there)")


def script_argv() -> list[str]:
    """Arguments after `--` under `blender -b -P`, else everything after the script name."""
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]


def enable_addon() -> tuple[str, Path | None]:
    """Enable an installed Pointwear extension, else this repository's add-on through a temporary
    local extension repository. Returns (module name, temporary folder to remove or None)."""
    import bpy
    import addon_utils

    for mod in addon_utils.modules(refresh=True):
        if mod.__name__.startswith("bl_ext.") and mod.__name__.endswith("." + ADDON_ID):
            addon_utils.enable(mod.__name__, default_set=True)
            return mod.__name__, None
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_extension

    temp = Path(tempfile.mkdtemp(prefix="pointwear-batch-ext-"))
    build_extension.stage(temp / ADDON_ID)
    bpy.context.preferences.extensions.repos.new(
        name="Pointwear (batch)", module=TEMP_REPO_MODULE, custom_directory=str(temp), source="USER")
    name = f"bl_ext.{TEMP_REPO_MODULE}.{ADDON_ID}"
    addon_utils.enable(name, default_set=True)
    if name not in bpy.context.preferences.addons:
        raise SystemExit(f"pointwear_batch: could not enable the add-on from {temp}")
    return name, temp


def configure(module: str, args: argparse.Namespace) -> None:
    import bpy

    prefs = bpy.context.preferences.addons[module].preferences
    python = args.backend_python or prefs.backend_python or str(ROOT / ".venv" / "bin" / "python")
    prefs.backend_python = python
    prefs.host, prefs.port, prefs.device = args.host, args.port, args.device
    if args.token:
        prefs.token = args.token
    if args.work:
        prefs.work_folder = str(args.work.resolve())


def check(result: set, what: str) -> None:
    if "FINISHED" not in result:
        raise SystemExit(f"pointwear_batch: {what} did not finish ({', '.join(sorted(result))})")


def run_pointwear(args: argparse.Namespace) -> None:
    """Backend -> fit (or a given result) -> import -> motion, through the add-on's operators."""
    import bpy

    props = bpy.context.scene.pointwear
    if args.image is not None:
        ensure_backend()
        try:
            check(bpy.ops.pointwear.reconstruct_image(
                filepath=str(args.image.resolve()), mask=str(args.mask.resolve()) if args.mask else "",
                focal=args.focal, steps=args.recon_steps, fast=args.recon_fast, refine=args.recon_refine),
                "reconstructing from the image")
        except RuntimeError as ex:   # the operator's error report: what is wrong with the photo
            raise SystemExit(f"pointwear_batch: reconstructing from the image failed: {ex}") from None
    elif args.footage is not None:
        prepare_subject(args)
    if args.image is not None:
        pass
    elif args.subject is not None:
        props.subject_folder = str(args.subject.resolve())
        props.fit_drape = args.drape.upper()
        props.fit_template = args.template.upper().replace("-", "_")
        props.fit_codes, props.fit_coarse_steps, props.fit_fine_steps = args.codes, args.coarse_steps, args.fine_steps
        props.auto_import = True
        ensure_backend()
        check(bpy.ops.pointwear.fit_outfit(), "the outfit fit")
    else:
        props.result_folder = str(args.result.resolve())
        check(bpy.ops.pointwear.import_result(), "importing the result")
    if args.appearance:
        if args.subject is None:
            props.subject_folder = str(args.app_subject.resolve())
        props.app_epochs, props.app_size, props.app_minutes = args.app_epochs, args.app_size, args.app_minutes
        ensure_backend()
        check(bpy.ops.pointwear.fit_appearance(), "the appearance fit")
    if args.motion is not None:
        check(bpy.ops.pointwear.load_motion(filepath=str(args.motion.resolve()), up=args.up), "loading the motion")


def prepare_subject(args: argparse.Namespace) -> None:
    """The add-on's New Subject on the footage (the backend's prepare job, blocking), then the
    subject is kept in args.subject (the scene's subject folder and contact sheet point there)."""
    import bpy

    ensure_backend()
    try:
        check(bpy.ops.pointwear.new_subject(
            filepath=str(args.footage.resolve()), every=args.every, max_frames=args.max_frames, size=args.size,
            person=args.person, focal=args.focal, masks=str(args.masks.resolve()) if args.masks else ""),
            "preparing the subject")
    except RuntimeError as ex:   # the operator's error report: what is wrong with the footage
        raise SystemExit(f"pointwear_batch: preparing the subject failed: {ex}") from None
    made, dest = Path(bpy.context.scene.pointwear.subject_folder), args.subject.resolve()
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(made, partial)
    shutil.rmtree(dest, ignore_errors=True)      # an earlier subject (checked in parse_args)
    os.replace(partial, dest)
    sheet = bpy.data.images.get(SHEET_IMAGE)
    if sheet is not None:
        sheet.filepath = str(dest / "prepare" / "contact_sheet.png")
    print(f"pointwear_batch: subject {made} kept in {dest}")


def ensure_backend() -> None:
    import bpy

    if bpy.ops.pointwear.start_backend.poll():
        check(bpy.ops.pointwear.start_backend(), "starting the backend")


def neural_render(scene, dest: Path, frames: int, new_camera: bool) -> None:
    """Neural-render the armature's appearance over the scene range (the first `frames` when > 0)
    into `dest` (000000.png ...); the loaded image sequence then points at `dest`."""
    import bpy

    armature = pointwear_objects("armature")[0]
    if not armature.get("pointwear_appearance"):
        raise SystemExit("pointwear_batch: --neural-render needs an appearance (--appearance, or a --result "
                         "folder from fit-appearance)")
    ensure_backend()
    previous = scene.camera
    if new_camera or scene.camera is None:
        scene.camera = motion_camera(scene)
    saved_end = scene.frame_end
    if frames > 0:
        scene.frame_end = min(scene.frame_end, scene.frame_start + frames - 1)
    try:
        check(bpy.ops.pointwear.neural_render(), "the neural render")
    finally:
        scene.frame_end, scene.camera = saved_end, previous
    source = Path(scene.pointwear.neural_output)
    dest.mkdir(parents=True, exist_ok=True)
    pngs = sorted(source.glob("[0-9]*.png"))
    for png in pngs:
        shutil.copy2(png, dest / png.name)
    image = bpy.data.images.get("Pointwear Neural Render")
    if image is not None and pngs:
        image.filepath = str((dest / pngs[0].name).resolve())
    scene.pointwear.neural_output = str(dest.resolve())
    print(f"pointwear_batch: neural-rendered {len(pngs)} frames -> {dest}")


def pointwear_objects(kind: str) -> list:
    import bpy
    return [o for o in bpy.data.objects if o.get("pointwear_kind") == kind]


def copy_result(dest: Path) -> None:
    """Copy the imported result folder to `dest` and point the scene's objects at the copy."""
    armature = pointwear_objects("armature")[0]
    source = Path(armature["pointwear_result"])
    shutil.copytree(source, dest, dirs_exist_ok=True)
    for obj in pointwear_objects("armature") + pointwear_objects("body") + \
            pointwear_objects("clothing_points") + pointwear_objects("clothing_mesh"):
        obj["pointwear_result"] = str(dest.resolve())
    print(f"pointwear_batch: result {source} copied to {dest}")


def light_scene() -> None:
    """A sun, a soft fill and a grey world, so renders read without any setup."""
    import bpy

    scene = bpy.context.scene
    if scene.world is None:
        scene.world = bpy.data.worlds.new("Pointwear World")
    scene.world.use_nodes = True
    background = scene.world.node_tree.nodes.get("Background")
    if background is not None:
        background.inputs["Color"].default_value = (0.32, 0.34, 0.38, 1.0)
        background.inputs["Strength"].default_value = 0.8
    for name, energy, rot in (("Pointwear Key", 3.0, (50, 10, 30)), ("Pointwear Fill", 0.8, (60, 0, -140))):
        if name in bpy.data.objects:
            continue
        light = bpy.data.lights.new(name, "SUN")
        light.energy = energy
        obj = bpy.data.objects.new(name, light)
        obj.rotation_euler = [math.radians(a) for a in rot]
        scene.collection.objects.link(obj)


def motion_camera(scene) -> object:
    """A camera that keeps the whole keyed motion in view: looks at the pelvis path's middle from
    the front-right, far enough for the path's extent plus a body height."""
    import bpy
    from mathutils import Vector

    armature = pointwear_objects("armature")[0]
    pelvis = armature.pose.bones[0]
    points = []
    for frame in range(scene.frame_start, scene.frame_end + 1, max(1, (scene.frame_end - scene.frame_start) // 16)):
        scene.frame_set(frame)
        points.append(armature.matrix_world @ pelvis.head)
    lo = Vector([min(p[i] for p in points) for i in range(3)])
    hi = Vector([max(p[i] for p in points) for i in range(3)])
    centre = (lo + hi) / 2
    centre.z = max(centre.z, 0.9)
    # Frame the pelvis path plus a body on either side, and at least a standing person.
    extent = max((hi - lo).xy.length + 1.2, 2.4)
    cam = bpy.data.cameras.new("Pointwear Motion Camera")
    cam.lens, cam.sensor_width = 50.0, 36.0
    half_fov = math.atan(cam.sensor_width / 2 / cam.lens)
    obj = bpy.data.objects.new("Pointwear Motion Camera", cam)
    scene.collection.objects.link(obj)
    direction = Vector((0.55, -1.0, 0.25)).normalized()
    obj.location = centre + direction * (1.45 * extent / 2 / math.tan(half_fov))
    obj.rotation_euler = (centre - obj.location).to_track_quat("-Z", "Y").to_euler()
    scene.frame_set(scene.frame_start)
    return obj


def setup_cycles(scene, samples: int, scale: int) -> None:
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_percentage = scale
    scene.render.film_transparent = False


def render_still(scene, path: Path, frame: int) -> None:
    import bpy

    cameras = pointwear_objects("camera") or [o for o in scene.objects if o.type == "CAMERA"]
    if scene.camera is None and cameras:
        scene.camera = cameras[0]
    scene.frame_set(frame)
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path.resolve())
    bpy.ops.render.render(write_still=True)
    print(f"pointwear_batch: rendered frame {frame} -> {path}")


def render_animation(scene, path: Path, frames: int, new_camera: bool = True) -> None:
    """Render the keyed frames; through a camera framing the motion (`new_camera`, as for a new
    --motion) or else through the scene's camera (the subject's, so renders line up with its frames)."""
    import bpy

    previous = scene.camera
    if new_camera or scene.camera is None:
        scene.camera = motion_camera(scene)
    end = scene.frame_end if frames <= 0 else min(scene.frame_end, scene.frame_start + frames - 1)
    saved_end, scene.frame_end = scene.frame_end, end
    if path.suffix.lower() == ".mp4":
        scene.render.image_settings.file_format = "FFMPEG"
        scene.render.ffmpeg.format = "MPEG4"
        scene.render.ffmpeg.codec = "H264"
        scene.render.filepath = str(path.resolve())
    else:  # a .gif, or a folder: PNG frames first
        frames_dir = path.with_suffix(".frames") if path.suffix.lower() == ".gif" else path
        frames_dir.mkdir(parents=True, exist_ok=True)
        scene.render.image_settings.file_format = "PNG"
        scene.render.filepath = str(frames_dir.resolve() / "######")
    bpy.ops.render.render(animation=True)
    scene.frame_end, scene.camera = saved_end, previous
    if path.suffix.lower() == ".gif":
        write_gif(frames_dir, path, scene.render.fps / scene.render.fps_base)
    print(f"pointwear_batch: rendered frames {scene.frame_start}-{end} -> {path}")


def write_gif(frames_dir: Path, path: Path, fps: float) -> None:
    """Assemble the PNG frames into a looping GIF with imageio when this Python has it (the bpy
    module in the backend venv does; a stock Blender does not: then the frames stay as PNGs)."""
    try:
        import imageio.v3 as iio
    except ImportError:
        print(f"pointwear_batch: no imageio in this Python; the frames are in {frames_dir}")
        return
    frames = [iio.imread(f)[..., :3] for f in sorted(frames_dir.glob("*.png"))]
    iio.imwrite(path, frames, duration=1000.0 / max(fps, 1.0), loop=0)
    shutil.rmtree(frames_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(script_argv() if argv is None else argv)
    import bpy  # first: with the bpy module, Blender's own modules (addon_utils) exist only after it
    import addon_utils

    for obj in list(bpy.data.objects):  # `blender -b` starts with the default cube, camera, light
        bpy.data.objects.remove(obj)
    module, temp = enable_addon()
    try:
        configure(module, args)
        run_pointwear(args)
        scene = bpy.context.scene
        if args.neural_render is not None:
            neural_render(scene, args.neural_render, args.neural_frames, new_camera=args.motion is not None)
        light_scene()
        setup_cycles(scene, args.samples, args.scale)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.copy_result is not None:
            copy_result(args.copy_result)
        bpy.ops.wm.save_as_mainfile(filepath=str(args.out.resolve()))
        print(f"pointwear_batch: saved {args.out}")
        if args.render is not None:
            render_still(scene, args.render, args.frame)
        if args.animation is not None:
            render_animation(scene, args.animation, args.anim_frames, new_camera=args.motion is not None)
    finally:
        if hasattr(bpy.ops.pointwear, "stop_backend") and bpy.ops.pointwear.stop_backend.poll():
            bpy.ops.pointwear.stop_backend()
        addon_utils.disable(module, default_set=True)  # removes its timers/handlers: the process can exit
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
