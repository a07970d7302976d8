"""How long one clothsim subject takes (frames x size), split into setup, cloth simulation and
Cycles rendering, for a single garment and for the heaviest outfit; with --set DIR also the
penetration figures of a made set per outfit. Writes the section "Clothsim generation" of
docs/benchmarks.md.

    .venv/bin/python scripts/bench_clothsim.py [--set /work/clothsim_eval] [--no-write]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine, publish  # noqa: E402

SECTION = "Clothsim generation"
CASES = (("tshirt", "turntable", 8, 256), ("tshirt", "turntable", 8, 512), ("tshirt+jacket+trousers", "walk", 8, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7, help="a training seed (timing only)")
    ap.add_argument("--set", type=Path, default=None, help="a made set (index.json) to summarise")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from pointwear.body import load_body
    from pointwear.synth.clothsim.generate import make_subject
    from pointwear.synth.clothsim.plan import ClothsimOptions

    body = load_body("default", device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_clothsim_"))
    lines = [f"`.venv/bin/python scripts/bench_clothsim.py` on {time.strftime('%Y-%m-%d')}; {machine()}; "
             "bpy 4.5.15, Cycles on the CPU with 2 threads, shared with other jobs.", "",
             f"One subject per row, seed {args.seed}, 16 samples (denoised), cloth edge 2 cm, 14 settle frames, "
             "then 1 (turntable) or 4 (walk) simulation frames per output frame.", "",
             "| outfit | motion | frames | size | cloth vertices | setup | simulation | Cycles | total | per frame |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for outfit, motion, frames, size in CASES:
        options = ClothsimOptions(frames=frames, size=size, motion=motion)
        r = make_subject(tmp / f"{outfit}_{size}", outfit, args.seed, options, body=body)
        s = r["seconds"]
        lines.append(f"| {outfit} | {motion} | {frames} | {size} | {sum(r['vertices'])} | {s['setup']:.1f} s | "
                     f"{s['simulate']:.1f} s | {s['render']:.1f} s | {s['total']:.1f} s | {s['total'] / frames:.1f} s |")
        print(lines[-1], flush=True)
    if args.set:
        lines += ["", *penetration_table(args.set)]
    publish(SECTION, lines, write=not args.no_write)


def penetration_table(folder: Path) -> list[str]:
    """Per outfit of a made set: subjects, mean time, and cloth-in-body figures."""
    index = json.loads((folder / "index.json").read_text())
    rows = defaultdict(list)
    for item in index.values():
        rows[item["outfit"]].append(item)
    out = [f"Set `{folder}` ({len(index)} subjects, index.json): cloth vertices more than 2 mm inside the "
           "posed body (signed distance to the nearest body vertex along its normal), over all output frames.", "",
           "| outfit | subjects | mean time | inside share (mean) | 99th pct depth (max) | deepest vertex (max) |",
           "|---|---|---|---|---|---|"]
    for outfit, items in rows.items():
        pen = [i["penetration"] for i in items]
        out.append(f"| {outfit} | {len(items)} | {sum(i['seconds'] for i in items) / len(items):.0f} s | "
                   f"{sum(p['inside_share'] for p in pen) / len(pen):.2%} | {max(p['p99_depth_mm'] for p in pen):.1f} mm | "
                   f"{max(p['max_depth_mm'] for p in pen):.1f} mm |")
    return out


if __name__ == "__main__":
    main()
