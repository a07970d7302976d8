"""Train the default weights of the learned reconstruction (backend/pointwear/recon/data/recon_learned.pt).

Data (all made here, nothing downloaded):
  * synthetic subjects from `pointwear synth` on the training seeds TRAIN_SEEDS (random outfits,
    turntable and walk motions); the benchmarks (scripts/bench_recon.py, bench_recon_learned.py)
    evaluate on EVAL_SEEDS (500-512), which never appear here;
  * the 40 real frames of ../shared/data/real/single_person_demo.mp4 through `pointwear prepare`.
Then `train` for at most --minutes, and the shipped file is the checkpoint without its optimizer,
in float16. Every stage is resumable: re-running skips what is already in --work.

    .venv/bin/python scripts/train_recon_default.py [--work build/recon_learned] [--minutes 15]

Budget: on 2 CPU cores the whole script takes ~25 min (synthesis ~4, prepare ~3, training
--minutes); it writes docs/recon_learned_training.json (loss history, machine, timings).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pointwear.body.model import load_body  # noqa: E402
from pointwear.recon.datasets import build_inputs, list_items  # noqa: E402
from pointwear.recon.learned import DEFAULT_MODEL, LearnOptions, export_model, train  # noqa: E402
from pointwear.synth.generate import SynthOptions, generate_subject  # noqa: E402
from bench_recon import SUBJECTS  # noqa: E402  (scripts/: the evaluation subjects)

TRAIN_SEEDS = tuple(range(200, 216))
EVAL_SEEDS = tuple(seed for _, seed in SUBJECTS)   # bench_recon(_learned).py's; asserted disjoint below
FRAMES = 10
SIZE = 192
VIDEO = ROOT.parent / "shared" / "data" / "real" / "single_person_demo.mp4"
HISTORY = ROOT / "docs" / "recon_learned_training.json"

assert not set(TRAIN_SEEDS) & set(EVAL_SEEDS)


def synth_subjects(work: Path) -> None:
    body = load_body("default", device="cpu")
    for k, seed in enumerate(TRAIN_SEEDS):
        out = work / "data" / f"synth_{seed}"
        if (out / "subject.json").is_file():
            continue
        motion = "turntable" if k % 2 == 0 else "walk"
        generate_subject(out, SynthOptions(frames=FRAMES, size=SIZE, seed=seed, motion=motion, points=256),
                         progress=lambda *a: None, body=body)
        print(f"synth seed {seed} ({motion})", flush=True)


def prepare_video(work: Path) -> None:
    out = work / "data" / "real_demo"
    if (out / "subject.json").is_file():
        return
    cmd = [sys.executable, "-m", "pointwear", "prepare", str(VIDEO), "--out", str(out), "--size", "512"]
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "recon_learned")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    synth_subjects(args.work)
    t_synth = time.perf_counter() - t0
    prepare_video(args.work)
    t_prep = time.perf_counter() - t0 - t_synth
    options = LearnOptions(steps=args.steps)
    cache = args.work / "inputs.pt"
    if cache.is_file():
        inputs = torch.load(cache, weights_only=True)
    else:
        inputs = build_inputs(list_items(args.work / "data", "subject"), (options.height, options.width))
        torch.save(inputs, cache)
    ckpt = args.work / "checkpoint.pt"
    report = train(inputs, ckpt, options, max_seconds=args.minutes * 60,
                   log=lambda step, row: print(json.dumps(row), flush=True))
    export_model(ckpt, args.out)
    report.update({"synth_seconds": round(t_synth, 1), "prepare_seconds": round(t_prep, 1),
                   "total_seconds": round(time.perf_counter() - t0, 1), "train_seeds": list(TRAIN_SEEDS),
                   "eval_seeds": list(EVAL_SEEDS), "model_bytes": args.out.stat().st_size,
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch "
                              f"{torch.__version__}, {torch.get_num_threads()} threads (shared, loaded host)"})
    HISTORY.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB) after {report['steps']} steps; {HISTORY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
