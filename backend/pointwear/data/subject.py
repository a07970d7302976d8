"""Subject folders: the one reader and the one writer of fitting's input.

Layout (see docs / DESIGN.md "Data formats")::

    subject.json        {"version": 1, "body", "gender", "fps", "frames": N, "image_size": [H, W],
                         "source", optional "labels": {"1": "top", ...},
                         optional "frame_ids": [...] (original frame numbers)}
    frames/000000.png   RGB 8-bit (H, W, 3)
    masks/000000.png    clothing mask, 8-bit grey, 0 / 255
    labels/000000.png   optional per-garment label map, 8-bit grey, value = label id (0 = none)
    smpl.npz            betas (S,), global_orient (N,3), body_pose (N,69), transl (N,3),
                        K (N,3,3), image_size (2,) = (H, W)
    truth/              synthetic subjects only; the reader only notes that it exists

Every validation failure is a `SubjectError` naming the file and the field, so the user can fix
the folder without reading our code. Soft problems (grey masks, empty masks) are warnings: the
later stages decide whether they matter.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import SubjectError
from ..fileio import atomic_path, save_npz

VERSION = 1
GENDERS = ("neutral", "male", "female")
SUBJECT_JSON = "subject.json"
SMPL_NPZ = "smpl.npz"
FRAMES_DIR = "frames"
MASKS_DIR = "masks"
LABELS_DIR = "labels"
TRUTH_DIR = "truth"
KNOWN_ENTRIES = {SUBJECT_JSON, SMPL_NPZ, FRAMES_DIR, MASKS_DIR, LABELS_DIR, TRUTH_DIR}
REQUIRED_META = ("version", "body", "gender", "fps", "frames", "image_size", "source")

# Image files are numbered 000000.png, 000001.png, ...; anything else in the folder is ignored.
_IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")

# A mask is "soft" when more than this share of its pixels lies strictly between 10 % and 90 %
# of the value range: a probability map or a resampled mask, not a clean 0/255 one.
MASK_SOFT_FRACTION = 0.02
# Intrinsics sanity: the principal point may sit this far outside the image (crops do that),
# and the skew may be at most this fraction of fx (our renderers ignore skew).
PRINCIPAL_POINT_MARGIN = 0.5
SKEW_TOLERANCE = 1e-4

_FRAME_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_MASK_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_LABEL_MODES = {"L", "P"}
_SMPL_PER_FRAME = {"global_orient": (3,), "body_pose": (69,), "transl": (3,), "K": (3, 3)}
# Bounds checked before anything is decoded or inflated (docs/reliability.md).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 64 << 20        # 64 Mpx per frame
MAX_FRAMES = 100_000
MAX_BETAS = 300


class SubjectWarning(UserWarning):
    """A subject folder is usable but something looks off (soft or empty masks)."""


def image_name(i: int) -> str:
    """File name of frame `i` inside frames/, masks/ and labels/."""
    return f"{i:06d}.png"


# --------------------------------------------------------------------------------------------
# In-memory types


@dataclass(eq=False)
class SmplParams:
    """Per-frame SMPL parameters in camera space (OpenCV camera at the origin), float32."""

    betas: np.ndarray          # (S,)
    global_orient: np.ndarray  # (N, 3) axis-angle
    body_pose: np.ndarray      # (N, 69) axis-angle, 23 joints
    transl: np.ndarray         # (N, 3) metres

    def __post_init__(self) -> None:
        # Normalise once here so every consumer can rely on float32 numpy arrays.
        for name in ("betas", "global_orient", "body_pose", "transl"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))

    @property
    def num_frames(self) -> int:
        return int(self.global_orient.shape[0])

    @property
    def full_pose(self) -> np.ndarray:
        """(N, 72) = global_orient + body_pose, the layout SMPL's LBS expects."""
        return np.concatenate([self.global_orient, self.body_pose], axis=1)


