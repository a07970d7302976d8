"""`--masks DIR`: the user's own clothing masks, which override Pointwear's.

A mask is found for a frame by name: for an image input, the image's own stem with any image
extension (`shot_012.jpg` -> `DIR/shot_012.png`); for a video, the input frame number, zero-padded
to six digits or not (`DIR/000012.png` or `DIR/12.png`). A mask must have the size of the input
(as stored, after rotation) or of the prepared frames; it is resized to the prepared frames with
nearest-neighbour sampling. Anything non-zero (> 50 % of the range) is clothing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.subject import image_to_mask_values
from ..errors import InputError
from .types import InputInfo

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class UserMasks:
    """Clothing masks from a folder, looked up by frame (see the module docstring)."""

    def __init__(self, folder: Path, info: InputInfo) -> None:
        if not folder.is_dir():
            raise InputError("masks folder does not exist", file=folder, field="--masks")
        self.folder, self.info = folder, info
        self.files = {p.stem: p for p in sorted(folder.iterdir())
                      if p.suffix.lower() in MASK_SUFFIXES and p.is_file()}
        if not self.files:
            raise InputError(f"no mask images ({', '.join(MASK_SUFFIXES)}) in the folder",
                             file=folder, field="--masks")

    def path_for(self, index: int, name: str) -> Path:
        """The mask file of input frame `index` named `name`; InputError naming what is missing."""
        keys = [Path(name).stem] if self.info.kind != "video" else [f"{index:06d}", str(index)]
        for key in keys:
            if key in self.files:
                return self.files[key]
        raise InputError(f"no mask for input frame {name!r} (looked for "
                         f"{' or '.join(k + '.png' for k in keys)})", file=self.folder,
                         field="--masks", hint="name masks like the input images, or by video "
                                               "frame number (000012.png)")

    def load(self, index: int, name: str) -> np.ndarray:
        """(H, W) bool at the prepared frames' size."""
        path = self.path_for(index, name)
        try:
            with Image.open(path) as img:
                img.load()
                values, full = image_to_mask_values(img, path)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read mask: {exc}", file=path, field="--masks") from exc
        h, w = values.shape
        allowed = {tuple(self.info.size), tuple(self.info.original_size)}
        if (h, w) not in allowed:
            raise InputError(f"mask is {h}x{w} (HxW) but the input is "
                             f"{self.info.original_size[0]}x{self.info.original_size[1]}"
                             + (f" (prepared at {self.info.size[0]}x{self.info.size[1]})"
                                if self.info.size != self.info.original_size else ""),
                             file=path, field="--masks", hint="masks must match the input's size")
        on = (values > 0.5 * full).astype(np.uint8) * 255
        if (h, w) != tuple(self.info.size):
            on = np.asarray(Image.fromarray(on).resize(self.info.size[::-1], Image.NEAREST))
        return on > 127


def user_mask_loader(folder: Path, info: InputInfo) -> UserMasks:
    return UserMasks(folder, info)
