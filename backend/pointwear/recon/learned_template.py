"""The learned reconstruction's template: a coarse garment on our default body, not an ellipsoid.

3D Magic Mirror deforms a 642-vertex ellipsoid and moves it towards the data by an EM step. We keep
the EM step but start from a long-sleeved top + full-length trousers built by the garment builder on
the default body in a relaxed A-pose (arms lowered 57 degrees, elbows bent 12), every grid divided by
COARSEN (~600 vertices, as few as the paper's). Why: the learned offsets then only have to say how
this garment differs from a typical one (a skirt's flare, short sleeves), arms and legs exist from
the start (an ellipsoid needs many epochs of EM to grow them, and at our training budget never
does), every vertex has SMPL skin weights, so the predicted mesh is skinned to the armature, and the
rest pose is known, so a prediction un-poses exactly to SMPL rest space for the result folder.

Object space: the posed template centred on its bounding box, metres, SMPL axes (Y up, facing +Z).
UVs: the planar front projection (u = x, v = y over the bounding box), shared by the front and the
back, so the back shows the mirrored front, as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation as R

from ..body.joints import JOINT_INDEX, NUM_JOINTS
from ..body.model import load_body
from ..garment.body_frame import BodyFrame
from ..garment.outfit import GarmentParams, build_outfit

COARSEN = 4
ARM_LOWER_DEG = 57.0
ELBOW_BEND_DEG = 12.0
TEMPLATE_GARMENTS = (GarmentParams("top", sleeve=0.85, hem=1.0, neckline=0.05, ease=0.03),
                     GarmentParams("trousers", hem=1.0, ease=0.02))


@dataclass
class TemplateMesh:
    """posed (V,3) object-space vertices; faces (F,3) CCW outside; uv (V,2) bottom-left origin;
    weights (V,24); mirror (V,) index of the vertex nearest to each vertex's mirror image (x -> -x);
    unpose (V,4,4) per-vertex inverse blend transform from object space to SMPL rest space."""
    posed: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    weights: np.ndarray
    mirror: np.ndarray
    unpose: np.ndarray

    def arrays(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in TEMPLATE_KEYS}


TEMPLATE_KEYS = ("posed", "faces", "uv", "weights", "mirror", "unpose")


def a_pose() -> np.ndarray:
    """(24,3) axis-angle of the template's pose."""
    pose = np.zeros((NUM_JOINTS, 3))
    pose[JOINT_INDEX["left_shoulder"]] = R.from_euler("z", -ARM_LOWER_DEG, degrees=True).as_rotvec()
    pose[JOINT_INDEX["right_shoulder"]] = R.from_euler("z", ARM_LOWER_DEG, degrees=True).as_rotvec()
    pose[JOINT_INDEX["left_elbow"]] = R.from_euler("y", -ELBOW_BEND_DEG, degrees=True).as_rotvec()
    pose[JOINT_INDEX["right_elbow"]] = R.from_euler("y", ELBOW_BEND_DEG, degrees=True).as_rotvec()
    return pose


def planar_uv(points: np.ndarray) -> np.ndarray:
    """(V,2) front-projection UVs of (V,3) points over their x/y bounding box, in [0,1]."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    return ((points[:, :2] - lo) / np.maximum(hi - lo, 1e-9)).astype(np.float32)


def build_template(body_spec: str = "default") -> TemplateMesh:
    """The garment template on the body `body_spec` (mean shape) in the A-pose."""
    body = load_body(body_spec, device="cpu")
    with torch.no_grad():
        rest_v, rest_j = (t[0].numpy() for t in body.shaped(None))
        outfit = build_outfit(BodyFrame(rest_v, rest_j, body.weights_np), list(TEMPLATE_GARMENTS), coarsen=COARSEN)
        rest = outfit.vertices.detach().float()
        weights = torch.as_tensor(outfit.weights, dtype=torch.float32)
        pose = torch.as_tensor(a_pose(), dtype=torch.float32).reshape(1, -1)
        transforms = body.joint_transforms(body.betas_tensor(None), pose)[0]          # (24,4,4)
        per_vertex = torch.einsum("vj,jab->vab", weights, transforms)                # (V,4,4)
        posed = torch.einsum("vab,vb->va", per_vertex[:, :3, :3], rest) + per_vertex[:, :3, 3]
    posed = posed.numpy()
    centre = (posed.min(0) + posed.max(0)) / 2.0
    shift = np.eye(4, dtype=np.float64)
    shift[:3, 3] = centre
    unpose = np.linalg.inv(per_vertex.double().numpy()) @ shift                      # object -> rest
    obj = (posed - centre).astype(np.float32)
    _, mirror = cKDTree(obj).query(obj * np.array([-1.0, 1.0, 1.0], np.float32))
    return TemplateMesh(posed=obj, faces=outfit.faces.astype(np.int64), uv=planar_uv(obj),
                        weights=outfit.weights.astype(np.float32), mirror=mirror.astype(np.int64),
                        unpose=unpose.astype(np.float32))
