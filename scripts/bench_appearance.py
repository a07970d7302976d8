"""Appearance fitting quality and neural rendering speed on 2 CPU cores.

A synthetic subject of 16 frames at 256 x 256 (tshirt-shorts; frames 3, 7, 11, 15 held out) with
its outfit fitted by `pointwear fit-outfit` at default settings (both cached in
out/bench_appearance/), then `pointwear fit-appearance` at its default settings, timed wall clock
as a command (setup, training, baking, evaluation, outputs). Targets: held-out SSIM >= 0.85 and
PSNR >= 24 dB inside the clothing mask after at most 5 minutes; better held-out SSIM than the
baked-colour baseline. Then `pointwear render` of a 48-frame walk (tracking camera, 256 x 256),
on the subject's body and on another body shape: >= 25 frames/s, measured per frame as pose +
visibility + splat + U-Net (file writing excluded; the rate with writing is reported too).
With --base REV the fit and the renders also run with that older revision's code (a `git
archive` of it, same subject and outfit), rows marked "old": both fits run at the same time (one
torch thread each, so they share whatever load the machine has), then the renders alternate
between the revisions (--repeats times each; the median run is shown, every run's rate and load
average in docs). CPU time (user + system of the fit's own process) is reported beside wall
time: on a shared machine it is the steadier figure.
Writes the section "Appearance fitting and neural rendering" of docs/benchmarks.md.

    .venv/bin/python scripts/bench_appearance.py [--seeds 1] [--base cf730f3] [--no-write] [--fresh]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import machine, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Appearance fitting and neural rendering"
CACHE = ROOT / "out" / "bench_appearance"
EXE = [sys.executable, "-m", "pointwear"]
# Issue 15: held-out SSIM 0.85 within 5 min of fitting, render >= 25 frames/s; issue 10 (fine
# textures): held-out SSIM 0.85 and PSNR 24 dB.
TARGETS = {"ssim": 0.85, "psnr": 24.0, "minutes": 5.0, "fps": 25.0}


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(EXE + args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed: pointwear {' '.join(args)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def run_peak(args: list[str], env: dict | None = None) -> float:
    """Run `pointwear ARGS` to its end; its peak memory (resident set, MB) from os.wait4."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(EXE + args, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"failed: pointwear {' '.join(args)}\n{log.read()[-3000:]}")
    return usage.ru_maxrss / 1024


def prepare(seed: int, fresh: bool) -> tuple[Path, Path, dict]:
    """The cached subject and its default outfit fit (made once per seed)."""
    base = CACHE / f"seed{seed}"
    subject, outfit = base / "subject", base / "outfit"
    if fresh:
        shutil.rmtree(base, ignore_errors=True)
    if not (subject / "subject.json").is_file():
        shutil.rmtree(subject, ignore_errors=True)
        run(["synth", str(subject), "--frames", "16", "--size", "256", "--seed", str(seed),
             "--outfit", "tshirt-shorts", "--sheet"])
    info = {"textures": json.loads((subject / "truth" / "outfit.json").read_text())["textures"]}
    if not (outfit / "result.json").is_file():
        t0 = time.perf_counter()
        run(["fit-outfit", str(subject), "--out", str(outfit)])
        info["outfit_seconds"] = time.perf_counter() - t0
    result = json.loads((outfit / "result.json").read_text())
    info |= {"drape": result["drape"], "points": result["points"], "outfit_iou": result["metrics"]["heldout"]["iou"]}
    return subject, outfit, info


def walk_and_camera(folder: Path, app: Path, frames: int = 48) -> tuple[Path, Path]:
    """A travelling walk (Y-up) and a camera following it at the training pixel density."""
    import torch

    from pointwear.appearance.camera import intrinsics, look_at, write_camera
    from pointwear.data.motion import walking_motion, write_motion
    motion = walking_motion(frames, fps=24.0, speed=1.0, seed=0)
    motion_path = write_motion(folder / "walk.npz", motion, up="y")
    from pointwear.body import load_body
    config = torch.load(app / "appearance.pt", weights_only=True)["config"]
    body = load_body(config["body"], config["gender"], device="cpu")
    pelvis = body.shaped(config["betas"])[1][0, 0].numpy()
    K = intrinsics((256, 256), 40.0)
    distance = K[0, 0] / config["px_per_m"]           # the clothing as dense in pixels as in training
    mats = []
    for t in range(frames):
        target = motion.transl[t] + pelvis + np.array([0.0, 0.15, 0.0])   # mid-torso
        angle = np.deg2rad(30.0 * np.sin(2 * np.pi * t / frames))     # swing around the walker
        eye = target + distance * np.array([np.sin(angle), 0.05, np.cos(angle)])
        mats.append(look_at(eye, target))
    camera = write_camera(folder / "camera.npz", K, (256, 256), np.stack(mats))
    return motion_path, camera


