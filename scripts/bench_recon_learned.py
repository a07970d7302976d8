"""Benchmark of the learned (feed-forward) reconstruction on held-out images: the paper's input-view
protocol (re-rendered mask IoU and SSIM) and the time of one prediction.

Images: the per-image refinement's benchmark subjects (scripts/bench_recon.py SUBJECTS: 13
synthetic turntables, seeds 500-512, all outfits, 512 px, frame 0 is the input photo; never trained
on: scripts/train_recon_default.py uses seeds 200-215) and the real photo
../shared/data/real/ryota.png with the clothing mask `pointwear prepare` makes for it. For each
image: `predict` (timed: crop, one forward pass, texture sampling), then the mesh re-rendered in
the predicted camera at the image's size (hard rasterizer, texture x SH shading).

Metrics, as scripts/bench_recon.py computes them for the refinement (so the rows sit side by side):
  * input-view mask IoU of the re-rendered silhouette against the clothing mask (whole image);
  * SSIM as pytorch_msssim computes it (11x11 Gaussian window, sigma 1.5, data range 1), between
    the render and the image with the background removed (both x their masks), on the box around
    both masks grown by 8 % of its height.
Writes docs/recon_learned_bench.json, docs/images/recon_learned.png (ryota.png and four subjects:
input with the background removed | re-render) and prints a Markdown table; `learned_rows(...)` gives the rows
to scripts/bench_recon.py, which shows them beside the per-image refinement.

    .venv/bin/python scripts/bench_recon_learned.py [--model PATH] [--work build/recon_learned_bench]
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pointwear.appearance.losses import ssim  # noqa: E402
from pointwear.data.subject import read_subject  # noqa: E402
from pointwear.recon.learned import load_model, predict, render_prediction  # noqa: E402
from pointwear.synth.generate import SynthOptions, generate_subject  # noqa: E402

from bench_recon import SUBJECTS  # noqa: E402  (scripts/: the evaluation subjects, defined there once)
EVAL_SEEDS = tuple(seed for _, seed in SUBJECTS)
RYOTA = ROOT.parent / "shared" / "data" / "real" / "ryota.png"
OUT = ROOT / "docs" / "recon_learned_bench.json"
FIGURE = ROOT / "docs" / "images" / "recon_learned.png"


def eval_images(work: Path, count: int = len(SUBJECTS)) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb uint8, clothing mask bool) of the first `count` held-out synthetic subjects' input
    frames and ryota.png."""
    out = []
    for outfit, seed in SUBJECTS[:count]:
        sub = work / f"{outfit}_{seed}"
        if not (sub / "subject.json").is_file():
            # Only the input view is scored here, so one frame (bench_recon.py renders 4 for its novel views).
            generate_subject(sub, SynthOptions(frames=1, size=512, outfit=outfit, motion="turntable", seed=seed,
                                               points=256), progress=lambda *a: None)
        s = read_subject(sub)
        out.append((f"synth {outfit}_{seed}", s.frame(0), s.mask(0)))
    real = work / "ryota"
    if not (real / "subject.json").is_file():
        subprocess.run([sys.executable, "-m", "pointwear", "prepare", str(RYOTA), "--out", str(real)], check=True)
    s = read_subject(real)
    out.append(("ryota.png", s.frame(0), s.mask(0)))
    return out


def score(rgb: np.ndarray, mask: np.ndarray, render: np.ndarray, hit: np.ndarray) -> dict[str, float]:
    """Input-view mask IoU, and SSIM (background removed) on the box around both masks + 8 %."""
    ys, xs = np.nonzero(hit | mask)
    pad = int(0.08 * (ys.max() - ys.min() + 1))
    H, W = mask.shape
    y0, y1 = max(0, ys.min() - pad), min(H, ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(W, xs.max() + 1 + pad)
    pred = (render * hit[..., None])[y0:y1, x0:x1]
    target = (rgb / 255.0 * mask[..., None])[y0:y1, x0:x1]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double()  # noqa: E731
    return {"iou": float((hit & mask).sum() / max((hit | mask).sum(), 1)),
            "ssim": float(ssim(t(pred), t(target), value_range=(0.0, 1.0))[0])}


def learned_rows(images, model_path: str | Path | None = None, panels: list | None = None) -> list[dict]:
    """One row per image: name, iou, ssim, seconds (one prediction, after a warm-up). With `panels`
    a list, (input with background removed, re-render) image pairs are appended to it."""
    model = load_model(model_path)
    predict(model, images[0][1], images[0][2])       # warm-up (first-call allocations)
    rows = []
    for name, rgb, mask in images:
        t0 = time.perf_counter()
        pred = predict(model, rgb, mask)
        seconds = time.perf_counter() - t0
        render, hit = render_prediction(model, pred, rgb.shape[:2])
        rows.append({"image": name, "method": "learned (one pass)", **score(rgb, mask, render, hit),
                     "seconds": round(seconds, 3)})
        if panels is not None:
            panels.append((rgb * mask[..., None], (render * hit[..., None] * 255).round().astype(np.uint8)))
    return rows


def save_panels(panels: list, path: Path, height: int = 256) -> None:
    """Pairs side by side (input | re-render), resized to `height`, in one PNG."""
    from PIL import Image
    tiles = []
    for a, b in panels:
        for im in (a, b):
            img = Image.fromarray(np.ascontiguousarray(im))
            tiles.append(img.resize((max(1, round(img.width * height / img.height)), height)))
    sheet = Image.new("RGB", (sum(t.width for t in tiles), height))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width
    sheet.save(path)


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    groups = {"synthetic (held out)": [r for r in rows if r["image"].startswith("synth")],
              "ryota.png": [r for r in rows if r["image"] == "ryota.png"]}
    return {g: {k: round(float(np.mean([r[k] for r in rs])), 3) for k in ("iou", "ssim")} |
            {"median_seconds": round(float(np.median([r["seconds"] for r in rs])), 3), "images": len(rs)}
            for g, rs in groups.items() if rs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "recon_learned_bench")
    ap.add_argument("--subjects", type=int, default=len(SUBJECTS), help="only the first N subjects")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    panels: list = []
    rows = learned_rows(eval_images(args.work, args.subjects), args.model, panels)
    save_panels([panels[-1]] + panels[:4], FIGURE)
    result = {"rows": rows, "summary": summary(rows), "eval_seeds": list(EVAL_SEEDS),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, {torch.get_num_threads()} torch "
                         f"threads, torch {torch.__version__} (shared host: other jobs running)"}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("| images | method | input-view mask IoU | input-view SSIM | time per image (median) |")
    print("|---|---|---|---|---|")
    for g, s in result["summary"].items():
        print(f"| {g} ({s['images']}) | learned, one pass | {s['iou']:.3f} | {s['ssim']:.3f} | {s['median_seconds']:.2f} s |")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
