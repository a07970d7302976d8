"""Tune and measure the clothing masks of `pointwear prepare` on synthetic tuning subjects.

    .venv/bin/python scripts/tune_clothing.py [--root /tmp/clothing] [--seeds 100-119]
                                              [--overlays DIR] [--truth-person]

For each seed it makes (once) a `pointwear synth` subject (512 px, 8 frames; the outfit and the
motion cycle through all four outfits and turntable / walk), runs MediaPipe Pose on its frames
(cached next to the subject), computes the clothing mask from the frames + MediaPipe only, and
compares it with the subject's truth masks/ and labels/. It reports per subject:

    iou        clothing-mask IoU against masks/ (the target: >= 0.85 mean, >= 0.8 each)
    iou_tp     the same with the truth person mask in place of MediaPipe's (the removal alone)
    person     MediaPipe person-mask IoU against the truth person (body silhouette + clothing)
    fn_person / fn_removal / fp_person / fp_removal
               the error pixels, as shares of the truth clothing area: truth clothing outside
               MediaPipe's person mask / inside it but removed; predicted clothing outside the
               truth person / inside it on skin or hair
    label      share of the correctly predicted clothing pixels with the right garment class
    ms         CPU milliseconds per frame of clothing_mask, one thread (MediaPipe not included)

Tune on seeds 100-119 only: seeds 200-299 are the held-out set of scripts/bench_prepare.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("GLOG_minloglevel", "2")      # MediaPipe's C++ logging
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "backend"))

from pointwear.perception.clothing import ClothingOptions, clothing_mask  # noqa: E402
from pointwear.perception.types import LABEL_LOWER, LABEL_ONEPIECE, LABEL_UPPER  # noqa: E402

OUTFITS = ("tshirt-shorts", "longsleeve-trousers", "tank-skirt", "dress")
MOTIONS = ("turntable", "walk")
# Synthetic garment names -> our garment classes.
GARMENT_CLASS = {"tshirt": LABEL_UPPER, "longsleeve": LABEL_UPPER, "tank": LABEL_UPPER,
                 "shorts": LABEL_LOWER, "trousers": LABEL_LOWER, "skirt": LABEL_LOWER,
                 "dress": LABEL_ONEPIECE}


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def outfit_motion(seed: int) -> tuple[str, str]:
    """Outfit and motion of a tuning seed: outfits cycle fastest, then motions."""
    i = seed % 100
    return OUTFITS[i % 4], MOTIONS[(i // 4) % 2]


def ensure_subject(root: Path, seed: int, frames: int = 8, size: int = 512) -> Path:
    folder = root / f"s{seed:03d}"
    if not (folder / "subject.json").is_file():
        outfit, motion = outfit_motion(seed)
        subprocess.run([str(REPO / ".venv/bin/pointwear"), "synth", str(folder), "--frames", str(frames),
                        "--size", str(size), "--outfit", outfit, "--motion", motion, "--seed", str(seed)],
                       check=True, capture_output=True)
    return folder


def run_mediapipe(rgb: np.ndarray, pose=None) -> tuple[np.ndarray, np.ndarray] | None:
    """-> landmarks (33, 4) px / z / visibility and person mask (H, W) bool, or None."""
    import mediapipe as mp
    own = pose is None
    if own:
        pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=True)
    try:
        res = pose.process(np.ascontiguousarray(rgb))
    finally:
        if own:
            pose.close()
    if res.pose_landmarks is None:
        return None
    h, w = rgb.shape[:2]
    lm = np.array([[p.x * w, p.y * h, p.z * w, p.visibility] for p in res.pose_landmarks.landmark],
                  np.float32)
    person = res.segmentation_mask > 0.5
    return lm, person


def truth_person(folder: Path, clothing: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the truth body's silhouette (rasterised from smpl.npz) or its clothing."""
    import torch
    from pointwear.body.model import load_body
    from pointwear.render.rasterizer import rasterize
    z = np.load(folder / "smpl.npz")
    body = load_body("default", device="cpu")
    with torch.no_grad():
        out = body(z["betas"], z["global_orient"], z["body_pose"], z["transl"])
        h, w = (int(v) for v in z["image_size"])
        frags = rasterize(out.vertices, body.faces_t, torch.as_tensor(z["K"], dtype=torch.float32), (h, w))
    return frags.mask.numpy() | clothing


