"""body.npz: the body as the Blender add-on imports it (rest pose for given betas, SMPL space)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import save_npz
from .model import BodyModel


def export_body(body: BodyModel, out: str | Path, betas=None) -> Path:
    """Write vertices, faces, joints (24,3), parents (24,), joint_names, weights (V,24), betas."""
    verts, joints = (t[0].detach().cpu().numpy() for t in body.shaped(betas))
    extras = {k: np.asarray(v) for k, v in body.extras.items() if k in ("vt", "ft")}
    return save_npz(out, vertices=verts.astype(np.float32), faces=body.faces.astype(np.int32),
                    joints=joints.astype(np.float32), parents=body.parents.astype(np.int32),
                    joint_names=np.array(body.joint_names), weights=body.weights_np.astype(np.float32),
                    betas=body.betas_tensor(betas)[0].cpu().numpy(), source=np.array(body.source), **extras)
