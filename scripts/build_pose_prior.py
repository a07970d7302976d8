"""Build backend/pointwear/perception/data/pose_prior.npz: a Gaussian prior over SMPL body pose
(69 axis-angle numbers) for the body fit of `pointwear prepare`.

Data: the real CMU mocap clip shared/data/real/cmu_01_01.bvh (subject 01, trial 01; 120 fps,
~23 s) converted to SMPL poses of the default body at 30 fps by pointwear.data.bvh_smpl (its
first frame, the T-pose calibration frame, is dropped), plus its left-right mirror (a prior
should not prefer one side), plus a lightly weighted share of Pointwear's own procedural poses
(synth walks and turntables: A-pose arms, which the clip barely holds).

Fit: weighted mean and covariance, Ledoit-Wolf shrinkage towards a scaled identity, plus a
variance floor so no direction is pinned by a clip that never moves it; stored as the lower
Cholesky factor L of the precision (energy ||L^T (x - mean)||^2).

    .venv/bin/python scripts/build_pose_prior.py [--bvh PATH] [--out PATH] [--motion-out NPZ]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from pointwear.body import load_body  # noqa: E402
from pointwear.body.joints import JOINT_NAMES  # noqa: E402
from pointwear.data.bvh import read_bvh  # noqa: E402
from pointwear.data.bvh_smpl import bvh_to_smpl, conversion_errors, to_motion  # noqa: E402
from pointwear.fileio import save_npz  # noqa: E402
from pointwear.perception.pose_prior import POSE_PRIOR_FILE  # noqa: E402

CMU_BVH = ROOT.parent / "shared" / "data" / "real" / "cmu_01_01.bvh"
SYNTH_SHARE = 0.2        # total weight of the procedural poses (the real clip has the rest)
SYNTH_SEEDS = range(8)   # procedural motions per kind
SYNTH_FRAMES = 48        # frames per procedural motion
FLOOR_DEG = 5.0          # variance floor: every direction gets at least this standard deviation
LICENCE = ("CMU Graphics Lab Motion Capture Database (mocap.cs.cmu.edu), subject 01 trial 01, "
           "BVH from the fairmotion repository's tests/data/01_01.bvh: free for all uses, may be "
           "included in commercial products, not to be resold directly")


def mirror_body_pose(body_pose: np.ndarray) -> np.ndarray:
    """(N, 69) -> the left-right mirrored poses: swap left_* and right_* joints and reflect each
    rotation through the x = 0 plane (axis-angle (x, y, z) -> (x, -y, -z))."""
    names = JOINT_NAMES[1:]
    swap = [names.index(n.replace("left_", "right_") if n.startswith("left_") else
                        n.replace("right_", "left_")) for n in names]
    pose = body_pose.reshape(len(body_pose), 23, 3)[:, swap].copy()
    pose[..., 1:] *= -1
    return pose.reshape(len(body_pose), 69)


def synthetic_poses() -> np.ndarray:
    """(N, 69) Pointwear's procedural walks and turntables (on the spot, A-pose arms)."""
    from pointwear.synth.motion import make_motion
    poses = []
    for kind in ("walk", "turntable"):
        for seed in SYNTH_SEEDS:
            _, pose = make_motion(kind, SYNTH_FRAMES, np.random.default_rng(seed))
            poses.append(pose[:, 1:].reshape(SYNTH_FRAMES, 69))
    return np.concatenate(poses)


def shrunk_covariance(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted mean (p,) and Ledoit-Wolf covariance (p, p) of samples x (n, p) with weights w
    (n,) summing to 1, and the shrinkage used."""
    mean = w @ x
    y = x - mean
    cov = (y * w[:, None]).T @ y
    p = x.shape[1]
    mu = np.trace(cov) / p
    delta = np.square(cov - mu * np.eye(p)).sum()
    # sum_i w_i^2 ||y_i y_i^T - S||^2 = sum_i w_i^2 (|y_i|^4 - 2 y_i^T S y_i) + |S|^2 sum_i w_i^2
    norms = np.square(y).sum(1)
    beta = (np.square(w) * (norms ** 2 - 2 * np.einsum("ni,ij,nj->n", y, cov, y))).sum() \
        + np.square(cov).sum() * np.square(w).sum()
    shrink = float(min(beta, delta) / delta) if delta > 0 else 1.0
    return mean, shrink * mu * np.eye(p) + (1 - shrink) * cov, shrink


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bvh", type=Path, default=CMU_BVH)
    parser.add_argument("--out", type=Path, default=POSE_PRIOR_FILE)
    parser.add_argument("--motion-out", type=Path, help="also write the converted clip as an AMASS-style npz")
    parser.add_argument("--no-synth", action="store_true", help="real mocap only")
    args = parser.parse_args()
    torch.set_num_threads(1)

    body = load_body("default", device="cpu")
    bvh = read_bvh(args.bvh)
    converted = bvh_to_smpl(bvh, body, fps=30)
    errors = conversion_errors(bvh, converted, body)
    print(f"{args.bvh.name}: {bvh.num_frames} frames at {bvh.fps:.0f} fps -> {len(converted['poses'])} "
          f"at {converted['mocap_framerate']:.0f} fps, {converted['bvh_scale'] * 100:.2f} cm per unit")
    for name, dist in errors["position"].items():
        print(f"  position {name:15s} {dist.mean() * 1000:6.1f} mm (max {dist.max() * 1000:.1f})")
    for name, angle in errors["direction"].items():
        print(f"  bone {name:28s} {angle.mean():5.1f} deg (max {angle.max():.1f})")
    if args.motion_out:
        from pointwear.data.motion import write_motion
        write_motion(args.motion_out, to_motion(converted))

    real = converted["poses"][1:, 3:].astype(np.float64)          # frame 0: the T-pose calibration
    real = np.concatenate([real, mirror_body_pose(real)])
    parts = [real]
    weights = [np.full(len(real), (1.0 if args.no_synth else 1 - SYNTH_SHARE) / len(real))]
    if not args.no_synth:
        synth = synthetic_poses()
        parts.append(synth)
        weights.append(np.full(len(synth), SYNTH_SHARE / len(synth)))
    x, w = np.concatenate(parts), np.concatenate(weights)
    mean, cov, shrink = shrunk_covariance(x, w)
    cov += np.deg2rad(FLOOR_DEG) ** 2 * np.eye(69)
    precision = np.linalg.inv(cov)
    chol = np.linalg.cholesky((precision + precision.T) / 2)
    std = np.sqrt(np.diag(cov))
    print(f"samples: {len(real)} real (with mirror) + {len(x) - len(real)} procedural "
          f"(weight {0 if args.no_synth else SYNTH_SHARE}); Ledoit-Wolf shrinkage {shrink:.3f}; "
          f"per-axis std {np.degrees(std.min()):.1f}..{np.degrees(std.max()):.1f} deg; "
          f"condition {np.linalg.cond(cov):.0f}")
    source = (f"{len(real) // 2} frames (30 fps) of {args.bvh.name} converted to SMPL with "
              f"pointwear.data.bvh_smpl, plus their left-right mirror"
              + ("" if args.no_synth else f", plus {len(x) - len(real)} Pointwear procedural "
                 f"walk/turntable poses at {SYNTH_SHARE:.0%} weight")
              + f"; Ledoit-Wolf shrinkage {shrink:.3f} + ({FLOOR_DEG:g} deg)^2 I. Data: {LICENCE}.")
    save_npz(args.out, mean=mean.astype(np.float32), precision_chol=chol.astype(np.float32),
             source=np.array(source), frames=np.array(len(x)))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
