"""`pointwear eval-outfit`: how good is a fitted outfit? Against the truth of a synthetic
subject, 3D Chamfer (cm) and F-score at 1 cm per frame; on frames the fit did not use, mask
IoU of the splatted points and 2D Chamfer (px), and the IoU of the outfit mesh's seen
silhouette (`heldout_mesh_iou`, outfits with faces). Every figure is also given for the
naked-body baseline (the clothing-capable body surface taken as the clothing), the splat figures
for the truth clothing's own points (`truth_points`: the metric's reference, which is below 1)
and the mesh IoU for the truth's own mesh (`truth_mesh`, where the subject has one)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..body import BodyModel, load_body, region_mask
from ..data.subject import Subject, read_subject
from ..drape.redrape import load_outfit
from ..errors import InputError
from ..fileio import atomic_path
from .frames import FrameSet, load_frames
from .metrics import chamfer_3d
from .outputs import evaluate_points, mesh_iou
from ..link.protocol import OUTFIT_NPZ, POSED_NPZ, RESULT_JSON


def body_baseline(body: BodyModel, subject: Subject, count: int = 8192, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The naked-body baseline: (N, P, 3) points sampled on the posed body without head, hands
    and feet, and that surface as a mesh, (N, V, 3) posed body vertices and its (F, 3) faces."""
    from ..synth.generate import sample_surface
    smpl = subject.smpl
    keep = ~region_mask(body.weights_np, "head", "hands", "feet")
    faces = body.faces[keep[body.faces].all(1)]
    rest, _ = body.shaped(smpl.betas)
    face, bary = sample_surface(rest[0].numpy(), faces, count, np.random.default_rng(seed))
    corners = torch.as_tensor(faces[face])
    posed = body(smpl.betas, smpl.global_orient, smpl.body_pose, smpl.transl).vertices
    b = torch.as_tensor(bary, dtype=torch.float32)
    return (posed[:, corners] * b[None, :, :, None]).sum(2), posed, faces


@torch.no_grad()
def evaluate_outfit(result_dir: str | Path, subject_dir: str | Path) -> dict:
    result_dir = Path(result_dir)
    subject = read_subject(subject_dir)
    outfit = load_outfit(result_dir)   # fails clearly when this is not a finished fit
    posed_path = result_dir / POSED_NPZ
    if not posed_path.is_file():
        raise InputError("missing: run fit-outfit to the end first", file=posed_path)
    posed = torch.as_tensor(np.load(posed_path)["points"])
    if posed.shape[0] != subject.num_frames:
        raise InputError(f"has {posed.shape[0]} frames but the subject has {subject.num_frames}: "
                         "is this the subject the outfit was fitted to?", file=posed_path, field="points")
    info = json.loads((result_dir / RESULT_JSON).read_text()) if (result_dir / RESULT_JSON).exists() else {}
    train = set(info.get("train_frames", []))
    held = [i for i in range(subject.num_frames) if i not in train] or list(range(subject.num_frames))
    body = load_body(subject.meta.get("body", "default"), subject.meta.get("gender", "neutral"), device="cpu")
    base_posed, base_vertices, base_faces = body_baseline(body, subject)
    faces = _checked_faces(outfit.get("faces"), posed.shape[1], result_dir / OUTFIT_NPZ)

    report: dict = {"result": str(result_dir), "subject": str(subject.root), "heldout_frames": held,
                    "fit": {}, "baseline": {}}
    frames = load_frames(subject, body, held, posed.device)   # masks and body depth, once for every cloud
    for name, pts in (("fit", posed), ("baseline", base_posed)):
        report[name] = _mask_report(subject, body, pts, held, frames)
    if faces is not None:
        report["fit"].update(_mesh_report(subject, body, posed, faces, held, frames))
    report["baseline"].update(_mesh_report(subject, body, base_vertices, base_faces, held, frames))
    truth_path = subject.root / "truth" / "clothing.npz"
    if truth_path.is_file():
        truth_file = np.load(truth_path)
        truth = truth_file["points"]
        for name, pts in (("fit", posed), ("baseline", base_posed)):
            per = [chamfer_3d(pts[i].numpy(), truth[i]) for i in range(subject.num_frames)]
            report[name]["chamfer_cm"] = round(float(np.mean([p[0] for p in per])), 3)
            report[name]["fscore_1cm"] = round(float(np.mean([p[1] for p in per])), 4)
        report["truth_points"] = _truth_reference(subject, body, truth, held, frames)
        if {"posed_mesh_vertices", "mesh_faces"} <= set(truth_file.files):
            report["truth_mesh"] = _mesh_report(subject, body, torch.as_tensor(truth_file["posed_mesh_vertices"]),
                                                truth_file["mesh_faces"], held, frames)
    with atomic_path(result_dir / "eval.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return report


def _checked_faces(faces, num_points: int, file: Path) -> np.ndarray | None:
    """outfit.npz "faces" as (F, 3) int64 indices of posed.npz's points, None for a point cloud;
    anything else is an InputError naming the file and field."""
    if faces is None:
        return None
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise InputError(f"must be (F, 3) integer vertex indices, got {faces.dtype} {faces.shape}", file=file,
                         field="faces")
    if faces.size and (faces.min() < 0 or faces.max() >= num_points):
        raise InputError(f"indexes points outside [0, {num_points}) (posed.npz has {num_points} per frame)",
                         file=file, field="faces")
    return faces.astype(np.int64)


def _mask_report(subject: Subject, body: BodyModel, points: torch.Tensor, held: list[int], frames: FrameSet) -> dict:
    """Held-out IoU of the splatted points and 2D Chamfer (px), means and per frame."""
    rows = evaluate_points(subject, body, points, held, frames=frames)
    return {"heldout_iou": round(float(np.mean([r["iou"] for r in rows])), 4),
            "heldout_chamfer_px": round(float(np.mean([r["chamfer_px"] for r in rows])), 3), "frames": rows}


def _mesh_report(subject: Subject, body: BodyModel, vertices: torch.Tensor, faces: np.ndarray, held: list[int],
                 frames: FrameSet) -> dict:
    """Held-out IoU of a mesh's seen silhouette (`metrics.mesh_mask`; vertices (N, V, 3) per
    frame in camera space): "heldout_mesh_iou" and per frame "mesh_frames"."""
    rows = [{"frame": i, "mesh_iou": mesh_iou(vertices, faces, frames, k, i)} for k, i in enumerate(held)]
    return {"heldout_mesh_iou": round(float(np.mean([r["mesh_iou"] for r in rows])), 4), "mesh_frames": rows}


def _truth_reference(subject: Subject, body: BodyModel, truth: np.ndarray, held: list[int],
                     frames: FrameSet) -> dict:
    """The truth clothing's own points (F, N, 3) through the same held-out mask metrics as the
    fit: the metric's reference, below 1 (the splat's band along the outline, holes where the
    truth's points are sparse), so a fit's IoU reads against it. The truth mesh's silhouette
    ("truth_mesh") is the mesh IoU's reference, ~0.98 on clothsim subjects."""
    return _mask_report(subject, body, torch.as_tensor(truth, dtype=torch.float32), held, frames)
