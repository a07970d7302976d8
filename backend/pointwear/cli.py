"""The `pointwear` command line: body export, synthetic subjects, subject checks and import, outfit and
appearance fitting, re-draping, neural rendering and the job server."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import PointwearError
from .link import protocol as P
from .link.protocol import CHECKPOINT_PT


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by spaces or commas, got {text!r}")


def _add_betas(p: argparse.ArgumentParser) -> None:
    p.add_argument("--betas", type=_floats, default=None,
                   help='shape coefficients, e.g. --betas "1.5 -0.5" (missing ones are 0)')


def cmd_body_export(args: argparse.Namespace) -> int:
    from .body import load_body
    from .body.export import export_body
    body = load_body(args.model, gender=args.gender, device="cpu")
    out = export_body(body, args.out, args.betas)
    print(f"wrote {out} ({body.num_vertices} vertices, {len(body.faces)} faces, 24 joints)")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np

    from .synth.generate import SynthOptions, generate_subject
    options = SynthOptions(frames=args.frames, size=args.size, outfit=args.outfit, motion=args.motion,
                           seed=args.seed, body=args.body, points=args.points,
                           betas=None if args.betas is None else np.array(args.betas))
    out = generate_subject(args.out, options)
    if args.sheet:
        from .data.subject import read_subject
        from .viz import contact_sheet
        contact_sheet(read_subject(out), out / P.RESULT_FILES[P.KIND_SYNTH]["sheet"])
    print(f"wrote subject {out} ({args.frames} frames, {args.size}x{args.size})")
    return 0


def cmd_subject_check(args: argparse.Namespace) -> int:
    from .data.subject import read_subject
    s = read_subject(args.subject)
    h, w = s.image_size
    print(f"{s.root}: {s.num_frames} frames, {w}x{h}, body {s.meta.get('body')}, "
          f"labels {s.label_names or 'none'}, truth {'yes' if s.has_truth else 'no'}")
    return 0


def cmd_subject_sheet(args: argparse.Namespace) -> int:
    from .data.subject import read_subject
    from .viz import contact_sheet
    out = contact_sheet(read_subject(args.subject), args.out, max_frames=args.max_frames)
    print(f"wrote {out}")
    return 0


def cmd_subject_import_pbc(args: argparse.Namespace) -> int:
    from .data.pbc import convert_pbc
    out = convert_pbc(Path(args.src), args.pid, Path(args.out), body=args.body, gender=args.gender,
                      fps=args.fps)
    print(f"wrote subject {out}")
    return 0


def _frame_list(text: str) -> list[int] | None:
    """'0,2,4-7' -> [0, 2, 4, 5, 6, 7] (the protocol's one, bounded, frame-list parser)"""
    try:
        return P.parse_frames(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; got {text[:80]!r}") from None


class _TqdmProgress:
    """One tqdm bar per stage of a long job."""

    def __init__(self) -> None:
        self.bar, self.stage = None, None

    def __call__(self, stage: str, i: int, n: int) -> None:
        from tqdm import tqdm
        if stage != self.stage:
            self.close()
            self.bar, self.stage = tqdm(total=n, desc=stage, leave=False, disable=None), stage
        self.bar.n = i
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _outfit_spec(value: str, allow_random: bool = True) -> str:
    """An outfit argument (synth --outfit; fit-outfit --garments without "random")."""
    from .garment.families import outfit_spec_error
    problem = outfit_spec_error(value, allow_random=allow_random)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _garments_spec(value: str) -> str:
    return _outfit_spec(value, allow_random=False)


def cmd_fit_outfit(args: argparse.Namespace) -> int:
    from .fit.outfit_fit import FitOptions, fit_outfit
    garments = args.garments or args.template
    options = FitOptions(drape=args.drape, template=garments, frames=args.frames, codes=args.codes,
                         coarse_steps=args.coarse_steps, fine_steps=args.fine_steps,
                         refine_steps=FitOptions.refine_steps if args.refine_steps is None else args.refine_steps,
                         seed=args.seed, device=args.device,
                         labels="off" if args.no_labels else "auto",
                         hidden_top="" if args.hidden_top == "masks" else args.hidden_top)
    progress = _TqdmProgress()
    try:
        result = fit_outfit(args.subject, args.out, options, progress)
    finally:
        progress.close()
    m = result["metrics"]
    print(f"fitted {result['drape']} in {result['seconds']:.1f} s -> {args.out}")
    for split in ("train", "heldout"):
        if m.get(split):
            print(f"  {split}: mask IoU {m[split]['iou']:.3f}, 2D Chamfer {m[split]['chamfer_px']:.2f} px")
    return 0


def cmd_fit_appearance(args: argparse.Namespace) -> int:
    from .appearance.fit import AppearanceOptions, fit_appearance
    options = AppearanceOptions(size=args.size, frames=args.frames, minutes=args.minutes,
                                vgg=args.vgg, seed=args.seed, device=args.device, precision=args.precision,
                                **{k: getattr(args, k) for k in ("epochs", "align_grid", "mask_align_steps",
                                                                 "midpoints", "normals")
                                   if getattr(args, k) is not None})
    if (Path(args.out) / CHECKPOINT_PT).exists():
        print(f"resuming from {Path(args.out) / 'checkpoint.pt'}")
    progress = _TqdmProgress()
    try:
        result = fit_appearance(args.subject, args.outfit, args.out, options, progress)
    finally:
        progress.close()
    m = result["metrics"]
    print(f"fitted the appearance ({result['epochs']} epochs, {result['steps']} steps, "
          f"{result['train_seconds']:.0f} s of training) -> {args.out}")
    for split in ("train", "heldout"):
        if m.get(split):
            r = m[split]
            print(f"  {split}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, mask IoU {r['iou']:.3f} "
                  "(inside the clothing mask)")
    b = m["baseline"].get("heldout") or m["baseline"].get("train")
    if b:
        print(f"  baked-colour baseline ({'heldout' if m['baseline'].get('heldout') else 'train'}): "
              f"PSNR {b['psnr']:.2f} dB, SSIM {b['ssim']:.3f}, mask IoU {b['iou']:.3f}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .appearance.neural_render import render_sequence
    progress = _TqdmProgress()
    try:
        summary = render_sequence(args.app, args.out, motion=args.motion, camera=args.camera,
                                  outfit_dir=args.outfit, betas=args.betas, up=args.up, progress=progress,
                                  device=args.device, precision=args.precision)
    finally:
        progress.close()
    print(f"wrote {summary['frames']} frames {Path(args.out) / summary['pattern']} "
          f"({summary['image_size'][1]}x{summary['image_size'][0]} RGBA, "
          f"{summary['compute_frames_per_second']} frames/s without file writing, "
          f"{summary['frames_per_second']} with it)")
    return 0


def cmd_drape(args: argparse.Namespace) -> int:
    from .drape.redrape import redrape
    out = redrape(args.result, args.out, betas=args.betas, motion=args.motion, up=args.up,
                  checkpoint=args.checkpoint)
    print(f"wrote {out}")
    return 0


def cmd_eval_outfit(args: argparse.Namespace) -> int:
    from .fit.evaluate import evaluate_outfit
    r = evaluate_outfit(args.result, args.subject)
    nan = float("nan")
    print(f"{'':10s} {'IoU(held)':>10s} {'mesh IoU':>9s} {'2D Ch px':>9s} {'3D Ch cm':>9s} {'F@1cm':>7s}")
    for name in ("fit", "baseline"):
        row = r[name]
        print(f"{name:10s} {row['heldout_iou']:10.3f} {row.get('heldout_mesh_iou', nan):9.3f} "
              f"{row['heldout_chamfer_px']:9.2f} {row.get('chamfer_cm', nan):9.2f} {row.get('fscore_1cm', nan):7.3f}")
    if "truth_mesh" in r:
        print(f"{'truth':10s} {r['truth_points']['heldout_iou']:10.3f} {r['truth_mesh']['heldout_mesh_iou']:9.3f}")
    print(f"wrote {Path(args.result) / 'eval.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .mesh.export import export_result
    files = export_result(args.result, args.format, args.out, motion=args.motion, up=args.up)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_mesh(args: argparse.Namespace) -> int:
    from .mesh.build import write_garment_mesh
    from .mesh.options import MeshOptions
    report = write_garment_mesh(args.result, MeshOptions(texture_size=args.texture_size),
                                warn=lambda m: print(f"pointwear: warning: {m}", file=sys.stderr))
    psnr = report.get("bake_psnr")
    print(f"{args.result}: garment mesh ({report['source']}) {report['vertices']} vertices, {report['faces']} faces, "
          f"texture: {report.get('texture') or 'none'}" + (f", bake PSNR {psnr:.2f} dB" if psnr is not None else ""))
    return 0


def cmd_motion_export(args: argparse.Namespace) -> int:
    from .data.motion import walking_motion, write_motion
    motion = walking_motion(args.frames, fps=args.fps, speed=args.speed, seed=args.seed)
    out = write_motion(args.out, motion, up="y")
    print(f"wrote {out} ({args.frames} frames at {args.fps:g} fps, Y-up: load it with up=Y)")
    return 0


def _row_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    a, sep, b = text.partition("-")
    if not (sep and a.isdigit() and b.isdigit() and int(a) < int(b)):
        raise ValueError(f"--frames: expected START-END file rows like 0-600, got {text!r}")
    return int(a), int(b)


def cmd_motion_import(args: argparse.Namespace) -> int:
    from .body import load_body
    from .data.retarget import RetargetOptions, retarget_bvh
    options = RetargetOptions(fps=args.fps, up=args.up, iterations=args.iterations)
    body = load_body(args.body, args.gender, device="cpu")
    report = retarget_bvh(args.file, args.out, body, args.map or [], options, _row_range(args.frames))
    for note in report["notes"]:
        print(note)
    err, skate = report["joint_error_cm"], report["foot_skating"]
    print(f"wrote {args.out} ({report['frames']} frames at {report['fps']:g} fps, Y-up: load it with up=Y) "
          f"and {report['motion'].rsplit('.', 1)[0]}.json")
    print(f"joint-position error {err['root_and_legs']:.1f} cm (root and legs), {err['all']:.1f} cm (all joints); "
          f"foot skating {skate['retargeted']['speed_cm_s']:.1f} cm/s (source {skate['source']['speed_cm_s']:.1f} cm/s)")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .drape.sliders import Editor, edit_result, parse_sets, slider_table
    if args.list:
        for s in Editor(args.result).sliders:
            print(f"{s.name:24s} {s.value:9.4f}   range {s.low:g}..{s.high:g}")
        return 0
    if args.table:
        print(f"wrote {slider_table(args.result, args.table)}")
        return 0
    if not args.out or not args.set:
        raise ValueError("edit: give --set NAME=VALUE (one or more) and --out NEW (or --list, or --table FILE)")
    applied = edit_result(args.result, args.out, parse_sets(args.set))
    print(f"wrote {args.out}: " + ", ".join(f"{k}={v:g}" for k, v in applied.items()))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    import logging

    from .perception.options import PrepareOptions
    from .perception.prepare import Hooks, prepare_subject
    logging.basicConfig(format="pointwear: warning: %(message)s", level=logging.WARNING)
    options = PrepareOptions(every=args.every, start=args.start, end=args.end,
                             max_frames=args.max_frames, size=args.size, person=args.person,
                             focal=args.focal, masks=args.masks, sequence=args.sequence, body=args.body,
                             gender=args.gender, device=args.device)
    options.check()
    progress = _TqdmProgress()
    try:
        report = prepare_subject(args.input, args.out, options, Hooks(progress=progress))
    finally:
        progress.close()
    out = Path(args.out)
    print(f"wrote subject {out}: {report['frames_kept']} of {report['frames_seen']} frames kept, "
          f"{report['input']['size'][1]}x{report['input']['size'][0]}, focal "
          f"{report['camera']['focal']:.0f} px ({report['camera']['focal_from']}), "
          f"{report['seconds']['total']:.1f} s")
    for d in report["dropped"]:
        print(f"  dropped {d['name']}: {d['reason']} ({d['detail']})")
    print(f"  report {out / 'prepare' / 'report.json'}, contact sheet "
          f"{out / 'prepare' / 'contact_sheet.png'}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import logging

    from .perception.prepare import Hooks
    from .recon.options import ReconOptions
    from .recon.pipeline import reconstruct
    logging.basicConfig(format="pointwear: warning: %(message)s", level=logging.WARNING)
    options = ReconOptions(steps=args.steps, texture_size=args.texture_size)
    progress = _TqdmProgress()
    try:
        result = reconstruct(args.image, args.out, mask=args.mask, focal=args.focal, body=args.body,
                             gender=args.gender, device=args.device, options=options,
                             hooks=Hooks(progress=progress), fast=args.fast, refine_fast=args.refine,
                             model_file=args.model)
    finally:
        progress.close()
    sec = result["seconds"]
    parts = ", ".join(f"{name} {sec[key]:.{2 if key == 'learned' else 1}f} s"
                      for key, name in (("learned", "learned pass"), ("refine", "refinement")) if key in sec)
    print(f"wrote {args.out}: {result['method']}, {result['mesh_vertices']} vertices, {result['faces']} faces, "
          f"input-view IoU {result['metrics']['input_iou']:.3f}, {parts}, total {sec['total']:.1f} s")
def cmd_train_recon(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .device import pick_device
    from .recon.datasets import build_inputs, list_items
    from .recon.learned import LearnOptions, train
    items = list_items(args.data, args.layout, max_items=args.max_images)
    options = replace(LearnOptions(), steps=args.steps, batch=args.batch, seed=args.seed).check()
    progress = _TqdmProgress()
    try:
        inputs = build_inputs(items, (options.height, options.width), progress=progress)
        report = train(inputs, args.out, options, device=pick_device(args.device), progress=progress,
                       max_seconds=None if args.minutes is None else args.minutes * 60)
    finally:
        progress.close()
    last = report["history"][-1] if report["history"] else {}
    print(f"wrote model {args.out}: {report['steps']} steps on {report['images']} images "
          f"({args.layout} layout), {report['seconds']:.0f} s; last loss {last.get('total', float('nan')):.4f} "
          f"(mask 1-IoU {last.get('iou', float('nan')):.3f}, L1 {last.get('l1', float('nan')):.3f})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.show_fingerprint:
        from .server.tls import certificate_fingerprint, ensure_certificate
        cert, _key, _made = ensure_certificate(Path(args.work).expanduser().resolve(), hosts=(args.host,))
        print(certificate_fingerprint(cert))
        return 0
    from .server import serve
    from .server.app import ServerLimits
    limits = ServerLimits(max_queued=args.max_queued, max_connections=args.max_connections,
                          max_preauth=args.max_preauth, memory_bytes=(args.memory_limit_mb or 0) << 20)
    return serve(host=args.host, port=args.port, work=args.work, token_file=args.token_file,
                 device=args.device, threads=args.threads, parent_pid=args.parent_pid, tls=args.tls,
                 limits=limits)


def cmd_batch(args: argparse.Namespace) -> int:
    import shlex

    from .batch import STATE_FAILED, BatchOptions, format_table, run_batch
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    extra = {step: shlex.split(text) for step, text in (("prepare", args.prepare_args),
                                                         ("fit-outfit", args.fit_outfit_args),
                                                         ("fit-appearance", args.fit_appearance_args)) if text}
    options = BatchOptions(parser=build_parser, steps=steps, ray_address=args.ray, cpus=args.cpus, gpus=args.gpus,
                           cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                           retries=args.retries, use_ray=not args.no_ray, step_args=extra)
    rows = run_batch(args.subjects, args.out, options)
    print(format_table(rows))
    print(f"summary: {Path(args.out) / 'batch_summary.csv'} and .json")
    return 1 if any(r["state"] == STATE_FAILED for r in rows) else 0


def build_parser() -> argparse.ArgumentParser:
    from .recon.options import ReconOptions as ReconOptionsDefaults
    parser = argparse.ArgumentParser(prog="pointwear", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pointwear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    body = sub.add_parser("body", help="body models").add_subparsers(dest="body_command", required=True)
    p = body.add_parser("export", help="write body.npz (rest pose, SMPL space) for the add-on")
    p.add_argument("model", help='"default" or a path to an SMPL .pkl/.npz or a folder in smplx layout')
    p.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    _add_betas(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.set_defaults(func=cmd_body_export)

    from .garment.outfit import OUTFITS
    from .synth.motion import MOTIONS
    p = sub.add_parser("synth", help="render a synthetic subject with known clothing")
    p.add_argument("out", help="subject folder to write")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=512, help="image width and height in pixels")
    p.add_argument("--outfit", default="random", type=_outfit_spec,
                   help=f"{', '.join(OUTFITS)}, random, or garments joined by '+' (e.g. tshirt, jacket+tshirt+trousers)")
    p.add_argument("--motion", default="turntable", choices=list(MOTIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--body", default="default", help='"default" or a path to an SMPL model')
    p.add_argument("--points", type=int, default=8192, help="truth clothing points per frame")
    p.add_argument("--sheet", action="store_true", help="also write contact_sheet.png in the subject")
    _add_betas(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("fit-outfit", help="fit an outfit code (and point offsets) to a subject's clothing masks")
    p.add_argument("subject")
    p.add_argument("--out", required=True, help="result folder (resumes from its checkpoint if present)")
    p.add_argument("--drape", default="parametric", help='"parametric", "neural" or a neural checkpoint path')
    p.add_argument("--garments", default=None, type=_garments_spec, help="parametric only: fix the garments, families joined by '+' "
                   "(tank, tshirt, longsleeve, hoodie, jacket, shorts, trousers, skirt, dress, jumpsuit; e.g. "
                   "jacket+tshirt+trousers); default: chosen by the fit (per label with labels/)")
    p.add_argument("--template", default=None, type=_garments_spec, help=argparse.SUPPRESS)   # the older name of --garments
    p.add_argument("--no-labels", action="store_true", help="ignore labels/: fit every garment to the clothing mask")
    p.add_argument("--hidden-top", default="tshirt", choices=["tshirt", "tank", "longsleeve", "masks"],
                   help="a plain top whose sleeves a jacket hides in every frame is taken to be this (default "
                        "tshirt; 'masks': the masks decide); named in a warning and result.json \"inferred\"")
    p.add_argument("--frames", type=_frame_list, default=None, help="frames to fit, e.g. 0-5; the rest are held out")
    p.add_argument("--codes", type=int, default=4, help="random codes per template in the coarse stage")
    p.add_argument("--coarse-steps", type=int, default=100)
    p.add_argument("--fine-steps", type=int, default=100)
    p.add_argument("--refine-steps", type=int, default=None,
                   help="free-form offset refinement steps, kept only when the held-out frames gain "
                        "(default: FitOptions.refine_steps, 200; 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_fit_outfit)

    p = sub.add_parser("fit-appearance", help="fit neural point descriptors and a rendering U-Net to a "
                       "subject's frames for a fitted outfit; bake per-point colours")
    p.add_argument("subject")
    p.add_argument("--outfit", required=True, help="the fit-outfit result folder of this subject")
    p.add_argument("--out", required=True, help="result folder (resumes from its checkpoint.pt if present)")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training frames (default: AppearanceOptions.epochs, docs/appearance.md)")
    p.add_argument("--size", type=int, default=None,
                   help="training image size, longer side in px (default: the frames' own, at most 512)")
    p.add_argument("--frames", type=_frame_list, default=None,
                   help="training frames, e.g. 0-5; the rest are held out (default: every fourth held out)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop training after this many minutes (counted over resumes); default: no limit")
    p.add_argument("--vgg", default=None, help="a local VGG19 state dict (e.g. torchvision's "
                   "vgg19-dcbb9e9d.pth) for the perceptual loss; never downloaded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="the U-Net's convolutions (auto: bfloat16 mixed precision on CPUs that have it natively)")
    p.add_argument("--midpoints", action=argparse.BooleanOptionalAction, default=None,
                   help="also give every edge of the outfit's mesh a descriptor at its midpoint: ~4x the samples, "
                        "finer texture (default: AppearanceOptions.midpoints)")
    p.add_argument("--normals", action=argparse.BooleanOptionalAction, default=None,
                   help="feed the U-Net the points' camera-space normals, so shading follows the pose "
                        "(default: AppearanceOptions.normals)")
    p.add_argument("--align-grid", type=int, default=None,
                   help="per-training-frame 2D offset field of GRID x GRID nodes aligning the points to the frame "
                        "(0: off; default: AppearanceOptions.align_grid)")
    p.add_argument("--mask-align-steps", type=int, default=None,
                   help="held-out frames are also scored after aligning their points to their clothing masks "
                        "with this many steps (0: off; default: AppearanceOptions.mask_align_steps)")
    p.set_defaults(func=cmd_fit_appearance)

    p = sub.add_parser("render", help="render a fitted appearance on a motion, body shape and camera "
                       "(RGBA PNG sequence)")
    p.add_argument("app", help="a fit-appearance result folder (or its appearance.pt)")
    p.add_argument("--outfit", default=None, help="the outfit result the appearance was fitted on "
                   "(default: the appearance folder itself, which holds a copy)")
    _add_betas(p)
    p.add_argument("--motion", required=True, help="AMASS-style .npz (poses, trans, mocap_framerate)")
    p.add_argument("--up", default="z", choices=["y", "z"], help="the motion file's up axis (AMASS: z)")
    p.add_argument("--camera", required=True, help="camera.npz: K, image_size, camera_from_world "
                   "(see docs/appearance.md)")
    p.add_argument("--out", required=True, help="folder for NNNNNN.png and render.json")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="the U-Net's convolutions (auto: bfloat16 on CPUs that have it natively, else float32)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("drape", help="re-drape a fitted outfit on a new body shape and motion")
    p.add_argument("result", help="a fit-outfit result folder")
    p.add_argument("--out", required=True)
    _add_betas(p)
    p.add_argument("--motion", default=None, help="AMASS-style .npz (poses, trans, mocap_framerate)")
    p.add_argument("--up", default="z", choices=["y", "z"], help="the motion file's up axis (AMASS: z)")
    p.add_argument("--checkpoint", default=None, help="neural drape weights, if not the default")
    p.set_defaults(func=cmd_drape)

    p = sub.add_parser("export", help="write a result as a skinned, textured glTF binary (with a motion), "
                                      "OBJ + MTL + PNG, or PLY points with colours")
    p.add_argument("result", help="a result folder (fit-outfit, fit-appearance, drape, ...)")
    p.add_argument("--format", required=True, choices=["glb", "obj", "ply"])
    p.add_argument("--motion", default=None, help="AMASS-style .npz animated in the glb")
    p.add_argument("--up", default="auto", choices=["auto", "y", "z"],
                   help="the motion file's up axis; auto (default): the file's own 'up' hint (Pointwear's "
                        "motions: y), else z (AMASS)")
    p.add_argument("--out", required=True, help="the file to write (.glb, .obj, .ply)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("mesh", help="build the result's garment mesh (faces, UVs, baked texture) and store it "
                                    "in the result folder")
    p.add_argument("result", help="a result folder")
    p.add_argument("--texture-size", type=int, default=1024, choices=[256, 512, 1024, 2048, 4096])
    p.set_defaults(func=cmd_mesh)

    motion = sub.add_parser("motion", help="motions").add_subparsers(dest="motion_command", required=True)
    p = motion.add_parser("export", help="write a procedural motion as an AMASS-style .npz (Y-up)")
    p.add_argument("kind", choices=["walk"])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--speed", type=float, default=1.0, help="metres per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_motion_export)
    p = motion.add_parser("import", help="retarget a BVH (CMU, Mixamo-style, others by a name table) to SMPL's "
                                         "24 joints as an AMASS-style .npz (Y-up)")
    p.add_argument("file", help="a .bvh motion capture file")
    p.add_argument("--out", required=True, help="motion .npz to write (its report beside it as .json)")
    p.add_argument("--map", action="append", default=None, metavar="FILE",
                   help="a joint-name table of your own (layout of backend/pointwear/data/bvh_names.json), "
                        "added to the shipped one; repeatable")
    p.add_argument("--fps", type=float, default=30.0, help="output frame rate")
    p.add_argument("--up", default="auto", choices=["auto", "y", "z"], help="the BVH's up axis (auto: from its legs)")
    p.add_argument("--frames", default=None, help="file rows START-END to convert (default all)")
    p.add_argument("--iterations", type=int, default=60, help="refinement iterations (0: rotation transfer only)")
    p.add_argument("--body", default="default", help="default, or an SMPL model file / folder")
    p.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    p.set_defaults(func=cmd_motion_import)

    p = sub.add_parser("edit", help="change a fitted outfit's garment parameters (sleeve, hem, waist, neckline, "
                                     "looseness, flare, ...; a neural drape's named directions) into a new result")
    p.add_argument("result", help="a fit result folder (outfit.npz)")
    p.add_argument("--set", action="append", default=None, metavar="NAME=VALUE",
                   help="a slider and its new value: sleeve=0.4, tshirt.hem=0.9, looseness=0.03 (repeatable)")
    p.add_argument("--out", default=None, help="the new result folder")
    p.add_argument("--list", action="store_true", help="list the result's sliders, values and ranges")
    p.add_argument("--table", default=None, metavar="FILE", help="write the slider table (sliders.npz) the "
                                                                   "add-on re-drapes from live")
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("eval-outfit", help="score a fitted outfit against a subject (and its truth)")
    p.add_argument("result")
    p.add_argument("subject")
    p.set_defaults(func=cmd_eval_outfit)

    p = sub.add_parser("prepare", help="make a subject from a video, an image folder or one photo "
                       "(frames, clothing masks, labels, SMPL body, camera; docs/prepare.md)")
    p.add_argument("input", help="a video (mp4/mov/avi/webm/mkv), a folder of images, or one image")
    p.add_argument("--out", required=True, help="subject folder to write (new or an earlier subject)")
    p.add_argument("--every", type=int, default=1, help="keep every Nth frame")
    p.add_argument("--start", default=None, help="first frame: a frame number (12) or seconds (1.5s)")
    p.add_argument("--end", default=None, help="end (exclusive): a frame number or seconds (4s)")
    p.add_argument("--max-frames", type=int, default=None, help="at most this many frames, evenly spread")
    p.add_argument("--size", type=int, default=None, help="long side in px (default: the input's, at most 1024)")
    p.add_argument("--person", default="auto", help='"auto" (largest, most central, most often seen) or a '
                   "track number when several people are seen")
    p.add_argument("--focal", type=float, default=None, help="focal length in px of the prepared frames "
                   "(default: EXIF, else a phone camera's 69 deg field of view, refined by the fit)")
    p.add_argument("--masks", default=None, help="folder of your own clothing masks (override Pointwear's)")
    p.add_argument("--sequence", default="auto", choices=["auto", "yes", "no"],
                   help="the frames are one continuous shot (smooth the body over time): auto = a video, "
                        "or images whose names end in consecutive numbers")
    p.add_argument("--body", default="default", help='"default" or a path to an SMPL model')
    p.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("reconstruct", help="one photo -> a textured garment mesh skinned to the SMPL body "
                       "(after 3D Magic Mirror; docs/recon.md)")
    p.add_argument("image", help="a photo of one person (png, jpg, ...)")
    p.add_argument("--out", required=True, help="result folder to write (new, empty or an earlier result)")
    p.add_argument("--mask", default=None, help="your own clothing mask of the photo (same size; white = clothing)")
    p.add_argument("--focal", type=float, default=None, help="focal length in px (default: EXIF, else a phone "
                   "camera's 69 deg field of view)")
    p.add_argument("--steps", type=int, default=ReconOptionsDefaults.steps, help="refinement steps")
    p.add_argument("--texture-size", type=int, default=ReconOptionsDefaults.texture_size, help="texture side in px")
    p.add_argument("--fast", action="store_true", help="the learned model's one forward pass instead of the "
                   "per-image refinement (docs/recon_learned.md)")
    p.add_argument("--refine", action="store_true", help="with --fast: refine the learned mesh per image")
    p.add_argument("--model", default=None, help="with --fast: learned weights (default: the shipped ones)")
    p.add_argument("--body", default="default", help='"default" or a path to an SMPL model')
    p.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_reconstruct)
    p = sub.add_parser("train-recon", help="train the learned single-image reconstruction (camera, shape, "
                       "texture flow, light encoders; self-supervised; docs/recon_learned.md)")
    p.add_argument("--data", required=True, help="training data folder")
    p.add_argument("--layout", required=True, choices=["subject", "market", "atr"],
                   help="subject: our subject folders; market: Market-HQ (pytorch/ + seg_hmr/); "
                        "atr: ATR humanparsing (JPEGImages/ + SegmentationClassAug/ or Seg/)")
    p.add_argument("--out", required=True, help="model file to write (training resumes from it if present)")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps in total")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    p.add_argument("--max-images", type=int, default=20000, help="refuse data folders with more images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_train_recon)

    p = sub.add_parser("serve", help="run the job server the Blender add-on talks to (docs/protocol.md)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: other machines too; "
                   "then use --tls or an SSH tunnel, see docs/protocol.md)")
    p.add_argument("--tls", action="store_true", help="TLS with a self-signed certificate made at the first "
                   "start in WORK/tls; its SHA-256 fingerprint is printed for the add-on to pin")
    p.add_argument("--show-fingerprint", action="store_true",
                   help="print the TLS certificate's fingerprint (made if missing) and exit")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (printed on stdout)")
    p.add_argument("--work", default="~/.cache/pointwear/work", help="folder holding one folder per job")
    p.add_argument("--token-file", default=None, help="write the per-launch token here (mode 0600); "
                   "$POINTWEAR_TOKEN sets the token, else it is random")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process is gone (the add-on passes Blender's pid, so a killed "
                        "Blender leaves no backend behind)")
    p.add_argument("--max-queued", type=int, default=P.MAX_QUEUED_JOBS, help="waiting jobs (more: queue_full)")
    p.add_argument("--max-connections", type=int, default=P.MAX_CONNECTIONS, help="open connections (more: busy)")
    p.add_argument("--max-preauth", type=int, default=P.MAX_PREAUTH_CONNECTIONS,
                   help="connections that have not said hello yet (more: busy)")
    p.add_argument("--memory-limit-mb", type=int, default=None,
                   help="refuse jobs whose memory estimate is over this (default: 3/4 of the RAM; "
                        "$POINTWEAR_MEMORY_LIMIT_MB)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("batch", help="prepare / fit-outfit / fit-appearance over many subjects on Ray "
                       "(one task per subject; finished subjects are skipped on a rerun)")
    p.add_argument("subjects", nargs="+", help="subject folders, or videos / image folders to prepare")
    p.add_argument("--out", required=True, help="batch folder: one folder per subject, batch_summary.csv/.json")
    p.add_argument("--steps", default="prepare,fit-outfit,fit-appearance",
                   help="steps to run, comma separated (prepare is skipped for inputs that are subjects)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help='an existing Ray cluster ("auto", "ray://host:10001"); default: a local instance')
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs of the local Ray instance (default 0)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs one subject takes (torch threads)")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs one subject takes (e.g. 1 or 0.5)")
    p.add_argument("--retries", type=int, default=3, help="runs again of a subject whose worker died")
    p.add_argument("--no-ray", action="store_true", help="run the subjects one after another in this process")
    p.add_argument("--prepare-args", default="", help='extra arguments of each prepare, e.g. "--every 2"')
    p.add_argument("--fit-outfit-args", default="", help='e.g. "--template dress --coarse-steps 60"')
    p.add_argument("--fit-appearance-args", default="", help='e.g. "--epochs 50 --size 256"')
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("doctor", help="check this installation: versions, device, disk, memory, work "
                       "folder, bundled data, a smoke test; each problem with a fix (--json for the add-on)",
                       add_help=False)
    p.add_argument("doctor_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_doctor)

    subj = sub.add_parser("subject", help="subject folders").add_subparsers(dest="subject_command", required=True)
    p = subj.add_parser("check", help="validate a subject folder and summarise it")
    p.add_argument("subject")
    p.set_defaults(func=cmd_subject_check)
    p = subj.add_parser("sheet", help="write a contact sheet PNG of frames, masks and labels")
    p.add_argument("subject")
    p.add_argument("--out", required=True)
    p.add_argument("--max-frames", type=int, default=12)
    p.set_defaults(func=cmd_subject_sheet)
    p = subj.add_parser("import-pbc", help="convert Point-Based Clothing sample data to a subject")
    p.add_argument("src", help="folder holding rgb/, segm_cloth/, smpl/")
    p.add_argument("--pid", required=True, help="person id (sub-folder name)")
    p.add_argument("--out", required=True)
    p.add_argument("--body", default="default")
    p.add_argument("--gender", default="neutral", choices=["neutral", "male", "female"])
    p.add_argument("--fps", type=float, default=25.0)
    p.set_defaults(func=cmd_subject_import_pbc)
    return parser


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main
    return doctor_main(args.doctor_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:
        # Straight to the doctor: it must run in a broken environment, and building the full
        # parser imports the outfit and motion lists (torch, scipy).
        from .doctor import main as doctor_main
        return doctor_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PointwearError, ValueError, FileNotFoundError) as exc:
        print(f"pointwear: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:     # CUDA out of memory, tensors on two devices: exit 2 with a hint
        from .device import device_error
        err = device_error(exc)
        if err is None:
            raise
        print(f"pointwear: error: {err.code}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pointwear: interrupted", file=sys.stderr)
        return 130
