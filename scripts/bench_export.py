"""Artist-ready garments, measured (docs/benchmarks.md, section "Garment export and texture bake").

    .venv/bin/python scripts/bench_export.py [--app out/demo/app] [--no-write]

- export: `export_result` time for a remeshed neural garment (about 20k vertices, and about 4x
  that on a twice-subdivided body) with a 1024 px texture and a 1000-frame motion (the mesh block
  stored beforehand, as `pointwear mesh` does; median of 3 runs), without motion, and OBJ.
- bake: the demo's appearance result (`scripts/demo.sh` makes out/demo/app): mesh + UV atlas +
  texture baked from the neural appearance, and the PSNR of the textured mesh against the
  neural render on the training frames, inside the garment (bake.texture_psnr).

Each part is a function of its own returning its table rows (other benchmarks of this file's
section can be added beside them).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from benchdoc import machine, publish  # noqa: E402

TITLE = "Garment export and texture bake"


def _garment(folder: Path, subdivide: int) -> int:
    """A neural result (the default drape's first training code) remeshed on the body subdivided
    `subdivide` times, its mesh block stored with a 1024 px texture: the vertex count."""
    from gltf_support import neural_result
    from pointwear.body import load_body
    from pointwear.mesh.build import result_garment_mesh
    from pointwear.mesh.options import MeshOptions
    from pointwear.mesh.result_mesh import write_result_mesh
    neural_result(folder, load_body("default", device="cpu"), 0)
    mesh, _ = result_garment_mesh(folder, MeshOptions(texture_size=1024, subdivide=subdivide), warn=lambda m: None)
    mesh.texture = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    write_result_mesh(folder, mesh)
    return len(mesh.vertices)


def export_rows(work: Path, frames: int = 1000, repeats: int = 3) -> list[str]:
    from pointwear.data.motion import walking_motion, write_motion
    from pointwear.mesh.export import export_result
    motion = write_motion(work / "motion.npz", walking_motion(frames, fps=30.0), up="y")
    rows = []
    for subdivide in (1, 2):
        result = work / f"garment{subdivide}"
        result.mkdir()
        vertices = _garment(result, subdivide)
        for label, kwargs, fmt in ((f"glb + {frames}-frame motion", {"motion": motion, "up": "y"}, "glb"),
                                   ("glb, no motion", {}, "glb"), ("obj + mtl + png", {}, "obj")):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                files = export_result(result, fmt, work / f"out.{fmt}", **kwargs)
                times.append(time.perf_counter() - t0)
            size = sum(f.stat().st_size for f in files) / 2**20
            rows.append(f"| {label} | {vertices} | 1024 | {statistics.median(times):.2f} | {size:.1f} |")
    return ["Export (`export_result`, median of 3; the mesh block stored, so this is the writing):", "",
            "| export | vertices | texture px | seconds | MiB |", "|---|---|---|---|---|", *rows]


def bake_rows(app: Path, work: Path) -> list[str]:
    from pointwear.mesh.build import result_garment_mesh
    if not (app / "appearance.pt").is_file():
        return [f"Bake: skipped, no appearance result at {app} (run scripts/demo.sh)."]
    folder = work / "app"
    shutil.copytree(app, folder, ignore=shutil.ignore_patterns("checkpoint.pt", "heldout", "preview"))
    t0 = time.perf_counter()
    mesh, report = result_garment_mesh(folder)
    seconds = time.perf_counter() - t0
    per_view = ", ".join(f"{r['psnr']:.1f}" for r in report["bake_psnr_views"])
    bake = report["bake"]
    return [f"Bake of the demo's appearance result (`{app.relative_to(ROOT) if app.is_relative_to(ROOT) else app}`, "
            f"{report['source']}, {report['vertices']} vertices after the UV seams, 1024 px):", "",
            "| PSNR vs neural render, training views (dB) | per view | texels seen by training views | "
            "by orbit views | filled | seconds (mesh + atlas + bake + PSNR) |",
            "|---|---|---|---|---|---|",
            f"| {report['bake_psnr']:.2f} | {per_view} | {bake['seen_tier0']:.1%} | {bake['seen_tier1']:.1%} | "
            f"{bake['filled']:.1%} | {seconds:.1f} |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", type=Path, default=ROOT / "out" / "demo" / "app")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-assets-") as tmp:
        work = Path(tmp)
        lines = [f"`scripts/bench_export.py`, {machine()} (shared with other jobs).", "",
                 *export_rows(work), "", *bake_rows(args.app.absolute(), work),
                 "", "Targets (issue 12): export <= 5 s for a 20k-vertex garment with a 1024 px texture and a "
                 "1000-frame motion; bake PSNR >= 22 dB inside the garment."]
    publish(TITLE, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
