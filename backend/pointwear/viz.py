"""Contact sheets: a quick look at a subject's frames, masks and garment labels in one PNG."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from .data.subject import Subject
from .fileio import atomic_path

LABEL_COLORS = np.array([[0, 0, 0], [230, 80, 60], [60, 130, 230], [80, 200, 90], [230, 200, 60],
                         [180, 90, 220], [60, 210, 210]], dtype=np.uint8)


def _thumb(img: np.ndarray, height: int) -> np.ndarray:
    step = max(1, int(np.ceil(img.shape[0] / height)))
    return img[::step, ::step]


def contact_sheet(subject: Subject, out: str | Path, max_frames: int = 12, height: int = 256) -> Path:
    """Columns are frames; rows: the frame, the mask over the dimmed frame, the label map."""
    idx = np.unique(np.linspace(0, subject.num_frames - 1, min(max_frames, subject.num_frames)).round().astype(int))
    columns = []
    for i in idx:
        rgb = subject.frame(int(i))
        mask = subject.mask(int(i))
        overlay = (rgb * 0.35).astype(np.uint8)
        overlay[mask] = (0.5 * rgb[mask] + 0.5 * np.array([255, 60, 200])).astype(np.uint8)
        labels = subject.labels(int(i))
        label_img = LABEL_COLORS[np.minimum(labels, len(LABEL_COLORS) - 1)] if labels is not None else \
            np.repeat(mask[..., None] * np.uint8(255), 3, -1)
        column = np.concatenate([_thumb(a, height) for a in (rgb, overlay, label_img)], 0)
        columns.append(np.pad(column, ((0, 0), (0, 4), (0, 0)), constant_values=255))
    sheet = np.concatenate(columns, 1)
    out = Path(out)
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, sheet, extension=".png")
    return out
