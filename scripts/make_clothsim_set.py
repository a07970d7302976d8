"""Make a clothsim set: garments from sewing patterns draped on the default body by Blender's
cloth simulator (bpy in .venv) and rendered by Cycles, one subject folder per (outfit, seed):
OUT/<outfit>_<seed>/ in the subject format `pointwear synth` writes, plus garments.json and
garment_labels/. See docs/clothsim.md.

    .venv/bin/python scripts/make_clothsim_set.py --out DIR --kinds all --seeds 1000-1003 --frames 8 --size 256

Seeds 0-99 are for training, 1000-1099 for evaluation (never tune on them). Finished subjects
are skipped, so an interrupted run continues where it stopped; OUT/index.json lists them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """"1000-1003,7" -> [1000, 1001, 1002, 1003, 7]; at most 10000 seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seed numbers or ranges like 1000-1003, got {part!r}")
        if a < 0 or b < a or b - a >= 10000:
            raise argparse.ArgumentTypeError(f"bad seed range {part!r} (0 <= first <= last, at most 10000)")
        seeds.extend(range(a, b + 1))
    if not seeds or len(seeds) > 10000:
        raise argparse.ArgumentTypeError(f"give 1..10000 seeds, got {len(seeds)}")
    return seeds


def parse_kinds(text: str) -> list[str]:
    from pointwear.synth.clothsim.plan import COMBINATIONS, KINDS, OUTFITS
    groups = {"all": list(OUTFITS), "single": list(KINDS), "combos": list(COMBINATIONS)}
    out: list[str] = []
    for name in text.replace(" ", ",").split(","):
        if not name:
            continue
        if name in groups:
            out.extend(groups[name])
        elif name in OUTFITS:
            out.append(name)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown outfit {name!r}; known: all, single, combos, {', '.join(OUTFITS)}")
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    from pointwear.synth.clothsim.plan import ClothsimOptions
    d = ClothsimOptions()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the subjects (made if missing)")
    ap.add_argument("--kinds", type=parse_kinds, default="all",
                    help="outfits, comma separated: all | single | combos | e.g. tshirt,skirt,tshirt+jacket")
    ap.add_argument("--seeds", type=parse_seeds, default="1000-1003",
                    help="e.g. 1000-1003 (evaluation) or 0-99 (training)")
    ap.add_argument("--frames", type=int, default=d.frames)
    ap.add_argument("--size", type=int, default=d.size, help="image side in pixels (256 or 512)")
    ap.add_argument("--samples", type=int, default=d.samples, help="Cycles samples per pixel (denoised)")
    ap.add_argument("--motion", default=d.motion, help="turntable | walk | random (from the seed)")
    ap.add_argument("--res", type=float, default=d.res, help="cloth edge length in metres")
    ap.add_argument("--settle", type=int, default=d.settle, help="simulation frames before the first output frame")
    ap.add_argument("--substeps", type=int, default=d.substeps, help="simulation frames per output frame of a walk")
    ap.add_argument("--points", type=int, default=d.points, help="truth points per frame")
    ap.add_argument("--force", action="store_true", help="remake subjects that are already finished")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="also write a contact sheet PNG: per subject two frames and their garment labels")
    args = ap.parse_args(argv)
    options = ClothsimOptions(frames=args.frames, size=args.size, samples=args.samples, motion=args.motion,
                              res=args.res, settle=args.settle, substeps=args.substeps, points=args.points)
    try:
        options.check()
    except ValueError as exc:
        ap.error(str(exc))
    rc = make_set(args.out, args.kinds, args.seeds, options, force=args.force)
    if args.sheet:
        names = [f"{o}_{s}" for s in args.seeds for o in args.kinds]
        print(f"wrote {set_sheet([args.out / n for n in names], args.sheet)}")
    return rc


def make_set(out: Path, outfits: list[str], seeds: list[int], options, force: bool = False) -> int:
    from pointwear.body import load_body
    from pointwear.fileio import save_text
    from pointwear.synth.clothsim.generate import make_subject, split_of
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    body = load_body("default", device="cpu")
    jobs = [(o, s) for s in seeds for o in outfits]
    for i, (outfit, seed) in enumerate(jobs):
        name = f"{outfit}_{seed}"
        folder = out / name
        if (folder / "subject.json").is_file() and not force and name in index:
            continue
        t0 = time.perf_counter()
        result = make_subject(folder, outfit, seed, options, body=body)
        index[name] = {"outfit": outfit, "seed": seed, "split": split_of(seed), "motion": result["motion"],
                       "frames": options.frames, "size": options.size, "seconds": result["seconds"]["total"],
                       "penetration": result["penetration"]}
        save_text(index_path, json.dumps(index, indent=1) + "\n")
        print(f"[{i + 1}/{len(jobs)}] {name}: {result['motion']}, {time.perf_counter() - t0:.1f} s, "
              f"cloth inside body {result['penetration']['inside_share']:.2%}", flush=True)
    return 0


def set_sheet(folders: list[Path], out: Path, tile: int = 192) -> Path:
    """A PNG with one row per subject: frames 0 and N/2, and the garment-label map of frame 0
    over the dimmed frame; the outfit name is written on the first tile."""
    import numpy as np
    from PIL import Image, ImageDraw

    from pointwear.data.subject import read_subject
    from pointwear.fileio import atomic_path
    from pointwear.synth.clothsim.generate import GARMENT_LABELS_DIR
    from pointwear.viz import LABEL_COLORS
    rows = []
    for folder in folders:
        s = read_subject(folder)
        frames = [s.frame(0), s.frame(s.num_frames // 2)]
        ids = np.asarray(Image.open(folder / GARMENT_LABELS_DIR / "000000.png"))
        over = (frames[0] * 0.35).astype(np.uint8)
        on = ids > 0
        over[on] = (0.4 * frames[0][on] + 0.6 * LABEL_COLORS[np.minimum(ids[on], len(LABEL_COLORS) - 1)]).astype(np.uint8)
        tiles = [Image.fromarray(a).resize((tile, tile)) for a in (*frames, over)]
        ImageDraw.Draw(tiles[0]).text((4, 4), f"{s.meta.get('outfit')} {s.meta.get('seed')}", fill=(255, 255, 255))
        rows.append(np.concatenate([np.asarray(t) for t in tiles], 1))
    per_row = 2
    blocks = [np.concatenate(rows[i:i + per_row] + [np.full_like(rows[0], 255)] * (per_row - len(rows[i:i + per_row])), 1)
              for i in range(0, len(rows), per_row)]
    sheet = np.concatenate(blocks, 0)
    with atomic_path(out) as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return out


if __name__ == "__main__":
    sys.exit(main())
