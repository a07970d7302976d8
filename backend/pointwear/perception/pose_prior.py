"""A Gaussian prior over SMPL body pose (69 axis-angle numbers, joints 1..23), fitted to real
motion capture (scripts/build_pose_prior.py; data/README.md says what it was built from).

Energy: E(x) = ||L^T (x - mean)||^2 = (x - mean)^T P (x - mean) with P = L L^T the precision.
For poses drawn from the prior E averages 69 (a chi-square with 69 degrees of freedom); the
build data is narrow (one real clip), so weight it lightly in a fit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

POSE_PRIOR_FILE = Path(__file__).parent / "data" / "pose_prior.npz"
POSE_DIM = 69


def load_pose_prior(path: str | Path = POSE_PRIOR_FILE) -> dict[str, np.ndarray]:
    """{"mean": (69,) float32, "precision_chol": (69, 69) float32 lower-triangular L,
    "source": 0-d str array, "frames": 0-d int array}, checked for shape and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise InputError("pose prior file not found", file=path,
                         hint="rebuild it with scripts/build_pose_prior.py")
    try:
        with np.load(path, allow_pickle=False) as data:
            prior = {k: data[k] for k in data.files}
    except Exception as exc:
        raise InputError(f"not a readable .npz ({exc})", file=path) from exc
    for key, shape in (("mean", (POSE_DIM,)), ("precision_chol", (POSE_DIM, POSE_DIM))):
        if key not in prior:
            raise InputError(f"missing key; the file has {sorted(prior)}", file=path, field=key)
        if prior[key].shape != shape:
            raise InputError(f"expected shape {shape}, got {prior[key].shape}", file=path, field=key)
        if not np.isfinite(prior[key]).all():
            raise InputError("contains NaN or inf", file=path, field=key)
        prior[key] = prior[key].astype(np.float32)
    if np.any(np.diag(prior["precision_chol"]) <= 0):
        raise InputError("not a Cholesky factor (diagonal must be positive)", file=path, field="precision_chol")
    return prior


def pose_prior_tensors(prior: dict, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prior's mean (69,) and precision_chol (69, 69) on `like`'s device and dtype: convert
    once before an optimisation loop so each step copies nothing."""
    return {k: torch.as_tensor(prior[k], device=like.device, dtype=like.dtype)
            for k in ("mean", "precision_chol")}


def pose_prior_energy(body_pose: torch.Tensor, prior: dict) -> torch.Tensor:
    """Prior energy per pose.

    body_pose: (B, 69) axis-angle of SMPL joints 1..23 (smplx's `body_pose`).
    prior: load_pose_prior()'s dict (numpy) or pose_prior_tensors()'s (torch).
    Returns (B,) ||L^T (body_pose - mean)||^2, on body_pose's device and dtype; 0 at the mean.
    """
    if body_pose.dim() != 2 or body_pose.shape[1] != POSE_DIM:
        raise ValueError(f"body_pose must be (B, {POSE_DIM}), got {tuple(body_pose.shape)}")
    mean = torch.as_tensor(prior["mean"], device=body_pose.device, dtype=body_pose.dtype)
    chol = torch.as_tensor(prior["precision_chol"], device=body_pose.device, dtype=body_pose.dtype)
    return ((body_pose - mean) @ chol).square().sum(-1)