def load_cached(folder: Path, pose: str = "mediapipe") -> dict:
    """Frames, truth and pose results of a subject (cached in mp.npz / mp_detector.npz).
    pose: "mediapipe" (MediaPipe Pose directly) or "detector" (perception.pose.PoseDetector)."""
    meta = json.loads((folder / "subject.json").read_text())
    n = meta["frames"]
    frames = np.stack([np.asarray(Image.open(folder / "frames" / f"{i:06d}.png").convert("RGB")) for i in range(n)])
    masks = np.stack([np.asarray(Image.open(folder / "masks" / f"{i:06d}.png")) > 127 for i in range(n)])
    labels = np.stack([np.asarray(Image.open(folder / "labels" / f"{i:06d}.png")) for i in range(n)])
    lut = np.zeros(256, np.uint8)
    for k, name in meta.get("labels", {}).items():
        lut[int(k)] = GARMENT_CLASS.get(name, 0)
    cache = folder / ("mp.npz" if pose == "mediapipe" else "mp_detector.npz")
    if cache.is_file():
        z = np.load(cache)
        lms, persons, found, tperson = z["landmarks"], z["person"], z["found"], z["truth_person"]
    else:
        lms = np.zeros((n, 33, 4), np.float32)
        persons = np.zeros(masks.shape, bool)
        found = np.zeros(n, bool)
        if pose == "mediapipe":
            import mediapipe as mp
            with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                        enable_segmentation=True) as graph:
                for i in range(n):
                    r = run_mediapipe(frames[i], graph)
                    if r is not None:
                        lms[i], persons[i], found[i] = r[0], r[1], True
        else:       # prepare's own detector, image mode (as for an image folder)
            from pointwear.perception.pose import PoseDetector
            with PoseDetector(video=False) as det:
                for i in range(n):
                    people = det.detect(frames[i], max_people=1)
                    if people:
                        lms[i], persons[i], found[i] = people[0].landmarks, people[0].mask > 0.5, True
        tperson = truth_person(folder, masks)
        np.savez_compressed(cache, landmarks=lms, person=persons, found=found, truth_person=tperson)
    return dict(meta=meta, frames=frames, masks=masks, classes=lut[labels], landmarks=lms,
                person=persons, found=found, truth_person=tperson)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def overlay(rgb: np.ndarray, mask: np.ndarray, labels: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """Side by side: the frame tinted by predicted label, and errors (red FP, blue FN) if truth."""
    colours = np.array([[0, 0, 0], [255, 60, 60], [60, 90, 255], [60, 220, 60]], np.float32)
    tint = rgb.astype(np.float32)
    sel = labels > 0
    tint[sel] = 0.45 * tint[sel] + 0.55 * colours[labels[sel]]
    tint[mask & ~sel] = 0.45 * tint[mask & ~sel] + 0.55 * np.array([255, 255, 0])
    panels = [rgb, tint.astype(np.uint8)]
    if truth is not None:
        err = (rgb.astype(np.float32) * 0.35)
        err[mask & truth] = [200, 200, 200]
        err[mask & ~truth] = [255, 40, 40]
        err[~mask & truth] = [40, 120, 255]
        panels.append(err.astype(np.uint8))
    return np.concatenate(panels, 1)


def evaluate(folder: Path, options: ClothingOptions, overlays: Path | None, with_truth_person: bool,
             pose: str = "mediapipe") -> dict:
    d = load_cached(folder, pose)
    ious, ious_tp, p_ious, label_acc, times = [], [], [], [], []
    err = dict(fn_person=0, fn_removal=0, fp_person=0, fp_removal=0, area=0)
    for i in range(len(d["frames"])):
        truth, tperson = d["masks"][i], d["truth_person"][i]
        if not d["found"][i]:
            ious.append(0.0)
            continue
        rgb, person, lm = d["frames"][i], d["person"][i], d["landmarks"][i]
        t0 = time.process_time()
        res = clothing_mask(rgb, person, lm, options)
        times.append(time.process_time() - t0)
        pred = res.mask
        ious.append(iou(pred, truth))
        p_ious.append(iou(person, tperson))
        err["fn_person"] += int((truth & ~person).sum())
        err["fn_removal"] += int((truth & person & ~pred).sum())
        err["fp_person"] += int((pred & ~tperson).sum())
        err["fp_removal"] += int((pred & tperson & ~truth).sum())
        err["area"] += int(truth.sum())
        both = pred & truth
        if both.any():
            label_acc.append(float((res.labels[both] == d["classes"][i][both]).mean()))
        if with_truth_person:
            ious_tp.append(iou(clothing_mask(rgb, tperson, lm, options).mask, truth))
        if overlays is not None:
            overlays.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay(rgb, pred, res.labels, truth)).save(overlays / f"{folder.name}_{i}.png")
    area = max(err.pop("area"), 1)
    row = dict(subject=folder.name, outfit=d["meta"]["outfit"], motion=d["meta"]["motion"],
               iou=float(np.mean(ious)), iou_min=float(np.min(ious)),
               iou_tp=float(np.mean(ious_tp)) if ious_tp else float("nan"),
               person=float(np.mean(p_ious)) if p_ious else float("nan"),
               label=float(np.mean(label_acc)) if label_acc else float("nan"),
               ms=1000 * float(np.mean(times)) if times else float("nan"))
    row.update({k: v / area for k, v in err.items()})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/clothing", type=Path)
    ap.add_argument("--seeds", default="100-119")
    ap.add_argument("--overlays", type=Path, default=None, help="save per-frame overlay PNGs here")
    ap.add_argument("--truth-person", action="store_true", help="also run with the truth person mask")
    ap.add_argument("--pose", choices=("mediapipe", "detector"), default="mediapipe",
                    help="landmarks + person mask from MediaPipe directly or from prepare's PoseDetector")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a ClothingOptions field (repeatable)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if any(200 <= s < 300 for s in seeds):
        ap.error("seeds 200-299 are the held-out evaluation set: tune on 100-119")
    import cv2
    cv2.setNumThreads(1)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    options = ClothingOptions()
    for item in args.set:
        name, _, value = item.partition("=")
        if not hasattr(options, name):
            ap.error(f"--set: ClothingOptions has no field {name!r}")
        setattr(options, name, type(getattr(options, name))(value))
    rows = []
    print("options:", " ".join(args.set) or "defaults")
    head = (f"{'subject':8} {'outfit':20} {'motion':9} {'iou':>6} {'min':>6} {'iou_tp':>6} {'person':>6} "
            f"{'fnP':>6} {'fnR':>6} {'fpP':>6} {'fpR':>6} {'label':>6} {'ms':>6}")
    print(head)
    for s in seeds:
        row = evaluate(ensure_subject(args.root, s), options, args.overlays, args.truth_person, args.pose)
        rows.append(row)
        print(f"{row['subject']:8} {row['outfit']:20} {row['motion']:9} {row['iou']:6.3f} {row['iou_min']:6.3f} "
              f"{row['iou_tp']:6.3f} {row['person']:6.3f} {row['fn_person']:6.3f} {row['fn_removal']:6.3f} "
              f"{row['fp_person']:6.3f} {row['fp_removal']:6.3f} {row['label']:6.3f} {row['ms']:6.1f}",
              flush=True)
    keys = ("iou", "iou_tp", "person", "fn_person", "fn_removal", "fp_person", "fp_removal", "label", "ms")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # all-nan columns (no --truth-person)
        mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    print(f"{'mean':8} {'':20} {'':9} {mean['iou']:6.3f} {min(r['iou'] for r in rows):6.3f} "
          f"{mean['iou_tp']:6.3f} {mean['person']:6.3f} {mean['fn_person']:6.3f} {mean['fn_removal']:6.3f} "
          f"{mean['fp_person']:6.3f} {mean['fp_removal']:6.3f} {mean['label']:6.3f} {mean['ms']:6.1f}")
    person_err = mean["fn_person"] + mean["fp_person"]
    removal_err = mean["fn_removal"] + mean["fp_removal"]
    total = max(person_err + removal_err, 1e-9)
    print(f"error pixels (share of the truth clothing area): person mask {person_err:.3f} "
          f"({100 * person_err / total:.0f} %), skin/hair removal {removal_err:.3f} "
          f"({100 * removal_err / total:.0f} %)")
    print(f"target: mean IoU >= 0.85 ({'met' if mean['iou'] >= 0.85 else 'MISSED'}), "
          f"each subject >= 0.8 ({'met' if min(r['iou'] for r in rows) >= 0.8 else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, mean=mean), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
