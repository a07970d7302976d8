"""Tune and measure the body fit of `pointwear prepare` (perception/body_fit.py).

Tuning data only: synthetic subjects of seeds 100-119 (all four outfits, turntable and walk) and
the real files in ../shared/data/real. Seeds 200-299 are the held-out benchmark set: never here.

    .venv/bin/python scripts/tune_body_fit.py make            # synth the subjects (slow, once)
    .venv/bin/python scripts/tune_body_fit.py eval [SEED ...] # per-subject PA-MPJPE, MPJPE, 2D px, time
    .venv/bin/python scripts/tune_body_fit.py offsets         # learn the landmark offsets
    .venv/bin/python scripts/tune_body_fit.py video           # the real video: time + overlays
    .venv/bin/python scripts/tune_body_fit.py photo           # ryota.png: overlay

MediaPipe landmarks (and person masks) are cached as npz next to the subjects, so tuning
iterations only rerun the fit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pointwear.body import load_body  # noqa: E402
from pointwear.data.subject import read_subject  # noqa: E402
from pointwear.perception.body_fit import (BodyFitOptions, face_hints, fit_body,  # noqa: E402
                                           landmark_targets, procrustes_mpjpe, project_points)

WORK = Path("/tmp/bodyfit")
REAL = ROOT.parent / "shared" / "data" / "real"
OUTFITS = ("tshirt-shorts", "longsleeve-trousers", "tank-skirt", "dress")
MOTIONS = ("turntable", "walk")
TUNING_SEEDS = tuple(range(100, 120))


def subject_dir(seed: int) -> Path:
    return WORK / f"s{seed}"


def make_subjects(seeds=TUNING_SEEDS) -> None:
    for seed in seeds:
        assert 100 <= seed < 200, "tuning seeds only"
        out = subject_dir(seed)
        if (out / "subject.json").is_file():
            continue
        outfit, motion = OUTFITS[seed % 4], MOTIONS[(seed // 4) % 2]
        subprocess.run([str(ROOT / ".venv/bin/pointwear"), "synth", str(out), "--frames", "8",
                        "--size", "512", "--outfit", outfit, "--motion", motion,
                        "--seed", str(seed)], check=True)


# --------------------------------------------------------------------------------------------
# MediaPipe (cached)


def run_mediapipe(images, static: bool = True):
    """images: iterable of (H, W, 3) uint8 RGB -> landmarks (N,33,4), world (N,33,3), masks, ok."""
    import mediapipe as mp
    lms, worlds, masks, ok = [], [], [], []
    with mp.solutions.pose.Pose(static_image_mode=static, model_complexity=1,
                                enable_segmentation=True) as pose:
        for rgb in images:
            h, w = rgb.shape[:2]
            res = pose.process(np.ascontiguousarray(rgb))
            if res.pose_landmarks is None:
                ok.append(False)
                lms.append(np.zeros((33, 4), np.float32))
                worlds.append(np.zeros((33, 3), np.float32))
                masks.append(np.zeros((h, w), bool))
                continue
            ok.append(True)
            lms.append(np.array([[p.x * w, p.y * h, p.z * w, p.visibility]
                                 for p in res.pose_landmarks.landmark], np.float32))
            worlds.append(np.array([[p.x, p.y, p.z] for p in res.pose_world_landmarks.landmark],
                                   np.float32))
            seg = res.segmentation_mask
            masks.append(seg > 0.5 if seg is not None else np.zeros((h, w), bool))
    return np.stack(lms), np.stack(worlds), np.stack(masks), np.array(ok)


def cached_observations(seed: int) -> dict:
    cache = WORK / f"lm_s{seed}.npz"
    if not cache.is_file():
        subject = read_subject(subject_dir(seed), check_images=False)
        frames = [subject.frame(i) for i in range(subject.num_frames)]
        lm, world, masks, ok = run_mediapipe(frames)
        np.savez_compressed(cache, landmarks=lm, world=world, masks=masks, ok=ok)
    with np.load(cache) as z:
        obs = {k: z[k] for k in z.files}
    faces = WORK / f"face_s{seed}.npy"
    if not faces.is_file():
        subject = read_subject(subject_dir(seed), check_images=False)
        frames = [subject.frame(i) for i in range(subject.num_frames)]
        np.save(faces, face_hints(frames, obs["landmarks"]))
    obs["facing"] = np.load(faces)
    return obs


def video_frames(path: Path, long_side: int = 1024) -> list[np.ndarray]:
    import av
    import cv2
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            s = long_side / max(h, w)
            if s < 1:
                rgb = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            out.append(rgb)
    return out


def cached_video() -> tuple[list[np.ndarray], dict]:
    frames = video_frames(REAL / "single_person_demo.mp4")
    cache = WORK / "lm_video.npz"
    if not cache.is_file():
        lm, world, masks, ok = run_mediapipe(frames, static=False)
        np.savez_compressed(cache, landmarks=lm, world=world, masks=masks, ok=ok)
    with np.load(cache) as z:
        return frames, {k: z[k] for k in z.files}


def photo() -> tuple[np.ndarray, dict]:
    from PIL import Image
    rgba = np.asarray(Image.open(REAL / "ryota.png").convert("RGBA"))
    rgb = rgba[..., :3]
    lm, world, masks, ok = run_mediapipe([rgb])
    return rgb, {"landmarks": lm, "world": world, "masks": masks, "ok": ok}


# --------------------------------------------------------------------------------------------
# Evaluation


def truth_joints(body, subject) -> torch.Tensor:
    s = subject.smpl
    with torch.no_grad():
        out = body(np.repeat(s.betas[None], s.num_frames, 0), s.global_orient, s.body_pose, s.transl)
    return out.joints


def fit_joints(body, smpl) -> torch.Tensor:
    with torch.no_grad():
        n = smpl.num_frames
        return body(np.repeat(smpl.betas[None], n, 0), smpl.global_orient, smpl.body_pose,
                    smpl.transl).joints


USE_FACES = True


def evaluate(body, seed: int, options: BodyFitOptions, temporal: bool = True,
             verbose: bool = True) -> dict:
    subject = read_subject(subject_dir(seed), check_images=False)
    obs = cached_observations(seed)
    ok = obs["ok"]
    K = subject.K[ok]
    focal = float(K[0, 0, 0])
    t0 = time.perf_counter()
    res = fit_body(body, obs["landmarks"][ok], obs["world"][ok], list(obs["masks"][ok]),
                   subject.image_size, focal, temporal=temporal, options=options,
                   facing=obs["facing"][ok] if USE_FACES else None)
    dt = time.perf_counter() - t0
    truth = truth_joints(body, subject)[torch.as_tensor(ok)].numpy()
    pred = fit_joints(body, res.smpl).numpy()
    pa = procrustes_mpjpe(pred, truth) * 1000
    from pointwear.perception.body_fit import similarity_align
    per_joint = np.linalg.norm(similarity_align(pred, truth) - truth, axis=-1) * 1000
    mpjpe = np.linalg.norm((pred - pred[:, :1]) - (truth - truth[:, :1]), axis=-1).mean(1) * 1000
    truth2d = project_points(truth, K)
    err2d = np.linalg.norm(res.joints2d - truth2d, axis=-1).mean(1)
    meta = json.loads((subject_dir(seed) / "subject.json").read_text())
    row = {"seed": seed, "outfit": meta["outfit"], "motion": meta["motion"],
           "frames": int(ok.sum()), "pa_mpjpe": float(pa.mean()), "pa_max": float(pa.max()),
           "mpjpe": float(mpjpe.mean()), "px": float(err2d.mean()), "px_max": float(err2d.max()),
           "lm_px": float(res.joint_error_px.mean()), "time": dt,
           "betas_err": float(np.abs(res.smpl.betas[:4] - subject.smpl.betas[:4]).mean()),
           "per_frame_pa": pa.round(0).tolist(), "per_joint_pa": per_joint,
           "per_joint_px": np.linalg.norm(res.joints2d - truth2d, axis=-1),
           "signed_px": res.joints2d - truth2d,
           "swapped": None if res.swapped is None else res.swapped.astype(int).tolist()}
    if verbose:
        print(f"s{seed} {row['outfit']:20s} {row['motion']:9s} n={row['frames']} "
              f"PA {row['pa_mpjpe']:5.1f} (max {row['pa_max']:5.1f}) MPJPE {row['mpjpe']:5.1f} "
              f"2D {row['px']:4.1f} px (max {row['px_max']:4.1f}) lm {row['lm_px']:4.1f} px "
              f"betas {row['betas_err']:.2f} {dt:4.1f} s  {row['per_frame_pa']} sw {row['swapped']}", flush=True)
    return row


def cmd_eval(seeds, options: BodyFitOptions, temporal: bool = True) -> list[dict]:
    body = load_body("default", device="cpu")
    rows = [evaluate(body, s, options, temporal) for s in seeds]
    pa = np.array([r["pa_mpjpe"] for r in rows])
    px = np.array([r["px"] for r in rows])
    from pointwear.body.joints import JOINT_NAMES
    pj = np.concatenate([r["per_joint_pa"] for r in rows]).mean(0)
    px2 = np.concatenate([r["per_joint_px"] for r in rows]).mean(0)
    print("per joint PA mm / 2D px:", ", ".join(f"{n} {a:.0f}/{b:.1f}" for n, a, b in zip(JOINT_NAMES, pj, px2)))
    pj = np.median(np.concatenate([r["per_joint_pa"] for r in rows]), 0)
    px2 = np.median(np.concatenate([r["per_joint_px"] for r in rows]), 0)
    print("median per joint PA mm / 2D px:", ", ".join(f"{n} {a:.0f}/{b:.1f}" for n, a, b in zip(JOINT_NAMES, pj, px2)))
    sg = np.median(np.concatenate([r["signed_px"] for r in rows]), 0)
    print("median signed 2D (x, y):", ", ".join(f"{n} {a:+.1f},{b:+.1f}" for n, (a, b) in zip(JOINT_NAMES, sg)))
    allpa = np.concatenate([r["per_joint_pa"].mean(1) for r in rows])
    allpx = np.concatenate([r["per_joint_px"].mean(1) for r in rows])
    print(f"frames: median PA {np.median(allpa):.1f} mm, median 2D {np.median(allpx):.2f} px; "
          f"frames with PA > 90 mm: {(allpa > 90).sum()} of {len(allpa)}")
    print(f"MEAN PA-MPJPE {pa.mean():.1f} mm (worst {pa.max():.1f}), 2D {px.mean():.2f} px "
          f"(worst {px.max():.2f}), time {np.mean([r['time'] for r in rows]):.1f} s per subject")
    return rows


# --------------------------------------------------------------------------------------------
# Learning the fixed landmark offsets from the truth bodies


def cmd_offsets(seeds) -> None:
    """Offsets (metres, rest frame) that best map the truth body's anchor points onto
    MediaPipe's landmarks in 2D: printed for BodyFitOptions.landmark_offsets."""
    body = load_body("default", device="cpu")
    data = []
    for seed in seeds:
        subject = read_subject(subject_dir(seed), check_images=False)
        obs = cached_observations(seed)
        data.append((subject.smpl, subject.K, obs["landmarks"], obs["ok"]))
    offsets, before, after = learn_offsets(body, data)
    for name, off in offsets.items():
        print(f'    "{name}": ({off[0]:+.3f}, {off[1]:+.3f}, {off[2]:+.3f}),   '
              f"# 2D error {before[name]:.1f} -> {after[name]:.1f} px")