@dataclass(eq=False)
class Subject:
    """A validated subject folder; images are read lazily, one frame at a time."""

    root: Path
    meta: dict
    smpl: SmplParams
    K: np.ndarray                # (N, 3, 3) float64
    image_size: tuple[int, int]  # (H, W)

    @property
    def num_frames(self) -> int:
        return int(self.meta["frames"])

    @property
    def label_names(self) -> dict[int, str]:
        """Garment names by label id, from subject.json "labels" (empty when there are none)."""
        return {int(k): str(v) for k, v in self.meta.get("labels", {}).items()}

    @property
    def has_labels(self) -> bool:
        return (self.root / LABELS_DIR).is_dir()

    @property
    def has_truth(self) -> bool:
        """Synthetic subjects carry truth/; fitting must never read it, evaluation may."""
        return (self.root / TRUTH_DIR).is_dir()

    def frame(self, i: int) -> np.ndarray:
        """RGB frame `i` as uint8 (H, W, 3); alpha dropped, grey expanded."""
        path = self._image_path(FRAMES_DIR, i)
        with _open_image(path, "frame") as img:
            self._check_size(img, path)
            return decode_image(img, path, "frame", image_to_rgb)

    def mask(self, i: int) -> np.ndarray:
        """Clothing mask of frame `i` as bool (H, W), thresholded at half the value range."""
        path = self._image_path(MASKS_DIR, i)
        with _open_image(path, "mask") as img:
            self._check_size(img, path)
            values, full = decode_image(img, path, "mask", image_to_mask_values)
        return values > 0.5 * full

    def labels(self, i: int) -> np.ndarray | None:
        """Per-garment label map of frame `i` as uint8 (H, W), or None without labels/."""
        if not self.has_labels:
            return None
        path = self._image_path(LABELS_DIR, i)
        with _open_image(path, "labels") as img:
            self._check_size(img, path)
            return decode_image(img, path, "labels", _label_array)

    def _image_path(self, folder: str, i: int) -> Path:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} out of range 0..{self.num_frames - 1}")
        return self.root / folder / image_name(i)

    def _check_size(self, img: Image.Image, path: Path) -> None:
        # Needed even after read_subject: check_images=False skips the up-front pass.
        _check_image_size(img, path, self.image_size)


# --------------------------------------------------------------------------------------------
# Image decoding (shared with the readers of other layouts)


def image_to_rgb(img: Image.Image, path: Path | str | None = None) -> np.ndarray:
    """Decode any common PNG/JPEG layout to uint8 (H, W, 3) without compositing alpha."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "RGBA":
        return np.asarray(img, dtype=np.uint8)[..., :3].copy()
    if mode in ("P", "PA"):
        # Palette entries are colours: expand through the palette, then drop alpha.
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    if mode in ("1", "L", "LA"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode.startswith("I"):
        # 16-bit grey: rescale to 8 bits with rounding rather than truncating the low byte.
        grey16 = np.asarray(img).astype(np.int64).clip(0, 65535)
        grey = ((grey16 * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    raise SubjectError(f"unsupported image mode {mode!r} for an RGB frame", file=path,
                       field="mode", hint="save frames as 8-bit RGB PNG")


def image_to_mask_values(img: Image.Image, path: Path | str | None = None
                         ) -> tuple[np.ndarray, float]:
    """(values (H, W), full range) of a mask image; colour masks collapse by max over channels."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.uint8), 1.0
    if mode in ("L", "LA"):
        return np.asarray(img.getchannel("L"), dtype=np.uint8), 255.0
    if mode in ("P", "RGB", "RGBA"):
        rgb = image_to_rgb(img, path)
        return rgb.max(axis=2), 255.0
    if mode.startswith("I"):
        return np.asarray(img).astype(np.int64), 65535.0
    if mode == "F":
        return np.asarray(img, dtype=np.float32), 1.0
    raise SubjectError(f"unsupported image mode {mode!r} for a mask", file=path, field="mode",
                       hint="save masks as 8-bit grey PNG with values 0 and 255")


