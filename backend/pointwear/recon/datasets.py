"""Single-image training data for the learned reconstruction: readers of three folder layouts and
the one crop that turns (image, mask) into the network's 4-channel input.

Layouts (`pointwear train-recon --layout ...`; docs/recon_learned.md shows them as trees):

``subject``  our subject folders (`pointwear synth`, `pointwear prepare`): DIR is one subject
             (has subject.json) or a folder whose sub-folders are subjects. Every frame of
             frames/ with its clothing mask from masks/.
``market``   Market-HQ as 3D Magic Mirror uses it: DIR (Market/hq) holds
             ``pytorch/<split>/<id>/<name>.png`` (or .jpg) images and
             ``seg_hmr/<split>/<id>/<name>[_0.37].png`` person masks (non-zero = person; the
             optional ``_0.37`` suffix is the foreground fraction its prepare_market.py appends).
             The split is ``train_all`` when present, else every split folder.
``atr``      ATR human parsing: DIR (ATR or ATR/humanparsing) holds ``JPEGImages/<name>.jpg`` and
             either ``SegmentationClassAug/<name>.png`` label maps (the clothing labels
             ATR_CLOTHING_LABELS make the mask: our model reconstructs clothing) or, without
             them, the paper's prepared binary person masks ``Seg/<name>_0.25.png``.

Every image is bounded before it is decoded (MAX_IMAGE_PIXELS via the subject reader's opener)
and a missing or corrupt file is an InputError naming it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.subject import (SUBJECT_JSON, _open_image, decode_image, image_to_mask_values, image_to_rgb,
                            read_subject)
from ..errors import InputError

LAYOUTS = ("subject", "market", "atr")
# ATR labels: 0 background, 1 hat, 2 hair, 3 sunglasses, 4 upper-clothes, 5 skirt, 6 pants, 7 dress,
# 8 belt, 9/10 shoes, 11 face, 12/13 legs, 14/15 arms, 16 bag, 17 scarf.
ATR_CLOTHING_LABELS = (4, 5, 6, 7, 8, 17)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_ITEMS = 200_000
# A mask file name of the paper's prepared layouts: "<stem>_<fraction>.png" or "<stem>.png".
_MASK_NAME = re.compile(r"^(?P<stem>.+?)(?:_(?P<frac>[01]\.\d{2}))?\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One training image: where its pixels and its mask come from.

    `frame` >= 0 reads frame `frame` of the subject folder `image`; otherwise `image` and `mask`
    are image files and `labels` (when set) are the label values of `mask` that count as mask."""
    image: Path
    mask: Path
    frame: int = -1
    labels: tuple[int, ...] | None = None


def mask_stem(name: str) -> str | None:
    """Image stem of a mask file name: "0002_c1s1_000451_01_0.37.png" -> "0002_c1s1_000451_01";
    None when the name is not a .png."""
    m = _MASK_NAME.match(name)
    return m.group("stem") if m else None


def list_items(root: str | Path, layout: str, max_items: int = MAX_ITEMS) -> list[Item]:
    """Every (image, mask) of a data folder in `layout`, sorted; InputError when there is none."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}", field="layout")
    if not root.is_dir():
        raise InputError("data folder does not exist", file=root, field="data")
    items = {"subject": _subject_items, "market": _market_items, "atr": _atr_items}[layout](root)
    if not items:
        raise InputError(f"no images found for layout {layout!r}", file=root, field="data",
                         hint="see docs/recon_learned.md for the folder layouts")
    if len(items) > max_items:
        raise InputError(f"{len(items)} images, over the limit of {max_items}", file=root, field="data")
    return items


def _subject_items(root: Path) -> list[Item]:
    roots = [root] if (root / SUBJECT_JSON).is_file() else sorted(
        p for p in root.iterdir() if (p / SUBJECT_JSON).is_file())
    items = []
    for sub in roots:
        s = read_subject(sub, check_images=False)
        items += [Item(sub, sub, frame=i) for i in range(s.num_frames)]
    return items


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def _paired(mask_files: list[Path], image_dir_of, mask_for_stem) -> list[Item]:
    """Items of mask files whose image exists; a mask without an image is an InputError."""
    items = []
    for m in sorted(mask_files):
        stem = mask_stem(m.name)
        if stem is None:
            continue
        image = _find_image(image_dir_of(m), stem)
        if image is None:
            raise InputError(f"mask has no image {stem}{'|'.join(IMAGE_SUFFIXES)} in {image_dir_of(m)}",
                             file=m, field="image")
        items.append(mask_for_stem(image, m))
    return items


def _market_items(root: Path) -> list[Item]:
    seg, img = root / "seg_hmr", root / "pytorch"
    if not seg.is_dir() or not img.is_dir():
        raise InputError("a Market-HQ folder needs seg_hmr/ and pytorch/", file=root, field="data")
    splits = [seg / "train_all"] if (seg / "train_all").is_dir() else sorted(p for p in seg.iterdir() if p.is_dir())
    masks = [m for split in splits for m in split.glob("*/*.png")]
    return _paired(masks, lambda m: img / m.parent.parent.name / m.parent.name, lambda i, m: Item(i, m))


def _atr_items(root: Path) -> list[Item]:
    base = root / "humanparsing" if (root / "humanparsing").is_dir() else root
    images = base / "JPEGImages"
    if not images.is_dir():
        raise InputError("an ATR folder needs humanparsing/JPEGImages/", file=root, field="data")
    labelled = base / "SegmentationClassAug"
    if labelled.is_dir():
        return _paired(list(labelled.glob("*.png")), lambda m: images,
                       lambda i, m: Item(i, m, labels=ATR_CLOTHING_LABELS))
    prepared = base / "Seg"
    if not prepared.is_dir():
        raise InputError("an ATR folder needs SegmentationClassAug/ or Seg/ beside JPEGImages/", file=base,
                         field="data")
    return _paired(list(prepared.glob("*.png")), lambda m: images, lambda i, m: Item(i, m))


def load_item(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H,W,3), mask bool (H,W)) of an item; InputError naming a bad file."""
    if item.frame >= 0:
        s = read_subject(item.image, check_images=False)
        return s.frame(item.frame), s.mask(item.frame)
    with _open_image(item.image, "image") as img:
        rgb = decode_image(img, item.image, "image", image_to_rgb)
    with _open_image(item.mask, "mask") as img:
        if item.labels is not None:
            values = decode_image(img, item.mask, "label", lambda im, p: np.asarray(im.convert("L")))
            mask = np.isin(values, item.labels)
        else:
            values, full = decode_image(img, item.mask, "mask", image_to_mask_values)
            mask = values > 0.5 * full if full > 1 else values > 0
    if mask.shape != rgb.shape[:2]:
        raise InputError(f"mask is {mask.shape[0]}x{mask.shape[1]} but its image {item.image.name} is "
                         f"{rgb.shape[0]}x{rgb.shape[1]}", file=item.mask, field="mask")
    return rgb, mask


