"""Host synchronisations per appearance step and per rendered frame, this code against an older
revision (run from a `git archive` of it) on the same small pipeline: a synthetic subject (4
frames, 96 px), a tiny outfit fit, one epoch of appearance fitting; then one counted training
step (batch 2) and one counted render of 8 frames (body raster, visibility, splat, U-Net, copy
back). The counter is pointwear/syncs.py (loaded by file, so it counts either revision). Writes
the section "Host synchronisations" of docs/benchmarks.md (the fit step's counts are in
"Outfit fitting speed").

    .venv/bin/python scripts/bench_syncs.py [--base cf730f3] [--no-write]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_fit import ROOT, base_tree  # noqa: E402
from benchdoc import machine, publish  # noqa: E402

SECTION = "Host synchronisations"
BUDGETS = {"appearance step": 10, "render, per frame": 5}


def _counter():
    spec = importlib.util.spec_from_file_location("_syncs", ROOT / "backend" / "pointwear" / "syncs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.HostSyncCounter


def run_case(work: Path) -> dict:
    """Build the small pipeline in `work` and count (called in a child)."""
    import numpy as np
    import torch
    from pointwear.appearance.camera import intrinsics, look_at, write_camera
    from pointwear.appearance.fit import AppearanceFitter, AppearanceOptions
    from pointwear.appearance.neural_render import render_sequence
    from pointwear.body import load_body
    from pointwear.data.motion import walking_motion, write_motion
    from pointwear.data.subject import read_subject
    from pointwear.fit.outfit_fit import FitOptions, OutfitFitter
    from pointwear.synth.generate import SynthOptions, generate_subject
    torch.set_num_threads(1)
    Counter = _counter()
    body = load_body("default", device="cpu")
    subject = work / "subject"
    generate_subject(subject, SynthOptions(frames=4, size=96, outfit="tshirt-shorts", seed=3, points=1024), body=body)
    OutfitFitter(read_subject(subject), work / "outfit", FitOptions(template="tshirt-shorts", codes=1, coarse_steps=2,
                                                                     fine_steps=2, device="cpu"), body=body).run()
    fitter = AppearanceFitter(read_subject(subject), work / "outfit", work / "app",
                              AppearanceOptions(epochs=1, batch=2, device="cpu"), body=body)
    fitter.run()
    # one training step after the run (warm): loss, backward, Adam, and the loss read-back the
    # old train loop did every step (the new one reads the terms once per epoch)
    idx = torch.arange(2)
    fitter.model.train()
    with Counter() as step:
        loss, terms = fitter.batch_loss(fitter.train, idx)
        fitter.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fitter.optimizer.step()
        if all(isinstance(v, float) for v in terms.values()):
            float(loss.detach())
    motion = walking_motion(8, fps=24.0, speed=1.0, seed=0)
    motion_path = write_motion(work / "walk.npz", motion, up="y")
    mats = [look_at(motion.transl[t] + [0.0, 0.1, 3.0], motion.transl[t]) for t in range(8)]
    camera = write_camera(work / "camera.npz", intrinsics((64, 64), 40.0), (64, 64), np.stack(mats))
    render_sequence(work / "app", work / "warm", motion_path, camera, outfit_dir=work / "outfit", up="y", device="cpu")
    import pointwear.appearance.neural_render as nr
    state, real_depth = {}, nr.body_depth

    def depth(*a, **k):          # counting starts at the first body raster ...
        if "counter" not in state:
            state["counter"] = Counter().__enter__()
        return real_depth(*a, **k)

    def progress(stage, i, n):   # ... and ends when the last frame is written
        if i == n and "counter" in state and "done" not in state:
            state["done"] = state["counter"].__exit__(None, None, None)
    nr.body_depth = depth
    render_sequence(work / "app", work / "out", motion_path, camera, outfit_dir=work / "outfit", up="y",
                    device="cpu", progress=progress)
    counter = state["counter"]
    return {"appearance step": step.total, "render, 8 frames": counter.total, "render, per frame": counter.total / 8,
            "render counts": dict(counter.counts), "step counts": dict(step.counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="cf730f3")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_syncs_"))
    base = base_tree(args.base, tmp / "base")
    rows = {}
    for side in ("old", "new"):
        env = dict(os.environ, PYTHONPATH=str(base)) if side == "old" else None
        (tmp / side).mkdir()
        r = subprocess.run([sys.executable, __file__, "--case", str(tmp / side)], capture_output=True, text=True,
                           env=env, check=True)
        rows[side] = json.loads(r.stdout.strip().splitlines()[-1])
        print(side, rows[side], flush=True)
    lines = [f"`.venv/bin/python scripts/bench_syncs.py` on {time.strftime('%Y-%m-%d %H:%M')}; {machine()}; the old "
             f"revision {args.base} (from a `git archive`) and this one on the same small pipeline (synthetic subject, "
             "4 frames at 96 px; tiny outfit fit; one appearance epoch). Host synchronisations counted on the CPU by "
             "`pointwear.syncs.HostSyncCounter` (values read into Python, copies to the host, boolean indexing, "
             "nonzero, ...; torch.optim's own host-side step counters excluded). Appearance step: loss, backward, "
             "Adam and the loss read-back each revision's train loop does per step. Render: 8 frames of a walk (64 px) "
             "from the first body raster until the last frame is written, divided by 8. The fit step's counts: section \"Outfit fitting speed\".",
             "", "| what | old | new | budget |", "|---|---|---|---|"]
    for key, budget in BUDGETS.items():
        lines.append(f"| {key} | {rows['old'][key]:.1f} | {rows['new'][key]:.1f} | <= {budget} |")
    publish(SECTION, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
