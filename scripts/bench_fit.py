"""Outfit fitting speed on the paper-sized job: 4 codes x 100 coarse steps + 100 fine steps,
~8192 clothing points, 512 x 512 masks, on 1 frame and on 8 frames jointly; wall time and peak
memory of each fit (each in its own process), and, in the same run, the distance-transform
Chamfer against brute force at equal value. Writes the section "Outfit fitting speed" of
docs/benchmarks.md.

    .venv/bin/python scripts/bench_fit.py [--drapes neural parametric:tshirt-shorts] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine, publish  # noqa: E402

SECTION = "Outfit fitting speed"
TARGETS = {1: 30.0, 8: 60.0}


def run_case(subject: str, drape: str, frames: int, out: str, per_step: int) -> dict:
    """One fit in this process (called in a child): time and peak resident memory."""
    from pointwear.data.subject import read_subject
    from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
    spec, _, template = drape.partition(":")
    options = FitOptions(drape=spec, template=template or None, frames=list(range(frames)), codes=4,
                         coarse_steps=100, fine_steps=100, refine_steps=0, frames_per_step=per_step)
    fitter = OutfitFitter(read_subject(subject), Path(out), options)
    t0 = time.perf_counter()
    result = fitter.run()
    seconds = time.perf_counter() - t0
    return {"drape": drape, "frames": frames, "per_step": per_step, "seconds": seconds, "points": result["points"],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "iou": result["metrics"]["train"]["iou"]}


def chamfer_rows() -> list[dict]:
    """DT vs brute force, same definitions as scripts/bench_chamfer.py, in this run."""
    import numpy as np
    import torch
    from bench_chamfer import bench_case
    torch.set_num_threads(1)
    return [bench_case(f, 4, torch.device("cpu"), 3, np.random.default_rng(0)) for f in (1, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drapes", nargs="+", default=["neural", "parametric:tshirt-shorts"])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--case", nargs=5, metavar=("SUBJECT", "DRAPE", "FRAMES", "OUT", "PER_STEP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        subject, drape, frames, out, per_step = args.case
        print(json.dumps(run_case(subject, drape, int(frames), out, int(per_step))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_fit_"))
    subject = tmp / "subject"
    subprocess.run([sys.executable, "-m", "pointwear", "synth", str(subject), "--frames", "8", "--size", "512",
                    "--outfit", "tshirt-shorts", "--seed", "4242"], check=True, capture_output=True)
    rows = []
    for drape in args.drapes:
        for frames, per_step in ((1, 1), (8, 8), (8, 4)):
            out = tmp / f"{drape.replace(':', '_')}_{frames}_{per_step}"
            r = subprocess.run([sys.executable, __file__, "--case", str(subject), drape, str(frames), str(out),
                                str(per_step)],
                               check=True, capture_output=True, text=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    cham = chamfer_rows()
    lines = [f"`.venv/bin/python scripts/bench_fit.py` on {time.strftime('%Y-%m-%d')}; {machine()}; "
             f"1 torch thread; each fit in its own process; load average at the end {os.getloadavg()[0]:.1f}; "
             "synthetic subject (tshirt-shorts, 512 x 512, seed 4242).",
             "", "Job: 4 random codes x 100 coarse steps + 100 fine steps on the SLERP/mean start, no "
             "refinement; 'frames per step' is how many of the job's frames each step uses (the fit's "
             "default samples 4 per step; 8 = every frame every step).", "",
             "| drape | frames | frames per step | points | wall time | target | peak memory (RSS) | train IoU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "ok" if r["seconds"] <= TARGETS[r["frames"]] else "MISSED"
        lines.append(f"| {r['drape']} | {r['frames']} | {r['per_step']} | {r['points']} | {r['seconds']:.1f} s | "
                     f"<= {TARGETS[r['frames']]:.0f} s ({ok}) | {r['peak_mb']:.0f} MB | {r['iou']:.3f} |")
    lines += ["", "Distance-transform Chamfer vs brute force in the same run (4 codes, 8192 points, 512 x 512):", "",
              "| frames | DT fwd+bwd | brute force fwd+bwd | speed-up | value DT / BF | rel. diff |", "|---|---|---|---|---|---|"]
    for c in cham:
        lines.append(f"| {c['case']} | {c['t_dt'] * 1e3:.0f} ms | {c['t_bf']:.2f} s | {c['speedup']:.0f}x | "
                     f"{c['v_dt']:.5f} / {c['v_bf']:.5f} | {100 * c['rel_mean']:.2f} % |")
    publish(SECTION, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