# ------------------------------------------------------------------------------------------------
# The crop: mask bounding box -> fixed 1:2 (W:H) window, the person filling FILL of its height.

FILL = 0.84


def crop_box(mask: np.ndarray, aspect: float = 0.5, fill: float = FILL) -> tuple[float, float, float, float] | None:
    """(x0, y0, width, height) in pixels of the window around the mask's bounding box with
    width/height = aspect and the box filling `fill` of the window's height (or width); None for
    an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
    h = max(y1 - y0, (x1 - x0) / aspect) / fill
    w = h * aspect
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return float(cx - w / 2), float(cy - h / 2), float(w), float(h)


def crop_grid(box: tuple[float, float, float, float], image_hw: tuple[int, int], out_hw: tuple[int, int],
              device: torch.device | None = None) -> Tensor:
    """(1,h,w,2) grid_sample grid (align_corners=False) reading window `box` of an image of size
    image_hw at out_hw pixels."""
    x0, y0, w, h = box
    H, W = image_hw
    oh, ow = out_hw
    xs = x0 + (torch.arange(ow, dtype=torch.float32, device=device) + 0.5) * (w / ow)
    ys = y0 + (torch.arange(oh, dtype=torch.float32, device=device) + 0.5) * (h / oh)
    gx, gy = xs / W * 2 - 1, ys / H * 2 - 1
    return torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)[None]


def crop_input(rgb: np.ndarray, mask: np.ndarray, out_hw: tuple[int, int], fill: float = FILL
               ) -> tuple[Tensor, tuple[float, float, float, float]] | None:
    """(4,h,w) float network input (RGB with the background removed, then the mask) of the
    window around the mask, and the window; None for an empty mask."""
    box = crop_box(mask, out_hw[1] / out_hw[0], fill)
    if box is None:
        return None
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    m = torch.from_numpy(np.ascontiguousarray(mask)).float()[None]
    x = torch.cat([img * m, m])[None]
    # Area-like sampling: blur by the down-scale factor first so thin stripes do not alias.
    scale = box[3] / out_hw[0]
    if scale > 1.5:
        k = int(scale)
        x = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)[..., :rgb.shape[0], :rgb.shape[1]]
    out = F.grid_sample(x, crop_grid(box, rgb.shape[:2], out_hw), mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    out[3] = (out[3] > 0.5).float()
    out[:3] = out[:3] * out[3:]
    return out, box


def build_inputs(items: list[Item], out_hw: tuple[int, int], progress=None) -> Tensor:
    """(N,4,h,w) uint8 inputs of the items with a non-empty mask (others are skipped)."""
    rows = []
    for k, item in enumerate(items):
        rgb, mask = load_item(item)
        got = crop_input(rgb, mask, out_hw)
        if got is not None:
            rows.append((got[0] * 255).round().to(torch.uint8))
        if progress:
            progress("load", k + 1, len(items))
    if not rows:
        raise InputError("every mask is empty", field="data")
    return torch.stack(rows)
