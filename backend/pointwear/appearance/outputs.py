"""What a finished appearance fit writes into its result folder APP:

    appearance.pt       network, descriptors and config (see model.py); weights_only loadable
    outfit.npz          the outfit result's arrays + colors (P,3) float32 sRGB 0..1 (baked) +
                        descriptors (P,16) float32
    outfit.ply          the rest-pose clothing with the baked colours (mesh when there are faces)
    body.npz, posed.npz copied from the outfit result: APP is itself a complete result folder
    result.json         metrics (held-out and train: PSNR, SSIM, mask IoU inside the clothing
                        mask; the baked-colour baseline's), per-frame rows, history, options
    heldout/NNNNNN.png  RGBA renders of the held-out frames (subject frame index; alpha = mask)
    heldout_sheet.png   target | render per held-out frame, cut to the clothing
    preview/latest.png  the last training preview (target | render)
    checkpoint.pt       the training state; running the same command again continues from it

Metrics are computed at the training size against the frames resized to it (the frames' own
size by default), with prediction and target composited over mid grey: the prediction is the
network's RGB over grey by its mask, the target the frame where the clothing mask is on.
PSNR = 10 log10(4 / MSE) over the clothing mask's pixels of images in [-1, 1] (the same as
8-bit PSNR with peak 255); SSIM = `losses.masked_ssim`: the Gaussian-window SSIM map (11 x 11,
sigma 1.5) averaged over the clothing mask's pixels (mask-weighted; windows on the mask's edge
also see some background); IoU of the predicted mask (> 0.5) and the clothing mask.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from ..fileio import atomic_path, save_npz
from ..fit.state import FitCancelled
from ..link.protocol import (APPEARANCE_PT, BODY_NPZ, KIND_FIT_APPEARANCE, OUTFIT_NPZ, OUTFIT_PLY, POSED_NPZ,
                             RESULT_FILES, RESULT_JSON)

FILES = RESULT_FILES[KIND_FIT_APPEARANCE]
from .bake import bake_colors, baseline_render
from .frames import AppearanceFrames
from .losses import mask_iou, masked_ssim, psnr
from .model import AppearanceModel, rgba_uint8, to_uint8
from .state import FitterView, TrainState


__all__ = ["write_outputs", "evaluate", "write_png", "side_by_side"]

GREY = 0.0   # mid grey in [-1, 1]


def write_png(path: Path, image: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path


def _window(box: Tensor, size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int, int, int]:
    """A window (height, width) centred on the box, shifted to lie inside the image (if it fits)."""
    h, w = size
    side_y, side_x = min(window[0], h), min(window[1], w)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    x0 = int(round(min(max(cx - side_x / 2, 0), w - side_x)))
    y0 = int(round(min(max(cy - side_y / 2, 0), h - side_y)))
    return x0, y0, x0 + side_x, y0 + side_y


def _over(rgb: Tensor, mask: Tensor, bg: float = GREY) -> Tensor:
    return rgb * mask + bg * (1 - mask)


def side_by_side(image: Tensor, gt_mask: Tensor, rgb: Tensor, mask: Tensor, box: Tensor,
                 window: tuple[int, int], min_height: int = 256) -> np.ndarray:
    """Target | render over grey, cut to a window around the clothing, enlarged (nearest) to at
    least min_height px: (h, 2w + 4, 3) uint8."""
    x0, y0, x1, y1 = _window(box, image.shape[-2:], window)
    target = to_uint8(_over(image, gt_mask)[:, y0:y1, x0:x1])
    render = to_uint8(_over(rgb, mask)[:, y0:y1, x0:x1])
    gap = np.full((target.shape[0], 4, 3), 255, np.uint8)
    pair = np.concatenate([target, gap, render], 1)
    rep = max(1, math.ceil(min_height / pair.shape[0]))
    return np.repeat(np.repeat(pair, rep, 0), rep, 1)


@torch.no_grad()
def evaluate(model: AppearanceModel, frames: AppearanceFrames, colors: np.ndarray | None = None,
             chunk: int = 4, keep: bool = False) -> tuple[list[dict], list[tuple[Tensor, Tensor]]]:
    """Per-frame PSNR / SSIM / IoU of the network's renders (and, with `colors`, of the baked
    baseline) against the frames, inside the clothing mask. `keep`: also return the renders."""
    rows, renders = [], []
    c = model.config
    for s in range(0, len(frames), chunk):
        sl = slice(s, s + chunk)
        pts, vis, K = frames.points[sl], frames.visible[sl], frames.K[sl]
        gt, m = frames.images[sl], frames.masks[sl]
        target = _over(gt, m)
        rgb, mask = model.render(pts, vis, K, frames.size)
        pred = _over(rgb, mask)
        p, q, iou = psnr(pred, target, m), masked_ssim(pred, target, m), mask_iou(mask, m)
        if colors is not None:
            brgb, bcov = baseline_render(colors, pts, vis, K, frames.size, c.radius_px, c.k)
            bpred = brgb + (1 - bcov) * GREY
            bp, bq, biou = psnr(bpred, target, m), masked_ssim(bpred, target, m), mask_iou(bcov, m)
        for j in range(pts.shape[0]):
            row = {"frame": frames.ids[s + j], "psnr": _r(p[j]), "ssim": _r(q[j]), "iou": _r(iou[j])}
            if colors is not None:
                row |= {"baseline_psnr": _r(bp[j]), "baseline_ssim": _r(bq[j]), "baseline_iou": _r(biou[j])}
            rows.append(row)
            if keep:
                renders.append((rgb[j].cpu(), mask[j].cpu()))
    return rows, renders


def _r(x: Tensor) -> float:
    return round(float(x), 4)


def _means(rows: list[dict], prefix: str = "") -> dict:
    if not rows:
        return {}
    out = {}
    for k in ("psnr", "ssim", "iou"):
        vals = [r[prefix + k] for r in rows if math.isfinite(r[prefix + k])]
        out[k] = round(float(np.mean(vals)), 4) if vals else None
    return out


def write_outputs(fitter: FitterView, state: TrainState, seconds: float) -> dict:

    def check_cancel() -> None:   # the training is done and checkpointed: a re-run only redoes this part
        if fitter.should_stop():
            raise FitCancelled("appearance fit cancelled while writing its outputs (training is complete)")

    out = fitter.out
    model = fitter.model
    train, held = fitter.train, fitter.held
    check_cancel()
    fitter.progress("bake", 0, 1)
    colors, seen = bake_colors(model, train.points, train.visible, train.K, train.size,
                               np.asarray(fitter.outfit["points"], np.float64))
    fitter.progress("bake", 1, 1)
    check_cancel()
    fitter.progress("evaluate", 0, 2)
    train_rows, _ = evaluate(model, train, colors)
    fitter.progress("evaluate", 1, 2)
    check_cancel()
    held_rows, held_renders = evaluate(model, held, colors, keep=True) if held is not None else ([], [])
    aligned_rows = []
    if held is not None and fitter.options.mask_align_steps and fitter.options.mask_align_grid:
        check_cancel()
        aligned_rows, _ = evaluate(model, fitter.mask_aligned(held))
    time_rows = []
    if held is not None and fitter.align is not None and fitter.options.align_heldout:
        check_cancel()
        time_rows, _ = evaluate(model, fitter.time_aligned(held))
    fitter.progress("evaluate", 2, 2)
    check_cancel()
    model.save(out / APPEARANCE_PT)

    (out / FILES["heldout"]).mkdir(parents=True, exist_ok=True)
    for row, (rgb, mask) in zip(held_rows, held_renders):
        write_png(out / FILES["heldout"] / f"{row['frame']:06d}.png", rgba_uint8(rgb, mask))
    sheet = None
    if held is not None and held_renders:
        pairs = [side_by_side(held.images[k].cpu(), held.masks[k].cpu(), rgb, mask, held.mask_boxes[k].cpu(),
                              fitter.crop) for k, (rgb, mask) in enumerate(held_renders)]
        sheet = write_png(out / FILES["sheet"], _tile(pairs))

    write_result_folder(fitter, colors)
    for r in train_rows:
        r["split"] = "train"
    for r in held_rows:
        r["split"] = "heldout"
    o = fitter.options
    result = {
        "outfit": str(fitter.outfit_dir), "subject": str(fitter.subject.root), "drape": model.config.drape,
        "points": model.config.num_points, "descriptor_dim": model.config.descriptor_dim,
        "size": list(train.size), "crop": list(fitter.crop), "epochs": state.epoch, "epochs_asked": o.epochs,
        "steps": state.step, "train_seconds": round(state.elapsed, 1), "seconds": round(seconds, 1),
        "stopped_by_budget": bool(o.minutes is not None and state.epoch < o.epochs),
        "resumed_from": state.resumed_from, "train_frames": fitter.train_ids, "heldout_frames": fitter.held_ids,
        "vgg": o.vgg is not None,
        "alignment": _alignment_summary(fitter.align),
        "metrics": {"train": _means(train_rows), "heldout": _means(held_rows),
                    "heldout_mask_aligned": _means(aligned_rows), "heldout_time_aligned": _means(time_rows),
                    "baseline": {"train": _means(train_rows, "baseline_"), "heldout": _means(held_rows, "baseline_")}},
        "metrics_note": ("inside the clothing mask at the training size, over mid grey: PSNR (dB, images in "
                         "[-1,1], peak-to-peak 2), SSIM mask-weighted (losses.masked_ssim), mask IoU at 0.5; "
                         "baseline = baked per-point colours splatted, no network; heldout_mask_aligned: the "
                         "held-out frames' points first moved by offset fields fitted to their clothing masks "
                         "only (never their RGB); heldout_time_aligned: moved by the training frames' offset "
                         "fields interpolated in time (by frame index only)"),
        "colors_seen": {"points": int((seen > 0).sum()), "of": int(len(seen))},
        "frames": train_rows + held_rows, "history": state.history,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(o).items()},
        "files": {"appearance": APPEARANCE_PT, "outfit": OUTFIT_NPZ, "heldout": FILES["heldout"],
                  "sheet": FILES["sheet"] if sheet else None},
    }
    with atomic_path(out / RESULT_JSON) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result


def _alignment_summary(align) -> dict:
    """The training frames' offset fields (align.FrameAlignment or None): grid, RMS and largest
    node offset in pixels at the training size."""
    if align is None:
        return {"grid": 0}
    nodes = align.nodes.detach()
    length = nodes.square().sum(1).sqrt()                  # (F, g, g) px
    return {"grid": int(nodes.shape[-1]), "rms_px": _r(length.square().mean().sqrt()), "max_px": _r(length.max())}


def _tile(pairs: list[np.ndarray], per_row: int = 4) -> np.ndarray:
    h = max(p.shape[0] for p in pairs)
    w = max(p.shape[1] for p in pairs)
    padded = [np.pad(p, ((0, h - p.shape[0] + 6), (0, w - p.shape[1] + 6), (0, 0)), constant_values=255)
              for p in pairs]
    rows = []
    for s in range(0, len(padded), per_row):
        row = padded[s:s + per_row]
        row += [np.full_like(padded[0], 255)] * (per_row - len(row)) if len(padded) > per_row else []
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


def write_result_folder(fitter: FitterView, colors: np.ndarray) -> None:
    """outfit.npz (+ colors, descriptors), outfit.ply with colours, body.npz and posed.npz."""
    out, src = fitter.out, fitter.outfit_dir
    arrays = dict(fitter.outfit)
    arrays["colors"] = colors.astype(np.float32)
    # One row per outfit point (the edge midpoints' rows live in appearance.pt only).
    P = fitter.model.config.num_points
    arrays["descriptors"] = fitter.model.descriptors.descriptors[:P].detach().cpu().numpy().astype(np.float32)
    save_npz(out / OUTFIT_NPZ, **arrays)
    for name in (BODY_NPZ, POSED_NPZ):
        if (src / name).resolve() != (out / name).resolve():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src / name, tmp)
    import trimesh
    rest = np.asarray(arrays["points"], np.float32)
    rgba = np.concatenate([np.round(colors * 255), np.full((len(colors), 1), 255)], 1).astype(np.uint8)
    if "faces" in arrays:
        geom = trimesh.Trimesh(rest, np.asarray(arrays["faces"]), vertex_colors=rgba, process=False)
    else:
        geom = trimesh.PointCloud(rest, colors=rgba)
    with atomic_path(out / OUTFIT_PLY) as tmp:
        geom.export(tmp, file_type="ply")
