"""The `pointwear` command line: body export, synthetic subjects, subject checks and import."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import PointwearError


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
        contact_sheet(read_subject(out), out / "contact_sheet.png")
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


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--outfit", default="random", choices=[*OUTFITS, "random"])
    p.add_argument("--motion", default="turntable", choices=list(MOTIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--body", default="default", help='"default" or a path to an SMPL model')
    p.add_argument("--points", type=int, default=8192, help="truth clothing points per frame")
    p.add_argument("--sheet", action="store_true", help="also write contact_sheet.png in the subject")
    _add_betas(p)
    p.set_defaults(func=cmd_synth)

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PointwearError, ValueError, FileNotFoundError) as exc:
        print(f"pointwear: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pointwear: interrupted", file=sys.stderr)
        return 130