def start_fit(seed: int, extra: list[str], side: str, base: Path | None) -> dict:
    """Start `pointwear fit-appearance` of the cached subject with this code ("new") or the older
    revision under `base` ("old": its folders get an _old suffix), its output to APP.log."""
    folder = CACHE / f"seed{seed}"
    tag = "" if side == "new" else "_old"
    env = dict(os.environ, PYTHONPATH=str(base)) if side == "old" else None
    app = folder / f"app{tag}"
    shutil.rmtree(app, ignore_errors=True)
    log = open(folder / f"app{tag}.log", "w")
    args = ["fit-appearance", str(folder / "subject"), "--outfit", str(folder / "outfit"), "--out", str(app), *extra]
    proc = subprocess.Popen(EXE + args, stdout=log, stderr=subprocess.STDOUT, env=env)
    fit = {"proc": proc, "t0": time.perf_counter(), "app": app, "log": log}
    fit["thread"] = threading.Thread(target=_reap, args=(fit,), daemon=True)
    fit["thread"].start()
    return fit


def _reap(fit: dict) -> None:
    """Wait for the fit's process with os.wait4, keeping its own CPU time (user + system) and
    the wall time and load average when it ended."""
    _, status, usage = os.wait4(fit["proc"].pid, 0)
    fit["seconds"] = time.perf_counter() - fit["t0"]
    fit["cpu"] = usage.ru_utime + usage.ru_stime
    fit["peak_mb"] = usage.ru_maxrss / 1024
    fit["load"] = round(os.getloadavg()[0], 1)
    fit["code"] = os.waitstatus_to_exitcode(status)


