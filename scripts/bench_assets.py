#!/usr/bin/env python
"""Benchmark the artist-ready garment features (issue 12): outfit-slider latency in Blender (slider
moved -> clothing re-draped from the slider table -> the evaluated, skinned garment ready), the
backend's one-off slider table, the cloth-simulation handoff, and BVH motion import.

    .venv/bin/python scripts/bench_assets.py [--other-python .venv-bpy5/bin/python] [--no-write]

A parametric fit of a 3-garment outfit (jacket + T-shirt + trousers: about 13k garment vertices,
drawn both as points and as a mesh) on a synthetic subject; its slider table (`pointwear edit
--table`); then in bpy (the add-on's own modules, from the repository) 30 slider moves, each timed
from setting the slider to the evaluated garment mesh of the posed armature. `--other-python` runs
the Blender part again under another bpy (the bpy 5.0 lane) and adds its row. Motion import:
`retarget_bvh` on the whole of ../shared/data/real/cmu_01_01.bvh (2752 frames at 120 fps -> 688 at
30 fps). Writes the section "Artist-ready garments" of docs/benchmarks.md unless --no-write.

Target: slider -> updated 10k-point or mesh garment <= 0.3 s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
TITLE = "Artist-ready garments"
CMU = REPO.parent / "shared" / "data" / "real" / "cmu_01_01.bvh"
if not CMU.is_file():
    CMU = Path("/work/shared/data/real/cmu_01_01.bvh")
MOVES = 30
OUTFIT = "jacket+tshirt+trousers"


def make_result(root: Path) -> tuple[Path, Path, float]:
    """A fitted result (3 garments), a walk and the slider table; seconds the table took."""
    from pointwear.cli import main
    from pointwear.drape.sliders import slider_table
    assert main(["synth", str(root / "subject"), "--frames", "3", "--size", "96", "--outfit", OUTFIT, "--seed", "2",
                 "--points", "2048"]) == 0
    assert main(["fit-outfit", str(root / "subject"), "--out", str(root / "result"), "--garments", OUTFIT,
                 "--codes", "1", "--coarse-steps", "2", "--fine-steps", "2"]) == 0
    assert main(["motion", "export", "walk", "--frames", "30", "--out", str(root / "walk.npz")]) == 0
    start = time.perf_counter()
    slider_table(root / "result", root / "sliders.npz")
    return root / "result", root / "sliders.npz", time.perf_counter() - start


def blender_sliders(result: Path, table: Path, walk: Path, cloth_frames: int = 24) -> dict:
    """In this process's bpy: import, load the sliders, time MOVES slider moves; then the cloth
    handoff and its simulation over `cloth_frames` frames."""
    sys.path.insert(0, str(REPO))
    import bpy

    from addon import properties
    from addon.scene import armature as armature_builder
    from addon.scene import cloth, importer, sliders

    bpy.ops.wm.read_factory_settings(use_empty=True)
    for cls in properties.CLASSES:
        bpy.utils.register_class(cls)
    properties.register_extra()
    ctx = bpy.context
    objs = importer.import_result(ctx, str(result), with_camera=False, with_motion=False)
    arm, mesh = objs["armature"], objs["clothing_mesh"]
    importer.load_motion(ctx, arm, str(walk), up="Y")
    ctx.scene.frame_set(10)                                   # a posed frame
    start = time.perf_counter()
    sliders.load(arm, str(table))
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    depsgraph = ctx.evaluated_depsgraph_get()
    times = []
    for k in range(MOVES):
        item = arm.pointwear_sliders[int(rng.integers(len(arm.pointwear_sliders)))]
        start = time.perf_counter()
        item.factor = float(rng.uniform(0.05, 0.95))
        depsgraph.update()
        evaluated = mesh.evaluated_get(depsgraph)
        co = np.empty(len(evaluated.data.vertices) * 3, np.float32)
        evaluated.data.vertices.foreach_get("co", co)
        times.append(time.perf_counter() - start)
    sliders.reset(arm)
    info = cloth.make_cloth(ctx, arm, mesh, objs["body"], armature_builder.joint_names(arm),
                            armature_builder.rest_joints(arm), "COTTON")
    start = time.perf_counter()
    for frame in range(info["frame_start"], info["frame_start"] + cloth_frames):
        ctx.scene.frame_set(frame)
    cloth_s = time.perf_counter() - start
    return {"bpy": bpy.app.version_string, "vertices": len(mesh.data.vertices), "sliders": len(arm.pointwear_sliders),
            "load_s": load_s, "first_s": times[0], "median_s": float(np.median(times)),
            "p90_s": float(np.percentile(times, 90)), "max_s": float(np.max(times)),
            "load_average": os.getloadavg()[0],
            "cloth_frames": cloth_frames, "cloth_s": cloth_s}


def motion_import() -> dict:
    from pointwear.body import load_body
    from pointwear.data.retarget import retarget_bvh
    body = load_body("default", device="cpu")
    out = Path(tempfile.mkdtemp(prefix="bench_assets_motion_")) / "cmu.npz"
    start = time.perf_counter()
    report = retarget_bvh(CMU, out, body)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "frames": report["frames"], "error": report["joint_error_cm"],
            "skating": report["foot_skating"]}


def doc_lines(rows: list[dict], table_s: float, motion: dict, machine_line: str) -> list[str]:
    lines = [f"`scripts/bench_assets.py`, {machine_line}.", "",
             f"Outfit sliders: a 2+2-step parametric fit of `{OUTFIT}` on a synthetic subject, its garment "
             f"drawn as points and as a mesh over the same {rows[0]['vertices']} vertices, skinned and posed by a "
             f"walk; {MOVES} moves of random sliders, each timed from setting the slider to the evaluated posed "
             "garment mesh (the table evaluated in numpy, rest points of both objects set, depsgraph updated). "
             f"The slider table ({rows[0]['sliders']} sliders x 10 samples) is made once by the backend in "
             f"{table_s:.1f} s. Loading the sliders keeps the table it read in memory, so the first move "
             "does not read the file again (it used to: 0.34-0.67 s for the first move on a loaded machine, the "
             "whole of the old maximum; no garbage collection ran during the moves).", "",
             "| bpy | garment vertices | sliders | load table (s) | first move (s) | slider -> garment, median (s) | "
             "90th pct (s) | max (s) | load average | cloth sim, 24 frames (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bpy']} | {r['vertices']} | {r['sliders']} | {r['load_s']:.3f} | {r['first_s']:.3f} | "
                     f"{r['median_s']:.3f} | {r['p90_s']:.3f} | {r['max_s']:.3f} | {r['load_average']:.1f} | "
                     f"{r['cloth_s']:.1f} |")
    worst = max(r["max_s"] for r in rows)
    lines += ["", "Target slider -> updated garment <= 0.3 s: "
              + (f"met by every move (slowest {worst:.3f} s, with the load average shown: other jobs shared "
                 "the 2 cores)." if worst <= 0.3 else
                 f"met by the median and 90th percentile; the slowest single move took {worst:.2f} s "
                 "(the load average column: other jobs shared the 2 cores)."
                 if max(r["p90_s"] for r in rows) <= 0.3 else "NOT met."), "",
              f"Motion import (`pointwear motion import`): the whole of `cmu_01_01.bvh` (2752 frames at 120 fps) "
              f"retargeted to {motion['frames']} SMPL frames at 30 fps in {motion['seconds']:.1f} s "
              f"({1000 * motion['seconds'] / motion['frames']:.0f} ms per frame); joint-position error "
              f"{motion['error']['root_and_legs']:.1f} cm over the root and legs (the matched joints), "
              f"{motion['error']['all']:.1f} cm over all joints (the actor's torso is shorter than the body's); "
              f"foot skating {motion['skating']['retargeted']['speed_cm_s']:.1f} cm/s retargeted against "
              f"{motion['skating']['source']['speed_cm_s']:.1f} cm/s in the source (contact "
              f"{100 * motion['skating']['retargeted']['contact']:.0f} % / "
              f"{100 * motion['skating']['source']['contact']:.0f} % of steps)."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other-python", default=None, help="another bpy's Python for a second Blender row")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--blender-only", nargs=3, metavar=("RESULT", "TABLE", "WALK"), default=None,
                    help="(internal) the Blender measurements only, as JSON on the last stdout line")
    args = ap.parse_args()
    if args.blender_only:
        print(json.dumps(blender_sliders(*map(Path, args.blender_only))))
        return
    from benchdoc import machine, publish
    root = Path(tempfile.mkdtemp(prefix="bench_assets_"))
    result, table, table_s = make_result(root)
    rows = [blender_sliders(result, table, root / "walk.npz")]
    if args.other_python:
        proc = subprocess.run([args.other_python, __file__, "--blender-only", str(result), str(table),
                               str(root / "walk.npz")], capture_output=True, text=True, cwd=str(REPO))
        if proc.returncode != 0:
            raise SystemExit(f"--other-python failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    motion = motion_import()
    publish(TITLE, doc_lines(rows, table_s, motion, machine()), write=not args.no_write)


if __name__ == "__main__":
    main()
    # bpy and torch in one process can hang at interpreter exit (seen with bpy 4.5 after Cycles
    # renders and cloth bakes): everything is written and flushed by now, so leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