def _label_array(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode not in _LABEL_MODES:
        raise SubjectError(f"label map has image mode {img.mode!r}, expected 8-bit grey",
                           file=path, field="mode", hint="store label ids 0..255 as mode L")
    # For palette images the indices are the label ids, so no palette expansion.
    return np.asarray(img, dtype=np.uint8).copy()


def decode_image(img: Image.Image, path: Path, what: str, decode: Callable) -> Any:
    """`decode(img, path)` with the failures of a truncated or corrupt file (PIL raises OSError,
    SyntaxError, zlib errors as ValueError...) as a SubjectError naming the file."""
    try:
        return decode(img, path)
    except SubjectError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise SubjectError(f"cannot decode {what} image ({type(exc).__name__}: {exc}): a truncated or "
                           "corrupt PNG", file=path, field=path.parent.name,
                           hint="write the image again") from None


def _open_image(path: Path, what: str) -> Image.Image:
    """Open lazily (header only); a missing or unreadable file becomes a SubjectError, and so does
    one whose header promises more than MAX_IMAGE_PIXELS (a decompression bomb)."""
    if not path.is_file():
        raise SubjectError(f"{what} image is missing", file=path, field=path.parent.name)
    try:
        img = Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SubjectError(f"cannot read {what} image: {exc}", file=path,
                           field=path.parent.name) from exc
    if img.width * img.height > MAX_IMAGE_PIXELS:
        img.close()
        raise SubjectError(f"{what} image is {img.height}x{img.width}, over {MAX_IMAGE_PIXELS} pixels",
                           file=path, field=path.parent.name)
    return img


def _check_image_size(img: Image.Image, path: Path, image_size: tuple[int, int]) -> None:
    h, w = img.height, img.width
    if (h, w) != tuple(image_size):
        raise SubjectError(f"image is {h}x{w} (HxW) but image_size is "
                           f"{image_size[0]}x{image_size[1]}", file=path, field="image_size",
                           hint="all frames, masks and labels must share one size")


# --------------------------------------------------------------------------------------------
# Field checks (used by both the reader and the writer, so nothing invalid is ever written)


def check_meta(meta: Any, file: Path | str) -> dict:
    """Validate subject.json contents; returns the same dict."""
    if not isinstance(meta, dict):
        raise SubjectError("expected a JSON object", file=file, field="(top level)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SubjectError(f"missing required field(s) {', '.join(missing)}", file=file,
                           field=missing[0], hint=f"required: {', '.join(REQUIRED_META)}")
    if meta["version"] != VERSION or isinstance(meta["version"], bool):
        raise SubjectError(f"unsupported version {meta['version']!r}; this reader knows "
                           f"version {VERSION}", file=file, field="version")
    _check_meta_scalars(meta, file)
    _check_meta_optional(meta, file)
    return meta


def _check_meta_scalars(meta: dict, file: Path | str) -> None:
    body = meta["body"]
    if not isinstance(body, str) or not body:
        raise SubjectError('must be "default" or a path to an SMPL .pkl/.npz', file=file,
                           field="body")
    if meta["gender"] not in GENDERS:
        raise SubjectError(f"{meta['gender']!r} is not one of {', '.join(GENDERS)}", file=file,
                           field="gender")
    fps = meta["fps"]
    if not _is_number(fps) or not math.isfinite(fps) or fps <= 0:
        raise SubjectError(f"must be a positive number, got {fps!r}", file=file, field="fps")
    frames = meta["frames"]
    if not _is_int(frames) or not 1 <= frames <= MAX_FRAMES:
        raise SubjectError(f"must be an integer 1..{MAX_FRAMES}, got {str(frames)[:40]}", file=file,
                           field="frames")
    size = meta["image_size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size)
            or size[0] * size[1] > MAX_IMAGE_PIXELS):
        raise SubjectError(f"must be [H, W] with integers 1..{MAX_IMAGE_SIDE} and at most "
                           f"{MAX_IMAGE_PIXELS} pixels, got {str(size)[:80]}", file=file, field="image_size")
    if not isinstance(meta["source"], str):
        raise SubjectError(f"must be a string, got {meta['source']!r}", file=file,
                           field="source")


def _check_meta_optional(meta: dict, file: Path | str) -> None:
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            raise SubjectError('must be an object like {"1": "top"}', file=file, field="labels")
        for key, name in labels.items():
            if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 255):
                raise SubjectError(f"label id {key!r} must be an integer 1..255 (0 = none)",
                                   file=file, field="labels")
            if not isinstance(name, str):
                raise SubjectError(f"name of label {key} must be a string", file=file,
                                   field="labels")
    ids = meta.get("frame_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(v) for v in ids):
            raise SubjectError("must be a list of integers", file=file, field="frame_ids")
        if len(ids) != meta["frames"]:
            raise SubjectError(f"has {len(ids)} entries but frames = {meta['frames']}",
                               file=file, field="frame_ids")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def check_intrinsics(K: np.ndarray, image_size: tuple[int, int], file: Path | str,
                     field: str = "K") -> None:
    """Pinhole K per frame: finite, last row (0,0,1), fx, fy > 0, ~no skew, centre near image."""
    K = np.asarray(K, dtype=np.float64)
    h, w = image_size
    checks: list[tuple[np.ndarray, str]] = [
        (~np.isfinite(K).all(axis=(1, 2)), "contains NaN or inf"),
        (~np.isclose(K[:, 2], [0.0, 0.0, 1.0], atol=1e-6).all(axis=1),
         "last row must be (0, 0, 1)"),
        (~(K[:, 0, 0] > 0) | ~(K[:, 1, 1] > 0), "focal lengths fx, fy must be positive"),
        (np.abs(K[:, 1, 0]) > 1e-6, "K[1,0] must be 0"),
        (np.abs(K[:, 0, 1]) > SKEW_TOLERANCE * np.abs(K[:, 0, 0]), "skew K[0,1] must be ~0"),
        (_outside(K[:, 0, 2], w) | _outside(K[:, 1, 2], h),
         f"principal point must lie within the image ±{PRINCIPAL_POINT_MARGIN:.0%} "
         f"({h}x{w} HxW)"),
    ]
    for bad, message in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SubjectError(f"frame {i}: {message}; got {K[i].tolist()}", file=file,
                               field=f"{field}[{i}]",
                               hint="K is OpenCV [[fx,0,cx],[0,fy,cy],[0,0,1]] in pixels")


def _outside(c: np.ndarray, extent: int) -> np.ndarray:
    m = PRINCIPAL_POINT_MARGIN * extent
    with np.errstate(invalid="ignore"):
        return ~((c >= -m) & (c <= extent + m))


def check_smpl_arrays(arrays: dict[str, np.ndarray], n: int, file: Path | str) -> None:
    """Shapes (per-frame counts = n), numeric dtype and finiteness of the smpl.npz arrays."""
    betas = arrays["betas"]
    if betas.ndim != 1 or betas.shape[0] < 1:
        raise SubjectError(f"shape {betas.shape}, expected (S,) with S >= 1", file=file,
                           field="betas")
    for key, tail in _SMPL_PER_FRAME.items():
        arr = arrays[key]
        if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail:
            raise SubjectError(f"shape {arr.shape}, expected {('N',) + tail}", file=file,
                               field=key)
        if arr.shape[0] != n:
            raise SubjectError(f"has {arr.shape[0]} frames but subject.json frames = {n}",
                               file=file, field=key)
    for key, arr in arrays.items():
        if arr.dtype.kind not in "fiu":
            raise SubjectError(f"dtype {arr.dtype} is not numeric", file=file, field=key)
        if key == "K":
            continue  # check_intrinsics reports K per frame, as K[i]
        finite = np.isfinite(arr.astype(np.float64))
        if not finite.all():
            where = np.argwhere(~finite)[0]
            at = f" (first at frame {int(where[0])})" if key in _SMPL_PER_FRAME else ""
            raise SubjectError(f"contains NaN or inf{at}", file=file, field=key)


# --------------------------------------------------------------------------------------------
# Writer


def write_subject(root: str | Path, *, frames: Sequence[np.ndarray],
                  masks: Sequence[np.ndarray], smpl: SmplParams, K: np.ndarray,
                  meta: dict | None = None, labels: Sequence[np.ndarray] | None = None,
                  label_names: dict | None = None) -> Path:
    """Write a subject folder; every file is atomic and subject.json comes last.

    `frames`/`masks`/`labels` may be lazy sequences (each item is fetched once), so converters
    can stream long videos. A folder without subject.json is an unfinished write: the reader
    refuses it, so a crash half-way never passes for a complete subject.
    """
    root = Path(root)
    n = len(frames)
    K = np.asarray(K, dtype=np.float64)
    _check_counts(root, n, masks, labels, smpl, K)
    first = _as_rgb8(frames[0], root, 0)
    size = (int(first.shape[0]), int(first.shape[1]))
    full_meta = _build_meta(root, meta, n, size, label_names)
    arrays = _smpl_arrays(smpl, K, size)
    check_smpl_arrays(arrays, n, root / SMPL_NPZ)
    check_intrinsics(K, size, root / SMPL_NPZ)

    _prepare_root(root)
    _write_images(root / FRAMES_DIR, n, lambda i: first if i == 0 else _as_rgb8(frames[i], root, i),
                  size, root, "frames")
    _write_images(root / MASKS_DIR, n, lambda i: _as_mask8(masks[i], root, i), size, root, "masks")
    if labels is not None:
        _write_images(root / LABELS_DIR, n, lambda i: _as_label8(labels[i], root, i), size, root,
                      "labels")
    else:
        _prune(root / LABELS_DIR, 0)
        _remove_if_empty(root / LABELS_DIR)
    with atomic_path(root / SMPL_NPZ) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    with atomic_path(root / SUBJECT_JSON) as tmp:
        tmp.write_text(json.dumps(full_meta, indent=2, allow_nan=False) + "\n")
    return root


def _check_counts(root: Path, n: int, masks: Sequence, labels: Sequence | None,
                  smpl: SmplParams, K: np.ndarray) -> None:
    if n < 1:
        raise SubjectError("a subject needs at least one frame", file=root, field="frames")
    counts = {"masks": len(masks), "smpl.global_orient": len(smpl.global_orient),
              "smpl.body_pose": len(smpl.body_pose), "smpl.transl": len(smpl.transl), "K": len(K)}
    if labels is not None:
        counts["labels"] = len(labels)
    for field, count in counts.items():
        if count != n:
            raise SubjectError(f"has {count} entries but there are {n} frames", file=root,
                               field=field)


def _build_meta(root: Path, meta: dict | None, n: int, size: tuple[int, int],
                label_names: dict | None) -> dict:
    out: dict[str, Any] = {"version": VERSION, "body": "default", "gender": "neutral",
                           "fps": 25.0, "source": "unknown"}
    out.update(meta or {})
    for key, value in (("frames", n), ("image_size", list(size))):
        if key in (meta or {}) and _jsonable(meta[key]) != value:
            raise SubjectError(f"meta says {meta[key]!r} but the data gives {value!r}",
                               file=root / SUBJECT_JSON, field=key)
        out[key] = value
    if label_names is not None:
        out["labels"] = {str(int(k)): str(v) for k, v in sorted(label_names.items())}
    out = _jsonable(out)
    if _is_number(out["fps"]):
        out["fps"] = float(out["fps"])
    return check_meta(out, root / SUBJECT_JSON)


def _jsonable(value: Any) -> Any:
    """numpy scalars / tuples / Paths -> plain JSON types, so json.dumps never fails half-way."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _smpl_arrays(smpl: SmplParams, K: np.ndarray, size: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"betas": smpl.betas, "global_orient": smpl.global_orient,
            "body_pose": smpl.body_pose, "transl": smpl.transl, "K": K,
            "image_size": np.asarray(size, dtype=np.int64)}


def update_smpl(root: str | Path, smpl: SmplParams) -> Subject:
    """Replace the SMPL parameters of an existing subject folder (same frames, cameras and image
    size; smpl.npz rewritten atomically) and read it back."""
    subject = read_subject(root, check_images=False)
    arrays = _smpl_arrays(smpl, subject.K, subject.image_size)
    check_smpl_arrays(arrays, subject.num_frames, subject.root / SMPL_NPZ)
    save_npz(subject.root / SMPL_NPZ, **arrays)
    return read_subject(root, check_images=False)


def _prepare_root(root: Path) -> None:
    """Refuse to scatter files into an unrelated folder; mark an old subject as unfinished."""
    if root.exists() and not root.is_dir():
        raise SubjectError("exists and is not a folder", file=root, field="root")
    if root.is_dir():
        entries = {p.name for p in root.iterdir() if not p.name.startswith(".")}
        if entries and not entries & KNOWN_ENTRIES:
            raise SubjectError("folder is not empty and is not a subject folder", file=root,
                               field="root", hint="write subjects into a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / SUBJECT_JSON).unlink(missing_ok=True)


def _write_images(folder: Path, n: int, get: Callable[[int], np.ndarray],
                  size: tuple[int, int], root: Path, field: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = get(i)
        if arr.shape[:2] != size:
            raise SubjectError(f"image {i} is {arr.shape[0]}x{arr.shape[1]} but frame 0 is "
                               f"{size[0]}x{size[1]}", file=root, field=f"{field}[{i}]")
        with atomic_path(folder / image_name(i)) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", compress_level=4)
    _prune(folder, n)


def _prune(folder: Path, n: int) -> None:
    """Remove numbered images >= n left over from an earlier, longer subject in this folder."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        m = _IMAGE_NAME.match(path.name)
        if m and int(m.group(1)) >= n:
            path.unlink()


def _remove_if_empty(folder: Path) -> None:
    """A leftover empty labels/ would make the reader expect label maps."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _as_rgb8(arr: Any, root: Path, i: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise SubjectError(f"shape {a.shape}, expected (H, W, 3)", file=root,
                           field=f"frames[{i}]")
    return _to_uint8(a, root, f"frames[{i}]")


def _as_mask8(arr: Any, root: Path, i: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise SubjectError(f"shape {a.shape}, expected (H, W)", file=root, field=f"masks[{i}]")
    if a.dtype == bool:
        on = a
    elif a.dtype.kind in "iu":
        on = a > (127 if a.dtype.itemsize == 1 else 0.5 * np.iinfo(a.dtype).max)
    elif a.dtype.kind == "f":
        on = a > 0.5
    else:
        raise SubjectError(f"dtype {a.dtype} is not a mask", file=root, field=f"masks[{i}]")
    return np.where(on, 255, 0).astype(np.uint8)


def _as_label8(arr: Any, root: Path, i: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.dtype.kind not in "iub":
        raise SubjectError(f"shape {a.shape} dtype {a.dtype}, expected integer (H, W)",
                           file=root, field=f"labels[{i}]")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise SubjectError("label ids must be 0..255", file=root, field=f"labels[{i}]")
    return a.astype(np.uint8)


def _to_uint8(a: np.ndarray, root: Path, field: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" and np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0:
        return np.round(a * 255.0).astype(np.uint8)
    raise SubjectError(f"dtype {a.dtype} must be uint8 or float in [0, 1]", file=root,
                       field=field)


# --------------------------------------------------------------------------------------------
# Reader


def read_subject(root: str | Path, *, check_images: bool = True) -> Subject:
    """Read and validate a subject folder.

    With `check_images` every image header is checked (size, mode) and every mask is decoded
    once to warn about soft or empty masks; without it only subject.json, smpl.npz and the file
    lists are checked, and sizes are checked as frames are loaded.
    """
    root = Path(root)
    if not root.is_dir():
        raise SubjectError("subject folder does not exist", file=root, field="root")
    meta = _load_meta(root / SUBJECT_JSON)
    n = int(meta["frames"])
    size = (int(meta["image_size"][0]), int(meta["image_size"][1]))
    smpl, K = _load_smpl(root / SMPL_NPZ, n, size)
    _check_image_dir(root, FRAMES_DIR, n)
    _check_image_dir(root, MASKS_DIR, n)
    has_labels = (root / LABELS_DIR).is_dir()
    if has_labels:
        _check_image_dir(root, LABELS_DIR, n)
    if check_images:
        _check_headers(root / FRAMES_DIR, n, size, _FRAME_MODES, "frame")
        if has_labels:
            _check_headers(root / LABELS_DIR, n, size, _LABEL_MODES, "labels")
        _check_masks(root / MASKS_DIR, n, size)
    return Subject(root=root, meta=meta, smpl=smpl, K=K, image_size=size)


def _load_meta(path: Path) -> dict:
    if not path.is_file():
        raise SubjectError("missing", file=path, field=SUBJECT_JSON,
                           hint="not a subject folder, or an unfinished write")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubjectError(f"invalid JSON: {exc}", file=path, field="(file)") from exc
    return check_meta(meta, path)


def _load_smpl(path: Path, n: int, size: tuple[int, int]) -> tuple[SmplParams, np.ndarray]:
    if not path.is_file():
        raise SubjectError("missing", file=path, field=SMPL_NPZ)
    arrays = _read_npz(path, n)
    check_smpl_arrays(arrays, n, path)
    file_size = arrays["image_size"]
    if file_size.shape != (2,) or tuple(int(v) for v in file_size) != size:
        raise SubjectError(f"{file_size.tolist()} disagrees with subject.json image_size "
                           f"{list(size)}", file=path, field="image_size")
    K = arrays["K"].astype(np.float64)
    check_intrinsics(K, size, path)
    smpl = SmplParams(betas=arrays["betas"], global_orient=arrays["global_orient"],
                      body_pose=arrays["body_pose"], transl=arrays["transl"])
    return smpl, K


def _read_npz(path: Path, n: int) -> dict[str, np.ndarray]:
    """smpl.npz's arrays, each bounded by its expected size (n frames) before it is inflated."""
    from ..link.arrays import ArrayFileError, load_npz
    keys = ("betas",) + tuple(_SMPL_PER_FRAME) + ("image_size",)
    limits = {"betas": MAX_BETAS, "image_size": 2,
              **{k: n * math.prod(tail) for k, tail in _SMPL_PER_FRAME.items()}}
    try:
        arrays = load_npz(path, limits, keys=keys)
    except ArrayFileError as exc:
        raise SubjectError(exc.message, file=path, field=exc.field or "(file)") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise SubjectError(f"missing key(s) {', '.join(missing)}", file=path,
                           field=missing[0], hint=f"required: {', '.join(keys)}")
    return arrays


def _check_image_dir(root: Path, folder: str, n: int) -> None:
    """Exactly 000000.png .. N-1 must exist; name the first missing file."""
    path = root / folder
    if not path.is_dir():
        raise SubjectError("folder is missing", file=path, field=folder)
    found = {p.name for p in path.iterdir() if _IMAGE_NAME.match(p.name)}
    expected = {image_name(i) for i in range(n)}
    missing = sorted(expected - found)
    if missing:
        raise SubjectError(f"missing ({len(found & expected)} of {n} {folder} present; "
                           f"{len(missing)} missing)", file=path / missing[0], field=folder)
    extra = sorted(found - expected)
    if extra:
        raise SubjectError(f"holds {len(found)} images but subject.json frames = {n} "
                           f"(unexpected {extra[0]})", file=path, field=folder)


def _check_headers(folder: Path, n: int, size: tuple[int, int], modes: set[str],
                   what: str) -> None:
    """Size and mode of each image, and its whole file read through (chunk CRCs, no truncation)
    without decoding the pixels."""
    for i in range(n):
        path = folder / image_name(i)
        with _open_image(path, what) as img:
            _check_image_size(img, path, size)
            if img.mode not in modes:
                raise SubjectError(f"unsupported image mode {img.mode!r}", file=path,
                                   field="mode")
            decode_image(img, path, what, lambda im, _p: im.verify())


def _check_masks(folder: Path, n: int, size: tuple[int, int]) -> None:
    """Decode each mask once: sizes, modes, and warnings for soft or empty masks."""
    soft: list[str] = []
    empty: list[str] = []
    for i in range(n):
        path = folder / image_name(i)
        with _open_image(path, "mask") as img:
            _check_image_size(img, path, size)
            values, full = decode_image(img, path, "mask", image_to_mask_values)
        between = (values > 0.1 * full) & (values < 0.9 * full)
        if between.mean() > MASK_SOFT_FRACTION:
            soft.append(f"{path.name} ({between.mean():.0%})")
        if not (values > 0.5 * full).any():
            empty.append(path.name)
    if soft:
        warnings.warn(f"{folder}: {len(soft)} of {n} masks are not binary (share of pixels "
                      f"between 10% and 90% of range): {_few(soft)}; thresholding at 50%",
                      SubjectWarning, stacklevel=3)
    if empty:
        warnings.warn(f"{folder}: {len(empty)} of {n} masks are empty (no clothing): "
                      f"{_few(empty)}", SubjectWarning, stacklevel=3)


def _few(items: list[str], k: int = 5) -> str:
    return ", ".join(items[:k]) + (f", ... (+{len(items) - k})" if len(items) > k else "")
