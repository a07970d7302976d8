"""Pictures of what `prepare` saw: a detection preview per frame (server PROGRESS) and the
subject's contact sheet (frames with landmarks and the fitted body's outline, the clothing mask,
the garment labels)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..fileio import atomic_path
from ..viz import LABEL_COLORS
from .types import LANDMARK_INDEX, PersonObs

# Landmark skeleton drawn on overlays (MediaPipe names).
_BONES = [("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
          ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"),
          ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
          ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
          ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
          ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
          ("left_ankle", "left_foot_index"), ("right_ankle", "right_foot_index"),
          ("left_ankle", "left_heel"), ("right_ankle", "right_heel")]
_LEFT, _RIGHT, _MID = (90, 235, 90), (255, 150, 40), (240, 240, 240)
_PERSON_COLOURS = [(255, 60, 200), (60, 220, 120), (250, 200, 40)]
VISIBLE = 0.5           # landmarks less visible than this are drawn hollow
SHEET_FRAMES = 8        # columns of the contact sheet
SHEET_HEIGHT = 320      # px per row of the contact sheet


def _colour(name: str) -> tuple[int, int, int]:
    return _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _MID


def draw_landmarks(img: np.ndarray, landmarks: np.ndarray, scale: float = 1.0) -> None:
    """Draw a (33, 4) landmark array (x px, y px, z, visibility) onto `img` in place."""
    lw = max(1, int(round(2 * scale)))
    pts = landmarks[:, :2] * scale
    for a, b in _BONES:
        ia, ib = LANDMARK_INDEX[a], LANDMARK_INDEX[b]
        if min(landmarks[ia, 3], landmarks[ib, 3]) < VISIBLE:
            continue
        cv2.line(img, tuple(int(v) for v in pts[ia]), tuple(int(v) for v in pts[ib]),
                 _colour(a if a.split("_")[0] == b.split("_")[0] else "mid"), lw, cv2.LINE_AA)
    for name, i in LANDMARK_INDEX.items():
        filled = -1 if landmarks[i, 3] >= VISIBLE else lw
        cv2.circle(img, tuple(int(v) for v in pts[i]), max(2, 2 * lw), _colour(name), filled,
                   cv2.LINE_AA)


def detection_overlay(rgb: np.ndarray, people: list[PersonObs], max_side: int = 384) -> np.ndarray:
    """A small preview: every person's mask tinted in its own colour, landmarks on top."""
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    size = (max(1, int(round(rgb.shape[1] * scale))), max(1, int(round(rgb.shape[0] * scale))))
    img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    for k, p in enumerate(people):
        m = cv2.resize(p.mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)[..., None]
        img = img * (1 - 0.45 * m) + 0.45 * m * np.array(_PERSON_COLOURS[k % 3], np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for p in people:
        draw_landmarks(img, p.landmarks, scale)
    return img


def body_silhouettes(subject_dir: Path, smpl, K: np.ndarray, image_size: tuple[int, int],
                     body_spec: str, gender: str, frames: list[int]) -> list[np.ndarray]:
    """Silhouettes (H, W) bool of the fitted body in `frames`, by our own rasterizer."""
    import torch

    from ..body import load_body
    from ..render.rasterizer import rasterize
    body = load_body(body_spec, gender=gender, device="cpu")
    out = []
    with torch.no_grad():
        for i in frames:
            v = body(betas=smpl.betas[None], global_orient=smpl.global_orient[i:i + 1],
                     body_pose=smpl.body_pose[i:i + 1], transl=smpl.transl[i:i + 1]).vertices
            frag = rasterize(v[0], body.faces_t, torch.as_tensor(K[i], dtype=torch.float32),
                             image_size)
            out.append(frag.mask[0].numpy())
    return out


def _person_box(subject_dir: Path, frames: list[int], image_size: tuple[int, int],
                margin: float = 0.08) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the box holding the person in all `frames` (prepare/person masks)
    plus a margin, so the sheet shows the person rather than the scenery."""
    h, w = image_size
    ys, xs = [], []
    for i in frames:
        path = subject_dir / "prepare" / "person" / f"{i:06d}.png"
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
        if m is not None and (m > 127).any():
            r, c = np.nonzero(m > 127)
            ys += [r.min(), r.max()]
            xs += [c.min(), c.max()]
    if not ys:
        return 0, h, 0, w
    pad = int(margin * (max(ys) - min(ys) + 1))
    return (max(0, min(ys) - pad), min(h, max(ys) + pad + 1),
            max(0, min(xs) - pad), min(w, max(xs) + pad + 1))


def contact_sheet(subject_dir: str | Path, fit, out: str | Path,
                  max_frames: int = SHEET_FRAMES, height: int = SHEET_HEIGHT) -> Path:
    """Columns are frames (evenly spread), cropped to the person; rows: the frame with its
    landmarks (person's left green, right orange) and the fitted body's outline (cyan), the
    clothing mask over the dimmed frame, the garment labels."""
    from ..data.subject import read_subject
    subject_dir = Path(subject_dir)
    s = read_subject(subject_dir, check_images=False)
    lm = np.load(subject_dir / "prepare" / "landmarks.npz")["landmarks"]
    n = s.num_frames
    idx = [int(i) for i in np.unique(np.linspace(0, n - 1, min(max_frames, n)).round())]
    sil = body_silhouettes(subject_dir, s.smpl, s.K, s.image_size, s.meta["body"],
                           s.meta["gender"], idx)
    y0, y1, x0, x1 = _person_box(subject_dir, idx, s.image_size)
    scale = height / (y1 - y0)
    size = (max(1, int(round((x1 - x0) * scale))), height)
    columns = []
    for i, silhouette in zip(idx, sil):
        rgb = s.frame(i)[y0:y1, x0:x1]
        mask = s.mask(i)[y0:y1, x0:x1]
        silhouette = silhouette[y0:y1, x0:x1]
        top = rgb.copy()
        edge = cv2.morphologyEx(silhouette.astype(np.uint8), cv2.MORPH_GRADIENT,
                                np.ones((3, 3), np.uint8)).astype(bool)
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((max(1, int(1 / scale)),) * 2,
                                                         np.uint8)).astype(bool)
        top[edge] = (0, 230, 255)
        top = cv2.resize(top, size, interpolation=cv2.INTER_AREA)
        draw_landmarks(top, lm[i] - np.array([x0, y0, 0, 0], np.float32), scale)
        mid = (rgb * 0.35).astype(np.uint8)
        mid[mask] = (0.5 * rgb[mask] + 0.5 * np.array([255, 60, 200])).astype(np.uint8)
        labels = s.labels(i)
        labels = None if labels is None else labels[y0:y1, x0:x1]
        low = (LABEL_COLORS[np.minimum(labels, len(LABEL_COLORS) - 1)] if labels is not None
               else np.repeat(mask[..., None] * np.uint8(255), 3, -1))
        column = np.concatenate([top] + [cv2.resize(a, size, interpolation=cv2.INTER_AREA)
                                         for a in (mid, low)], 0)
        cv2.putText(column, f"{i}", (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2,
                    cv2.LINE_AA)
        columns.append(np.pad(column, ((0, 0), (0, 4), (0, 0)), constant_values=255))
    sheet = np.concatenate(columns, 1)
    out = Path(out)
    with atomic_path(out) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out
