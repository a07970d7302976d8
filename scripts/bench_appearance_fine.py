"""Appearance on fine textures (issue 10 part 5): held-out SSIM / PSNR of `fit-appearance` at
256 px on synthetic texture seeds and clothsim subjects, with the fit's wall and CPU time.

Each subject: synth seeds are made as in bench_appearance.py (`pointwear synth DIR --frames 16
--size 256 --outfit tshirt-shorts --seed S`, outfit by `pointwear fit-outfit` at defaults; cached in
out/bench_appearance_fine/); clothsim subjects (a folder in our subject format, e.g.
/work/clothsim_eval/tshirt_1000) get their outfit by `pointwear fit-outfit` at defaults. Then one
appearance fit per subject and option set, in this process (one torch thread), frames 3, 7, 11,
15 (synth) or 3, 7 (8-frame clothsim) held out. Prints one JSON line per fit and a markdown table
(no file is written into docs/: the caller puts the table where it belongs).

    .venv/bin/python scripts/bench_appearance_fine.py --seeds 2 5 --options '{"epochs": 50}' \\
        --options '{"epochs": 50, "align_grid": 6}'
    .venv/bin/python scripts/bench_appearance_fine.py --seeds 1 21 33 \\
        --clothsim /work/clothsim_eval/tshirt_1000 /work/clothsim_eval/skirt_1000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "out" / "bench_appearance_fine"
EXE = [sys.executable, "-m", "pointwear"]


def run(args: list[str]) -> None:
    r = subprocess.run(EXE + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: pointwear {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def synth_subject(seed: int) -> tuple[str, Path, Path]:
    base = CACHE / f"seed{seed}"
    subject = base / "subject"
    if not (subject / "subject.json").is_file():
        run(["synth", str(subject), "--frames", "16", "--size", "256", "--seed", str(seed), "--outfit", "tshirt-shorts"])
    return f"seed {seed}", subject, outfit_of(subject, base / "outfit")


def clothsim_subject(folder: Path) -> tuple[str, Path, Path]:
    return folder.name, folder, outfit_of(folder, CACHE / folder.name / "outfit")


def outfit_of(subject: Path, outfit: Path) -> Path:
    if not (outfit / "result.json").is_file():
        run(["fit-outfit", str(subject), "--out", str(outfit)])
    return outfit


def fit(name: str, subject: Path, outfit: Path, options: dict, tag: str) -> dict:
    from pointwear.appearance.fit import AppearanceOptions, fit_appearance
    out = CACHE / "fits" / f"{name.replace(' ', '')}_{tag}"
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    result = fit_appearance(subject, outfit, out, AppearanceOptions(**options))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    m = result["metrics"]
    return {"subject": name, "options": options, "heldout": m["heldout"], "mask_aligned": m["heldout_mask_aligned"],
            "time_aligned": m.get("heldout_time_aligned", {}),
            "train": m["train"], "wall_min": round((time.time() - t0) / 60, 2), "cpu_min": round(cpu / 60, 2),
            "load": round(os.getloadavg()[0], 1), "epochs": result["epochs"], "steps": result["steps"]}


def table(rows: list[dict]) -> list[str]:
    lines = ["| subject | options | held-out SSIM | held-out PSNR | held-out IoU | time-aligned SSIM / PSNR "
             "| train SSIM / PSNR | fit wall (load) | CPU time | targets (SSIM >= 0.85, PSNR >= 24) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, t, a = r["heldout"], r["train"], r["time_aligned"]
        met = "met" if h["ssim"] >= 0.85 and h["psnr"] >= 24.0 else "MISSED"
        aligned = f"{a['ssim']:.3f} / {a['psnr']:.2f} dB" if a else "-"
        lines.append(f"| {r['subject']} | `{json.dumps(r['options'])}` | {h['ssim']:.3f} | {h['psnr']:.2f} dB | "
                     f"{h['iou']:.3f} | {aligned} | {t['ssim']:.3f} / {t['psnr']:.2f} dB | "
                     f"{r['wall_min']:.1f} min ({r['load']}) | {r['cpu_min']:.1f} min | {met} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--clothsim", type=Path, nargs="*", default=[])
    ap.add_argument("--options", action="append", default=None,
                    help="AppearanceOptions as JSON (repeat for an A/B); default: the defaults")
    ap.add_argument("--label", default="", help="prefix of the fits' folders (out/bench_appearance_fine/fits/"
                    "SUBJECT_LABELn), so that runs at the same time do not share one")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    subjects = [synth_subject(s) for s in args.seeds] + [clothsim_subject(c) for c in args.clothsim]
    rows = []
    for name, subject, outfit in subjects:
        for tag, options in enumerate(json.loads(o) for o in (args.options or ["{}"])):
            rows.append(fit(name, subject, outfit, options, f"{args.label}{tag}"))
            print(json.dumps(rows[-1]), flush=True)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
