"""Re-draping: a fitted outfit on a new body shape and new poses. The drape model is run again
with the fitted code on the new betas (the outfit re-fits the body, it is not stretched), the
free-form offsets are carried over, and an AMASS-style motion poses it frame by frame."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..body import load_body
from ..body.export import export_body
from ..data.motion import pelvis_fix, read_motion
from ..errors import InputError
from ..fileio import load_npz, save_npz
from ..garment.families import upgrade_code
from . import drape_from_id
from .base import present_points
from ..link.protocol import BODY_NPZ, OUTFIT_NPZ, POSED_NPZ


MAX_OUTFIT_POINTS = 2_000_000
OUTFIT_LIMITS = {"points": 3 * MAX_OUTFIT_POINTS, "weights": 24 * MAX_OUTFIT_POINTS,
                 "offsets": 3 * MAX_OUTFIT_POINTS, "colors": 4 * MAX_OUTFIT_POINTS, "code": 4096, "betas": 300}


def load_outfit(result_dir: str | Path) -> dict[str, np.ndarray]:
    path = Path(result_dir) / OUTFIT_NPZ
    if not path.is_file():
        raise InputError(f"no {OUTFIT_NPZ} here: is this a finished fit-outfit result folder?", file=path)
    data = load_npz(path, OUTFIT_LIMITS)
    for key in ("points", "weights", "code", "drape", "betas"):
        if key not in data:
            raise InputError("missing key", file=path, field=key)
    points, weights = data["points"], data["weights"]
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"must be (P, 3) points, got shape {points.shape}", file=path, field="points")
    if weights.ndim != 2 or weights.shape[0] != points.shape[0]:
        raise InputError(f"must be (P, J) skin weights with P = {points.shape[0]} (one row per point), got shape "
                         f"{weights.shape}", file=path, field="weights")
    data["code"] = current_code(str(data["drape"]), data["code"])
    return data


def current_code(drape: str, code) -> np.ndarray:
    """`code` of an outfit with this `drape` in today's layout: a family result from before a
    family grew a parameter gets it at the low end (`families.upgrade_code`); other codes as
    they are. (D,) float array."""
    if drape.startswith("parametric:"):
        return upgrade_code(drape.partition(":")[2], code)
    return np.asarray(code)


@torch.no_grad()
def redraped_points(outfit: dict[str, np.ndarray], body, betas=None, checkpoint: str | None = None,
                    file: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The outfit's rest-pose points re-draped for `betas` (None: the outfit's own) with its drape
    model and code, free-form offsets carried over: points (P,3), weights (P,24), betas (1,S).
    The point order is the drape's, the same for every body, so per-point data (colours,
    descriptors) follows each point."""
    drape_id = str(outfit["drape"])
    if checkpoint is not None and not drape_id.startswith("neural"):
        raise InputError(f"applies to a neural drape only; this outfit was fitted with the {drape_id} drape",
                         file=checkpoint, field="checkpoint", hint="leave --checkpoint out for this result")
    drape = drape_from_id(drape_id, body, checkpoint)
    new_betas = body.betas_tensor(outfit["betas"] if betas is None else betas)
    code = torch.as_tensor(outfit["code"], dtype=torch.float32, device=body.device)[None]
    d = drape(drape.constrain(code), new_betas)
    rest = d.points[0]
    weights = d.weights[0] if d.weights.dim() == 3 else d.weights
    keep = present_points(d)   # a result leaves absent pieces out; one made before that kept them
    if keep is not None and int(keep.sum()) == outfit["points"].shape[0]:
        rest, weights = rest[keep], weights[keep]
    if "offsets" in outfit and outfit["offsets"].shape == tuple(rest.shape):
        rest = rest + torch.as_tensor(outfit["offsets"], device=rest.device)
    if rest.shape[0] != outfit["points"].shape[0]:
        raise InputError(f"the drape gives {rest.shape[0]} points but the fit had {outfit['points'].shape[0]}",
                         file=file, field="points")
    return rest, weights, new_betas


@torch.no_grad()
def redrape(result_dir: str | Path, out: str | Path, betas=None, motion: str | Path | None = None,
            up: str = "z", checkpoint: str | None = None, chunk: int = 128) -> Path:
    """Write OUT/outfit.npz (rest pose for the new betas), OUT/body.npz and, with a motion,
    OUT/posed.npz (T, P, 3) in SMPL's Y-up world."""
    outfit = load_outfit(result_dir)
    out = Path(out)
    body = load_body(str(outfit.get("body", "default")), str(outfit.get("gender", "neutral")), device="cpu")
    rest, weights, new_betas = redraped_points(outfit, body, betas, checkpoint, Path(result_dir) / OUTFIT_NPZ)
    # Per-point data follows the point index: an appearance result keeps its colours and descriptors.
    extra = {k: outfit[k] for k in ("faces", "garment", "garment_names", "params", "body", "gender", "colors", "descriptors")
             if k in outfit}
    save_npz(out / OUTFIT_NPZ, points=rest.numpy().astype(np.float32), weights=weights.numpy().astype(np.float32),
             code=outfit["code"], drape=outfit["drape"], betas=new_betas[0].numpy(), **extra)
    export_body(body, out / BODY_NPZ, new_betas)
    if motion is not None:
        m = read_motion(motion, up=up)
        _, joints = body.shaped(new_betas)
        transl = pelvis_fix(m.transl, joints[0, 0].numpy(), up)
        frames = []
        for s in range(0, m.num_frames, chunk):
            sl = slice(s, s + chunk)
            frames.append(body.pose_points(rest[None], weights, new_betas, m.global_orient[sl], m.body_pose[sl],
                                           transl[sl]).numpy())
        save_npz(out / POSED_NPZ, points=np.concatenate(frames).astype(np.float32), fps=np.float32(m.fps),
                 global_orient=m.global_orient, body_pose=m.body_pose, transl=transl)
    return out