def learn_offsets(body, data, reg: float = 1e-3):
    """data: [(truth SmplParams, K (N,3,3), landmarks (N,33,4), ok (N,))] -> offsets per key
    (left side, metres, rest frame) minimising the robust 2D distance between the truth body's
    targets and MediaPipe's landmarks; plus the mean error per key before / after."""
    from smplx.lbs import batch_rodrigues

    from pointwear.perception.body_fit import (TARGET_NAMES, TARGETS, _Rig, BodyFitOptions,
                                               DEFAULT_OFFSETS)
    from pointwear.perception.types import LANDMARK_INDEX
    zero = BodyFitOptions(landmark_offsets={k: (0.0, 0.0, 0.0) for k in DEFAULT_OFFSETS})
    spec = landmark_targets(body, zero)
    rig = _Rig(body, spec["vertices"], torch.device("cpu"))
    keys = list(DEFAULT_OFFSETS)
    key_of = []
    mirror = []
    for name in TARGET_NAMES:
        side, _, part = name.partition("_")
        key_of.append(keys.index(part if side in ("left", "right") else name))
        mirror.append(-1.0 if side == "right" else 1.0)
    key_of = torch.tensor(key_of)
    mirror = torch.tensor(mirror)
    anchors, frames, obs, conf, Ks, scales = [], [], [], [], [], []
    for smpl, K, lm, ok in data:
        n = smpl.num_frames
        with torch.no_grad():
            pose = torch.as_tensor(np.concatenate([smpl.global_orient, smpl.body_pose], 1))
            rot = batch_rodrigues(pose.reshape(-1, 3)).reshape(n, 24, 3, 3)
            betas = torch.as_tensor(smpl.betas[None])
            j, v, g = rig(betas, rot)
            shift = torch.as_tensor(smpl.transl)[:, None]
            anc = torch.cat([j, v], 1)[:, spec["base"]] + shift
        okt = torch.as_tensor(ok)
        anchors.append(anc[okt])
        frames.append(g[:, spec["frame"]][okt])
        o = np.zeros((n, len(TARGETS), 2))
        c = np.zeros((n, len(TARGETS)))
        for t, (_, names, _) in enumerate(TARGETS):
            ids = [LANDMARK_INDEX[x] for x in names]
            o[:, t] = lm[:, ids, :2].mean(1) - zero.pixel_shift
            c[:, t] = lm[:, ids, 3].min(1)
        obs.append(torch.as_tensor(o[ok], dtype=torch.float32))
        conf.append(torch.as_tensor(c[ok], dtype=torch.float32))
        Ks.append(torch.as_tensor(K[ok], dtype=torch.float32))
    anchors, frames, obs, conf, Ks = (torch.cat(x) for x in (anchors, frames, obs, conf, Ks))
    off = torch.zeros(len(keys), 3, requires_grad=True)

    def errors(o):
        per = o[key_of] * torch.stack([mirror, torch.ones_like(mirror), torch.ones_like(mirror)], 1)
        x = anchors + torch.einsum("btij,tj->bti", frames, per)
        uvw = torch.einsum("bij,btj->bti", Ks, x)
        return (uvw[..., :2] / uvw[..., 2:] - obs).norm(dim=-1)

    opt = torch.optim.Adam([off], lr=0.002)
    for _ in range(600):
        e = errors(off)
        loss = (conf * torch.nn.functional.huber_loss(e, torch.zeros_like(e), reduction="none",
                                                      delta=5.0)).sum() / conf.sum()
        loss = loss + reg * 1e4 * (off ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        e0, e1 = errors(torch.zeros_like(off)), errors(off)
    before, after = {}, {}
    for k, key in enumerate(keys):
        sel = key_of == k
        w = conf[:, sel]
        before[key] = float((e0[:, sel] * w).sum() / w.sum())
        after[key] = float((e1[:, sel] * w).sum() / w.sum())
    return {k: off[i].detach().numpy() for i, k in enumerate(keys)}, before, after


# --------------------------------------------------------------------------------------------
# Real footage: overlays


def draw_overlay(rgb: np.ndarray, res, i: int, landmarks: np.ndarray | None = None) -> np.ndarray:
    import cv2
    img = rgb.copy()
    sil = res.silhouette(i)
    contours, _ = cv2.findContours(sil.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, (0, 255, 0), 2)
    from pointwear.body.joints import PARENTS
    j = res.joints2d[i]
    for c, p in enumerate(PARENTS):
        if p >= 0:
            cv2.line(img, tuple(int(v) for v in j[c]), tuple(int(v) for v in j[p]), (255, 0, 0), 2)
    if landmarks is not None:
        for x, y, _, vis in landmarks:
            if vis > 0.5:
                cv2.circle(img, (int(x), int(y)), 3, (255, 255, 0), -1)
    return img


def cmd_video(options: BodyFitOptions) -> None:
    from PIL import Image
    body = load_body("default", device="cpu")
    frames, obs = cached_video()
    ok = obs["ok"]
    h, w = frames[0].shape[:2]
    focal = 26 / 36 * max(h, w)
    t0 = time.perf_counter()
    idx = np.flatnonzero(ok)
    facing = face_hints([frames[i] for i in idx], obs["landmarks"][ok]) if USE_FACES else None
    t0 = time.perf_counter()
    res = fit_body(body, obs["landmarks"][ok], obs["world"][ok], list(obs["masks"][ok]), (h, w),
                   focal, temporal=True, options=options, refine_focal=True, facing=facing)
    dt = time.perf_counter() - t0
    print(f"video: {ok.sum()} frames {w}x{h} fit in {dt:.1f} s; landmark error "
          f"{res.joint_error_px.mean():.1f} px (max {res.joint_error_px.max():.1f}); confidence "
          f"{res.confidence.mean():.2f}; focal {focal:.0f} -> {res.focal:.0f}; betas "
          f"{np.round(res.smpl.betas[:4], 2)}")
    idx = np.flatnonzero(ok)
    inside = []
    for k in range(len(idx)):
        m = obs["masks"][idx[k]]
        j = np.round(res.joints2d[k]).astype(int)
        j[:, 0] = j[:, 0].clip(0, w - 1)
        j[:, 1] = j[:, 1].clip(0, h - 1)
        inside.append(m[j[:, 1], j[:, 0]].mean())
    print(f"video: share of projected joints inside the person mask {np.mean(inside):.3f}")
    tiles = []
    for k in np.linspace(0, len(idx) - 1, 6).astype(int):
        tiles.append(draw_overlay(frames[idx[k]], res, k, obs["landmarks"][idx[k]]))
    sheet = np.concatenate(tiles, 1)
    Image.fromarray(sheet).resize((sheet.shape[1] // 2, sheet.shape[0] // 2)).save(WORK / "video_overlay.png")
    print(f"wrote {WORK / 'video_overlay.png'}")


def cmd_photo(options: BodyFitOptions) -> None:
    from PIL import Image
    body = load_body("default", device="cpu")
    rgb, obs = photo()
    h, w = rgb.shape[:2]
    focal = 26 / 36 * max(h, w)
    t0 = time.perf_counter()
    facing = face_hints([rgb], obs["landmarks"]) if USE_FACES else None
    t0 = time.perf_counter()
    res = fit_body(body, obs["landmarks"], obs["world"], list(obs["masks"]), (h, w), focal,
                   temporal=False, options=options, facing=facing)
    print(f"photo: fit in {time.perf_counter() - t0:.1f} s; landmark error "
          f"{res.joint_error_px[0]:.1f} px; confidence {res.confidence[0]:.2f}")
    Image.fromarray(draw_overlay(rgb, res, 0, obs["landmarks"][0])).save(WORK / "photo_overlay.png")
    print(f"wrote {WORK / 'photo_overlay.png'}")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["make", "eval", "offsets", "video", "photo", "sheet"])
    ap.add_argument("seeds", nargs="*", type=int)
    ap.add_argument("--no-temporal", action="store_true")
    ap.add_argument("--no-faces", action="store_true", help="no face hints")
    ap.add_argument("--set", nargs="*", default=[], help="option=value overrides")
    args = ap.parse_args()
    seeds = tuple(args.seeds) or TUNING_SEEDS
    if any(not 100 <= s < 200 for s in seeds):
        sys.exit("tuning seeds are 100-119 (200-299 are held out)")
    global USE_FACES
    USE_FACES = not args.no_faces
    options = BodyFitOptions()
    for item in args.set:
        key, value = item.split("=", 1)
        options = replace(options, **{key: type(getattr(options, key))(eval(value))})
    if args.cmd == "make":
        make_subjects(seeds)
    elif args.cmd == "eval":
        cmd_eval(seeds, options, temporal=not args.no_temporal)
    elif args.cmd == "offsets":
        cmd_offsets(seeds)
    elif args.cmd == "video":
        cmd_video(options)
    elif args.cmd == "photo":
        cmd_photo(options)
    elif args.cmd == "sheet":
        cmd_sheet(seeds, options)


def cmd_sheet(seeds, options: BodyFitOptions) -> None:
    """Overlays of the fit on synthetic frames (truth joints in red) for a look."""
    import cv2
    from PIL import Image
    body = load_body("default", device="cpu")
    for seed in seeds:
        subject = read_subject(subject_dir(seed), check_images=False)
        obs = cached_observations(seed)
        ok = obs["ok"]
        res = fit_body(body, obs["landmarks"][ok], obs["world"][ok], list(obs["masks"][ok]),
                       subject.image_size, float(subject.K[0, 0, 0]), options=options,
                       facing=obs["facing"][ok] if USE_FACES else None)
        truth2d = project_points(truth_joints(body, subject).numpy(), subject.K)
        tiles = []
        for k, i in enumerate(np.flatnonzero(ok)):
            img = draw_overlay(subject.frame(i), res, k, obs["landmarks"][i])
            for x, y in truth2d[i]:
                cv2.circle(img, (int(x), int(y)), 3, (255, 0, 255), -1)
            tiles.append(img)
        Image.fromarray(np.concatenate(tiles, 1)).save(WORK / f"sheet_s{seed}.png")
        print(f"wrote {WORK / f'sheet_s{seed}.png'}")


if __name__ == "__main__":
    main()