def finish_fit(fit: dict) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, load average at its end) of a started fit, once it ended."""
    fit["thread"].join()
    fit["log"].close()
    fit["proc"].returncode = fit["code"]
    if fit["code"] != 0:
        raise SystemExit(f"failed: {' '.join(map(str, fit['proc'].args))}\n"
                         f"{Path(fit['log'].name).read_text()[-3000:]}")
    return fit["seconds"], fit["cpu"], fit["load"], fit["peak_mb"]


def bench_seed(seed: int, fresh: bool, extra: list[str], sides: list[str], base: Path | None,
               repeats: int, render_only: bool = False) -> list[dict]:
    """Fit the seed's appearance with each side's code, all sides at once (so they share the
    machine's load), then render the walk with each, the sides interleaved `repeats` times.
    render_only: keep the fits of the last run, render again."""
    _, _, info = prepare(seed, fresh)
    folder = CACHE / f"seed{seed}"
    if render_only:      # the cached fits of an earlier run (bench*.json), renders made again
        started = {side: {"app": folder / ("app" if side == "new" else "app_old")} for side in sides}
        fits = {}
        for side in sides:
            old = json.loads((folder / f"bench{'' if side == 'new' else '_old'}.json").read_text())
            fits[side] = (old["fit_seconds"], old.get("fit_cpu_seconds"), old.get("load_average"), old.get("fit_peak_mb"))
    else:
        started = {side: start_fit(seed, extra, side, base) for side in sides}
        fits = {side: finish_fit(fit) for side, fit in started.items()}
    motion, camera = walk_and_camera(folder, started["new"]["app"])
    renders: dict[str, dict[str, list[dict]]] = {side: {} for side in sides}
    for _ in range(repeats):
        for name, betas in (("subject body", None), ("betas 2 -1.5", "2 -1.5")):
            for side in sides:
                tag = "" if side == "new" else "_old"
                env = dict(os.environ, PYTHONPATH=str(base)) if side == "old" else None
                out = folder / f"render_{name.split()[0]}{tag}"
                shutil.rmtree(out, ignore_errors=True)
                args = ["render", str(started[side]["app"]), "--motion", str(motion), "--up", "y", "--camera", str(camera),
                        "--out", str(out)]
                peak = run_peak(args + (["--betas", betas] if betas else []), env=env)
                r = json.loads((out / "render.json").read_text()) | {"load_average": round(os.getloadavg()[0], 1),
                                                                      "peak_mb": peak}
                renders[side].setdefault(name, []).append(r)
    if "new" in sides:
        strip(folder, started["new"]["app"])
    rows = []
    for side in sides:
        tag = "" if side == "new" else "_old"
        seconds, cpu, load, peak = fits[side]
        row = {"seed": seed, **info, "fit_seconds": seconds, "fit_cpu_seconds": cpu, "fit_peak_mb": peak,
               "date": time.strftime("%Y-%m-%d"),
               "load_average": load, "side": side, "render_runs": renders[side]}
        (folder / f"bench{tag}.json").write_text(json.dumps(row, indent=1))
        rows.append(load_row(seed, tag))
    return rows


def load_row(seed: int, tag: str = "") -> dict:
    """A seed's figures from its cached run: bench.json (fit time), the fit's result.json, the
    renders' render.json, and the held-out PSNR per garment (from the subject's labels)."""
    folder = CACHE / f"seed{seed}"
    row = json.loads((folder / f"bench{tag}.json").read_text())
    row["result"] = json.loads((folder / f"app{tag}" / "result.json").read_text())
    runs = row.get("render_runs") or {name: [json.loads((folder / f"{sub}{tag}" / "render.json").read_text())]
                                      for name, sub in (("subject body", "render_subject"), ("betas 2 -1.5", "render_betas"))}
    row["renders"] = {name: _median_run(r) for name, r in runs.items()}
    row["garment_psnr"] = garment_psnr(folder / "subject", folder / f"app{tag}", row["result"]["heldout_frames"])
    return row


def _median_run(runs: list[dict]) -> dict:
    """The render run of median compute rate, with every run's rate and load beside it."""
    ordered = sorted(runs, key=lambda r: r["compute_frames_per_second"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["all_runs"] = [(r["compute_frames_per_second"], r.get("load_average")) for r in runs]
    return mid


def garment_psnr(subject_dir: Path, app: Path, frames: list[int]) -> dict[str, float]:
    """Held-out PSNR inside each garment's labelled pixels (the 8-bit heldout PNGs over grey)."""
    import imageio.v3 as iio

    from pointwear.data.subject import read_subject
    subject = read_subject(subject_dir)
    out = {}
    for label, name in subject.label_names.items():
        se = n = 0.0
        for i in frames:
            rgba = iio.imread(app / "heldout" / f"{i:06d}.png").astype(np.float64)
            a = rgba[..., 3:] / 255
            pred = rgba[..., :3] * a + 127.5 * (1 - a)
            sel = subject.labels(i) == label
            se += float(((pred - subject.frame(i))[sel] ** 2).sum())
            n += 3 * float(sel.sum())
        if n:
            out[name] = round(10 * np.log10(255.0 ** 2 / (se / n)), 2)
    return out


def strip(folder: Path, app: Path) -> None:
    """docs-sized pictures: the held-out sheet and a strip of rendered walk frames."""
    import imageio.v3 as iio
    frames = []
    for sub in ("render_subject", "render_betas"):
        for i in (0, 12, 24, 36):
            rgba = iio.imread(folder / sub / f"{i:06d}.png").astype(np.float32)
            a = rgba[..., 3:] / 255
            ys, xs = np.nonzero(a[..., 0] > 0.5)
            cy, cx = (int(ys.mean()), int(xs.mean())) if len(ys) else (128, 128)
            y0, x0 = min(max(cy - 80, 0), 256 - 160), min(max(cx - 56, 0), 256 - 112)
            frames.append((rgba[..., :3] * a + 235 * (1 - a)).astype(np.uint8)[y0:y0 + 160, x0:x0 + 112])
    iio.imwrite(folder / "render_strip.png", np.concatenate(frames, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="re-make the cached subject and outfit fit")
    ap.add_argument("--images", action="store_true", help="copy the first seed's pictures to docs/images/")
    ap.add_argument("--report-only", action="store_true",
                    help="re-publish the figures of the cached runs (out/bench_appearance/seedS) without running")
    ap.add_argument("--base", default=None, help="also run this older revision's code (e.g. cf730f3)")
    ap.add_argument("--render-only", action="store_true",
                    help="keep the last run's fits (out/bench_appearance/seedS/app*), run the renders again")
    ap.add_argument("--repeats", type=int, default=1, help="render runs per side and body (interleaved; the median is shown)")
    ap.add_argument("fit_args", nargs="*", help="extra fit-appearance arguments (after --)")
    args = ap.parse_args()
    rows = []
    base = None
    if args.base and not args.report_only:
        import tempfile
        from bench_fit import base_tree
        base = base_tree(args.base, Path(tempfile.mkdtemp(prefix="bench_app_")) / "base")
    for seed in args.seeds:
        sides = ["old", "new"] if args.base else ["new"]
        if args.report_only:
            rows += [load_row(seed, "" if side == "new" else "_old") for side in sides]
        else:
            rows += bench_seed(seed, args.fresh, args.fit_args, sides, base, args.repeats, args.render_only)
        for r in rows[-len(sides):]:
            print(json.dumps({k: v for k, v in r.items() if k not in ("result", "renders", "render_runs")}), flush=True)
            print(json.dumps(r["result"]["metrics"]), flush=True)
    if args.images:
        folder = CACHE / f"seed{args.seeds[0]}"
        shutil.copyfile(folder / "app" / "heldout_sheet.png", ROOT / "docs" / "images" / "appearance_heldout.png")
        shutil.copyfile(folder / "render_strip.png", ROOT / "docs" / "images" / "appearance_render.png")

    opts = rows[0]["result"]["options"]
    if args.report_only:
        loads = [str(r["load_average"]) for r in rows if "load_average" in r]
        when = (f"figures of the cached runs (re-published with --report-only on {time.strftime('%Y-%m-%d')}); "
                f"{machine()}; 1 torch thread; load average after each seed: {', '.join(loads) or 'not recorded'}")
    else:
        when = (f"on {time.strftime('%Y-%m-%d')}; {machine()}; 1 torch thread; load average at the end "
                f"{os.getloadavg()[0]:.1f}")
    command = " ".join(["--seeds", *map(str, args.seeds)] + (["--base", args.base] if args.base else [])
                       + (["--repeats", str(args.repeats)] if args.repeats != 1 else [])
                       + (["--render-only"] if args.render_only else [])
                       + (["--", *args.fit_args] if args.fit_args else []))
    fit_command = " ".join(["pointwear fit-appearance SUBJECT --outfit OUT --out APP", *args.fit_args])
    lines = [f"`.venv/bin/python scripts/bench_appearance.py {command}` {when} "
             "(the machine is shared, so wall times vary; the load average is given beside each figure).", "",
             "Subjects: `pointwear synth DIR --frames 16 --size 256 --outfit tshirt-shorts --seed S` (textures as "
             "listed), outfit by `pointwear fit-outfit` at default settings (all four templates, the best kept); "
             f"then `{fit_command}` ({opts['epochs']} epochs, batch {opts['batch']}, Adam net {opts['lr_net']:g} / descriptors "
             f"{opts['lr_descriptors']:g}, cosine decay, L1 + SSIM + Dice, no VGG19 file), frames 3, 7, 11, 15 held "
             "out; network precision per row (new code: bfloat16 mixed precision on CPUs that have it natively). "
             "Fit time = the whole command, wall clock, with the load average when it ended; CPU time = user + "
             "system time of the fit's process; peak memory = its largest resident set. Metrics at 256 x 256 inside the clothing mask over grey: "
             "PSNR over the mask's pixels, SSIM = the SSIM map averaged over the mask's pixels (mask-weighted, "
             "`losses.masked_ssim`), IoU of the predicted mask; baseline = the baked per-point colours splatted "
             "(same splatter), no network.", "",
             "| seed | code | precision | textures | outfit fit (held-out IoU) | points | fit time (load) | CPU time | peak memory | "
             "epochs (steps) | held-out SSIM | held-out PSNR | held-out IoU | baseline SSIM | baseline PSNR | "
             "train SSIM / PSNR | held-out PSNR per garment | SSIM 0.85 in 5 min (issue 15) | SSIM 0.85 + PSNR 24 dB (issue 10) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["result"]["metrics"]
        h, b, t = m["heldout"], m["baseline"]["heldout"], m["train"]
        fast = h["ssim"] >= TARGETS["ssim"] and r["fit_seconds"] <= 60 * TARGETS["minutes"] and h["ssim"] > b["ssim"]
        fine = h["ssim"] >= TARGETS["ssim"] and h["psnr"] >= TARGETS["psnr"]
        code = f"old ({args.base})" if r.get("side") == "old" else "new"
        cpu = f"{r['fit_cpu_seconds'] / 60:.2f} min" if r.get("fit_cpu_seconds") else "-"
        precision = r["result"]["options"].get("precision", "float32")
        lines.append(f"| {r['seed']} | {code} | {precision} | {' + '.join(r['textures'])} | {r['drape'].split(':')[-1]} "
                     f"({r['outfit_iou']:.3f}) | {r['points']} | {r['fit_seconds'] / 60:.1f} min "
                     f"({r.get('load_average', '-')}) | {cpu} | {_mb(r.get('fit_peak_mb'))} | "
                     f"{r['result']['epochs']} ({r['result']['steps']}) | **{h['ssim']:.3f}** | "
                     f"**{h['psnr']:.2f} dB** | {h['iou']:.3f} | {b['ssim']:.3f} | {b['psnr']:.2f} dB | "
                     f"{t['ssim']:.3f} / {t['psnr']:.2f} dB | "
                     f"{', '.join(f'{k} {v:.1f} dB' for k, v in r['garment_psnr'].items())} | "
                     f"{'met' if fast else 'MISSED'} | {'met' if fine else 'MISSED'} |")
    lines += ["", "Per-garment PSNR: over each garment's labelled pixels of the held-out frames, from the 8-bit "
              "RGBA renders in APP/heldout over grey. Fine high-contrast textures cost the most: seed 21's shorts "
              "carry a black-and-white check of 2-3 px squares at this size. The fitted outfit's points are dense "
              "enough (0.7-0.9 cm to the nearest neighbour, about 1 px), but the fitted geometry is off the true "
              "cloth by about 1 cm (docs/benchmarks.md, outfit fitting quality), i.e. 1-1.5 px here, which is "
              "enough to swap black and white squares on frames the fit did not see; the network then renders "
              "such a check as a blur. The stripes (seed 1) and the print (seed 21) come out sharp."]
    lines += ["", "Neural render (`pointwear render`, 48-frame travelling walk, a camera swinging around the walker "
              "at the training pixel density, 256 x 256 RGBA): frames per second per frame, pose + visibility "
              "(body rasterised with that camera) + splat + U-Net, without file writing (target >= 25, issue 15), and with "
              "writing the PNGs; 'by CPU time': frames per CPU second of the render process over the same part "
              "(what other jobs' load inflates least; the old revision does not record it); peak memory: the render "
              "process's largest resident set.", "",
              "| seed | code | body | frames/s (no file writing) | frames/s (with PNG writing) | frames/s by CPU time "
              "| every run: frames/s (load average) | peak memory | target |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, s in r["renders"].items():
            ok = "met" if s["compute_frames_per_second"] >= TARGETS["fps"] else "MISSED"
            code = f"old ({args.base})" if r.get("side") == "old" else "new"
            runs = ", ".join(f"{fps:.1f} ({load})" for fps, load in s.get("all_runs", []))
            cpu_fps = f"{s['frames'] / s['compute_cpu_seconds']:.1f}" if s.get("compute_cpu_seconds") else "-"
            lines.append(f"| {r['seed']} | {code} | {name} | **{s['compute_frames_per_second']:.1f}** | "
                         f"{s['frames_per_second']:.1f} | {cpu_fps} | {runs} | {_mb(s.get('peak_mb'))} | {ok} |")
    publish(SECTION, lines, write=not args.no_write)


def _mb(value: float | None) -> str:
    return f"{value:.0f} MB" if value else "-"


if __name__ == "__main__":
    main()
