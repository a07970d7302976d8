"""`pointwear render`: the fitted clothing's appearance on new poses, body shapes and cameras.

Per motion frame: the outfit, re-draped for the betas by its drape model and code (descriptors
follow the point index), is posed like the body by the motion (AMASS-style, in the Y-up SMPL
world), moved into the camera (camera.npz, see camera.py), and the points the posed body hides
are dropped (the body rasterised with that camera at the output size, the appearance threshold);
the rest are splatted with their descriptors and the U-Net (eval mode) renders RGB and mask.
Written as DIR/NNNNNN.png, RGBA, straight alpha = the predicted mask, named by motion frame;
DIR/render.json tells what was rendered and how fast.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..body import load_body
from ..data.motion import pelvis_fix, read_motion
from ..device import pick_device
from ..drape.redrape import current_code, load_outfit, redraped_points
from ..errors import InputError
from ..fileio import atomic_path
from ..render.rasterizer import outward_wound
from ..fit.visibility import body_depth, visible_points
from .camera import read_camera
from .model import AppearanceModel, load_appearance, rgba_uint8
from .unet import network_dtype
from ..link.protocol import APPEARANCE_PT, CANCELLED, OUTFIT_NPZ, RENDER_JSON

__all__ = ["render_sequence", "check_outfit_for_appearance"]


def check_outfit_for_appearance(model: AppearanceModel, outfit: dict, file: Path, app_file: Path) -> None:
    """The appearance's descriptors belong to this outfit's points (count, drape)."""
    P = int(outfit["points"].shape[0])
    if P != model.config.num_points:
        raise InputError(f"the appearance was fitted on {model.config.num_points} outfit points, this outfit has {P}",
                         file=app_file, field="descriptors",
                         hint="descriptors belong to one outfit's points (same count and order as outfit.npz 'points')")
    drape = str(outfit["drape"])
    if model.config.drape and drape != model.config.drape:
        raise InputError(f"the outfit's drape is {drape!r} but the appearance was fitted on {model.config.drape!r}",
                         file=file, field="drape", hint="pass the outfit result the appearance was fitted on")
    code = np.asarray(outfit["code"], np.float64).reshape(-1)
    # Both in today's layout: an appearance fitted before a garment family grew a parameter
    # recorded the code without it (the outfit's loader already added it).
    fitted = np.asarray(current_code(drape, model.config.code), np.float64).reshape(-1) if model.config.code else None
    if fitted is not None and (len(code) != len(fitted) or np.abs(code - fitted).max() > 1e-5):
        raise InputError("the outfit's code differs from the one the appearance was fitted on", file=file,
                         field="code", hint="pass the outfit result the appearance was fitted on")


@torch.no_grad()
def render_sequence(app_dir: str | Path, out: str | Path, motion: str | Path, camera: str | Path,
                    outfit_dir: str | Path | None = None, betas=None, up: str = "z",
                    progress: Callable[[str, int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, device: str = "auto",
                    drape_checkpoint: str | None = None, chunk: int = 8, threads: int = 1,
                    precision: str = "auto") -> dict:
    """Render the appearance in `app_dir` on a motion seen by a camera into `out`/NNNNNN.png.
    Returns the summary also written to `out`/render.json. `should_stop` is polled per frame
    (the frames written so far stay). threads: torch CPU threads (0: leave torch's setting);
    precision: the U-Net's convolutions (`unet.network_dtype`: auto = bfloat16 on CPUs that
    have it natively)."""
    progress = progress or (lambda stage, i, n: None)
    should_stop = should_stop or (lambda: False)
    dev = pick_device(device)
    if dev.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)   # as fitting: spinning OpenMP threads cost more than they give here
    app_dir = Path(app_dir)
    app_file = app_dir / APPEARANCE_PT if app_dir.is_dir() else app_dir
    model = load_appearance(app_file, dev)
    outfit_dir = Path(outfit_dir) if outfit_dir is not None else app_file.parent
    outfit = load_outfit(outfit_dir)
    outfit_file = outfit_dir / OUTFIT_NPZ
    check_outfit_for_appearance(model, outfit, outfit_file, app_file)

    cam = read_camera(camera)
    m = read_motion(motion, up=up)
    cam.check_frames(m.num_frames, camera)
    body = load_body(str(outfit.get("body", "default")), str(outfit.get("gender", "neutral")), device=dev)
    try:
        rest, weights, new_betas = redraped_points(outfit, body, betas, drape_checkpoint, outfit_file)
    except ValueError as exc:   # e.g. more betas than the body has
        raise InputError(str(exc), field="betas") from None
    rest_body, joints = body.shaped(new_betas)
    cull = outward_wound(rest_body[0], body.faces_t)      # SMPL: yes, so back faces can be skipped
    transl = pelvis_fix(m.transl, joints[0, 0].cpu().numpy(), up)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    H, W = cam.image_size
    T = m.num_frames
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)  # noqa: E731
    files, compute, compute_cpu, t_all = [], 0.0, 0.0, time.perf_counter()
    cancelled = False
    for s in range(0, T, chunk):
        frames = list(range(s, min(T, s + chunk)))
        t0, c0 = time.perf_counter(), time.process_time()
        go, bp, tr = t(m.global_orient[frames]), t(m.body_pose[frames]), t(transl[frames])
        points = body.pose_points(rest[None], weights, new_betas, go, bp, tr)                # (c,P,3) world
        verts = body(new_betas, go, bp, tr).vertices                                          # (c,V,3) world
        mats_np = np.stack([cam.at(f)[1] for f in frames])
        mats = t(mats_np)                                                                     # (c,4,4)
        proper = bool((np.linalg.det(mats_np[:, :3, :3]) > 0).all())   # a mirroring camera flips the winding
        Ks = t(np.stack([cam.at(f)[0] for f in frames]))
        R, tvec = mats[:, :3, :3], mats[:, None, :3, 3]
        points = torch.einsum("bij,bpj->bpi", R, points) + tvec
        verts = torch.einsum("bij,bvj->bvi", R, verts) + tvec
        # The chunk's frames at once: one body raster, one visibility test, one copy back.
        depth = body_depth(verts, body.faces_t, Ks, (H, W), cull_backfaces=cull and proper)
        vis = visible_points(points, depth, Ks, threshold=model.config.visibility_threshold)
        rgb, mask = model.render(points, vis, Ks, (H, W), precision=precision)
        images = rgba_uint8(rgb, mask)
        compute += time.perf_counter() - t0
        compute_cpu += time.process_time() - c0
        for k, f in enumerate(frames):
            if should_stop():
                cancelled = True
                break
            path = out / f"{f:06d}.png"
            _write_png(path, images[k])
            files.append(path)
            progress("render", f + 1, T)
        if cancelled:
            break
    seconds = time.perf_counter() - t_all
    summary = {"frames": len(files), "of": T, "first": files[0].name if files else None,
               "pattern": "%06d.png", "image_size": [H, W], "fps": float(m.fps), "app": str(app_file),
               "outfit": str(outfit_file), "betas": [float(b) for b in new_betas[0].cpu()],
               "motion": str(motion), "up": up, "camera": str(camera), "device": str(dev),
               "network_dtype": str(network_dtype(dev, precision)).replace("torch.", ""),
               "seconds": round(seconds, 3), "compute_seconds": round(compute, 3),
               "compute_cpu_seconds": round(compute_cpu, 3),
               "frames_per_second": round(len(files) / seconds, 2) if seconds > 0 and files else None,
               "compute_frames_per_second": round(len(files) / compute, 2) if compute > 0 and files else None,
               CANCELLED: cancelled,
               "timing_note": "compute = pose + visibility (body raster) + splat + U-Net per frame, no file "
                              "writing (compute_cpu_seconds: the process's CPU time over the same part); "
                              "seconds/frames_per_second include writing the PNGs"}
    with atomic_path(out / RENDER_JSON) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


# zlib level of the rendered frames: level 1 encodes a 256 x 256 RGBA frame in ~2.8 ms instead
# of ~8.6 ms at PIL's default 6, for files ~25 % larger (lossless either way).
PNG_COMPRESS_LEVEL = 1


def _write_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png", compress_level=PNG_COMPRESS_LEVEL)
